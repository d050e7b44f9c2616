import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What the header line says about the machine.
struct MachineInfo {
    var cores: Int
    var cpuModel: String?
    var openBLASConfig: String?
    var openBLASThreads: Int?
    var physicalMemory: Int?
    /// The 1-minute load average: other work on the machine skews the timings.
    var loadAverage: Double?

    static func current(cores: Int) -> MachineInfo {
        MachineInfo(cores: cores, cpuModel: cpuModel(), openBLASConfig: openBLASConfig(),
                    openBLASThreads: openBLASThreads(), physicalMemory: physicalMemory(),
                    loadAverage: loadAverage())
    }

    /// `model name` from /proc/cpuinfo (Linux only).
    private static func cpuModel() -> String? {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("model name") {
            if let colon = line.firstIndex(of: ":") {
                return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }

    /// OpenBLAS is linked into the process through AttentionKit, but the bench cannot import
    /// the CBLAS module (it is not one of its dependencies), so it looks the two query
    /// functions up by name.
    private static func symbol(_ name: String) -> UnsafeMutableRawPointer? {
        guard let handle = dlopen(nil, RTLD_NOW) else { return nil }
        return dlsym(handle, name)
    }

    private static func openBLASConfig() -> String? {
        typealias GetConfig = @convention(c) () -> UnsafePointer<CChar>?
        guard let pointer = symbol("openblas_get_config") else { return nil }
        let getConfig = unsafeBitCast(pointer, to: GetConfig.self)
        return getConfig().map { String(cString: $0).trimmingCharacters(in: .whitespaces) }
    }

    private static func openBLASThreads() -> Int? {
        typealias GetThreads = @convention(c) () -> Int32
        guard let pointer = symbol("openblas_get_num_threads") else { return nil }
        return Int(unsafeBitCast(pointer, to: GetThreads.self)())
    }

    private static func loadAverage() -> Double? {
        var loads = [Double](repeating: 0, count: 3)
        return getloadavg(&loads, 3) >= 1 ? loads[0] : nil
    }

    static func physicalMemory() -> Int? {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        return pages > 0 && size > 0 ? pages * size : nil
    }
}

/// Refuses, as a command-line error (status 64), work whose arrays would take more than half
/// the machine's physical memory (nothing is refused when the size of memory is unknown).
/// `bytes` is their size, nil when it overflows an Int; the message reads "`what` needs about
/// N GiB `purpose`; this machine has M GiB."
func checkHalfOfMemory(bytes: Int?, _ what: String, _ purpose: String) throws {
    guard let memory = MachineInfo.physicalMemory() else { return }
    guard let bytes, Double(bytes) <= Double(memory) / 2 else {
        let need = bytes.map { String(format: "about %.1f GiB", Double($0) / 1073741824) } ?? "more bytes than an Int counts"
        throw ValidationError("\(what) needs \(need) \(purpose); this machine has "
                              + String(format: "%.1f GiB.", Double(memory) / 1073741824))
    }
}

/// Progress on stderr, so stdout stays clean for csv and json. On a terminal each update
/// overwrites the last (carriage return + erase line); otherwise each is a plain line.
final class Progress {
    private let isTerminal = isatty(STDERR_FILENO) == 1
    private let quiet: Bool
    private var showing = false

    init(quiet: Bool) { self.quiet = quiet }

    func update(_ message: String) {
        guard !quiet else { return }
        if isTerminal {
            write("\r\u{1B}[2K" + message)
            showing = true
        } else {
            write(message + "\n")
        }
    }

    /// Erases the progress line on a terminal.
    func clear() {
        if showing { write("\r\u{1B}[2K") }
        showing = false
    }

    /// A line that stays (a note or the header in csv/json mode).
    func note(_ message: String) {
        clear()
        write(message + "\n")
    }

    private func write(_ text: String) {
        FileHandle.standardError.write(Data(text.utf8))
    }
}
