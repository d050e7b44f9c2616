/// The keys and values a ``MultiHeadAttention`` layer has projected so far, for decoding one
/// token (or a few) at a time without recomputing the past.
///
/// Made by ``MultiHeadAttention/makeCache(batch:capacity:)`` and advanced by
/// ``MultiHeadAttention/decode(_:cache:mask:)``. Keys are stored per head contiguously,
/// `[B, Hkv, capacity, Dk]` (values `[B, Hkv, capacity, Dv]`): position `t` of head `h` in
/// batch entry `b` is row `t` of that head's block, so attention reads each head's first
/// ``count`` rows as one matrix. When a step needs more room, the capacity grows
/// geometrically (at least doubling), so a generation of N tokens copies O(N) rows in total,
/// never O(N²).
///
/// A cache is a value: copying it and decoding with both copies gives two independent
/// continuations (the storage, its whole ``capacity``, is copied on the first write after
/// the copy).
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
        self.init(layer: layer.identity, kvHeads: layer.kvHeads, headDim: layer.headDim,
                  valueHeadDim: layer.valueHeadDim, batch: batch, capacity: capacity)
    }

    private init(layer: Int, kvHeads: Int, headDim: Int, valueHeadDim: Int, batch: Int, capacity: Int) {
        self.batch = batch
        self.layer = layer
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.valueHeadDim = valueHeadDim
        self.requestedCapacity = capacity
        self.keys = Tensor(validatedShape: [0], scalars: [])
        self.values = Tensor(validatedShape: [0], scalars: [])
    }

    /// Forgets every cached position, keeping the storage for the next sequence.
    public mutating func removeAll() {
        count = 0
    }

    /// Forgets the last `k` cached positions of every batch entry, keeping the storage: rolls
    /// a generation back, as speculative decoding does with rejected draft tokens.
    ///
    /// The next ``MultiHeadAttention/decode(_:cache:mask:)`` writes at position `count`, so
    /// decoding after `removeLast(k)` gives what decoding from the shorter cache would have.
    ///
    /// - Parameter k: The number of positions to forget, `0...count`.
    /// - Throws: ``AttentionError`` with code `.cacheMismatch` when `k` is negative or more
    ///   than ``count``.
    public mutating func removeLast(_ k: Int) throws {
        guard k >= 0, k <= count else {
            throw AttentionError(.cacheMismatch, "cannot remove the last \(k) positions of a cache that holds \(count)")
        }
        count -= k
    }

    /// A cache holding the batch entries `indices` of this one, in that order: beam search's
    /// reordering (an entry may appear several times, or not at all), or a batch without
    /// the sequences that have finished.
    ///
    /// ```
    /// selected.keys[i, h, t, :] = keys[indices[i], h, t, :]   for t < count (values alike)
    /// ```
    ///
    /// The result has batch size `indices.count`, the same ``count`` and ``capacity``, and
    /// belongs to the same layer; this cache is unchanged.
    ///
    /// - Parameter indices: Batch entries of this cache, each in `0..<batch`.
    /// - Returns: The selected cache, whose storage is a new copy of the selected entries.
    /// - Throws: ``AttentionError`` with code `.cacheMismatch` when an index is outside
    ///   `0..<batch`, `.sizeOverflow` when the new storage does not fit in memory.
    public func selectingBatch(_ indices: [Int]) throws -> KVCache {
        if let bad = indices.first(where: { $0 < 0 || $0 >= batch }) {
            throw AttentionError(.cacheMismatch,
                "batch index \(bad) is outside the cache's batch entries 0..<\(max(batch, 0))")
        }
        var selected = KVCache(layer: layer, kvHeads: kvHeads, headDim: headDim, valueHeadDim: valueHeadDim,
                               batch: indices.count, capacity: requestedCapacity)
        guard capacity > 0 else { return selected }                      // nothing stored yet
        try checkStorage(batch: indices.count, positions: capacity)
        selected.keys = copied(keys, width: headDim, entries: indices, rows: capacity)
        selected.values = copied(values, width: valueHeadDim, entries: indices, rows: capacity)
        selected.capacity = capacity
        selected.count = count
        return selected
    }

    /// `.sizeOverflow` unless key and value storage for `batch` entries of `positions`
    /// positions fits in memory.
    private func checkStorage(batch: Int, positions: Int) throws {
        let keyShape = [batch, kvHeads, positions, headDim]
        let valueShape = [batch, kvHeads, positions, valueHeadDim]
        try checkAllocation(count: elementCount(of: keyShape).addingReportingOverflow(elementCount(of: valueShape)),
                            of: Float.self, "a KV cache of \(positions) positions for \(batch) batch entries "
                                + "(keys \(describe(keyShape)), values \(describe(valueShape)))")
    }

    /// New storage `[entries.count, Hkv, rows, D]` holding the batch entries `entries` of
    /// `storage` (`[B, Hkv, capacity, D]`): the first `count` rows of each of their heads
    /// copied, the rest zero. Growing the cache re-lays every entry with more rows; selecting
    /// entries keeps the rows.
    private func copied(_ storage: Tensor<Float>, width: Int, entries: [Int], rows: Int) -> Tensor<Float> {
        var scalars = [Float](repeating: 0, count: entries.count * kvHeads * rows * width)
        if count > 0, width > 0 {
            storage.withUnsafeBufferPointer { src in
                scalars.withUnsafeMutableBufferPointer { dst in
                    let (src, dst) = (nonNull(src.baseAddress), nonNull(dst.baseAddress))
                    for (i, b) in entries.enumerated() {
                        for h in 0..<kvHeads {
                            // [count, D] rows of head (b, h), stride capacity·D → head (i, h), stride rows·D
                            (dst + (i * kvHeads + h) * rows * width).update(from: src + (b * kvHeads + h) * capacity * width,
                                                                            count: count * width)
                        }
                    }
                }
            }
        }
        return Tensor(validatedShape: [entries.count, kvHeads, rows, width], scalars: scalars)   // [B', Hkv, rows, D]
    }

    /// Makes room for `newCount` positions: at least doubles the capacity when it grows (up
    /// to BLAS's 32-bit limit, which `newCount` itself may not pass), copying each head's
    /// `count` cached rows into the new storage.
    /// With `exactly`, a first allocation takes exactly `newCount` positions (a cache of
    /// projected encoder output, which never grows, is then read in place).
    mutating func reserve(_ newCount: Int, exactly: Bool = false) throws {
        guard newCount > capacity else { return }
        let newCapacity = capacity == 0
            ? (exactly ? newCount : max(newCount, requestedCapacity, 8))   // requestedCapacity ≥ 0: decode checked it
            : max(newCount, min(2 * capacity, BLAS.maximumDimension))            // capacity ≤ that limit
        guard newCapacity <= BLAS.maximumDimension else {
            throw AttentionError(.sizeOverflow, "a KV cache of \(newCapacity) positions exceeds BLAS's 32-bit sizes")
        }
        try checkStorage(batch: batch, positions: newCapacity)
        keys = copied(keys, width: headDim, entries: Array(0..<batch), rows: newCapacity)            // [B, Hkv, newCapacity, Dk]
        values = copied(values, width: valueHeadDim, entries: Array(0..<batch), rows: newCapacity)   // [B, Hkv, newCapacity, Dv]
        if capacity > 0 { reallocations += 1 }
        capacity = newCapacity
    }

    /// The storage as the core attention reads it, `[B, Hkv, capacity, D]`: empty tensors of
    /// that shape before the first allocation (whose placeholder storage has no such shape).
    func storedTensors() -> (keys: Tensor<Float>, values: Tensor<Float>) {
        guard capacity == 0 else { return (keys, values) }
        return (Tensor(validatedShape: [batch, kvHeads, 0, headDim], scalars: []),
                Tensor(validatedShape: [batch, kvHeads, 0, valueHeadDim], scalars: []))
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
    /// Storage is allocated on the first ``decode(_:cache:mask:)``, for `capacity` positions if
    /// given (avoiding any regrowth up to that length), and grows geometrically after that.
    ///
    /// Making a cache never throws, so that `var cache = mha.makeCache(batch: 1)` needs no
    /// `try`. A negative `batch` or `capacity` still gives a cache, one that every
    /// ``decode(_:cache:mask:)`` refuses (even with no tokens) by throwing ``AttentionError`` with
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
    /// lets each attend to every cached position up to and including itself (those a `mask`
    /// leaves, when one is given).
    ///
    /// ```
    /// n new tokens x [B, n, E] at positions P ..< P + n   (P = cache.count before the call)
    /// K[:, :, P..<P+n], V[:, :, P..<P+n] = heads(x·W_kᵀ + b_k), heads(x·W_vᵀ + b_v)
    /// output[:, t] = MHA of token P + t over positions 0 ... P + t     [B, n, E_out]
    /// ```
    ///
    /// With ``rotary`` embeddings, the new queries and keys are rotated to their positions
    /// `P ..< P + n`, and the keys are cached rotated.
    ///
    /// Without a mask this is causal self-attention computed incrementally: decoding a
    /// sequence one token at a time, or in chunks of any size, gives the rows of
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
    /// after each token, and no mask tensor is built whatever n and the capacity (unless the
    /// caller's `mask` has tensors, below).
    ///
    /// A `mask` adds to the causal one, over this step's scores `[B, Hq, n, P + n]`: for
    /// batched generation from prompts of different lengths, left-pad them and exclude the
    /// padding, `.boolean(allowed)` with `allowed` of shape `[B, 1, 1, P + n]` (`false` at the
    /// padding positions; it grows by n each step), or give a bias such as ALiBi's
    /// `[1, Hq, n, P + n]` slice. Tensors are read as given and only padded along the keys to
    /// the cache's storage (their last dimension, when it is `P + n`: a copy of rows ×
    /// capacity elements, so a per-step `[1, Hq, n, P + n]` bias under a large reserved
    /// capacity costs Hq · n · capacity floats; `.sizeOverflow` beyond the machine's memory); `.keyLengths` counts
    /// from position 0; `.causal(.lowerRight)` is the step's own causal mask again, and
    /// `.causal(.upperLeft)` lets new token t see keys `0 ... t` only.
    ///
    /// - Parameters:
    ///   - tokens: `[B, n, E]`, or `[n, E]` for a cache of batch 1. Decoding projects the same
    ///     tokens as queries, keys and values, so the layer's key and value widths must be E.
    ///   - cache: A cache from this layer's ``makeCache(batch:capacity:)`` for batch B.
    ///   - mask: More exclusions or biases over `[B, Hq, n, P + n]`, as above; none by default.
    /// - Returns: `[B, n, E_out]` (`[n, E_out]` for rank-2 tokens).
    /// - Throws: ``AttentionError`` before anything is computed or cached: `.invalidRank` for
    ///   tokens not of rank 2 or 3, `.inputWidth` when their width is not E or the layer's key
    ///   or value width differs from E, `.cacheMismatch` when the cache comes from another
    ///   layer or batch size or was made with a negative batch or capacity, `.maskShape` or
    ///   `.keyLengths` for a mask that does not fit the step's scores, `.sizeOverflow`, or
    ///   `.threadCount`.
    public func decode(_ tokens: Tensor<Float>, cache: inout KVCache, mask: AttentionMask = .none) throws -> Tensor<Float> {
        let shape = tokens.shape
        let (B, n) = try tokenSizes(shape, caller: "decode")
        guard keyDim == modelDim, valueDim == modelDim else {
            throw AttentionError(.inputWidth,
                "decode projects the tokens as keys and values too, so the key and value widths must equal the model width "
                + "\(modelDim); this layer has keyDim \(keyDim), valueDim \(valueDim)")
        }
        try checkOwner(of: cache, remedy: "makeCache(batch:)")
        guard cache.batch >= 0, cache.requestedCapacity >= 0 else {
            throw AttentionError(.cacheMismatch,
                "the cache was made with batch \(cache.batch) and capacity \(cache.requestedCapacity); "
                + "makeCache(batch:capacity:) needs both at least 0")
        }
        try checkBatch(of: cache, batch: B, tokens: shape)
        let (total, overflow) = cache.count.addingReportingOverflow(n)
        guard !overflow, total <= BLAS.maximumDimension else {
            throw AttentionError(.sizeOverflow, "\(cache.count) cached positions plus \(n) tokens exceed BLAS's 32-bit sizes")
        }
        try checkSizes(batch: B, queryLength: n, keyLength: n, what: "tokens \(describe(shape))")
        let threads = try AttentionThreads.count()
        let outputShape = shape.count == 3 ? [B, n, outputDim] : [n, outputDim]
        // The core's checks on the step's attention (S = the positions after the step; the
        // storage it reads is checked when it grows), before anything is cached.
        let step = try AttentionProblem(query: [B, heads, n, headDim], key: [B, kvHeads, total, headDim],
                                        value: [B, kvHeads, total, valueHeadDim])
        _ = try ResolvedMask(mask, problem: step)                                            // over [B, Hq, n, P + n]
        guard n > 0 else { return Tensor(validatedShape: outputShape, scalars: []) }   // [B, 0, E_out]
        _ = try step.checkResults(wantWeights: false, "tokens \(describe(shape)), \(total) positions")

        try cache.reserve(total)
        let P = cache.count
        let stepMask = try mask.overStorage(valid: total, capacity: cache.capacity, batch: B)   // [B, Hq, n, capacity]

        let positions = rotary?.table(start: P, count: n, threads: threads)                // the step's positions P ..< P + n
        appendProjected(key: tokens, value: tokens, batch: B, tokens: n, to: &cache, rotation: positions,
                        threads: threads)                                                    // cache[b, h, P + t, :]

        let scratch = Scratch()                                                              // only used when n > 1
        defer { scratch.free() }
        var q = projectHeads(queryProjection, tokens, batch: B, length: n, heads: heads, width: headDim, threads: threads, scratch: scratch)  // [B, Hq, n, Dk]
        rotate(&q, table: positions, threads: threads)                                      // queries at positions P ..< P + n
        // Query t (position P + t) sees positions 0 ... P + t: the lower-right causal
        // alignment over the P + n valid keys of the [B, Hkv, cap, D] storage, which also
        // hides the unused capacity. It only ends each row early (row t at P + t + 1), so the
        // kernels skip the rest and no [n, cap] pattern is built.
        let causal = AttentionMask.causalToKeyLengths([Int](repeating: P + n, count: B))
        let attention = try scaledDotProductAttention(query: q, key: cache.keys, value: cache.values,
                                                      mask: [causal, stepMask],
                                                      kernel: .automatic)                  // [B, Hq, n, Dv]
        let output = projectOutput(attention, batch: B, length: n, threads: threads, scratch: scratch)   // [B, n, E_out]
        return Tensor(validatedShape: outputShape, scalars: output.scalars)                   // [B, n, E_out] or [n, E_out]
    }
}

extension MultiHeadAttention {
    /// B and n of tokens `[B, n, E]` (or `[n, E]`, B = 1) for `decode` and `attend`, which
    /// `caller` names in messages: `.invalidRank` for other ranks, `.inputWidth` when the
    /// width is not the model width.
    func tokenSizes(_ shape: [Int], caller: String) throws -> (batch: Int, count: Int) {
        guard shape.count == 2 || shape.count == 3 else {
            throw AttentionError(.invalidRank, "\(caller) takes tokens [B, n, E] or [n, E]; got \(describe(shape))")
        }
        guard shape.last! == modelDim else {
            throw AttentionError(.inputWidth,
                "tokens \(describe(shape)) have width \(shape.last!) but the layer's model width is \(modelDim) "
                + "(query weight \(describe(queryProjection.weight.shape)))")
        }
        return (shape.count == 3 ? shape[0] : 1, shape[shape.count - 2])
    }

    /// Projects `key` `[B·n, keyDim]` and `value` `[B·n, valueDim]` (one projection each over
    /// all B·n rows) and appends them to `cache` as n positions of each batch entry, the keys
    /// rotated by `rotation` (the positions `P ..< P + n` after the cached ones) when the layer
    /// has rotary embeddings; the cache has room for them.
    func appendProjected(key: Tensor<Float>, value: Tensor<Float>, batch B: Int, tokens n: Int,
                         to cache: inout KVCache, rotation: RotaryTable?, threads: Int) {
        let kWidth = kvHeads * headDim, vWidth = kvHeads * valueHeadDim
        let keys = UnsafeMutablePointer<Float>.allocate(capacity: max(1, B * n * kWidth))      // [B·n, Hkv·Dk]
        let values = UnsafeMutablePointer<Float>.allocate(capacity: max(1, B * n * vWidth))    // [B·n, Hkv·Dv]
        defer { keys.deallocate(); values.deallocate() }
        key.withUnsafeBufferPointer { k in
            value.withUnsafeBufferPointer { v in
                BLAS.withThreads(threads) {
                    keyProjection.apply(rows: B * n, input: nonNull(k.baseAddress), inputStride: keyDim,
                                        output: keys, outputStride: kWidth)                   // [B·n, Hkv·Dk]
                    valueProjection.apply(rows: B * n, input: nonNull(v.baseAddress), inputStride: valueDim,
                                          output: values, outputStride: vWidth)               // [B·n, Hkv·Dv]
                }
            }
        }
        // Keys are cached rotated, at their positions P ..< P + n.
        if let rotary, let rotation {
            rotary.rotate(keys, batch: B, length: n, heads: kvHeads, width: headDim, tokenMajor: true,
                          table: rotation, threads: threads)                                  // [B, n, Hkv, Dk]
        }
        cache.append(keys: keys, values: values, tokens: n)                                   // cache[b, h, P + t, :]
    }

    /// `.cacheMismatch` unless this layer (or a copy) made `cache`; `remedy` names the call
    /// that makes a fitting one.
    func checkOwner(of cache: KVCache, remedy: String) throws {
        let sameShape = cache.kvHeads == kvHeads && cache.headDim == headDim && cache.valueHeadDim == valueHeadDim
        guard cache.layer == identity, sameShape else {
            throw AttentionError(.cacheMismatch, sameShape
                ? "the cache was made by another layer of the same shape (\(kvHeads) kv heads of width \(headDim)/\(valueHeadDim)); "
                    + "a cache belongs to the layer that made it and that layer's copies, since other weights give other keys "
                    + "and values: make one with \(remedy)"
                : "the cache was made by another layer (\(cache.kvHeads) kv heads of width \(cache.headDim)/\(cache.valueHeadDim)); "
                    + "this layer has \(kvHeads) kv heads of width \(headDim)/\(valueHeadDim): make one with \(remedy)")
        }
    }

    /// `.cacheMismatch` unless `cache` was made for the batch size B of `tokens`.
    func checkBatch(of cache: KVCache, batch B: Int, tokens shape: [Int]) throws {
        guard cache.batch == B else {
            throw AttentionError(.cacheMismatch,
                "the cache was made for batch \(cache.batch) but tokens \(describe(shape)) have batch \(B)")
        }
    }
}

// MARK: - Cross-attention: project the encoder's output once

extension MultiHeadAttention {
    /// Projects keys and values once into a cache that later calls attend to without
    /// projecting them again: the encoder's output (the "memory") of encoder-decoder
    /// attention, which every decoding step of a generation attends to unchanged.
    ///
    /// ```
    /// key [B, S, kdim], value [B, S, vdim]
    /// cache.keys   = heads(key · W_kᵀ + b_k)     [B, Hkv, S, Dk]
    /// cache.values = heads(value · W_vᵀ + b_v)   [B, Hkv, S, Dv]
    /// ```
    ///
    /// With ``rotary`` embeddings the keys are rotated to positions `0 ..< S`, as in a
    /// forward call.
    ///
    /// ```swift
    /// let cross = try MultiHeadAttention(modelDim: 512, heads: 8, keyDim: 768, valueDim: 768, seed: 2)
    /// let encoded = try cross.makeCache(key: memory, value: memory)   // memory [B, S, 768], projected once
    /// for step in 0..<steps {
    ///     let y = try cross.attend(decoderStates, to: encoded, mask: .keyLengths(memoryLengths))  // [B, n, 512]
    /// }
    /// ```
    ///
    /// The storage is allocated for exactly S positions, so ``attend(_:to:mask:)`` reads it
    /// in place. ``decode(_:cache:mask:)`` could append to such a cache like any other, but its
    /// causal mask is meant for self-attention.
    ///
    /// - Parameters:
    ///   - key: `[B, S, kdim]`, or `[S, kdim]` for batch 1: the layer's key width.
    ///   - value: `[B, S, vdim]`, or `[S, vdim]`: the layer's value width, same B and S.
    /// - Returns: A cache holding the S projected positions (``KVCache/count`` = S) for
    ///   this layer and batch size B.
    /// - Throws: ``AttentionError`` before anything is computed: `.invalidRank` unless both
    ///   are rank 3 (or both rank 2), `.inputWidth` when a width does not match its
    ///   projection, `.batchMismatch`, `.sequenceLengthMismatch` when their lengths differ,
    ///   `.sizeOverflow`, or `.threadCount`.
    public func makeCache(key: Tensor<Float>, value: Tensor<Float>) throws -> KVCache {
        let shapes = "key \(describe(key.shape)), value \(describe(value.shape))"
        guard (2...3).contains(key.rank), key.rank == value.rank else {
            throw AttentionError(.invalidRank, "key and value must both be rank 3 [B, S, E] or both rank 2 [S, E]; got \(shapes)")
        }
        try checkInputWidths([("key", key.shape, keyDim, keyProjection), ("value", value.shape, valueDim, valueProjection)],
                             shapes)
        let rank = key.rank
        let B = rank == 3 ? key.shape[0] : 1
        guard rank == 2 || value.shape[0] == B else {
            throw AttentionError(.batchMismatch, "batch sizes differ: key \(B), value \(value.shape[0]) (\(shapes))")
        }
        let S = key.shape[rank - 2]
        guard value.shape[rank - 2] == S else {
            throw AttentionError(.sequenceLengthMismatch,
                "key length \(S) does not match value length \(value.shape[rank - 2]) (\(shapes))")
        }
        try checkSizes(batch: B, queryLength: 0, keyLength: S, what: shapes)
        let threads = try AttentionThreads.count()

        var cache = makeCache(batch: B)
        try cache.reserve(S, exactly: true)
        guard S > 0 else { return cache }
        appendProjected(key: key, value: value, batch: B, tokens: S, to: &cache,
                        rotation: rotary?.table(start: 0, count: S, threads: threads), threads: threads)   // cache[b, h, t, :], keys at 0 ..< S
        return cache
    }

    /// Attends new queries to every position in `cache`, without appending anything: the
    /// decoder side of encoder-decoder attention over a cache from
    /// ``makeCache(key:value:)``.
    ///
    /// ```
    /// Q = heads(tokens · W_qᵀ + b_q)                                     [B, Hq, n, Dk]
    /// output = concat_h(softmax(Q_h · K_gᵀ/√Dk + mask) · V_g) · W_oᵀ + b_o  [B, n, E_out]
    /// ```
    ///
    /// with K and V the cache's S = ``KVCache/count`` positions, so the result equals
    /// `self(query: tokens, key: key, value: value, mask: mask)` for the key and value the
    /// cache was made from (up to float rounding), at the cost of the query and output
    /// projections only. With ``rotary`` embeddings the queries are rotated to positions
    /// `0 ..< n`, as in that call; queries that continue a sequence (after a cache that
    /// ``decode(_:cache:mask:)`` filled) belong in `decode` instead, which places them after
    /// the cached positions (on a copy of the cache, or followed by
    /// ``KVCache/removeLast(_:)``, to leave it as it was).
    ///
    /// - Parameters:
    ///   - tokens: `[B, n, E]`, or `[n, E]` for a cache of batch 1.
    ///   - cache: A cache from this layer (``makeCache(key:value:)``, or
    ///     ``makeCache(batch:capacity:)`` advanced by ``decode(_:cache:mask:)``, whose storage
    ///     may be longer than S: it is read in place, as in decoding) for batch B.
    ///   - mask: Over the scores `[B, Hq, n, S]`: `.keyLengths` for padded memory, say.
    /// - Returns: `[B, n, E_out]` (`[n, E_out]` for rank-2 tokens).
    /// - Throws: ``AttentionError`` before anything is computed: `.invalidRank` for tokens
    ///   not of rank 2 or 3, `.inputWidth` when their width is not E, `.cacheMismatch` when
    ///   the cache comes from another layer or batch size, `.maskShape`/`.keyLengths` for a
    ///   mask that does not fit the scores, `.sizeOverflow`, or `.threadCount`.
    public func attend(_ tokens: Tensor<Float>, to cache: KVCache, mask: AttentionMask = .none) throws -> Tensor<Float> {
        let shape = tokens.shape
        let (B, n) = try tokenSizes(shape, caller: "attend")
        try checkOwner(of: cache, remedy: "makeCache(key:value:)")
        try checkBatch(of: cache, batch: B, tokens: shape)
        let S = cache.count
        try checkSizes(batch: B, queryLength: n, keyLength: 0, what: "tokens \(describe(shape))")   // no keys are projected
        // Everything the core would reject is checked here, before any arithmetic.
        let problem = try AttentionProblem(query: [B, heads, n, headDim], key: [B, kvHeads, S, headDim],
                                           value: [B, kvHeads, S, valueHeadDim])
        _ = try ResolvedMask(mask, problem: problem)
        _ = try problem.checkResults(wantWeights: false, "tokens \(describe(shape)), \(S) cached positions")
        let threads = try AttentionThreads.count()
        let outputShape = shape.count == 3 ? [B, n, outputDim] : [n, outputDim]
        guard n > 0 else { return Tensor(validatedShape: outputShape, scalars: []) }   // [B, 0, E_out]

        // The storage [B, Hkv, capacity, D] in place, as decode reads it: key lengths hide the
        // positions past S, and the mask is restated over the storage.
        let stored = try mask.overStorage(valid: S, capacity: cache.capacity, batch: B)
        let (keys, values) = cache.storedTensors()                                       // [B, Hkv, capacity, D]
        let scratch = Scratch()
        defer { scratch.free() }
        var q = projectHeads(queryProjection, tokens, batch: B, length: n, heads: heads, width: headDim,
                             threads: threads, scratch: scratch)                        // [B, Hq, n, Dk]
        rotate(&q, table: rotary?.table(start: 0, count: n, threads: threads), threads: threads)   // queries at 0 ..< n, as in a forward call
        let attention = try scaledDotProductAttention(query: q, key: keys, value: values,
                                                      mask: [.keyLengths([Int](repeating: S, count: B)), stored],
                                                      kernel: .automatic)                // [B, Hq, n, Dv]
        let output = projectOutput(attention, batch: B, length: n, threads: threads, scratch: scratch)   // [B, n, E_out]
        return Tensor(validatedShape: outputShape, scalars: output.scalars)               // [B, n, E_out] or [n, E_out]
    }
}

extension AttentionMask {
    /// This mask, given over scores `[B, Hq, n, valid]` of the first `valid` positions of a
    /// KV cache, restated for the cache's storage of `capacity ≥ valid` keys, which
    /// `decode` and `attend` read in place (each adds a part that ends every row by `valid`).
    /// Boolean and additive tensors whose last (key) dimension is `valid` are copied into
    /// `capacity` columns (`false` / 0 after the valid ones, which no row reaches);
    /// `.causal(.lowerRight)`, which counts from the last key, becomes the same triangle
    /// ending at key `valid − 1` (``causalToKeyLengths(_:)`` for the `batch` entries); the
    /// other parts do not depend on the key count; with no valid key the result is `.none`.
    /// `.sizeOverflow` when a widened tensor would not fit in memory.
    func overStorage(valid: Int, capacity: Int, batch: Int) throws -> AttentionMask {
        // No valid key (an empty cache, which `attend` reads): the caller's part that ends
        // every row by `valid` excludes the whole storage, and this mask has nothing left to
        // say (its tensors have 0 key columns, which would not broadcast to `capacity`).
        guard valid > 0 else { return .none }
        func widened<Element>(_ t: Tensor<Element>, fill: Element) throws -> Tensor<Element> {
            guard let keys = t.shape.last, keys == valid, keys > 1, capacity > valid else { return t }
            let rows = t.scalars.count / keys
            try checkAllocation(count: rows.multipliedReportingOverflow(by: capacity), of: Element.self,
                                "the mask \(describe(t.shape)) widened to the cache's \(capacity) positions")
            var scalars = [Element](repeating: fill, count: rows * capacity)             // [..., capacity]
            t.withUnsafeBufferPointer { source in
                for r in 0..<rows {
                    for j in 0..<keys { scalars[r * capacity + j] = source[r * keys + j] }
                }
            }
            return Tensor(validatedShape: Array(t.shape.dropLast()) + [capacity], scalars: scalars)
        }
        return AttentionMask(parts: try parts.map { part -> Part in
            switch part {
            case .causal(.lowerRight): return .causalToKeyLengths([Int](repeating: valid, count: batch))
            case .boolean(let t): return .boolean(try widened(t, fill: false))
            case .additive(let t): return .additive(try widened(t, fill: 0))
            case .causal(.upperLeft), .keyLengths, .causalToKeyLengths: return part
            }
        })
    }
}
