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
        TileSizes(queryBlock: 7, keyBlock: 5, rowwiseLimit: 64),            // … in groups of 4 rows + 3
        TileSizes(queryBlock: 8, keyBlock: 6, splits: 2, rowwiseLimit: 8),  // … two groups of 4, split keys
    ]

    static let cases: [AttentionCase] = Cases.masks + Cases.fullyMasked + Cases.grouped + Cases.scales + Cases.empty
        + Cases.sizes.filter { $0.query.reduce(1, *) * $0.key[$0.key.count - 2] < 2_000_000 }

    func run(_ c: AttentionCase, _ tiles: TileSizes, dropout: Dropout? = nil) throws -> Tensor<Float> {
        let (q, k, v) = c.inputs()
        return try runAttention(query: q, key: k, value: v, mask: AttentionMask(c.mask.map(\.library)),
                                scale: c.scale, dropout: dropout, kernel: .tiled, wantWeights: false,
                                tiles: tiles).output
    }

    /// Runs the tiled kernel on `q`, `k`, `v` with each forced tiling and checks every output
    /// against the float64 reference, with the suite's output tolerance. On one thread, so
    /// that the keys are split only where a tiling says so and a row's tiles follow each other
    /// whatever the core count. With `recompute: false` the kernel returns what its tiled path
    /// computed even for rows that look wrong, instead of recomputing them with the BLAS kernel.
    func expectTilingsMatchReference(query q: Tensor<Float>, key k: Tensor<Float>, value v: Tensor<Float>,
                                     mask: [MaskSpec] = [], scale: Float, tilings: [TileSizes], recompute: Bool = true,
                                     _ label: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let want = referenceAttention(query: q, key: k, value: v, mask: mask, scale: Double(scale))
        let shape = Array(q.shape.dropLast()) + [v.shape[v.shape.count - 1]]
        for var tiles in tilings {
            tiles.recomputeSuspectRows = recompute
            let out = try AttentionThreads.withCount(1) {
                try runAttention(query: q, key: k, value: v, mask: AttentionMask(mask.map(\.library)),
                                 scale: scale, dropout: nil, kernel: .tiled, wantWeights: false, tiles: tiles).output
            }
            assertClose(out, want.output, shape: shape, absolute: outputTolerance(v), "\(label), \(tiles)",
                        sourceLocation: sourceLocation)
        }
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

    /// Forced key splits of a decode step: the merged result matches the reference for MHA
    /// (three key/value heads) and MQA (one), with key lengths just below S and far below it
    /// (as a KV cache's unused capacity: the splits are laid over the 1100 keys in use).
    @Test(arguments: [1, 3]) func splitKVDecode(_ kvHeads: Int) throws {
        for length in [2999, 1100] {
            let c = Cases.c("decode", [1, 3, 1, 32], [1, kvHeads, 3000, 32], [1, kvHeads, 3000, 16],
                            mask: [.causal(.lowerRight), .keyLengths([length])])
            let (q, k, v) = c.inputs()
            let want = referenceAttention(query: q, key: k, value: v, mask: c.mask)
            for splits in [1, 2, 5, 7] {
                let out = try runAttention(query: q, key: k, value: v, mask: AttentionMask(c.mask.map(\.library)),
                                           scale: nil, dropout: nil, kernel: .tiled, wantWeights: false,
                                           tiles: TileSizes(splits: splits)).output
                assertClose(out, want.output, shape: c.outputShape, absolute: outputTolerance(v),
                            "length \(length), \(splits) splits")
            }
        }
    }

    /// The key splits of a decode step are laid over the keys some row may see, not over the
    /// whole storage: a cache of 3000 positions holding 1100, on two threads, splits those
    /// 1100 keys (four splits of 512 keys, the last two cut short or empty, would leave one
    /// thread with nearly all the work). Also with a causal mask alone and no mask.
    @Test func splitsCoverTheKeysInUse() throws {
        func schedule(_ mask: AttentionMask, query: [Int], key: [Int], threads: Int) throws -> TiledSchedule {
            let problem = try AttentionProblem(query: query, key: key, value: key)
            let dummy = UnsafeMutablePointer<Float>.allocate(capacity: 1)
            defer { dummy.deallocate() }
            return withMaskRows(try ResolvedMask(mask, problem: problem)) { rows in
                TiledSchedule(KernelArguments(problem: problem, query: dummy, key: dummy, value: dummy, output: dummy,
                                              weights: nil, mask: rows, scale: 1, dropout: nil, threads: threads))
            }
        }
        let cache = try schedule([.causal(.lowerRight), .keyLengths([1100])], query: [1, 8, 1, 128], key: [1, 1, 3000, 128], threads: 2)
        #expect(cache.activeKeys == 1100 && cache.plan.splits > 1)
        #expect(cache.keysPerSplit * (cache.plan.splits - 1) < 1100 && cache.keysPerSplit * cache.plan.splits >= 1100,
                "\(cache.plan.splits) splits of \(cache.keysPerSplit) keys for 1100 keys in use")
        let decodeStep = try schedule(AttentionMask.causalToKeyLengths([700, 1100]), query: [2, 1, 3, 64], key: [2, 1, 4096, 64], threads: 2)
        #expect(decodeStep.activeKeys == 1100)
        let causal = try schedule(.causal(.upperLeft), query: [1, 1, 10, 64], key: [1, 1, 3000, 64], threads: 1)
        #expect(causal.activeKeys == 10 && causal.keysPerSplit >= 10)
        let open = try schedule(.none, query: [1, 1, 10, 64], key: [1, 1, 3000, 64], threads: 1)
        #expect(open.activeKeys == 3000 && open.keysPerSplit * open.plan.splits >= 3000)
    }

    /// When only some (batch, key/value head) units have rows that the base-2 path cannot
    /// compute (here unit 2 of 4, whose values of 2e36 overflow its lazily rescaled partial
    /// output), only those are computed again: every unit matches the reference with the
    /// tolerance of its own values, the other units are bit for bit what the tiled path
    /// computed without any recomputation, and unit 2 is not. With one query head per
    /// key/value head and with two (GQA), on one and two threads.
    @Test(arguments: [2, 4]) func onlySuspectUnitsRecomputed(_ queryHeads: Int) throws {
        let (B, H, L, S) = (2, 2, 8, 80)
        let g = queryHeads / H
        let q = try Tensor<Float>(shape: [B, queryHeads, L, 2], scalars: Array(repeating: 1, count: B * queryHeads * L * 2))
        // 16 keys at score 0, then 64 whose base-2 scores sit 7.9 above them (as in scoresBeyondBase2).
        let unitKeys: [Float] = (0..<S).flatMap { $0 < 16 ? [Float(0), 0] : [Float(7.9 / 1.4426950408889634), 0] }
        let k = try Tensor<Float>(shape: [B, H, S, 2], scalars: Array(repeating: unitKeys, count: B * H).flatMap { $0 })
        var v = normalTensor([B, H, S, 3], seed: 52)
        v.withUnsafeMutableBufferPointer { p in
            for i in (2 * S * 3)..<(3 * S * 3) { p[i] = 2e36 * (1 + 0.1 * p[i]) }       // unit 2: b = 1, kv head 0
        }
        let want = referenceAttention(query: q, key: k, value: v, scale: 1)
        for (tiles, threads) in [(TileSizes(queryBlock: 8, keyBlock: 16), 1), (TileSizes(queryBlock: 4, keyBlock: 16, splits: 2), 1),
                                 (TileSizes(queryBlock: 8, keyBlock: 16), 2), (TileSizes(queryBlock: 5, keyBlock: 16, splits: 3), 2)] {
            func run(recompute: Bool) throws -> Tensor<Float> {
                var tiles = tiles
                tiles.recomputeSuspectRows = recompute
                return try AttentionThreads.withCount(threads) {
                    try runAttention(query: q, key: k, value: v, mask: .none, scale: 1, dropout: nil,
                                     kernel: .tiled, wantWeights: false, tiles: tiles).output
                }
            }
            let out = try run(recompute: true), tiledOnly = try run(recompute: false)
            let unitSize = g * L * 3                                    // g query heads × L rows × Dv
            for unit in 0..<(B * H) {
                let range = (unit * unitSize)..<((unit + 1) * unitSize)
                let got = try Tensor<Float>(shape: [g * L, 3], scalars: Array(out.scalars[range]))
                let unitValues = try Tensor<Float>(shape: [S, 3], scalars: Array(v.scalars[(unit * S * 3)..<((unit + 1) * S * 3)]))
                assertClose(got, Array(want.output[range]), shape: [g * L, 3], absolute: outputTolerance(unitValues),
                            "unit \(unit), \(tiles), \(threads) threads")
                let same = zip(out.scalars[range], tiledOnly.scalars[range]).allSatisfy { $0.bitPattern == $1.bitPattern }
                #expect(same == (unit != 2), "unit \(unit) \(same ? "kept" : "replaced") the tiled path's result, \(tiles), \(threads) threads")
            }
        }
    }

    /// Scores that climb from tile to tile: by less than the lazy-rescaling threshold per
    /// tile (the reference stays, exponentials grow up to 2¹⁶), by just less and just more than
    /// it, by far more (the reference moves and the partial output is rescaled), and falling
    /// scores. One head, Dk = 1, so score j is `step · j` exactly as built; in the kernel's
    /// base-2 units a tile of 8 keys climbs `8 · step · log₂e`, which crosses the threshold of
    /// 16 at step ≈ 1.386 (and 8, an earlier threshold, at 0.693). Also with a boolean mask
    /// that leaves the first 20 keys (whole tiles) empty for the first two rows, and with a
    /// causal mask.
    @Test(arguments: [0.5, 0.68, 0.70, 1.36, 1.41, 3.0, 20.0, -15.0]) func lazyRescaling(_ stepPerKey: Double) throws {
        let S = 67, L = 5
        let keys = (0..<S).map { Float(Double($0) * stepPerKey / 8) }     // ×8 from q below: step per key
        let q = try Tensor<Float>(shape: [1, 1, L, 1], scalars: [8, 8, 8, 8, 4])
        let k = try Tensor<Float>(shape: [1, 1, S, 1], scalars: keys)
        let v = normalTensor([1, 1, S, 3], seed: 5)
        let lateStart = (0..<(L * S)).map { !($0 / S < 2 && $0 % S < 20) }
        for mask in [[MaskSpec](), [.boolean(shape: [L, S], data: lateStart)], [.causal(.upperLeft)]] {
            try expectTilingsMatchReference(
                query: q, key: k, value: v, mask: mask, scale: 1,
                tilings: [TileSizes(queryBlock: 5, keyBlock: 8), TileSizes(queryBlock: 2, keyBlock: 3, splits: 3),
                          TileSizes(queryBlock: 5, keyBlock: 64), TileSizes(queryBlock: 1, keyBlock: 16, rowwiseLimit: 0),
                          TileSizes(queryBlock: 1, keyBlock: 16)],    // one-row blocks: the Swift products
                "step \(stepPerKey), mask \(mask)")
        }
    }

    /// A row's first tile keeps the starting reference 0 when its maximum (base 2) is within
    /// [0, 16] (in the one-pass step: when its sum of `2^s` is within [1, 2¹⁶]), else the
    /// reference moves to it. Dk = 2 with q = (1, shift) and k_j = (x_j, 1), so every score of
    /// a row is x_j + shift: shifts put the maxima of the eleven rows at −101, −33, −0.3, 0.3,
    /// 7.9, 8.1, 15.9, 16.1, 50, −144 and +146 in base-2 units (either side of the edges; the
    /// last two would underflow every weight to 0 or overflow it to ∞ if the reference
    /// stayed); x_j is a small spread, descending so later tiles fall below the first.
    @Test func firstTileReference() throws {
        let S = 40, L = 11
        let maxima: [Double] = [-101, -33, -0.3, 0.3, 7.9, 8.1, 15.9, 16.1, 50, -144, 146]      // base 2
        let shifts = maxima.map { Float($0 / 1.4426950408889634 - 1.5) }            // natural
        let q = try Tensor<Float>(shape: [1, 1, L, 2], scalars: shifts.flatMap { [1, $0] })
        let k = try Tensor<Float>(shape: [1, 1, S, 2],
                                  scalars: (0..<S).flatMap { [Float(1.5 - 0.1 * Double($0)), 1] })
        let v = normalTensor([1, 1, S, 3], seed: 21)
        try expectTilingsMatchReference(
            query: q, key: k, value: v, scale: 1,
            tilings: [TileSizes(queryBlock: 11, keyBlock: 8), TileSizes(queryBlock: 11, keyBlock: 64),
                      TileSizes(queryBlock: 1, keyBlock: 16), TileSizes(queryBlock: 11, keyBlock: 16, splits: 2)],
            "first tile")
    }

    /// Inputs at the edges of the one-pass step's conditions (found in review): a first tile
    /// far below the second, so the reference (−119, base 2) is too distant to write into the
    /// tile and the second tile's exponentials near 2¹²⁰ would overflow their sum in one pass;
    /// a first tile at −1e6, where `s − c` would round away the second tile's scores; a query
    /// whose squared norm underflows (1e-23) with a scale of 1e25, so scores of ±144 must not
    /// be taken for 0; and tiny values (1e-33), whose partial products must stay normal
    /// floats; and a product q·k that overflows to −∞ in float (2e19 · −2e19) under a scale of
    /// 1e-37, whose exact score is small enough for the bound, but whose float score must still
    /// give weight 0, not NaN. All on sgemm blocks (8 rows) with 512-key and 16-key tiles.
    @Test(arguments: ["distant first tile", "far first tile", "underflowing norm", "tiny values",
                      "overflowing products"])
    func oneStepEdges(_ name: String) throws {
        let L = 8
        var keys: [Float], queryValue: Float = 1, scale: Float = 1, valueScale: Float = 1
        switch name {
        case "distant first tile": keys = Array(repeating: -82.5, count: 512) + Array(repeating: 0.6, count: 512)
        case "far first tile":
            var rng = SplitMix64(seed: 3)
            keys = Array(repeating: -1e6, count: 512) + (0..<512).map { _ in Float.random(in: -2...2, using: &rng) }
        case "underflowing norm":
            keys = (0..<16).map { Float(-1 + 2 * Double($0) / 15) }
            queryValue = 1e-23; scale = 1e25
        case "overflowing products":                    // q·k of key 0 is −∞ in float, its score −∞
            keys = [-2e19] + (1..<16).map { Float(1e18 * Double($0)) }
            queryValue = 2e19; scale = 1e-37
        default:
            keys = (0..<16).map { Float(0.1 * Double($0 % 5)) }
            valueScale = 1e-33
        }
        let S = keys.count
        let q: Tensor<Float>, k: Tensor<Float>
        if name == "tiny values" {                      // scores −21.3 + 0.1·(j mod 5): maxima in [−32, 0)
            q = try Tensor(shape: [1, 1, L, 2], scalars: (0..<L).flatMap { _ in [Float(1), -21.3] })
            k = try Tensor(shape: [1, 1, S, 2], scalars: keys.flatMap { [$0, 1] })
        } else {
            q = try Tensor(shape: [1, 1, L, 1], scalars: Array(repeating: queryValue, count: L))
            k = try Tensor(shape: [1, 1, S, 1], scalars: keys)
        }
        let v = normalTensor([1, 1, S, 3], seed: 17)
        let want = referenceAttention(query: q, key: k, value: v, scale: Double(scale))   // linear in V
        var small = v
        small.withUnsafeMutableBufferPointer { p in for i in p.indices { p[i] *= valueScale } }
        // One split, so the key tiles of a row follow each other (a split starts afresh).
        for tiles in [TileSizes(queryBlock: 8, keyBlock: 512, splits: 1), TileSizes(queryBlock: 8, keyBlock: 16, splits: 1)] {
            var out = try runAttention(query: q, key: k, value: small, mask: .none, scale: scale, dropout: nil,
                                       kernel: .tiled, wantWeights: false, tiles: tiles).output
            out.withUnsafeMutableBufferPointer { p in for i in p.indices { p[i] /= valueScale } }
            assertClose(out, want.output, shape: [1, 1, L, 3], absolute: outputTolerance(v), "\(name), \(tiles)")
        }
    }

    /// Scores whose natural values are finite but beyond base 2's range once multiplied by
    /// log₂e (about 2.4e38), and partial outputs that overflow under lazy rescaling although
    /// the result is finite: the tiled kernel notices the NaN, ±∞ or weightless rows this
    /// leaves and computes the call again in natural units. Cases: scale 1e38 with one q·k
    /// of 3 (score 3e38, all weight on that key); scale 1e38 with every q·k = −3 (a uniform
    /// average); scale 1 with q·k = 3e38 from q = 1e19, k = 3e19; and values of 2e36 under
    /// 64 keys whose base-2 scores sit 7.9 above the row's reference (partial sums reach
    /// about 3e40, the result is 2e36). With boolean or additive tensors a row may end with
    /// no weight legitimately, so those calls are checked before the fact (norms for sgemm
    /// blocks, the scores themselves for row-wise blocks): every score beyond under an
    /// additive bias of 0 and under an all-true boolean mask, huge inputs with that key's
    /// bias −∞ (+∞ + −∞ would be NaN), and natural scores −2.5e38 and −2e38 with biases 1e38
    /// and 0 (the first is −∞ in base 2, yet the larger natural score).
    @Test(arguments: ["one score beyond", "every score beyond", "huge inputs", "partial overflow",
                      "every beyond, bias 0", "every beyond, all true", "huge inputs, -inf bias",
                      "-inf overflow lifted by a bias"])
    func scoresBeyondBase2(_ name: String) throws {
        let L = 8, S: Int
        var qs: [Float], ks: [Float], scale: Float = 1e38, valueScale: Float = 1
        var mask: [MaskSpec] = []
        switch name {
        case "one score beyond":
            S = 20
            qs = Array(repeating: 1, count: L * 2)
            ks = (0..<S).flatMap { $0 == 7 ? [Float(1.5), 1.5] : [Float(0), 0] }
        case "every score beyond", "every beyond, bias 0", "every beyond, all true":
            S = 20
            qs = Array(repeating: 1, count: L * 2)
            ks = Array(repeating: -1.5, count: S * 2)
            if name.hasSuffix("bias 0") { mask = [.additive(shape: [S], data: Array(repeating: 0, count: S))] }
            if name.hasSuffix("all true") { mask = [.boolean(shape: [S], data: Array(repeating: true, count: S))] }
        case "huge inputs", "huge inputs, -inf bias":
            S = 20; scale = 1
            qs = (0..<L).flatMap { _ in [Float(1e19), 0] }
            ks = (0..<S).flatMap { $0 == 11 ? [Float(3e19), 0] : [Float(Double($0) / 10), 1] }
            if name.hasSuffix("bias") {
                mask = [.additive(shape: [S], data: (0..<S).map { $0 == 11 ? -.infinity : 0 })]
            }
        case "-inf overflow lifted by a bias":
            S = 20; scale = 1
            qs = (0..<L).flatMap { _ in [Float(1e19), 0] }
            ks = (0..<S).flatMap { $0 == 3 ? [Float(-2.5e19), 0] : [Float(-2e19), 0] }
            mask = [.additive(shape: [S], data: (0..<S).map { $0 == 3 ? 1e38 : 0 })]
        default:                                        // 16 keys at score 0, then 64 at 7.9 / log₂e
            S = 80; scale = 1; valueScale = 2e36
            qs = Array(repeating: 1, count: L * 2)
            ks = (0..<S).flatMap { $0 < 16 ? [Float(0), 0] : [Float(7.9 / 1.4426950408889634), 0] }
        }
        let q = try Tensor<Float>(shape: [1, 1, L, 2], scalars: qs)
        let k = try Tensor<Float>(shape: [1, 1, S, 2], scalars: ks)
        var v = normalTensor([1, 1, S, 3], seed: 51)
        if name == "partial overflow" {
            v.withUnsafeMutableBufferPointer { p in for i in p.indices { p[i] = valueScale * (1 + 0.1 * p[i]) } }
        }
        try expectTilingsMatchReference(
            query: q, key: k, value: v, mask: mask, scale: scale,
            tilings: [TileSizes(), TileSizes(queryBlock: 8, keyBlock: 16, splits: 1),
                      TileSizes(queryBlock: 8, keyBlock: 16, splits: 2), TileSizes(queryBlock: 1, keyBlock: 16),
                      TileSizes(queryBlock: 4, keyBlock: 8, splits: 2),
                      TileSizes(queryBlock: 8, keyBlock: 16, splits: 2, rowwiseLimit: 8)],
            name)
    }

    /// NaN in a key makes every row that attends to it NaN, also when the key range is split
    /// across threads (the merge must not pass over a split whose sum is NaN) and when every
    /// key is NaN (then the row is NaN, not zeros).
    @Test(arguments: [false, true]) func nanKeysStayNaN(_ allKeys: Bool) throws {
        let S = 16
        let q = normalTensor([1, 1, 8, 4], seed: 41)
        var k = normalTensor([1, 1, S, 4], seed: 42)
        k.withUnsafeMutableBufferPointer { p in for i in (allKeys ? 0 : 8 * 4)..<(S * 4) { p[i] = .nan } }
        let v = normalTensor([1, 1, S, 3], seed: 43)
        for tiles in [TileSizes(queryBlock: 8, keyBlock: 8, splits: 2), TileSizes(queryBlock: 8, keyBlock: 8),
                      TileSizes(queryBlock: 8, keyBlock: 8, splits: 2, rowwiseLimit: 8),
                      TileSizes(queryBlock: 8, keyBlock: 16), TileSizes(queryBlock: 1, keyBlock: 8, splits: 2)] {
            let out = try runAttention(query: q, key: k, value: v, mask: .none, scale: nil, dropout: nil,
                                       kernel: .tiled, wantWeights: false, tiles: tiles).output
            let allNaN = out.scalars.allSatisfy { $0.isNaN }
            #expect(allNaN, "\(tiles): \(out.scalars.prefix(6))")
        }
        let blas = try scaledDotProductAttention(query: q, key: k, value: v, kernel: .blas)
        let blasNaN = blas.scalars.allSatisfy { $0.isNaN }
        #expect(blasNaN, "the BLAS kernel agrees")
    }

    /// Unmasked sgemm blocks bound their scores by Cauchy–Schwarz and skip the exponential's
    /// clamp when every exponent stays above −126. One head, Dk = 1, 96 keys evenly over
    /// [−30, 30] (ascending, so the reference moves tile after tile, and descending, so the
    /// first tile holds the maximum and later tiles start from it): a query of 1 spans ±43 in
    /// base-2 units (the bound allows the unclamped path), 1.4 spans ±61 (still allowed:
    /// exponents down to −121), 1.45 and 1.5 span ±63 and ±65 (exponents below −126: clamped),
    /// 2 and −3 far more. Key tiles are whole vectors (8 lanes), since row tails always take the
    /// clamped scalar exponential. A wrongly unclamped exponent below −127.5 gives garbage
    /// (wrapped exponent bits, e.g. −9.8e37 at −129.8), not a tiny weight, so a slip in the
    /// bound shows up against the reference (checked: dropping the offset `c` from the bound
    /// fails this test).
    @Test(arguments: [false, true]) func boundedExponentRange(_ descending: Bool) throws {
        let S = 96, L = 6
        var keys = (0..<S).map { Float(-30 + 60 * Double($0) / Double(S - 1)) }
        if descending { keys.reverse() }
        let q = try Tensor<Float>(shape: [1, 1, L, 1], scalars: [1, 1.4, 1.45, 1.5, 2, -3])
        let k = try Tensor<Float>(shape: [1, 1, S, 1], scalars: keys)
        let v = normalTensor([1, 1, S, 4], seed: 9)
        try expectTilingsMatchReference(
            query: q, key: k, value: v, scale: 1,
            tilings: [TileSizes(queryBlock: 6, keyBlock: 16), TileSizes(queryBlock: 6, keyBlock: 24),
                      TileSizes(queryBlock: 6, keyBlock: 96), TileSizes(queryBlock: 5, keyBlock: 8, rowwiseLimit: 0)],
            "descending \(descending)")
    }

    /// The one-pass step tests tile sums instead of finding tile maxima: a first tile stays at
    /// reference 0 when its sum of `2^s` lies in [1, 2¹⁶]; a later tile needs its maximum only
    /// when its sum relative to the reference passes 2¹⁶, and then moves the reference only if
    /// a score exceeds it by more than 16. One head, Dk = 1, q = 1, 1024 keys: 512 at the first
    /// base-2 level, then 512 at the second (with a small spread), so that a whole tile can sum
    /// past 2¹⁶ while every score stays within 16 of the reference (0 → 15.5: checked, kept;
    /// 0 → 16.5: moved), a first tile can sum below 1 and move the reference down, to −20, too
    /// distant to be written into later tiles (then −20 → −4.5 and → −3.5, relative to it),
    /// and a first tile can sum above 2¹⁶ with its maximum below 16 (8 keys per tile at 15).
    /// From a reference of −60, a climb to 62 must move it (a tile that skipped its maximum
    /// would exponentiate 2¹²² and overflow), and climbs to 15 and to 5 with values of 1e20
    /// must move it too: a move test or a sum test that ignored the distance between the
    /// reference and the tile's offset (0) would keep it, and the partial output (2⁷⁵ or 2⁶⁵
    /// times 512 · 1e20) would overflow. The bounds allow the
    /// one-pass step in every case, and the kernel's own output is checked (no BLAS rerun
    /// for rows that look wrong).
    @Test(arguments: [(0.0, 15.5, 1.0), (0.0, 16.5, 1.0), (-20.0, -4.5, 1.0), (-20.0, -3.5, 1.0), (15.0, 15.0, 1.0),
                      (-0.5, 15.9, 1.0), (-60.0, 62.0, 1.0), (-60.0, 15.0, 1e20), (-60.0, 5.0, 1e20)])
    func sumStandsInForMaximum(_ levels: (Double, Double, Float)) throws {
        let S = 1024, L = 8
        let keys = (0..<S).map { j in
            Float(((j < 512 ? levels.0 : levels.1) - 0.01 * Double(j % 7)) / 1.4426950408889634)
        }
        let q = try Tensor<Float>(shape: [1, 1, L, 1], scalars: Array(repeating: 1, count: L))
        let k = try Tensor<Float>(shape: [1, 1, S, 1], scalars: keys)
        var v = normalTensor([1, 1, S, 3], seed: 61)
        v.withUnsafeMutableBufferPointer { p in for i in p.indices { p[i] *= levels.2 } }
        try expectTilingsMatchReference(
            query: q, key: k, value: v, scale: 1,
            tilings: [TileSizes(queryBlock: 8, keyBlock: 512, splits: 1), TileSizes(queryBlock: 8, keyBlock: 64, splits: 1),
                      TileSizes(queryBlock: 8, keyBlock: 8, splits: 1), TileSizes(queryBlock: 8, keyBlock: 512, splits: 2)],
            recompute: false, "levels \(levels)")
    }

    /// An infinite value gives an infinite output wherever its key has weight, on every kernel
    /// and on the decode products (an odd key count leaves a lone last value row, which must
    /// not be paired with a zero weight: 0 · ∞ would be NaN).
    @Test func infiniteValueStaysInfinite() throws {
        let S = 13
        let q = normalTensor([1, 2, 5, 4], seed: 31), k = normalTensor([1, 2, S, 4], seed: 32)
        var v = normalTensor([1, 2, S, 3], seed: 33)
        v.withUnsafeMutableBufferPointer { p in p[(S - 1) * 3] = .infinity; p[(2 * S - 1) * 3] = .infinity }
        var finiteV = v
        finiteV.withUnsafeMutableBufferPointer { p in p[(S - 1) * 3] = 0; p[(2 * S - 1) * 3] = 0 }
        let want = referenceAttention(query: q, key: k, value: finiteV)
        var outputs: [(String, Tensor<Float>)] = try AttentionKernel.allCases.map {
            ("\($0)", try scaledDotProductAttention(query: q, key: k, value: v, kernel: $0))
        }
        for tiles in [TileSizes(queryBlock: 1, keyBlock: 4), TileSizes(queryBlock: 4, keyBlock: 5, rowwiseLimit: 64),
                      TileSizes(queryBlock: 5, keyBlock: 13, rowwiseLimit: 64), TileSizes(queryBlock: 5, keyBlock: 6)] {
            outputs.append(("\(tiles)", try runAttention(query: q, key: k, value: v, mask: .none, scale: nil, dropout: nil,
                                                         kernel: .tiled, wantWeights: false, tiles: tiles).output))
        }
        for (name, out) in outputs {
            for row in 0..<10 {
                #expect(out.scalars[row * 3] == .infinity, "\(name) row \(row): \(out.scalars[row * 3])")
                for d in 1..<3 {
                    let got = Double(out.scalars[row * 3 + d]), expected = want.output[row * 3 + d]
                    #expect(Swift.abs(got - expected) <= outputTolerance(finiteV), "\(name) row \(row) column \(d)")
                }
            }
        }
    }
}

@Suite("Kernel dispatch")
struct DispatchTests {
    /// `.automatic` runs the BLAS kernel up to 32 keys and when the weights are wanted, the
    /// tiled kernel otherwise (the measured thresholds in `chooseKernel`).
    @Test func automaticThresholds() throws {
        let problem = { (S: Int) in try AttentionProblem(query: [1, 8, 16, 64], key: [1, 8, S, 64], value: [1, 8, S, 64]) }
        #expect(chooseKernel(try problem(16), wantWeights: false, threads: 2) == .blas)
        #expect(chooseKernel(try problem(32), wantWeights: false, threads: 2) == .blas)
        #expect(chooseKernel(try problem(33), wantWeights: false, threads: 2) == .tiled)
        #expect(chooseKernel(try problem(4096), wantWeights: false, threads: 1) == .tiled)
        #expect(chooseKernel(try problem(4096), wantWeights: true, threads: 1) == .blas)
    }

    /// Decoding blocks of up to four rows always stream K and V through the row-wise
    /// products; five to eight only when the call's keys and values in use take 16 MiB
    /// (`rowwiseEightRowBytes`, measured), counted over the keys some row may see (a KV
    /// cache's capacity beyond its key lengths does not count).
    @Test func rowwiseLimitFollowsKeyValueBytes() throws {
        func limit(_ query: [Int], _ key: [Int], mask: AttentionMask = .none) throws -> Int {
            let q = try Tensor<Float>(shape: query, repeating: 0), k = try Tensor<Float>(shape: key, repeating: 0)
            let problem = try AttentionProblem(query: query, key: key, value: key)
            let resolved = try ResolvedMask(mask, problem: problem)
            return q.withUnsafeBufferPointer { qp in
                k.withUnsafeBufferPointer { kp in
                    withMaskRows(resolved) { rows in
                        var out = [Float](repeating: 0, count: 1)
                        return out.withUnsafeMutableBufferPointer { op in
                            let a = KernelArguments(problem: problem, query: nonNull(qp.baseAddress), key: nonNull(kp.baseAddress),
                                                    value: nonNull(kp.baseAddress), output: nonNull(op.baseAddress),
                                                    weights: nil, mask: rows, scale: 1, dropout: nil, threads: 1)
                            return TiledSchedule(a).plan.rowwiseLimit
                        }
                    }
                }
            }
        }
        #expect(try limit([1, 8, 1, 128], [1, 1, 8192, 128]) == 4)            // 8 MiB of K and V
        #expect(try limit([1, 8, 1, 128], [1, 1, 16384, 128]) == 8)           // 16 MiB
        #expect(try limit([1, 32, 1, 128], [1, 4, 4096, 128]) == 8)           // 4 heads × 4 MiB
        #expect(try limit([2, 8, 1, 128], [2, 1, 16384, 128], mask: .keyLengths([100, 8000])) == 4)
    }
}
