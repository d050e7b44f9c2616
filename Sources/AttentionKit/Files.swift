#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads in pieces and all-or-nothing writes with POSIX calls, so that failures become
/// ``AttentionError``s with code `.fileAccess` that name the path and the system's reason.

/// The file-system path of a file URL, or an error for other URLs.
func filePath(_ url: URL) throws -> String {
    guard url.isFileURL else {
        throw AttentionError(.fileAccess, "\(url) is not a file URL")
    }
    return url.withUnsafeFileSystemRepresentation { $0.map { String(cString: $0) } } ?? url.path
}

private func systemReason(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}

/// A file opened for reading, read in pieces of a size the caller chooses.
struct InputFile {
    /// The file-system path, for messages.
    let path: String
    private let fd: Int32
    /// The file's size when it is a regular file (a pipe or a device such as `/dev/zero`
    /// has none).
    let regularFileSize: Int?

    /// Opens `url` for reading; a directory is refused.
    init(_ url: URL) throws {
        path = try filePath(url)
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw AttentionError(.fileAccess, "cannot open \(path): \(systemReason())")
        }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let reason = systemReason()
            closeDescriptor(fd)
            throw AttentionError(.fileAccess, "cannot read \(path): \(reason)")
        }
        guard (info.st_mode & S_IFMT) != S_IFDIR else {
            closeDescriptor(fd)
            throw AttentionError(.fileAccess, "cannot read \(path): it is a directory")
        }
        regularFileSize = (info.st_mode & S_IFMT) == S_IFREG ? Int(info.st_size) : nil
    }

    /// Closes the file.
    func close() { closeDescriptor(fd) }

    /// Appends bytes from the file's current position to `buffer` until it holds `total`
    /// bytes or the file ends; returns whether it ended first. Memory grows only as bytes
    /// arrive, whatever `total` is.
    func read(into buffer: inout [UInt8], upTo total: Int) throws -> Bool {
        while buffer.count < total {
            let want = min(total - buffer.count, 1 << 20)
            let old = buffer.count
            buffer.append(contentsOf: repeatElement(0, count: want))
            let got = buffer.withUnsafeMutableBytes { posixRead(fd, $0.baseAddress! + old, want) }
            buffer.removeLast(want - max(0, got))
            if got < 0 {
                if errno == EINTR { continue }
                throw AttentionError(.fileAccess, "cannot read \(path): \(systemReason())")
            }
            if got == 0 { return true }
        }
        return false
    }
}

/// The C library's `close` and `read`, which `InputFile`'s methods of the same names hide.
private func closeDescriptor(_ fd: Int32) { _ = close(fd) }
private func posixRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int { read(fd, buffer, count) }

/// Writes `bytes` to `url` all at once or not at all: the bytes go to a temporary file in the
/// same directory, which is flushed to disk and then renamed over `url`. If anything fails,
/// the temporary file is removed and `url` is left as it was.
func writeWholeFile(_ bytes: UnsafeRawBufferPointer, to url: URL) throws {
    let path = try filePath(url)
    let temporary = temporaryPath(besides: path)
    let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
    guard fd >= 0 else {
        throw AttentionError(.fileAccess, "cannot write \(path): \(systemReason())")
    }
    var closed = false
    var renamed = false
    defer {
        if !closed { close(fd) }
        if !renamed { unlink(temporary) }
    }
    var offset = 0
    while offset < bytes.count {
        let wrote = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
        if wrote < 0 {
            if errno == EINTR { continue }
            throw AttentionError(.fileAccess, "cannot write \(path): \(systemReason())")
        }
        offset += wrote
    }
    guard fsync(fd) == 0 else {
        throw AttentionError(.fileAccess, "cannot write \(path): \(systemReason())")
    }
    closed = true
    guard close(fd) == 0 else {
        throw AttentionError(.fileAccess, "cannot write \(path): \(systemReason())")
    }
    guard rename(temporary, path) == 0 else {
        throw AttentionError(.fileAccess, "cannot write \(path): \(systemReason())")
    }
    renamed = true
}

/// A fresh name for a temporary file in the directory of `path`.
private func temporaryPath(besides path: String) -> String {
    let slash = path.lastIndex(of: "/")
    let directory = slash.map { String(path[...$0]) } ?? ""
    let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
    return "\(directory).\(name).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp"
}
