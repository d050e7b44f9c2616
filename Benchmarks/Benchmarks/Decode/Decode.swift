// Decode: one query per head against a long key cache. The two shapes, L = 1, S = 4096,
// D = 128, multi-head (Hq = Hkv = 32) and grouped-query (Hq = 32, Hkv = 8), and one with a single
// key/value head (Hq = 8, Hkv = 1, S = 16384), with `blas` and `tiled` at one and two threads.
// The work is bound by reading K and V (128 MiB together with 32 key/value heads, 32 MiB with 8,
// 16 MiB with 1), so wall clock is the figure of merit. The first two have enough (batch, key/value
// head) units to keep both threads busy, so the tiled kernel gives each thread whole heads; with
// one key/value head it splits the keys across the threads (split-KV) and merges the partials.
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
