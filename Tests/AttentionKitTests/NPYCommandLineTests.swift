// `attention-bench run`, end to end: the built executable is run on the .npy fixtures that
// make_npy_fixtures.py wrote, and its output and weights are compared with what NumPy
// computed in float64 (cli_expected_*.npy). Bad inputs must end with one line on stderr, a
// non-zero status and no file written.

@testable import AttentionKit
import Foundation
import Synchronization
import Testing

struct CommandResult {
    var status: Int32
    /// `.exit`, or `.uncaughtSignal` when `status` is the signal that ended the process.
    var reason: Process.TerminationReason
    var stdout: String
    var stderr: String
}

/// The attention-bench executable that `swift test` built next to the test bundle.
private func benchExecutable() throws -> URL {
    let products = Bundle.module.bundleURL.deletingLastPathComponent()
    let url = products.appendingPathComponent("attention-bench")
    guard FileManager.default.isExecutableFile(atPath: url.path) else {
        throw FixtureMissing(description: "attention-bench is not built at \(url.path); run `swift build` first")
    }
    return url
}

/// Runs attention-bench in `directory`; with `standardOutput`, its stdout goes there (such as
/// a file opened for appending, as a shell's `>>` would give it) and `stdout` is empty. With
/// `shellPrefix`, a shell command such as `ulimit -v 3000000` or one that moves the shell
/// into a cgroup, it runs through `/bin/sh` after that command, with OpenBLAS's pool at one
/// thread from the start (its threads reserve address space and memory).
private func runBench(_ arguments: [String], in directory: URL, standardOutput: FileHandle? = nil,
                      shellPrefix: String? = nil) throws -> CommandResult {
    let process = Process()
    var environment = ProcessInfo.processInfo.environment
    if let shellPrefix {
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "\(shellPrefix) && exec \"$0\" \"$@\"", try benchExecutable().path] + arguments
        environment["OPENBLAS_NUM_THREADS"] = "1"
    } else {
        process.executableURL = try benchExecutable()
        process.arguments = arguments
    }
    process.currentDirectoryURL = directory
    environment["ATTENTIONKIT_NUM_THREADS"] = "2"
    process.environment = environment
    let out = Pipe(), err = Pipe()
    process.standardOutput = standardOutput ?? out
    process.standardError = err
    try process.run()
    if standardOutput != nil { try out.fileHandleForWriting.close() }
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    let stderr = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return CommandResult(status: process.terminationStatus, reason: process.terminationReason,
                         stdout: String(decoding: stdout, as: UTF8.self),
                         stderr: String(decoding: stderr, as: UTF8.self))
}

/// A new child of this process's memory cgroup (v1 or v2) limited to `limit` bytes, or nil
/// where none can be made (not root, a read-only or absent hierarchy). Remove it with
/// `rmdir` once the processes run in it have exited.
private func makeMemoryCgroup(limit: UInt64) -> String? {
    let cgroups = (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? ""
    for cgroup in memoryCgroups(processCgroups: cgroups) {
        let directory = ([cgroup.root] + cgroup.path + ["attentionkit-test-\(UUID().uuidString)"]).joined(separator: "/")
        guard mkdir(directory, 0o755) == 0 else { continue }
        let file = "\(directory)/\(cgroup.limitFile)"
        if FileManager.default.fileExists(atPath: file),
           (try? "\(limit)\n".write(toFile: file, atomically: false, encoding: .utf8)) != nil {
            return directory
        }
        rmdir(directory)
    }
    return nil
}

/// q [1, 1, 40000, 0], k [1, 1, 25000, 0] and v [1, 1, 25000, 1] as q.npy, k.npy and v.npy
/// in `directory`: a few hundred bytes whose attention weights take `largeWeightsBytes`.
private func writeLargeWeightsInputs(in directory: URL) throws {
    try Tensor<Float>(shape: [1, 1, 40000, 0]).write(toNPY: directory.appendingPathComponent("q.npy"))
    try Tensor<Float>(shape: [1, 1, 25000, 0]).write(toNPY: directory.appendingPathComponent("k.npy"))
    try Tensor<Float>(shape: [1, 1, 25000, 1], repeating: 1).write(toNPY: directory.appendingPathComponent("v.npy"))
}

/// The bytes of the weights [1, 1, 40000, 25000] of ``writeLargeWeightsInputs(in:)``: 3.7 GiB.
private let largeWeightsBytes: UInt64 = 40000 * 25000 * 4

/// Whether this machine lets the tests make a memory cgroup (checked once).
private let memoryCgroupsAvailable: Bool = {
    guard let directory = makeMemoryCgroup(limit: 1 << 30) else { return false }
    rmdir(directory)
    return true
}()

private func fixture(_ name: String) throws -> String { try npyFixtureURL(name).path }

/// Inputs for the five NumPy cases, and the options that select each one.
private let commandCases: [(name: String, options: [String])] = [
    ("plain", []),
    ("causal_lower_right", ["--causal", "lower-right"]),
    ("mask", ["--mask", "cli_mask.npy"]),
    ("bias_scale", ["--bias", "cli_bias.npy", "--scale", "0.25"]),
    ("key_lengths", ["--key-lengths", "5,7"]),
]

@Suite("attention-bench run")
struct NPYCommandLineTests {
    @Test("output and weights match NumPy's float64 attention", arguments: commandCases.map(\.name))
    func matchesNumPy(caseName: String) throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let options = try commandCases.first { $0.name == caseName }!.options.map {
            $0.hasSuffix(".npy") ? try fixture($0) : $0
        }
        for kernel in ["naive", "blas"] {
            let result = try runBench(["run", "--query", try fixture("cli_q.npy"), "--key", try fixture("cli_k.npy"),
                                       "--value", try fixture("cli_v.npy")] + options
                                      + ["--kernel", kernel, "--output", "out.npy", "--weights", "w.npy"], in: directory)
            #expect(result.status == 0, "\(caseName) \(kernel): status \(result.status), stderr \(result.stderr)")
            #expect(result.stdout.contains("[2, 4, 5, 6]") && result.stdout.contains("[2, 4, 5, 7]")
                    && result.stdout.contains(" ms"), "\(result.stdout)")
            let output = try Tensor<Float>(contentsOfNPY: directory.appendingPathComponent("out.npy"))
            let weights = try Tensor<Float>(contentsOfNPY: directory.appendingPathComponent("w.npy"))
            let wantOutput = try Tensor<Float>(contentsOfNPY: try npyFixtureURL("cli_expected_\(caseName).npy"))
            let wantWeights = try Tensor<Float>(contentsOfNPY: try npyFixtureURL("cli_expected_\(caseName)_weights.npy"))
            // The expected files hold float64 results rounded to float32 on reading (≤ 6e-8 relative).
            let value = try Tensor<Float>(contentsOfNPY: try npyFixtureURL("cli_v.npy"))
            assertClose(output, wantOutput.scalars.map(Double.init), shape: [2, 4, 5, 6],
                        absolute: outputTolerance(value), "\(caseName) \(kernel) output")
            assertClose(weights, wantWeights.scalars.map(Double.init), shape: [2, 4, 5, 7],
                        absolute: 2e-5, "\(caseName) \(kernel) weights")
        }
    }

    @Test("--heatmap draws one head's weights as SVG cells")
    func heatmap() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let result = try runBench(["run", "--query", try fixture("cli_q.npy"), "--key", try fixture("cli_k.npy"),
                                   "--value", try fixture("cli_v.npy"), "--causal", "upper-left", "--output", "out.npy",
                                   "--weights", "w.npy", "--heatmap", "w.svg", "--heatmap-batch", "1",
                                   "--heatmap-head", "3"], in: directory)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("batch 1, head 3, 5×7 cells"), "\(result.stdout)")
        let weights = try Tensor<Float>(contentsOfNPY: directory.appendingPathComponent("w.npy"))
        let svg = try parseSVG(Data(contentsOf: directory.appendingPathComponent("w.svg")))
        #expect(svg.cells.count == 35)
        for cell in svg.cells {
            let want = weights.scalars[((1 * 4 + 3) * 5 + Int(cell.query)!) * 7 + Int(cell.key)!]
            #expect(cell.weight == want, "\(cell)")
            if Int(cell.key)! > Int(cell.query)! { #expect(cell.weight == 0) }
        }
    }

    @Test("the guide's attention-bench heatmap is what the documented command draws")
    func guideImage() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let result = try runBench(["run", "--query", try fixture("cli_q.npy"), "--key", try fixture("cli_k.npy"),
                                   "--value", try fixture("cli_v.npy"), "--mask", try fixture("cli_mask.npy"),
                                   "--output", "out.npy", "--heatmap", "bench-run-mask.svg",
                                   "--heatmap-title", "attention-bench run with a boolean mask"], in: directory)
        #expect(result.status == 0, "\(result.stderr)")
        let fresh = try parseSVG(Data(contentsOf: directory.appendingPathComponent("bench-run-mask.svg")))
        let committed = try parseSVG(Data(contentsOf: URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources/AttentionKit/AttentionKit.docc/Resources/bench-run-mask.svg")))
        #expect(fresh.cells.count == 4 * 35 && committed.cells.count == fresh.cells.count)
        for (a, b) in zip(committed.cells, fresh.cells) {
            #expect(a.query == b.query && a.key == b.key && abs(a.weight - b.weight) <= 1e-5, "\(a) vs \(b)")
        }
        #expect(committed.texts == fresh.texts)
    }

    @Test("bad inputs: one line on stderr, non-zero status, nothing written")
    func badInputs() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        // An output from an earlier run must survive a failed one untouched.
        try Data("earlier".utf8).write(to: directory.appendingPathComponent("out.npy"))
        let q = try fixture("cli_q.npy"), k = try fixture("cli_k.npy"), v = try fixture("cli_v.npy")
        let outputs = ["--output", "out.npy", "--weights", "w.npy", "--heatmap", "w.svg"]
        let cases: [(String, [String], String)] = [
            ("missing file", ["--query", "missing.npy", "--key", k, "--value", v] + outputs, "No such file"),
            ("unsupported dtype", ["--query", try fixture("i4.npy"), "--key", k, "--value", v] + outputs,
             "'<i4' (int32) is not supported; AttentionKit reads '<f4' (float32), '<f8' (float64, converted to float32) and '|b1' "
             + "(bool); --query takes float32 or float64 (numpy: x.astype(numpy.float32))"),
            ("unsupported mask dtype", ["--query", q, "--key", k, "--value", v, "--mask", try fixture("i4.npy")] + outputs,
             "--mask takes a bool array (numpy: m.astype(bool))"),
            ("Fortran order", ["--query", try fixture("f4_fortran.npy"), "--key", k, "--value", v] + outputs, "Fortran"),
            ("zip archive as mask", ["--query", q, "--key", k, "--value", v, "--mask", try fixture("archive.npz")] + outputs, "--mask: "),
            ("Dk mismatch", ["--query", q, "--key", v, "--value", v] + outputs, "query Dk 8 does not match key Dk 6"),
            ("mask shape", ["--query", q, "--key", k, "--value", v, "--mask", try fixture("b1_rank2.npy")] + outputs,
             "does not broadcast"),
            ("float mask", ["--query", q, "--key", k, "--value", v, "--mask", try fixture("cli_bias.npy")] + outputs,
             "--mask: the file holds a float array; pass it with --bias"),
            ("boolean bias", ["--query", q, "--key", k, "--value", v, "--bias", try fixture("cli_mask.npy")] + outputs,
             "--bias: the file holds a boolean array; pass it with --mask"),
            ("key lengths text", ["--query", q, "--key", k, "--value", v, "--key-lengths", "5,x"] + outputs, "'5,x'"),
            ("key lengths count", ["--query", q, "--key", k, "--value", v, "--key-lengths", "5"] + outputs, "batch size is 2"),
            ("scale", ["--query", q, "--key", k, "--value", v, "--scale", "nan"] + outputs, "--scale must be a finite float32 number"),
            ("heatmap head", ["--query", q, "--key", k, "--value", v, "--heatmap-head", "4"] + outputs, "head 4 is outside 0..<4"),
            ("same file twice", ["--query", q, "--key", k, "--value", v, "--output", "x.npy", "--weights", "./x.npy"],
             "name the same file"),
            ("missing directory", ["--query", q, "--key", k, "--value", v, "--weights", "w.npy", "--output",
                                   directory.appendingPathComponent("none/out.npy").path], "cannot write"),
            // Destinations are checked before the inputs are read, the heatmap's head before
            // the computation (which would refuse the mask).
            ("missing directory, missing input", ["--query", "missing.npy", "--key", k, "--value", v, "--output",
                                                  directory.appendingPathComponent("none/out.npy").path], "cannot write"),
            ("heatmap head, then mask shape", ["--query", q, "--key", k, "--value", v, "--mask", try fixture("b1_rank2.npy"),
                                               "--heatmap-head", "4"] + outputs, "head 4 is outside 0..<4"),
            // Two outputs into one pipe (the test's stdout) would run together.
            ("stdout twice", ["--query", q, "--key", k, "--value", v, "--output", "/dev/stdout", "--weights", "/dev/stdout"],
             "--output and --weights name the same file /dev/stdout"),
            // Command-line errors: one line too, not ArgumentParser's help and usage after it.
            ("unknown option", ["--query", q, "--key", k, "--value", v, "--bogus"] + outputs, "Unknown option '--bogus'"),
            ("missing option", ["--query", q, "--value", v] + outputs, "Missing expected argument '--key <k.npy>'"),
            ("unknown kernel", ["--query", q, "--key", k, "--value", v, "--kernel", "fast"] + outputs, "'fast'"),
            ("negative key length", ["--query", q, "--key", k, "--value", v, "--key-lengths", "-1"] + outputs,
             "The value '-1' is invalid for '--key-lengths <5,7>': expected comma-separated non-negative integers such as 5,7"),
            // A negative count is the value (its range message), not a missing value.
            ("negative threads", ["--query", q, "--key", k, "--value", v, "--threads", "-1"] + outputs,
             "--threads must be at least 1, got -1"),
            ("heatmap cells", ["--query", q, "--key", k, "--value", v, "--heatmap-cells", "0"] + outputs,
             "--heatmap-cells must be at least 1, got 0"),
        ]
        for (name, arguments, phrase) in cases {
            let result = try runBench(["run"] + arguments, in: directory)
            let lines = result.stderr.split(separator: "\n")
            #expect(result.status != 0, "\(name): status 0")
            #expect(lines.count == 1, "\(name): stderr has \(lines.count) lines: \(result.stderr)")
            #expect(result.stderr.contains(phrase), "\(name): '\(result.stderr)' lacks '\(phrase)'")
            let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            #expect(names == ["out.npy"], "\(name): left \(names)")
            #expect(try Data(contentsOf: directory.appendingPathComponent("out.npy")) == Data("earlier".utf8))
        }
    }

    @Test("a destination that cannot be written stops the run before any file is written",
          arguments: [false, true])
    func unwritableDestination(earlierOutput: Bool) throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let manager = FileManager.default
        try manager.createDirectory(at: directory.appendingPathComponent("adir"), withIntermediateDirectories: false)
        try Data("a file".utf8).write(to: directory.appendingPathComponent("afile"))
        let earlier = Data("earlier".utf8)
        if earlierOutput { try earlier.write(to: directory.appendingPathComponent("out.npy")) }
        let inputs = ["run", "--query", try fixture("cli_q.npy"), "--key", try fixture("cli_k.npy"),
                      "--value", try fixture("cli_v.npy"), "--output", "out.npy"]
        // Each bad destination comes after --output, whose file would be renamed into place first.
        let cases: [(String, [String], String)] = [
            ("weights onto a directory", ["--weights", "adir"], "cannot write adir: it is a directory"),
            ("heatmap onto a directory", ["--weights", "w.npy", "--heatmap", "adir"], "it is a directory"),
            ("trailing slash", ["--heatmap", "adir/"], "ends in '/'"),
            ("trailing slash, no such directory", ["--heatmap", "bdir/"], "ends in '/'"),
            ("parent is a file", ["--weights", "afile/w.npy"], "is not a directory"),
            ("parent missing", ["--weights", "w.npy", "--heatmap", "none/w.svg"], "none"),
        ]
        for (name, options, phrase) in cases {
            let result = try runBench(inputs + options, in: directory)
            #expect(result.status != 0, "\(name): status 0")
            #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.contains(phrase),
                    "\(name): '\(result.stderr)' lacks '\(phrase)'")
            let names = try manager.contentsOfDirectory(atPath: directory.path).sorted()
            #expect(names == (earlierOutput ? ["adir", "afile", "out.npy"] : ["adir", "afile"]), "\(name): left \(names)")
            if earlierOutput {
                #expect(try Data(contentsOf: directory.appendingPathComponent("out.npy")) == earlier, "\(name): out.npy changed")
            }
            #expect(try manager.contentsOfDirectory(atPath: directory.appendingPathComponent("adir").path).isEmpty)
        }
    }

    /// Repeated --mask options all apply (the last one does not replace the others); key
    /// lengths for a batch of 0 are ""; an output file that is one of the inputs is refused.
    @Test("repeated masks combine; empty key lengths; an output onto an input is refused")
    func repeatedMasksAndInputsAsOutputs() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let q = try fixture("cli_q.npy"), k = try fixture("cli_k.npy"), v = try fixture("cli_v.npy")
        // cli_mask first, then a mask that allows everything: the result is the mask case's.
        try Tensor<Bool>(shape: [1], scalars: [true]).write(toNPY: directory.appendingPathComponent("all.npy"))
        let masked = try runBench(["run", "--query", q, "--key", k, "--value", v, "--mask", try fixture("cli_mask.npy"),
                                   "--mask", "all.npy", "--output", "out.npy"], in: directory)
        #expect(masked.status == 0, "\(masked.stderr)")
        let output = try Tensor<Float>(contentsOfNPY: directory.appendingPathComponent("out.npy"))
        let want = try Tensor<Float>(contentsOfNPY: try npyFixtureURL("cli_expected_mask.npy"))
        assertClose(output, want.scalars.map(Double.init), shape: [2, 4, 5, 6],
                    absolute: outputTolerance(try Tensor<Float>(contentsOfNPY: URL(fileURLWithPath: v))), "two masks")

        // A batch of 0 takes no key lengths.
        try Tensor<Float>(shape: [0, 2, 3, 4], repeating: 0).write(toNPY: directory.appendingPathComponent("q0.npy"))
        try Tensor<Float>(shape: [0, 2, 5, 4], repeating: 0).write(toNPY: directory.appendingPathComponent("k0.npy"))
        let empty = try runBench(["run", "--query", "q0.npy", "--key", "k0.npy", "--value", "k0.npy", "--key-lengths", "",
                                  "--output", "o0.npy"], in: directory)
        #expect(empty.status == 0, "\(empty.stderr)")
        #expect(try Tensor<Float>(contentsOfNPY: directory.appendingPathComponent("o0.npy")).shape == [0, 2, 3, 4])

        // The query file as --output, and as --weights under another spelling: refused, unchanged.
        let before = try Data(contentsOf: directory.appendingPathComponent("q0.npy"))
        for outputs in [["--output", "q0.npy"], ["--output", "o1.npy", "--weights", "./q0.npy"]] {
            let result = try runBench(["run", "--query", "q0.npy", "--key", "k0.npy", "--value", "k0.npy"] + outputs, in: directory)
            #expect(result.status == 1 && result.stderr.contains("is the --query input file"), "\(outputs): \(result.stderr)")
            #expect(try Data(contentsOf: directory.appendingPathComponent("q0.npy")) == before)
            #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("o1.npy").path))
        }
        let asMask = try runBench(["run", "--query", q, "--key", k, "--value", v, "--mask", "all.npy", "--output", "all.npy"],
                                  in: directory)
        #expect(asMask.status == 1 && asMask.stderr.contains("is the --mask input file"), "\(asMask.stderr)")
        // A hard link to the query is another name: replacing it keeps the query file.
        #expect(link(directory.appendingPathComponent("q0.npy").path, directory.appendingPathComponent("qlink.npy").path) == 0)
        let linked = try runBench(["run", "--query", "q0.npy", "--key", "k0.npy", "--value", "k0.npy", "--output", "qlink.npy"],
                                  in: directory)
        #expect(linked.status == 0, "\(linked.stderr)")
        #expect(try Data(contentsOf: directory.appendingPathComponent("q0.npy")) == before)
    }

    @Test("--help prints the full help and exits 0; it is not an error")
    func help() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        for arguments in [["run", "--help"], ["help", "run"]] {
            let result = try runBench(arguments, in: directory)
            #expect(result.status == 0, "\(arguments): status \(result.status), \(result.stderr)")
            #expect(result.stderr.isEmpty, "\(arguments): \(result.stderr)")
            #expect(result.stdout.contains("USAGE: attention-bench run") && result.stdout.contains("--heatmap-cells")
                    && result.stdout.split(separator: "\n").count > 20, "\(arguments): \(result.stdout)")
        }
    }

    @Test("the heatmap of a grouped-query run labels each head with its key/value head")
    func groupedQueryHeadLabels() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        // cli_q has Hq = 4 heads, cli_k Hkv = 2: heads 0 and 1 share kv head 0, heads 2 and 3 kv head 1.
        let result = try runBench(["run", "--query", try fixture("cli_q.npy"), "--key", try fixture("cli_k.npy"),
                                   "--value", try fixture("cli_v.npy"), "--output", "out.npy", "--heatmap", "w.svg"],
                                  in: directory)
        #expect(result.status == 0, "\(result.stderr)")
        let svg = try parseSVG(Data(contentsOf: directory.appendingPathComponent("w.svg")))
        for label in ["head 0 · kv 0", "head 1 · kv 0", "head 2 · kv 1", "head 3 · kv 1"] {
            #expect(svg.texts.contains(label), "\(label) missing: \(svg.texts)")
        }
        // One head asked for: no grid, no labels of that kind.
        let single = try runBench(["run", "--query", try fixture("cli_q.npy"), "--key", try fixture("cli_k.npy"),
                                   "--value", try fixture("cli_v.npy"), "--output", "out.npy", "--heatmap", "h.svg",
                                   "--heatmap-head", "2"], in: directory)
        #expect(single.status == 0, "\(single.stderr)")
        let one = try parseSVG(Data(contentsOf: directory.appendingPathComponent("h.svg")))
        #expect(!one.texts.contains { $0.contains("· kv") })
    }

    /// Destinations that are not plain files: a symbolic link keeps pointing where it did and
    /// its target gets the file; a character device (`/dev/null`) or a FIFO is written into,
    /// never replaced by a regular file; two spellings of one file are refused; a link to
    /// nothing is refused. A negative `--scale` is a value, not an option.
    @Test("symbolic links, devices, FIFOs and negative scales")
    func specialDestinations() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let manager = FileManager.default
        let inputs = ["run", "--query", try fixture("cli_q.npy"), "--key", try fixture("cli_k.npy"),
                      "--value", try fixture("cli_v.npy")]
        func isKind(_ path: String, _ kind: mode_t) -> Bool {
            var info = stat()
            return lstat(path, &info) == 0 && (info.st_mode & S_IFMT) == kind
        }

        // A link to an existing file, and /dev/null.
        try Data("old".utf8).write(to: directory.appendingPathComponent("real.npy"))
        try manager.createSymbolicLink(atPath: directory.appendingPathComponent("link.npy").path, withDestinationPath: "real.npy")
        let linked = try runBench(inputs + ["--output", "link.npy", "--weights", "/dev/null", "--scale", "-0.125"], in: directory)
        #expect(linked.status == 0, "\(linked.stderr)")
        #expect(isKind(directory.appendingPathComponent("link.npy").path, S_IFLNK), "the link was replaced")
        let written = try Tensor<Float>(contentsOfNPY: directory.appendingPathComponent("real.npy"))
        #expect(written.shape == [2, 4, 5, 6], "\(written.shape)")
        #expect(isKind("/dev/null", S_IFCHR), "/dev/null is no longer a device")
        // The negative scale was used: the output differs from the default scale's.
        let plain = try runBench(inputs + ["--output", "plain.npy"], in: directory)
        #expect(plain.status == 0, "\(plain.stderr)")
        #expect(try Tensor<Float>(contentsOfNPY: directory.appendingPathComponent("plain.npy")) != written)

        // A FIFO: a reader gets the whole file and the FIFO stays a FIFO.
        let fifo = directory.appendingPathComponent("pipe").path
        #expect(mkfifo(fifo, 0o600) == 0)
        let received = Mutex<Data?>(nil)
        let reader = Thread { received.withLock { $0 = FileHandle(forReadingAtPath: fifo)?.readDataToEndOfFile() } }
        reader.start()
        let piped = try runBench(inputs + ["--output", "out.npy", "--weights", "pipe"], in: directory)
        #expect(piped.status == 0, "\(piped.stderr)")
        var waited = 0
        while received.withLock({ $0 == nil }) && waited < 500 { usleep(10_000); waited += 1 }
        let bytes = received.withLock { $0 } ?? Data()
        let weightsFile = directory.appendingPathComponent("weights-from-pipe.npy")
        try bytes.write(to: weightsFile)
        #expect(try Tensor<Float>(contentsOfNPY: weightsFile).shape == [2, 4, 5, 7])
        #expect(isKind(fifo, S_IFIFO), "the FIFO was replaced")

        // /dev/stdout is this process's descriptor 1: with stdout appending to a log (a shell's
        // `>>`), the .npy is appended after the log's line, and the log stays the same file.
        let log = directory.appendingPathComponent("log.txt")
        try Data("line1\n".utf8).write(to: log)
        var before = stat()
        #expect(stat(log.path, &before) == 0)
        let appending = try FileHandle(forWritingTo: log)
        try appending.seekToEnd()
        let toStdout = try runBench(inputs + ["--output", "/dev/stdout"], in: directory, standardOutput: appending)
        try appending.close()
        #expect(toStdout.status == 0, "\(toStdout.stderr)")
        let logged = try Data(contentsOf: log)
        #expect(logged.starts(with: Data("line1\n".utf8) + [0x93] + Data("NUMPY".utf8)), "\(logged.prefix(16).map { $0 })")
        var after = stat()
        #expect(stat(log.path, &after) == 0 && after.st_ino == before.st_ino, "the log was replaced")

        // Other spellings of descriptor 1 append too; a non-canonical number is not one.
        for spelling in ["/dev//fd/1", "/proc/self/./fd/1", "/proc/thread-self/fd/1"] {
            let size = try Data(contentsOf: log).count
            let handle = try FileHandle(forWritingTo: log)
            try handle.seekToEnd()
            let result = try runBench(inputs + ["--output", spelling], in: directory, standardOutput: handle)
            try handle.close()
            var now = stat()
            let grew = try Data(contentsOf: log).count > size
            #expect(result.status == 0 && stat(log.path, &now) == 0 && now.st_ino == before.st_ino && grew,
                    "\(spelling): \(result.stderr)")
        }
        // stdout redirected onto another output's file is the same file.
        let target = directory.appendingPathComponent("both.npy")
        try Data().write(to: target)
        let sameHandle = try FileHandle(forWritingTo: target)
        let same = try runBench(inputs + ["--output", "/dev/stdout", "--weights", "both.npy"], in: directory, standardOutput: sameHandle)
        try sameHandle.close()
        #expect(same.status != 0 && same.stderr.contains("name the same file"), "\(same.stderr)")

        // A reader that has gone: the write fails with EPIPE (not SIGPIPE), the renames are
        // undone and no backup is left.
        let closed = Pipe()
        try closed.fileHandleForReading.close()
        let beforePipe = try Data(contentsOf: directory.appendingPathComponent("out.npy"))
        let broken = try runBench(inputs + ["--output", "out.npy", "--weights", "/dev/stdout"], in: directory,
                                  standardOutput: closed.fileHandleForWriting)
        #expect(broken.status == 1 && broken.stderr.contains("Broken pipe"), "status \(broken.status): \(broken.stderr)")
        #expect(try Data(contentsOf: directory.appendingPathComponent("out.npy")) == beforePipe)
        #expect(try !manager.contentsOfDirectory(atPath: directory.path).contains { $0.hasPrefix(".") }, "left a temporary or backup")

        // A FIFO that nobody reads: refused at once, before any file is replaced.
        let earlier = try Data(contentsOf: directory.appendingPathComponent("out.npy"))
        let unread = try runBench(inputs + ["--output", "out.npy", "--weights", "pipe"], in: directory)
        #expect(unread.status != 0 && unread.stderr.contains("no process has the FIFO open for reading"), "\(unread.stderr)")
        #expect(try Data(contentsOf: directory.appendingPathComponent("out.npy")) == earlier)

        // Refused: one file under two names (through a linked directory), and a link to nothing.
        try manager.createDirectory(at: directory.appendingPathComponent("other/sub/da"), withIntermediateDirectories: true)
        try manager.createSymbolicLink(atPath: directory.appendingPathComponent("da").path, withDestinationPath: "other/sub/da")
        try manager.createSymbolicLink(atPath: directory.appendingPathComponent("db").path, withDestinationPath: "other/sub/da")
        try manager.createSymbolicLink(atPath: directory.appendingPathComponent("dangling.npy").path, withDestinationPath: "nowhere/x.npy")
        for (name, options, phrase) in [
            ("same file through a linked directory", ["--output", "da/o.npy", "--weights", "db/o.npy"], "name the same file"),
            // `..` after a link is the link target's parent, as the kernel resolves it.
            ("new file beside a linked directory", ["--output", "db/../x.npy", "--weights", "other/sub/x.npy"], "name the same file"),
            ("link to nothing", ["--output", "dangling.npy"], "symbolic link to a file that does not exist"),
        ] {
            let result = try runBench(inputs + options, in: directory)
            #expect(result.status != 0 && result.stderr.split(separator: "\n").count == 1 && result.stderr.contains(phrase),
                    "\(name): status \(result.status), '\(result.stderr)'")
        }
        #expect(try manager.contentsOfDirectory(atPath: directory.appendingPathComponent("other/sub/da").path).isEmpty)
        #expect(!manager.fileExists(atPath: directory.appendingPathComponent("other/sub/x.npy").path))
        // Two files that only look alike: db/../y.npy is other/sub/y.npy, not ./y.npy.
        let distinct = try runBench(inputs + ["--output", "db/../y.npy", "--weights", "y.npy"], in: directory)
        #expect(distinct.status == 0, "\(distinct.stderr)")
        #expect(try Tensor<Float>(contentsOfNPY: directory.appendingPathComponent("other/sub/y.npy")).shape == [2, 4, 5, 6])
        #expect(try Tensor<Float>(contentsOfNPY: directory.appendingPathComponent("y.npy")).shape == [2, 4, 5, 7])
    }

    /// A parent that shares its stdout pipe with O_NONBLOCK set: the writes wait for the
    /// reader instead of failing with EAGAIN once the pipe is full (2 MiB of weights here).
    @Test("a non-blocking stdout pipe gets the whole file")
    func nonBlockingStdout() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let q = gridTensor([1, 8, 256, 16], seed: 71), k = gridTensor([1, 8, 256, 16], seed: 72)
        try q.write(toNPY: directory.appendingPathComponent("q.npy"))
        try k.write(toNPY: directory.appendingPathComponent("k.npy"))
        let pipe = Pipe()
        let fd = pipe.fileHandleForWriting.fileDescriptor
        #expect(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0)
        let received = Mutex<Data?>(nil)
        let reader = Thread {
            usleep(300_000)                                        // let the pipe fill first
            received.withLock { $0 = pipe.fileHandleForReading.readDataToEndOfFile() }
        }
        reader.start()
        let result = try runBench(["run", "--query", "q.npy", "--key", "k.npy", "--value", "k.npy",
                                   "--output", "o.npy", "--weights", "/dev/stdout"], in: directory,
                                  standardOutput: pipe.fileHandleForWriting)
        try pipe.fileHandleForWriting.close()
        #expect(result.status == 0, "\(result.stderr)")
        var waited = 0
        while received.withLock({ $0 == nil }) && waited < 1000 { usleep(10_000); waited += 1 }
        let bytes = received.withLock { $0 } ?? Data()
        // stdout carries the .npy alone (the report went to stderr), so it parses exactly.
        #expect(try Tensor<Float>(npyData: bytes).shape == [1, 8, 256, 256])
        #expect(result.stderr.contains("weights /dev/stdout"), "\(result.stderr)")
    }

    @Test("attention-bench with no subcommand still runs the suite with its options")
    func defaultSubcommand() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let result = try runBench(["--batch", "1", "--heads", "2", "--query-length", "9", "--dim", "4",
                                   "--kernels", "naive,blas", "--repetitions", "1", "--format", "csv", "--quiet"],
                                  in: directory)
        #expect(result.status == 0, "\(result.stderr)")
        let rows = result.stdout.split(separator: "\n")
        #expect(rows.first?.hasPrefix("shape,dims,batch") == true && rows.count == 3, "\(result.stdout)")
    }

    /// A negative number is an option's value, so it gets the option's range message.
    @Test("negative numbers reach the suite's and the layer's range checks")
    func negativeNumbers() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        for (arguments, phrase) in [(["--threads", "-1"], "--threads must be at least 1, got -1"),
                                    (["--batch", "-2"], "--batch must be at least 1, got -2"),
                                    (["--tolerance", "-1"], "--tolerance must be zero or more"),
                                    (["layer", "--tokens", "-5"], "--tokens must be at least 1, got -5")] {
            let result = try runBench(arguments, in: directory)
            #expect(result.status != 0 && result.stderr.contains(phrase), "\(arguments): \(result.stderr)")
        }
        // In run too, a range error is a malformed command line: status 64, one line.
        let run = try runBench(["run", "--query", "q.npy", "--key", "k.npy", "--value", "v.npy", "--output", "o.npy",
                                "--threads", "-1"], in: directory)
        #expect(run.status == 64 && run.stderr.split(separator: "\n").count == 1
                && run.stderr.contains("--threads must be at least 1, got -1"), "status \(run.status): \(run.stderr)")
    }

    /// Every option value the command cannot use is a malformed command line (status 64,
    /// one line), refused before any file is read or anything is timed, in each subcommand.
    @Test("out-of-range and malformed option values exit 64 with one line, in run, the suite and layer")
    func malformedOptionValues() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let files = ["run", "--query", "q.npy", "--key", "k.npy", "--value", "v.npy", "--output", "o.npy"]
        let cases: [([String], String)] = [
            (files + ["--key-lengths", "abc"], "The value 'abc' is invalid for '--key-lengths <5,7>': expected comma-separated"),
            (files + ["--key-lengths", "3,-1"], "The value '3,-1' is invalid for '--key-lengths <5,7>': expected comma-separated"),
            (files + ["--threads", "5000"], "--threads must be at most 4096, got 5000"),
            (files + ["--scale", "nan"], "--scale must be a finite float32 number (magnitude at most 3.4e38), got nan"),
            (files + ["--scale", "1e39"], "--scale must be a finite float32 number (magnitude at most 3.4e38), got inf"),
            (files + ["--heatmap-cells", "4"], "--heatmap-cells applies to the heatmap; add --heatmap <w.svg>"),
            (files + ["--heatmap-title", "t"], "--heatmap-title applies to the heatmap"),
            (["--sweep", "8", "--sweep-output", ""], "--sweep-output must end in a file name prefix"),
            (["--sweep", "8", "--sweep-output", "results/"], "--sweep-output must end in a file name prefix"),
            (["layer", "--workload", "generate", "--breakdown"], "--breakdown times the forward pass's parts"),
            (["layer", "--workload", "bandwidth", "--repetitions", "1"], "--repetitions applies to forward and generate"),
            (["layer", "--threads", "5000"], "--threads must be at most 4096"),
            (["layer", "--workload", "generate", "--tokens", "9223372036854775807"], "--tokens 9223372036854775807 needs"),
            (["layer", "--workload", "generate", "--tokens", "4503599627370496"], "of memory"),
            (["--sweep", "8,16", "--kernels", "naive"], "--kernels naive leaves nothing to plot"),
            (["--sweep", "8,16", "--query-length", "4"], "--sweep sets the query and key lengths"),
        ]
        for (arguments, phrase) in cases {
            let result = try runBench(arguments, in: directory)
            #expect(result.status == 64 && result.stderr.split(separator: "\n").count == 1 && result.stderr.contains(phrase),
                    "\(arguments): status \(result.status): \(result.stderr)")
        }
    }

    /// Output names up to the 255-byte limit of a file name are written, and replaced (the
    /// temporary and backup names are cut to fit), leaving nothing else behind.
    @Test("outputs with 255-byte names are written and replaced")
    func longOutputNames() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let output = String(repeating: "o", count: 251) + ".npy", weights = "w" + String(repeating: "é", count: 125) + ".npy"
        #expect(output.utf8.count == 255 && weights.utf8.count == 255)
        for round in 0..<2 {                                     // new files, then replacing them
            let result = try runBench(["run", "--query", try fixture("cli_q.npy"), "--key", try fixture("cli_k.npy"),
                                       "--value", try fixture("cli_v.npy"), "--output", output, "--weights", weights],
                                      in: directory)
            #expect(result.status == 0, "round \(round): \(result.stderr)")
            #expect(try Tensor<Float>(contentsOfNPY: directory.appendingPathComponent(output)).shape == [2, 4, 5, 6])
            #expect(try Tensor<Float>(contentsOfNPY: directory.appendingPathComponent(weights)).shape == [2, 4, 5, 7])
            let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
            #expect(names == [output, weights].sorted(), "left behind: \(names)")
        }
    }

    #if os(Linux) && canImport(Glibc)
    /// Under `ulimit -v` or `ulimit -d` an allocation that fits the machine's memory but not
    /// what the process has left of its limit would make Swift trap ("failed to allocate");
    /// it is refused with `.sizeOverflow` instead, naming the limit. Here 3.7 GiB of weights
    /// from inputs of a few hundred bytes (Dk = 0), under a limit of about 2.9 GB (Linux:
    /// elsewhere these limits are not read).
    @Test("results beyond the process's address-space or data limit are refused, not a crash")
    func processMemoryLimits() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try writeLargeWeightsInputs(in: directory)
        let need: UInt64 = largeWeightsBytes
        for (flag, name) in [("-v", "address-space limit (ulimit -v)"), ("-d", "data limit (ulimit -d)")] {
            let result = try runBench(["run", "--query", "q.npy", "--key", "k.npy", "--value", "v.npy",
                                       "--output", "o.npy", "--weights", "w.npy"],
                                      in: directory, shellPrefix: "ulimit \(flag) 3000000")
            // Status 1 and one line: an AttentionError, not a crash (SIGABRT before the check).
            #expect(result.status == 1 && result.stderr.split(separator: "\n").count == 1
                    && result.stderr.contains("sizeOverflow") && result.stderr.contains("3.7 GiB"),
                    "ulimit \(flag): status \(result.status): \(result.stderr)")
            if memoryCeiling.bytes > need {          // else the machine's or the cgroup's memory is named first
                #expect(result.stderr.contains("this process has left under its \(name)"), "\(result.stderr)")
            }
            for file in ["o.npy", "w.npy"] {
                #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent(file).path))
            }
        }
        // Under the same limits a small result runs (S = 4).
        try Tensor<Float>(shape: [1, 1, 4, 0]).write(toNPY: directory.appendingPathComponent("k.npy"))
        try Tensor<Float>(shape: [1, 1, 4, 1], repeating: 1).write(toNPY: directory.appendingPathComponent("v.npy"))
        for flag in ["-v", "-d"] {
            let small = try runBench(["run", "--query", "q.npy", "--key", "k.npy", "--value", "v.npy", "--output", "o.npy"],
                                     in: directory, shellPrefix: "ulimit \(flag) 3000000")
            #expect(small.status == 0, "ulimit \(flag): \(small.stderr)")
        }
    }
    #endif

    /// In a cgroup with a 2 GB memory limit (a container's `--memory`) on a machine with more,
    /// a 3.7 GiB result got the process killed by the kernel (status 137); the limit is read
    /// from the cgroup and the call throws `.sizeOverflow` naming it. Runs where the tests can
    /// make a cgroup (as root, on a writable hierarchy, as on the CI machines).
    @Test("results beyond the process's cgroup memory limit are refused, not killed",
          .enabled(if: memoryCgroupsAvailable && ProcessInfo.processInfo.physicalMemory > largeWeightsBytes))
    func cgroupMemoryLimit() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try writeLargeWeightsInputs(in: directory)
        let cgroup = try #require(makeMemoryCgroup(limit: 2_000_000_000))
        defer { rmdir(cgroup) }
        let result = try runBench(["run", "--query", "q.npy", "--key", "k.npy", "--value", "v.npy",
                                   "--output", "o.npy", "--weights", "w.npy"],
                                  in: directory, shellPrefix: "echo $$ > '\(cgroup)/cgroup.procs'")
        #expect(result.reason == .exit && result.status == 1
                && result.stderr.contains("sizeOverflow") && result.stderr.contains("memory limit of this process's cgroup"),
                "status \(result.status) (\(result.reason)): \(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("w.npy").path))
    }

    /// The sweep's two files are checked before anything is timed and written together:
    /// a directory where the plot would go stops the run at once with one line, and the
    /// CSV is not written either.
    @Test("--sweep-output that cannot be written fails before timing, with neither file written")
    func sweepOutputChecked() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("plot.svg"), withIntermediateDirectories: false)
        let blocked = try runBench(["--sweep", "8,16", "--dim", "8", "--heads", "2", "--repetitions", "2", "--sweep-output", "plot"], in: directory)
        #expect(blocked.status == 1 && blocked.stderr.contains("--sweep-output: cannot write plot.svg: it is a directory")
                && !blocked.stderr.contains("timing"), "status \(blocked.status): \(blocked.stderr)")
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("plot.csv").path))
        let missing = try runBench(["--sweep", "8", "--sweep-output", "no-such-dir/plot"], in: directory)
        #expect(missing.status == 1 && missing.stderr.contains("cannot write no-such-dir/plot.csv"), "\(missing.stderr)")
        // A kernel that fails its check (a tolerance of 0 against the naive kernel's Double
        // sums): the plot is not written.
        let failed = try runBench(["--sweep", "64", "--heads", "2", "--repetitions", "1", "--tolerance", "0", "--sweep-output", "bad",
                                   "--quiet"], in: directory)
        #expect(failed.status == 1 && failed.stderr.contains("bad.csv and bad.svg were not written"), "\(failed.stderr)")
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("bad.csv").path))

        // A sweep that runs writes both, and the plot's GFLOP/s labels keep the decimals
        // their step needs (a small shape in a debug build is slow).
        let ran = try runBench(["--sweep", "1,8", "--dim", "8", "--heads", "2", "--repetitions", "2", "--sweep-output", "ok", "--quiet"],
                               in: directory)
        #expect(ran.status == 0, "\(ran.stderr)")
        let csv = try String(contentsOf: directory.appendingPathComponent("ok.csv"), encoding: .utf8)
        #expect(csv.hasPrefix("sequence_length,kernel,gflops\n") && csv.split(separator: "\n").count >= 3, "\(csv)")
        let svg = try String(contentsOf: directory.appendingPathComponent("ok.svg"), encoding: .utf8)
        _ = try parseSVG(Data(svg.utf8))
        // The y-axis labels are the right-aligned texts: distinct numbers (they once read "0, 0, 1, 1").
        let yLabels = svg.components(separatedBy: "text-anchor=\"end\">").dropFirst().map { String($0.prefix { $0 != "<" }) }
        #expect(yLabels.count >= 3 && Set(yLabels).count == yLabels.count && yLabels.allSatisfy { Double($0) != nil }, "\(yLabels)")
    }

    /// A run killed while it writes its outputs leaves nothing in their directory: the files
    /// being written have no name yet (`O_TMPFILE`, where the file system supports it). The
    /// test waits until the process has a file open in the output directory, kills it, and
    /// looks. (Before, a hidden `.w.npy.<pid>.<n>.tmp` of the whole weights stayed behind.)
    @Test("a run killed while writing leaves no files behind",
          .enabled(if: unnamedFilesSupported(in: NSTemporaryDirectory())))
    func killedWhileWriting() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let inputs = directory.appendingPathComponent("in"), outputs = directory.appendingPathComponent("out")
        for sub in [inputs, outputs] { try FileManager.default.createDirectory(at: sub, withIntermediateDirectories: false) }
        // Weights [1, 1, 4096, 4096]: 64 MiB to write and flush.
        try normalTensor([1, 1, 4096, 8], seed: 91).write(toNPY: inputs.appendingPathComponent("q.npy"))
        try normalTensor([1, 1, 4096, 8], seed: 92).write(toNPY: inputs.appendingPathComponent("k.npy"))
        let process = Process()
        process.executableURL = try benchExecutable()
        process.arguments = ["run", "--query", "in/q.npy", "--key", "in/k.npy", "--value", "in/k.npy", "--kernel", "blas",
                            "--output", "out/o.npy", "--weights", "out/w.npy"]
        process.currentDirectoryURL = directory
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Poll the process's descriptors for one open in the output directory.
        let descriptors = "/proc/\(process.processIdentifier)/fd"
        let resolved = try #require(realpath(outputs.path, nil))
        let prefix = String(cString: resolved) + "/"
        free(resolved)
        var writing = false
        while process.isRunning && !writing {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: descriptors)) ?? [] {
                if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(descriptors)/\(name)"),
                   target.hasPrefix(prefix) { writing = true }
            }
            if !writing { usleep(500) }
        }
        if writing { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        #expect(writing, "the run ended before it was seen writing (status \(process.terminationStatus))")
        #expect(process.terminationReason == .uncaughtSignal)
        let left = try FileManager.default.contentsOfDirectory(atPath: outputs.path)
        #expect(left.isEmpty, "left behind: \(left)")
    }

    /// layer --format csv: nine fields in every row (the check's error once printed as a
    /// struct with a comma in it), and the bandwidth rows when the bandwidth is measured.
    @Test("layer --format csv has nine fields per row")
    func layerCSV() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let result = try runBench(["layer", "--workload", "generate", "--tokens", "3", "--repetitions", "2", "--format", "csv", "--quiet"],
                                  in: directory)
        #expect(result.status == 0, "\(result.stderr)")
        let rows = result.stdout.split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        #expect(rows.count == 2 && rows.allSatisfy { $0.count == 9 }, "\(result.stdout)")
        #expect(rows.last.map { Double(String($0[8])) != nil } == true, "max_err is not a number: \(result.stdout)")

        // --breakdown adds a row per part of the forward pass, nine fields each.
        let parts = try runBench(["layer", "--workload", "forward", "--repetitions", "1", "--breakdown", "--format", "csv", "--quiet"],
                                 in: directory)
        #expect(parts.status == 0, "\(parts.stderr)")
        let partRows = parts.stdout.split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        #expect(partRows.dropFirst().map { String($0[0]) } == ["forward", "forward-projections", "forward-attention", "forward-rest"]
                && partRows.allSatisfy { $0.count == 9 } && partRows.dropFirst().allSatisfy { Double(String($0[3])) != nil },
                "\(parts.stdout)")
    }
}
