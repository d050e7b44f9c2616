@testable import AttentionKit
import Testing

/// The BLAS kernel's base-2 scores: `log₂ e` folded into the GEMM's alpha and the biases, for
/// blocks whose scores provably stay within float's range there, natural units elsewhere.
@Suite("BLAS kernel in base 2")
struct BLASBase2Tests {
    /// The BLAS kernel's scores are in base 2 (log₂e folded into alpha) only for blocks whose
    /// scores provably stay within float's range there; natural scores that are finite but
    /// beyond base 2's range (about 2.4e38) must give the natural result. 40 query rows (enough
    /// for the base-2 path) over 20 keys, Dk = 1: scale 1e38 with one q·k of 3 (all weight on
    /// that key); scale 1e38 with every q·k = −3 (a uniform average), also under an additive
    /// bias of 0 and under an all-true boolean mask (mask tensors that exclude nothing);
    /// scale 1 with q·k = 3e38 from q = 1e19 and k = 3e19, also with that key's bias −∞ (a +∞
    /// base-2 score plus −∞ would be NaN; the key is simply excluded); and q·k of −2.5e38 and
    /// −2e38 with biases 1e38 and 0 (the first overflows to −∞ in base 2, yet it is the
    /// larger natural score, −1.5e38). Output and weights, the output also without weights
    /// (its normalisation is deferred to the output rows).
    @Test(arguments: ["one score beyond", "every score beyond", "every beyond, bias 0", "every beyond, all true",
                      "huge inputs", "huge inputs, -inf bias", "-inf overflow lifted by a bias"])
    func blasScoresBeyondBase2(_ name: String) throws {
        let L = 40, S = 20
        var q: Float = 1, ks = (0..<S).map { $0 == 7 ? Float(3) : 0 }, scale: Float = 1e38
        var bias = [Float](repeating: 0, count: S), mask: [MaskSpec] = []
        switch name {
        case "one score beyond": break
        case "huge inputs", "huge inputs, -inf bias":
            (q, scale) = (1e19, 1)
            ks = (0..<S).map { $0 == 11 ? Float(3e19) : Float($0) / 10 }
            if name.hasSuffix("bias") { bias[11] = -.infinity; mask = [.additive(shape: [S], data: bias)] }
        case "-inf overflow lifted by a bias":
            (q, scale) = (1e19, 1)
            ks = (0..<S).map { $0 == 3 ? Float(-2.5e19) : Float(-2e19) }
            bias[3] = 1e38
            mask = [.additive(shape: [S], data: bias)]
        default:
            ks = Array(repeating: -3, count: S)
            if name.hasSuffix("bias 0") { mask = [.additive(shape: [S], data: bias)] }
            if name.hasSuffix("all true") { mask = [.boolean(shape: [S], data: Array(repeating: true, count: S))] }
        }
        let queries = try Tensor<Float>(shape: [1, 1, L, 1], scalars: Array(repeating: q, count: L))
        let k = try Tensor<Float>(shape: [1, 1, S, 1], scalars: ks)
        let v = normalTensor([1, 1, S, 3], seed: 52)
        let want = referenceAttention(query: queries, key: k, value: v, mask: mask, scale: Double(scale))
        let libraryMask = AttentionMask(mask.map(\.library))
        let (out, weights) = try scaledDotProductAttentionWithWeights(
            query: queries, key: k, value: v, mask: libraryMask, scale: scale, kernel: .blas)
        assertClose(out, want.output, shape: [1, 1, L, 3], absolute: outputTolerance(v), "\(name) output")
        assertClose(weights, want.weights, shape: [1, 1, L, S], absolute: 2e-5, "\(name) weights")
        let alone = try scaledDotProductAttention(query: queries, key: k, value: v, mask: libraryMask,
                                                  scale: scale, kernel: .blas)
        assertClose(alone, want.output, shape: [1, 1, L, 3], absolute: outputTolerance(v), "\(name) output without weights")
    }

    /// The BLAS kernel's base-2 path on every case of the suite (masks, fully masked rows,
    /// grouped heads, scales, empty and odd sizes): most cases have fewer query rows per
    /// (batch, key/value head) than the kernel's threshold for it, so it is forced down to 1.
    /// Output and weights, and the output alone.
    @Test(arguments: Cases.masks + Cases.fullyMasked + Cases.grouped + Cases.scales + Cases.empty + Cases.sizes)
    func blasBase2Path(_ c: AttentionCase) throws {
        let (q, k, v) = c.inputs()
        let want = referenceAttention(query: q, key: k, value: v, mask: c.mask, scale: c.scale.map(Double.init))
        let mask = AttentionMask(c.mask.map(\.library))
        let forced = TileSizes(blasBase2MinimumRows: 1)
        for wantWeights in [true, false] {
            let result = try runAttention(query: q, key: k, value: v, mask: mask, scale: c.scale, dropout: nil,
                                          kernel: .blas, wantWeights: wantWeights, tiles: forced)
            assertClose(result.output, want.output, shape: c.outputShape, absolute: outputTolerance(v),
                        "\(c.name) output (weights: \(wantWeights))")
            if let weights = result.weights {
                assertClose(weights, want.weights, shape: c.scoreShape, absolute: 2e-5, "\(c.name) weights")
            }
        }
    }
}
