/// `log₂ e`, the factor between natural and base-2 exponents.
let log2e: Float = 1.44269504088896341

/// Vectorised `exp` for the softmax layer in natural units (the BLAS kernel when its scale or
/// biases are too large for base 2), on the domain the softmax needs: x ≤ 0.
///
/// Swift's SIMD types have no transcendental functions, and calling `Foundation.exp` per
/// element costs more than the two GEMMs of attention at small head dimensions, so the
/// softmax uses this polynomial instead. It is the Cephes `expf` scheme:
///
///     x = n·ln 2 + r,  n = round(x / ln 2),  |r| ≤ ln 2 / 2
///     exp(x) = 2ⁿ · (1 + r + r²·P(r)),  P a degree-5 minimax polynomial
///
/// with `ln 2` split into a high and a low part so that `r` is exact, and `n` found with
/// the 1.5·2²³ shifter, whose low mantissa bits then hold `n` (no float→int conversion, so
/// NaN and −∞ cannot trap; their lanes are replaced at the end). Softmax arguments are
/// `s − max(s) ≤ 0`, so `n ∈ [−126, 0]` and `2ⁿ` is one normal float built from exponent
/// bits; no clamping is needed.
///
/// Accuracy: relative error ≤ 1.2e-7 (1 ulp of 1; measured worst 8.1e-8, at x ≈ −59.95) against a float64
/// `exp` for x ∈ [−87.33, 0], checked by `ExponentialTests`. Results below 2⁻¹²⁶
/// (x < −87.33, including −∞) are exactly 0 and NaN stays NaN. Arguments above 0 are
/// outside the domain.
///
/// Cost at the default x86-64 baseline (SSE2): about 27 vector instructions per 4 lanes.
@_transparent
func exponential(_ x: SIMD8<Float>) -> SIMD8<Float> {
    let lower: Float = -87.33654475055310    // ln(Float.leastNormalMagnitude)
    let ln2High: Float = 0.693359375         // exactly representable, 9 bits
    let ln2Low: Float = -2.12194440e-4       // ln 2 − ln2High
    let shifter: Float = 12582912.0          // 1.5 · 2²³

    // t = round(x·log2e) + shifter, exactly; the low mantissa bits of t hold n.
    let t = x * log2e + shifter
    let n = t - shifter
    var r = x - n * ln2High
    r = r - n * ln2Low

    var p = SIMD8<Float>(repeating: 1.9875691500e-4)
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    p = p * (r * r) + r + 1

    // 2ⁿ from its exponent bits: ((bits(t) − bits(shifter)) + 127) << 23.
    let bias = unsafeBitCast(SIMD8<Float>(repeating: shifter), to: SIMD8<Int32>.self) &- 127
    let scale = unsafeBitCast((unsafeBitCast(t, to: SIMD8<Int32>.self) &- bias) &<< 23, to: SIMD8<Float>.self)
    var result = p * scale
    result.replace(with: 0, where: x .< lower)
    return result
}

/// Scalar form of ``exponential(_:)-(SIMD8<Float>)`` with identical results, for row tails.
@inline(__always)
func exponential(_ x: Float) -> Float {
    exponential(SIMD8<Float>(repeating: x))[0]
}

/// Vectorised `2ˣ` for the base-2 softmax of the BLAS and tiled kernels, for x ≤ 125.
///
/// Those kernels fold `log₂ e` into the GEMM's alpha, so their scores are already in
/// base 2 and the range reduction is a plain subtraction, with no `log₂ e` multiply and no
/// two-part `ln 2`:
///
///     x = n + r,  n = round(x),  |r| ≤ 1/2
///     2ˣ = 2ⁿ · (1 + r·P(r)),  P a degree-4 minimax polynomial (relative, fitted on [−½, ½])
///
/// `n` comes from a shifter as in ``exponential(_:)-(SIMD8<Float>)``, here 1.5·2²³ + 127, so
/// that the low mantissa bits of `t = x + shifter` hold `n + 127`, the biased exponent of
/// `2ⁿ`: one shift of `t`'s bits makes `2ⁿ`. Arguments below −127 are first raised to −127
/// (one `maxps`; NaN is kept), where the biased exponent is 0 and the result exactly 0; so
/// `2ˣ` is 0 for x ≤ −126.5 (including −∞), a (sub)normal value down to that, and NaN stays
/// NaN (its shifted bits are 0 and NaN · 0 is NaN). Arguments up to 125 are in the domain:
/// the tiled kernel's lazy rescaling reaches +16, its one-pass step exponentiates bounded
/// scores up to +64 and then rescales by factors up to 2¹²⁵; there is no clamp above (from
/// x = 127.5 the result is +∞, and from 128.5 the exponent bits wrap), which no caller
/// reaches.
///
/// With `clamped: false` the lower clamp is left out, for callers that know every argument
/// is at least −126 (the tiled kernel bounds its scores by Cauchy–Schwarz, see
/// `tiledAttention`): one instruction less per vector and a shorter dependency chain, the
/// two things that limit this loop at the SSE2 baseline. Below −127.5 the result is then garbage.
///
/// Accuracy: relative error ≤ 2.0e-7 (about 1.7 ulp of 1; measured worst 1.9e-7) against a
/// float64 `exp2` for x ∈ [−126, 125], clamped or not, checked by `ExponentialTests`.
///
/// Cost at the default x86-64 baseline (SSE2): about 16 vector instructions per 4 lanes
/// (15 without the clamp), against 27 for ``exponential(_:)-(SIMD8<Float>)``.
@_transparent
func exponential2(_ x: SIMD8<Float>, clamped: Bool = true) -> SIMD8<Float> {
    let shifter: Float = 12583039.0          // 1.5 · 2²³ + 127
    var y = x
    if clamped {
        y.replace(with: -127, where: x .< -127)  // NaN compares false and stays
    }

    let t = y + shifter                      // round(y) + 127 + 1.5·2²³, exactly
    let n = t - shifter
    let r = y - n                            // exact, |r| ≤ 1/2

    var p = SIMD8<Float>(repeating: 1.3264727080e-3)
    p = p * r + 9.6715128622e-3
    p = p * r + 5.5507337456e-2
    p = p * r + 2.4022242082e-1
    p = p * r + 6.9314697760e-1
    p = p * r + 1

    // 2ⁿ from its biased exponent n + 127, the low bits of t: bits(t) << 23 keeps just
    // those (the shifter's own bits shift out); 0 for n = −127.
    let scale = unsafeBitCast(unsafeBitCast(t, to: SIMD8<Int32>.self) &<< 23, to: SIMD8<Float>.self)
    return p * scale
}

/// Scalar form of ``exponential2(_:clamped:)`` (clamped) with identical results.
@inline(__always)
func exponential2(_ x: Float) -> Float {
    exponential2(SIMD8<Float>(repeating: x))[0]
}
