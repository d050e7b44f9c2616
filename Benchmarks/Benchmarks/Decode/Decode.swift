// Decode: one query per head against a 4096-key cache (L = 1, S = 4096, D = 128), multi-head
// (Hq = Hkv = 32) and grouped-query (Hq = 32, Hkv = 8), with `blas` and `tiled` at one and two
// threads. The work is bound by reading K and V (128 MiB together with 32 key/value heads, 32 MiB
// with 8), so wall clock is the figure of merit; the tiled kernel splits the keys across threads
// here (split-KV).
import AttentionBenchmarkSupport
import AttentionKit
import Benchmark

let benchmarks: @Sendable () -> Void = {
    for shape in Shapes.decode {
        registerAttentionBenchmarks(
            shape, kernels: [.blas, .tiled],
            metrics: [.wallClock, .peakMemoryResident],
            units: [.peakMemoryResident: .mega])
    }
}
