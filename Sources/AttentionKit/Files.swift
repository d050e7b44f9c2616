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

/// Whole-file reads and all-or-nothing writes with POSIX calls, so that failures become
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

/// Reads a whole file.
func readWholeFile(_ url: URL) throws -> [UInt8] {
    let path = try filePath(url)
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
        throw AttentionError(.fileAccess, "cannot open \(path): \(systemReason())")
    }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else {
        throw AttentionError(.fileAccess, "cannot read \(path): \(systemReason())")
    }
    guard (info.st_mode & S_IFMT) != S_IFDIR else {
        throw AttentionError(.fileAccess, "cannot read \(path): it is a directory")
    }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(max(0, Int(info.st_size)))
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let got = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if got < 0 {
            if errno == EINTR { continue }
            throw AttentionError(.fileAccess, "cannot read \(path): \(systemReason())")
        }
        if got == 0 { break }
        bytes.append(contentsOf: chunk[0..<got])
    }
    return bytes
}

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
