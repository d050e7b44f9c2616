import Foundation

/// An error thrown for input that AttentionKit cannot compute with.
///
/// Every entry point validates its arguments before touching memory and throws one of
/// these instead of trapping. ``code`` says what kind of problem it was, so callers can
/// branch on it; ``message`` names the shapes and values involved, for people.
///
/// ```swift
/// do {
///     _ = try scaledDotProductAttention(query: q, key: k, value: v)
/// } catch let error as AttentionError {
///     print(error)   // "query Dk 64 does not match key Dk 32 (query [1, 8, 128, 64], key [1, 8, 128, 32], value [1, 8, 128, 64])"
/// }
/// ```
public struct AttentionError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The kind of problem.
    public enum Code: String, Sendable, CaseIterable {
        /// The number of scalars does not equal the product of the shape.
        case scalarCountMismatch
        /// A dimension is negative.
        case negativeDimension
        /// The product of a shape overflows `Int`, a size exceeds what BLAS can index, or a
        /// result would take more bytes than the memory the process may use: the machine's,
        /// or on Linux its cgroup's memory limit (a container's) when lower, or what it has
        /// left under `ulimit -v` or `ulimit -d`. Such an allocation would otherwise trap,
        /// or get the process killed.
        case sizeOverflow
        /// A tensor's rank is outside 2...4, or query, key and value ranks differ.
        case invalidRank
        /// The query's last dimension (Dk) differs from the key's.
        case keyDimensionMismatch
        /// Key and value sequence lengths (S) differ.
        case sequenceLengthMismatch
        /// Batch sizes differ between query, key and value.
        case batchMismatch
        /// Key and value head counts differ.
        case headCountMismatch
        /// The query head count is not a multiple of the key/value head count.
        case headGrouping
        /// A boolean mask or additive bias does not broadcast to the score shape.
        case maskShape
        /// Key lengths do not have one entry per batch element, or one is outside 0...S.
        case keyLengths
        /// A dropout probability is outside [0, 1) or NaN.
        case dropoutProbability
        /// The scale is NaN or infinite.
        case invalidScale
        /// A thread count is not a positive integer.
        case threadCount
        /// Bytes that should be a NumPy `.npy` file are malformed: a wrong magic string or
        /// version, a header that is not a valid dictionary, a negative dimension, a payload
        /// shorter or longer than the shape needs, or a bool byte other than 0 and 1.
        case npyFormat
        /// A well-formed `.npy` file holds something AttentionKit does not read: a data type
        /// other than `<f4`, `<f8` and `|b1` (or the wrong one for the tensor's element type),
        /// big-endian data, a structured data type, or Fortran (column-major) order.
        case npyUnsupported
        /// A float64 value in a `.npy` file is finite but too large in magnitude for `Float`.
        case npyValueOutOfRange
        /// A file could not be read or written; the message gives the path and the system's reason.
        case fileAccess
        /// A heatmap's batch or head index is out of range, its labels do not match the
        /// weights, the weights are empty, or a size option is invalid.
        case heatmapArgument
        /// A layer's width is not divisible by its head count, or a head count or width is
        /// not positive.
        case headWidth
        /// A weight or bias does not have the shape the layer needs.
        case weightShape
        /// An input's last dimension does not match the width its projection expects.
        case inputWidth
        /// A KV cache was made by another layer or for another batch size, or with a negative
        /// batch size or capacity; or positions or batch entries asked of it that it does
        /// not hold.
        case cacheMismatch
        /// A rotary embedding's dimensions are not an even number of at least 2, or more
        /// than the layer's head width, or its base is not finite and positive.
        case rotaryEmbedding
    }

    /// The kind of problem.
    public let code: Code
    /// A human-readable explanation naming the shapes or values involved.
    public let message: String

    /// Creates an error of the given kind with an explanation.
    ///
    /// - Parameters:
    ///   - code: The kind of problem.
    ///   - message: A one-line explanation naming the shapes or values involved.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The explanation, as printed.
    public var description: String { message }
}

extension AttentionError: LocalizedError {
    /// The explanation, so that `localizedDescription` (which code written against `Error`
    /// shows) gives ``message`` rather than a generic sentence.
    public var errorDescription: String? { message }
}

/// Formats a shape as `[2, 8, 128, 64]`.
@inline(never)
func describe(_ shape: [Int]) -> String {
    "[" + shape.map(String.init).joined(separator: ", ") + "]"
}
