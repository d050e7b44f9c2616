import Synchronization

/// Multi-head attention: the Transformer layer around scaled dot-product attention, with
/// grouped-query heads and a KV cache for token-by-token decoding.
///
/// ```
/// Q = query · W_qᵀ + b_q      [B, L, Hq·Dk]   → heads [B, Hq, L, Dk]   (rotated, with ``rotary``)
/// K = key   · W_kᵀ + b_k      [B, S, Hkv·Dk]  → heads [B, Hkv, S, Dk]  (rotated, with ``rotary``)
/// V = value · W_vᵀ + b_v      [B, S, Hkv·Dv]  → heads [B, Hkv, S, Dv]
/// A = softmax(Q·Kᵀ/√Dk + mask) · V            [B, Hq, L, Dv]  (query head h uses K/V head h / (Hq/Hkv))
/// output = concat_h(A) · W_oᵀ + b_o           [B, L, E_out]
/// ```
///
/// Shapes: B batch, L queries, S keys, E the model width (`query`'s last dimension), Hq
/// query heads (``heads``), Hkv key/value heads (``kvHeads``; fewer than Hq is grouped-query
/// attention, 1 is multi-query attention), Dk = E_q/Hq the query/key head width, Dv the
/// value head width. Inputs are batch-first `[B, L, E]`; rank-2 inputs `[L, E]` are one
/// sequence. Masks are ``AttentionMask``s over the scores `[B, Hq, L, S]` (`[1, Hq, L, S]`
/// for rank-2 inputs), as in ``scaledDotProductAttention(query:key:value:mask:scale:dropout:kernel:)``.
///
/// The three ways the Transformer uses it:
///
/// ```swift
/// let encoder = try mha(query: x, key: x, value: x, mask: .keyLengths(lengths))   // self-attention, padded batch
/// let decoder = try mha(query: y, key: y, value: y, mask: .causal(.upperLeft))    // causal self-attention
/// let cross   = try mha(query: y, key: memory, value: memory)                     // encoder-decoder attention
/// ```
///
/// and for generation, ``makeCache(batch:capacity:)`` and ``decode(_:cache:mask:)``.
///
/// Positions: like PyTorch's `nn.MultiheadAttention`, the layer adds none of its own unless
/// given ``rotary`` embeddings (RoPE, as in Llama), which rotate the projected Q and K heads
/// before the scores. Positions added to the inputs work either way, and ALiBi is an
/// ``AttentionMask/additive(_:)`` bias. The scores are always scaled by 1/√Dk; for another
/// factor c, scale the query projection's weight and bias by c·√Dk.
///
/// How it runs: each projection is one `cblas_sgemm` over all B·L (or B·S) rows (sgemv for
/// up to three rows; see ``Linear``), on ``AttentionThreads/count()`` OpenBLAS threads. The
/// core attention is the library's ``scaledDotProductAttention(query:key:value:mask:scale:dropout:kernel:)``
/// with ``AttentionKernel/automatic``, while a projection writes token-major rows
/// `[B, L, H·D]`. The core cannot read those rows in place with a leading dimension: it takes
/// contiguous `[B, H, L, D]` tensors, and its kernels multiply the g = Hq/Hkv query heads
/// that share a key/value head as one `[g·L, Dk]` matrix (leading dimension Dk), writing
/// their output the same way. In token-major rows, row t of query head h starts at
/// `t·Hq·Dk + h·Dk`: one head alone is a matrix with leading dimension Hq·Dk, but a group's
/// g heads stacked are not, since the next token and the next head are different strides,
/// which no single leading dimension expresses. So splitting into heads is one copy (with the
/// bias added on the way) and merging back is another; both are skipped when L = 1 or H = 1,
/// where the two layouts are the same bytes (every decoding step with one token). The copies
/// move B·L·E floats against the projection's B·L·E² multiply-adds.
public struct MultiHeadAttention: Sendable {
    /// Hq, the number of query heads.
    public let heads: Int
    /// Hkv, the number of key/value heads; divides ``heads``.
    public let kvHeads: Int
    /// Dk, the width of one query/key head.
    public let headDim: Int
    /// Dv, the width of one value head.
    public let valueHeadDim: Int
    /// `W_q [Hq·Dk, E]`, `b_q [Hq·Dk]`.
    public let queryProjection: Linear
    /// `W_k [Hkv·Dk, keyDim]`, `b_k [Hkv·Dk]`.
    public let keyProjection: Linear
    /// `W_v [Hkv·Dv, valueDim]`, `b_v [Hkv·Dv]`.
    public let valueProjection: Linear
    /// `W_o [E_out, Hq·Dv]`, `b_o [E_out]`.
    public let outputProjection: Linear
    /// Rotary position embeddings applied to the projected queries and keys, or `nil` (the
    /// Transformer's layer, which leaves positions to its inputs).
    public let rotary: RotaryEmbedding?
    /// Identifies the layer (and its copies) to the caches it makes.
    let identity: Int

    /// E, the width of the query input.
    public var modelDim: Int { queryProjection.inputDim }
    /// The width of the key input (PyTorch's `kdim`); E unless given otherwise.
    public var keyDim: Int { keyProjection.inputDim }
    /// The width of the value input (PyTorch's `vdim`); E unless given otherwise.
    public var valueDim: Int { valueProjection.inputDim }
    /// E_out, the width of the output (E for layers made by
    /// ``init(modelDim:heads:kvHeads:keyDim:valueDim:bias:seed:rotary:)``).
    public var outputDim: Int { outputProjection.outputDim }

    /// Creates a layer from four projections in PyTorch's `nn.Linear` layout.
    ///
    /// - Parameters:
    ///   - heads: Hq, at least 1; must divide the query projection's output width, giving Dk.
    ///   - kvHeads: Hkv, at least 1 and dividing `heads`; `nil` means `heads`.
    ///   - queryProjection: `[Hq·Dk, E]`.
    ///   - keyProjection: `[Hkv·Dk, keyDim]`.
    ///   - valueProjection: `[Hkv·Dv, valueDim]`, for any Dv ≥ 1.
    ///   - outputProjection: `[E_out, Hq·Dv]`.
    ///   - rotary: Rotary position embeddings for the queries and keys (a Llama-style
    ///     model), or `nil` for none.
    /// - Throws: ``AttentionError`` with code `.headWidth` when a head count is not positive
    ///   or a projection width is not divisible by its head count (or is 0), `.headGrouping`
    ///   when `heads` is not a multiple of `kvHeads`, `.weightShape` when the key or
    ///   output projection does not fit the heads, and `.rotaryEmbedding` when `rotary`
    ///   rotates more coordinates than Dk.
    public init(heads: Int, kvHeads: Int? = nil,
                queryProjection: Linear, keyProjection: Linear,
                valueProjection: Linear, outputProjection: Linear, rotary: RotaryEmbedding? = nil) throws {
        let kvHeads = kvHeads ?? heads
        guard heads >= 1, kvHeads >= 1 else {
            throw AttentionError(.headWidth, "head counts must be at least 1, got heads \(heads), kvHeads \(kvHeads)")
        }
        guard heads % kvHeads == 0 else {
            throw AttentionError(.headGrouping,
                "query heads (\(heads)) must be a multiple of key/value heads (\(kvHeads))")
        }
        let q = queryProjection.weight.shape, k = keyProjection.weight.shape
        let v = valueProjection.weight.shape, o = outputProjection.weight.shape
        guard q[0] > 0, q[0] % heads == 0 else {
            throw AttentionError(.headWidth,
                "the query projection's width \(q[0]) (weight \(describe(q))) is not a positive multiple of heads (\(heads))")
        }
        let headDim = q[0] / heads
        guard k[0] == kvHeads * headDim else {
            throw AttentionError(.weightShape,
                "the key projection must output kvHeads·Dk = \(kvHeads)·\(headDim) = \(kvHeads * headDim) "
                + "to match the query heads (query weight \(describe(q))), got weight \(describe(k))")
        }
        guard v[0] > 0, v[0] % kvHeads == 0 else {
            throw AttentionError(.headWidth,
                "the value projection's width \(v[0]) (weight \(describe(v))) is not a positive multiple of kvHeads (\(kvHeads))")
        }
        let valueHeadDim = v[0] / kvHeads
        guard o[1] == heads * valueHeadDim else {
            throw AttentionError(.weightShape,
                "the output projection must take heads·Dv = \(heads)·\(valueHeadDim) = \(heads * valueHeadDim) inputs "
                + "(value weight \(describe(v))), got weight \(describe(o))")
        }
        if let rotary, rotary.dimensions > headDim {
            throw AttentionError(.rotaryEmbedding,
                "rotary embeddings over \(rotary.dimensions) dimensions do not fit heads of width Dk = \(headDim) "
                + "(query weight \(describe(q)))")
        }
        self.heads = heads
        self.kvHeads = kvHeads
        self.rotary = rotary
        self.headDim = headDim
        self.valueHeadDim = valueHeadDim
        self.queryProjection = queryProjection
        self.keyProjection = keyProjection
        self.valueProjection = valueProjection
        self.outputProjection = outputProjection
        self.identity = layerIdentities.add(1, ordering: .relaxed).newValue
    }

    /// Creates a fresh layer: Xavier-uniform weights drawn reproducibly from `seed` (each
    /// projection from its own stream) and zero biases.
    ///
    /// Dk = Dv = E / Hq. The query projection is `[E, E]`, the key and value projections
    /// `[Hkv·Dk, keyDim]` and `[Hkv·Dk, valueDim]`, the output projection `[E, E]`. Each is
    /// Xavier-uniform over its own matrix, which is not exactly `nn.MultiheadAttention`'s
    /// initialisation (see ``Linear/init(inputDim:outputDim:bias:seed:)``); weights loaded
    /// from PyTorch do not depend on it.
    ///
    /// - Parameters:
    ///   - modelDim: E, at least 1 and divisible by `heads`.
    ///   - heads: Hq, at least 1.
    ///   - kvHeads: Hkv, dividing `heads`; `nil` means `heads` (ordinary multi-head attention).
    ///   - keyDim: The width of the key input (PyTorch's `kdim`); `nil` means E.
    ///   - valueDim: The width of the value input (PyTorch's `vdim`); `nil` means E.
    ///   - bias: Whether the projections have (zero-initialised) biases.
    ///   - seed: Selects the weights; equal seeds give equal layers.
    ///   - rotary: Rotary position embeddings for the queries and keys, or `nil` for none.
    /// - Throws: ``AttentionError`` with code `.headWidth` when E is not a positive multiple
    ///   of `heads`, a head count is not positive or a width is negative, `.headGrouping`
    ///   when `heads` is not a multiple of `kvHeads`, `.rotaryEmbedding` when `rotary`
    ///   rotates more coordinates than Dk, or `.sizeOverflow` for huge widths.
    public init(modelDim: Int, heads: Int, kvHeads: Int? = nil, keyDim: Int? = nil,
                valueDim: Int? = nil, bias: Bool = true, seed: UInt64 = 0, rotary: RotaryEmbedding? = nil) throws {
        let kvHeads = kvHeads ?? heads
        guard heads >= 1, kvHeads >= 1 else {
            throw AttentionError(.headWidth, "head counts must be at least 1, got heads \(heads), kvHeads \(kvHeads)")
        }
        guard modelDim > 0, modelDim % heads == 0 else {
            throw AttentionError(.headWidth,
                "modelDim \(modelDim) is not a positive multiple of heads (\(heads)): each head needs modelDim / heads columns")
        }
        guard heads % kvHeads == 0 else {
            throw AttentionError(.headGrouping,
                "query heads (\(heads)) must be a multiple of key/value heads (\(kvHeads))")
        }
        if let keyDim, keyDim < 0 {
            throw AttentionError(.headWidth, "keyDim, the width of the key input, must not be negative; got \(keyDim)")
        }
        if let valueDim, valueDim < 0 {
            throw AttentionError(.headWidth, "valueDim, the width of the value input, must not be negative; got \(valueDim)")
        }
        let headDim = modelDim / heads
        let stream = seed &* 0x9E37_79B9_7F4A_7C15
        try self.init(
            heads: heads, kvHeads: kvHeads,
            queryProjection: Linear(inputDim: modelDim, outputDim: modelDim, bias: bias, seed: stream &+ 1),
            keyProjection: Linear(inputDim: keyDim ?? modelDim, outputDim: kvHeads * headDim, bias: bias, seed: stream &+ 2),
            valueProjection: Linear(inputDim: valueDim ?? modelDim, outputDim: kvHeads * headDim, bias: bias, seed: stream &+ 3),
            outputProjection: Linear(inputDim: modelDim, outputDim: modelDim, bias: bias, seed: stream &+ 4),
            rotary: rotary)
    }

    /// Attention of `query` over `key`/`value`: projections, heads, scaled dot-product
    /// attention, output projection (see the type's formula).
    ///
    /// Self-attention passes the same tensor three times; encoder-decoder attention passes
    /// the decoder state as `query` and the encoder output as `key` and `value`.
    ///
    /// - Parameters:
    ///   - query: `[B, L, E]` or `[L, E]`.
    ///   - key: `[B, S, keyDim]` or `[S, keyDim]`.
    ///   - value: `[B, S, valueDim]` or `[S, valueDim]`.
    ///   - mask: Over the scores `[B, Hq, L, S]`; e.g. `.keyLengths` for padded keys,
    ///     `.causal(.upperLeft)` for a decoder. PyTorch's `nn.MultiheadAttention` boolean masks
    ///     mean the opposite (true = excluded): see ``AttentionMask/excluding(_:)`` and
    ///     ``AttentionMask/keyPadding(_:)``.
    ///   - dropout: Dropout on the attention weights (training), or `nil`.
    /// - Returns: `[B, L, E_out]` (`[L, E_out]` for rank-2 inputs). A query whose keys are
    ///   all masked gets a zero attention row, so its output row is the output projection's
    ///   bias (zeros without one); PyTorch's `nn.MultiheadAttention` gives NaN there on some
    ///   paths (see ``init(heads:inProjWeight:inProjBias:outProjWeight:outProjBias:)``).
    /// - Throws: ``AttentionError`` before any arithmetic: `.invalidRank` unless all three
    ///   inputs are rank 3 (or all rank 2), `.inputWidth` when a last dimension does not match
    ///   its projection, `.batchMismatch`, `.sequenceLengthMismatch` when key and value
    ///   lengths differ, `.maskShape`/`.keyLengths` for a mask that does not fit the scores,
    ///   `.sizeOverflow`, or `.threadCount`.
    public func callAsFunction(query: Tensor<Float>, key: Tensor<Float>, value: Tensor<Float>,
                               mask: AttentionMask = .none, dropout: Dropout? = nil) throws -> Tensor<Float> {
        try forward(query: query, key: key, value: value, mask: mask, dropout: dropout, wantWeights: false).output
    }

    /// Attention as ``callAsFunction(query:key:value:mask:dropout:)``, also returning the
    /// per-head attention weights (PyTorch's `need_weights=True, average_attn_weights=False`).
    ///
    /// `weights[b, h, i, j] = softmax_j(Q_h·K_hᵀ/√Dk + mask)` (after dropout, if given); each
    /// row sums to 1, or is all zeros when the mask leaves the query no key (where PyTorch
    /// gives NaN with `need_weights=True`). For PyTorch's default `average_attn_weights=True`,
    /// average them over the heads with ``averagingHeads(_:)``.
    ///
    /// - Parameters: As for ``callAsFunction(query:key:value:mask:dropout:)``.
    /// - Returns: The output `[B, L, E_out]` and the weights `[B, Hq, L, S]` (`[L, E_out]`
    ///   and `[Hq, L, S]` for rank-2 inputs).
    /// - Throws: ``AttentionError``, as ``callAsFunction(query:key:value:mask:dropout:)``.
    public func withWeights(query: Tensor<Float>, key: Tensor<Float>, value: Tensor<Float>,
                            mask: AttentionMask = .none, dropout: Dropout? = nil
    ) throws -> (output: Tensor<Float>, weights: Tensor<Float>) {
        let result = try forward(query: query, key: key, value: value, mask: mask, dropout: dropout, wantWeights: true)
        return (result.output, result.weights!)
    }
}

/// Hands out layer identities; a cache remembers the identity of the layer that made it.
private let layerIdentities = Atomic<Int>(0)

// MARK: - Forward pass

extension MultiHeadAttention {
    /// The validated sizes of one call.
    struct Geometry {
        var rank: Int
        var batch: Int
        var queryLength: Int
        var keyLength: Int
    }

    /// Checks ranks, widths, batch sizes and lengths of a forward call's inputs.
    func geometry(query: [Int], key: [Int], value: [Int]) throws -> Geometry {
        let shapes = "query \(describe(query)), key \(describe(key)), value \(describe(value))"
        guard (2...3).contains(query.count), query.count == key.count, key.count == value.count else {
            throw AttentionError(.invalidRank,
                "query, key and value must all be rank 3 [B, L, E] or all rank 2 [L, E]; got \(shapes)")
        }
        try checkInputWidths([("query", query, modelDim, queryProjection), ("key", key, keyDim, keyProjection),
                              ("value", value, valueDim, valueProjection)], shapes)
        let rank = query.count
        let batch = rank == 3 ? query[0] : 1
        if rank == 3 {
            guard key[0] == batch, value[0] == batch else {
                throw AttentionError(.batchMismatch,
                    "batch sizes differ: query \(query[0]), key \(key[0]), value \(value[0]) (\(shapes))")
            }
        }
        let queryLength = query[rank - 2], keyLength = key[rank - 2]
        guard value[rank - 2] == keyLength else {
            throw AttentionError(.sequenceLengthMismatch,
                "key length \(keyLength) does not match value length \(value[rank - 2]) (\(shapes))")
        }
        return Geometry(rank: rank, batch: batch, queryLength: queryLength, keyLength: keyLength)
    }

    /// `.inputWidth` for the first input whose last dimension is not the width its projection
    /// takes; `shapes` names all of the call's inputs in the message.
    func checkInputWidths(_ inputs: [(name: String, shape: [Int], width: Int, projection: Linear)], _ shapes: String) throws {
        for (name, shape, width, projection) in inputs where shape.last! != width {
            throw AttentionError(.inputWidth,
                "\(name) \(describe(shape)) has width \(shape.last!) but the \(name) projection takes \(width) "
                + "(weight \(describe(projection.weight.shape))); \(shapes)")
        }
    }

    /// Checks that every intermediate of a call with `batch · queryLength` query rows and
    /// `batch · keyLength` key rows fits BLAS's 32-bit dimensions and, all together, the
    /// machine's memory (an allocation that does not fit would trap): the projected queries,
    /// keys and values, the attention output and the layer's output.
    func checkSizes(batch: Int, queryLength: Int, keyLength: Int, what: String) throws {
        let limit = BLAS.maximumDimension
        let (queryRows, o1) = batch.multipliedReportingOverflow(by: queryLength)
        let (keyRows, o2) = batch.multipliedReportingOverflow(by: keyLength)
        guard !o1, !o2, queryRows <= limit, keyRows <= limit else {
            throw AttentionError(.sizeOverflow, "\(what) has more rows than BLAS can index")
        }
        let queryFloats = queryRows.multipliedReportingOverflow(by: heads * (headDim + valueHeadDim) + outputDim)
        let keyFloats = keyRows.multipliedReportingOverflow(by: kvHeads * (headDim + valueHeadDim))
        let total = queryFloats.partialValue.addingReportingOverflow(keyFloats.partialValue)
        try checkAllocation(count: (total.partialValue, total.overflow || queryFloats.overflow || keyFloats.overflow),
                            of: Float.self, "\(what): the projections and attention output")
    }

    func forward(query: Tensor<Float>, key: Tensor<Float>, value: Tensor<Float>,
                 mask: AttentionMask, dropout: Dropout?, wantWeights: Bool
    ) throws -> (output: Tensor<Float>, weights: Tensor<Float>?) {
        let g = try geometry(query: query.shape, key: key.shape, value: value.shape)
        let (B, L, S) = (g.batch, g.queryLength, g.keyLength)
        try checkSizes(batch: B, queryLength: L, keyLength: S,
                       what: "query \(describe(query.shape)), key \(describe(key.shape))")
        // Everything the core would reject is checked here, before any arithmetic.
        let problem = try AttentionProblem(query: [B, heads, L, headDim], key: [B, kvHeads, S, headDim],
                                           value: [B, kvHeads, S, valueHeadDim])
        _ = try ResolvedMask(mask, problem: problem)
        // The core's own checks on sizes and memory, before the projections compute anything.
        _ = try problem.checkResults(wantWeights: wantWeights, "query \(describe(query.shape)), key \(describe(key.shape))")
        let threads = try AttentionThreads.count()

        // One scratch buffer serves every head split and the merge. It, the projected heads
        // and the core's output go back to ArrayPool as soon as they are dead, so the next
        // call reuses their pages instead of faulting in fresh ones.
        let scratch = Scratch()
        defer { scratch.free() }
        var q: Tensor<Float>? = projectHeads(queryProjection, query, batch: B, length: L, heads: heads, width: headDim, threads: threads, scratch: scratch)   // [B, Hq, L, Dk]
        var k: Tensor<Float>? = projectHeads(keyProjection, key, batch: B, length: S, heads: kvHeads, width: headDim, threads: threads, scratch: scratch)     // [B, Hkv, S, Dk]
        var v: Tensor<Float>? = projectHeads(valueProjection, value, batch: B, length: S, heads: kvHeads, width: valueHeadDim, threads: threads, scratch: scratch) // [B, Hkv, S, Dv]
        let positions = rotary?.table(start: 0, count: max(L, S), threads: threads)     // one table for both
        rotate(&q!, table: positions, threads: threads)                                 // queries at positions 0 ..< L
        rotate(&k!, table: positions, threads: threads)                                 // keys at positions 0 ..< S

        var attention: Tensor<Float>?                                                   // [B, Hq, L, Dv]
        var weights: Tensor<Float>? = nil                                               // [B, Hq, L, S]
        if wantWeights {
            (attention, weights) = try scaledDotProductAttentionWithWeights(
                query: q!, key: k!, value: v!, mask: mask, dropout: dropout, kernel: .automatic)
        } else {
            attention = try scaledDotProductAttention(
                query: q!, key: k!, value: v!, mask: mask, dropout: dropout, kernel: .automatic)
        }
        recycle(&q); recycle(&k); recycle(&v)
        var output = projectOutput(attention!, batch: B, length: L, threads: threads, scratch: scratch)   // [B, L, E_out]
        recycle(&attention)
        if g.rank == 2 {
            output = Tensor(validatedShape: [L, outputDim], scalars: output.scalars)    // [L, E_out]
            weights = weights.map { Tensor(validatedShape: [heads, L, S], scalars: $0.scalars) }  // [Hq, L, S]
        }
        return (output, weights)
    }

    /// Applies ``rotary`` in place to heads `[B, H, T, Dk]` at the first T positions of
    /// `table`; nothing without a table (no rotary embeddings).
    func rotate(_ x: inout Tensor<Float>, table: RotaryTable?, threads: Int) {
        guard let rotary, let table else { return }
        let (B, H, T) = (x.shape[0], x.shape[1], x.shape[2])                          // [B, H, T, Dk]
        x.withUnsafeMutableBufferPointer { buffer in
            guard let base = buffer.baseAddress else { return }
            rotary.rotate(base, batch: B, length: T, heads: H, width: headDim, tokenMajor: false, table: table, threads: threads)
        }
    }

    /// Projects `input` `[B, T, in]` and splits the result into heads: `[B, H, T, D]`.
    ///
    /// One projection over all B·T rows writes `[B·T, H·D]` (token-major). When T = 1 or
    /// H = 1 that is already `[B, H, T, D]` and the projection writes the result directly,
    /// bias included. Otherwise the projection writes a scratch buffer without the bias and
    /// one pass copies it into head-major order, adding the bias on the way.
    func projectHeads(_ projection: Linear, _ input: Tensor<Float>, batch B: Int, length T: Int,
                      heads H: Int, width D: Int, threads: Int, scratch: Scratch) -> Tensor<Float> {
        let count = B * H * T * D                                  // validated by checkSizes
        var scalars = ArrayPool.take(count: count)
        scalars.withUnsafeMutableBufferPointer { heads in
            input.withUnsafeBufferPointer { x in
                let x = nonNull(x.baseAddress)                     // [B·T, in]
                let out = nonNull(heads.baseAddress)               // [B, H, T, D]
                if T == 1 || H == 1 {
                    // [B, T, H·D] is [B, H, T, D] when T = 1 or H = 1.
                    BLAS.withThreads(threads) {
                        projection.apply(rows: B * T, input: x, inputStride: projection.inputDim,
                                         output: out, outputStride: H * D)     // [B·T, H·D]
                    }
                } else {
                    scratch.withPointer(count) { rows in                    // [B, T, H, D]
                        BLAS.withThreads(threads) {
                            projection.apply(rows: B * T, input: x, inputStride: projection.inputDim,
                                             output: rows, outputStride: H * D, addBias: false)  // [B·T, H·D]
                        }
                        withBias(projection, count: H * D) { bias in
                            // [B, T, H, D] + b[H·D] → [B, H, T, D]
                            splitHeads(rows, into: out, batch: B, length: T, heads: H, width: D, bias: bias, threads: threads)
                        }
                    }
                }
            }
        }
        return Tensor(validatedShape: [B, H, T, D], scalars: scalars)        // [B, H, T, D]
    }

    /// Merges heads `[B, Hq, T, Dv]` back into rows `[B·T, Hq·Dv]` and applies the output
    /// projection: `[B, T, E_out]`. No copy when T = 1 or Hq = 1 (same bytes).
    func projectOutput(_ attention: Tensor<Float>, batch B: Int, length T: Int, threads: Int, scratch: Scratch) -> Tensor<Float> {
        let width = heads * valueHeadDim
        let count = B * T * outputDim
        var scalars = ArrayPool.take(count: count)
        scalars.withUnsafeMutableBufferPointer { out in
            attention.withUnsafeBufferPointer { a in
                let a = nonNull(a.baseAddress)                     // [B, Hq, T, Dv]
                let out = nonNull(out.baseAddress)                 // [B·T, E_out]
                if T == 1 || heads == 1 {
                    BLAS.withThreads(threads) {
                        // out[B·T, E_out] = A[B·T, Hq·Dv] · W_o[E_out, Hq·Dv]ᵀ + b_o
                        outputProjection.apply(rows: B * T, input: a, inputStride: width,
                                               output: out, outputStride: outputDim)
                    }
                } else {
                    scratch.withPointer(B * T * width) { rows in            // [B, T, Hq, Dv]
                        // [B, Hq, T, Dv] → [B, T, Hq, Dv]
                        mergeHeads(a, into: rows, batch: B, length: T, heads: heads, width: valueHeadDim, threads: threads)
                        BLAS.withThreads(threads) {
                            // out[B·T, E_out] = rows[B·T, Hq·Dv] · W_o[E_out, Hq·Dv]ᵀ + b_o
                            outputProjection.apply(rows: B * T, input: rows, inputStride: width,
                                                   output: out, outputStride: outputDim)
                        }
                    }
                }
            }
        }
        return Tensor(validatedShape: [B, T, outputDim], scalars: scalars)   // [B, T, E_out]
    }
}

/// A scratch buffer shared by the steps of one call, taken from ``ArrayPool`` on first use
/// (calls with L = 1 or one head never need it) and grown when a step needs more. Not
/// thread-safe; it never leaves the call.
final class Scratch {
    private var array: [Float] = []

    /// Calls `body` with room for `count` floats (old contents unspecified).
    func withPointer<R>(_ count: Int, _ body: (UnsafeMutablePointer<Float>) -> R) -> R {
        if array.count < count {
            ArrayPool.recycle(array)
            array = ArrayPool.take(count: count)
        }
        return array.withUnsafeMutableBufferPointer { body(nonNull($0.baseAddress)) }
    }

    /// Gives the buffer back to the pool.
    func free() {
        ArrayPool.recycle(array)
        array = []
    }
}

/// Ends `tensor`'s life and gives its storage to ``ArrayPool`` (nothing else holds it: the
/// core does not keep its arguments or results).
func recycle(_ tensor: inout Tensor<Float>?) {
    guard let scalars = tensor?.scalars else { return }
    tensor = nil
    ArrayPool.recycle(scalars)
}

/// Calls `body` with the projection's bias, or `nil` without one.
private func withBias<R>(_ projection: Linear, count: Int, _ body: (UnsafePointer<Float>?) -> R) -> R {
    guard let bias = projection.bias else { return body(nil) }
    return bias.withUnsafeBufferPointer { body(nonNull($0.baseAddress)) }
}

/// `out[b, h, t, :] = rows[b, t, h, :] + bias[h·D ..< (h+1)·D]`: token-major projection
/// rows `[B, T, H, D]` into contiguous heads `[B, H, T, D]`, in parallel over (b, h).
func splitHeads(_ rows: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>,
                batch B: Int, length T: Int, heads H: Int, width D: Int,
                bias: UnsafePointer<Float>?, threads: Int) {
    let job = UncheckedSendable((rows, out, bias))
    parallelWork(threads: copyThreads(threads, floats: B * T * H * D), items: B * H) { claim in
        let (rows, out, bias) = job.value
        while let item = claim() {
            let b = item / H, h = item % H
            let src = rows + (b * T * H + h) * D                   // rows[b, 0, h, :], stride H·D
            let dst = out + item * T * D                           // out[b, h, 0, :], stride D
            if let bias {
                let bh = bias + h * D
                for t in 0..<T {
                    let s = src + t * H * D, d = dst + t * D
                    for j in 0..<D { d[j] = s[j] + bh[j] }
                }
            } else {
                for t in 0..<T { (dst + t * D).update(from: src + t * H * D, count: D) }
            }
        }
    }
}

/// `rows[b, t, h, :] = heads[b, h, t, :]`: contiguous heads `[B, H, T, D]` back into
/// token-major rows `[B, T, H, D]`, in parallel over (b, h).
func mergeHeads(_ heads: UnsafePointer<Float>, into rows: UnsafeMutablePointer<Float>,
                batch B: Int, length T: Int, heads H: Int, width D: Int, threads: Int) {
    let job = UncheckedSendable((heads, rows))
    parallelWork(threads: copyThreads(threads, floats: B * T * H * D), items: B * H) { claim in
        let (heads, rows) = job.value
        while let item = claim() {
            let b = item / H, h = item % H
            let src = heads + item * T * D                         // heads[b, h, 0, :], stride D
            let dst = rows + (b * T * H + h) * D                   // rows[b, 0, h, :], stride H·D
            for t in 0..<T { (dst + t * H * D).update(from: src + t * D, count: D) }
        }
    }
}

/// Threads for a copy of `floats` elements: one below 64 Ki floats, where waking a second
/// thread costs more than it saves.
private func copyThreads(_ threads: Int, floats: Int) -> Int {
    floats < 65_536 ? 1 : threads
}
