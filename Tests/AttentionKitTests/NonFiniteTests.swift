@testable import AttentionKit
import Testing

/// Rows whose float32 arithmetic leaves the finite numbers: NaN or ∞ in a value the mask
/// excludes, scores beyond float's range, and outputs whose unnormalised sums overflow. Each
/// kernel must give what the float64 reference gives, where excluded keys take no part: a
/// row is NaN only where an input it may see is NaN.
@Suite("Non-finite values and float32's range")
struct NonFiniteTests {
    /// Every kernel, with and without weights, on one and two threads, and the tiled kernel
    /// with tilings that cut the keys and rows at awkward places (including split keys and
    /// row-wise products).
    func results(_ q: Tensor<Float>, _ k: Tensor<Float>, _ v: Tensor<Float>, mask: [MaskSpec], scale: Float?)
        throws -> [(name: String, output: Tensor<Float>, weights: Tensor<Float>?)] {
        let library = AttentionMask(mask.map(\.library))
        var runs: [(String, Tensor<Float>, Tensor<Float>?)] = []
        for threads in [1, 2] {
            try AttentionThreads.withCount(threads) {
                for kernel in allKernels {
                    runs.append(("\(kernel), \(threads) threads",
                                 try scaledDotProductAttention(query: q, key: k, value: v, mask: library,
                                                               scale: scale, kernel: kernel), nil))
                    let (out, w) = try scaledDotProductAttentionWithWeights(query: q, key: k, value: v, mask: library,
                                                                            scale: scale, kernel: kernel)
                    runs.append(("\(kernel) with weights, \(threads) threads", out, w))
                }
                for tiles in [TileSizes(queryBlock: 7, keyBlock: 20), TileSizes(queryBlock: 16, keyBlock: 9, splits: 3),
                              TileSizes(queryBlock: 3, keyBlock: 17, splits: 2, rowwiseLimit: 4)] {
                    runs.append(("tiled \(tiles), \(threads) threads",
                                 try runAttention(query: q, key: k, value: v, mask: library, scale: scale, dropout: nil,
                                                  kernel: .tiled, wantWeights: false, tiles: tiles).output, nil))
                }
            }
        }
        return runs
    }

    /// `got` against the reference where NaN is expected exactly where the reference has it.
    func expectMatches(_ got: Tensor<Float>, _ want: [Double], tolerance: Double, _ what: String,
                       sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(got.count == want.count, "\(what): \(got.count) elements, want \(want.count)", sourceLocation: sourceLocation)
        var failures: [String] = []
        for (n, (g, w)) in zip(got.scalars, want).enumerated() {
            let ok = w.isNaN ? g.isNaN : w.isInfinite ? Double(g) == w
                : Swift.abs(Double(g) - w) <= tolerance + 2e-5 * Swift.abs(w)
            if !ok { failures.append("[\(n)] got \(g), want \(w)") }
        }
        #expect(failures.isEmpty, "\(what): \(failures.count) wrong, first \(failures.prefix(3))", sourceLocation: sourceLocation)
    }

    /// NaN and ∞ in value (and key) rows that a causal mask, key lengths, a boolean mask or a
    /// −∞ bias excludes never reach the rows that cannot see them: they match the reference,
    /// rows with no allowed key are zeros, and only rows that see a NaN are NaN there. The
    /// fast kernels multiply whole blocks, excluded keys included, so without the float64
    /// second pass these rows came out NaN depending on where the blocks fell.
    @Test(arguments: ["causal", "key lengths", "boolean", "-inf bias"])
    func excludedValuesNeverReachTheOutput(_ exclusion: String) throws {
        let (B, H, L, S, D) = (2, 2, 40, 40, 8)
        let q = gridTensor([B, H, L, D], seed: 81)
        var k = gridTensor([B, H, S, D], seed: 82), v = gridTensor([B, H, S, D], seed: 83)
        // Keys 37…39 of every (batch, head): NaN and ∞ in V, NaN in K.
        v.withUnsafeMutableBufferPointer { p in
            for unit in 0..<(B * H) {
                p[(unit * S + 37) * D + 2] = .nan
                p[(unit * S + 38) * D] = .infinity
                p[(unit * S + 39) * D + 5] = -.infinity
            }
        }
        k.withUnsafeMutableBufferPointer { p in for unit in 0..<(B * H) { p[(unit * S + 39) * D + 1] = .nan } }
        let mask: [MaskSpec]
        switch exclusion {
        case "causal": mask = [.causal(.upperLeft)]                       // rows ≥ 37 see them
        case "key lengths": mask = [.keyLengths([37, 0])]                 // batch 1: no key at all
        case "boolean":                                                   // rows 0…29 exclude 37…39
            mask = [.boolean(shape: [L, S], data: (0..<(L * S)).map { $0 / S >= 30 || $0 % S < 37 })]
        default:
            mask = [.additive(shape: [S], data: (0..<S).map { $0 >= 37 ? -.infinity : Float($0 % 3) / 4 })]
        }
        let want = referenceAttention(query: q, key: k, value: v, mask: mask)
        let nanRows = Set((0..<(B * H * L)).filter { r in (0..<D).contains { want.output[r * D + $0].isNaN } })
        switch exclusion {                                                // the reference's own view
        case "causal": #expect(nanRows == Set((0..<(B * H)).flatMap { u in (37..<40).map { u * L + $0 } }))
        case "boolean": #expect(nanRows == Set((0..<(B * H)).flatMap { u in (30..<40).map { u * L + $0 } }))
        default: #expect(nanRows.isEmpty)
        }
        let finiteV = try Tensor<Float>(shape: [1], scalars: [v.scalars.filter(\.isFinite).map { Swift.abs($0) }.max()!])
        for (name, output, weights) in try results(q, k, v, mask: mask, scale: nil) {
            expectMatches(output, want.output, tolerance: outputTolerance(finiteV), "\(exclusion), \(name)")
            if let weights { expectMatches(weights, want.weights, tolerance: 2e-6, "\(exclusion) weights, \(name)") }
        }
    }

    /// Scores beyond float's range, `scale · q·k` up to 5e38 and down to −5e38: float64 holds
    /// them, and the softmax is then one-hot on the largest score (an average over ties).
    /// Every kernel matches the reference, with and without weights.
    @Test(arguments: [Float(1e38), -1e38, 3e37])
    func scoresBeyondFloatRange(_ scale: Float) throws {
        for shape in [(L: 9, S: 23), (L: 1, S: 300)] {
            let q = gridTensor([1, 4, shape.L, 4], seed: 84), k = gridTensor([1, 2, shape.S, 4], seed: 85)
            let v = gridTensor([1, 2, shape.S, 3], seed: 86)
            let want = referenceAttention(query: q, key: k, value: v, mask: [.causal(.lowerRight)], scale: Double(scale))
            for (name, output, weights) in try results(q, k, v, mask: [.causal(.lowerRight)], scale: scale) {
                expectMatches(output, want.output, tolerance: outputTolerance(v), "scale \(scale) \(shape), \(name)")
                if let weights { expectMatches(weights, want.weights, tolerance: 2e-6, "scale \(scale) weights \(shape), \(name)") }
            }
        }
    }

    /// A scale of 0 (or −0) multiplies every `q·k` by zero, but `0 · NaN` and `0 · ∞` are NaN
    /// in IEEE arithmetic, in the float64 reference and in PyTorch: a row whose query, or a
    /// key it may see, holds NaN or ∞ is NaN, and every other row is the mean of the values
    /// it may see, also when `q·k` itself is beyond float's range (magnitude 1e30). BLAS does
    /// not read A or B when alpha is 0, so the sgemm paths gave those rows the plain mean.
    @Test(arguments: [(Float(0), Float(1)), (-0.0, 1), (0, 1e30)])
    func zeroScaleKeepsNaNAndInfinity(_ scale: Float, _ magnitude: Float) throws {
        let (H, L, S, D) = (2, 40, 45, 8)
        var q = gridTensor([1, H, L, D], seed: 95, magnitude: magnitude)
        var k = gridTensor([1, H, S, D], seed: 96, magnitude: magnitude)
        let v = gridTensor([1, H, S, D], seed: 97)
        q.withUnsafeMutableBufferPointer { p in
            p[3 * D + 1] = .nan                                           // head 0, query 3
            p[(L + 10) * D] = -.infinity                                  // head 1, query 10
        }
        k.withUnsafeMutableBufferPointer { p in
            p[20 * D + 4] = .infinity                                     // head 0, key 20: rows ≥ 15 see it
            p[(S + 44) * D + 2] = .nan                                    // head 1, key 44: no row may see it
        }
        let mask: [MaskSpec] = [.causal(.lowerRight), .keyLengths([44])] // row i sees keys ≤ min(i + 5, 43)
        let want = referenceAttention(query: q, key: k, value: v, mask: mask, scale: Double(scale))
        let nanRows = Set((0..<(H * L)).filter { r in (0..<D).contains { want.output[r * D + $0].isNaN } })
        #expect(nanRows == Set([3] + Array(15..<L) + [L + 10]), "the reference's NaN rows: \(nanRows.sorted())")
        for (name, output, weights) in try results(q, k, v, mask: mask, scale: scale) {
            expectMatches(output, want.output, tolerance: outputTolerance(v), "scale \(scale), |q|, |k| ≤ \(2 * magnitude), \(name)")
            if let weights { expectMatches(weights, want.weights, tolerance: 2e-6, "weights, scale \(scale), \(name)") }
        }
    }

    /// Values within a factor of S of float's largest: the fast kernels divide by the row sum
    /// after `P·V` (and the tiled kernel's partial outputs carry up to 2¹⁶ more), so their
    /// sums overflow to ∞ where the normalised output is finite. Those rows are computed
    /// again and match the reference.
    @Test func valuesNearFloatMaximum() throws {
        let (L, S) = (33, 70)
        let q = gridTensor([2, 2, L, 8], seed: 87), k = gridTensor([2, 2, S, 8], seed: 88)
        let v = gridTensor([2, 2, S, 8], seed: 89, magnitude: 1.5e38)    // |V| ≤ 3e38
        let want = referenceAttention(query: q, key: k, value: v, mask: [.causal(.upperLeft)])
        for (name, output, weights) in try results(q, k, v, mask: [.causal(.upperLeft)], scale: nil) {
            expectMatches(output, want.output, tolerance: outputTolerance(v), "values near float's largest, \(name)")
            if let weights { expectMatches(weights, want.weights, tolerance: 2e-6, "weights, \(name)") }
        }
    }

    /// Rows whose every allowed score leaves float32's range downwards: `scale · q·k` below
    /// −3.4e38, or two biases of −3e38 that sum past it. In float32 they are all −∞, which
    /// would read as "no key allowed" and give a zero row; float64 holds them, and the softmax
    /// is one-hot on the largest. Every kernel gives the reference's result, and a NaN in an
    /// excluded value changes nothing.
    @Test func everyAllowedScoreBeyondFloatRange() throws {
        let q = try Tensor<Float>(shape: [1, 1], scalars: [1])
        let k = try Tensor<Float>(shape: [3, 1], scalars: [-4, -5, 1])
        for (excludedValue, byBoolean) in [(Float(7), false), (.nan, false), (.nan, true)] {
            let v = try Tensor<Float>(shape: [3, 1], scalars: [1, 2, excludedValue])
            let mask: [MaskSpec] = byBoolean ? [.boolean(shape: [3], data: [true, true, false])]     // key 2 excluded
                                             : [.additive(shape: [3], data: [0, 0, -.infinity])]
            let want = referenceAttention(query: q, key: k, value: v, mask: mask, scale: 1e38)
            #expect(want.output == [1], "the reference's one-hot row: \(want.output)")
            for (name, output, weights) in try results(q, k, v, mask: mask, scale: 1e38) {
                expectMatches(output, want.output, tolerance: 2e-5, "scale 1e38, V[2] = \(excludedValue), \(name)")
                if let weights { expectMatches(weights, want.weights, tolerance: 2e-6, "weights, \(name)") }
            }
        }
        // Two biases of −3e38 on keys 0 and 1 (−6e38 in float64, −∞ in float32), key 2 excluded.
        let k2 = try Tensor<Float>(shape: [3, 1], scalars: [2, 1, 0])
        let v = try Tensor<Float>(shape: [3, 1], scalars: [1, 2, 4])
        let mask: [MaskSpec] = [.additive(shape: [3], data: [-3e38, -3e38, -.infinity]),
                                .additive(shape: [3], data: [-3e38, -3e38, 0])]
        let want = referenceAttention(query: q, key: k2, value: v, mask: mask, scale: 1)
        for (name, output, _) in try results(q, k2, v, mask: mask, scale: 1) {
            expectMatches(output, want.output, tolerance: 2e-5, "biases summing past float's range, \(name)")
        }
    }

    /// A +∞ bias leaves the softmax undefined (∞ − ∞): that row is NaN on every kernel, as in
    /// PyTorch, and the other rows are untouched.
    @Test func infiniteBiasGivesNaNRow() throws {
        let q = gridTensor([1, 1, 5, 4], seed: 90), k = gridTensor([1, 1, 6, 4], seed: 91), v = gridTensor([1, 1, 6, 4], seed: 92)
        let bias = (0..<30).map { $0 == 2 * 6 + 4 ? Float.infinity : Float($0 % 5) / 8 }     // row 2, key 4
        let mask: [MaskSpec] = [.additive(shape: [5, 6], data: bias)]
        let want = referenceAttention(query: q, key: k, value: v, mask: mask)
        #expect((0..<4).allSatisfy { want.output[2 * 4 + $0].isNaN }, "the reference's row 2 is NaN too")
        for (name, output, _) in try results(q, k, v, mask: mask, scale: nil) {
            expectMatches(output, want.output, tolerance: outputTolerance(v), "+inf bias, \(name)")
        }
    }

    /// In a NaN row (an infinite query here), a key whose score is −∞ keeps weight 0 and the
    /// others are NaN, as in the reference, wherever the NaN scores stand among the keys:
    /// the float64 pass once stopped scoring at the first NaN and left every later key NaN.
    @Test(arguments: [[Float(-1), 1, -1], [1, -1, -1], [-1, -1, 1]])
    func minusInfinityScoresInANaNRowKeepZeroWeight(_ keys: [Float]) throws {
        let q = try Tensor<Float>(shape: [1, 1, 1, 1], scalars: [.infinity])
        let k = try Tensor<Float>(shape: [1, 1, 3, 1], scalars: keys)
        let v = try Tensor<Float>(shape: [1, 1, 3, 2], repeating: 1)
        let want = referenceAttention(query: q, key: k, value: v)
        #expect(want.weights.map { $0 == 0 } == keys.map { $0 < 0 }, "the reference: 0 where the score is −∞, NaN elsewhere")
        for (name, output, weights) in try results(q, k, v, mask: [], scale: nil) {
            expectMatches(output, want.output, tolerance: 0, "keys \(keys), \(name)")
            if let weights { expectMatches(weights, want.weights, tolerance: 0, "weights, keys \(keys), \(name)") }
        }
    }

    /// With `Dv = 0` there is no output to show a row's trouble, so the weights are checked:
    /// scale 1e38 gives the one-hot weights of the reference.
    @Test func weightsOnlyRowsAreRepairedToo() throws {
        let q = gridTensor([1, 2, 6, 4], seed: 93), k = gridTensor([1, 2, 11, 4], seed: 94)
        let v = try Tensor<Float>(shape: [1, 2, 11, 0], scalars: [])
        let want = referenceAttention(query: q, key: k, value: v, scale: 1e38)
        for kernel in allKernels {
            let (out, w) = try scaledDotProductAttentionWithWeights(query: q, key: k, value: v, scale: 1e38, kernel: kernel)
            #expect(out.shape == [1, 2, 6, 0])
            expectMatches(w, want.weights, tolerance: 2e-6, "Dv = 0, \(kernel)")
        }
    }
}
