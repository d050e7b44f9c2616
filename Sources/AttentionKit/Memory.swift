import Foundation
#if canImport(Glibc)
import Glibc
#endif

// How much memory an allocation may ask for, checked before results, working buffers and
// tensors read from files are allocated: an allocation that cannot be satisfied traps in
// Swift (or, in a container, gets the process killed), and the caller gets no error to
// handle.
//
// Three ceilings apply, the lowest wins:
// - the machine's physical memory (beyond it, an allocation would swap the machine to a halt);
// - on Linux, the memory limit of the process's cgroup (a container's `--memory`, a systemd
//   `MemoryMax=`), where exceeding it has the kernel kill the process;
// - on Linux, what the process has left of its address-space and data limits (`ulimit -v`,
//   `ulimit -d`), where exceeding them makes the allocation fail.
//
// The limits are read once per process. Under `ulimit -v` or `-d`, what the process already
// uses is read at each check of 64 MiB or more (smaller allocations are not checked against
// those limits). The ceilings bound single allocations, not the process's total: an
// allocation below them can still fail when the rest of the memory is in use.

/// Throws `.sizeOverflow` when `count` elements of `type` would take more bytes than the
/// memory this process may use (see above). `what` names the allocation in the message.
func checkAllocation<T>(count: Int, of type: T.Type, _ what: @autoclosure () -> String) throws {
    let (bytes, overflow) = count.multipliedReportingOverflow(by: MemoryLayout<T>.stride)
    func need() -> String { overflow ? "more bytes than an Int can count" : formatBytes(Double(bytes)) }
    let ceiling = memoryCeiling
    guard !overflow, UInt64(bytes) <= ceiling.bytes else {
        throw AttentionError(.sizeOverflow, "\(what()) would need \(need()), more than \(ceiling.description)")
    }
    if bytes >= minimumCheckedAgainstLimits, let limit = processMemoryLimit(), UInt64(bytes) > limit.left {
        throw AttentionError(.sizeOverflow,
            "\(what()) would need \(need()), more than the \(formatBytes(Double(limit.left))) of memory "
            + "this process has left under its \(limit.name)")
    }
}

/// The smallest allocation checked against the address-space and data limits, 64 MiB: under
/// such a limit each check reads `/proc/self/statm` (9 µs here, more than a small attention
/// call's work), and what the check is for is the allocation that tiny inputs make huge.
let minimumCheckedAgainstLimits = 64 << 20

/// ``checkAllocation(count:of:_:)`` for a count computed with overflow reporting
/// (`addingReportingOverflow`, `multipliedReportingOverflow`): an overflowed count is too large.
func checkAllocation<T>(count: (partialValue: Int, overflow: Bool), of type: T.Type,
                        _ what: @autoclosure () -> String) throws {
    try checkAllocation(count: count.overflow ? .max : count.partialValue, of: type, what())
}

/// The lower of the machine's physical memory and its cgroup's memory limit, in bytes, with
/// the phrase that names it in messages; asked of the system once per process.
let memoryCeiling: (bytes: UInt64, description: String) = {
    let physical = ProcessInfo.processInfo.physicalMemory
    #if os(Linux)
    if let limit = cgroupMemoryLimit(
        processCgroups: (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? "",
        readFile: { try? String(contentsOfFile: $0, encoding: .utf8) }), limit < physical {
        return (limit, "the \(formatBytes(Double(limit))) memory limit of this process's cgroup")
    }
    #endif
    return (physical, "this machine's \(formatBytes(Double(physical))) of memory")
}()

/// The memory limit of the process's cgroup in bytes, or nil if none is set: the lowest
/// limit on the path from its cgroup up to the root, since each ancestor's limit also bounds
/// it (see ``memoryCgroups(processCgroups:)`` for where the limits are read).
///
/// - Parameters:
///   - processCgroups: The contents of `/proc/self/cgroup`.
///   - readFile: Reads a file's contents, nil if it cannot.
func cgroupMemoryLimit(processCgroups: String, readFile: (String) -> String?) -> UInt64? {
    var lowest: UInt64?
    for cgroup in memoryCgroups(processCgroups: processCgroups) {
        var path = cgroup.path
        while true {
            let text = readFile(([cgroup.root] + path + [cgroup.limitFile]).joined(separator: "/"))
            if let text, let value = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)),
               value < 1 << 62 {                                   // not "max", nor v1's "no limit"
                lowest = min(lowest ?? .max, value)
            }
            if path.isEmpty { break }
            path.removeLast()
        }
    }
    return lowest
}

/// The process's memory cgroups, from the lines of `/proc/self/cgroup`: cgroup v2 (`0::/path`),
/// whose limit is `memory.max` ("max" for none) under `/sys/fs/cgroup`, and cgroup v1's memory
/// hierarchy (`N:memory:/path`, also with other controllers in the list), whose limit is
/// `memory.limit_in_bytes` (a value near 2⁶³ for none) under `/sys/fs/cgroup/memory`.
/// Hierarchies mounted elsewhere are not found.
///
/// - Parameter processCgroups: The contents of `/proc/self/cgroup`.
/// - Returns: For each, the mount point, the cgroup's path below it as components, and the
///   name of its limit file.
func memoryCgroups(processCgroups: String) -> [(root: String, path: [String], limitFile: String)] {
    processCgroups.split(separator: "\n").compactMap { line in
        let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard fields.count == 3, fields[2].hasPrefix("/") else { return nil }
        let path = fields[2].split(separator: "/").map(String.init)
        if fields[0] == "0" && fields[1].isEmpty {
            return ("/sys/fs/cgroup", path, "memory.max")
        }
        if fields[1].split(separator: ",").contains("memory") {
            return ("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes")
        }
        return nil
    }
}

/// The tightest of the process's address-space and data limits (`RLIMIT_AS`, `RLIMIT_DATA`),
/// less what it already uses of each (`/proc/self/statm`), or nil without such limits (the
/// usual case, which then costs nothing). Linux only: elsewhere these limits are not
/// enforced on allocations, or not read here.
func processMemoryLimit() -> (left: UInt64, name: String)? {
    #if os(Linux) && canImport(Glibc)
    let (addressSpace, data) = resourceLimits
    guard addressSpace != nil || data != nil else { return nil }
    let statm = ((try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? "")
        .split(whereSeparator: \.isWhitespace).compactMap { UInt64($0) }         // pages; [] if unreadable
    return memoryLeft(addressSpace: addressSpace, data: data, statm: statm,
                      pageSize: UInt64(max(1, sysconf(Int32(_SC_PAGESIZE)))))
    #else
    return nil
    #endif
}

/// What is left under the address-space and data limits (bytes, nil for none), given the
/// fields of `/proc/self/statm` (in pages: size, resident, shared, text, lib, data): the
/// address space against `size`, the data limit against `data`, which also counts the main
/// thread's stack (up to 8 MiB) where the kernel counts only data, so that the result errs
/// low by that much. Nil when neither limit is set; 0 when one is used up.
func memoryLeft(addressSpace: UInt64?, data: UInt64?, statm: [UInt64], pageSize: UInt64)
    -> (left: UInt64, name: String)? {
    func left(_ cap: UInt64?, usedPagesAt field: Int) -> UInt64? {
        guard let cap else { return nil }
        let used = (field < statm.count ? statm[field] : 0).multipliedReportingOverflow(by: pageSize)
        return used.overflow || used.partialValue >= cap ? 0 : cap - used.partialValue
    }
    switch (left(addressSpace, usedPagesAt: 0), left(data, usedPagesAt: 5)) {
    case (nil, nil): return nil
    case let (a?, d?) where d < a: return (d, "data limit (ulimit -d)")
    case let (a?, _): return (a, "address-space limit (ulimit -v)")
    case let (nil, d?): return (d, "data limit (ulimit -d)")
    }
}

#if os(Linux) && canImport(Glibc)
/// The soft limits `RLIMIT_AS` and `RLIMIT_DATA` in bytes (nil for none), read once per
/// process: a `getrlimit` call took 0.4 µs here, and the two checks of an attention call
/// would have made four, about 8 % of a 20 µs call (B1 H1 L1 S64 D64). A limit the process
/// changes later is not seen.
private let resourceLimits: (addressSpace: UInt64?, data: UInt64?) = {
    func softLimit(_ resource: __rlimit_resource) -> UInt64? {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(resource.rawValue), &limit) == 0,
              limit.rlim_cur != rlim_t.max else { return nil }       // rlim_t.max: RLIM_INFINITY
        return UInt64(limit.rlim_cur)
    }
    return (softLimit(RLIMIT_AS), softLimit(RLIMIT_DATA))
}()
#endif

/// Bytes for messages: "8.0 TiB", "512.0 MiB".
func formatBytes(_ bytes: Double) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    var value = bytes, unit = 0
    while value >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
    return unit == 0 ? "\(Int(value)) bytes" : String(format: "%.1f %@", value, units[unit])
}
