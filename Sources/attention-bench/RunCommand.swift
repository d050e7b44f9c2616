import ArgumentParser
@_spi(Benchmarking) import AttentionKit
import Foundation

/// `attention-bench run`: scaled dot-product attention on tensors read from NumPy `.npy`
/// files, writing the output (and optionally the weights and an SVG heatmap of them).
///
/// Every destination is checked first; everything is read, validated and computed before
/// anything is written; the files are written to unnamed or temporary files next to their
/// destinations (``PendingFile``) and renamed into place, and a rename that still fails
/// undoes the earlier ones, so an error leaves every destination as it was. Character
/// devices and FIFOs (`/dev/stdout`) are written last.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Computes attention on tensors from .npy files and writes the output as .npy.",
        discussion: """
            Reads query [B,Hq,L,Dk], key [B,Hkv,S,Dk] and value [B,Hkv,S,Dv] (or the
            rank-3 [B,L,D] and rank-2 [L,D] forms) from .npy files of float32 ('<f4')
            or float64 ('<f8', rounded to the nearest float32) in C order, as
            numpy.save writes them. Computes
              output = softmax(query · keyᵀ · scale + mask) · value
            with AttentionKit, prints the shapes and the time of the call, and
            writes the output [B,Hq,L,Dv] as float32 .npy; with --weights also the
            attention weights [B,Hq,L,S], and with --heatmap an SVG picture of them.
            When one of them is /dev/stdout, the report goes to stderr instead.

            Masks: --mask (a bool .npy, true = may attend), --bias (a float .npy
            added to the scaled scores), --causal and --key-lengths. Tensors
            broadcast NumPy-style to the scores [B,Hq,L,S]. They can be combined,
            and --mask and --bias repeated: every exclusion applies and biases add.

            The outputs must be files other than the inputs and each other.

            Errors in the inputs (a file that is missing or not a supported .npy,
            shapes that do not fit together, a mask that does not broadcast) print
            one line and exit with status 1; a malformed command line prints one
            line and exits with status 64. Nothing is written unless every input
            is valid and every output can be written.

            Example, after numpy.save("q.npy", q) and the same for k and v:
              attention-bench run --query q.npy --key k.npy --value v.npy \\
                --causal upper-left --output out.npy --heatmap weights.svg
              python3 -c "import numpy; print(numpy.load('out.npy').shape)"
            """)

    // MARK: Inputs

    @Option(help: ArgumentHelp("Queries [B,Hq,L,Dk]: a .npy file of float32 or float64.", valueName: "q.npy"))
    var query: String

    @Option(help: ArgumentHelp("Keys [B,Hkv,S,Dk]; Hq must be a multiple of Hkv (grouped-query attention).", valueName: "k.npy"))
    var key: String

    @Option(help: ArgumentHelp("Values [B,Hkv,S,Dv].", valueName: "v.npy"))
    var value: String

    @Option(help: ArgumentHelp("Boolean mask (dtype bool), true = may attend; broadcasts to [B,Hq,L,S]. Repeat to combine masks.",
                               valueName: "m.npy"))
    var mask: [String] = []

    @Option(help: ArgumentHelp("Additive bias (float32/float64) added to the scaled scores; broadcasts to [B,Hq,L,S]; -inf excludes. Repeat to add biases.",
                               valueName: "b.npy"))
    var bias: [String] = []

    @Option(help: ArgumentHelp("Causal mask: upper-left (key j ≤ i, PyTorch's is_causal) or lower-right (j ≤ i + S − L, for a KV cache).",
                               valueName: "alignment"))
    var causal: CausalOption?

    // `.unconditional` here and on the integer options: a value such as "-1" is the value,
    // not an option, so it reaches the range check and its message.
    @Option(parsing: .unconditional,
            help: ArgumentHelp("Comma-separated key lengths, one per batch entry: keys at or beyond the length are excluded (\"\" for a batch of 0).",
                               valueName: "5,7"),
            transform: parseKeyLengths)
    var keyLengths: [Int]?

    // `.unconditional`: a negative scale such as "-0.125" is legal and is the value.
    @Option(parsing: .unconditional, help: ArgumentHelp("Multiplies query · keyᵀ (default 1/√Dk; negative is legal).", valueName: "x"))
    var scale: Float?

    @Option(help: ArgumentHelp("Kernel: naive, blas, tiled or automatic (tiled, or blas when --weights or --heatmap needs the weights or S ≤ 32).",
                               valueName: "kernel"))
    var kernel: BenchKernel = .automatic

    @Option(parsing: .unconditional,
            help: ArgumentHelp("Threads for the kernel (default: ATTENTIONKIT_NUM_THREADS or all cores).", valueName: "N"))
    var threads: Int?

    @Option(parsing: .unconditional,
            help: ArgumentHelp("Calls to time; the median is reported and the last call's results are written.", valueName: "N"))
    var repetitions: Int = 1

    // MARK: Outputs

    @Option(help: ArgumentHelp("Where to write the output [B,Hq,L,Dv] (float32 .npy).", valueName: "out.npy"))
    var output: String

    @Option(help: ArgumentHelp("Also write the attention weights [B,Hq,L,S] (float32 .npy).", valueName: "w.npy"))
    var weights: String?

    @Option(help: ArgumentHelp("Also draw the weights of one batch entry as an SVG heatmap.", valueName: "w.svg"))
    var heatmap: String?

    // The --heatmap-… options are optionals so that one given without --heatmap is noticed.
    @Option(parsing: .unconditional, help: ArgumentHelp("The batch entry the heatmap shows (default: 0).", valueName: "b"))
    var heatmapBatch: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("The head the heatmap shows (default: a grid of every head).", valueName: "h"))
    var heatmapHead: Int?

    @Option(parsing: .unconditional,
            help: ArgumentHelp("The most heatmap cells along each axis; larger weights are downsampled by block mean (default: 64).",
                               valueName: "N"))
    var heatmapCells: Int?

    @Option(help: ArgumentHelp("The heatmap's title (default: \"Attention weights\" and the query file's name).", valueName: "text"))
    var heatmapTitle: String?

    /// `--heatmap-batch` with its default.
    private var heatmapBatchOrDefault: Int { heatmapBatch ?? 0 }
    /// `--heatmap-cells` with its default.
    private var heatmapCellsOrDefault: Int { heatmapCells ?? 64 }

    /// Ranges ArgumentParser cannot check: a malformed command line, status 64 like the
    /// parser's own errors (errors in the files exit with 1).
    func validate() throws {
        guard repetitions >= 1 else { throw ValidationError("--repetitions must be at least 1, got \(repetitions)") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1, got \(threads)") }
        if let threads, threads > AttentionThreads.maximum {
            throw ValidationError("--threads must be at most \(AttentionThreads.maximum), got \(threads)")
        }
        if let scale, !scale.isFinite {
            throw ValidationError("--scale must be a finite float32 number (magnitude at most 3.4e38), got \(scale)")
        }
        if heatmap == nil, let given = [("--heatmap-batch", heatmapBatch != nil), ("--heatmap-head", heatmapHead != nil),
                                        ("--heatmap-cells", heatmapCells != nil), ("--heatmap-title", heatmapTitle != nil)]
            .first(where: \.1) {
            throw ValidationError("\(given.0) applies to the heatmap; add --heatmap <w.svg> or leave it out")
        }
        if let heatmapCells, heatmapCells < 1 {
            throw ValidationError("--heatmap-cells must be at least 1, got \(heatmapCells)")
        }
    }

    mutating func run() throws {
        // Each destination resolved and checked once, before anything is read or computed
        // (writeAllOrNothing checks it again before writing).
        var destinations: [(name: String, path: String, target: WriteDestination, identity: String?)] = []
        for case let (name, path?) in [("--output", output), ("--weights", weights), ("--heatmap", heatmap)] {
            let target: WriteDestination
            do { target = try writeDestination(path) } catch let error as AttentionError {
                throw BenchFailure(description: error.message)
            }
            destinations.append((name, path, target, fileIdentity(path, target)))
        }
        for (n, destination) in destinations.enumerated() where destination.identity != nil {
            if let other = destinations[..<n].first(where: { $0.identity == destination.identity }) {
                throw BenchFailure(description: "\(other.name) and \(destination.name) name the same file \(destination.path)")
            }
        }
        // An output written over an input would lose the input, so it is refused rather
        // than done silently. (A hard link to an input is another name: replacing it leaves
        // the input as it was.)
        let inputs = [("--query", query), ("--key", key), ("--value", value)] + mask.map { ("--mask", $0) } + bias.map { ("--bias", $0) }
        for destination in destinations {
            if let input = inputs.first(where: { overwrites(destination.target, input: $0.1) }) {
                throw BenchFailure(description: "\(destination.name) \(destination.path) is the \(input.0) input file; "
                    + "write the results to another file")
            }
        }
        let reportToStandardError = destinations.contains { isStandardOutput($0.target) }

        // Inputs.
        let q = try read("--query") { try Tensor<Float>(contentsOfNPY: URL(fileURLWithPath: query)) }
        let k = try read("--key") { try Tensor<Float>(contentsOfNPY: URL(fileURLWithPath: key)) }
        let v = try read("--value") { try Tensor<Float>(contentsOfNPY: URL(fileURLWithPath: value)) }
        var parts: [AttentionMask] = []
        var maskDescription: [String] = []
        for mask in mask {
            let m = try read("--mask", otherwise: ("float", "--bias", { _ = try Tensor<Float>(contentsOfNPY: URL(fileURLWithPath: mask)) })) {
                try Tensor<Bool>(contentsOfNPY: URL(fileURLWithPath: mask))
            }
            parts.append(.boolean(m))
            maskDescription.append("boolean \(describe(m.shape)) from \(mask)")
        }
        for bias in bias {
            let b = try read("--bias", otherwise: ("boolean", "--mask", { _ = try Tensor<Bool>(contentsOfNPY: URL(fileURLWithPath: bias)) })) {
                try Tensor<Float>(contentsOfNPY: URL(fileURLWithPath: bias))
            }
            parts.append(.additive(b))
            maskDescription.append("bias \(describe(b.shape)) from \(bias)")
        }
        if let causal {
            parts.append(.causal(causal.alignment))
            maskDescription.append("causal \(causal.rawValue)")
        }
        if let lengths = keyLengths {
            parts.append(.keyLengths(lengths))
            maskDescription.append(lengths.isEmpty ? "key lengths (none: a batch of 0)"
                                   : "key lengths \(lengths.map(String.init).joined(separator: ","))")
        }

        // The heatmap's batch entry and head, checked against the weights' shape (the query's,
        // with S last) before the computation; shapes that do not fit together are left to
        // the library's checks below.
        if heatmap != nil, (2...4).contains(q.rank), k.rank == q.rank {
            let weightsShape = Array(q.shape.dropLast()) + [k.shape[k.rank - 2]]
            try libraryCall {
                try AttentionHeatmap.checkSelection(weightsShape: weightsShape, batch: heatmapBatchOrDefault, head: heatmapHead,
                                                    maximumCells: heatmapCellsOrDefault)
            }
        }

        // Compute.
        if let threads { try libraryCall { try AttentionThreads.setCount(threads) } }
        let threadCount = try libraryCall { try AttentionThreads.count() }
        let wantWeights = weights != nil || heatmap != nil
        let clock = ContinuousClock()
        var times: [Double] = []
        var result: (output: Tensor<Float>, weights: Tensor<Float>?) = (try Tensor<Float>(shape: [0]), nil)
        // Progress on a terminal, and on any stderr when there are several calls.
        let progress = Progress(quiet: repetitions == 1 && isatty(STDERR_FILENO) != 1)
        defer { progress.clear() }                          // also when a call throws
        for n in 0..<repetitions {
            progress.update("call \(n + 1) of \(repetitions)"
                + (times.last.map { String(format: " (last %.3f ms)", $0 * 1000) } ?? "") + "…")
            let start = clock.now
            result = try libraryCall {
                if wantWeights {
                    let r = try scaledDotProductAttentionWithWeights(
                        query: q, key: k, value: v, mask: AttentionMask(parts), scale: scale, kernel: kernel.library)
                    return (r.output, r.weights)
                }
                return (try scaledDotProductAttention(query: q, key: k, value: v, mask: AttentionMask(parts),
                                                      scale: scale, kernel: kernel.library), nil)
            }
            times.append(seconds(clock.now - start))
        }
        progress.clear()                                    // before the report

        // Everything to write, prepared before anything is written.
        var files: [(path: String, content: OutputContent)] = [(output, .npy(result.output))]
        var heatmapDescription = ""
        if let weightsPath = weights, let w = result.weights {
            files.append((weightsPath, .npy(w)))
        }
        if let heatmapPath = heatmap, let w = result.weights {
            let title = heatmapTitle ?? "Attention weights (\(URL(fileURLWithPath: query).lastPathComponent))"
            // Grouped-query attention: each panel of the grid says which key/value head it shares.
            var headLabels: [String]?
            if heatmapHead == nil, w.rank == 4, k.rank == 4, k.shape[1] > 0, w.shape[1] > k.shape[1],
               w.shape[1] % k.shape[1] == 0 {
                let group = w.shape[1] / k.shape[1]
                headLabels = (0..<w.shape[1]).map { "head \($0) · kv \($0 / group)" }
            }
            let picture = try libraryCall {
                try AttentionHeatmap(weights: w, batch: heatmapBatchOrDefault, head: heatmapHead, title: title,
                                     headLabels: headLabels, maximumCells: heatmapCellsOrDefault)
            }
            files.append((heatmapPath, .data(Data(picture.svg().utf8))))
            let (rows, columns) = picture.cellCounts
            let heads = w.rank < 4 ? "" : heatmapHead.map { ", head \($0)" } ?? (w.shape[1] == 1 ? ", head 0" : ", heads 0–\(w.shape[1] - 1)")
            let downsampled = (rows, columns) == (w.shape[w.rank - 2], w.shape[w.rank - 1]) ? "" : " (downsampled by block mean)"
            let place = w.rank == 2 ? "" : "batch \(heatmapBatchOrDefault)\(heads), "
            heatmapDescription = "\(place)\(rows)×\(columns) cells\(downsampled)"
        }
        try writeAllOrNothing(files)

        // Report.
        let sorted = times.sorted()
        let median = sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        let timing = repetitions == 1 ? "one call" : "median of \(repetitions) calls"
        var lines: [(String, String, String)] = [
            ("query", query, describe(q.shape)),
            ("key", key, describe(k.shape)),
            ("value", value, describe(v.shape)),
            ("mask", maskDescription.isEmpty ? "none" : maskDescription.joined(separator: " + "), ""),
            ("scale", scale.map { "\($0)" } ?? "1/√Dk (default)", ""),
            ("kernel", kernel == .naive ? "naive, 1 thread (single-threaded by design)"
                : "\(kernel.rawValue), \(threadCount) thread\(threadCount == 1 ? "" : "s")", ""),
            ("time", String(format: "%.3f ms", median * 1000)
                + " (\(timing)\(wantWeights ? ", with weights" : ""), including validation and allocation)", ""),
            ("output", output, describe(result.output.shape)),
        ]
        if let weights, let w = result.weights { lines.append(("weights", weights, describe(w.shape))) }
        if let heatmap { lines.append(("heatmap", heatmap, heatmapDescription)) }
        let width = lines.filter { !$0.2.isEmpty }.map(\.1.count).max() ?? 0
        for (name, text, shape) in lines {
            let padded = shape.isEmpty ? text : text.padding(toLength: max(width, text.count), withPad: " ", startingAt: 0)
            let line = "\(name.padding(toLength: 8, withPad: " ", startingAt: 0))\(padded)\(shape.isEmpty ? "" : "  " + shape)"
            // With a result written to stdout, the report goes to stderr so that stdout
            // carries the .npy (or SVG) bytes alone.
            if reportToStandardError { FileHandle.standardError.write(Data((line + "\n").utf8)) } else { print(line) }
        }
    }

    /// Runs `body` (reading the file of `option`), turning a library error into one line that
    /// names the option (and, for a data type it cannot read, the types the option takes).
    /// With `otherwise`, a file of the wrong data type that the other option would read (a
    /// float array given to `--mask`, a boolean one to `--bias`) is named as such, with the
    /// option to use instead.
    private func read<T>(_ option: String, otherwise: (kind: String, option: String, read: () throws -> Void)? = nil,
                         _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as AttentionError {
            if error.code == .npyUnsupported, let otherwise, (try? otherwise.read()) != nil {
                throw BenchFailure(description: "\(option): the file holds a \(otherwise.kind) array; pass it with \(otherwise.option)")
            }
            // The library's message lists every type it reads; say which this option takes.
            let takes = T.self == Tensor<Bool>.self ? "a bool array (numpy: m.astype(bool))"
                                                    : "float32 or float64 (numpy: x.astype(numpy.float32))"
            throw BenchFailure(description: "\(option): \(error.message)"
                               + (error.code == .npyUnsupported ? "; \(option) takes \(takes)" : ""))
        }
    }
}

/// `--causal upper-left|lower-right`.
enum CausalOption: String, CaseIterable, ExpressibleByArgument {
    case upperLeft = "upper-left"
    case lowerRight = "lower-right"

    var alignment: CausalAlignment { self == .upperLeft ? .upperLeft : .lowerRight }
}

/// `"5,7"` → `[5, 7]`; `""` → `[]` (a batch of 0).
private func parseKeyLengths(_ text: String) throws -> [Int] {
    if text.trimmingCharacters(in: .whitespaces).isEmpty { return [] }
    let parts = text.split(separator: ",", omittingEmptySubsequences: false)
    let lengths = parts.compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard !parts.isEmpty, lengths.count == parts.count, lengths.allSatisfy({ $0 >= 0 }) else {
        // ArgumentParser names the option and the value around this message.
        throw ValidationError("expected comma-separated non-negative integers such as 5,7")
    }
    return lengths
}

private func describe(_ shape: [Int]) -> String {
    "[" + shape.map(String.init).joined(separator: ", ") + "]"
}

/// What `path` (resolved for writing as `target`) names, for spotting two options that would
/// write the same file through different spellings (`a/out.npy` and `./a/out.npy`, or a
/// symbolic link to `a`): the device and inode of an existing file, else its directory with
/// symbolic links resolved and its name; for one of this process's descriptors, the file or
/// pipe it is open on (two outputs into one pipe would run together). Nil for a character
/// device or a FIFO named by path, which a run may name twice (`/dev/null`).
private func fileIdentity(_ path: String, _ target: WriteDestination) -> String? {
    switch target {
    case .stream: return nil
    case .descriptor(let fd):
        // A descriptor redirected to a regular file (`> x.npy`) is that file; one on a pipe
        // (`| python3 …`) is that pipe.
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) != S_IFCHR else { return nil }
        return inodeIdentity(info)
    default: break
    }
    var info = stat()
    if stat(path, &info) == 0 { return inodeIdentity(info) }
    // The directory as written, resolved the way the kernel resolves it (`..` after links).
    let name = String(path[(path.lastIndex(of: "/").map { path.index(after: $0) } ?? path.startIndex)...])
    guard let resolved = realpath(directoryPart(of: path), nil) else { return "path \(path)" }
    defer { free(resolved) }
    return "path \(String(cString: resolved))/\(name)"
}

/// `"inode <device>:<inode>"`: what the identity checks compare.
private func inodeIdentity(_ info: stat) -> String { "inode \(info.st_dev):\(info.st_ino)" }

/// ``inodeIdentity(_:)`` of an open descriptor; nil when `fstat` fails.
private func inodeIdentity(descriptor fd: Int32) -> String? {
    var info = stat()
    return fstat(fd, &info) == 0 ? inodeIdentity(info) : nil
}

/// Whether a destination is this process's standard output (`/dev/stdout`, `/dev/fd/1`, or
/// another descriptor open on the same file or pipe).
private func isStandardOutput(_ target: WriteDestination) -> Bool {
    guard case .descriptor(let fd) = target else { return false }
    guard fd != STDOUT_FILENO else { return true }
    guard let mine = inodeIdentity(descriptor: fd) else { return false }
    return mine == inodeIdentity(descriptor: STDOUT_FILENO)
}

/// Whether writing `destination` would destroy the input file at `input`: a regular file
/// destination is replaced by renaming onto its path, which loses the input only when both
/// resolve to the same path (a hard link is a different name and keeps the input); one of
/// this process's descriptors (`/dev/stdout`, also when redirected onto the input) is
/// written into, which loses the input when it is the same file (device and inode).
private func overwrites(_ destination: WriteDestination, input: String) -> Bool {
    var inputInfo = stat()
    guard stat(input, &inputInfo) == 0 else { return false }
    switch destination {
    case .file(let target):
        guard let a = realpath(target, nil) else { return false }        // not there yet
        defer { free(a) }
        guard let b = realpath(input, nil) else { return false }
        defer { free(b) }
        return strcmp(a, b) == 0
    case .descriptor(let fd):
        return inodeIdentity(descriptor: fd) == inodeIdentity(inputInfo)
    case .stream:
        return false
    }
}

/// Writes every file or none.
///
/// First every destination is resolved and checked (``writeDestination(_:)``: not a
/// directory, its directory exists and can be written to; a symbolic link is kept and its
/// target replaced; a character device or FIFO such as `/dev/null` or `/dev/stdout` is a
/// stream, opened now so that a FIFO without a reader fails before anything is written;
/// `/dev/stdout`, `/dev/stderr` and `/dev/fd/N` are this process's descriptors, written as
/// they are). Then each regular file goes to a ``PendingFile`` in its destination's directory
/// (unnamed where the system allows it, so that a run interrupted while writing leaves
/// nothing behind), and only when all of them are complete are they named and renamed into
/// place. A destination that
/// already exists is first hard-linked to a backup name, so that if a later rename fails,
/// the renames already made are undone: replaced files get their old contents back and new
/// ones are removed. Streams are written last, once every regular file is in place; if one
/// fails, the renames are undone too (what a stream has already taken cannot be taken back).
/// Every failure leaves the regular destinations as they were and removes the pending files.
///
/// `moveIntoPlace` renames a finished temporary file onto its destination (`rename(2)`;
/// tests pass one that fails, to exercise the undoing).
func writeAllOrNothing(_ requested: [(path: String, data: Data)],
                       moveIntoPlace: (String, String) -> Int32 = { rename($0, $1) }) throws {
    try writeAllOrNothing(requested.map { (path: $0.path, content: OutputContent.data($0.data)) }, moveIntoPlace: moveIntoPlace)
}

/// What `run` writes to one destination.
enum OutputContent {
    /// A tensor as a `.npy` file, written from the tensor's own memory: the weights can be
    /// most of the machine's memory, and a copy of them (`npyData()`) would double that.
    case npy(Tensor<Float>)
    /// Bytes prepared in advance (the heatmap's SVG).
    case data(Data)

    /// Calls `body` with the bytes to write, as pieces written one after the other.
    func withPieces<R>(_ body: ([UnsafeRawBufferPointer]) throws -> R) rethrows -> R {
        switch self {
        case .npy(let tensor): return try tensor.withNPYBytes(body)
        case .data(let data): return try data.withUnsafeBytes { try body([$0]) }
        }
    }
}

/// ``writeAllOrNothing(_:moveIntoPlace:)`` of contents (tensors are not copied).
func writeAllOrNothing(_ requested: [(path: String, content: OutputContent)],
                       moveIntoPlace: (String, String) -> Int32 = { rename($0, $1) }) throws {
    // Regular files by their resolved paths (messages name the path given), and streams:
    // devices and FIFOs opened now (a FIFO without a reader fails here, before anything is
    // written), and this process's descriptors (/dev/stdout).
    var files: [(path: String, given: String, content: OutputContent)] = []
    var streams: [(fd: Int32, path: String, content: OutputContent, opened: Bool)] = []
    defer { for stream in streams where stream.opened { close(stream.fd) } }
    for file in requested {
        do {
            switch try writeDestination(file.path) {
            case .file(let target): files.append((target, file.path, file.content))
            case .stream(let stream): streams.append((try openStream(stream), stream, file.content, true))
            case .descriptor(let fd): streams.append((fd, file.path, file.content, false))
            }
        } catch let error as AttentionError {
            throw BenchFailure(description: error.message)
        }
    }

    // The files being written (unnamed until their renames where the system allows it, so
    // an interrupted run leaves nothing behind: ``PendingFile``).
    var pending: [PendingFile] = []
    // Destinations replaced so far, each with the backup of the file it replaced (nil when
    // there was none): the way back if a later rename fails.
    var done: [(path: String, backup: String?)] = []
    /// Undoes everything so far (renames back, then discards the pending files) and returns
    /// the error to throw.
    func abandon(_ path: String, _ reason: String) -> BenchFailure {
        for (destination, backup) in done.reversed() {
            if let backup { rename(backup, destination) } else { unlink(destination) }
        }
        for n in pending.indices { pending[n].discard() }
        return BenchFailure(description: "cannot write \(path): \(reason)")
    }
    for file in files {
        do { pending.append(try PendingFile(besides: file.path)) } catch let failure as PendingFile.Failure {
            throw abandon(file.given, failure.reason)
        }
        if let reason = file.content.withPieces({ pending[pending.count - 1].write($0) }) {
            throw abandon(file.given, reason)
        }
    }
    // Named only now, all before the first rename (a failure here needs no undoing).
    for n in pending.indices {
        if let reason = pending[n].name() { throw abandon(files[n].given, reason) }
    }

    // Rename into place, keeping a way back (`done`).
    for (file, temporary) in zip(files, pending.map { $0.temporary! }) {
        var backup: String?
        var linked = false
        var info = stat()
        if lstat(file.path, &info) == 0 {
            // Checked above, but the file system may have changed since: never move a
            // directory aside or replace it.
            guard (info.st_mode & S_IFMT) != S_IFDIR else { throw abandon(file.given, "it is a directory") }
            let name = temporaryPath(besides: file.path, suffix: "old")
            // A hard link keeps the destination in place; where links are not possible, the
            // old file is moved aside instead (and moved back if the rename fails).
            linked = link(file.path, name) == 0
            if linked || rename(file.path, name) == 0 {
                backup = name
            } else {
                throw abandon(file.given, "cannot keep a backup of it: \(String(cString: strerror(errno)))")
            }
        }
        guard moveIntoPlace(temporary, file.path) == 0 else {
            let reason = String(cString: strerror(errno))
            if let backup {
                // A linked backup is a second name of the file still in place; a moved-aside
                // file goes back.
                if linked { unlink(backup) } else { rename(backup, file.path) }
            }
            throw abandon(file.given, reason)
        }
        done.append((file.path, backup))
    }
    // Streams last, once every regular file is in place.
    for stream in streams {
        do {
            try stream.content.withPieces { try writeOpenStream($0, to: stream.fd, path: stream.path) }
        } catch let error as AttentionError {
            _ = abandon(stream.path, "")
            throw BenchFailure(description: error.message)
        }
    }
    for case let (_, backup?) in done { unlink(backup) }
}
