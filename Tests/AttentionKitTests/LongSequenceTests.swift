@testable import AttentionKit
import Testing

/// Long key sequences, where float32 sums over S keys would lose the tolerance if they were
/// added one key at a time: the output of a decode step against a long cache sums S weighted
/// value rows, and a row of a long prefill S weights. With values far from zero (a mean of 3)
/// and every key alike, each addition rounds the same way, so an error of about S · 2⁻²⁴
/// relative builds up (about 1e-3 at S = 16384, fifty times the tolerance); the kernels
/// sum each key tile on its own before adding it to the row (the tiled kernel's row-wise
/// decode products), or in Double (the naive kernel), as sgemm does by its blocking.
@Suite("Long key sequences")
struct LongSequenceTests {
    /// Every key and value row the same token: the exact output is that value row, for every
    /// query, whatever the scores. Decode (L = 1, four query heads per key/value head: one
    /// block of four rows on the row-wise products) and a few prefill rows, on one and two
    /// threads (two split the keys), on every kernel.
    @Test(arguments: [1, 2]) func repeatedToken(threads: Int) throws {
        let (S, D) = (16384, 64)
        let keyRow = normalTensor([D], seed: 71).scalars
        let valueRow = normalTensor([D], seed: 72).scalars.map { 3 + 0.5 * $0 }     // mean 3
        let k = try Tensor<Float>(shape: [1, 1, S, D], scalars: Array((0..<S).map { _ in keyRow }.joined()))
        let v = try Tensor<Float>(shape: [1, 1, S, D], scalars: Array((0..<S).map { _ in valueRow }.joined()))
        let want = valueRow.map(Double.init)
        for L in [1, 3] {
            let q = normalTensor([1, 4, L, D], seed: 73)
            for kernel in AttentionKernel.allCases {
                let out = try AttentionThreads.withCount(threads) {
                    try scaledDotProductAttention(query: q, key: k, value: v, kernel: kernel)
                }
                assertClose(out, Array((0..<(4 * L)).map { _ in want }.joined()), shape: [1, 4, L, D],
                            absolute: outputTolerance(v), "\(kernel), L = \(L), \(threads) thread(s)")
            }
        }
    }

    /// A long grouped-query decode step (eight query heads on two key/value heads, 16384
    /// keys of small spread, values 3 ± 0.01) against the float64 reference, on every kernel
    /// and one and two threads. Unlike ``repeatedToken(threads:)`` it does not catch sums
    /// taken one key at a time (it passed with them: with unequal terms their rounding
    /// errors mostly cancel); it checks the split-KV merge and the groups of four rows at a
    /// length the other suites do not reach.
    @Test func decodeAgainstReference() throws {
        let (S, D) = (16384, 32)
        let q = normalTensor([1, 8, 1, D], seed: 74)
        var k = normalTensor([1, 2, S, D], seed: 75), v = normalTensor([1, 2, S, D], seed: 76)
        k.withUnsafeMutableBufferPointer { p in for i in p.indices { p[i] *= 0.05 } }
        v.withUnsafeMutableBufferPointer { p in for i in p.indices { p[i] = 3 + 0.01 * p[i] } }
        let want = referenceAttention(query: q, key: k, value: v)
        for kernel in AttentionKernel.allCases {
            for threads in [1, 2] {
                let out = try AttentionThreads.withCount(threads) {
                    try scaledDotProductAttention(query: q, key: k, value: v, kernel: kernel)
                }
                assertClose(out, want.output, shape: [1, 8, 1, D], absolute: outputTolerance(v),
                            "\(kernel), \(threads) thread(s)")
            }
        }
    }
}
