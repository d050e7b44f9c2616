import AttentionKit
import Foundation
import Testing

@Suite("Dropout")
struct DropoutTests {
    static let shapes = (q: [2, 4, 32, 16], k: [2, 2, 128, 16], v: [2, 2, 128, 8])

    func inputs() -> (Tensor<Float>, Tensor<Float>, Tensor<Float>) {
        (gridTensor(Self.shapes.q, seed: 7), gridTensor(Self.shapes.k, seed: 8), gridTensor(Self.shapes.v, seed: 9))
    }

    /// The same seed gives the same weights on every kernel and every call; another seed
    /// gives another pattern.
    @Test func reproducibleFromSeed() throws {
        let (q, k, v) = inputs()
        let dropout = try Dropout(probability: 0.25, seed: 42)
        let runs = try [AttentionKernel.naive, .blas, .blas, .automatic].map {
            try scaledDotProductAttentionWithWeights(query: q, key: k, value: v, mask: .causal(.lowerRight),
                                                     dropout: dropout, kernel: $0)
        }
        let zeros = runs.map { $0.weights.scalars.map { $0 == 0 } }
        for other in zeros.dropFirst() { #expect(other == zeros[0], "drop pattern differs between kernels") }
        #expect(runs[1].weights == runs[2].weights && runs[1].output == runs[2].output, "blas is not repeatable")

        let another = try scaledDotProductAttentionWithWeights(
            query: q, key: k, value: v, mask: .causal(.lowerRight), dropout: try Dropout(probability: 0.25, seed: 43))
        #expect(another.weights.scalars.map { $0 == 0 } != zeros[0], "a new seed should change the pattern")
    }

    /// Survivors are the undropped weights scaled by 1/(1−p); dropped ones are 0; the drop
    /// fraction matches p; and the output is exactly the returned weights times V.
    @Test(arguments: [Float(0.1), 0.5, 0.9]) func statisticsAndOutput(_ p: Float) throws {
        let (q, k, v) = inputs()
        let want = referenceAttention(query: q, key: k, value: v)
        for kernel in [AttentionKernel.naive, .blas] {
            let (out, weights) = try scaledDotProductAttentionWithWeights(
                query: q, key: k, value: v, dropout: try Dropout(probability: p, seed: 3), kernel: kernel)
            var dropped = 0
            var worst = 0.0
            for (got, ref) in zip(weights.scalars, want.weights) {
                if got == 0 { dropped += 1; continue }
                worst = max(worst, Swift.abs(Double(got) - ref / Double(1 - p)) / (2e-5 + 2e-5 * ref / Double(1 - p)))
            }
            #expect(worst <= 1, "[\(kernel)] a surviving weight is not weight/(1−p): \(worst)× tolerance")
            // Binomial: n = 16384 weights, all nonzero before dropout; allow 5 standard deviations.
            let n = Double(weights.count), fraction = Double(dropped) / n
            let sigma = (Double(p) * (1 - Double(p)) / n).squareRoot()
            #expect(Swift.abs(fraction - Double(p)) <= 5 * sigma, "[\(kernel)] dropped \(fraction), want \(p) ± \(5 * sigma)")

            // output = weights · V in float64, from the returned (dropped) weights.
            let S = 128, Dv = 8, g = 2
            var product = [Double](repeating: 0, count: out.count)
            for row in 0..<(2 * 4 * 32) {
                let b = row / (4 * 32), h = (row / 32) % 4
                let vBase = (b * 2 + h / g) * S * Dv
                for j in 0..<S {
                    let w = Double(weights.scalars[row * S + j])
                    for d in 0..<Dv { product[row * Dv + d] += w * Double(v.scalars[vBase + j * Dv + d]) }
                }
            }
            assertClose(out, product, shape: [2, 4, 32, 8], absolute: 2e-5 * 2 / Double(1 - p), "[\(kernel)] output = weights · V")
        }
    }

    /// Averaged over many seeds, dropped weights approach the undropped ones (unbiased).
    @Test func unbiased() throws {
        let q = gridTensor([1, 1, 4, 8], seed: 1), k = gridTensor([1, 1, 16, 8], seed: 2), v = gridTensor([1, 1, 16, 4], seed: 3)
        let want = referenceAttention(query: q, key: k, value: v).weights
        var mean = [Double](repeating: 0, count: want.count)
        let seeds = 2000
        for seed in 0..<seeds {
            let w = try scaledDotProductAttentionWithWeights(query: q, key: k, value: v,
                                                             dropout: try Dropout(probability: 0.5, seed: UInt64(seed))).weights
            for n in mean.indices { mean[n] += Double(w.scalars[n]) / Double(seeds) }
        }
        // Each mean has standard deviation w/√seeds; allow 5 of them.
        for (m, w) in zip(mean, want) {
            #expect(Swift.abs(m - w) <= 5 * w / Double(seeds).squareRoot() + 1e-6, "mean \(m) vs \(w)")
        }
    }

    /// A NaN score makes its row NaN (output and allowed weights) with dropout too: dropping
    /// a NaN weight multiplies it by 0, which keeps it NaN, as PyTorch's mask multiply does,
    /// rather than hiding it behind a zero row.
    @Test func nanRowsStayNaNUnderDropout() throws {
        let q = try Tensor<Float>(shape: [1, 1, 1, 4], repeating: 1)
        var k = try Tensor<Float>(shape: [1, 1, 2, 4], repeating: 0.5)
        k.withUnsafeMutableBufferPointer { $0[0] = .nan }
        let v = try Tensor<Float>(shape: [1, 1, 2, 4], repeating: 1)
        for kernel in allKernels {
            for seed in UInt64(1)...3 {
                let (out, weights) = try scaledDotProductAttentionWithWeights(
                    query: q, key: k, value: v, dropout: try Dropout(probability: 0.9, seed: seed), kernel: kernel)
                #expect(out.scalars.allSatisfy { $0.isNaN }, "\(kernel) seed \(seed): output \(out.scalars)")
                #expect(weights.scalars.allSatisfy { $0.isNaN }, "\(kernel) seed \(seed): weights \(weights.scalars)")
                let plain = try scaledDotProductAttention(
                    query: q, key: k, value: v, dropout: try Dropout(probability: 0.9, seed: seed), kernel: kernel)
                #expect(plain.scalars.allSatisfy { $0.isNaN }, "\(kernel) seed \(seed) without weights: \(plain.scalars)")
            }
        }
    }

    @Test func zeroProbabilityChangesNothing() throws {
        let (q, k, v) = inputs()
        let plain = try scaledDotProductAttentionWithWeights(query: q, key: k, value: v)
        let zero = try scaledDotProductAttentionWithWeights(query: q, key: k, value: v, dropout: try Dropout(probability: 0, seed: 9))
        #expect(plain.output == zero.output && plain.weights == zero.weights)
        // Without weights too, on every kernel: p = 0 takes the kernels' paths without dropout
        // (the BLAS kernel's normalisation after P·V among them), so the results are identical.
        let (q2, k2, v2) = (gridTensor([2, 8, 100, 32], seed: 61), gridTensor([2, 8, 100, 32], seed: 62),
                            normalTensor([2, 8, 100, 32], seed: 63))
        for kernel in allKernels {
            let none = try scaledDotProductAttention(query: q2, key: k2, value: v2, kernel: kernel)
            let p0 = try scaledDotProductAttention(query: q2, key: k2, value: v2, dropout: try Dropout(probability: 0, seed: 9),
                                                   kernel: kernel)
            #expect(none == p0, "\(kernel)")
        }
    }

    /// Seeds that differ by the hash's row step (2⁶⁴/φ) give unrelated patterns, not one
    /// pattern shifted by a row.
    @Test func seedsOneRowStepApartAreUnrelated() throws {
        let q = gridTensor([1, 1, 4, 8], seed: 64), k = gridTensor([1, 1, 64, 8], seed: 65)
        func dropped(_ seed: UInt64) throws -> [[Bool]] {
            let w = try scaledDotProductAttentionWithWeights(query: q, key: k, value: k,
                                                             dropout: try Dropout(probability: 0.5, seed: seed)).weights
            return (0..<4).map { row in (0..<64).map { w.scalars[row * 64 + $0] == 0 } }
        }
        let a = try dropped(0), b = try dropped(0x9E37_79B9_7F4A_7C15)
        for row in 0..<3 {
            let same = zip(a[row + 1], b[row]).filter { $0 == $1 }.count
            #expect(same < 48, "row \(row + 1) of seed 0 and row \(row) of the next seed agree on \(same) of 64 keys")
        }
    }
}
