// Prefill: many queries at once (L > 1), the six prefill shapes of issue 3, each with the
// `blas` and `tiled` kernels at one and two threads. Wall clock is the figure of merit;
// peak resident memory shows what each kernel holds on top of its inputs.
import AttentionBenchmarkSupport
import AttentionKit
import Benchmark

let benchmarks: @Sendable () -> Void = {
    for shape in Shapes.prefill {
        registerAttentionBenchmarks(
            shape, kernels: [.blas, .tiled],
            metrics: [.wallClock, .peakMemoryResident],
            units: [.peakMemoryResident: .mega])
    }
}
