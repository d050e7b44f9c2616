import ArgumentParser
import AttentionKit
import Dispatch
import Foundation

/// `attention-bench layer`: the multi-head attention layer on two workloads, plus the
/// machine's memory bandwidth for comparison.
struct LayerBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "layer",
        abstract: "Times the MultiHeadAttention layer: a BERT-base forward pass and a GQA generation loop.",
        discussion: """
            Workloads (--workload, default all):
              forward    BERT-base self-attention layer: B=8 L=128 E=768 12 heads
                         (Dk=64), no mask, biases. One call of the layer per rep:
                         4 projections (sgemm over 1024 rows) + attention + head
                         split/merge copies. GFLOP/s counts 8*B*L*E^2 (projections)
                         + 4*B*H*L^2*Dk (attention) = 5.23 GFLOP.
              generate   GQA layer E=2048, 32 query heads, 8 kv heads (Dk=64),
                         batch 1: --tokens (256) decode steps of one token each,
                         from an empty cache (default capacity, geometric growth).
                         One rep is the whole loop. Reports tokens/s and the rate
                         at which the loop reads what it must read per rep =
                         tokens * projection weights and biases (41.9 MB/token,
                         more than the 32 MiB L3) + the cached K/V: bytes / time,
                         served from DRAM or, for the part still cached from
                         the previous token, the L3; not DRAM traffic alone.
              bandwidth  the machine's copy bandwidth: memcpy of a 512 MiB buffer
                         split over the thread count, median of 7, counted as
                         read + write bytes (STREAM's convention); and read
                         bandwidth: a SIMD sum over the same 512 MiB.

            Inputs and weights are standard normal / Xavier-uniform floats from
            fixed seeds. Before timing, each workload is checked: forward's first
            four query rows of batch entry 0 against a float64 computation of the
            layer written out in the bench; generate's outputs against one causal
            forward pass over the same tokens. Times are wall time (monotonic
            clock) of the library calls; medians. The first rep is a warm-up
            (not timed) unless the check already warmed up.

            --format json prints one object (for Benchmarks/compare-pytorch.py).
            """)

    enum Workload: String, CaseIterable, ExpressibleByArgument {
        case all, forward, generate, bandwidth
    }

    @Option(help: "What to run: all, forward, generate or bandwidth.")
    var workload: Workload = .all

    // `.unconditional` on the numeric options: a negative value is the value, not an option,
    // so it reaches the range check and its message instead of "Missing value".
    @Option(parsing: .unconditional, help: ArgumentHelp("Threads (AttentionThreads.setCount; OpenBLAS runs the projections on as many). Default: the library default.",
                               valueName: "N"))
    var threads: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("Timed repetitions per workload (default: forward 11, generate 5).", valueName: "N"))
    var repetitions: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("Tokens in the generation loop.", valueName: "N"))
    var tokens: Int = 256

    @Flag(help: "Skip the correctness checks (one untimed warm-up rep runs instead).")
    var noCheck = false

    @Flag(help: """
        forward: also time its parts, interleaved rep by rep with the layer: the four \
        projections alone (Linear on [8, 128, 768]) and the core attention alone \
        (scaledDotProductAttention on [8, 12, 128, 64]); the rest is the layer's median \
        minus both (head split/merge copies, allocation, thread hand-offs).
        """)
    var breakdown = false

    @Option(help: "Output format: table, csv or json.")
    var format: OutputFormat = .table

    @Flag(help: "No progress lines on stderr.")
    var quiet = false

    @Option(parsing: .unconditional, help: "Seed of the inputs and weights.")
    var seed: UInt64 = 7

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1, got \(threads).") }
        if let threads, threads > AttentionThreads.maximum {
            throw ValidationError("--threads must be at most \(AttentionThreads.maximum), got \(threads).")
        }
        if let repetitions, repetitions < 1 { throw ValidationError("--repetitions must be at least 1, got \(repetitions).") }
        if repetitions != nil && workload == .bandwidth {
            throw ValidationError("--repetitions applies to forward and generate; the bandwidth workload always takes 7 passes.")
        }
        if breakdown && (workload == .generate || workload == .bandwidth) {
            throw ValidationError("--breakdown times the forward pass's parts; use it with --workload forward or all.")
        }
        guard tokens >= 1 else { throw ValidationError("--tokens must be at least 1, got \(tokens).") }
        // The loop holds about six [tokens, 2048] float arrays (inputs, their steps, outputs,
        // the check's sequence and forward pass) and the cache, up to twice 1024 floats per
        // token: refused beyond half the machine's memory, like the suite's shapes.
        let bytesPerToken = 4 * (6 * 2048 + 2 * 1024)
        let (bytes, overflow) = tokens.multipliedReportingOverflow(by: bytesPerToken)
        try checkHalfOfMemory(bytes: overflow ? nil : bytes, "--tokens \(tokens)", "of memory")
    }

    mutating func run() throws {
        let progress = Progress(quiet: quiet)
        defer { progress.clear() }
        if let threads { try libraryCall { try AttentionThreads.setCount(threads) } }
        let threadCount = try libraryCall { try AttentionThreads.count() }
        let machine = MachineInfo.current(cores: AttentionThreads.coreCount)

        var results: [LayerResult] = []
        var bandwidth: Bandwidth?
        if workload == .all || workload == .bandwidth {
            progress.update("bandwidth: memcpy and read of 512 MiB…")
            bandwidth = measureBandwidth(threads: threadCount)
        }
        if workload == .all || workload == .forward {
            results.append(try libraryCall { try forwardBench(progress: progress) })
        }
        if workload == .all || workload == .generate {
            results.append(try libraryCall { try generateBench(progress: progress, copyBandwidth: bandwidth?.copy) })
        }
        progress.clear()

        switch format {
        case .json:
            print(try layerJSON(results, bandwidth: bandwidth, threads: threadCount))
        case .csv:
            print("workload,threads,reps,median_ms,min_ms,gflops,tokens_per_s,gb_per_s,max_err")
            if let bandwidth {
                // The machine's bandwidth in the gb_per_s column (median of 7 passes over 512 MiB).
                print("bandwidth-copy,\(threadCount),7,,,,,\(fmt(bandwidth.copy / 1e9)),")
                print("bandwidth-read,\(threadCount),7,,,,,\(fmt(bandwidth.read / 1e9)),")
            }
            for r in results {
                let cells: [String] = [r.name, "\(threadCount)", "\(r.times.count)", fmt(r.median * 1e3), fmt(r.minimum * 1e3),
                                       r.flops.map { fmt($0 / r.median / 1e9) } ?? "", r.tokens.map { fmt(Double($0) / r.median) } ?? "",
                                       r.bytes.map { fmt($0 / r.median / 1e9) } ?? "", r.maxError.map { "\($0.value)" } ?? ""]
                print(cells.joined(separator: ","))
                // --breakdown: each part's median as a row of its own ("forward-projections", …).
                for (part, seconds) in r.parts { print("\(r.name)-\(part),\(threadCount),\(r.times.count),\(fmt(seconds * 1e3)),,,,,") }
            }
        case .table:
            let cpu = machine.cpuModel.map { "\($0), " } ?? ""
            print("attention-bench layer | \(cpu)\(machine.cores) cores | threads: \(threadCount) | "
                  + "\(machine.openBLASConfig ?? "OpenBLAS") | load \(machine.loadAverage.map { String(format: "%.2f", $0) } ?? "?")")
            #if DEBUG
            print("DEBUG BUILD: timings are meaningless, use -c release")
            #endif
            if let bandwidth {
                print(String(format: "bandwidth (%d threads, 512 MiB): copy %.1f GB/s (read + write), read %.1f GB/s",
                             threadCount, bandwidth.copy / 1e9, bandwidth.read / 1e9))
            }
            for r in results { print(r.tableLine(copyBandwidth: bandwidth?.copy, readBandwidth: bandwidth?.read)) }
        }
        if let failed = results.first(where: { r in r.maxError.map { !($0.value <= $0.tolerance) } ?? false }) {
            throw BenchFailure(description: "\(failed.name): check failed, max error \(failed.maxError!.value)")
        }
    }

    // MARK: forward

    func forwardBench(progress: Progress) throws -> LayerResult {
        let (B, L, E, H) = (8, 128, 768, 12)
        progress.update("forward: building the layer and inputs…")
        let layer = try MultiHeadAttention(modelDim: E, heads: H, seed: seed)
        let layerWithBias = try withRandomBiases(layer, seed: seed &+ 1)
        var generator = SplitMix64(seed: seed &+ 2)
        let x = try Tensor(shape: [B, L, E], scalars: generator.normals(count: B * L * E))

        var error: CheckedError?
        if noCheck {
            _ = try layerWithBias(query: x, key: x, value: x)
        } else {
            progress.update("forward: checking against float64…")
            let out = try layerWithBias(query: x, key: x, value: x)
            error = CheckedError(value: float64Check(layerWithBias, x, output: out, rows: 4), tolerance: 1e-3)
        }
        let reps = repetitions ?? 11
        var times: [Double] = []
        var projectionTimes: [Double] = [], attentionTimes: [Double] = []
        let heads = try (0..<3).map { i in
            try Tensor(shape: [B, H, L, E / H], scalars: generator.normals(count: B * L * E))   // [B, H, L, Dk]
        }
        let projections = [layerWithBias.queryProjection, layerWithBias.keyProjection,
                           layerWithBias.valueProjection, layerWithBias.outputProjection]
        for rep in 0..<reps {
            progress.update("forward: rep \(rep + 1)/\(reps)…")
            times.append(try time { _ = try layerWithBias(query: x, key: x, value: x) })
            if breakdown {
                projectionTimes.append(try time { for p in projections { _ = try p(x) } })   // 4 × [1024, 768]·[768, 768]ᵀ
                attentionTimes.append(try time {
                    _ = try scaledDotProductAttention(query: heads[0], key: heads[1], value: heads[2], kernel: .automatic)
                })
            }
        }
        let flops = Double(8 * B * L * E * E) + Double(4 * B * H * L * L * (E / H))
        var result = LayerResult(name: "forward", description: "BERT-base B8 L128 E768 H12", times: times,
                                 flops: flops, maxError: error)
        if breakdown, let p = median(projectionTimes), let a = median(attentionTimes) {
            result.parts = [("projections", p), ("attention", a), ("rest", result.median - p - a)]
        }
        return result
    }

    // MARK: generate

    func generateBench(progress: Progress, copyBandwidth: Double?) throws -> LayerResult {
        let (E, H, Hkv, T) = (2048, 32, 8, tokens)
        progress.update("generate: building the layer and inputs…")
        let layer = try withRandomBiases(MultiHeadAttention(modelDim: E, heads: H, kvHeads: Hkv, seed: seed &+ 3), seed: seed &+ 4)
        var generator = SplitMix64(seed: seed &+ 5)
        let all = generator.normals(count: T * E)
        let steps = try (0..<T).map { t in try Tensor(shape: [1, 1, E], scalars: Array(all[(t * E)..<((t + 1) * E)])) }

        func loop() throws -> [Float] {
            var cache = layer.makeCache(batch: 1)
            var outputs: [Float] = []
            outputs.reserveCapacity(T * E)
            for token in steps { outputs += try layer.decode(token, cache: &cache).scalars }
            return outputs
        }
        var error: CheckedError?
        if noCheck {
            _ = try loop()
        } else {
            progress.update("generate: checking against a causal forward pass…")
            let generated = try loop()
            let sequence = try Tensor(shape: [1, T, E], scalars: all)
            let full = try layer(query: sequence, key: sequence, value: sequence, mask: .causal(.upperLeft))
            let worst = zip(generated, full.scalars).map { Swift.abs($0 - $1) }.max() ?? 0
            error = CheckedError(value: Double(worst), tolerance: 1e-3)
        }
        let reps = repetitions ?? 5
        var times: [Double] = []
        for rep in 0..<reps {
            progress.update("generate: rep \(rep + 1)/\(reps) (\(T) tokens)…")
            times.append(try time { _ = try loop() })
        }
        let projections = [layer.queryProjection, layer.keyProjection, layer.valueProjection, layer.outputProjection]
        let weightBytes = projections.reduce(0) { $0 + 4 * ($1.weight.count + ($1.bias?.count ?? 0)) }
        // Step t (0-based) reads t + 1 cached positions of K and V: 2·Hkv·(t+1)·Dk floats.
        let kvBytes = 4 * 2 * Hkv * (E / H) * (T * (T + 1) / 2)
        let bytes = Double(T * weightBytes + kvBytes)
        return LayerResult(name: "generate", description: "GQA E2048 H32/8 B1, \(T) tokens",
                           times: times, tokens: T, bytes: bytes, maxError: error)
    }

    // MARK: helpers

    /// The same layer with biases drawn from normals × 0.1 (fresh layers have zero biases).
    func withRandomBiases(_ layer: MultiHeadAttention, seed: UInt64) throws -> MultiHeadAttention {
        var generator = SplitMix64(seed: seed)
        func biased(_ p: Linear) throws -> Linear {
            try Linear(weight: p.weight, bias: Tensor(shape: [p.outputDim], scalars: generator.normals(count: p.outputDim).map { $0 * 0.1 }))
        }
        return try MultiHeadAttention(heads: layer.heads, kvHeads: layer.kvHeads,
                                      queryProjection: biased(layer.queryProjection), keyProjection: biased(layer.keyProjection),
                                      valueProjection: biased(layer.valueProjection), outputProjection: biased(layer.outputProjection))
    }

    func time(_ body: () throws -> Void) rethrows -> Double {
        let clock = ContinuousClock()
        let start = clock.now
        try body()
        return seconds(clock.now - start)
    }
}

/// A check's worst error and the bound it must stay within.
struct CheckedError {
    var value: Double
    var tolerance: Double
}

struct LayerResult {
    var name: String
    var description: String
    var times: [Double]
    var flops: Double? = nil
    var tokens: Int? = nil
    var bytes: Double? = nil
    var maxError: CheckedError?
    /// Medians of the parts (`--breakdown`), in seconds.
    var parts: [(String, Double)] = []

    var median: Double { medianOrNaN(times) }
    var minimum: Double { times.min() ?? .nan }

    func tableLine(copyBandwidth: Double?, readBandwidth: Double?) -> String {
        var line = String(format: "%-9@ %-28@ reps %2d  median %8.2f ms  min %8.2f ms", name, description, times.count,
                          median * 1e3, minimum * 1e3)
        if let flops { line += String(format: "  %6.1f GFLOP/s", flops / median / 1e9) }
        if let tokens { line += String(format: "  %6.1f tokens/s", Double(tokens) / median) }
        if let bytes {
            let rate = bytes / median
            line += String(format: "  %5.2f GB/s of weights + K/V", rate / 1e9)
            if let copyBandwidth { line += String(format: " (%.0f%% of copy", 100 * rate / copyBandwidth) }
            if let readBandwidth { line += String(format: ", %.0f%% of read)", 100 * rate / readBandwidth) }
        }
        if let maxError { line += String(format: "  max err %.1e", maxError.value) }
        if !parts.isEmpty {
            line += "\n          parts (medians): " + parts.map { String(format: "%@ %.2f ms", $0.0, $0.1 * 1e3) }.joined(separator: ", ")
        }
        return line
    }
}

/// Runner.swift's `median`, reachable from inside `LayerResult` (whose own `median` hides it).
private func medianOrNaN(_ values: [Double]) -> Double { median(values) ?? .nan }

private func fmt(_ x: Double) -> String { String(format: "%.4g", x) }

func layerJSON(_ results: [LayerResult], bandwidth: Bandwidth?, threads: Int) throws -> String {
    var object: [String: Any] = ["threads": threads]
    if let bandwidth { object["copy_gb_per_s"] = bandwidth.copy / 1e9; object["read_gb_per_s"] = bandwidth.read / 1e9 }
    for r in results {
        var entry: [String: Any] = ["description": r.description, "times_ms": r.times.map { $0 * 1e3 },
                                    "median_ms": r.median * 1e3, "min_ms": r.minimum * 1e3]
        if let flops = r.flops { entry["gflops"] = flops / r.median / 1e9 }
        if let tokens = r.tokens { entry["tokens"] = tokens; entry["tokens_per_s"] = Double(tokens) / r.median }
        if let bytes = r.bytes { entry["bytes"] = bytes; entry["gb_per_s"] = bytes / r.median / 1e9 }
        if let e = r.maxError { entry["max_error"] = e.value }
        for (name, seconds) in r.parts { entry["\(name)_ms"] = seconds * 1e3 }
        object[r.name] = entry
    }
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    return String(decoding: data, as: UTF8.self)
}

// MARK: - float64 check of the forward pass

/// The largest |output − float64 layer| over the first `rows` query rows of batch entry 0,
/// computing the layer from its weights in float64 (projections, softmax, output projection),
/// independently of the library's code paths.
func float64Check(_ layer: MultiHeadAttention, _ x: Tensor<Float>, output: Tensor<Float>, rows: Int) -> Double {
    let (L, E) = (x.shape[1], x.shape[2])
    let (H, Hkv, D, Dv) = (layer.heads, layer.kvHeads, layer.headDim, layer.valueHeadDim)
    func project(_ p: Linear, rows: Range<Int>) -> [[Double]] {
        let w = p.weight.scalars, b = p.bias?.scalars
        return rows.map { r in
            (0..<p.outputDim).map { o in
                var s = Double(b?[o] ?? 0)
                for i in 0..<E { s += Double(x.scalars[r * E + i]) * Double(w[o * E + i]) }
                return s
            }
        }
    }
    let q = project(layer.queryProjection, rows: 0..<rows)
    let k = project(layer.keyProjection, rows: 0..<L)
    let v = project(layer.valueProjection, rows: 0..<L)
    var worst = 0.0
    for i in 0..<rows {
        var concat = [Double](repeating: 0, count: H * Dv)
        for h in 0..<H {
            let kh = h / (H / Hkv)
            var scores = (0..<L).map { j in
                (0..<D).reduce(0.0) { $0 + q[i][h * D + $1] * k[j][kh * D + $1] } / Double(D).squareRoot()
            }
            let m = scores.max()!
            scores = scores.map { Foundation.exp($0 - m) }
            let total = scores.reduce(0, +)
            for j in 0..<L { for d in 0..<Dv { concat[h * Dv + d] += scores[j] / total * v[j][kh * Dv + d] } }
        }
        let wo = layer.outputProjection.weight.scalars, bo = layer.outputProjection.bias?.scalars
        for o in 0..<layer.outputDim {
            var s = Double(bo?[o] ?? 0)
            for c in 0..<(H * Dv) { s += concat[c] * Double(wo[o * H * Dv + c]) }
            worst = max(worst, Swift.abs(s - Double(output.scalars[i * layer.outputDim + o])))
        }
    }
    return worst
}

// MARK: - Memory bandwidth

struct Bandwidth {
    /// memcpy, bytes read + bytes written per second.
    var copy: Double
    /// A SIMD sum, bytes read per second.
    var read: Double
}

/// Copy and read bandwidth over 512 MiB buffers (far beyond the caches), each of `threads`
/// threads working on its own contiguous slice; medians of 7 after one warm-up pass.
func measureBandwidth(threads: Int) -> Bandwidth {
    let bytes = 512 << 20
    let source = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 4096)
    let destination = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 4096)
    defer { source.deallocate(); destination.deallocate() }
    memset(source, 1, bytes)
    memset(destination, 2, bytes)                         // fault every page in before timing
    let parts = max(1, threads)
    let slice = bytes / parts
    let job = UncheckedBox((source, destination))

    func timed(_ body: @Sendable (Int) -> Void) -> Double {
        let clock = ContinuousClock()
        var samples: [Double] = []
        for rep in 0..<8 {
            let start = clock.now
            DispatchQueue.concurrentPerform(iterations: parts, execute: body)
            if rep > 0 { samples.append(seconds(clock.now - start)) }
        }
        return median(samples) ?? .nan
    }
    let copyTime = timed { part in
        let (s, d) = job.value
        memcpy(d + part * slice, s + part * slice, slice)
    }
    let sink = UncheckedBox(UnsafeMutablePointer<Float>.allocate(capacity: parts))
    defer { sink.value.deallocate() }
    let readTime = timed { part in
        let (s, _) = job.value
        let p = (s + part * slice).assumingMemoryBound(to: SIMD8<Float>.self)
        var a = SIMD8<Float>(), b = SIMD8<Float>(), c = SIMD8<Float>(), d = SIMD8<Float>()
        var i = 0
        let count = slice / 32
        while i + 4 <= count {
            a += p[i]; b += p[i + 1]; c += p[i + 2]; d += p[i + 3]
            i += 4
        }
        sink.value[part] = (a + b + c + d).sum()
    }
    return Bandwidth(copy: 2 * Double(parts * slice) / copyTime, read: Double(parts * slice) / readTime)
}

/// Shares raw pointers with `concurrentPerform`'s workers, which touch disjoint slices.
struct UncheckedBox<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}
