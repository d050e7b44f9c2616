/// The keys and values a ``MultiHeadAttention`` layer has projected so far, for decoding one
/// token (or a few) at a time without recomputing the past.
///
/// Made by ``MultiHeadAttention/makeCache(batch:capacity:)`` and advanced by
/// ``MultiHeadAttention/decode(_:cache:)``. Keys are stored per head contiguously,
/// `[B, Hkv, capacity, Dk]` (values `[B, Hkv, capacity, Dv]`): position `t` of head `h` in
/// batch entry `b` is row `t` of that head's block, so attention reads each head's first
/// ``count`` rows as one matrix. When a step needs more room, the capacity grows
/// geometrically (at least doubling), so a generation of N tokens copies O(N) rows in total,
/// never O(N²).
///
/// A cache is a value: copying it and decoding with both copies gives two independent
/// continuations (the storage is copied on the first write after the copy).
///
/// ```swift
/// var cache = mha.makeCache(batch: 1)
/// for token in prompt { _ = try mha.decode(token, cache: &cache) }   // token [1, 1, E]
/// ```
public struct KVCache: Sendable {
    /// B, the batch size the cache was made for.
    public let batch: Int
    /// The number of positions cached (the same for every batch entry).
    public private(set) var count = 0
    /// Positions that fit before the storage must grow.
    public private(set) var capacity = 0

    /// The layer that made the cache, and its head geometry.
    let layer: Int
    let kvHeads: Int
    let headDim: Int
    let valueHeadDim: Int
    /// The capacity to allocate on the first write (from `makeCache(batch:capacity:)`; a
    /// negative one makes every decode throw).
    let requestedCapacity: Int
    /// `[B, Hkv, capacity, Dk]` and `[B, Hkv, capacity, Dv]`; rows at or past `count` are unused.
    var keys: Tensor<Float>
    var values: Tensor<Float>
    /// How many times the storage was reallocated (tests check the growth is geometric).
    var reallocations = 0

    init(layer: MultiHeadAttention, batch: Int, capacity: Int) {
        self.batch = batch
        self.layer = layer.identity
        self.kvHeads = layer.kvHeads
        self.headDim = layer.headDim
        self.valueHeadDim = layer.valueHeadDim
        self.requestedCapacity = capacity
        self.keys = Tensor(validatedShape: [0], scalars: [])
        self.values = Tensor(validatedShape: [0], scalars: [])
    }

    /// Forgets every cached position, keeping the storage for the next sequence.
    public mutating func removeAll() {
        count = 0
    }

    /// Makes room for `newCount` positions: at least doubles the capacity when it grows,
    /// copying each head's `count` cached rows into the new storage.
    mutating func reserve(_ newCount: Int) throws {
        guard newCount > capacity else { return }
        let newCapacity = capacity == 0
            ? max(newCount, requestedCapacity, 8)              // requestedCapacity ≥ 0: decode checked it
            : max(newCount, capacity.multipliedReportingOverflow(by: 2).partialValue)
        let keyShape = [batch, kvHeads, newCapacity, headDim]
        let valueShape = [batch, kvHeads, newCapacity, valueHeadDim]
        let keyCount = try elementCount(of: keyShape)
        let valueCount = try elementCount(of: valueShape)
        guard newCapacity <= BLAS.maximumDimension else {
            throw AttentionError(.sizeOverflow, "a KV cache of \(newCapacity) positions exceeds BLAS's 32-bit sizes")
        }
        keys = grow(keys, to: keyShape, count: keyCount, width: headDim, newCapacity: newCapacity)
        values = grow(values, to: valueShape, count: valueCount, width: valueHeadDim, newCapacity: newCapacity)
        if capacity > 0 { reallocations += 1 }
        capacity = newCapacity
    }

    /// New storage of `shape` with the first `count` rows of every head copied over; the
    /// rest is zero.
    private func grow(_ old: Tensor<Float>, to shape: [Int], count total: Int, width: Int, newCapacity: Int) -> Tensor<Float> {
        var scalars = [Float](repeating: 0, count: total)
        let units = batch * kvHeads
        if count > 0, units > 0, width > 0 {
            old.withUnsafeBufferPointer { src in
                scalars.withUnsafeMutableBufferPointer { dst in
                    let (src, dst) = (nonNull(src.baseAddress), nonNull(dst.baseAddress))
                    for unit in 0..<units {
                        // [count, D] rows of head (b, h): old stride capacity·D, new newCapacity·D
                        (dst + unit * newCapacity * width).update(from: src + unit * capacity * width, count: count * width)
                    }
                }
            }
        }
        return Tensor(validatedShape: shape, scalars: scalars)          // [B, Hkv, newCapacity, D]
    }

    /// Writes `rows[b·n + t, h·D ..< (h+1)·D]` (a projection's `[B·n, Hkv·D]` output) to
    /// position `count + t` of head `(b, h)`.
    mutating func append(keys newKeys: UnsafePointer<Float>, values newValues: UnsafePointer<Float>, tokens n: Int) {
        let (H, cap, start) = (kvHeads, capacity, count)
        func store(_ rows: UnsafePointer<Float>, into storage: inout Tensor<Float>, width D: Int) {
            guard D > 0 else { return }
            storage.withUnsafeMutableBufferPointer { buffer in
                let base = nonNull(buffer.baseAddress)                     // [B, Hkv, cap, D]
                for b in 0..<batch {
                    for h in 0..<H {
                        let head = base + ((b * H + h) * cap + start) * D
                        for t in 0..<n {
                            // cache[b, h, start + t, :] = rows[b·n + t, h·D ..< (h+1)·D]
                            (head + t * D).update(from: rows + ((b * n + t) * H + h) * D, count: D)
                        }
                    }
                }
            }
        }
        store(newKeys, into: &keys, width: headDim)
        store(newValues, into: &values, width: valueHeadDim)
        count += n
    }
}

extension MultiHeadAttention {
    /// Makes an empty KV cache for decoding `batch` sequences with this layer.
    ///
    /// Storage is allocated on the first ``decode(_:cache:)``, for `capacity` positions if
    /// given (avoiding any regrowth up to that length), and grows geometrically after that.
    ///
    /// Making a cache never throws, so that `var cache = mha.makeCache(batch: 1)` needs no
    /// `try`. A negative `batch` or `capacity` still gives a cache, one that every
    /// ``decode(_:cache:)`` refuses (even with no tokens) by throwing ``AttentionError`` with
    /// code `.cacheMismatch`, before anything is computed or allocated.
    ///
    /// - Parameters:
    ///   - batch: B, the batch size of the tokens that will be decoded; at least 0.
    ///   - capacity: Positions to allocate up front (e.g. the prompt plus the tokens to
    ///     generate), at least 0; 0 lets the cache grow from a small size.
    /// - Returns: A cache that only this layer (and its copies) accepts.
    public func makeCache(batch: Int, capacity: Int = 0) -> KVCache {
        KVCache(layer: self, batch: batch, capacity: capacity)
    }

    /// Decodes the next tokens: projects them, appends their keys and values to `cache`, and
    /// lets each attend to every cached position up to and including itself.
    ///
    /// ```
    /// n new tokens x [B, n, E] at positions P ..< P + n   (P = cache.count before the call)
    /// K[:, :, P..<P+n], V[:, :, P..<P+n] = heads(x·W_kᵀ + b_k), heads(x·W_vᵀ + b_v)
    /// output[:, t] = MHA of token P + t over positions 0 ... P + t     [B, n, E_out]
    /// ```
    ///
    /// This is causal self-attention computed incrementally: decoding a sequence one token at
    /// a time, or in chunks of any size, gives the rows of
    /// `self(query: x, key: x, value: x, mask: .causal(.upperLeft))` over the whole sequence
    /// (up to float rounding). A step with n = 0 returns an empty result and leaves the
    /// cache unchanged.
    ///
    /// The attention is the library's scaled dot-product attention with
    /// ``AttentionKernel/automatic``, over the cache's per-head storage `[B, Hkv, capacity, D]`
    /// read in place: the new queries are aligned to the end of the `P + n` cached positions,
    /// ``CausalAlignment/lowerRight`` measured from `P + n` rather than from the capacity
    /// (the core takes contiguous tensors, so it cannot be handed the first `P + n` rows of
    /// each head without a copy). That mask only ends each query's row early, at key
    /// `P + t + 1` for new token t, so the kernels skip the unused capacity and the keys
    /// after each token, and no mask tensor is built whatever n and the capacity.
    ///
    /// - Parameters:
    ///   - tokens: `[B, n, E]`, or `[n, E]` for a cache of batch 1. Decoding projects the same
    ///     tokens as queries, keys and values, so the layer's key and value widths must be E.
    ///   - cache: A cache from this layer's ``makeCache(batch:capacity:)`` for batch B.
    /// - Returns: `[B, n, E_out]` (`[n, E_out]` for rank-2 tokens).
    /// - Throws: ``AttentionError`` before anything is computed or cached: `.invalidRank` for
    ///   tokens not of rank 2 or 3, `.inputWidth` when their width is not E or the layer's key
    ///   or value width differs from E, `.cacheMismatch` when the cache comes from another
    ///   layer or batch size or was made with a negative batch or capacity, `.sizeOverflow`,
    ///   or `.threadCount`.
    public func decode(_ tokens: Tensor<Float>, cache: inout KVCache) throws -> Tensor<Float> {
        let shape = tokens.shape
        guard shape.count == 2 || shape.count == 3 else {
            throw AttentionError(.invalidRank, "decode takes tokens [B, n, E] or [n, E]; got \(describe(shape))")
        }
        guard shape.last! == modelDim else {
            throw AttentionError(.inputWidth,
                "tokens \(describe(shape)) have width \(shape.last!) but the layer's model width is \(modelDim) "
                + "(query weight \(describe(queryProjection.weight.shape)))")
        }
        guard keyDim == modelDim, valueDim == modelDim else {
            throw AttentionError(.inputWidth,
                "decode projects the tokens as keys and values too, so the key and value widths must equal the model width "
                + "\(modelDim); this layer has keyDim \(keyDim), valueDim \(valueDim)")
        }
        guard cache.layer == identity, cache.kvHeads == kvHeads, cache.headDim == headDim,
              cache.valueHeadDim == valueHeadDim else {
            throw AttentionError(.cacheMismatch,
                "the cache was made by another layer (\(cache.kvHeads) kv heads of width \(cache.headDim)/\(cache.valueHeadDim)); "
                + "this layer has \(kvHeads) kv heads of width \(headDim)/\(valueHeadDim): make one with makeCache(batch:)")
        }
        guard cache.batch >= 0, cache.requestedCapacity >= 0 else {
            throw AttentionError(.cacheMismatch,
                "the cache was made with batch \(cache.batch) and capacity \(cache.requestedCapacity); "
                + "makeCache(batch:capacity:) needs both at least 0")
        }
        let B = shape.count == 3 ? shape[0] : 1
        let n = shape[shape.count - 2]
        guard cache.batch == B else {
            throw AttentionError(.cacheMismatch,
                "the cache was made for batch \(cache.batch) but tokens \(describe(shape)) have batch \(B)")
        }
        let (total, overflow) = cache.count.addingReportingOverflow(n)
        guard !overflow, total <= BLAS.maximumDimension else {
            throw AttentionError(.sizeOverflow, "\(cache.count) cached positions plus \(n) tokens exceed BLAS's 32-bit sizes")
        }
        try checkSizes(batch: B, queryLength: n, keyLength: n, what: "tokens \(describe(shape))")
        let threads = try AttentionThreads.count()
        let outputShape = shape.count == 3 ? [B, n, outputDim] : [n, outputDim]
        guard n > 0 else { return Tensor(validatedShape: outputShape, scalars: []) }   // [B, 0, E_out]

        try cache.reserve(total)
        let P = cache.count

        // New keys and values: one projection each over all B·n rows, then into the cache.
        let kWidth = kvHeads * headDim, vWidth = kvHeads * valueHeadDim
        let newKeys = UnsafeMutablePointer<Float>.allocate(capacity: max(1, B * n * kWidth))     // [B·n, Hkv·Dk]
        let newValues = UnsafeMutablePointer<Float>.allocate(capacity: max(1, B * n * vWidth))   // [B·n, Hkv·Dv]
        defer { newKeys.deallocate(); newValues.deallocate() }
        tokens.withUnsafeBufferPointer { x in
            let x = nonNull(x.baseAddress)                                                     // [B·n, E]
            BLAS.withThreads(threads) {
                keyProjection.apply(rows: B * n, input: x, inputStride: modelDim, output: newKeys, outputStride: kWidth)       // [B·n, Hkv·Dk]
                valueProjection.apply(rows: B * n, input: x, inputStride: modelDim, output: newValues, outputStride: vWidth)   // [B·n, Hkv·Dv]
            }
        }
        cache.append(keys: newKeys, values: newValues, tokens: n)    // cache[b, h, P + t, :]

        let scratch = Scratch()                                                              // only used when n > 1
        defer { scratch.free() }
        let q = projectHeads(queryProjection, tokens, batch: B, length: n, heads: heads, width: headDim, threads: threads, scratch: scratch)  // [B, Hq, n, Dk]
        // Query t (position P + t) sees positions 0 ... P + t: the lower-right causal
        // alignment over the P + n valid keys of the [B, Hkv, cap, D] storage, which also
        // hides the unused capacity. It only ends each row early (row t at P + t + 1), so the
        // kernels skip the rest and no [n, cap] pattern is built.
        let mask = AttentionMask.causalToKeyLengths([Int](repeating: P + n, count: B))
        let attention = try scaledDotProductAttention(query: q, key: cache.keys, value: cache.values,
                                                      mask: mask, kernel: .automatic)      // [B, Hq, n, Dv]
        let output = projectOutput(attention, batch: B, length: n, threads: threads, scratch: scratch)   // [B, n, E_out]
        return Tensor(validatedShape: outputShape, scalars: output.scalars)                   // [B, n, E_out] or [n, E_out]
    }
}
