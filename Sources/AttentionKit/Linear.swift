/// A fully connected (affine) layer in PyTorch's `nn.Linear` layout: `y = x · Wᵀ + b`.
///
/// ```
/// y[..., o] = Σ_i x[..., i] · weight[o, i] + bias[o]
/// ```
///
/// Shapes: `weight` is `[out, in]` (exactly `nn.Linear.weight`), `bias` is `[out]` or absent;
/// the input is `[..., in]` with any number of leading dimensions and the output `[..., out]`.
///
/// All the rows of an input go through one `cblas_sgemm` (`[rows, in] · [out, in]ᵀ`). A
/// single row goes through `cblas_sgemv` instead, and two or three rows through one sgemv
/// each: OpenBLAS 0.3.21's sgemm packs the whole transposed weight matrix whatever the row
/// count, which makes a one-row sgemm about 3.4× slower than sgemv on a weight matrix
/// larger than the cache (`Benchmarks/sgemm-vs-sgemv.c`, 2048×2048, one thread: 3.9 against
/// 13.3 GB/s of weights).
///
/// ```swift
/// let proj = try Linear(weight: w, bias: b)      // w [out, in], b [out]
/// let y = try proj(x)                            // x [B, L, in] → y [B, L, out]
/// ```
public struct Linear: Sendable {
    /// The weight, `[out, in]`, in PyTorch's layout.
    public let weight: Tensor<Float>
    /// The bias, `[out]`, or `nil` for none.
    public let bias: Tensor<Float>?

    /// The input width `in`, the weight's second dimension.
    public var inputDim: Int { weight.shape[1] }
    /// The output width `out`, the weight's first dimension.
    public var outputDim: Int { weight.shape[0] }

    /// Creates a layer from a weight and an optional bias, as stored by `nn.Linear`.
    ///
    /// - Parameters:
    ///   - weight: `[out, in]`.
    ///   - bias: `[out]`, or `nil` for no bias.
    /// - Throws: ``AttentionError`` with code `.weightShape` when `weight` is not rank 2 or
    ///   `bias` is not `[out]`, or `.sizeOverflow` when a width exceeds BLAS's 32-bit sizes.
    public init(weight: Tensor<Float>, bias: Tensor<Float>? = nil) throws {
        guard weight.rank == 2 else {
            throw AttentionError(.weightShape,
                "a Linear weight must be [out, in] (rank 2), got \(describe(weight.shape))")
        }
        if let bias, bias.shape != [weight.shape[0]] {
            throw AttentionError(.weightShape,
                "a Linear bias must be [out] = [\(weight.shape[0])] for weight \(describe(weight.shape)), "
                + "got \(describe(bias.shape))")
        }
        guard weight.shape.allSatisfy({ $0 <= BLAS.maximumDimension }) else {
            throw AttentionError(.sizeOverflow,
                "Linear weight \(describe(weight.shape)) exceeds BLAS's 32-bit sizes")
        }
        self.weight = weight
        self.bias = bias
    }

    /// Creates a fresh layer: Xavier-uniform (Glorot) weights drawn reproducibly from `seed`
    /// and a zero bias.
    ///
    /// Each weight is uniform in `[−a, a]` with `a = √(6 / (in + out))`: PyTorch's
    /// `nn.init.xavier_uniform_` applied to this layer's own `[out, in]` matrix. That is not
    /// exactly how `nn.MultiheadAttention` starts: its `_reset_parameters` applies
    /// `xavier_uniform_` to the packed `[3E, E]` `in_proj_weight` as one matrix (bound
    /// `√(6 / (4E))` for each of W_q, W_k, W_v, where three `[E, E]` layers made here get
    /// `√(6 / (2E))`), or to each of `q_proj_weight`, `k_proj_weight`, `v_proj_weight` when
    /// `kdim`/`vdim` differ from E (the bound used here); and it leaves `out_proj.weight` at
    /// `nn.Linear`'s default, uniform in `±1/√E`. Its biases start at zero, as here.
    ///
    /// - Parameters:
    ///   - inputDim: `in`, at least 0.
    ///   - outputDim: `out`, at least 0.
    ///   - bias: Whether the layer has a (zero) bias.
    ///   - seed: Selects the weights; equal seeds give equal weights.
    /// - Throws: ``AttentionError`` with code `.headWidth` when a width is negative, or
    ///   `.sizeOverflow` when `[out, in]` is too large.
    public init(inputDim: Int, outputDim: Int, bias: Bool = true, seed: UInt64 = 0) throws {
        guard inputDim >= 0, outputDim >= 0 else {
            throw AttentionError(.headWidth,
                "Linear widths must not be negative, got in \(inputDim), out \(outputDim)")
        }
        let count = try elementCount(of: [outputDim, inputDim])
        try checkAllocation(count: count, of: Float.self, "a Linear weight [\(outputDim), \(inputDim)]")
        let bound = inputDim + outputDim > 0 ? (6 / Double(inputDim + outputDim)).squareRoot() : 0
        var generator = LayerRandom(seed: seed)
        let scalars = (0..<count).map { _ in Float((2 * generator.nextUnit() - 1) * bound) }
        try self.init(weight: Tensor(validatedShape: [outputDim, inputDim], scalars: scalars),   // [out, in]
                      bias: bias ? Tensor(validatedShape: [outputDim], scalars: [Float](repeating: 0, count: outputDim)) : nil)
    }

    /// Applies the layer to every row: `[..., in]` → `[..., out]`.
    ///
    /// OpenBLAS runs the product on ``AttentionThreads/count()`` threads.
    ///
    /// - Parameter input: `[..., in]`, rank at least 1.
    /// - Returns: `[..., out]`, with the input's leading dimensions.
    /// - Throws: ``AttentionError`` with code `.invalidRank` for a rank-0 input, `.inputWidth`
    ///   when the last dimension is not `in`, `.sizeOverflow` when there are more rows than
    ///   BLAS can index or the output would not fit in the machine's memory, or
    ///   `.threadCount` when `ATTENTIONKIT_NUM_THREADS` is malformed.
    public func callAsFunction(_ input: Tensor<Float>) throws -> Tensor<Float> {
        guard let width = input.shape.last else {
            throw AttentionError(.invalidRank, "a Linear input must have rank ≥ 1 [..., \(inputDim)], got \(describe(input.shape))")
        }
        guard width == inputDim else {
            throw AttentionError(.inputWidth,
                "input \(describe(input.shape)) has width \(width) but the Linear layer takes \(inputDim) "
                + "(weight \(describe(weight.shape)))")
        }
        let rows = try elementCount(of: Array(input.shape.dropLast()))
        guard rows <= BLAS.maximumDimension else {
            throw AttentionError(.sizeOverflow, "input \(describe(input.shape)) has more rows than BLAS can index")
        }
        let outputShape = Array(input.shape.dropLast()) + [outputDim]
        let count = try elementCount(of: outputShape)
        try checkAllocation(count: count, of: Float.self, "the output \(describe(outputShape)) of a Linear layer")
        let threads = try AttentionThreads.count()
        var scalars = ArrayPool.take(count: count)                     // every element written below
        scalars.withUnsafeMutableBufferPointer { out in
            input.withUnsafeBufferPointer { x in
                BLAS.withThreads(threads) {
                    // y[rows, out] = x[rows, in] · W[out, in]ᵀ + b
                    apply(rows: rows, input: nonNull(x.baseAddress), inputStride: inputDim,
                          output: nonNull(out.baseAddress), outputStride: outputDim)
                }
            }
        }
        return Tensor(validatedShape: outputShape, scalars: scalars)          // [..., out]
    }

    /// `y[rows, out] = x[rows, in] · Wᵀ (+ b)` on raw rows with row strides (leading
    /// dimensions) `inputStride ≥ in` and `outputStride ≥ out`.
    ///
    /// One sgemm over all rows; sgemv per row for at most ``gemvRows`` rows. With
    /// `addBias: false` the bias is left out (for callers that fuse it into a later copy).
    /// Every output element is written; the output need not be initialised. The caller
    /// chooses OpenBLAS's thread count (``BLAS/withThreads(_:_:)``).
    func apply(rows: Int, input: UnsafePointer<Float>, inputStride: Int,
               output: UnsafeMutablePointer<Float>, outputStride: Int, addBias: Bool = true) {
        let (n, k) = (outputDim, inputDim)
        guard rows > 0, n > 0 else { return }
        let useBias = addBias && bias != nil
        if useBias {
            bias!.withUnsafeBufferPointer { b in
                for r in 0..<rows { (output + r * outputStride).update(from: nonNull(b.baseAddress), count: n) }
            }
        }
        weight.withUnsafeBufferPointer { w in
            let w = nonNull(w.baseAddress)                                     // [out, in]
            if rows <= Linear.gemvRows {
                for r in 0..<rows {
                    // y[r, out] = W[out, in] · x[r, in] (+ y[r, out] = b)
                    BLAS.sgemv(transposeA: false, m: n, n: k, alpha: 1, a: w, lda: k, x: input + r * inputStride,
                               beta: useBias ? 1 : 0, y: output + r * outputStride)
                }
            } else {
                // y[rows, out] = x[rows, in] · W[out, in]ᵀ (+ y = b broadcast over rows)
                BLAS.sgemm(m: rows, n: n, k: k, alpha: 1, a: input, lda: inputStride,
                           b: w, ldb: k, transposeB: true,
                           beta: useBias ? 1 : 0, c: output, ldc: outputStride)
            }
        }
    }

    /// Up to this many rows, one sgemv per row beats one sgemm (see the type's notes).
    static let gemvRows = 3
}

/// SplitMix64, for reproducible initial weights (the library's only random numbers besides
/// ``Dropout``'s hash).
struct LayerRandom {
    private var state: UInt64
    init(seed: UInt64) { state = seed }

    /// The next output: SplitMix64 steps its state by the golden-ratio increment and
    /// finalises it, which is exactly `splitMix64` of the state before the step.
    mutating func next() -> UInt64 {
        defer { state &+= 0x9E37_79B9_7F4A_7C15 }
        return splitMix64(state)
    }

    /// Uniform in [0, 1), 53 random bits.
    mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1p-53 }
}
