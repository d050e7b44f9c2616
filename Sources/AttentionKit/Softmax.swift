/// The mask + softmax layer: the part of attention between the two GEMMs.
///
/// Each function works on one row of scores `s[0..<S]` for one query, in place, with SIMD
/// vectors of eight floats and a scalar tail. Rows are short-lived and cache-resident, so
/// the passes below (bias, mask, max, exp + sum, normalise) each cost about one read and one
/// write of the row.

/// The vector width of the softmax layer.
let lanes = 8

@inline(__always)
func load(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

@inline(__always)
func store(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}

/// `row[j] += factor · bias[j · stride]` for `j < count`; `stride` is 0 (one bias for the
/// whole row) or 1. `factor` is `log₂ e` for base-2 scores (the BLAS and tiled kernels) and
/// 1 in natural units; multiplying by 1 is exact, so the bias is then added unchanged.
@inline(__always)
func addBias(_ row: UnsafeMutablePointer<Float>, count: Int, bias: UnsafePointer<Float>, stride: Int,
             factor: Float = 1) {
    if stride == 0 {
        let b = bias[0] * factor
        let vb = SIMD8<Float>(repeating: b)
        var j = 0
        while j + lanes <= count { store(load(row + j) + vb, row + j); j += lanes }
        while j < count { row[j] += b; j += 1 }
    } else {
        let vf = SIMD8<Float>(repeating: factor)
        var j = 0
        while j + lanes <= count { store(load(row + j) + load(bias + j) * vf, row + j); j += lanes }
        while j < count { row[j] += bias[j] * factor; j += 1 }
    }
}

/// `row[j] = -∞` where `allowed[j · stride]` is false, for `j < count`.
@inline(__always)
func applyBooleanMask(_ row: UnsafeMutablePointer<Float>, count: Int, allowed: UnsafePointer<Bool>, stride: Int) {
    if stride == 0 {
        if !allowed[0] {
            for j in 0..<count { row[j] = -.infinity }
        }
        return
    }
    // Swift's Bool is one byte holding 0 or 1. Eight of them are read as one little-endian
    // UInt64 (byte k is key j + k) and spread over 32-bit lanes with shifts, then blended
    // bitwise: converting a SIMD8<UInt8> to SIMD8<Int32> instead compiled to a per-lane loop
    // through the stack, 7.0 ns per key against 0.22 (one thread, S = 2048 rows, swiftc -O),
    // which made a boolean [S] mask cost B1 H8 L2048 D64 2.5 times the unmasked time.
    let raw = UnsafeRawPointer(allowed)
    let negativeInfinity = SIMD4<UInt32>(repeating: (-Float.infinity).bitPattern)
    let shifts = SIMD4<UInt32>(0, 8, 16, 24)
    var j = 0
    while j + lanes <= count {
        let bytes = UInt64(littleEndian: (raw + j).loadUnaligned(as: UInt64.self))
        let low = (SIMD4<UInt32>(repeating: UInt32(truncatingIfNeeded: bytes)) &>> shifts) & 1
        let high = (SIMD4<UInt32>(repeating: UInt32(truncatingIfNeeded: bytes >> 32)) &>> shifts) & 1
        let excludedLow = low &- 1, excludedHigh = high &- 1          // all ones where the byte is 0
        let p = UnsafeMutableRawPointer(row + j)
        let v0 = p.loadUnaligned(as: SIMD4<UInt32>.self), v1 = (p + 16).loadUnaligned(as: SIMD4<UInt32>.self)
        p.storeBytes(of: (v0 & ~excludedLow) | (negativeInfinity & excludedLow), as: SIMD4<UInt32>.self)
        (p + 16).storeBytes(of: (v1 & ~excludedHigh) | (negativeInfinity & excludedHigh), as: SIMD4<UInt32>.self)
        j += lanes
    }
    while j < count {
        if !allowed[j] { row[j] = -.infinity }
        j += 1
    }
}

/// The maximum of `row[0..<count]`, ignoring NaN; −∞ when `count == 0` or every entry is −∞.
/// When the non-NaN entries are all −∞ and some entry is NaN, the result is NaN.
///
/// NaN entries need no tracking in the fast path: every caller exponentiates `s − max`, where
/// a NaN entry gives NaN, then the row sum is NaN and so the output row is NaN, as in the
/// naive kernel and PyTorch. Only a row with nothing else than −∞ beside its NaN would pass for
/// an all-excluded row (zeros), so that case looks for NaN.
@inline(__always)
func rowMaximum(_ row: UnsafePointer<Float>, count: Int) -> Float {
    var vmax = SIMD8<Float>(repeating: -.infinity), vmax2 = vmax
    var j = 0
    // Two independent accumulators: the tiled kernel's rows come from L2 (the GEMM just
    // wrote them), and two chains hide more of that latency (0.085 → 0.073 ns per score).
    while j + 2 * lanes <= count {
        // `x > vmax ? x : vmax` is exactly SSE's `maxps(x, vmax)`, one instruction (NaN in x
        // leaves vmax); `pointwiseMax` follows IEEE maxNum per lane and does not vectorise.
        let x = load(row + j), x2 = load(row + j + lanes)
        vmax.replace(with: x, where: x .> vmax)
        vmax2.replace(with: x2, where: x2 .> vmax2)
        j += 2 * lanes
    }
    if j + lanes <= count {
        let x = load(row + j)
        vmax.replace(with: x, where: x .> vmax)
        j += lanes
    }
    vmax.replace(with: vmax2, where: vmax2 .> vmax)
    var m = -Float.infinity
    for lane in 0..<lanes where vmax[lane] > m { m = vmax[lane] }
    while j < count {
        if row[j] > m { m = row[j] }
        j += 1
    }
    if m == -.infinity {
        for k in 0..<count where row[k].isNaN { return .nan }
    }
    return m
}

/// `row[j] = exp(row[j] − m)` for `j < count`, in place (`2^(row[j] − m)` with `base2`, for
/// the base-2 scores of the BLAS and tiled kernels); returns the sum of the results. Needs `row[j] ≤ m`
/// (`row[j] ≤ m + 120` with `base2`), so that every argument is in the polynomial's domain;
/// `clamped: false` (base 2 only) also needs `row[j] − m ≥ −126` (see
/// ``exponential2(_:clamped:)``). `base2` and `clamped` are constants at each call site and
/// the function is transparent (always inlined, even into the large online-softmax step), so
/// each caller's loop has one exponential and no branches; `m == 0` skips the subtraction
/// in the unclamped base-2 loop, the tiled kernel's common case.
@_transparent
func exponentiateAndSum(_ row: UnsafeMutablePointer<Float>, count: Int, subtracting m: Float,
                        base2: Bool = false, clamped: Bool = true) -> Float {
    @_transparent
    func loop(subtract: Bool) -> Float {
        let vm = SIMD8<Float>(repeating: m)
        var vsum = SIMD8<Float>()
        var j = 0
        while j + lanes <= count {
            let x = subtract ? load(row + j) - vm : load(row + j)
            let e = base2 ? exponential2(x, clamped: clamped) : exponential(x)
            store(e, row + j)
            vsum += e
            j += lanes
        }
        var sum = vsum.sum()
        while j < count {
            let e = base2 ? exponential2(row[j] - m) : exponential(row[j] - m)
            row[j] = e
            sum += e
            j += 1
        }
        return sum
    }
    return m == 0 && base2 && !clamped ? loop(subtract: false) : loop(subtract: true)
}

/// Numerically stable softmax of `row[0..<end]` in place, and `row[end..<count] = 0`.
///
///     m = max_j s_j,   p_j = exp(s_j − m) / Σ_k exp(s_k − m)
///
/// With `base2`, the row holds base-2 scores (the natural ones times `log₂ e`, as the BLAS
/// kernel computes them when it can) and `p_j = 2^(s_j − m) / Σ_k 2^(s_k − m)`, the same
/// weights through the cheaper ``exponential2(_:clamped:)``.
/// A row whose entries are all −∞ (or `end == 0`) becomes all zeros rather than NaN.
/// With `normalize: false` the row is left as `exp(s_j − m)` (`2^(s_j − m)`) and the caller
/// divides later (the BLAS kernel scales the output row instead, which is `Dv` multiplies,
/// not `S`). Returns the sum Σ exp(s_j − m) (Σ 2^(s_j − m)), or 0 for an all-excluded row.
@discardableResult
@inline(__always)
func softmaxRow(_ row: UnsafeMutablePointer<Float>, end: Int, count: Int, normalize: Bool = true,
                base2: Bool = false) -> Float {
    let m = rowMaximum(row, count: end)
    guard m != -.infinity else {
        // Every key excluded: a zero row, as PyTorch ≥ 2.5 does.
        row.update(repeating: 0, count: count)
        return 0
    }
    let sum = base2
        ? exponentiateAndSum(row, count: end, subtracting: m, base2: true)
        : exponentiateAndSum(row, count: end, subtracting: m)
    if normalize { scaleRow(row, count: end, by: 1 / sum) }
    if end < count { (row + end).update(repeating: 0, count: count - end) }
    return sum
}

/// How far above a row's reference maximum (in base-2 exponent units) the tiled kernel lets
/// a tile's scores rise before it moves the reference: their exponentials are then at most
/// 2¹⁶ = 65536, harmless in float, and the partial output is rescaled far less often. The
/// one-pass step compares tile sums with `2¹⁶` instead of finding tile maxima; 16 leaves room
/// for a whole 512-key tile at its reference (a sum of 512) without a maximum pass.
let lazyRescaleThreshold: Float = 16

/// One step of the tiled kernel's online (streaming) softmax, in base 2, over a tile of one
/// row's scores.
///
/// The scores are `log₂ e` times the natural ones (the kernel folds `log₂ e` into the GEMM's
/// alpha), so `2^(s − m)` is the usual `exp(s′ − m′)`, and they arrive as `row[j] = s_j − c`:
/// the kernel starts each score tile from `−c` instead of 0 and lets the GEMM add to it
/// (beta = 1), with `c` the row's current reference `m` when that is small (|m| ≤ 16; else,
/// and before the first tile with an allowed key, `c = 0`), so that in the common case
/// nothing is left to subtract. The row keeps `m` and a running sum `l = Σ 2^(s_j − m)` over
/// the earlier tiles; the tile's scores are replaced by `2^(s_j − m)`
/// (`row[allowed..<count] = 0`) and their sum is added to `l`. The return value `α` is the
/// factor by which everything accumulated so far (the partial output row) must be multiplied
/// because the reference moved (1 when it did not). With `T` = ``lazyRescaleThreshold``:
///
///     t = c + max_j row[j]                      (the tile's largest score)
///     first tile with an allowed key (c = 0): m = 0 if 0 ≤ t ≤ T, else m = t
///     later tiles: if t > m + T { α = 2^(m − t), m = t }
///     row[j] = 2^(row[j] − (m − c)),  l′ = α·l + Σ_j row[j]
///
/// The reference lags the true maximum by at most `T` (lazy rescaling: exponentials up to
/// 2¹⁶), and the output `O / l` is the same as with the exact maximum, since both carry the
/// same factor `2^(−m)`. The price is headroom: the unnormalised partial output can be up to
/// 2¹⁶ times larger than with the exact maximum, so it overflows when S · max|V| passes about
/// 5e33 instead of 3.4e38 (the kernel then recomputes the heads concerned, see `tiledAttention`). When
/// the reference moves on a tile that started from `c ≠ 0`, the scores are shifted twice
/// (`s − c`, then `− (m′ − c)`): two roundings instead of one, each relative to a magnitude of
/// at most |s| + 16.
///
/// `lowest` and `highest` bound `row[0..<allowed]` when the caller knows bounds (±∞ when it
/// knows none, e.g. after a boolean mask). Within [−125, 64], and with `|m − c| ≤ 64`, the
/// step takes one pass and no maximum (see ``boundedSoftmaxStep(_:allowed:runningMax:offset:)``);
/// otherwise the maximum comes first, and the exponential skips its clamp when `lowest` keeps
/// every exponent at least −126. A tile whose entries are all −∞ contributes zeros. NaN
/// scores make the sum NaN (or the reference, in a row with nothing but −∞ besides), and so
/// the output row NaN; rows that may hold NaN never have finite bounds.
@inline(__always)
func onlineSoftmaxStep(
    _ row: UnsafeMutablePointer<Float>, allowed: Int, count: Int,
    runningMax m: inout Float, runningSum l: inout Float,
    offset c: Float = 0, lowest: Float = -.infinity, highest: Float = .infinity
) -> Float {
    var alpha: Float = 1
    var sum: Float
    if lowest >= -125 && highest <= 64 && allowed > 0                     // false for NaN
        && (m == -.infinity || Swift.abs(m - c) <= 64) {
        (sum, alpha) = boundedSoftmaxStep(row, allowed: allowed, runningMax: &m, offset: c)
    } else {
        let tileMax = rowMaximum(row, count: allowed)
        guard tileMax != -.infinity else {
            row.update(repeating: 0, count: count)
            return 1
        }
        let t = tileMax + c
        if m == -.infinity || t.isNaN {
            // The first tile with an allowed key (c is 0 then) treats c as a reference like
            // any other: it stays while the maximum exceeds it by at most T, else it moves.
            m = t >= c && t <= c + lazyRescaleThreshold ? c : t
        } else if t > m + lazyRescaleThreshold {
            alpha = exponential2(m - t)
            m = t
        }
        let d = m - c                                       // 0 unless the reference moved
        sum = lowest - d >= -125                            // false for NaN and −∞
            ? exponentiateAndSum(row, count: allowed, subtracting: d, base2: true, clamped: false)
            : exponentiateAndSum(row, count: allowed, subtracting: d, base2: true)
    }
    if allowed < count { (row + allowed).update(repeating: 0, count: count - allowed) }
    l = l * alpha + sum
    return alpha
}

/// The one-pass form of ``onlineSoftmaxStep(_:allowed:count:runningMax:runningSum:offset:lowest:highest:)``
/// for a tile whose `row[0..<allowed]` (scores minus `c`) lie within [−125, 64], with
/// `m = −∞` or `|m − c| ≤ 64`. Returns the tile's sum relative to the new reference and `α`.
///
/// It exponentiates `2^row[j]` with the unclamped ``exponential2(_:clamped:)`` (nothing to
/// subtract: the bounds keep every result a normal float in [2⁻¹²⁵, 2⁶⁴], and their sum
/// finite) and does not look for the tile's maximum: each term is at most the sum and at
/// least the sum / `allowed`, so with `d = m − c`
///
///     first tile:  Σ 2^row[j] ∈ [1, 2^T]      ⇒ the reference c may stay (m = c), the maximum
///                                              lying within [−log₂ allowed, T] of it
///     later tiles: Σ 2^(row[j] − d) ≤ 2^T      ⇒ no score exceeds the reference by more than T
///
/// and only a tile that fails its test (its scores climbed by about T − log₂ allowed, e.g.
/// 7 for 512 keys, or a first tile far from 0) pays a maximum pass over the exponentials.
/// A reference found that way is `c + k`, with `2^k ≤ max_j 2^row[j] < 2^(k+1)`: an integer
/// offset, so the fix-up `row[j] *= 2^(−k)` is exact. A reference that stays but differs from
/// `c` (a distant one, not written into the tile) costs the same second pass as before.
@inline(__always)
func boundedSoftmaxStep(_ row: UnsafeMutablePointer<Float>, allowed: Int,
                        runningMax m: inout Float, offset c: Float) -> (sum: Float, alpha: Float) {
    let limit = Float(sign: .plus, exponent: Int(lazyRescaleThreshold), significand: 1)    // 2^T
    var sum = exponentiateAndSum(row, count: allowed, subtracting: 0, base2: true, clamped: false)
    var alpha: Float = 1
    var d: Float                                            // the reference relative to c
    if m == -.infinity {
        if sum >= 1 && sum <= limit {
            m = c
            d = 0
        } else {
            d = Float(rowMaximum(row, count: allowed).exponent)
            m = c + d
        }
    } else {
        d = m - c
        let relative = d == 0 ? sum : sum * exponential2(-d)        // may be +∞: then look
        if !(relative <= limit) {
            let top = rowMaximum(row, count: allowed)               // 2^(t − c), normal
            if top * exponential2(-d) > limit {                     // t > m + T: move
                let k = Float(top.exponent)
                alpha = exponential2(d - k)
                m = c + k
                d = k
            }
        }
    }
    if d != 0 {                                             // 2^(x − d) = 2^x · 2^(−d)
        let factor = exponential2(-d)
        scaleRow(row, count: allowed, by: factor)
        sum *= factor
    }
    return (sum, alpha)
}

/// `row[0..<count] *= factor`.
@inline(__always)
func scaleRow(_ row: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
    let v = SIMD8<Float>(repeating: factor)
    var j = 0
    while j + lanes <= count { store(load(row + j) * v, row + j); j += lanes }
    while j < count { row[j] *= factor; j += 1 }
}
