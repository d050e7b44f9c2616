@testable import AttentionKit
import Testing

/// The tiled kernel with forced tile sizes, so that tile and split boundaries fall inside
/// masks, at L and S that are not multiples of the tiles, and at tile ± 1.
@Suite("Tiled kernel with forced tiles")
struct TiledTests {
    static let tilings: [TileSizes] = [
        TileSizes(queryBlock: 5, keyBlock: 7),
        TileSizes(queryBlock: 3, keyBlock: 16, splits: 3),
        TileSizes(queryBlock: 64, keyBlock: 1),
        TileSizes(queryBlock: 1, keyBlock: 12, splits: 2),          // S − 1 for S = 13
        TileSizes(queryBlock: 8, keyBlock: 13),                     // S
        TileSizes(queryBlock: 9, keyBlock: 14),                     // S + 1, L
        TileSizes(queryBlock: 2, keyBlock: 4, splits: 4, rowwiseLimit: 0),   // sgemm for 2 rows
        TileSizes(queryBlock: 4, keyBlock: 5, splits: 2, rowwiseLimit: 64),  // matrix-vector path for every block
    ]

    static let cases: [AttentionCase] = Cases.masks + Cases.fullyMasked + Cases.grouped + Cases.scales + Cases.empty
        + Cases.sizes.filter { $0.query.reduce(1, *) * $0.key[$0.key.count - 2] < 2_000_000 }

    func run(_ c: AttentionCase, _ tiles: TileSizes, dropout: Dropout? = nil) throws -> Tensor<Float> {
        let (q, k, v) = c.inputs()
        return try runAttention(query: q, key: k, value: v, mask: AttentionMask(c.mask.map(\.library)),
                                scale: c.scale, dropout: dropout, kernel: .tiled, wantWeights: false,
                                tiles: tiles).output
    }

    @Test(arguments: cases) func againstReference(_ c: AttentionCase) throws {
        let (q, k, v) = c.inputs()
        let want = referenceAttention(query: q, key: k, value: v, mask: c.mask, scale: c.scale.map(Double.init))
        for (n, tiles) in Self.tilings.enumerated() {
            let out = try run(c, tiles)
            assertClose(out, want.output, shape: c.outputShape, absolute: outputTolerance(v), "\(c.name) tiling \(n)")
        }
    }

    /// Dropout decisions are per (row, key), so streaming the keys in tiles and splits gives
    /// the BLAS kernel's output.
    @Test func dropoutMatchesBLAS() throws {
        let c = Cases.c("dropout", [2, 4, 19, 8], [2, 2, 37, 8], [2, 2, 37, 5], mask: [.causal(.lowerRight)])
        let (q, k, v) = c.inputs()
        let dropout = try Dropout(probability: 0.3, seed: 11)
        let blas = try scaledDotProductAttentionWithWeights(query: q, key: k, value: v, mask: .causal(.lowerRight),
                                                            dropout: dropout, kernel: .blas)
        // Float64 weights · V from the BLAS kernel's returned (dropped) weights.
        var want = [Double](repeating: 0, count: blas.output.count)
        for row in 0..<(2 * 4 * 19) {
            let b = row / (4 * 19), h = (row / 19) % 4
            for j in 0..<37 {
                let w = Double(blas.weights.scalars[row * 37 + j])
                for d in 0..<5 { want[row * 5 + d] += w * Double(v.scalars[((b * 2 + h / 2) * 37 + j) * 5 + d]) }
            }
        }
        for tiles in Self.tilings {
            let out = try run(c, tiles, dropout: dropout)
            assertClose(out, want, shape: [2, 4, 19, 5], absolute: 2e-5 * 2 / 0.7, "tiled dropout \(tiles)")
        }
    }

    /// The default plan splits the keys of a decode step across threads; the merged result
    /// matches the reference, with and without a mask, for MHA and MQA.
    @Test(arguments: [1, 2, 3]) func splitKVDecode(_ kvHeads: Int) throws {
        let c = Cases.c("decode", [1, 3, 1, 32], [1, kvHeads == 3 ? 3 : 1, 3000, 32], [1, kvHeads == 3 ? 3 : 1, 3000, 16],
                        mask: [.causal(.lowerRight), .keyLengths([2999])])
        let (q, k, v) = c.inputs()
        let want = referenceAttention(query: q, key: k, value: v, mask: c.mask)
        for splits in [1, 2, 5, 7] {
            let out = try runAttention(query: q, key: k, value: v, mask: AttentionMask(c.mask.map(\.library)),
                                       scale: nil, dropout: nil, kernel: .tiled, wantWeights: false,
                                       tiles: TileSizes(splits: splits)).output
            assertClose(out, want.output, shape: c.outputShape, absolute: outputTolerance(v), "\(splits) splits")
        }
    }

    /// Scores that climb from tile to tile: by less than the lazy-rescaling threshold per
    /// tile (the reference stays, exponentials grow up to 2⁸), by more (the reference moves
    /// and the partial output is rescaled), and a climb inside one tile; also falling scores
    /// and a first tile that a causal mask leaves empty for early rows. One head, Dk = 1, so
    /// score j is `scale · q · k_j` exactly as built.
    @Test(arguments: [0.5, 3.0, 7.9, 8.1, 20.0, -15.0]) func lazyRescaling(_ stepPerKey: Double) throws {
        let S = 67, L = 5
        let keys = (0..<S).map { Float(Double($0) * stepPerKey / 8) }     // ×8 from q below: step per key
        let q = try Tensor<Float>(shape: [1, 1, L, 1], scalars: [8, 8, 8, 8, 4])
        let k = try Tensor<Float>(shape: [1, 1, S, 1], scalars: keys)
        let v = normalTensor([1, 1, S, 3], seed: 5)
        for mask in [[MaskSpec](), [.causal(.upperLeft)]] {
            let want = referenceAttention(query: q, key: k, value: v, mask: mask, scale: 1)
            for tiles in [TileSizes(queryBlock: 5, keyBlock: 8), TileSizes(queryBlock: 2, keyBlock: 3, splits: 3),
                          TileSizes(queryBlock: 5, keyBlock: 64), TileSizes(queryBlock: 1, keyBlock: 16, rowwiseLimit: 0),
                          TileSizes(queryBlock: 1, keyBlock: 16)] {   // one-row blocks: the Swift products
                let out = try runAttention(query: q, key: k, value: v, mask: AttentionMask(mask.map(\.library)),
                                           scale: 1, dropout: nil, kernel: .tiled, wantWeights: false,
                                           tiles: tiles).output
                assertClose(out, want.output, shape: [1, 1, L, 3], absolute: outputTolerance(v),
                            "step \(stepPerKey), mask \(mask.count), \(tiles)")
            }
        }
    }
}

