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

/// `row[j] += bias[j · stride]` for `j < count`; `stride` is 0 (one bias for the whole row)
/// or 1.
@inline(__always)
func addBias(_ row: UnsafeMutablePointer<Float>, count: Int, bias: UnsafePointer<Float>, stride: Int) {
    if stride == 0 {
        let b = bias[0]
        let vb = SIMD8<Float>(repeating: b)
        var j = 0
        while j + lanes <= count { store(load(row + j) + vb, row + j); j += lanes }
        while j < count { row[j] += b; j += 1 }
    } else {
        var j = 0
        while j + lanes <= count { store(load(row + j) + load(bias + j), row + j); j += lanes }
        while j < count { row[j] += bias[j]; j += 1 }
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
    let raw = UnsafeRawPointer(allowed)
    let excluded = SIMD8<Float>(repeating: -.infinity)
    var j = 0
    while j + lanes <= count {
        // Swift's Bool is one byte holding 0 or 1.
        let bytes = (raw + j).loadUnaligned(as: SIMD8<UInt8>.self)
        var v = load(row + j)
        v.replace(with: excluded, where: SIMD8<Int32>(truncatingIfNeeded: bytes) .== 0)
        store(v, row + j)
        j += lanes
    }
    while j < count {
        if !allowed[j] { row[j] = -.infinity }
        j += 1
    }
}

/// Numerically stable softmax of `row[0..<end]` in place, and `row[end..<count] = 0`.
///
///     m = max_j s_j,   p_j = exp(s_j − m) / Σ_k exp(s_k − m)
///
/// A row whose entries are all −∞ (or `end == 0`) becomes all zeros rather than NaN.
/// With `normalize: false` the row is left as `exp(s_j − m)` and the caller divides later
/// (the BLAS kernel scales the output row instead, which is `Dv` multiplies, not `S`).
/// Returns the sum Σ exp(s_j − m), or 0 for an all-excluded row.
@discardableResult
@inline(__always)
func softmaxRow(_ row: UnsafeMutablePointer<Float>, end: Int, count: Int, normalize: Bool = true) -> Float {
    var sum: Float = 0
    if end > 0 {
        // Pass 1: row maximum.
        var vmax = SIMD8<Float>(repeating: -.infinity)
        var j = 0
        while j + lanes <= end {
            // A compare and select: `pointwiseMax` follows IEEE maxNum per lane and does
            // not vectorise.
            let x = load(row + j)
            vmax.replace(with: x, where: x .> vmax)
            j += lanes
        }
        var m = -Float.infinity
        for lane in 0..<lanes where vmax[lane] > m { m = vmax[lane] }
        while j < end { if row[j] > m { m = row[j] }; j += 1 }

        if m == -.infinity {
            // Every key excluded: a zero row, as PyTorch ≥ 2.5 does.
            (row).update(repeating: 0, count: count)
            return 0
        }
        // Pass 2: exponentials and their sum.
        let vm = SIMD8<Float>(repeating: m)
        var vsum = SIMD8<Float>()
        j = 0
        while j + lanes <= end {
            let e = exponential(load(row + j) - vm)
            store(e, row + j)
            vsum += e
            j += lanes
        }
        sum = vsum.sum()
        while j < end {
            let e = exponential(row[j] - m)
            row[j] = e
            sum += e
            j += 1
        }
        // Pass 3: normalise.
        guard normalize else {
            if end < count { (row + end).update(repeating: 0, count: count - end) }
            return sum
        }
        let inverse = 1 / sum
        let vinv = SIMD8<Float>(repeating: inverse)
        j = 0
        while j + lanes <= end { store(load(row + j) * vinv, row + j); j += lanes }
        while j < end { row[j] *= inverse; j += 1 }
    }
    if end < count {
        (row + end).update(repeating: 0, count: count - end)
    }
    return sum
}

/// `row[0..<count] *= factor`.
@inline(__always)
func scaleRow(_ row: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
    let v = SIMD8<Float>(repeating: factor)
    var j = 0
    while j + lanes <= count { store(load(row + j) * v, row + j); j += lanes }
    while j < count { row[j] *= factor; j += 1 }
}
