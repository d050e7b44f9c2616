/// Which queries a causal mask lines up with which keys when the query length `L` and the
/// key length `S` differ.
///
/// ```
/// upperLeft  (L = 3, S = 5)        lowerRight (L = 3, S = 5)
///   keys → 0 1 2 3 4                 keys → 0 1 2 3 4
///   q0     ■ · · · ·                 q0     ■ ■ ■ · ·
///   q1     ■ ■ · · ·                 q1     ■ ■ ■ ■ ·
///   q2     ■ ■ ■ · ·                 q2     ■ ■ ■ ■ ■
/// ```
public enum CausalAlignment: String, Sendable, CaseIterable {
    /// Key `j` is allowed for query `i` iff `j ≤ i`: the diagonal starts at the top-left
    /// corner. This is PyTorch's `is_causal=True`.
    case upperLeft
    /// Key `j` is allowed for query `i` iff `j ≤ i + S − L`: the diagonal ends at the
    /// bottom-right corner, so the last query sees every key. This is what decoding with a
    /// KV cache needs (the `L` new queries come after `S − L` cached positions). When
    /// `L > S`, the first `L − S` queries see no key and produce zero rows.
    case lowerRight
}

/// Which keys each query may attend to, and what bias is added to its scores.
///
/// A mask is a combination of parts. Every exclusion applies (a key is allowed only if every
/// part allows it) and every additive bias is added:
///
/// ```swift
/// let mask: AttentionMask = [.causal(.upperLeft), .keyLengths([128, 97])]
/// let same = AttentionMask([.causal(.upperLeft), .keyLengths([128, 97])])
/// ```
///
/// Scores have shape `[B, H, L, S]` (or `[B, L, S]`, `[L, S]` for rank-3 and rank-2
/// inputs). Boolean and additive tensors broadcast to that shape NumPy-style: shapes are
/// aligned on the right and a dimension of size 1 repeats; a tensor of lower rank gains
/// leading size-1 dimensions. Broadcasting is done by strides, never by expanding the
/// tensor in memory. For example, a key-padding mask of shape `[B, 1, 1, S]` or a single
/// pattern of shape `[L, S]` applies to every batch entry and head.
///
/// A query row whose keys are all excluded (or whose biases are all `-infinity`) produces
/// zero weights and a zero output row, never NaN. Finite biases are ordinary numbers:
/// adding `-1e9` to every key leaves a uniform average.
public struct AttentionMask: Sendable, ExpressibleByArrayLiteral {
    enum Part: Sendable {
        case causal(CausalAlignment)
        case boolean(Tensor<Bool>)
        case additive(Tensor<Float>)
        case keyLengths([Int])
        /// Per batch entry `b`, key lengths `lengths[b]` with a lower-right causal triangle
        /// measured from that length rather than from S (see ``causalToKeyLengths(_:)``).
        case causalToKeyLengths([Int])
    }

    var parts: [Part]

    init(parts: [Part]) { self.parts = parts }

    /// Combines masks: every exclusion of every part applies and biases add.
    public init(_ parts: [AttentionMask]) {
        self.parts = parts.flatMap(\.parts)
    }

    /// Combines masks written as an array literal, as ``init(_:)`` does.
    public init(arrayLiteral elements: AttentionMask...) {
        self.init(elements)
    }

    /// No mask: every query attends to every key.
    public static let none = AttentionMask(parts: [])

    /// A causal mask: query `i` sees key `j` only if `j` is not later than `i`, with the
    /// diagonal placed by `alignment`.
    public static func causal(_ alignment: CausalAlignment) -> AttentionMask {
        AttentionMask(parts: [.causal(alignment)])
    }

    /// A boolean mask: `true` means the query may attend to the key (PyTorch's
    /// `attn_mask` convention for `scaled_dot_product_attention`; note that
    /// `nn.MultiheadAttention`'s boolean masks use the opposite convention). Broadcasts
    /// to the score shape.
    public static func boolean(_ allowed: Tensor<Bool>) -> AttentionMask {
        AttentionMask(parts: [.boolean(allowed)])
    }

    /// An additive bias, added to the scaled scores before the softmax (ALiBi slopes,
    /// relative-position bias, or `-infinity` to exclude). Broadcasts to the score shape.
    public static func additive(_ bias: Tensor<Float>) -> AttentionMask {
        AttentionMask(parts: [.additive(bias)])
    }

    /// Per-batch key lengths for padded batches: for batch entry `b`, keys at positions
    /// `≥ lengths[b]` are excluded. Needs one length per batch entry (one in total for
    /// rank-2 inputs), each in `0...S`.
    public static func keyLengths(_ lengths: [Int]) -> AttentionMask {
        AttentionMask(parts: [.keyLengths(lengths)])
    }

    /// Key lengths with the queries aligned causally to the end of each batch entry's keys:
    /// row `i` of batch entry `b` may see keys `j < lengths[b] − L + i + 1` (and never
    /// `j ≥ lengths[b]`). That is ``keyLengths(_:)`` plus a ``CausalAlignment/lowerRight``
    /// triangle whose diagonal ends at key `lengths[b] − 1` instead of `S − 1`; with every
    /// length equal to S it is `.causal(.lowerRight)`. Rows with `lengths[b] − L + i < 0`
    /// see no key (zero rows).
    ///
    /// Decoding with a KV cache uses it: the cache passes its whole storage `S = capacity`,
    /// of which the first `P + n` positions are valid, and the `n` new queries come last.
    /// Like the causal and key-length parts it only ends each row early, so no tensor is
    /// built and the kernels skip the excluded keys. Needs one length per batch entry, each
    /// in `0...S`.
    static func causalToKeyLengths(_ lengths: [Int]) -> AttentionMask {
        AttentionMask(parts: [.causalToKeyLengths(lengths)])
    }

    /// Whether the mask has no parts.
    public var isEmpty: Bool { parts.isEmpty }
}

/// Element strides of a broadcast tensor, in the internal 4-d score layout [B, H, L, S]
/// (a stride of 0 repeats the element along that dimension).
struct BroadcastStrides: Sendable {
    var batch = 0, head = 0, query = 0, key = 0

    @inline(__always)
    func rowOffset(batch b: Int, head h: Int, query i: Int) -> Int {
        b &* batch &+ h &* head &+ i &* query
    }
}

/// A mask validated against one problem's geometry.
struct ResolvedMask: Sendable {
    /// Key `j` is allowed for query `i` only if `j ≤ i + causalOffset` (the tightest of the
    /// causal parts), or nil for no causal part.
    var causalOffset: Int?
    /// Per batch entry `b`, key `j` is allowed for query `i` only if
    /// `j ≤ i + batchCausalOffsets[b]` (the tightest of the ``AttentionMask/causalToKeyLengths(_:)``
    /// parts), or nil for none.
    var batchCausalOffsets: [Int]?
    /// Per batch entry, the number of leading keys allowed (the tightest of the parts).
    var keyLengths: [Int]?
    var booleans: [(Tensor<Bool>, BroadcastStrides)] = []
    var additives: [(Tensor<Float>, BroadcastStrides)] = []

    init(_ mask: AttentionMask, problem p: AttentionProblem) throws {
        for part in mask.parts {
            switch part {
            case .causal(let alignment):
                let offset = alignment == .upperLeft ? 0 : p.keyLength - p.queryLength
                causalOffset = min(causalOffset ?? offset, offset)
            case .keyLengths(let lengths):
                try Self.validate(lengths, name: "keyLengths", problem: p)
                keyLengths = Self.tightest(keyLengths, lengths)
            case .causalToKeyLengths(let lengths):
                try Self.validate(lengths, name: "causalToKeyLengths", problem: p)
                keyLengths = Self.tightest(keyLengths, lengths)
                batchCausalOffsets = Self.tightest(batchCausalOffsets, lengths.map { $0 - p.queryLength })
            case .boolean(let tensor):
                booleans.append((tensor, try broadcastStrides(tensor.shape, kind: "boolean mask", problem: p)))
            case .additive(let tensor):
                additives.append((tensor, try broadcastStrides(tensor.shape, kind: "additive bias", problem: p)))
            }
        }
    }

    /// The entry-wise smaller of two per-batch limits (`limits` itself when there is none yet).
    private static func tightest(_ current: [Int]?, _ limits: [Int]) -> [Int] {
        current.map { zip($0, limits).map { min($0, $1) } } ?? limits
    }

    /// Checks per-batch key lengths: one per batch entry, each in `0...S`.
    private static func validate(_ lengths: [Int], name: String, problem p: AttentionProblem) throws {
        guard lengths.count == p.batch else {
            throw AttentionError(.keyLengths,
                "\(name) has \(lengths.count) entries but the batch size is \(p.batch) "
                + "(query \(describe(p.queryShape)))")
        }
        if let bad = lengths.firstIndex(where: { $0 < 0 || $0 > p.keyLength }) {
            throw AttentionError(.keyLengths,
                "\(name)[\(bad)] = \(lengths[bad]) is outside 0...\(p.keyLength) "
                + "(key \(describe(p.keyShape)))")
        }
    }

    /// The number of leading keys that query row `i` of batch entry `b` may see before the
    /// boolean and additive parts are applied: causal and key-length masks only ever
    /// exclude a suffix of the keys. Never decreases as `i` grows (the tiled kernel takes
    /// the keys any row of a batch entry may see from its last query).
    @inline(__always)
    func rowEnd(batch b: Int, query i: Int, keyLength s: Int) -> Int {
        var end = s
        if let lengths = keyLengths { end = min(end, lengths[b]) }
        if let offset = causalOffset { end = min(end, max(0, i + offset + 1)) }
        if let offsets = batchCausalOffsets { end = min(end, max(0, i + offsets[b] + 1)) }
        return end
    }

    /// Whether any part needs per-element work (boolean or additive tensors).
    var hasElementwiseParts: Bool { !booleans.isEmpty || !additives.isEmpty }
}

/// Strides that broadcast a tensor of shape `shape` to the problem's score shape.
private func broadcastStrides(_ shape: [Int], kind: String, problem p: AttentionProblem) throws -> BroadcastStrides {
    let scores = p.scoreShape
    func failure(_ reason: String) -> AttentionError {
        AttentionError(.maskShape,
            "\(kind) of shape \(describe(shape)) does not broadcast to scores \(describe(scores)): \(reason)")
    }
    guard shape.count <= scores.count else {
        throw failure("rank \(shape.count) is higher than the scores' rank \(scores.count)")
    }
    if let negative = shape.first(where: { $0 < 0 }) {
        throw failure("negative size \(negative)")
    }
    // Row-major strides of the tensor itself, right-aligned against the scores.
    var strides = [Int](repeating: 0, count: scores.count)
    var running = 1
    for axis in stride(from: shape.count - 1, through: 0, by: -1) {
        let size = shape[axis]
        let target = scores[axis + scores.count - shape.count]
        guard size == target || size == 1 else {
            // PyTorch's 3-D attn_mask stacks batch and heads on one axis.
            let stacked = shape.count == 3 && scores.count == 4 && axis == 0 && size == scores[0] &* scores[1]
            throw failure((target == 1 ? "size \(size) at axis \(axis) is not 1"
                                       : "size \(size) at axis \(axis) is neither 1 nor \(target)")
                + (stacked ? " (a PyTorch attn_mask [B·H, L, S]: reshape it to \(describe([scores[0], scores[1], shape[1], shape[2]])) first)" : ""))
        }
        strides[axis + scores.count - shape.count] = size == 1 ? 0 : running
        running &*= size
    }
    // Map the user's score rank onto [B, H, L, S].
    switch scores.count {
    case 4: return BroadcastStrides(batch: strides[0], head: strides[1], query: strides[2], key: strides[3])
    case 3: return BroadcastStrides(batch: strides[0], head: 0, query: strides[1], key: strides[2])
    default: return BroadcastStrides(batch: 0, head: 0, query: strides[0], key: strides[1])
    }
}
