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

    /// The file's size now (`fstat`), when it is a regular file: a file truncated by another
    /// process while it was read can hand back zeros for the lost bytes with a full count,
    /// so a reader compares this with the size it expected after reading.
    func currentRegularFileSize() throws -> Int? {
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw AttentionError(.fileAccess, "cannot read \(path): \(systemReason())")
        }
        return (info.st_mode & S_IFMT) == S_IFREG ? Int(info.st_size) : nil
    }

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

    /// Reads from the file's current position into `buffer` until it is full or the file
    /// ends; returns the number of bytes read.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var filled = 0
        while filled < buffer.count {
            let got = posixRead(fd, buffer.baseAddress! + filled, min(buffer.count - filled, 1 << 30))
            if got < 0 {
                if errno == EINTR { continue }
                throw AttentionError(.fileAccess, "cannot read \(path): \(systemReason())")
            }
            if got == 0 { break }
            filled += got
        }
        return filled
    }
}

/// The C library's `close` and `read`, which `InputFile`'s methods of the same names hide.
private func closeDescriptor(_ fd: Int32) { _ = close(fd) }
private func posixRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int { read(fd, buffer, count) }

/// Writes `bytes` to `url` all at once or not at all: the bytes go to a temporary file in the
/// same directory, which is flushed to disk and then renamed over `url`. If anything fails,
/// the temporary file is removed and `url` is left as it was. A symbolic link is kept and the
/// file it points to is replaced; an existing character device or FIFO (`/dev/null`, a named
/// pipe) is written into, since it cannot be replaced, and `/dev/stdout`, `/dev/stderr` and
/// `/dev/fd/N` are this process's open descriptors, written as they are
/// (``writeDestination(_:)``). The file's bytes are `pieces` one after the other (a `.npy`
/// file's header and its payload, read in place from the tensor), so nothing is copied.
func writeWholeFile(_ pieces: [UnsafeRawBufferPointer], to url: URL) throws {
    let path = try filePath(url)
    switch try writeDestination(path) {
    case .descriptor(let fd):
        try writeOpenStream(pieces, to: fd, path: path)
    case .stream(let stream):
        let fd = try openStream(stream)
        defer { close(fd) }
        try writeOpenStream(pieces, to: fd, path: stream)
    case .file(let target):
        try replaceFile(target, with: pieces, reportedAs: path)
    }
}

/// Where a write to a path goes.
@_spi(Benchmarking)
public enum WriteDestination: Equatable, Sendable {
    /// A regular file, new or existing, at this path (symbolic links resolved): written to a
    /// temporary file beside it, then renamed over it.
    case file(String)
    /// An existing character device or FIFO at this path: opened (``openStream(_:)``) and
    /// written into.
    case stream(String)
    /// This process's open descriptor (`/dev/stdout` is 1, `/dev/stderr` 2, `/dev/fd/N` and
    /// `/proc/self/fd/N` are N): written at its own offset, as a shell's `>` or `>>` left it.
    case descriptor(Int32)
}

/// Resolves `path` for writing, or throws ``AttentionError`` with code `.fileAccess` naming
/// the path and the reason: an empty path or one ending in `/`, a directory, a socket or block
/// device, a symbolic link to nothing, a descriptor that is not open, or a directory that is
/// missing or cannot be written. A symbolic link to a regular file resolves to that file, so
/// that replacing it keeps the link; a character device or FIFO (also through a link) is a
/// ``WriteDestination/stream(_:)``; a name for one of this process's descriptors (also
/// through a link) is a ``WriteDestination/descriptor(_:)``, so that `--output /dev/stdout
/// >> log` appends to the log rather than replacing it.
@_spi(Benchmarking)
public func writeDestination(_ path: String) throws -> WriteDestination {
    func failure(_ reason: String) -> AttentionError { AttentionError(.fileAccess, "cannot write \(path): \(reason)") }
    if path.isEmpty { throw failure("the path is empty") }
    if path.hasSuffix("/") { throw failure("the path ends in '/', so it names a directory, not a file") }
    if let fd = descriptorNamed(by: path) {
        let flags = fcntl(fd, F_GETFL)
        guard flags != -1 else { throw failure("descriptor \(fd) of this process is not open") }
        guard flags & O_ACCMODE != O_RDONLY else { throw failure("descriptor \(fd) of this process is open for reading only") }
        return .descriptor(fd)
    }
    var info = stat()
    var target = path
    if stat(path, &info) == 0 {                               // follows symbolic links
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            var link = stat()
            if lstat(path, &link) == 0 && (link.st_mode & S_IFMT) == S_IFLNK {
                guard let resolved = realpath(path, nil) else { throw failure(systemReason()) }
                target = String(cString: resolved)
                free(resolved)
            }
        case S_IFCHR, S_IFIFO:
            return .stream(path)
        case S_IFDIR:
            throw failure("it is a directory")
        default:
            throw failure("it is neither a regular file nor a character device or FIFO")
        }
    } else if errno == ENOENT || errno == ENOTDIR {              // a new file; its directory is checked below
        if lstat(path, &info) == 0 { throw failure("it is a symbolic link to a file that does not exist") }
    } else {
        throw failure(systemReason())
    }
    let parent = directoryPart(of: target)
    guard stat(parent, &info) == 0 else {
        throw failure("its directory \(parent) cannot be used: \(systemReason())")
    }
    guard (info.st_mode & S_IFMT) == S_IFDIR else { throw failure("\(parent) is not a directory") }
    guard access(parent, W_OK | X_OK) == 0 else {
        throw failure("no permission to create files in \(parent): \(systemReason())")
    }
    return .file(target)
}

/// The directory part of `path` as written: `.` for a bare name, `/` for a file at the root.
@_spi(Benchmarking)
public func directoryPart(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

/// The descriptor that `path` names in this process, following symbolic links by hand (at
/// most 40): a canonical decimal name (`1`, not `01`) in a directory that resolves to this
/// process's descriptor directory, `/proc/<pid>/fd` or a thread's `/proc/<pid>/task/<tid>/fd`
/// (so `/dev/fd/1`, `/proc/self/fd/1`, `/proc/thread-self/fd/1` and any spelling of them),
/// reached directly or through links such as `/dev/stdout`. Nil for anything else.
private func descriptorNamed(by path: String) -> Int32? {
    let own = "/proc/\(getpid())/"
    var current = path
    for _ in 0..<40 {
        let name = String(current[(current.lastIndex(of: "/").map { current.index(after: $0) } ?? current.startIndex)...])
        if let number = Int32(name), number >= 0, String(number) == name,
           let resolved = realpath(directoryPart(of: current), nil) {
            let directory = String(cString: resolved)
            free(resolved)
            if directory == own + "fd" || (directory.hasPrefix(own + "task/") && directory.hasSuffix("/fd")) {
                return number
            }
        }
        var info = stat()
        guard lstat(current, &info) == 0, (info.st_mode & S_IFMT) == S_IFLNK else { return nil }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink(current, &buffer, buffer.count - 1)
        guard length > 0 else { return nil }
        let target = String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        current = target.hasPrefix("/") ? target : directoryPart(of: current) + "/" + target
    }
    return nil
}

/// Opens the existing character device or FIFO at `path` for writing. A FIFO that no process
/// is reading is refused at once (the open is non-blocking, then the descriptor is made
/// blocking for the writes) rather than waiting for a reader.
@_spi(Benchmarking)
public func openStream(_ path: String) throws -> Int32 {
    let fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
    guard fd >= 0 else {
        var info = stat()
        let noReader = errno == ENXIO && stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFIFO
        let reason = noReader ? "no process has the FIFO open for reading" : systemReason()
        throw AttentionError(.fileAccess, "cannot write \(path): \(reason)")
    }
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
    return fd
}

/// Writes `pieces`, one after the other, into the open stream or descriptor `fd` (no
/// temporary file: what a stream has taken cannot be taken back); `path` names it in messages.
@_spi(Benchmarking)
public func writeOpenStream(_ pieces: [UnsafeRawBufferPointer], to fd: Int32, path: String) throws {
    if let failure = writeFully(fd, pieces) {
        throw AttentionError(.fileAccess, "cannot write \(path): \(failure)")
    }
}

/// Writes all of `pieces`, one after the other, to the open descriptor `fd`, retrying
/// interrupted and partial writes, and waiting (`poll`) when a non-blocking descriptor is
/// full, such as a pipe that a parent process shared with `O_NONBLOCK` set (the flag belongs
/// to the parent too, so it is left alone); returns the system's reason when a write fails,
/// nil when everything was written.
@_spi(Benchmarking)
public func writeFully(_ fd: Int32, _ pieces: [UnsafeRawBufferPointer]) -> String? {
    for piece in pieces {
        if let failure = writeFully(fd, piece) { return failure }
    }
    return nil
}

/// ``writeFully(_:_:)`` of one buffer.
private func writeFully(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> String? {
    var offset = 0
    while offset < bytes.count {
        let wrote = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
        if wrote < 0 {
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK {
                var ready = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&ready, 1, -1)
                continue
            }
            return systemReason()
        }
        offset += wrote
    }
    return nil
}

/// Writes `pieces` to a ``PendingFile`` beside the regular file `path` (new or existing),
/// flushes it, names it and renames it over `path`; on failure removes it and leaves `path`
/// as it was. Messages name `reported`, the path the caller gave.
private func replaceFile(_ path: String, with pieces: [UnsafeRawBufferPointer], reportedAs reported: String) throws {
    func failure(_ reason: String) -> AttentionError { AttentionError(.fileAccess, "cannot write \(reported): \(reason)") }
    var file: PendingFile
    do { file = try PendingFile(besides: path) } catch let reason as PendingFile.Failure { throw failure(reason.reason) }
    var renamed = false
    defer { if !renamed { file.discard() } }
    if let reason = file.write(pieces) ?? file.name() { throw failure(reason) }
    guard rename(file.temporary!, path) == 0 else { throw failure(systemReason()) }
    renamed = true
}

/// A file being written for a destination, which has no name until it is complete where the
/// system allows it: on Linux (x86-64 and arm64, with `/proc` mounted, on a file system
/// with unnamed files: ext4, XFS, Btrfs, tmpfs, not NFS), an unnamed file in the
/// destination's directory (`O_TMPFILE`), which the system removes by itself if the process
/// ends first (Ctrl-C, a kill, running out of memory), so an interrupted write leaves
/// nothing behind (``isUnnamed``). Elsewhere it is a temporary file with a hidden name
/// (``temporaryPath(besides:suffix:)``) from the start, which an interrupted write leaves
/// behind. Once written, the file has that hidden name (``name()`` gives an unnamed one its
/// name then), and the writer renames it over the destination.
///
/// Use: ``init(besides:)``, ``write(_:)``, ``name()``, then rename ``temporary`` into place;
/// ``discard()`` on every failure.
@_spi(Benchmarking)
public struct PendingFile {
    /// Why a pending file could not be created: the system's reason.
    public struct Failure: Error { public let reason: String }

    /// The destination this file will replace.
    public let destination: String
    /// The open descriptor, until ``name()`` closes it.
    private var fd: Int32?
    /// The hidden name beside the destination: set from the start for a named temporary file,
    /// by ``name()`` for an unnamed one; nil before that.
    public private(set) var temporary: String?
    /// Whether the file was created without a name (`O_TMPFILE`), so that it disappears by
    /// itself if the process ends before ``name()``.
    public private(set) var isUnnamed = false

    /// Creates the file for `destination` (a regular file's path, new or existing), writable
    /// and empty, with mode 0666 less the umask.
    ///
    /// - Throws: ``Failure`` when neither an unnamed nor a named file can be created there.
    public init(besides destination: String) throws {
        self.destination = destination
        #if os(Linux) && (arch(x86_64) || arch(arm64))
        // O_TMPFILE (not imported into Swift): __O_TMPFILE | O_DIRECTORY. The link that later
        // names the file goes through /proc/self/fd (naming a descriptor directly needs a
        // privilege), so without /proc the file is named from the start.
        let unnamedFile: Int32 = 0o20000000 | O_DIRECTORY
        if access("/proc/self/fd", X_OK) == 0, let umask = processUmask() {
            let fd = open(directoryPart(of: destination), unnamedFile | O_WRONLY | O_CLOEXEC, 0o666)
            if fd >= 0 {
                // Kernels before 6.0 left the umask off unnamed files on file systems without
                // POSIX ACLs (0666 where a named file gets 0644): applied here.
                var info = stat()
                let allowed = mode_t(0o666) & ~umask
                if fstat(fd, &info) == 0 && info.st_mode & 0o777 & ~allowed != 0 {
                    _ = fchmod(fd, info.st_mode & 0o777 & allowed)
                }
                self.fd = fd
                isUnnamed = true
                return
            }
            // The file system has no unnamed files (EOPNOTSUPP, or EISDIR from kernels before
            // 3.11), or the directory refuses new files, which the named file reports below.
        }
        #endif
        let name = temporaryPath(besides: destination, suffix: "tmp")
        let fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
        guard fd >= 0 else { throw Failure(reason: systemReason()) }
        self.fd = fd
        temporary = name
    }

    /// Writes `pieces` one after the other and flushes them to disk; returns the system's
    /// reason when that fails, nil when everything was written.
    public func write(_ pieces: [UnsafeRawBufferPointer]) -> String? {
        guard let fd else { return "the file is already closed" }
        return writeFully(fd, pieces) ?? (fsync(fd) == 0 ? nil : systemReason())
    }

    /// Gives the written file its hidden name beside the destination (``temporary``) and
    /// closes it; returns the system's reason when that fails, nil on success.
    public mutating func name() -> String? {
        guard let fd else { return "the file is already closed" }
        self.fd = nil
        if temporary == nil {
            let name = temporaryPath(besides: destination, suffix: "tmp")
            guard linkat(AT_FDCWD, "/proc/self/fd/\(fd)", AT_FDCWD, name, AT_SYMLINK_FOLLOW) == 0 else {
                let reason = systemReason()
                close(fd)
                return reason
            }
            temporary = name
        }
        return close(fd) == 0 ? nil : systemReason()
    }

    /// Closes the file if it is open and removes its name if it has one (an unnamed file then
    /// goes away by itself).
    public mutating func discard() {
        if let fd { close(fd) }
        fd = nil
        if let temporary { unlink(temporary) }
        temporary = nil
    }
}

/// This process's file mode creation mask, from `/proc/self/status` (Linux 4.7 and later;
/// `umask(2)` itself can only read it by changing it, which would race with other threads);
/// nil where it cannot be read.
private func processUmask() -> mode_t? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Umask:") }),
          let mask = mode_t(line.dropFirst("Umask:".count).trimmingCharacters(in: .whitespaces), radix: 8)
    else { return nil }
    return mask
}

/// A fresh name for a temporary file in the directory of `path`:
/// `.<name>.<pid>.<random>.<suffix>`, with `<name>` cut to its first 200 bytes (whole
/// characters), so that a destination whose name is near the 255-byte limit of a file name
/// still gets a temporary name within it. attention-bench names its temporaries and backups
/// with it too.
///
/// - Parameters:
///   - path: The destination.
///   - suffix: The last part of the name, at most 10 bytes (`tmp`, `old`).
@_spi(Benchmarking)
public func temporaryPath(besides path: String, suffix: String = "tmp") -> String {
    let slash = path.lastIndex(of: "/")
    let directory = slash.map { String(path[...$0]) } ?? ""
    var name = Substring(slash.map { String(path[path.index(after: $0)...]) } ?? path)
    while name.utf8.count > 200 { name = name.dropLast() }
    return "\(directory).\(name).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).\(suffix.prefix(10))"
}
