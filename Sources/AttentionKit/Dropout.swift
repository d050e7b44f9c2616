/// Dropout on the attention weights, reproducible from a seed.
///
/// After the softmax, each weight `p[b, h, i, j]` is independently zeroed with probability
/// ``probability`` and the survivors are scaled by `1 / (1 − probability)`, so the expected
/// weights are unchanged. The weights returned by
/// ``scaledDotProductAttentionWithWeights(query:key:value:mask:scale:dropout:kernel:)`` are
/// the dropped ones, and the output is exactly those weights times V.
///
/// The decision for each weight is a hash of (`seed`, flat query row `(b·H + h)·L + i`,
/// key `j`), so the same seed gives the same pattern on every kernel, thread count and run.
/// Use a new seed for each training step to draw a new pattern.
///
/// Dropping multiplies a weight by 0, so a NaN weight stays NaN (as with PyTorch's mask
/// multiply): a row whose scores hold a NaN stays NaN under dropout instead of hiding behind
/// zeros.
///
/// ```swift
/// let dropout = try Dropout(probability: 0.1, seed: step)
/// let out = try scaledDotProductAttention(query: q, key: k, value: v, dropout: dropout)
/// ```
public struct Dropout: Sendable, Equatable {
    /// The probability that each weight is zeroed, in [0, 1).
    public let probability: Float
    /// The seed that fixes which weights are zeroed.
    public let seed: UInt64

    /// Creates a dropout specification.
    ///
    /// - Parameters:
    ///   - probability: The probability of zeroing each weight, in [0, 1).
    ///   - seed: Selects the pattern; equal seeds give equal patterns.
    /// - Throws: ``AttentionError`` with code `.dropoutProbability` when `probability` is
    ///   NaN or outside [0, 1).
    public init(probability: Float, seed: UInt64 = 0) throws {
        guard probability >= 0, probability < 1 else {
            throw AttentionError(.dropoutProbability,
                "dropout probability must be in [0, 1), got \(probability)")
        }
        self.probability = probability
        self.seed = seed
    }

    /// Drops in place the weights `row[0..<count]` of flat query row `rowIndex`, which are
    /// those of keys `keyOffset ..< keyOffset + count`.
    func apply(_ row: UnsafeMutablePointer<Float>, count: Int, rowIndex: Int, keyOffset: Int = 0) {
        guard probability > 0 else { return }
        // Drop iff the top 32 bits of the hash are below p·2³², so P(drop) = p to within 2⁻³².
        let threshold = UInt64((Double(probability) * 4294967296).rounded())
        let keep = 1 / (1 - probability)
        // The seed is mixed first, so seeds that differ by the row step do not give
        // shifted copies of each other's patterns.
        let rowKey = splitMix64(seed) &+ UInt64(truncatingIfNeeded: rowIndex) &* 0x9E37_79B9_7F4A_7C15
        // Key j's hash input is rowKey ^ (j · keyStep); the product is stepped by addition.
        // The loop has no branch (a weight is multiplied by 0 or 1/(1−p)), so LLVM vectorises
        // it even at the SSE2 baseline: 2.0–2.6 ns per weight against 3.5–4.2 ns for the
        // branching loop it replaces, which made the same decisions (micro-benchmark on one
        // core, rows of 2048 keys); at B1 H8 L2048 D64 on one thread the time dropout adds
        // fell from 128–200 ms to 59–100 ms (the Dropout benchmark target, Benchmarks/README.md).
        let keyStep: UInt64 = 0xD1B5_4A32_D192_ED03
        var key = UInt64(truncatingIfNeeded: keyOffset) &* keyStep
        for j in 0..<count {
            let h = splitMix64(rowKey ^ key)
            key &+= keyStep
            row[j] *= (h >> 32) < threshold ? 0 : keep
        }
    }
}

/// SplitMix64's output for state `x`: add the golden-ratio increment, then the bijective
/// finaliser. Dropout hashes (row, key) with it; `LayerRandom` steps it as a generator.
@inline(__always)
func splitMix64(_ x: UInt64) -> UInt64 {
    var z = x &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}
