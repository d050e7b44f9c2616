/// Which implementation computes attention.
public enum AttentionKernel: String, Sendable, CaseIterable {
    /// Plain scalar loops that read like the formula; single-threaded. The readable oracle:
    /// float32 scores, with the sums over the keys (the softmax's denominator and P·V) in
    /// Double.
    case naive
    /// Two `cblas_sgemm` calls per block of query rows around a vectorised Swift
    /// mask + softmax layer, parallel over blocks. Materialises one block of scores per thread.
    /// Its scores are kept in base 2 (a cheaper exponential) where a bound on them shows that
    /// base 2 holds them, and in natural units elsewhere (scale or additive biases beyond
    /// 1e38 in magnitude, inputs so large that scores could pass about 2.4e38, NaN or ±∞,
    /// and fewer than 32 query rows per batch entry and key/value head).
    case blas
    /// Streams key tiles through an online softmax (flash-attention style) on sgemm, in
    /// memory proportional to L·D rather than L·S. Blocks of up to four query rows
    /// (decoding; up to eight when the call's keys and values take 16 MiB or more) use
    /// streaming matrix–vector products in Swift instead of sgemm, and long
    /// key ranges are split across threads when there are few queries. Its scores are kept
    /// in base 2; a call whose scale or additive biases exceed 1e38 in magnitude (such as a
    /// float32 "masked" bias of −3.4e38) runs the ``blas`` kernel's code instead, which takes
    /// such calls in natural units.
    case tiled
    /// Picks the kernel for the call: ``tiled``, or ``blas`` when the weights are returned
    /// (both then materialise them the same way) or when there are at most 32 keys (one
    /// small tile, where the BLAS kernel measured 6–20 % faster).
    case automatic
}

/// Scaled dot-product attention: `softmax(Q·Kᵀ·scale + mask) · V`.
///
/// ```
/// scores  = query · keyᵀ · scale + bias        // [B, Hq, L, S]
/// scores  = −∞ where the mask excludes a key
/// weights = softmax(scores, over S)            // zero rows where nothing is allowed
/// weights = dropout(weights)                   // if dropout is given
/// output  = weights · value                    // [B, Hq, L, Dv]
/// ```
///
/// Shapes (row-major, contiguous):
/// - `query`: `[B, Hq, L, Dk]`, `[B, L, Dk]` or `[L, Dk]`
/// - `key`:   `[B, Hkv, S, Dk]`, `[B, S, Dk]` or `[S, Dk]`
/// - `value`: `[B, Hkv, S, Dv]`, `[B, S, Dv]` or `[S, Dv]`
/// - result:  `[B, Hq, L, Dv]`, `[B, L, Dv]` or `[L, Dv]`
///
/// where B is the batch size, Hq and Hkv the query and key/value head counts, L the number
/// of queries, S the number of keys, Dk the query/key width and Dv the value width. When
/// `Hq > Hkv` (grouped-query or multi-query attention), `Hq` must be a multiple of `Hkv` and
/// query head `h` uses key/value head `h / (Hq / Hkv)`; K and V are not copied.
///
/// Masks apply to scores of shape `[B, Hq, L, S]` (`[B, L, S]`, `[L, S]` for lower ranks); see
/// ``AttentionMask`` for the parts and how tensors broadcast. A query with no allowed key gets
/// a zero output row. Empty sizes are allowed: `L = 0` or `B = 0` gives an empty result and
/// `S = 0` gives zeros.
///
/// A row depends only on the keys it may see: NaN or ±∞ in the keys or values of excluded
/// keys (a `-inf` bias excludes too) never reaches it, and a key whose score is −∞ takes no
/// part either. Otherwise NaN and ±∞ propagate as in PyTorch: a NaN or +∞ score (NaN or ±∞ in
/// the query or an allowed key, or a `+inf` bias) makes the row NaN, and NaN or ±∞ in a value
/// the row weighs reaches its output. Scores, biases or sums that leave float32's range (a
/// scale of 1e38, biases summing past −3.4e38, values near 3.4e38) give the float64 result:
/// rows that a kernel finishes NaN or ±∞, or without weight although keys were allowed, are
/// computed again in float64. Only those rows: an overflow that leaves its row finite and
/// weighted (a product q·k past 3.4e38 before a tiny scale, or three biases whose float32
/// running sum passes −3.4e38 and comes back) drops the keys it sends to −∞, as PyTorch's
/// float32 kernels do. A row computed again can differ from its float32 result by the
/// rounding of its scores: with a bias of −1e9 on every key, which swamps q·k in float32,
/// that is a uniform average against the exact softmax.
///
/// The semantics match PyTorch's `torch.nn.functional.scaled_dot_product_attention`
/// (including `enable_gqa`), with masks in its boolean convention (`true` = attend).
///
/// - Parameters:
///   - query: Queries, `[B, Hq, L, Dk]`.
///   - key: Keys, `[B, Hkv, S, Dk]`.
///   - value: Values, `[B, Hkv, S, Dv]`.
///   - mask: Exclusions and biases; ``AttentionMask/none`` by default.
///   - scale: Multiplies `Q·Kᵀ`; `nil` means `1/√Dk` (1 when `Dk = 0`). Any finite value
///     is allowed: 0 averages V uniformly, a negative scale is legal.
///   - dropout: Dropout on the weights, or `nil` for none.
///   - kernel: The implementation; ``AttentionKernel/automatic`` by default.
/// - Returns: The output, `[B, Hq, L, Dv]`.
/// - Throws: ``AttentionError`` when ranks, batch sizes, head counts, widths or lengths do
///   not fit together, a mask does not broadcast, key lengths are wrong, the scale is not
///   finite, or `ATTENTIONKIT_NUM_THREADS` is malformed. Nothing is computed then.
public func scaledDotProductAttention(
    query: Tensor<Float>, key: Tensor<Float>, value: Tensor<Float>,
    mask: AttentionMask = .none, scale: Float? = nil, dropout: Dropout? = nil,
    kernel: AttentionKernel = .automatic
) throws -> Tensor<Float> {
    try runAttention(query: query, key: key, value: value, mask: mask, scale: scale,
                     dropout: dropout, kernel: kernel, wantWeights: false).output
}

/// Scaled dot-product attention that also returns the attention weights (the seed's `p_attn`).
///
/// Computes what
/// ``scaledDotProductAttention(query:key:value:mask:scale:dropout:kernel:)`` computes (to
/// float rounding: ``AttentionKernel/automatic`` and ``AttentionKernel/tiled`` then run the
/// BLAS kernel, which materialises the weights) and also returns `weights = dropout(softmax(Q·Kᵀ·scale + mask))`, shape `[B, Hq, L, S]`
/// (`[B, L, S]`, `[L, S]` for lower ranks). Each weight row sums to 1, or is all zeros when
/// the row has no allowed key; with dropout, the dropped weights are returned and
/// `output = weights · value`.
///
/// Returning the weights costs `B·Hq·L·S` floats of memory; use the function without
/// weights when you do not need them.
///
/// - Parameters: As for ``scaledDotProductAttention(query:key:value:mask:scale:dropout:kernel:)``.
/// - Returns: The output `[B, Hq, L, Dv]` and the weights `[B, Hq, L, S]`.
/// - Throws: ``AttentionError``, as the function without weights does.
public func scaledDotProductAttentionWithWeights(
    query: Tensor<Float>, key: Tensor<Float>, value: Tensor<Float>,
    mask: AttentionMask = .none, scale: Float? = nil, dropout: Dropout? = nil,
    kernel: AttentionKernel = .automatic
) throws -> (output: Tensor<Float>, weights: Tensor<Float>) {
    let result = try runAttention(query: query, key: key, value: value, mask: mask, scale: scale,
                                  dropout: dropout, kernel: kernel, wantWeights: true)
    return (result.output, result.weights!)
}

/// Runs only the matrix products of `kernel` (``AttentionKernel/blas`` or
/// ``AttentionKernel/tiled``; ``AttentionKernel/automatic`` resolves first): its BLAS calls,
/// or the tiled kernel's row-wise products for its decoding blocks, on the same work
/// items, tiles and threads, skipping the mask + softmax layer. The result is not
/// attention; its time, divided by the full kernel's, is the "GEMM share" that
/// attention-bench reports.
@_spi(Benchmarking)
public func attentionGEMMOnly(
    query: Tensor<Float>, key: Tensor<Float>, value: Tensor<Float>,
    mask: AttentionMask = .none, scale: Float? = nil, kernel: AttentionKernel = .blas
) throws -> Tensor<Float> {
    try runAttention(query: query, key: key, value: value, mask: mask, scale: scale,
                     dropout: nil, kernel: kernel, wantWeights: false, gemmOnly: true).output
}

/// The kernel that ``AttentionKernel/automatic`` runs for these shapes (without weights,
/// with the current thread count).
@_spi(Benchmarking)
public func automaticKernel(query: [Int], key: [Int], value: [Int]) throws -> AttentionKernel {
    let problem = try AttentionProblem(query: query, key: key, value: value)
    return chooseKernel(problem, wantWeights: false, threads: try AttentionThreads.count())
}

/// What ``AttentionKernel/automatic`` picks: the BLAS kernel when the weights are wanted
/// (both kernels then materialise them the same way) or when there are at most
/// `automaticBLASMaximumKeys` keys, else the tiled kernel.
///
/// Measured on 2026-11-26 (AMD EPYC Zen 3, 2 cores, OpenBLAS 0.3.21; five rounds alternating
/// `attention-bench --kernels blas` and `--kernels tiled` runs per shape, the median of the
/// per-round ratios blas time / tiled time, one thread / two threads; above 1 tiled is faster):
/// - S ≤ 32, where both kernels do the same work on one tile and tiled's score bounds and
///   per-call setup are a visible share: B1 H8 L16 0.90 / 0.80, B64 H8 L16 0.92 / 0.86,
///   B1 H8 L32 0.94 / 1.00. So these go to blas.
/// - Longer keys: B8 H8 L64 1.17 / 0.89, B32 H8 L128 1.11 / 1.10, B4 H12 L197 1.14 / 1.19,
///   B1 H8 L512 1.37 / 1.17 (causal 1.06 / 1.08), B1 H8 L2048 1.18 / 1.25.
/// - Decoding (L = 1, D = 128): H32 S256 3.66 / 4.17, H32 S4096 2.70 / 2.45, H32/8 S4096
///   2.23 / 1.75, H8 L4 S4096 causal 1.15 / 1.10. Groups of eight query heads, after the
///   tiled kernel took its row-wise products for them on large caches (`rowwiseEightRowBytes`;
///   same day, 02:42 UTC): H8/1 S16384 1.22 / 2.22 (before: 0.87 / 1.72), H32/4 S16384
///   1.17 / 1.14, and H8/1 S4096 0.84 / 0.86, whose 4 MiB of K and V stay in L3 between the
///   benchmark's calls, where sgemm's AVX2 kernels beat the SSE2 row-wise products.
/// That last loss is left to tiled: it needs K and V to be L3-resident from call to call,
/// which in a model whose layers' caches together exceed L3 they are not.
func chooseKernel(_ problem: AttentionProblem, wantWeights: Bool, threads: Int) -> AttentionKernel {
    wantWeights || problem.keyLength <= automaticBLASMaximumKeys ? .blas : .tiled
}

/// Key lengths up to which ``AttentionKernel/automatic`` runs the BLAS kernel (see
/// `chooseKernel`).
let automaticBLASMaximumKeys = 32

/// Validates the arguments, allocates the results and hands raw pointers to a kernel.
func runAttention(
    query: Tensor<Float>, key: Tensor<Float>, value: Tensor<Float>,
    mask: AttentionMask, scale: Float?, dropout: Dropout?,
    kernel: AttentionKernel, wantWeights: Bool, gemmOnly: Bool = false, tiles: TileSizes? = nil
) throws -> (output: Tensor<Float>, weights: Tensor<Float>?) {
    let problem = try AttentionProblem(query: query.shape, key: key.shape, value: value.shape)
    func shapes() -> String { "query \(describe(query.shape)), key \(describe(key.shape)), value \(describe(value.shape))" }
    if let scale, !scale.isFinite {
        throw AttentionError(.invalidScale, "scale must be finite, got \(scale) (\(shapes()))")
    }
    let resolvedScale = scale ?? (problem.keyDim > 0 ? 1 / Float(problem.keyDim).squareRoot() : 1)
    let resolvedMask = try ResolvedMask(mask, problem: problem)
    let threads = try AttentionThreads.count()

    let (outputCount, weightCount, hasWork) = try problem.checkResults(wantWeights: wantWeights, shapes())
    if hasWork {
        try problem.checkWorkingMemory(threads: threads, wantWeights: wantWeights, results: outputCount + weightCount, shapes())
    }
    var output = Tensor<Float>(validatedShape: problem.outputShape,
                               scalars: [Float](repeating: 0, count: outputCount))
    var weights = wantWeights
        ? Tensor<Float>(validatedShape: problem.scoreShape, scalars: [Float](repeating: 0, count: weightCount))
        : nil
    guard hasWork else { return (output, weights) }

    query.withUnsafeBufferPointer { q in
        key.withUnsafeBufferPointer { k in
            value.withUnsafeBufferPointer { v in
                withMaskRows(resolvedMask) { maskRows in
                    output.withUnsafeMutableBufferPointer { out in
                        withOptionalMutablePointer(&weights) { w in
                            let arguments = KernelArguments(
                                problem: problem,
                                query: nonNull(q.baseAddress), key: nonNull(k.baseAddress),
                                value: nonNull(v.baseAddress), output: nonNull(out.baseAddress),
                                weights: w, mask: maskRows, scale: resolvedScale,
                                // p = 0 drops nothing: the kernels' paths without dropout.
                                dropout: dropout?.probability == 0 ? nil : dropout,
                                threads: threads, tiles: tiles)
                            let resolved = kernel == .automatic
                                ? chooseKernel(problem, wantWeights: wantWeights, threads: threads) : kernel
                            let nonFinite: Bool
                            switch resolved {
                            case .naive: naiveAttention(arguments); nonFinite = !gemmOnly
                            case .blas, .automatic: nonFinite = blasAttention(arguments, gemmOnly: gemmOnly)
                            case .tiled: nonFinite = tiledAttention(arguments, gemmOnly: gemmOnly)
                            }
                            // Rows that came out NaN or ±∞, computed again in float64.
                            if nonFinite { repairNonFiniteRows(arguments) }
                        }
                    }
                }
            }
        }
    }
    return (output, weights)
}

private func withOptionalMutablePointer<R>(
    _ tensor: inout Tensor<Float>?, _ body: (UnsafeMutablePointer<Float>?) -> R
) -> R {
    guard tensor != nil else { return body(nil) }
    return tensor!.withUnsafeMutableBufferPointer { body(nonNull($0.baseAddress)) }
}
