import Foundation

/// A dense, row-major (C-order), contiguous n-dimensional array.
///
/// `Tensor` is a value type with copy-on-write storage (it wraps an `Array`), so copies are
/// cheap until one of them is mutated. `Tensor<Float>` carries queries, keys, values,
/// outputs, attention weights and additive biases; `Tensor<Bool>` carries boolean masks.
///
/// The element at index `(i0, i1, …, in)` is `scalars[((i0 · d1 + i1) · d2 + i2) …]`, where
/// `shape = [d0, d1, …, dn]`. A tensor of rank 0 holds one scalar.
///
/// ```swift
/// let q = try Tensor<Float>(shape: [2, 8, 128, 64], scalars: qs)   // [B, H, L, D]
/// let zeros = try Tensor<Float>(shape: [4, 16])
/// ```
public struct Tensor<Element> {
    /// The size of each dimension, outermost first.
    public private(set) var shape: [Int]
    /// The elements in row-major order; `scalars.count` is the product of `shape`.
    public private(set) var scalars: [Element]

    /// Creates a tensor from a shape and its row-major elements.
    ///
    /// - Parameters:
    ///   - shape: The size of each dimension. Every size must be ≥ 0.
    ///   - scalars: The elements in row-major order.
    /// - Throws: ``AttentionError`` with code `.negativeDimension`, `.sizeOverflow`, or
    ///   `.scalarCountMismatch` when `scalars.count` is not the product of `shape`.
    public init(shape: [Int], scalars: [Element]) throws {
        let count = try elementCount(of: shape)
        guard count == scalars.count else {
            throw AttentionError(.scalarCountMismatch,
                "shape \(describe(shape)) needs \(count) scalars, got \(scalars.count)")
        }
        self.shape = shape
        self.scalars = scalars
    }

    /// Creates a tensor of the given shape with every element equal to `value`.
    ///
    /// - Parameters:
    ///   - shape: The size of each dimension. Every size must be ≥ 0.
    ///   - value: The value of every element.
    /// - Throws: ``AttentionError`` with code `.negativeDimension`, or `.sizeOverflow` when
    ///   the element count overflows or the elements would not fit in the machine's memory.
    public init(shape: [Int], repeating value: Element) throws {
        let count = try elementCount(of: shape)
        try checkAllocation(count: count, of: Element.self, "a tensor of shape \(describe(shape))")
        self.shape = shape
        self.scalars = Array(repeating: value, count: count)
    }

    /// Creates a tensor without validation; `shape` must already be valid for `scalars`.
    init(validatedShape shape: [Int], scalars: [Element]) {
        self.shape = shape
        self.scalars = scalars
    }

    /// The number of dimensions.
    public var rank: Int { shape.count }

    /// The number of elements, the product of ``shape``.
    public var count: Int { scalars.count }

    /// Returns the same elements viewed with another shape of equal element count.
    ///
    /// - Parameter newShape: The new size of each dimension; its product must equal ``count``.
    /// - Returns: A tensor with the same row-major elements and shape `newShape`.
    /// - Throws: ``AttentionError`` when `newShape` is invalid or has a different count.
    public func reshaped(_ newShape: [Int]) throws -> Tensor {
        try Tensor(shape: newShape, scalars: scalars)
    }

    /// Calls `body` with a pointer to the contiguous row-major elements.
    ///
    /// The pointer is valid only inside `body`; do not let it escape.
    ///
    /// - Parameter body: A closure that reads the ``count`` elements through the pointer.
    /// - Returns: What `body` returns.
    public func withUnsafeBufferPointer<R>(
        _ body: (UnsafeBufferPointer<Element>) throws -> R
    ) rethrows -> R {
        try scalars.withUnsafeBufferPointer(body)
    }

    /// Calls `body` with a mutable pointer to the elements, copying the storage first if
    /// it is shared with another tensor (copy-on-write).
    ///
    /// The pointer is valid only inside `body`; the shape cannot change.
    ///
    /// - Parameter body: A closure that reads and writes the ``count`` elements through the
    ///   pointer; it must not replace the buffer.
    /// - Returns: What `body` returns.
    public mutating func withUnsafeMutableBufferPointer<R>(
        _ body: (inout UnsafeMutableBufferPointer<Element>) throws -> R
    ) rethrows -> R {
        try scalars.withUnsafeMutableBufferPointer { buffer in
            let base = buffer.baseAddress
            defer { precondition(buffer.baseAddress == base, "the buffer must not be replaced") }
            return try body(&buffer)
        }
    }
}

extension Tensor where Element: Numeric {
    /// Creates a tensor of the given shape filled with zeros.
    ///
    /// - Parameter shape: The size of each dimension. Every size must be ≥ 0.
    /// - Throws: ``AttentionError`` with code `.negativeDimension`, or `.sizeOverflow` when
    ///   the element count overflows or the elements would not fit in the machine's memory.
    public init(shape: [Int]) throws {
        try self.init(shape: shape, repeating: 0)
    }
}

extension Tensor: Equatable where Element: Equatable {}
extension Tensor: Hashable where Element: Hashable {}
extension Tensor: Sendable where Element: Sendable {}

extension Tensor: CustomStringConvertible {
    /// A short summary: the element type and shape.
    public var description: String { "Tensor<\(Element.self)>\(describe(shape))" }
}

/// The product of a shape, validated: no negative sizes, no overflow.
func elementCount(of shape: [Int]) throws -> Int {
    var count = 1
    for (axis, size) in shape.enumerated() {
        guard size >= 0 else {
            throw AttentionError(.negativeDimension,
                "shape \(describe(shape)) has negative size \(size) at axis \(axis)")
        }
    }
    // Multiply after the sign check so that [0, huge, huge] is an (empty) valid shape.
    if shape.contains(0) { return 0 }
    for size in shape {
        let (product, overflow) = count.multipliedReportingOverflow(by: size)
        guard !overflow else {
            throw AttentionError(.sizeOverflow, "shape \(describe(shape)) has too many elements")
        }
        count = product
    }
    return count
}
