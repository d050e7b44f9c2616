// Building a MultiHeadAttention from PyTorch's nn.MultiheadAttention, and its masks.

extension MultiHeadAttention {
    /// Creates a layer from the parameters of PyTorch's `nn.MultiheadAttention` with packed
    /// input projections (its default, `kdim == vdim == embed_dim`).
    ///
    /// ```
    /// in_proj_weight [3E, E] = [W_q; W_k; W_v]      in_proj_bias [3E] = [b_q; b_k; b_v]
    /// out_proj.weight [E, E] = W_o                  out_proj.bias [E] = b_o
    /// ```
    ///
    /// With `batch_first=True`, PyTorch's `mha(q, k, v, need_weights=False)[0]` equals this
    /// layer's `callAsFunction(query:key:value:mask:dropout:)` (in eval mode: no dropout).
    /// Where the two differ:
    ///
    /// - `batch_first=False` (PyTorch's default) takes and returns `[L, B, E]`; this layer
    ///   takes `[B, L, E]`, so transpose the first two dimensions of the inputs (e.g.
    ///   `x.transpose(0, 1)` before exporting) and of the output back.
    /// - A query row whose keys are all masked gets a zero attention row here, so its output
    ///   is the output bias `out_proj.bias` (zero without bias) and its weights are zeros.
    ///   PyTorch 2.13 gives NaN for such a row with `need_weights=True` and on its eval-mode
    ///   fast path (under `no_grad` or `inference_mode`); with `need_weights=False`
    ///   elsewhere it gives the output bias too.
    /// - Per-head weights come from ``withWeights(query:key:value:mask:dropout:)``
    ///   (`average_attn_weights=False`); for PyTorch's default `average_attn_weights=True`,
    ///   average them with ``averagingHeads(_:)``.
    /// - A float `key_padding_mask` `[B, S]` is additive: pass
    ///   `.additive(try m.reshaped([B, 1, 1, S]))`. As `.additive(m)` it would broadcast as
    ///   `[L, S]`, a bias per query instead of per batch entry.
    /// - `add_bias_kv=True` and `add_zero_attn=True` are not supported (there is no
    ///   parameter for `bias_k`/`bias_v`, and no zero key/value is appended).
    ///
    /// - Parameters:
    ///   - heads: `num_heads`; must divide E.
    ///   - inProjWeight: `in_proj_weight`, `[3E, E]`.
    ///   - inProjBias: `in_proj_bias`, `[3E]`, or `nil` when the module has `bias=False`.
    ///   - outProjWeight: `out_proj.weight`, `[E, E]`.
    ///   - outProjBias: `out_proj.bias`, `[E]`, or `nil`.
    /// - Throws: ``AttentionError`` with code `.weightShape` when a tensor does not have the
    ///   shape above, `.headWidth` when E is not a multiple of `heads`.
    public init(heads: Int, inProjWeight: Tensor<Float>, inProjBias: Tensor<Float>?,
                outProjWeight: Tensor<Float>, outProjBias: Tensor<Float>?) throws {
        let shape = inProjWeight.shape
        guard shape.count == 2, shape[0] % 3 == 0, shape[0] / 3 == shape[1] else {      // 3·E could overflow
            throw AttentionError(.weightShape,
                "in_proj_weight must be [3E, E], got \(describe(shape))")
        }
        let E = shape[1]
        let weights = try splitRows(inProjWeight, into: 3, width: E)
        try self.init(heads: heads, qProjWeight: weights[0], kProjWeight: weights[1], vProjWeight: weights[2],
                      inProjBias: inProjBias, outProjWeight: outProjWeight, outProjBias: outProjBias)
    }

    /// Creates a layer from the parameters of PyTorch's `nn.MultiheadAttention` with separate
    /// input projections (what it stores when `kdim` or `vdim` differs from `embed_dim`).
    ///
    /// ```
    /// q_proj_weight [E, E], k_proj_weight [E, kdim], v_proj_weight [E, vdim]
    /// in_proj_bias [3E] = [b_q; b_k; b_v],  out_proj.weight [E, E],  out_proj.bias [E]
    /// ```
    ///
    /// - Parameters:
    ///   - heads: `num_heads`; must divide E.
    ///   - qProjWeight: `q_proj_weight`, `[E, E]`.
    ///   - kProjWeight: `k_proj_weight`, `[E, kdim]`.
    ///   - vProjWeight: `v_proj_weight`, `[E, vdim]`.
    ///   - inProjBias: `in_proj_bias`, `[3E]`, or `nil` for `bias=False`.
    ///   - outProjWeight: `out_proj.weight`, `[E, E]`.
    ///   - outProjBias: `out_proj.bias`, `[E]`, or `nil`.
    /// - Throws: ``AttentionError`` with code `.weightShape` when a tensor does not have the
    ///   shape above, `.headWidth` when E is not a multiple of `heads`.
    public init(heads: Int, qProjWeight: Tensor<Float>, kProjWeight: Tensor<Float>, vProjWeight: Tensor<Float>,
                inProjBias: Tensor<Float>?, outProjWeight: Tensor<Float>, outProjBias: Tensor<Float>?) throws {
        let shapes = "q_proj_weight \(describe(qProjWeight.shape)), k_proj_weight \(describe(kProjWeight.shape)), "
            + "v_proj_weight \(describe(vProjWeight.shape))"
        guard qProjWeight.rank == 2, kProjWeight.rank == 2, vProjWeight.rank == 2,
              qProjWeight.shape[0] == qProjWeight.shape[1],
              kProjWeight.shape[0] == qProjWeight.shape[0], vProjWeight.shape[0] == qProjWeight.shape[0] else {
            throw AttentionError(.weightShape,
                "expected q_proj_weight [E, E], k_proj_weight [E, kdim], v_proj_weight [E, vdim]; got \(shapes)")
        }
        let E = qProjWeight.shape[0]
        guard heads > 0, E > 0, E % heads == 0 else {
            throw AttentionError(.headWidth,
                "embed_dim E = \(E) (q_proj_weight \(describe(qProjWeight.shape))) is not a positive multiple of num_heads (\(heads))")
        }
        var biases: [Tensor<Float>?] = [nil, nil, nil]
        if let inProjBias {
            guard inProjBias.shape == [3 * E] else {
                throw AttentionError(.weightShape,
                    "in_proj_bias must be [3E] = [\(3 * E)], got \(describe(inProjBias.shape))")
            }
            biases = try splitRows(inProjBias, into: 3, width: 1).map { Optional($0) }
        }
        guard outProjWeight.shape == [E, E] else {
            throw AttentionError(.weightShape,
                "out_proj.weight must be [E, E] = [\(E), \(E)], got \(describe(outProjWeight.shape))")
        }
        try self.init(heads: heads,
                      queryProjection: Linear(weight: qProjWeight, bias: biases[0]),
                      keyProjection: Linear(weight: kProjWeight, bias: biases[1]),
                      valueProjection: Linear(weight: vProjWeight, bias: biases[2]),
                      outputProjection: Linear(weight: outProjWeight, bias: outProjBias))
    }
}

extension MultiHeadAttention {
    /// The per-head attention weights averaged over the heads: what `nn.MultiheadAttention`
    /// returns with `need_weights=True` and its default `average_attn_weights=True`.
    ///
    /// ```
    /// averaged[b, i, j] = (1/Hq) · Σ_h weights[b, h, i, j]
    /// ```
    ///
    /// ```swift
    /// let (y, perHead) = try mha.withWeights(query: x, key: x, value: x)   // perHead [B, Hq, L, S]
    /// let averaged = try MultiHeadAttention.averagingHeads(perHead)        // [B, L, S]
    /// ```
    ///
    /// - Parameter weights: `[B, Hq, L, S]`, or `[Hq, L, S]` for one sequence, as
    ///   ``withWeights(query:key:value:mask:dropout:)`` returns them.
    /// - Returns: `[B, L, S]` (`[L, S]` for rank-3 weights).
    /// - Throws: ``AttentionError`` with code `.invalidRank` for weights not of rank 3 or 4,
    ///   or `.headWidth` when they have no heads (nothing to average).
    public static func averagingHeads(_ weights: Tensor<Float>) throws -> Tensor<Float> {
        let shape = weights.shape
        guard shape.count == 3 || shape.count == 4 else {
            throw AttentionError(.invalidRank,
                "attention weights must be [B, Hq, L, S] or [Hq, L, S] to average over heads, got \(describe(shape))")
        }
        let H = shape[shape.count - 3]
        guard H > 0 else {
            throw AttentionError(.headWidth, "attention weights \(describe(shape)) have no heads to average over")
        }
        let B = shape.count == 4 ? shape[0] : 1
        let outputShape = shape.count == 4 ? [B] + shape.suffix(2) : Array(shape.suffix(2))
        let count = weights.count / H                                   // B·L·S; L·S alone may overflow when B = 0
        guard count > 0 else { return Tensor(validatedShape: outputShape, scalars: []) }
        let plane = count / B                                           // L·S
        var scalars = [Float](repeating: 0, count: count)
        let w = weights.scalars
        for b in 0..<B {
            for h in 0..<H {
                let source = (b * H + h) * plane                        // weights[b, h, :, :]
                for e in 0..<plane { scalars[b * plane + e] += w[source + e] }
            }
        }
        for e in scalars.indices { scalars[e] /= Float(H) }
        return Tensor(validatedShape: outputShape, scalars: scalars)     // [B, L, S] or [L, S]
    }
}

/// Splits a tensor's rows into `parts` equal blocks: `[parts·R, ...]` → `parts` × `[R, ...]`
/// (a bias `[parts·R]` with `width` 1 gives `[R]` blocks).
private func splitRows(_ tensor: Tensor<Float>, into parts: Int, width: Int) throws -> [Tensor<Float>] {
    let rows = tensor.shape[0] / parts
    let blockShape = tensor.rank == 1 ? [rows] : [rows] + tensor.shape.dropFirst()
    let block = rows * max(width, 1)
    return (0..<parts).map { p in
        // rows p·R ..< (p+1)·R: [R, in] (or [R])
        Tensor(validatedShape: blockShape, scalars: Array(tensor.scalars[(p * block)..<((p + 1) * block)]))
    }
}

extension AttentionMask {
    /// A boolean mask in the convention of `nn.MultiheadAttention`, where `true` means the
    /// key is *excluded*: the opposite of ``boolean(_:)``. Equivalent to
    /// `.boolean(excluded with every element negated)`.
    ///
    /// PyTorch's `attn_mask` of shape `[L, S]` can be passed as is; one of shape
    /// `[B·H, L, S]` must first be reshaped to `[B, H, L, S]` (`try m.reshaped([B, H, L, S])`),
    /// since the scores here are `[B, H, L, S]`. A float `attn_mask` is additive in both
    /// libraries: use ``additive(_:)``, unchanged for `[L, S]` and reshaped the same way for
    /// `[B·H, L, S]`.
    ///
    /// - Parameter excluded: `true` where a query must not attend to a key; broadcasts to the
    ///   scores like ``boolean(_:)``.
    /// - Returns: The mask that allows exactly the keys `excluded` does not exclude.
    public static func excluding(_ excluded: Tensor<Bool>) -> AttentionMask {
        .boolean(Tensor(validatedShape: excluded.shape, scalars: excluded.scalars.map { !$0 }))
    }

    /// The mask for `nn.MultiheadAttention`'s `key_padding_mask`: `[B, S]` (or `[S]` for an
    /// unbatched input), `true` where the key is padding and must be ignored.
    ///
    /// Returns the inverted mask reshaped to `[B, 1, 1, S]`, so it broadcasts over heads and
    /// queries. For padding that is a suffix of each sequence, ``keyLengths(_:)`` says the
    /// same more cheaply. A float `key_padding_mask` `[B, S]` is an additive bias: pass
    /// `.additive(try m.reshaped([B, 1, 1, S]))`, not `.additive(m)`, which would broadcast
    /// as `[L, S]` (a bias per query, not per batch entry).
    ///
    /// - Parameter padding: `[B, S]` or `[S]`, `true` = padding.
    /// - Throws: ``AttentionError`` with code `.maskShape` for another rank.
    public static func keyPadding(_ padding: Tensor<Bool>) throws -> AttentionMask {
        let shape = padding.shape
        guard shape.count == 1 || shape.count == 2 else {
            throw AttentionError(.maskShape, "key_padding_mask must be [B, S] or [S], got \(describe(shape))")
        }
        let batch = shape.count == 2 ? shape[0] : 1
        return .boolean(Tensor(validatedShape: [batch, 1, 1, shape.last!], scalars: padding.scalars.map { !$0 }))   // [B, 1, 1, S]
    }
}
