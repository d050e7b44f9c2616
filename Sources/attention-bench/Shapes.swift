import ArgumentParser
import AttentionKit

/// The kernels the bench can time; mirrors ``AttentionKernel`` so that the command line
/// does not depend on the library's enum conforming to `ExpressibleByArgument`.
enum BenchKernel: String, CaseIterable, ExpressibleByArgument, Comparable {
    case naive, blas, tiled, automatic

    var library: AttentionKernel {
        switch self {
        case .naive: .naive
        case .blas: .blas
        case .tiled: .tiled
        case .automatic: .automatic
        }
    }

    /// Whether the kernel has matrix products to time alone (sgemm, or the tiled kernel's
    /// row-wise decode products), so that a GEMM share makes sense.
    var hasGEMMShare: Bool { self != .naive }

    static func < (a: BenchKernel, b: BenchKernel) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// A comma-separated list of kernels (`--kernels naive,blas`), deduplicated and put in the
/// canonical order naive, blas, tiled, automatic: naive runs first because it is the reference.
struct KernelList: ExpressibleByArgument {
    var kernels: [BenchKernel]

    init(_ kernels: [BenchKernel]) { self.kernels = Array(Set(kernels)).sorted() }

    init?(argument: String) {
        var list: [BenchKernel] = []
        for part in argument.split(separator: ",", omittingEmptySubsequences: false) {
            let name = part.trimmingCharacters(in: .whitespaces).lowercased()
            guard let kernel = BenchKernel(rawValue: name) else { return nil }
            list.append(kernel)
        }
        guard !list.isEmpty else { return nil }
        self.init(list)
    }

    static let all = KernelList(BenchKernel.allCases)

    var defaultValueDescription: String { kernels.map(\.rawValue).joined(separator: ",") }

    static var allValueStrings: [String] { BenchKernel.allCases.map(\.rawValue) }
}

/// The mask every shape is run with.
enum MaskKind: String, CaseIterable, ExpressibleByArgument {
    case none
    case causal
    case causalLowerRight = "causal-lower-right"
    case keyLengths = "key-lengths"
    /// The key-lengths exclusions as a boolean tensor `[B, 1, 1, S]` (the mask-tensor path).
    case boolean
    /// An additive bias tensor `[S]`, `−0.05 · (S − 1 − j)`: a recency bias on every key.
    case bias

    /// Key lengths for `--mask key-lengths`: S, S − S/4, S − S/2, S − 3S/4 (at least 1),
    /// cycling over the batch entries.
    static func keyLengths(batch: Int, keyLength s: Int) -> [Int] {
        (0..<batch).map { b in max(1, s - (b % 4) * s / 4) }
    }

    /// The library mask for a problem with `batch` entries and `keyLength` keys.
    func mask(batch: Int, keyLength: Int) -> AttentionMask {
        switch self {
        case .none: .none
        case .causal: .causal(.upperLeft)
        case .causalLowerRight: .causal(.lowerRight)
        case .keyLengths: .keyLengths(Self.keyLengths(batch: batch, keyLength: keyLength))
        case .boolean:
            .boolean(try! Tensor(shape: [batch, 1, 1, keyLength],                                 // [B, 1, 1, S]
                                 scalars: Self.keyLengths(batch: batch, keyLength: keyLength).flatMap { length in
                                     (0..<keyLength).map { $0 < length }
                                 }))
        case .bias:
            .additive(try! Tensor(shape: [keyLength], scalars: (0..<keyLength).map { -0.05 * Float(keyLength - 1 - $0) }))   // [S]
        }
    }
}

enum OutputFormat: String, CaseIterable, ExpressibleByArgument {
    case table, csv, json
}

/// One problem size: query `[B, Hq, L, Dk]`, key `[B, Hkv, S, Dk]`, value `[B, Hkv, S, Dv]`.
struct BenchShape: Sendable {
    var name: String
    var batch: Int
    var heads: Int
    var kvHeads: Int
    var queryLength: Int
    var keyLength: Int
    var keyDim: Int
    var valueDim: Int
    /// A mask fixed by the shape (the comparison suite's causal shapes), overriding --mask.
    var fixedMask: MaskKind? = nil

    /// The mask this shape runs with.
    func mask(default kind: MaskKind) -> MaskKind { fixedMask ?? kind }

    /// Query heads per key/value head.
    var group: Int { heads / kvHeads }

    var queryShape: [Int] { [batch, heads, queryLength, keyDim] }
    var keyShape: [Int] { [batch, kvHeads, keyLength, keyDim] }
    var valueShape: [Int] { [batch, kvHeads, keyLength, valueDim] }
    var outputShape: [Int] { [batch, heads, queryLength, valueDim] }

    /// The dense FLOP count 2·B·Hq·L·S·(Dk + Dv): one multiply-add per element of Q·Kᵀ and
    /// of P·V. Masks do not change it (a causal mask is counted as dense too), and the
    /// softmax (≈ 5 flops per score) is not counted.
    var flops: Double {
        2 * Double(batch) * Double(heads) * Double(queryLength) * Double(keyLength)
            * Double(keyDim + valueDim)
    }

    /// The slice used to check against naive when the full naive run is too slow: batch
    /// entry 0 and key/value head 0 with its group of query heads.
    var slice: BenchShape {
        BenchShape(name: name + " (slice)", batch: 1, heads: group, kvHeads: 1,
                   queryLength: queryLength, keyLength: keyLength, keyDim: keyDim, valueDim: valueDim,
                   fixedMask: fixedMask)
    }

    /// `B1 H8 L512 S512 D64`, with `/Hkv` for grouped heads and `Dk/Dv` when they differ.
    var dims: String {
        let heads = kvHeads == self.heads ? "H\(self.heads)" : "H\(self.heads)/\(kvHeads)"
        let dims = keyDim == valueDim ? "D\(keyDim)" : "D\(keyDim)/\(valueDim)"
        return "B\(batch) \(heads) L\(queryLength) S\(keyLength) \(dims)"
    }

    static let encoder = BenchShape(name: "encoder", batch: 1, heads: 8, kvHeads: 8,
                                    queryLength: 512, keyLength: 512, keyDim: 64, valueDim: 64)

    /// The comparison suite: the shapes `Benchmarks/compare-pytorch.py` runs through
    /// PyTorch's `scaled_dot_product_attention` (B, Hq, Hkv, L, S, D, causal).
    static let compare: [BenchShape] = [
        BenchShape(name: "encoder 512", batch: 1, heads: 8, kvHeads: 8, queryLength: 512, keyLength: 512, keyDim: 64, valueDim: 64, fixedMask: MaskKind.none),
        BenchShape(name: "prefill 2048", batch: 1, heads: 8, kvHeads: 8, queryLength: 2048, keyLength: 2048, keyDim: 64, valueDim: 64, fixedMask: MaskKind.none),
        BenchShape(name: "causal 2048", batch: 1, heads: 8, kvHeads: 8, queryLength: 2048, keyLength: 2048, keyDim: 64, valueDim: 64, fixedMask: .causal),
        BenchShape(name: "long 8192", batch: 1, heads: 1, kvHeads: 1, queryLength: 8192, keyLength: 8192, keyDim: 64, valueDim: 64, fixedMask: MaskKind.none),
        BenchShape(name: "batched short", batch: 32, heads: 8, kvHeads: 8, queryLength: 128, keyLength: 128, keyDim: 64, valueDim: 64, fixedMask: MaskKind.none),
        BenchShape(name: "ViT", batch: 4, heads: 12, kvHeads: 12, queryLength: 197, keyLength: 197, keyDim: 64, valueDim: 64, fixedMask: MaskKind.none),
        BenchShape(name: "decode MHA", batch: 1, heads: 32, kvHeads: 32, queryLength: 1, keyLength: 4096, keyDim: 128, valueDim: 128, fixedMask: MaskKind.none),
        BenchShape(name: "decode GQA", batch: 1, heads: 32, kvHeads: 8, queryLength: 1, keyLength: 4096, keyDim: 128, valueDim: 128, fixedMask: MaskKind.none),
    ]

    /// The default suite.
    static let suite: [BenchShape] = [
        encoder,
        BenchShape(name: "batched short", batch: 32, heads: 8, kvHeads: 8,
                   queryLength: 128, keyLength: 128, keyDim: 64, valueDim: 64),
        BenchShape(name: "ViT", batch: 4, heads: 12, kvHeads: 12,
                   queryLength: 197, keyLength: 197, keyDim: 64, valueDim: 64),
        BenchShape(name: "decode GQA", batch: 1, heads: 32, kvHeads: 8,
                   queryLength: 1, keyLength: 4096, keyDim: 128, valueDim: 128),
    ]
}

/// The built-in shape lists.
enum SuiteName: String, CaseIterable, ExpressibleByArgument {
    case core, compare
}
