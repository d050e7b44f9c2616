import AttentionKit
import Benchmark
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One attention problem: query `[B, Hq, L, D]`, key and value `[B, Hkv, S, D]`.
public struct AttentionShape: Sendable {
    public var batch, queryHeads, keyValueHeads, queryLength, keyLength, dim: Int
    public var causal: Bool

    public init(_ batch: Int, _ queryHeads: Int, _ keyValueHeads: Int,
                _ queryLength: Int, _ keyLength: Int, _ dim: Int, causal: Bool = false) {
        self.batch = batch
        self.queryHeads = queryHeads
        self.keyValueHeads = keyValueHeads
        self.queryLength = queryLength
        self.keyLength = keyLength
        self.dim = dim
        self.causal = causal
    }

    /// `B1 Hq8 Hkv8 L2048 S2048 D64 causal`: no regex metacharacters, so `--filter` takes
    /// any part of it literally.
    public var name: String {
        "B\(batch) Hq\(queryHeads) Hkv\(keyValueHeads) L\(queryLength) S\(keyLength) D\(dim)"
            + (causal ? " causal" : "")
    }

    /// Multiply-adds of Q·Kᵀ and P·V counted as 2 flops each; a causal mask keeps about half.
    public var flops: Double {
        let full = 4.0 * Double(batch * queryHeads) * Double(queryLength) * Double(keyLength)
            * Double(dim)
        return causal ? full / 2 : full
    }

    public var mask: AttentionMask { causal ? .causal(.upperLeft) : .none }
}

/// The eight shapes of issue 3, (B, Hq, Hkv, L, S, D, causal).
public enum Shapes {
    public static let prefill: [AttentionShape] = [
        AttentionShape(1, 8, 8, 512, 512, 64),
        AttentionShape(1, 8, 8, 2048, 2048, 64),
        AttentionShape(1, 8, 8, 2048, 2048, 64, causal: true),
        AttentionShape(1, 1, 1, 8192, 8192, 64),
        AttentionShape(32, 8, 8, 128, 128, 64),
        AttentionShape(4, 12, 12, 197, 197, 64),
    ]
    /// One query against a 4096-key cache: multi-head, then grouped-query (4 query heads per
    /// key/value head).
    public static let decode: [AttentionShape] = [
        AttentionShape(1, 32, 32, 1, 4096, 128),
        AttentionShape(1, 32, 8, 1, 4096, 128),
        AttentionShape(1, 8, 1, 1, 16384, 128),     // one key/value head: split-KV on two threads
    ]
    /// Long enough that a materialised score matrix (4 GiB for one head) cannot be hidden.
    public static let long = AttentionShape(1, 1, 1, 32768, 32768, 64)
}

/// The inputs of one problem, made once in a benchmark's setup, outside the measured region.
public struct AttentionInputs: @unchecked Sendable {
    public let shape: AttentionShape
    public let query, key, value: Tensor<Float>

    /// Uniform values in [-1, 1) from a fixed-seed SplitMix64, so every run multiplies the same
    /// numbers.
    public init(_ shape: AttentionShape, seed: UInt64 = 0x5EED) throws {
        var state = seed
        func tensor(_ dims: [Int]) throws -> Tensor<Float> {
            let count = dims.reduce(1, *)
            let scalars = [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
                for i in 0..<count {
                    state &+= 0x9E37_79B9_7F4A_7C15
                    var z = state
                    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                    z ^= z >> 31
                    buffer[i] = Float(z >> 40) * 0x1p-23 - 1   // 24 random bits
                }
                initialized = count
            }
            return try Tensor(shape: dims, scalars: scalars)
        }
        let s = shape
        self.shape = s
        query = try tensor([s.batch, s.queryHeads, s.queryLength, s.dim])
        key = try tensor([s.batch, s.keyValueHeads, s.keyLength, s.dim])
        value = try tensor([s.batch, s.keyValueHeads, s.keyLength, s.dim])
    }

    /// One attention call, with `dropout` on the weights when given; the output is passed to
    /// `blackHole` so it cannot be optimised away.
    public func run(_ kernel: AttentionKernel, dropout: Dropout? = nil) throws {
        let output = try scaledDotProductAttention(
            query: query, key: key, value: value, mask: shape.mask, dropout: dropout, kernel: kernel)
        blackHole(output)
    }
}

/// The thread counts every benchmark runs at, set explicitly: 1, and both cores of the
/// reference machine.
public let threadCounts = [1, 2]

/// Registers one benchmark per kernel × thread count for `shape`, named
/// `<kernel> <shape> threads=<n>`, e.g. `tiled B1 Hq8 Hkv8 L2048 S2048 D64 causal threads=2`,
/// and `… threads=<n> dropout=<p>` when the calls apply `dropout` (its seed is fixed, so every
/// call drops the same weights).
///
/// The inputs are made and the thread count is set in the benchmark's own setup closure, so
/// neither is timed, and a benchmark process (package-benchmark runs each benchmark in its
/// own process) only ever holds the inputs of the one shape it runs.
///
/// Iterations are capped from the shape's flop count so that each benchmark takes a couple of
/// seconds: about `secondsPerBenchmark` of work at a pessimistic 20 GFLOP/s per thread, at
/// least `minimumIterations` (5 by default: the median of at least five) and at most 50.
public func registerAttentionBenchmarks(
    _ shape: AttentionShape, kernels: [AttentionKernel], threads: [Int] = threadCounts,
    metrics: [BenchmarkMetric], units: [BenchmarkMetric: BenchmarkUnits] = [:],
    minimumIterations: Int = 5, secondsPerBenchmark: Double = 1.5, dropout: Dropout? = nil,
    measure: (@Sendable (Benchmark) -> Void)? = nil
) {
    for kernel in kernels {
        for threadCount in threads {
            let estimate = shape.flops / (20e9 * Double(threadCount))
            let iterations = min(50, max(minimumIterations, Int(secondsPerBenchmark / estimate)))
            let configuration = Benchmark.Configuration(
                metrics: metrics,
                timeUnits: .microseconds,
                units: units,
                warmupIterations: 1,
                // The iteration count is what ends a run; the duration is only a safety net
                // sized well above `iterations` × the estimate.
                maxDuration: .seconds(max(10, Int(Double(iterations) * estimate * 4))),
                maxIterations: iterations
            )
            Benchmark(
                "\(kernel.rawValue) \(shape.name) threads=\(threadCount)"
                    + (dropout.map { " dropout=\($0.probability)" } ?? ""),
                configuration: configuration
            ) { (benchmark: Benchmark, inputs: AttentionInputs) in
                do {
                    try inputs.run(kernel, dropout: dropout)
                } catch {
                    benchmark.error("attention failed: \(error)")
                }
                measure?(benchmark)
            } setup: {
                try AttentionThreads.setCount(threadCount)
                return try AttentionInputs(shape)
            }
        }
    }
}

/// The process's resident high-water mark (`VmHWM` in `/proc/self/status`) in bytes: the most
/// the whole process has ever held resident, including its inputs. Unlike package-benchmark's
/// sampled `peakMemoryResident`, it cannot miss a short spike. Nil where `/proc` is missing.
public func residentHighWaterMark() -> Int? {
    guard let file = fopen("/proc/self/status", "r") else { return nil }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, Int32(line.count), file) != nil {
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) },
                          as: UTF8.self)
        if text.hasPrefix("VmHWM:") {
            let kilobytes = text.dropFirst(6).split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) }
            return kilobytes.map { $0 * 1024 }
        }
    }
    return nil
}
