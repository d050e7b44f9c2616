import ArgumentParser
@_spi(Benchmarking) import AttentionKit
import Foundation

/// An error that ends the bench with one line on stderr and a non-zero exit status.
struct BenchFailure: Error, CustomStringConvertible {
    var description: String
}

/// Runs a library call, turning an ``AttentionError`` into a one-line ``BenchFailure``.
func libraryCall<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as AttentionError {
        throw BenchFailure(description: "AttentionKit error (\(error.code.rawValue)): \(error.message)")
    }
}

/// The default subcommand: `attention-bench` with no subcommand runs this.
struct Suite: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "suite",
        abstract: "Times AttentionKit's attention kernels on the CPU and checks them against the naive kernel.",
        discussion: """
            With no shape option, runs the default suite (about a minute on 2 cores):
              encoder        B=1  Hq=8  Hkv=8  L=512 S=512  Dk=Dv=64
              batched short  B=32 Hq=8  Hkv=8  L=128 S=128  Dk=Dv=64
              ViT            B=4  Hq=12 Hkv=12 L=197 S=197  Dk=Dv=64
              decode GQA     B=1  Hq=32 Hkv=8  L=1   S=4096 Dk=Dv=128

            With any of --batch, --heads, --kv-heads, --query-length,
            --key-length, --dim, --value-dim it runs that one shape instead
            ("custom"); unset sizes default to the encoder shape. Inputs are
            standard normal floats from a fixed seed (SplitMix64 + Box-Muller):
            query [B,Hq,L,Dk], key [B,Hkv,S,Dk], value [B,Hkv,S,Dv].

            Per shape, naive runs first as the reference. Every other kernel is
            run once and checked against it (that run is also its warm-up), then
            timed. Columns:
              reps        timed repetitions after the warm-up.
              median ms   median wall time of one library call (monotonic
                          clock), including validation and allocating the
                          zeroed output.
              GFLOP/s     dense count 2*B*Hq*L*S*(Dk+Dv) / median time. Masks
                          do not change it: causal and key-length masks are
                          counted as dense too, so a kernel that skips masked
                          keys shows an effective rate. Softmax not counted.
              ×naive      median naive time / median kernel time; "—" when
                          naive was not timed. Naive is single-threaded
                          whatever --threads says.
              max err     max |output - naive output|; "ref" on the naive row;
                          † = checked on the slice (below); FAIL = above
                          --tolerance.
              GEMM share  median over reps of (time of attentionGEMMOnly: the
                          kernel's matrix products on the same work split and
                          tiles, its BLAS calls or, for tiled's decode blocks
                          (≤ 4 rows, ≤ 8 on large caches), its row-wise Swift products, no
                          mask/softmax) / (the kernel's time), the two timed
                          alternately rep by rep; "?" marks a share above 1.05 or
                          spread over more than 0.3 across reps (noisy).
              × N thr     with --scaling-baseline N only: the median over reps
                          of (the kernel's time on N threads / its time on
                          --threads), the two timed alternately rep by rep.

            Naive runs on the full problem (and is timed) only if one run is
            estimated (from a few rows with the same S, D and mask) to take at
            most --naive-budget seconds. Otherwise its row says "naive skipped:
            est. N s" and the other kernels are checked against naive on a
            slice: batch entry 0, key/value head 0 and its query heads (B=1,
            Hkv=1, Hq=Hq/Hkv, same L, S, D and mask), compared with that part
            of their full output. If even the slice would exceed the budget,
            only its first query rows (last rows for causal-lower-right) are
            checked, and a note says which.

            Progress goes to stderr. stdout holds only the header (table
            format) and the results, so csv and json can be piped. Exits
            non-zero on an AttentionKit error or a failed check.
            """)

    // MARK: Shape

    // `.unconditional` on the numeric options: a negative value is the value, not an option,
    // so it reaches the range check and its message instead of "Missing value".
    @Option(parsing: .unconditional, help: ArgumentHelp("Batch size B.", valueName: "B"))
    var batch: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("Query heads Hq.", valueName: "Hq"))
    var heads: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("Key/value heads Hkv; must divide --heads (default: --heads; fewer is grouped-query attention).",
                               valueName: "Hkv"))
    var kvHeads: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("Query length L.", valueName: "L"))
    var queryLength: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("Key/value length S (default: --query-length).", valueName: "S"))
    var keyLength: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("Head width Dk, and Dv unless --value-dim is given.", valueName: "D"))
    var dim: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("Value width Dv (default: --dim).", valueName: "Dv"))
    var valueDim: Int?

    // MARK: What to run

    @Option(help: ArgumentHelp("""
        Shapes to run when no shape option is given: core (encoder, batched short, ViT, \
        decode GQA) or compare (the eight shapes of Benchmarks/compare-pytorch.py, with \
        their own masks).
        """, valueName: "name"))
    var suite: SuiteName = .core

    @Option(help: ArgumentHelp("""
        Sweep the sequence length (L = S) over these values with the other shape options \
        (default B1 H8 D64; not --query-length or --key-length), and write \
        <sweep-output>.csv and <sweep-output>.svg, both or neither: GFLOP/s against sequence \
        length for each kernel. Naive is only the reference here, not timed. The two files \
        are checked before anything is timed, and not written if a kernel fails its check.
        """, valueName: "lengths"))
    var sweep: LengthList?

    @Option(help: ArgumentHelp("Path prefix of the sweep's CSV and SVG files.", valueName: "prefix"))
    var sweepOutput: String = "attention-sweep"

    @Option(help: ArgumentHelp("""
        Mask for every shape: none; causal (upper-left, PyTorch is_causal); causal-lower-right \
        (KV-cache decoding); key-lengths (per batch entry S, S-S/4, S/2, S/4, cycling); boolean \
        (the same exclusions as a [B, 1, 1, S] boolean tensor); bias (an additive [S] tensor, \
        -0.05 (S-1-j)).
        """, valueName: "mask"))
    var mask: MaskKind = .none

    @Option(help: ArgumentHelp("""
        Comma-separated kernels to run, always in the order naive, blas, tiled, automatic \
        (automatic picks tiled, or blas when weights are wanted or S ≤ 32).
        """, valueName: "list"))
    var kernels: KernelList = .all

    @Flag(help: "Do not time naive. The other kernels are still checked against one naive run (full or slice).")
    var noNaive = false

    @Option(parsing: .unconditional, help: ArgumentHelp("""
        Threads for the blas/automatic kernels (AttentionThreads.setCount). Default: the \
        library default, ATTENTIONKIT_NUM_THREADS or else all cores.
        """, valueName: "N"))
    var threads: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("""
        Also time each fast kernel on this many threads (usually 1), alternating rep by rep \
        with the --threads runs (AttentionThreads.withCount), and report the thread \
        speed-up: the median over reps of (time on this count / time on --threads). Pairs \
        a few hundred milliseconds apart see the same machine state, which separate runs \
        on a shared machine do not. --time-budget counts the --threads runs only.
        """, valueName: "N"))
    var scalingBaseline: Int?

    // MARK: Timing

    @Option(parsing: .unconditional, help: ArgumentHelp("""
        Timed repetitions per kernel after the warm-up (default: 11, stopping early after 3 \
        once a kernel has used --time-budget). An explicit value is run in full unless \
        --time-budget is also given.
        """, valueName: "N"))
    var repetitions: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("Seconds of timed reps per kernel after which to stop early (at least 3 reps; default: 3).",
                               valueName: "seconds"))
    var timeBudget: Double?

    @Option(parsing: .unconditional, help: ArgumentHelp("""
        Run (and time) naive on the full problem only if one run is estimated to take at \
        most this long; else check against naive on a slice cut to this budget.
        """, valueName: "seconds"))
    var naiveBudget: Double = 3


    @Option(parsing: .unconditional, help: ArgumentHelp("Largest max abs error vs naive that passes the check.", valueName: "x"))
    var tolerance: Float = 1e-3

    @Option(parsing: .unconditional, help: "Seed of the input generator.")
    var seed: UInt64 = 42

    // MARK: Output

    @Option(help: "Output format: an aligned table, csv (header + one row per shape and kernel) or json (an array of objects, sorted keys).")
    var format: OutputFormat = .table

    @Flag(help: "No progress lines on stderr.")
    var quiet = false

    // MARK: -

    private var isCustomShape: Bool {
        [batch, heads, kvHeads, queryLength, keyLength, dim, valueDim].contains { $0 != nil }
    }

    /// The one custom shape; unset sizes come from the encoder shape.
    private var customShape: BenchShape {
        let base = BenchShape.encoder
        let heads = heads ?? base.heads
        let queryLength = queryLength ?? base.queryLength
        let dim = dim ?? base.keyDim
        return BenchShape(name: "custom", batch: batch ?? base.batch, heads: heads, kvHeads: kvHeads ?? heads,
                          queryLength: queryLength, keyLength: keyLength ?? queryLength,
                          keyDim: dim, valueDim: valueDim ?? dim)
    }

    private var shapes: [BenchShape] {
        if let sweep {
            let base = isCustomShape ? customShape : BenchShape.encoder
            return sweep.lengths.map { n in
                var shape = base
                shape.name = "L=S=\(n)"
                shape.queryLength = n
                shape.keyLength = n
                return shape
            }
        }
        if isCustomShape { return [customShape] }
        return suite == .core ? BenchShape.suite : BenchShape.compare
    }

    func validate() throws {
        if sweepOutput.isEmpty || sweepOutput.hasSuffix("/") {
            throw ValidationError("--sweep-output must end in a file name prefix such as attention-sweep or results/run1, "
                + "got \"\(sweepOutput)\"")
        }
        let sizes: [(String, Int?)] = [("--batch", batch), ("--heads", heads), ("--kv-heads", kvHeads),
                                       ("--query-length", queryLength), ("--key-length", keyLength),
                                       ("--dim", dim), ("--value-dim", valueDim), ("--threads", threads),
                                       ("--scaling-baseline", scalingBaseline), ("--repetitions", repetitions)]
        for case let (name, value?) in sizes where value < 1 {
            throw ValidationError("\(name) must be at least 1, got \(value).")
        }
        for case let (name, value?) in [("--threads", threads), ("--scaling-baseline", scalingBaseline)]
            where value > AttentionThreads.maximum {
            throw ValidationError("\(name) must be at most \(AttentionThreads.maximum), got \(value).")
        }
        if let timeBudget, !(timeBudget > 0 && timeBudget.isFinite) {
            throw ValidationError("--time-budget must be a positive number of seconds, got \(timeBudget).")
        }
        guard naiveBudget >= 0, naiveBudget.isFinite else {
            throw ValidationError("--naive-budget must be zero or more seconds, got \(naiveBudget).")
        }
        guard tolerance >= 0 else { throw ValidationError("--tolerance must be zero or more, got \(tolerance).") }
        if noNaive && kernels.kernels == [.naive] {
            throw ValidationError("--no-naive with --kernels naive leaves nothing to run.")
        }
        if sweep != nil {
            if kernels.kernels.allSatisfy({ $0 == .naive }) {
                throw ValidationError("--sweep times the fast kernels only (naive is their check); --kernels naive leaves nothing to plot.")
            }
            if queryLength != nil || keyLength != nil {
                throw ValidationError("--sweep sets the query and key lengths (L = S = each length); leave out --query-length and --key-length.")
            }
        }
        if isCustomShape {
            let s = customShape
            guard s.heads % s.kvHeads == 0 else {
                throw ValidationError("--heads (\(s.heads)) must be a multiple of --kv-heads (\(s.kvHeads)).")
            }
        }
        for shape in shapes { try checkMemory(shape) }       // custom shapes and every --sweep length
    }

    /// Refuses shapes whose tensors would not fit in half the physical memory: Q, K, V and
    /// up to three outputs (reference, kernel, GEMM-only) live at once.
    private func checkMemory(_ s: BenchShape) throws {
        var floats = 0
        for shape in [s.queryShape, s.keyShape, s.valueShape, s.outputShape, s.outputShape, s.outputShape] {
            var count = 1
            for size in shape {
                let (product, overflow) = count.multipliedReportingOverflow(by: size)
                guard !overflow else { throw ValidationError("shape \(s.dims) is too large.") }
                count = product
            }
            let (sum, overflow) = floats.addingReportingOverflow(count)
            guard !overflow else { throw ValidationError("shape \(s.dims) is too large.") }
            floats = sum
        }
        let (bytes, overflow) = floats.multipliedReportingOverflow(by: 4)
        try checkHalfOfMemory(bytes: overflow ? nil : bytes, "shape \(s.dims)", "for its tensors")
    }

    mutating func run() throws {
        let clock = ContinuousClock()
        let start = clock.now
        let progress = Progress(quiet: quiet)
        defer { progress.clear() }

        if sweep != nil {
            // A sweep can take minutes: its two files are checked before anything is timed
            // (and written together, or neither, at the end).
            for path in [sweepOutput + ".csv", sweepOutput + ".svg"] {
                do { _ = try writeDestination(path) } catch let error as AttentionError {
                    throw BenchFailure(description: "--sweep-output: \(error.message)")
                }
            }
        }
        if let threads { try libraryCall { try AttentionThreads.setCount(threads) } }
        let threadCount = try libraryCall { try AttentionThreads.count() }
        let machine = MachineInfo.current(cores: AttentionThreads.coreCount)
        var settings = BenchSettings(
            kernels: kernels.kernels, timeNaive: !noNaive && sweep == nil, mask: mask, threads: threadCount,
            repetitions: repetitions ?? 11,
            timeBudget: timeBudget ?? (repetitions == nil ? 3 : nil),
            naiveBudget: naiveBudget, tolerance: tolerance, seed: seed)
        settings.baselineThreads = scalingBaseline
        if sweep != nil {
            settings.gemmShare = false
            if kernels.kernels == KernelList.all.kernels { settings.kernels = [.naive, .blas, .tiled] }
        }

        // Header: on stdout for the table, on stderr for csv/json so stdout stays parseable.
        let header = headerLines(machine: machine, threads: threadCount, settings: settings)
        if format == .table {
            print(header.joined(separator: "\n"))
            print()
        } else if !quiet {
            for line in header { progress.note(line) }
        }

        let shapes = self.shapes
        var results: [KernelResult] = []
        for (index, shape) in shapes.enumerated() {
            let label = "[\(index + 1)/\(shapes.count)] \(shape.name)"
            let bench = ShapeBench(shape: shape, settings: settings, progress: progress, label: label)
            results += try libraryCall { try bench.run() }
        }
        progress.clear()

        let wall = seconds(clock.now - start)
        switch format {
        case .table:
            print(renderTable(results, tolerance: tolerance))
            print()
            print(String(format: "total wall time: %.1f s", wall))
        case .csv:
            print(renderCSV(results, cores: machine.cores))
            if !quiet { progress.note(String(format: "total wall time: %.1f s", wall)) }
        case .json:
            print(try renderJSON(results, cores: machine.cores))
            if !quiet { progress.note(String(format: "total wall time: %.1f s", wall)) }
        }

        let failures = results.filter(\.failed)
        if sweep != nil && failures.isEmpty {
            let plot = SweepPlot(
                title: "AttentionKit: GFLOP/s against sequence length",
                subtitle: "\(shapes.first.map { "B\($0.batch) H\($0.heads)/\($0.kvHeads) D\($0.keyDim)" } ?? ""), "
                    + "mask \(mask.rawValue), \(threadCount) thread\(threadCount == 1 ? "" : "s"), "
                    + "\(machine.cpuModel ?? "CPU"), median of reps",
                results: results.filter { $0.kernel != .naive })
            try writeAllOrNothing([(sweepOutput + ".csv", Data(plot.csv().utf8)), (sweepOutput + ".svg", Data(plot.svg().utf8))])
            progress.note("wrote \(sweepOutput).csv and \(sweepOutput).svg")
        }

        if !failures.isEmpty {
            let list = failures.map { r in
                "\(r.kernel.rawValue) on \(r.shape.name) (max err \(r.maxError.map { "\($0)" } ?? "NaN"))"
            }
            // A sweep's plot would show kernels that computed wrong results: not written.
            throw BenchFailure(description: "check against naive failed (tolerance \(tolerance)): "
                               + list.joined(separator: ", ")
                               + (sweep != nil ? "; \(sweepOutput).csv and \(sweepOutput).svg were not written" : ""))
        }
    }

    private func headerLines(machine: MachineInfo, threads: Int, settings: BenchSettings) -> [String] {
        let threadSource: String
        if self.threads != nil {
            threadSource = "--threads"
        } else if let env = ProcessInfo.processInfo.environment["ATTENTIONKIT_NUM_THREADS"] {
            threadSource = "ATTENTIONKIT_NUM_THREADS=\(env)"
        } else {
            threadSource = "library default: all cores"
        }
        let cpu = machine.cpuModel.map { "\($0), " } ?? ""
        var blas = machine.openBLASConfig ?? "OpenBLAS (version unknown)"
        if let pool = machine.openBLASThreads { blas += ", own pool \(pool) threads" }
        blas += "; set to 1 thread by the kernels, which split work over their own threads"
        let date = ISO8601DateFormatter.string(from: Date(), timeZone: TimeZone(identifier: "UTC")!,
                                               formatOptions: [.withFullDate, .withTime, .withColonSeparatorInTime, .withSpaceBetweenDateAndTime])
        let load = machine.loadAverage.map { String(format: " | load %.2f", $0) } ?? ""
        let budget = settings.timeBudget.map { String(format: ", stop after %g s (min 3)", $0) } ?? ""
        #if DEBUG
        let build = " | DEBUG BUILD: timings are meaningless, use -c release"
        #else
        let build = ""
        #endif
        return [
            "attention-bench \(date) UTC | \(cpu)\(machine.cores) cores | threads: \(threads) (\(threadSource)) | \(blas)\(load)\(build)",
            "mask: \(settings.mask.rawValue)\(shapes.contains { $0.fixedMask != nil } ? " (shapes that name their own mask use it)" : "") | kernels: \(settings.kernels.map(\.rawValue).joined(separator: ",")) | "
                + "reps: \(settings.repetitions)\(budget) | naive budget \(String(format: "%g", settings.naiveBudget)) s/rep | "
                + "seed \(settings.seed) | GFLOP/s = 2*B*Hq*L*S*(Dk+Dv) / median (dense, also for masks)",
        ]
    }
}
