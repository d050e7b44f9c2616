#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// NumPy's .npy format (versions 1.0, 2.0 and 3.0), as NumPy's `numpy.lib.format` documents it:
//
//     magic "\x93NUMPY" | major, minor version bytes | header length (UInt16 LE for 1.0,
//     UInt32 LE for 2.0 and 3.0) | header: a Python dict literal, Latin-1 (UTF-8 for 3.0),
//     padded with spaces and ended by "\n" | the array's bytes
//
// with the header holding exactly the keys 'descr' (the data type), 'fortran_order' and
// 'shape', for example `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.

extension Tensor where Element == Float {
    /// Reads a tensor from a NumPy `.npy` file.
    ///
    /// Reads files of format version 1.0, 2.0 and 3.0 in C (row-major) order, with data type:
    /// - `<f4` (little-endian float32): the values exactly, bit for bit, including NaN,
    ///   infinities, −0 and subnormals.
    /// - `<f8` (little-endian float64), converted to `Float` by this policy: each value is
    ///   rounded to the nearest `Float` (ties to even), as `numpy.ndarray.astype(np.float32)`
    ///   does, so the result equals what NumPy would convert; NaN stays NaN and ±infinity stays
    ///   ±infinity; a *finite* value that would round to infinity (magnitude above about
    ///   3.4028235e38) is refused with an error instead of silently becoming infinite (convert
    ///   with `a.astype(np.float32)`, which makes such values ±inf, or `np.clip` them first).
    ///   Values too small for `Float` become subnormals or ±0, as in NumPy.
    ///
    /// `=f4` and `=f8` (the writer's native byte order) are read as `<f4` and `<f8` on
    /// little-endian machines. Fortran order is accepted when at most one dimension is longer
    /// than 1, since the bytes are then the same as in C order.
    ///
    /// Arrays written by `numpy.save(path, a)` for a `float32` or `float64` array `a` read back
    /// as `Tensor<Float>` with `shape == list(a.shape)`; a 0-d array gives a rank-0 tensor.
    /// `numpy.save` stores a transposed (Fortran-contiguous) array in Fortran order, which is
    /// refused: save `numpy.ascontiguousarray(a)` instead.
    ///
    /// The header is read and checked first, and then at most the payload it describes and
    /// one more byte, so a large file that is not `.npy` (or an endless source such as
    /// `/dev/zero`) is refused after reading only its start. The payload is converted in
    /// chunks of 256 KiB as it is read (a float32 file on disk is read straight into the
    /// tensor), so memory holds the tensor and one chunk, not the file's bytes as well.
    ///
    /// ```swift
    /// let q = try Tensor<Float>(contentsOfNPY: URL(fileURLWithPath: "q.npy"))   // [B, H, L, D]
    /// ```
    ///
    /// - Parameter url: A file URL.
    /// - Throws: ``AttentionError`` with code `.fileAccess` when the file cannot be read,
    ///   `.npyFormat` when it is not a well-formed `.npy` file (magic, version, header, a
    ///   payload shorter or longer than the shape needs), `.npyUnsupported` for any other
    ///   data type (including `|b1`: read it as `Tensor<Bool>`), big-endian data or Fortran
    ///   order with more than one dimension longer than 1, `.sizeOverflow` when the shape's
    ///   element count overflows or the tensor would not fit in the machine's memory, and
    ///   `.npyValueOutOfRange` for a float64 value beyond
    ///   `Float`'s range. The message names
    ///   the file and what was found. No tensor is made unless the whole file is valid.
    public init(contentsOfNPY url: URL) throws {
        self = try readNPYFile(url, as: Float.self)
    }

    /// Reads a tensor from the bytes of a NumPy `.npy` file, as `init(contentsOfNPY:)` does.
    ///
    /// - Parameter npyData: The complete contents of a `.npy` file.
    /// - Throws: ``AttentionError``, as `init(contentsOfNPY:)` does (never `.fileAccess`).
    public init(npyData: Data) throws {
        self = try npyData.withUnsafeBytes { try decodeNPY($0, as: Float.self, source: "npy data") }
    }

    /// The tensor as the bytes of a `.npy` file: format version 1.0 (2.0 if the header needs
    /// more than 65535 bytes), data type `<f4`, C order.
    ///
    /// The bytes are identical to what `numpy.save` writes for a float32 array of the same
    /// shape and values, so `numpy.load` reads them back exactly.
    public func npyData() -> Data {
        encodeNPY(self)
    }

    /// Writes the tensor to a NumPy `.npy` file (`<f4`, C order; see `npyData()`).
    ///
    /// The file is written completely or not at all: the bytes go to a temporary file in the
    /// same directory, which is renamed over the destination once it is complete (on Linux,
    /// where the file system supports unnamed files, the file has no name until then, so a
    /// process killed while writing leaves nothing behind). Because the file is replaced
    /// rather than written into, hard links to the old file keep the old
    /// contents, and the new file has the permissions of any newly created file (mode 0666
    /// less the umask), not those of the file it replaces. A symbolic link at `url` is kept
    /// and the file it points to is replaced (a link to nothing is refused); a character
    /// device or FIFO at `url` (`/dev/null`, `/dev/stdout`, a named pipe) cannot be replaced
    /// and is written into directly.
    ///
    /// ```swift
    /// try output.write(toNPY: URL(fileURLWithPath: "out.npy"))   // numpy.load("out.npy")
    /// ```
    ///
    /// - Parameter url: A file URL; an existing file there is replaced.
    /// - Throws: ``AttentionError`` with code `.fileAccess`, naming the path and the system's
    ///   reason, when the file cannot be written. `url` is then unchanged.
    public func write(toNPY url: URL) throws {
        try withNPYBytes { try writeWholeFile($0, to: url) }
    }

    /// Calls `body` with the bytes of the tensor's `.npy` file (those of `npyData()`) as two
    /// pieces, the header and the payload, without copying the payload: on a little-endian
    /// host it is the tensor's own memory. A tensor as large as half the machine's memory can
    /// be written where `npyData()` would need twice that.
    @_spi(Benchmarking)
    public func withNPYBytes<R>(_ body: ([UnsafeRawBufferPointer]) throws -> R) rethrows -> R {
        try withNPYPieces(self, body)
    }
}

extension Tensor where Element == Bool {
    /// Reads a boolean tensor (a mask) from a NumPy `.npy` file of data type `|b1`.
    ///
    /// Reads format versions 1.0, 2.0 and 3.0 in C order (or Fortran order when at most one
    /// dimension is longer than 1). Every byte of the payload must be 0 (`false`) or 1
    /// (`true`), as NumPy writes them. `<b1`, `>b1` and `=b1` are read as `|b1`: a one-byte
    /// type has no byte order.
    ///
    /// ```swift
    /// let allowed = try Tensor<Bool>(contentsOfNPY: URL(fileURLWithPath: "mask.npy"))
    /// let out = try scaledDotProductAttention(query: q, key: k, value: v, mask: .boolean(allowed))
    /// ```
    ///
    /// - Parameter url: A file URL.
    /// - Throws: ``AttentionError`` with code `.fileAccess` when the file cannot be read,
    ///   `.npyFormat` when it is malformed (including a byte other than 0 or 1),
    ///   `.npyUnsupported` for any other data type or Fortran order with more than one
    ///   dimension longer than 1, and
    ///   `.sizeOverflow` when the shape's element count overflows or the tensor would not
    ///   fit in the machine's memory.
    public init(contentsOfNPY url: URL) throws {
        self = try readNPYFile(url, as: Bool.self)
    }

    /// Reads a boolean tensor from the bytes of a `.npy` file, as `init(contentsOfNPY:)` does.
    ///
    /// - Parameter npyData: The complete contents of a `.npy` file.
    /// - Throws: ``AttentionError``, as `init(contentsOfNPY:)` does (never `.fileAccess`).
    public init(npyData: Data) throws {
        self = try npyData.withUnsafeBytes { try decodeNPY($0, as: Bool.self, source: "npy data") }
    }

    /// The tensor as the bytes of a `.npy` file: version 1.0 (2.0 for very long headers),
    /// data type `|b1` (one byte, 0 or 1, per element), C order; identical to `numpy.save`'s.
    public func npyData() -> Data {
        encodeNPY(self)
    }

    /// Writes the tensor to a NumPy `.npy` file (`|b1`, C order), completely or not at all.
    ///
    /// As for `Tensor<Float>`'s `write(toNPY:)`, the bytes go to a temporary file that is
    /// renamed over the destination (a symbolic link's target; a device or FIFO is written
    /// into), and the new file has the default permissions of a new file (0666 less the umask).
    ///
    /// - Parameter url: A file URL; an existing file there is replaced.
    /// - Throws: ``AttentionError`` with code `.fileAccess` when the file cannot be written;
    ///   `url` is then unchanged.
    public func write(toNPY url: URL) throws {
        try withNPYPieces(self) { try writeWholeFile($0, to: url) }
    }
}

// MARK: - Element types

/// The data types AttentionKit reads and writes; the raw value is the spelling it writes.
enum NPYDataType: String {
    case float32 = "<f4"
    case float64 = "<f8"
    case bool = "|b1"

    /// The type a header's `descr` names, or nil for types AttentionKit does not read.
    ///
    /// One-byte types have no byte order, so `<b1`, `>b1` and `=b1` are `|b1` under other
    /// spellings; `=` (the writer's native order) means little-endian on little-endian hosts.
    init?(descr: String) {
        #if _endian(little)
        let native: [String: NPYDataType] = ["=f4": .float32, "=f8": .float64]
        #else
        let native: [String: NPYDataType] = [:]
        #endif
        switch descr {
        case "<f4": self = .float32
        case "<f8": self = .float64
        case "|b1", "<b1", ">b1", "=b1": self = .bool
        default:
            guard let type = native[descr] else { return nil }
            self = type
        }
    }

    var itemSize: Int {
        switch self {
        case .float32: 4
        case .float64: 8
        case .bool: 1
        }
    }
}

/// An element type that can be stored in a `.npy` file.
protocol NPYElement {
    /// The data type written, and the types that can be read into this element type.
    static var writtenType: NPYDataType { get }
    static var readableTypes: [NPYDataType] { get }
    /// The value storage holds before elements are decoded into it.
    static var placeholder: Self { get }
    /// Decodes `out.count` elements of type `type` from `bytes` (exactly `out.count · itemSize`
    /// bytes) into `out`. `first` is the flat index of the first one in the array of shape
    /// `shape`, for messages: a payload is decoded in chunks, and an error names the element
    /// by its index in the whole array.
    static func decode(_ bytes: UnsafeRawBufferPointer, type: NPYDataType, into out: UnsafeMutableBufferPointer<Self>,
                       first: Int, shape: [Int], source: String) throws
    /// Calls `body` with the little-endian bytes of `elements`: their own memory where it
    /// already has that form, otherwise an encoded copy.
    static func withEncodedBytes<R>(_ elements: UnsafeBufferPointer<Self>,
                                    _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
    /// Reads the payload described by `layout` from a regular file whose size matched it
    /// straight into the tensor's storage, when the bytes need no conversion; nil otherwise
    /// (the caller then decodes the payload chunk by chunk). Saves copying each chunk once
    /// more: the bytes are the values.
    static func readPayloadInPlace(_ file: InputFile, layout: NPYLayout, source: String) throws -> Tensor<Self>?
}

extension NPYElement {
    static func readPayloadInPlace(_ file: InputFile, layout: NPYLayout, source: String) throws -> Tensor<Self>? { nil }
}

extension Float: NPYElement {
    static var writtenType: NPYDataType { .float32 }
    static var readableTypes: [NPYDataType] { [.float32, .float64] }

    static var placeholder: Float { 0 }

    static func decode(_ bytes: UnsafeRawBufferPointer, type: NPYDataType, into out: UnsafeMutableBufferPointer<Float>,
                       first: Int, shape: [Int], source: String) throws {
        switch type {
        case .float32:
            for n in out.indices {
                let bits = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * n, as: UInt32.self))
                out[n] = Float(bitPattern: bits)
            }
        case .float64:
            var bad: (index: Int, value: Double)?
            for n in out.indices {
                let bits = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8 * n, as: UInt64.self))
                let value = Double(bitPattern: bits)
                let converted = Float(value)      // round to nearest, ties to even
                if converted.isInfinite && value.isFinite && bad == nil { bad = (first + n, value) }
                out[n] = converted
            }
            if let bad {
                throw AttentionError(.npyValueOutOfRange,
                    "\(source): float64 value \(bad.value) at index \(describe(flatToIndex(bad.index, shape))) "
                    + "is too large for Float (largest \(Float.greatestFiniteMagnitude)); "
                    + "AttentionKit rounds float64 to the nearest float32 and refuses finite values that would become infinite; "
                    + "save a.astype(np.float32) to turn them into ±inf, or np.clip(a, -3.4e38, 3.4e38) to keep them finite")
            }
        case .bool:
            preconditionFailure("bool data is never decoded as Float")
        }
    }

    static func withEncodedBytes<R>(_ elements: UnsafeBufferPointer<Float>,
                                    _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        #if _endian(little)
        return try body(UnsafeRawBufferPointer(elements))
        #else
        return try elements.map { $0.bitPattern.littleEndian }.withUnsafeBytes(body)
        #endif
    }

    static func readPayloadInPlace(_ file: InputFile, layout: NPYLayout, source: String) throws -> Tensor<Float>? {
        #if _endian(little)
        guard layout.type == .float32 else { return nil }
        var got = 0
        let scalars = try [Float](unsafeUninitializedCapacity: layout.count) { buffer, initialized in
            got = try file.read(into: UnsafeMutableRawBufferPointer(buffer))
            initialized = got == layout.byteCount ? layout.count : 0
        }
        // The file may have changed since its size was checked: a short read, or a size that
        // is no longer the header's (grown, or cut while the bytes were copied).
        if got < layout.byteCount { try checkNPYPayloadLength(layout, available: got, source: source) }
        try checkSizeAfterReading(file, layout: layout, source: source)
        return Tensor(validatedShape: layout.shape, scalars: scalars)
        #else
        return nil
        #endif
    }
}

extension Bool: NPYElement {
    static var writtenType: NPYDataType { .bool }
    static var readableTypes: [NPYDataType] { [.bool] }

    static var placeholder: Bool { false }

    static func decode(_ bytes: UnsafeRawBufferPointer, type: NPYDataType, into out: UnsafeMutableBufferPointer<Bool>,
                       first: Int, shape: [Int], source: String) throws {
        // A Bool must hold exactly 0 or 1.
        if let bad = out.indices.first(where: { bytes[$0] > 1 }) {
            throw AttentionError(.npyFormat,
                "\(source): bool byte \(bytes[bad]) at index \(describe(flatToIndex(first + bad, shape))) "
                + "is neither 0 (false) nor 1 (true)")
        }
        for n in out.indices { out[n] = bytes[n] != 0 }
    }

    static func withEncodedBytes<R>(_ elements: UnsafeBufferPointer<Bool>,
                                    _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        // A Bool is one byte holding 0 or 1, which is what `|b1` stores.
        try body(UnsafeRawBufferPointer(elements))
    }
}

/// The multi-index of a flat row-major offset, for messages (also the tests' failure messages).
func flatToIndex(_ flat: Int, _ shape: [Int]) -> [Int] {
    var rest = flat
    var index = [Int](repeating: 0, count: shape.count)
    for axis in stride(from: shape.count - 1, through: 0, by: -1) where shape[axis] > 0 {
        index[axis] = rest % shape[axis]
        rest /= shape[axis]
    }
    return index
}

// MARK: - Writing

private let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]   // "\x93NUMPY"

/// The bytes before the payload of a `.npy` file, exactly as `numpy.save` writes them:
/// magic string, version, header length, then the header with sorted keys, the shape as a
/// Python tuple, spare spaces for the first dimension to grow to 21 digits, and padding so
/// that the data starts at a multiple of 64 bytes, ending in a newline.
func npyPrefix(shape: [Int], type: NPYDataType) -> [UInt8] {
    let tuple = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
    var header = "{'descr': '\(type.rawValue)', 'fortran_order': False, 'shape': \(tuple), }"
    if let first = shape.first {
        header += String(repeating: " ", count: max(0, 21 - String(first).count))
    }
    var headerBytes = Array(header.utf8)                 // ASCII only
    var version: UInt8 = 1
    var prefixLength = magic.count + 2 + 2
    var padding = 64 - (prefixLength + headerBytes.count + 1) % 64
    if headerBytes.count + 1 + padding > Int(UInt16.max) {
        version = 2
        prefixLength = magic.count + 2 + 4
        padding = 64 - (prefixLength + headerBytes.count + 1) % 64
    }
    headerBytes += [UInt8](repeating: 0x20, count: padding) + [0x0A]

    var prefix = magic + [version, 0]
    if version == 1 {
        withUnsafeBytes(of: UInt16(headerBytes.count).littleEndian) { prefix += $0 }
    } else {
        withUnsafeBytes(of: UInt32(headerBytes.count).littleEndian) { prefix += $0 }
    }
    return prefix + headerBytes
}

/// Calls `body` with a tensor's `.npy` file as two pieces, the prefix (``npyPrefix(shape:type:)``)
/// and the payload, read in place where the host's layout allows (``NPYElement``).
func withNPYPieces<Element: NPYElement, R>(_ tensor: Tensor<Element>,
                                           _ body: ([UnsafeRawBufferPointer]) throws -> R) rethrows -> R {
    let prefix = npyPrefix(shape: tensor.shape, type: Element.writtenType)
    return try prefix.withUnsafeBytes { head in
        try tensor.withUnsafeBufferPointer { elements in
            try Element.withEncodedBytes(elements) { payload in try body([head, payload]) }
        }
    }
}

/// Encodes a tensor exactly as `numpy.save` does (``npyPrefix(shape:type:)``, then the payload).
func encodeNPY<Element: NPYElement>(_ tensor: Tensor<Element>) -> Data {
    withNPYPieces(tensor) { pieces in
        var data = Data(capacity: pieces.reduce(0) { $0 + $1.count })
        for piece in pieces { data.append(contentsOf: piece) }
        return data
    }
}

// MARK: - Reading

/// What the start of a `.npy` file (magic string, version, header) says about its payload.
struct NPYLayout {
    /// The data type as the header spells it (`'<f4'`, `'=f4'`, `'|b1'`…), for messages.
    var descr: String
    var type: NPYDataType
    var shape: [Int]
    var count: Int
    /// The payload's exact length in bytes.
    var byteCount: Int
    /// Where the payload starts: the length of the magic string, version, length and header.
    var payloadStart: Int
}

/// The result of looking at the first bytes of a `.npy` file.
enum NPYPrefix {
    /// The header is not complete yet: the first `n` bytes of the file are needed.
    case needsBytes(Int)
    /// Magic string, version and header are valid; the payload follows.
    case complete(NPYLayout)
}

/// The longest `.npy` header AttentionKit reads: 1 MiB, a hundred times NumPy's own default
/// limit (`max_header_size`, 10 000 bytes).
let maximumNPYHeaderLength = 1 << 20

/// Parses the start of a `.npy` file: magic string, version, header length and header, and
/// validates the data type, order and shape, without looking at the payload.
///
/// `bytes` are the first bytes of the file; `isWholeFile` says that the file has no more.
/// When more bytes are needed to decide, returns `.needsBytes(n)` with `n > bytes.count`
/// (never when `isWholeFile`). Errors are the same whether the file is given whole or in
/// growing prefixes, because every "it ends inside…" check is made only on the whole file.
func parseNPYPrefix<Element: NPYElement>(
    _ bytes: UnsafeRawBufferPointer, isWholeFile: Bool, as: Element.Type, source: String
) throws -> NPYPrefix {
    func malformed(_ reason: String) -> AttentionError {
        AttentionError(.npyFormat, "\(source): not a valid .npy file: \(reason)")
    }

    // Magic string and version.
    if !isWholeFile && bytes.count < magic.count + 2 { return .needsBytes(magic.count + 2) }
    guard bytes.count >= magic.count, bytes.prefix(magic.count).elementsEqual(magic) else {
        let start = bytes.prefix(8).map { hexByte($0) }.joined(separator: " ")
        let zip = bytes.starts(with: [0x50, 0x4B, 0x03, 0x04]) ? " (this looks like a zip archive such as .npz: extract its arrays first)" : ""
        throw malformed(bytes.isEmpty ? "the file is empty"
            : "it starts with bytes \(start), not the magic string \\x93NUMPY\(zip)")
    }
    guard bytes.count >= magic.count + 2 else { throw malformed("it ends inside the version bytes") }
    let major = bytes[6], minor = bytes[7]
    guard minor == 0, (1...3).contains(major) else {
        throw AttentionError(.npyFormat,
            "\(source): unsupported .npy format version \(major).\(minor) (AttentionKit reads 1.0, 2.0 and 3.0)")
    }

    // Header length and header.
    let lengthSize = major == 1 ? 2 : 4
    let headerStart = 8 + lengthSize
    if !isWholeFile && bytes.count < headerStart { return .needsBytes(headerStart) }
    guard bytes.count >= headerStart else { throw malformed("it ends inside the header length") }
    var headerLength = 0
    for n in 0..<lengthSize { headerLength |= Int(bytes[8 + n]) << (8 * n) }
    // NumPy writes headers of a few hundred bytes (its reader refuses more than 10 000 by
    // default); a length field in the megabytes or gigabytes means a damaged file, and
    // reading that far before saying so would take as long as reading the file.
    guard headerLength <= maximumNPYHeaderLength else {
        throw malformed("the header length field says \(headerLength) bytes; .npy headers are a few hundred "
                        + "bytes, and AttentionKit reads none longer than \(maximumNPYHeaderLength)")
    }
    if !isWholeFile && bytes.count - headerStart < headerLength { return .needsBytes(headerStart + headerLength) }
    guard bytes.count - headerStart >= headerLength else {
        throw malformed("the header length field says \(headerLength) bytes but only \(bytes.count - headerStart) follow")
    }
    let headerBytes = UnsafeRawBufferPointer(rebasing: bytes[headerStart..<(headerStart + headerLength)])
    let header = try parseHeader(headerBytes, utf8: major == 3, source: source)

    // Data type, order and shape.
    let type: NPYDataType
    switch NPYDataType(descr: header.descr) {
    case let known? where Element.readableTypes.contains(known):
        type = known
    case let known?:
        let hint = known == .bool ? "read it as Tensor<Bool>" : "read it as Tensor<Float>"
        throw AttentionError(.npyUnsupported,
            "\(source): data type \(quoted(header.descr)) cannot be read as Tensor<\(Element.self)>; \(hint)")
    case nil:
        throw AttentionError(.npyUnsupported,
            "\(source): data type \(describeDescr(header.descr)) is not supported; AttentionKit reads "
            + "'<f4' (float32), '<f8' (float64, converted to float32) and '|b1' (bool)")
    }
    let shape = header.shape
    // With at most one dimension longer than 1, Fortran order lays the bytes out as C order does.
    guard !header.fortranOrder || shape.filter({ $0 > 1 }).count <= 1 else {
        throw AttentionError(.npyUnsupported,
            "\(source): the array of shape \(describe(shape)) is in Fortran (column-major) order; "
            + "save numpy.ascontiguousarray(a) instead")
    }
    let count: Int
    do {
        count = try elementCount(of: shape)
    } catch let error as AttentionError {
        throw AttentionError(error.code, "\(source): \(error.message)")
    }
    let (byteCount, overflow) = count.multipliedReportingOverflow(by: type.itemSize)
    guard !overflow else {
        throw AttentionError(.sizeOverflow, "\(source): shape \(describe(shape)) of \(quoted(header.descr)) has too many bytes")
    }
    return .complete(NPYLayout(descr: header.descr, type: type, shape: shape, count: count, byteCount: byteCount,
                               payloadStart: headerStart + headerLength))
}

/// Checks that the payload is exactly as long as the shape needs.
///
/// - Parameters:
///   - available: The payload bytes found (after the header).
///   - exact: Whether `available` is the whole rest of the file; `false` means that the
///     file has at least that many bytes and only `byteCount + 1` were read.
func checkNPYPayloadLength(_ layout: NPYLayout, available: Int, exact: Bool = true, source: String) throws {
    guard available != layout.byteCount else { return }
    let needs = "shape \(describe(layout.shape)) of \(quoted(layout.descr)) needs \(layout.byteCount) bytes of data"
    let reason: String
    if available < layout.byteCount {
        reason = "truncated: \(needs), the file has \(available)"
    } else if exact {
        reason = "\(available - layout.byteCount) bytes of unexpected data after the array (\(needs), the file has \(available))"
    } else {
        reason = "unexpected data after the array (\(needs), and more follow)"
    }
    throw AttentionError(.npyFormat, "\(source): not a valid .npy file: \(reason)")
}

/// Decodes the bytes of a whole `.npy` file into a tensor, validating everything before the
/// tensor is made.
func decodeNPY<Element: NPYElement>(
    _ bytes: UnsafeRawBufferPointer, as: Element.Type, source: String
) throws -> Tensor<Element> {
    guard case .complete(let layout) = try parseNPYPrefix(bytes, isWholeFile: true, as: Element.self, source: source) else {
        preconditionFailure("a whole file never needs more bytes")
    }
    try checkNPYPayloadLength(layout, available: bytes.count - layout.payloadStart, source: source)
    let payload = UnsafeRawBufferPointer(rebasing: bytes[layout.payloadStart...])
    return try decodeNPYPayload(payload, layout: layout, source: source)
}

/// Decodes a payload of exactly `layout.byteCount` bytes.
func decodeNPYPayload<Element: NPYElement>(
    _ payload: UnsafeRawBufferPointer, layout: NPYLayout, source: String
) throws -> Tensor<Element> {
    try checkNPYAllocation(layout, Element.self, source: source)
    var scalars = [Element](repeating: Element.placeholder, count: layout.count)
    try scalars.withUnsafeMutableBufferPointer {
        try Element.decode(payload, type: layout.type, into: $0, first: 0, shape: layout.shape, source: source)
    }
    return Tensor(validatedShape: layout.shape, scalars: scalars)
}

/// Throws `.sizeOverflow` when the tensor a header describes would not fit in the machine's
/// memory, before anything is allocated for it (the allocation would trap).
func checkNPYAllocation<Element>(_ layout: NPYLayout, _ type: Element.Type, source: String) throws {
    try checkAllocation(count: layout.count, of: type, "\(source): the tensor of shape \(describe(layout.shape))")
}

/// The most payload bytes read at a time before they are decoded into the tensor: half of
/// this machine's 512 KiB L2, so a chunk is still cached when it is decoded.
let npyReadChunkBytes = 1 << 18

/// Reads a `.npy` file without ever holding more of it than its header promises: first the
/// magic string and header, then (once they are valid) at most the payload and, from a
/// source without a size, one more byte. A regular file's size is checked against the header
/// before the payload is read, so a huge file that is not `.npy`, or whose header does not
/// match its size, is refused after reading only its start; an endless source such as
/// `/dev/zero` is refused the same way.
///
/// The payload is read in chunks of `npyReadChunkBytes`, each decoded into the tensor's
/// storage as it arrives, so memory holds the tensor and one chunk rather than the file's
/// bytes as well (a float64 file is twice its tensor). From a pipe the storage grows only as
/// bytes arrive, so a header that promises more than the pipe delivers costs only what came.
/// A tensor larger than the machine's memory is refused before anything is allocated for it.
func readNPYFile<Element: NPYElement>(_ url: URL, as: Element.Type) throws -> Tensor<Element> {
    let file = try InputFile(url)
    defer { file.close() }
    let source = file.path
    var prefix: [UInt8] = []
    var wanted = magic.count + 2
    var layout: NPYLayout
    while true {
        let atEnd = try file.read(into: &prefix, upTo: wanted)
        switch try prefix.withUnsafeBytes({ try parseNPYPrefix($0, isWholeFile: atEnd, as: Element.self, source: source) }) {
        case .needsBytes(let n):
            precondition(n > prefix.count, "parseNPYPrefix asked for bytes it already has")
            wanted = n
            continue
        case .complete(let complete):
            layout = complete
        }
        break
    }
    precondition(prefix.count == layout.payloadStart)

    // A regular file says how long it is: compare before reading anything more (so a short
    // file claiming a huge shape is truncated, not too large). Then, from any source, the
    // tensor must fit in memory before anything is allocated for it or read into it.
    let size = file.regularFileSize.flatMap { $0 >= layout.payloadStart ? $0 : nil }
    if let size { try checkNPYPayloadLength(layout, available: size - layout.payloadStart, source: source) }
    try checkNPYAllocation(layout, Element.self, source: source)
    var scalars: [Element] = []
    if size != nil {
        if let tensor = try Element.readPayloadInPlace(file, layout: layout, source: source) { return tensor }
        scalars.reserveCapacity(layout.count)
    }
    let itemSize = layout.type.itemSize
    let chunkCount = npyReadChunkBytes / itemSize
    var chunk = [UInt8](repeating: 0, count: min(layout.byteCount, chunkCount * itemSize))
    while scalars.count < layout.count {
        let first = scalars.count
        let n = min(chunkCount, layout.count - first)
        let got = try chunk.withUnsafeMutableBytes { try file.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<(n * itemSize)])) }
        if got < n * itemSize {                                  // the source ended: truncated
            try checkNPYPayloadLength(layout, available: first * itemSize + got, source: source)
        }
        scalars.append(contentsOf: repeatElement(Element.placeholder, count: n))
        try chunk.withUnsafeBytes { bytes in
            try scalars.withUnsafeMutableBufferPointer { out in
                try Element.decode(UnsafeRawBufferPointer(rebasing: bytes[..<(n * itemSize)]), type: layout.type,
                                   into: UnsafeMutableBufferPointer(rebasing: out[first...]),
                                   first: first, shape: layout.shape, source: source)
            }
        }
    }
    // One byte beyond the payload tells whether anything follows it; a regular file's size
    // tells that after reading.
    if file.regularFileSize == nil {
        var next: UInt8 = 0
        if try withUnsafeMutableBytes(of: &next, { try file.read(into: $0) }) > 0 {
            try checkNPYPayloadLength(layout, available: layout.byteCount + 1, exact: false, source: source)
        }
    }
    try checkSizeAfterReading(file, layout: layout, source: source)
    return Tensor(validatedShape: layout.shape, scalars: scalars)
}

/// Throws when a regular file is no longer exactly as long as its header says: truncated by
/// another process during the read, the lost bytes may have come back as zeros.
func checkSizeAfterReading(_ file: InputFile, layout: NPYLayout, source: String) throws {
    guard let size = try file.currentRegularFileSize() else { return }
    try checkNPYPayloadLength(layout, available: max(0, size - layout.payloadStart), source: source)
}

private func hexByte(_ byte: UInt8) -> String {
    let digits = Array("0123456789ABCDEF")
    return String([digits[Int(byte >> 4)], digits[Int(byte & 15)]])
}

/// `text` in single quotes for a message, with ASCII control characters, quotes and
/// backslashes escaped as `\xNN` and other invisible or layout-changing characters (C1
/// controls, format characters such as bidirectional overrides, line and paragraph
/// separators, unassigned and private-use code points) as `\u{N}`, so that a corrupt header
/// cannot break or disguise the message's line.
private func quoted(_ text: String) -> String {
    var out = "'"
    for scalar in text.unicodeScalars {
        if scalar.value < 0x20 || scalar.value == 0x7F || scalar == "'" || scalar == "\\" {
            out += "\\x" + hexByte(UInt8(scalar.value))
        } else if scalar.value >= 0x80 && [.control, .format, .lineSeparator, .paragraphSeparator, .unassigned,
                                          .privateUse, .surrogate].contains(scalar.properties.generalCategory) {
            out += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
    return out + "'"
}

private func describeDescr(_ descr: String) -> String {
    let known: [String: String] = [
        ">f4": "big-endian float32; convert with a.astype('<f4')",
        ">f8": "big-endian float64; convert with a.astype('<f8')",
        "<f2": "float16; convert with a.astype('<f4')",
        "|b1": "bool", "|u1": "uint8", "|i1": "int8",
        "<i2": "int16", "<i4": "int32", "<i8": "int64",
        "<u2": "uint16", "<u4": "uint32", "<u8": "uint64",
        "<c8": "complex64", "<c16": "complex128", "|O": "Python objects",
    ]
    return quoted(descr) + (known[descr].map { " (\($0))" } ?? "")
}

// MARK: - Header dictionary

/// The three entries of a `.npy` header.
struct NPYHeader {
    var descr: String
    var fortranOrder: Bool
    var shape: [Int]
}

/// A Python literal, as far as `.npy` headers use them.
private indirect enum PyValue {
    case string(String)
    case bool(Bool)
    case integer(Int?)            // nil: too large for Int
    case none
    case sequence([PyValue], tuple: Bool)

    var text: String {
        switch self {
        case .string(let s): return quoted(s)
        case .bool(let b): return b ? "True" : "False"
        case .integer(let n): return n.map(String.init) ?? "(a very large integer)"
        case .none: return "None"
        case .sequence(let items, let tuple):
            let inner = items.map(\.text).joined(separator: ", ")
            return tuple ? "(\(inner)\(items.count == 1 ? "," : ""))" : "[\(inner)]"
        }
    }
}

/// Parses the header dictionary; every failure names the header text that was found.
func parseHeader(_ bytes: UnsafeRawBufferPointer, utf8: Bool, source: String) throws -> NPYHeader {
    let text = headerExcerpt(bytes, utf8: utf8)
    func failure(_ reason: String) -> AttentionError {
        AttentionError(.npyFormat, "\(source): not a valid .npy header (\(reason)): \(text)")
    }
    if utf8, String(validating: bytes, as: UTF8.self) == nil {
        throw failure("version 3.0 headers must be UTF-8")
    }
    var parser = HeaderParser(bytes: bytes)
    let entries: [(String, PyValue)]
    do {
        entries = try parser.parseDictionary()
    } catch let error as HeaderParser.Failure {
        throw failure(error.reason)
    }

    var dictionary: [String: PyValue] = [:]
    for (key, value) in entries {
        guard dictionary[key] == nil else { throw failure("the key \(quoted(key)) appears twice") }
        dictionary[key] = value
    }
    let expected: Set<String> = ["descr", "fortran_order", "shape"]
    guard Set(dictionary.keys) == expected else {
        let missing = expected.subtracting(dictionary.keys).sorted()
        let extra = Set(dictionary.keys).subtracting(expected).sorted()
        var parts: [String] = []
        if !missing.isEmpty { parts.append("missing " + missing.map(quoted).joined(separator: ", ")) }
        if !extra.isEmpty { parts.append("unexpected " + extra.map(quoted).joined(separator: ", ")) }
        throw failure("keys must be 'descr', 'fortran_order' and 'shape'; " + parts.joined(separator: "; "))
    }

    let descr: String
    switch dictionary["descr"]! {
    case .string(let s): descr = s
    case let other:
        throw AttentionError(.npyUnsupported,
            "\(source): structured or non-string data type \(other.text) is not supported; "
            + "AttentionKit reads '<f4', '<f8' and '|b1'")
    }
    guard case .bool(let fortranOrder) = dictionary["fortran_order"]! else {
        throw failure("'fortran_order' must be True or False, found \(dictionary["fortran_order"]!.text)")
    }
    guard case .sequence(let items, tuple: true) = dictionary["shape"]! else {
        throw failure("'shape' must be a tuple of integers, found \(dictionary["shape"]!.text)")
    }
    var shape: [Int] = []
    for item in items {
        guard case .integer(let size) = item else {
            throw failure("'shape' must be a tuple of integers, found \(dictionary["shape"]!.text)")
        }
        guard let size else {
            throw AttentionError(.sizeOverflow, "\(source): a dimension in the header's shape is too large: \(text)")
        }
        guard size >= 0 else { throw failure("'shape' has the negative dimension \(size)") }
        shape.append(size)
    }
    return NPYHeader(descr: descr, fortranOrder: fortranOrder, shape: shape)
}

/// The header for messages: printable ASCII as is, other bytes as `\xNN`, cut at 160 characters.
private func headerExcerpt(_ bytes: UnsafeRawBufferPointer, utf8: Bool) -> String {
    // The padding (spaces) and the final newline carry no information.
    var end = bytes.count
    while end > 0, bytes[end - 1] == 0x20 || bytes[end - 1] == 0x0A { end -= 1 }
    var out = ""
    for byte in bytes[..<end] {
        if out.count >= 160 { out += "…"; break }
        switch byte {
        case 0x20..<0x7F: out.unicodeScalars.append(Unicode.Scalar(byte))
        case 0x0A: out += "\\n"
        default: out += "\\x" + hexByte(byte)
        }
    }
    return out.isEmpty ? "(empty header)" : out
}

/// A recursive-descent parser for the Python literals of `.npy` headers: a dict of string
/// keys whose values are strings, True/False, None, integers, tuples and lists.
private struct HeaderParser {
    struct Failure: Error { var reason: String }

    let bytes: UnsafeRawBufferPointer
    var position = 0
    /// Deep nesting is never valid in a header; the limit keeps recursion bounded.
    let maximumDepth = 16

    init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    private var current: UInt8? { position < bytes.count ? bytes[position] : nil }

    private mutating func skipSpace() {
        while let c = current, c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D { position += 1 }
    }

    private func found() -> String {
        guard let c = current else { return "the end of the header" }
        return (0x20..<0x7F).contains(c) ? "'\(Character(Unicode.Scalar(c)))'" : "byte \\x\(hexByte(c))"
    }

    private mutating func expect(_ byte: UInt8, _ what: String) throws {
        skipSpace()
        guard current == byte else { throw Failure(reason: "expected \(what) at byte \(position), found \(found())") }
        position += 1
    }

    mutating func parseDictionary() throws -> [(String, PyValue)] {
        try expect(UInt8(ascii: "{"), "'{'")
        var entries: [(String, PyValue)] = []
        while true {
            skipSpace()
            if current == UInt8(ascii: "}") { position += 1; break }
            guard case .string(let key) = try parseValue(depth: 1) else {
                throw Failure(reason: "dictionary keys must be strings")
            }
            try expect(UInt8(ascii: ":"), "':'")
            entries.append((key, try parseValue(depth: 1)))
            skipSpace()
            if current == UInt8(ascii: ",") { position += 1; continue }
            try expect(UInt8(ascii: "}"), "',' or '}'")
            break
        }
        skipSpace()
        guard position == bytes.count else {
            throw Failure(reason: "unexpected \(found()) after the dictionary at byte \(position)")
        }
        return entries
    }

    private mutating func parseValue(depth: Int) throws -> PyValue {
        guard depth <= maximumDepth else { throw Failure(reason: "values nested too deeply") }
        skipSpace()
        guard let c = current else { throw Failure(reason: "the header ends where a value should be") }
        switch c {
        case UInt8(ascii: "'"), UInt8(ascii: "\""):
            return .string(try parseString(quote: c))
        case UInt8(ascii: "("), UInt8(ascii: "["):
            let tuple = c == UInt8(ascii: "(")
            let close = tuple ? UInt8(ascii: ")") : UInt8(ascii: "]")
            position += 1
            var items: [PyValue] = []
            var sawComma = false
            while true {
                skipSpace()
                if current == close { position += 1; break }
                items.append(try parseValue(depth: depth + 1))
                skipSpace()
                if current == UInt8(ascii: ",") { position += 1; sawComma = true; continue }
                try expect(close, tuple ? "',' or ')'" : "',' or ']'")
                sawComma = false
                break
            }
            // `(5)` is the integer 5 in Python, not a tuple.
            if tuple && items.count == 1 && !sawComma { return items[0] }
            return .sequence(items, tuple: tuple)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return .integer(try parseInteger())
        default:
            var end = position
            while end < bytes.count, isIdentifierByte(bytes[end]) { end += 1 }
            let word = String(decoding: bytes[position..<end], as: UTF8.self)
            switch word {
            case "True": position = end; return .bool(true)
            case "False": position = end; return .bool(false)
            case "None": position = end; return .none
            case "": throw Failure(reason: "unexpected \(found()) at byte \(position)")
            default: throw Failure(reason: "unexpected name '\(word.prefix(40))' at byte \(position)")
            }
        }
    }

    private func isIdentifierByte(_ c: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(c)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) || c == UInt8(ascii: "_")
    }

    /// A decimal integer with an optional minus sign and Python 2's optional `L` suffix;
    /// nil when it does not fit in `Int`.
    private mutating func parseInteger() throws -> Int? {
        var negative = false
        if current == UInt8(ascii: "-") { negative = true; position += 1; skipSpace() }
        var value: Int? = 0
        var digits = 0
        while let c = current, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) {
            let digit = Int(c - UInt8(ascii: "0"))
            if let v = value {
                let (times10, o1) = v.multipliedReportingOverflow(by: 10)
                let (sum, o2) = times10.addingReportingOverflow(negative ? -digit : digit)
                value = (o1 || o2) ? nil : sum
            }
            digits += 1
            position += 1
        }
        guard digits > 0 else { throw Failure(reason: "expected digits at byte \(position), found \(found())") }
        if current == UInt8(ascii: "L") || current == UInt8(ascii: "l") { position += 1 }
        if let next = current, isIdentifierByte(next) {
            throw Failure(reason: "unexpected \(found()) in a number at byte \(position)")
        }
        return value
    }

    private mutating func parseString(quote: UInt8) throws -> String {
        position += 1
        var scalars: [UInt8] = []
        while true {
            guard let c = current else { throw Failure(reason: "a string is not closed") }
            position += 1
            if c == quote { break }
            if c == UInt8(ascii: "\\") {
                guard let escaped = current else { throw Failure(reason: "a string is not closed") }
                scalars.append(escaped)
                position += 1
                continue
            }
            if c == 0x0A { throw Failure(reason: "a string runs past the end of the line") }
            scalars.append(c)
        }
        // Keys and data types are ASCII; anything else only ever appears in messages.
        return String(decoding: scalars, as: UTF8.self)
    }
}
