// Dropout: what dropout on the attention weights (p = 0.1) adds to a call. Two prefill shapes,
// one long (B1 H8 L2048 D64, 33.5 million weights) and one batched short (B32 H8 L128 D64,
// 4.2 million), with `blas` and `tiled` at one and two threads, each timed without dropout and
// with it in the same run, so the difference of the two is the cost of drawing and applying
// the pattern (one SplitMix64 hash per weight, `Dropout.apply`).
import AttentionBenchmarkSupport
import AttentionKit
import Benchmark

let benchmarks: @Sendable () -> Void = {
    let dropout = try! Dropout(probability: 0.1, seed: 1)
    for shape in [AttentionShape(1, 8, 8, 2048, 2048, 64), AttentionShape(32, 8, 8, 128, 128, 64)] {
        for withDropout in [nil, dropout] {
            registerAttentionBenchmarks(
                shape, kernels: [.blas, .tiled], metrics: [.wallClock], dropout: withDropout)
        }
    }
}
