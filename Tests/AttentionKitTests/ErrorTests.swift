@testable import AttentionKit
import Testing

/// Every bad input throws an `AttentionError` with the right code and a message that names
/// the shapes involved; nothing traps.
@Suite("Bad input throws")
struct ErrorTests {
    func t(_ shape: [Int]) -> Tensor<Float> { try! Tensor(shape: shape) }

    func attend(_ q: [Int], _ k: [Int], _ v: [Int], mask: AttentionMask = .none, scale: Float? = nil,
                kernel: AttentionKernel = .blas) throws {
        _ = try scaledDotProductAttention(query: t(q), key: t(k), value: t(v), mask: mask, scale: scale, kernel: kernel)
    }

    @Test func tensorConstruction() {
        expectError(.scalarCountMismatch, mentions: ["[2, 3]", "6", "5"]) {
            _ = try Tensor<Float>(shape: [2, 3], scalars: [1, 2, 3, 4, 5])
        }
        expectError(.negativeDimension, mentions: ["[2, -1]"]) { _ = try Tensor<Float>(shape: [2, -1], scalars: []) }
        expectError(.negativeDimension, mentions: ["[-4]"]) { _ = try Tensor<Bool>(shape: [-4], repeating: true) }
        expectError(.sizeOverflow, mentions: ["[\(Int.max), 2]"]) { _ = try Tensor<Float>(shape: [Int.max, 2]) }
        expectError(.scalarCountMismatch, mentions: ["[3, 3]"]) { _ = try t([2, 3]).reshaped([3, 3]) }
    }

    @Test(arguments: AttentionKernel.allCases) func shapes(_ kernel: AttentionKernel) {
        expectError(.invalidRank, mentions: ["[4]"]) { try attend([4], [4], [4], kernel: kernel) }
        expectError(.invalidRank, mentions: ["[1, 1, 1, 2, 4]"]) {
            try attend([1, 1, 1, 2, 4], [1, 1, 1, 2, 4], [1, 1, 1, 2, 4], kernel: kernel)
        }
        expectError(.invalidRank, mentions: ["[2, 4]", "[1, 3, 4]"]) { try attend([2, 4], [1, 3, 4], [1, 3, 4], kernel: kernel) }
        expectError(.keyDimensionMismatch, mentions: ["64", "32", "[1, 8, 128, 64]", "[1, 8, 128, 32]"]) {
            try attend([1, 8, 128, 64], [1, 8, 128, 32], [1, 8, 128, 64], kernel: kernel)
        }
        expectError(.sequenceLengthMismatch, mentions: ["[1, 2, 5, 4]", "[1, 2, 6, 4]"]) {
            try attend([1, 2, 3, 4], [1, 2, 5, 4], [1, 2, 6, 4], kernel: kernel)
        }
        expectError(.batchMismatch, mentions: ["[2, 2, 3, 4]", "[3, 2, 5, 4]"]) {
            try attend([2, 2, 3, 4], [3, 2, 5, 4], [3, 2, 5, 4], kernel: kernel)
        }
        expectError(.batchMismatch, mentions: ["[2, 3, 4]", "[2, 5, 4]", "[1, 5, 4]"]) {
            try attend([2, 3, 4], [2, 5, 4], [1, 5, 4], kernel: kernel)
        }
        expectError(.headCountMismatch, mentions: ["[1, 2, 5, 4]", "[1, 4, 5, 4]"]) {
            try attend([1, 4, 3, 4], [1, 2, 5, 4], [1, 4, 5, 4], kernel: kernel)
        }
        expectError(.headGrouping, mentions: ["6", "4", "[1, 6, 3, 4]"]) {
            try attend([1, 6, 3, 4], [1, 4, 5, 4], [1, 4, 5, 4], kernel: kernel)
        }
        expectError(.headGrouping, mentions: ["[1, 2, 3, 4]", "[1, 0, 5, 4]"]) {
            try attend([1, 2, 3, 4], [1, 0, 5, 4], [1, 0, 5, 4], kernel: kernel)
        }
    }

    @Test func masks() throws {
        let q = [2, 3, 4, 8], k = [2, 3, 5, 8]
        expectError(.maskShape, mentions: ["[6]", "[2, 3, 4, 5]"]) {
            try attend(q, k, k, mask: .boolean(try Tensor(shape: [6], repeating: true)))
        }
        // [3, 4, 1] does broadcast to [2, 3, 4, 5] (one bias per head and query).
        try attend(q, k, k, mask: .additive(try Tensor(shape: [3, 4, 1], repeating: 0)))
        expectError(.maskShape, mentions: ["[2, 2, 4, 5]"]) {
            try attend(q, k, k, mask: .additive(try Tensor(shape: [2, 2, 4, 5], repeating: 0)))
        }
        expectError(.maskShape, mentions: ["[1, 2, 3, 4, 5]", "rank"]) {
            try attend(q, k, k, mask: .boolean(try Tensor(shape: [1, 2, 3, 4, 5], repeating: true)))
        }
        expectError(.maskShape, mentions: ["[1, 4, 5]", "[4, 5]"]) {
            try attend([4, 8], [5, 8], [5, 8], mask: .boolean(try Tensor(shape: [1, 4, 5], repeating: true)))
        }
        // A size that would need the scores to broadcast, not the mask.
        expectError(.maskShape, mentions: ["[2, 1, 3]", "[2, 1, 5]"]) {
            try attend([2, 1, 8], [2, 5, 8], [2, 5, 8], mask: .boolean(try Tensor(shape: [2, 1, 3], repeating: true)))
        }
        expectError(.keyLengths, mentions: ["3", "2"]) { try attend(q, k, k, mask: .keyLengths([1, 2, 3])) }
        expectError(.keyLengths, mentions: ["6", "0...5"]) { try attend(q, k, k, mask: .keyLengths([6, 1])) }
        expectError(.keyLengths, mentions: ["-1"]) { try attend(q, k, k, mask: [.causal(.upperLeft), .keyLengths([2, -1])]) }
        expectError(.keyLengths, mentions: ["2", "1"]) { try attend([4, 8], [5, 8], [5, 8], mask: .keyLengths([2, 2])) }
    }

    @Test func scaleAndDropout() {
        for bad: Float in [.nan, .infinity, -.infinity] {
            expectError(.invalidScale, mentions: ["\(bad)"]) { try attend([2, 4], [3, 4], [3, 4], scale: bad) }
        }
        for bad: Float in [-0.1, 1, 1.5, .nan, .infinity] {
            expectError(.dropoutProbability, mentions: ["\(bad)"]) { _ = try Dropout(probability: bad, seed: 1) }
        }
    }

    @Test func threadSettings() throws {
        expectError(.threadCount, mentions: ["0"]) { try AttentionThreads.setCount(0) }
        expectError(.threadCount, mentions: ["abc"]) { _ = try AttentionThreads.resolve(override: nil, environment: "abc", cores: 2) }
        expectError(.threadCount, mentions: ["'0'"]) { _ = try AttentionThreads.resolve(override: nil, environment: "0", cores: 2) }
        expectError(.threadCount, mentions: ["-2"]) { _ = try AttentionThreads.resolve(override: nil, environment: "-2", cores: 2) }
        #expect(try AttentionThreads.resolve(override: nil, environment: " 3 ", cores: 2) == 3)
        #expect(try AttentionThreads.resolve(override: 5, environment: "3", cores: 2) == 5)
        #expect(try AttentionThreads.resolve(override: nil, environment: nil, cores: 2) == 2)
    }
}
