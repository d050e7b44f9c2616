/// Vectorised `exp` for the softmax layer, on the domain the softmax needs: x ≤ 0.
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
/// Accuracy: relative error ≤ 1.2e-7 (1 ulp of 1; measured worst 8.0e-8) against a float64
/// `exp` for x ∈ [−87.33, 0], checked by `ExponentialTests`. Results below 2⁻¹²⁶
/// (x < −87.33, including −∞) are exactly 0 and NaN stays NaN. Arguments above 0 are
/// outside the domain.
///
/// Cost at the default x86-64 baseline (SSE2): about 27 vector instructions per 4 lanes.
@_transparent
func exponential(_ x: SIMD8<Float>) -> SIMD8<Float> {
    let lower: Float = -87.33654475055310    // ln(Float.leastNormalMagnitude)
    let log2e: Float = 1.44269504088896341
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
