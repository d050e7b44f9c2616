/// A resolved mask with raw pointers into its tensors, valid inside
/// ``withMaskRows(_:_:)`` only. Kernels use it to mask one score row at a time, so no
/// `[B, H, L, S]` mask is ever materialised.
struct MaskRows: @unchecked Sendable {
    let resolved: ResolvedMask
    let booleans: [(UnsafePointer<Bool>, BroadcastStrides)]
    let additives: [(UnsafePointer<Float>, BroadcastStrides)]

    /// Whether the mask has boolean or additive tensors, the parts that ``apply(_:count:batch:head:query:keyOffset:biasFactor:)``
    /// writes into score rows (the causal and key-length parts only shorten rows).
    var hasTensors: Bool { !booleans.isEmpty || !additives.isEmpty }

    /// The number of leading keys the causal and key-length parts allow for row `i` of
    /// batch entry `b`.
    @inline(__always)
    func rowEnd(batch b: Int, query i: Int, keyLength s: Int) -> Int {
        resolved.rowEnd(batch: b, query: i, keyLength: s)
    }

    /// Adds the biases and applies the boolean masks to `row[0..<count]`, the scores of
    /// query `i` of head `h` in batch entry `b` for keys `keyOffset ..< keyOffset + count`
    /// (vectorised). Biases are multiplied by `biasFactor` first (the BLAS and tiled kernels'
    /// base-2 scores pass `log₂ e`).
    @inline(__always)
    func apply(_ row: UnsafeMutablePointer<Float>, count: Int, batch b: Int, head h: Int, query i: Int,
               keyOffset: Int = 0, biasFactor: Float = 1) {
        for (bias, strides) in additives {
            let start = bias + strides.rowOffset(batch: b, head: h, query: i) + keyOffset * strides.key
            addBias(row, count: count, bias: start, stride: strides.key, factor: biasFactor)
        }
        for (allowed, strides) in booleans {
            let start = allowed + strides.rowOffset(batch: b, head: h, query: i) + keyOffset * strides.key
            applyBooleanMask(row, count: count, allowed: start, stride: strides.key)
        }
    }

    /// Whether the boolean and additive tensors by themselves leave query `(b, h, i)` no key
    /// among its first `count` (a boolean `false` or a `−∞` bias on every one), evaluated on
    /// a row of zero scores in `probe` (`count` floats). The BLAS kernel asks this of rows that
    /// ended without weight, to tell a mask that excludes everything (a zero row, as it should
    /// be) from scores that fell out of float's range. The biases are scaled by `0.5 / k` for
    /// `k` tensors, so that finite ones cannot sum past float's range here (−3e38 twice is
    /// not an exclusion) while `−∞` stays `−∞`.
    func excludesEveryKey(batch b: Int, head h: Int, query i: Int, count: Int,
                          probe: UnsafeMutablePointer<Float>) -> Bool {
        probe.update(repeating: 0, count: count)
        apply(probe, count: count, batch: b, head: h, query: i, biasFactor: 0.5 / Float(max(1, additives.count)))
        return rowMaximum(probe, count: count) == -.infinity
    }

    /// The sum over the additive tensors of each one's largest finite magnitude (0 without
    /// biases; infinities and NaN are skipped). The BLAS and tiled kernels, whose scores are
    /// in base 2, check it against the range that survives multiplying by `log₂ e`.
    func finiteBiasMagnitude() -> Float {
        var total: Float = 0
        for (tensor, _) in resolved.additives {
            total += tensor.withUnsafeBufferPointer { buffer -> Float in
                guard let base = buffer.baseAddress else { return 0 }
                let infinity = SIMD8<Float>(repeating: .infinity)
                var vmax = SIMD8<Float>()
                var j = 0
                while j + lanes <= buffer.count {
                    let x = load(base + j)
                    let magnitude = x.replacing(with: -x, where: x .< 0)        // NaN stays NaN
                    vmax.replace(with: magnitude, where: magnitude .> vmax .& magnitude .< infinity)
                    j += lanes
                }
                var m = vmax.max()
                while j < buffer.count {
                    if base[j].isFinite { m = max(m, Swift.abs(base[j])) }
                    j += 1
                }
                return m
            }
        }
        return total
    }

    /// Whether every part allows key `j` for query `(b, h, i)` (scalar, for the naive kernel).
    func allows(batch b: Int, head h: Int, query i: Int, key j: Int, keyLength s: Int) -> Bool {
        guard j < rowEnd(batch: b, query: i, keyLength: s) else { return false }
        for (allowed, st) in booleans where !allowed[st.rowOffset(batch: b, head: h, query: i) + j * st.key] {
            return false
        }
        return true
    }

    /// The sum of the additive biases for query `(b, h, i)` and key `j` (scalar).
    func bias(batch b: Int, head h: Int, query i: Int, key j: Int) -> Float {
        var total: Float = 0
        for (bias, st) in additives { total += bias[st.rowOffset(batch: b, head: h, query: i) + j * st.key] }
        return total
    }

    /// The sum of the additive biases for query `(b, h, i)` and key `j`, added in float64
    /// (for rows computed again exactly: two biases of −3.4e38 sum to −6.8e38, not −∞), or
    /// nil when one of them is −∞, which excludes the key whatever its score.
    func exactBias(batch b: Int, head h: Int, query i: Int, key j: Int) -> Double? {
        var total = 0.0
        for (bias, st) in additives {
            let x = Double(bias[st.rowOffset(batch: b, head: h, query: i) + j * st.key])
            if x == -.infinity { return nil }
            total += x
        }
        return total
    }
}

/// A stand-in address for empty buffers, whose `baseAddress` may be nil. Never dereferenced:
/// every loop over an empty dimension runs zero times.
nonisolated(unsafe) private let emptyStorage = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)

@inline(__always)
func nonNull<T>(_ p: UnsafePointer<T>?) -> UnsafePointer<T> {
    p ?? UnsafePointer(emptyStorage.assumingMemoryBound(to: T.self))
}

@inline(__always)
func nonNull<T>(_ p: UnsafeMutablePointer<T>?) -> UnsafeMutablePointer<T> {
    p ?? emptyStorage.assumingMemoryBound(to: T.self)
}

/// Calls `body` with pointers into every tensor of `mask`.
func withMaskRows<R>(_ mask: ResolvedMask, _ body: (MaskRows) throws -> R) rethrows -> R {
    try withPointers(mask.booleans.map(\.0)[...], []) { booleans in
        try withPointers(mask.additives.map(\.0)[...], []) { additives in
            try body(MaskRows(resolved: mask,
                              booleans: Array(zip(booleans, mask.booleans.map(\.1))),
                              additives: Array(zip(additives, mask.additives.map(\.1)))))
        }
    }
}

private func withPointers<T, R>(
    _ tensors: ArraySlice<Tensor<T>>, _ pointers: [UnsafePointer<T>],
    _ body: ([UnsafePointer<T>]) throws -> R
) rethrows -> R {
    guard let first = tensors.first else { return try body(pointers) }
    return try first.withUnsafeBufferPointer { buffer in
        try withPointers(tensors.dropFirst(), pointers + [nonNull(buffer.baseAddress)], body)
    }
}
