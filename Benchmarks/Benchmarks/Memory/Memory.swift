// Memory: (B, Hq, Hkv, L, S, D) = (1, 1, 1, 32768, 32768, 64) with the `tiled` kernel at one
// and two threads. Issue 3's target: the whole process stays below 150 MB resident. The inputs
// and output are 32 MiB; a materialised score matrix would be 4 GiB, so `blas` is not run here.
//
// Reported per benchmark (each runs in its own process):
// - peakMemoryResident: the process's resident set, sampled every ~5 ms while it runs
//   (inputs, made in setup, included);
// - peakMemoryResidentDelta: the same less the resident set at the start of the run, i.e. what
//   the kernel adds on top of the process and its inputs;
// - mallocBytesCount: bytes requested from malloc per call (output and kernel scratch);
// - VmHWM: the process's resident high-water mark from /proc/self/status, read after each
//   call: exact (not sampled) and over the whole life of the process.
import AttentionBenchmarkSupport
import AttentionKit
import Benchmark

let highWaterMark = BenchmarkMetric.custom("VmHWM (process peak resident)", polarity: .prefersSmaller,
                                           useScalingFactor: false)

let benchmarks: @Sendable () -> Void = {
    registerAttentionBenchmarks(
        Shapes.long, kernels: [.tiled],
        metrics: [.wallClock, .peakMemoryResident, .peakMemoryResidentDelta, .mallocBytesCount,
                  highWaterMark],
        units: [.peakMemoryResident: .mega, .peakMemoryResidentDelta: .mega,
                .mallocBytesCount: .mega, highWaterMark: .mega],
        minimumIterations: 5,
        measure: { benchmark in
            if let bytes = residentHighWaterMark() { benchmark.measurement(highWaterMark, bytes) }
        })
}
