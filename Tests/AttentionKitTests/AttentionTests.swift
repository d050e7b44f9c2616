import AttentionKit
import Foundation
import Testing

/// One attention problem: shapes, mask, scale and how the inputs are drawn.
struct AttentionCase: CustomTestStringConvertible, @unchecked Sendable {
    var name: String
    var query: [Int]
    var key: [Int]
    var value: [Int]
    var mask: [MaskSpec] = []
    var scale: Float? = nil
    var magnitude: Float = 1
    var normalInputs = false
    var seed: UInt64 = 1

    var testDescription: String { name }

    func inputs() -> (Tensor<Float>, Tensor<Float>, Tensor<Float>) {
        if normalInputs {
            return (normalTensor(query, seed: seed), normalTensor(key, seed: seed + 1), normalTensor(value, seed: seed + 2))
        }
        return (gridTensor(query, seed: seed, magnitude: magnitude),
                gridTensor(key, seed: seed + 1, magnitude: magnitude),
                gridTensor(value, seed: seed + 2))
    }

    /// The score shape in the user's rank, derived here from the definition.
    var scoreShape: [Int] {
        switch query.count {
        case 4: return [query[0], query[1], query[2], key[2]]
        case 3: return [query[0], query[1], key[1]]
        default: return [query[0], key[0]]
        }
    }

    var outputShape: [Int] { Array(query.dropLast()) + [value.last!] }
}

/// Runs every kernel on `c`, with and without weights, and checks both against the float64
/// reference with the tolerance; also checks that weight rows sum to 1 (or are 0).
func checkAgainstReference(_ c: AttentionCase, kernels: [AttentionKernel] = allKernels,
                           sourceLocation: SourceLocation = #_sourceLocation) throws {
    let (q, k, v) = c.inputs()
    let want = referenceAttention(query: q, key: k, value: v, mask: c.mask,
                                  scale: c.scale.map(Double.init))
    let mask = AttentionMask(c.mask.map(\.library))
    let S = c.scoreShape.last!
    for kernel in kernels {
        let (out, weights) = try scaledDotProductAttentionWithWeights(
            query: q, key: k, value: v, mask: mask, scale: c.scale, kernel: kernel)
        assertClose(out, want.output, shape: c.outputShape, absolute: outputTolerance(v),
                    "\(c.name) [\(kernel)] output", sourceLocation: sourceLocation)
        assertClose(weights, want.weights, shape: c.scoreShape, absolute: 2e-5,
                    "\(c.name) [\(kernel)] weights", sourceLocation: sourceLocation)

        let alone = try scaledDotProductAttention(query: q, key: k, value: v, mask: mask,
                                                  scale: c.scale, kernel: kernel)
        assertClose(alone, want.output, shape: c.outputShape, absolute: outputTolerance(v),
                    "\(c.name) [\(kernel)] output without weights", sourceLocation: sourceLocation)

        guard weights.shape == c.scoreShape, S > 0 else { continue }
        for (row, hasKeys) in want.rowHasKeys.enumerated() {
            let slice = weights.scalars[(row * S)..<((row + 1) * S)]
            if hasKeys {
                let sum = slice.reduce(Double(0)) { $0 + Double($1) }
                #expect(Swift.abs(sum - 1) <= 1e-5, "\(c.name) [\(kernel)] row \(row) sums to \(sum)",
                        sourceLocation: sourceLocation)
            } else {
                #expect(slice.allSatisfy { $0 == 0 }, "\(c.name) [\(kernel)] masked row \(row) is not zero",
                        sourceLocation: sourceLocation)
            }
        }
    }
}

// MARK: - Cases

enum Cases {
    static func c(_ name: String, _ q: [Int], _ k: [Int], _ v: [Int], mask: [MaskSpec] = [],
                  scale: Float? = nil, magnitude: Float = 1, normal: Bool = false, seed: UInt64 = 1) -> AttentionCase {
        AttentionCase(name: name, query: q, key: k, value: v, mask: mask, scale: scale,
                      magnitude: magnitude, normalInputs: normal, seed: seed)
    }

    static let sizes: [AttentionCase] = [
        c("all ones: B1 H1 L1 S1 D1", [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]),
        c("B2 H3 L7 S17 Dk5 Dv9", [2, 3, 7, 5], [2, 3, 17, 5], [2, 3, 17, 9]),
        c("B1 H2 L17 S7 Dk16 Dv3", [1, 2, 17, 16], [1, 2, 7, 16], [1, 2, 7, 3]),
        c("B1 H1 L257 S33 D64", [1, 1, 257, 64], [1, 1, 33, 64], [1, 1, 33, 64]),
        c("B2 H1 L33 S257 Dk7 Dv13", [2, 1, 33, 7], [2, 1, 257, 7], [2, 1, 257, 13]),
        c("B1 H2 L300 S600 D8 (many row blocks)", [1, 2, 300, 8], [1, 2, 600, 8], [1, 2, 600, 8]),
        c("normal inputs B2 H2 L17 S31 D32", [2, 2, 17, 32], [2, 2, 31, 32], [2, 2, 31, 32], normal: true),
        c("rank 3 [B, L, D]", [3, 7, 5], [3, 17, 5], [3, 17, 4]),
        c("rank 2 [L, D]", [7, 5], [17, 5], [17, 6]),
    ] + [1, 2, 3, 8, 31, 64, 128, 255, 256].map { dk in
        c("Dk \(dk)", [1, 2, 9, dk], [1, 2, 11, dk], [1, 2, 11, 8], seed: UInt64(dk))
    }

    // B2 H3 L9 S13 Dk8 Dv6 unless stated.
    static let q = [2, 3, 9, 8], k = [2, 3, 13, 8], v = [2, 3, 13, 6]

    static func bools(_ shape: [Int], seed: UInt64) -> MaskSpec {
        .boolean(shape: shape, data: randomBools(shape, seed: seed))
    }
    static func bias(_ shape: [Int], seed: UInt64, withInfinity: Bool = false) -> MaskSpec {
        var data = gridTensor(shape, seed: seed, magnitude: 2).scalars
        if withInfinity { for n in stride(from: 0, to: data.count, by: 3) { data[n] = -.infinity } }
        return .additive(shape: shape, data: data)
    }

    static let masks: [AttentionCase] = [
        c("causal upperLeft L=S", [2, 3, 13, 8], k, [2, 3, 13, 6], mask: [.causal(.upperLeft)]),
        c("causal upperLeft L<S", q, k, v, mask: [.causal(.upperLeft)]),
        c("causal upperLeft L>S", [2, 3, 13, 8], [2, 3, 9, 8], [2, 3, 9, 6], mask: [.causal(.upperLeft)]),
        c("causal lowerRight L=S", [2, 3, 13, 8], k, v, mask: [.causal(.lowerRight)]),
        c("causal lowerRight L<S", q, k, v, mask: [.causal(.lowerRight)]),
        c("causal lowerRight L>S (early rows see nothing)", [2, 3, 13, 8], [2, 3, 9, 8], [2, 3, 9, 6],
          mask: [.causal(.lowerRight)]),
        c("causal lowerRight decode L=1", [2, 3, 1, 8], k, v, mask: [.causal(.lowerRight)]),
        c("boolean rank 1 [S]", q, k, v, mask: [bools([13], seed: 11)]),
        c("boolean rank 2 [L, S]", q, k, v, mask: [bools([9, 13], seed: 12)]),
        c("boolean rank 3 [H, 1, S]", q, k, v, mask: [bools([3, 1, 13], seed: 13)]),
        c("boolean rank 4 [B, 1, 1, S] (key padding)", q, k, v, mask: [bools([2, 1, 1, 13], seed: 14)]),
        c("boolean rank 4 full [B, H, L, S]", q, k, v, mask: [bools([2, 3, 9, 13], seed: 15)]),
        c("boolean [B, 1, L, 1] (whole rows)", q, k, v, mask: [bools([2, 1, 9, 1], seed: 16)]),
        c("additive rank 1 [S]", q, k, v, mask: [bias([13], seed: 21)]),
        c("additive rank 2 [L, S]", q, k, v, mask: [bias([9, 13], seed: 22)]),
        c("additive rank 3 [H, 1, S] (ALiBi-like)", q, k, v, mask: [bias([3, 1, 13], seed: 23)]),
        c("additive rank 4 [B, H, L, S]", q, k, v, mask: [bias([2, 3, 9, 13], seed: 24)]),
        c("additive [1] scalar", q, k, v, mask: [bias([1], seed: 25)]),
        c("additive with -inf", q, k, v, mask: [bias([9, 13], seed: 26, withInfinity: true)]),
        c("keyLengths", q, k, v, mask: [.keyLengths([13, 4])]),
        c("keyLengths with 0 (fully masked batch entry)", q, k, v, mask: [.keyLengths([0, 13])]),
        c("combined: lowerRight + keyLengths + boolean + two biases", q, k, v,
          mask: [.causal(.lowerRight), .keyLengths([10, 6]), bools([2, 1, 1, 13], seed: 31),
                 bias([3, 9, 13], seed: 32), bias([13], seed: 33)]),
        c("combined: both causal alignments", [2, 3, 13, 8], [2, 3, 9, 8], [2, 3, 9, 6],
          mask: [.causal(.upperLeft), .causal(.lowerRight)]),
        c("combined: two boolean masks and keyLengths", q, k, v,
          mask: [bools([13], seed: 34), bools([2, 3, 9, 13], seed: 35), .keyLengths([7, 12])]),
        c("rank 3 with [L, S] boolean and causal", [2, 9, 8], [2, 13, 8], [2, 13, 6],
          mask: [bools([9, 13], seed: 36), .causal(.upperLeft)]),
        c("rank 3 with [B, 1, S] bias and keyLengths", [2, 9, 8], [2, 13, 8], [2, 13, 6],
          mask: [bias([2, 1, 13], seed: 37), .keyLengths([5, 13])]),
        c("rank 2 with [S] boolean and keyLengths", [9, 8], [13, 8], [13, 6],
          mask: [bools([13], seed: 38), .keyLengths([11])]),
    ]

    static let fullyMasked: [AttentionCase] = [
        c("boolean rows all false", q, k, v,
          mask: [.boolean(shape: [9, 1], data: (0..<9).map { $0 % 3 != 0 })]),
        c("additive row of -inf", q, k, v,
          mask: [.additive(shape: [9, 1], data: (0..<9).map { $0 % 2 == 0 ? -Float.infinity : 0 })]),
        c("everything masked", q, k, v, mask: [.keyLengths([0, 0])]),
        c("causal upperLeft with boolean excluding the diagonal start", q, k, v,
          mask: [.causal(.upperLeft), .boolean(shape: [13], data: (0..<13).map { $0 >= 4 })]),
    ]

    static let grouped: [AttentionCase] = [
        c("GQA Hq6 Hkv2", [2, 6, 9, 8], [2, 2, 13, 8], [2, 2, 13, 6]),
        c("MQA Hq4 Hkv1", [2, 4, 9, 8], [2, 1, 13, 8], [2, 1, 13, 6]),
        c("GQA with causal, keyLengths and per-head bias", [2, 6, 9, 8], [2, 2, 13, 8], [2, 2, 13, 6],
          mask: [.causal(.lowerRight), .keyLengths([13, 5]), bias([1, 6, 1, 13], seed: 41)]),
        c("GQA decode Hq8 Hkv2 L1 S300", [1, 8, 1, 16], [1, 2, 300, 16], [1, 2, 300, 16],
          mask: [.causal(.lowerRight)]),
        c("GQA long rows across heads Hq4 Hkv1 L70", [1, 4, 70, 8], [1, 1, 90, 8], [1, 1, 90, 8],
          mask: [.causal(.upperLeft)]),
    ]

    static let scales: [AttentionCase] = [
        c("scale 0 (mean of V)", q, k, v, scale: 0),
        c("scale negative", q, k, v, scale: -0.7),
        c("scale 0.3", q, k, v, scale: 0.3),
        c("scale 2.5 with causal", q, k, v, mask: [.causal(.upperLeft)], scale: 2.5),
        c("large logits: inputs × 30", [2, 3, 17, 16], [2, 3, 17, 16], [2, 3, 17, 8], magnitude: 30),
        c("large logits × 30 with causal and Dk 64", [1, 2, 33, 64], [1, 2, 33, 64], [1, 2, 33, 8],
          mask: [.causal(.upperLeft)], magnitude: 30),
    ]

    static let empty: [AttentionCase] = [
        c("L = 0", [2, 3, 0, 8], k, v),
        c("B = 0", [0, 3, 9, 8], [0, 3, 13, 8], [0, 3, 13, 6]),
        c("S = 0 gives zeros", q, [2, 3, 0, 8], [2, 3, 0, 6]),
        c("S = 0 with keyLengths and causal", q, [2, 3, 0, 8], [2, 3, 0, 6],
          mask: [.keyLengths([0, 0]), .causal(.lowerRight)]),
        c("Dk = 0 (uniform weights)", [2, 3, 9, 0], [2, 3, 13, 0], v),
        c("Dv = 0", q, k, [2, 3, 13, 0]),
        c("H = 0", [2, 0, 9, 8], [2, 0, 13, 8], [2, 0, 13, 6]),
        c("rank 2 L = 0", [0, 4], [5, 4], [5, 3]),
    ]
}

@Suite("Attention against the float64 reference")
struct AttentionTests {
    @Test(arguments: Cases.sizes) func sizes(_ c: AttentionCase) throws { try checkAgainstReference(c) }
    @Test(arguments: Cases.masks) func masks(_ c: AttentionCase) throws { try checkAgainstReference(c) }
    @Test(arguments: Cases.fullyMasked) func fullyMaskedRows(_ c: AttentionCase) throws { try checkAgainstReference(c) }
    @Test(arguments: Cases.grouped) func groupedQueryHeads(_ c: AttentionCase) throws { try checkAgainstReference(c) }
    @Test(arguments: Cases.scales) func scales(_ c: AttentionCase) throws { try checkAgainstReference(c) }
    @Test(arguments: Cases.empty) func emptySizes(_ c: AttentionCase) throws { try checkAgainstReference(c) }

    @Test func fullyMaskedRowsAreZeroNotNaN() throws {
        let (q, k, v) = Cases.c("", Cases.q, Cases.k, Cases.v).inputs()
        for kernel in allKernels {
            let (out, weights) = try scaledDotProductAttentionWithWeights(
                query: q, key: k, value: v, mask: .keyLengths([0, 0]), kernel: kernel)
            #expect(out.scalars.allSatisfy { $0 == 0 }, "\(kernel)")
            #expect(weights.scalars.allSatisfy { $0 == 0 }, "\(kernel)")
        }
    }

    /// Finite biases are ordinary numbers: −1e9 on every key swamps the small scores in
    /// float32 and leaves a uniform average of V (as PyTorch's float32 kernels do), and so does
    /// −3.4e38 (`-Float.greatestFiniteMagnitude`, float32's "masked" value in additive masks),
    /// which the tiled kernel's base-2 scores could not hold.
    @Test(arguments: [Float(-1e9), Float(-2.5e38), -Float.greatestFiniteMagnitude])
    func hugeFiniteBiasGivesUniformAverage(_ value: Float) throws {
        let (q, k, v) = Cases.c("", Cases.q, Cases.k, Cases.v).inputs()
        let bias = try Tensor<Float>(shape: [1], scalars: [value])
        let mean = referenceAttention(query: q, key: k, value: v, scale: 0)
        for kernel in allKernels {
            let out = try scaledDotProductAttention(query: q, key: k, value: v, mask: .additive(bias), kernel: kernel)
            assertClose(out, mean.output, shape: [2, 3, 9, 6], absolute: outputTolerance(v), "\(value) \(kernel)")
        }
    }

    /// Keys masked with −3.4e38 next to keys with a 0 bias get zero weight, on every kernel:
    /// the common float32 additive padding mask.
    @Test func float32MinimumBiasMasksKeys() throws {
        let (q, k, v) = Cases.c("", Cases.q, Cases.k, Cases.v).inputs()     // S = 13
        let masked = (0..<13).map { $0 % 3 == 1 ? -Float.greatestFiniteMagnitude : 0 }
        let bias = try Tensor<Float>(shape: [13], scalars: masked)
        let allowed = try Tensor<Bool>(shape: [13], scalars: masked.map { $0 == 0 })
        let want = referenceAttention(query: q, key: k, value: v,
                                      mask: [.boolean(shape: [13], data: allowed.scalars)])
        for kernel in allKernels {
            let out = try scaledDotProductAttention(query: q, key: k, value: v, mask: .additive(bias), kernel: kernel)
            assertClose(out, want.output, shape: [2, 3, 9, 6], absolute: outputTolerance(v), "\(kernel)")
        }
    }

    /// A mask written as an array literal equals one built from parts.
    @Test func maskCombinationForms() throws {
        let (q, k, v) = Cases.c("", Cases.q, Cases.k, Cases.v).inputs()
        let literal: AttentionMask = [.causal(.upperLeft), .keyLengths([13, 5])]
        let parts = AttentionMask([.causal(.upperLeft), [.keyLengths([13, 5])]])
        let a = try scaledDotProductAttention(query: q, key: k, value: v, mask: literal, kernel: .blas)
        let b = try scaledDotProductAttention(query: q, key: k, value: v, mask: parts, kernel: .blas)
        #expect(a == b)
        let want = referenceAttention(query: q, key: k, value: v, mask: [.causal(.upperLeft), .keyLengths([13, 5])])
        assertClose(a, want.output, shape: [2, 3, 9, 6], absolute: outputTolerance(v), "literal mask")
    }

    /// The default kernel and default mask are what the simplest call uses.
    @Test func defaults() throws {
        let (q, k, v) = Cases.c("", Cases.q, Cases.k, Cases.v).inputs()
        let out = try scaledDotProductAttention(query: q, key: k, value: v)
        let want = referenceAttention(query: q, key: k, value: v)
        assertClose(out, want.output, shape: [2, 3, 9, 6], absolute: outputTolerance(v), "defaults")
    }
}

@Suite("Threads")
struct ThreadTests {
    /// One thread and every thread give the same result to within float rounding: a batch
    /// with enough blocks for every thread, and one head of 300 queries, whose two query
    /// blocks leave threads idle, so that the tiled kernel also splits the keys (split-KV
    /// in prefill) when there is more than one thread.
    @Test(arguments: [
        Cases.c("threads", [2, 4, 150, 32], [2, 2, 170, 32], [2, 2, 170, 24],
                mask: [.causal(.upperLeft), .keyLengths([170, 90])]),
        Cases.c("threads, key splits", [1, 1, 300, 32], [1, 1, 3000, 32], [1, 1, 3000, 24],
                mask: [.keyLengths([2900])]),
    ])
    func oneThreadMatchesAllThreads(_ c: AttentionCase) throws {
        let (q, k, v) = c.inputs()
        let want = referenceAttention(query: q, key: k, value: v, mask: c.mask)
        for kernel in [AttentionKernel.blas, .tiled] {
            var results: [Tensor<Float>] = []
            for threads in [1, 2, max(3, AttentionThreads.coreCount)] {
                let out = try AttentionThreads.withCount(threads) {
                    try scaledDotProductAttention(query: q, key: k, value: v, mask: AttentionMask(c.mask.map(\.library)), kernel: kernel)
                }
                assertClose(out, want.output, shape: c.outputShape, absolute: outputTolerance(v), "\(kernel), \(threads) threads")
                results.append(out)
            }
            for other in results.dropFirst() {
                let worst = zip(results[0].scalars, other.scalars).map { Swift.abs($0 - $1) }.max() ?? 0
                #expect(worst <= 1e-6, "\(kernel): thread counts differ by \(worst)")
            }
        }
    }

    /// A decode step with one key/value head: with more than one thread the tiled kernel
    /// splits the keys (split-KV), so thread counts change only the rounding of the merge.
    @Test func decodeSplitAcrossThreads() throws {
        let c = Cases.c("decode threads", [2, 4, 1, 32], [2, 1, 2500, 32], [2, 1, 2500, 16],
                        mask: [.causal(.lowerRight), .keyLengths([2500, 1700])])
        let (q, k, v) = c.inputs()
        let want = referenceAttention(query: q, key: k, value: v, mask: c.mask)
        var results: [Tensor<Float>] = []
        for threads in [1, 2, 4] {
            let out = try AttentionThreads.withCount(threads) {
                try scaledDotProductAttention(query: q, key: k, value: v, mask: AttentionMask(c.mask.map(\.library)), kernel: .tiled)
            }
            assertClose(out, want.output, shape: c.outputShape, absolute: outputTolerance(v), "\(threads) threads")
            results.append(out)
        }
        for other in results.dropFirst() {
            let worst = zip(results[0].scalars, other.scalars).map { Swift.abs($0 - $1) }.max() ?? 0
            #expect(worst <= 1e-6, "thread counts differ by \(worst)")
        }
    }

    /// Same inputs and thread count, same bits: calls running concurrently (each pinned to two
    /// threads, sharing the array pool and OpenBLAS) give exactly what one call gives alone,
    /// on both kernels, for prefill blocks and for a decode step whose keys are split.
    @Test func concurrentCallsGiveTheSameBits() throws {
        let cases = [
            Cases.c("prefill", [2, 4, 150, 32], [2, 2, 170, 32], [2, 2, 170, 24], mask: [.causal(.upperLeft), .keyLengths([170, 90])]),
            Cases.c("decode", [1, 4, 1, 32], [1, 1, 2500, 32], [1, 1, 2500, 16], mask: [.causal(.lowerRight)]),
        ]
        for c in cases {
            let (q, k, v) = c.inputs()
            let mask = AttentionMask(c.mask.map(\.library))
            for kernel in [AttentionKernel.blas, .tiled] {
                let alone = try AttentionThreads.withCount(2) {
                    try scaledDotProductAttention(query: q, key: k, value: v, mask: mask, kernel: kernel)
                }
                let lock = NSLock()
                nonisolated(unsafe) var results: [Tensor<Float>?] = Array(repeating: nil, count: 6)
                DispatchQueue.concurrentPerform(iterations: 6) { i in
                    let out = try? AttentionThreads.withCount(2) {
                        try scaledDotProductAttention(query: q, key: k, value: v, mask: mask, kernel: kernel)
                    }
                    lock.lock(); results[i] = out; lock.unlock()
                }
                for (i, out) in results.enumerated() {
                    #expect(out?.scalars.map(\.bitPattern) == alone.scalars.map(\.bitPattern),
                            "\(c.name), \(kernel): concurrent call \(i) differs from the call alone")
                }
            }
        }
    }

    @Test func invalidThreadCountsThrow() {
        #expect(throws: AttentionError.self) { try AttentionThreads.setCount(0) }
        #expect(throws: AttentionError.self) { try AttentionThreads.setCount(-3) }
        #expect(throws: AttentionError.self) { try AttentionThreads.withCount(0) { 1 } }
    }

    /// `withCount` applies to the calls inside its closure, nests, and leaves the rest alone,
    /// including code running at the same time on other tasks.
    @Test func scopedThreadCount() async throws {
        let outside = try AttentionThreads.count()
        let inside = try AttentionThreads.withCount(3) {
            (try AttentionThreads.count(), try AttentionThreads.withCount(1) { try AttentionThreads.count() },
             try AttentionThreads.count())
        }
        #expect(inside == (3, 1, 3))
        #expect(try AttentionThreads.count() == outside)
        let counts = try await withThrowingTaskGroup(of: Int.self) { group in
            for n in 1...4 {
                group.addTask { try AttentionThreads.withCount(n) { try AttentionThreads.count() } }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(counts.sorted() == [1, 2, 3, 4])
    }

    /// The asynchronous `withCount` reaches the child tasks its body starts, and an invalid
    /// count throws before the body runs.
    @Test func scopedThreadCountAcrossChildTasks() async throws {
        let outside = try AttentionThreads.count()
        let q = gridTensor([1, 2, 9, 8], seed: 77)
        // 3 threads: not what a machine of 1, 2 or 4 cores would use without the scope.
        let alone = try AttentionThreads.withCount(3) { try scaledDotProductAttention(query: q, key: q, value: q) }
        let seen = try await AttentionThreads.withCount(3) {
            try await withThrowingTaskGroup(of: (Int, Tensor<Float>).self) { group in
                for _ in 0..<4 {
                    group.addTask { (try AttentionThreads.count(), try scaledDotProductAttention(query: q, key: q, value: q)) }
                }
                async let spawned = AttentionThreads.count()
                var seen = [try await spawned]
                for try await (count, out) in group {
                    seen.append(count)
                    #expect(out == alone)
                }
                return seen
            }
        }
        #expect(seen == [3, 3, 3, 3, 3])
        #expect(try AttentionThreads.count() == outside)
        var ran = false
        await #expect(throws: AttentionError.self) { try await AttentionThreads.withCount(0) { await Task.yield(); ran = true } }
        #expect(!ran)
    }
}
