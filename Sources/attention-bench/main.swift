/*
attention-bench: times AttentionKit's scaled dot-product attention kernels on the CPU and
checks each one against the naive kernel.

    swift run -c release attention-bench                     # default suite, all cores
    swift run -c release attention-bench --threads 1         # default suite, one thread
    swift run -c release attention-bench --batch 1 --heads 8 --query-length 512 --dim 64 \
        --threads 1 --repetitions 9                          # one custom shape
    swift run -c release attention-bench --format json > results.json
    swift run -c release attention-bench suite --help        # every option and column
    swift run attention-bench run --query q.npy --key k.npy --value v.npy --output out.npy
                                                             # attention on .npy files (RunCommand.swift)

What it does, per shape (default suite: encoder B1 H8 L512 S512 D64, batched short B32 H8
L128 D64, ViT B4 H12 L197 D64, decode GQA B1 Hq32 Hkv8 L1 S4096 D128):

1. Fills Q [B,Hq,L,Dk], K [B,Hkv,S,Dk], V [B,Hkv,S,Dv] with standard normal floats from a
   fixed seed (SplitMix64 + Box-Muller, Random.swift), so every run sees the same inputs.
2. Estimates naive's time from a ~4 MFLOP problem with the same S, D and mask (naive's
   cost per query row does not depend on the row). If one full naive run fits
   --naive-budget (3 s), naive runs on the full problem: that run is the reference and
   naive's warm-up. Otherwise naive is not timed ("naive skipped: est. 40 s") and the
   reference is naive on a slice: batch entry 0, key/value head 0 and its query-head group
   (B=1, Hkv=1, Hq=Hq/Hkv, same L, S, D, mask), which is the leading part of the full
   output, so the fast kernels are checked on their real full-size run. If even the slice
   is over budget, only its first query rows (last rows for the lower-right causal mask,
   so the diagonal lines up) are checked.
3. For each kernel: one run checked against the reference (max abs error), which is also
   the warm-up, then timed runs (11, or stop after 3 s once 3 are done; an explicit
   --repetitions N runs exactly N). Reports the median, GFLOP/s from the dense count
   2·B·Hq·L·S·(Dk+Dv) (masked problems are counted dense too; softmax not counted),
   speed-up = median naive / median kernel, and for blas/tiled/automatic the GEMM share =
   median over reps of attentionGEMMOnly time / kernel time, the two timed alternately rep
   by rep so drift in the machine's speed hits both alike (a share above 1.05, or per-rep
   shares spread over more than 0.3, is marked "?" with a note: the machine changed speed).
   Times are wall time of one library call on ContinuousClock (monotonic), including
   argument validation and allocating the zeroed output.

Output: a header (cores, threads, OpenBLAS config and thread note, load average), then an
aligned table, csv or json (stdout); progress on stderr (\r-overwritten on a terminal).
AttentionError and invalid options exit non-zero with one line; so does a kernel whose
max error exceeds --tolerance (1e-3), after the results are printed.

The kernels, and why each exists:

- naive: scalar loops that read like the formula, one query row at a time, single-
  threaded whatever --threads says. It is the oracle: easy to trust, so everything else
  is checked against it. ~1.2-2.3 GFLOP/s here (its P·V loop walks V with stride Dv).
- blas: per block of query rows of one (batch, kv head), scores = scale·Q·Kᵀ (sgemm), the
  mask + softmax in Swift SIMD, then P·V (sgemm); the Hq/Hkv query heads sharing a K/V
  head form one matrix, keys that a causal/key-length mask hides from the whole block are
  never multiplied, blocks run on AttentionKit's threads with OpenBLAS set to 1 thread.
  It materialises a block of whole score rows, and is what returns the weights.
- tiled: the same blocks, but the keys stream through in tiles with an online softmax
  (running max and sum, the partial output rescaled when the max grows), so memory is
  O(L·D); for blocks of ≤ 4 rows (decode; ≤ 8 when K and V take 16 MiB or more) Swift row-wise products that stream K and V
  once with prefetching instead of sgemm, and split-KV across threads when there are too
  few blocks. Added to beat PyTorch's CPU SDPA on long and decode shapes;
  measured against it by Benchmarks/compare-pytorch.py (README, "Against PyTorch").
- automatic: what callers get by default: tiled, or blas when weights are returned or S <= 32. Timed
  separately so that a dispatch rule that picks badly shows up here.
- GEMM-only (SPI, `@_spi(Benchmarking) attentionGEMMOnly`): only a kernel's matrix
  products (its BLAS calls; for tiled's decode blocks, its row-wise products) on the same
  work split and tiles, no mask/softmax. Not attention; its time over the kernel's
  time is the GEMM share: near 1 means the softmax layer is nearly free and only a better
  GEMM (or fusing) can help; well below 1 means the Swift layer between the GEMMs is the
  target. The automatic row resolves to the kernel automatic runs.

History measured in this session (B1 H8 L512 D64, 1 thread). Before the library's
softmax changes of 2026-11-25 ~16:57 UTC (compare-select row max instead of
`pointwiseMax`, which Swift does not vectorise; normalising the Dv-wide output rows
instead of the S-wide score rows; a transparent `exponential`), blas was 12-20x naive
with a GEMM share of 0.47-0.51 over 7 runs (perf: the scalarised max loop and the
out-of-line `exponential` were the hot spots after sgemm). After them: 21.7-26.6x, share
0.72-0.74 over 5 runs.

Measured (2026-11-25, Debian 12, 2 cores AMD EPYC Zen 3 (KVM guest), OpenBLAS 0.3.21
pthread DYNAMIC_ARCH, Swift 6.3.1 release build at the default x86-64 (SSE2) baseline;
library sources as of 17:02 UTC). Medians; run-to-run noise on this VM is about ±20% on
absolute times, less on ratios.

--threads 1 (total wall time 8.4 s):
shape          dims                    kernel     reps  median ms  GFLOP/s  ×naive  max err  GEMM share
encoder        B1 H8 L512 S512 D64     naive         5      322.9     1.66   1.00×      ref           —
                                       blas          5      13.52     39.7   23.9×  5.2e-07        0.73
                                       automatic     5      13.48     39.8   24.0×  5.2e-07        0.72
batched short  B32 H8 L128 S128 D64    naive         4      614.1     1.75   1.00×      ref           —
                                       blas          5      31.76     33.8   19.3×  1.1e-06        0.74
                                       automatic     5      30.75     34.9   20.0×  1.1e-06        0.76
ViT            B4 H12 L197 S197 D64    naive         5      204.2     2.34   1.00×      ref           —
                                       blas          5      10.95     43.6   18.7×  1.2e-06        0.74
                                       automatic     5      11.04     43.2   18.5×  1.2e-06        0.73
decode GQA     B1 H32/8 L1 S4096 D128  naive         5      54.44     1.23   1.00×      ref           —
                                       blas          5      8.011     8.38   6.80×  2.3e-07        0.99
                                       automatic     5      7.375     9.10   7.38×  2.3e-07        1.01

default threads = 2 (total wall time 7.6 s):
shape          dims                    kernel     reps  median ms  GFLOP/s  ×naive  max err  GEMM share
encoder        B1 H8 L512 S512 D64     naive         5      248.1     2.16   1.00×      ref           —
                                       blas          5      6.745     79.6   36.8×  5.2e-07        0.69
                                       automatic     5      6.038     88.9   41.1×  5.2e-07        0.73
batched short  B32 H8 L128 S128 D64    naive         5      475.0     2.26   1.00×      ref           —
                                       blas          5      16.96     63.3   28.0×  1.1e-06        0.77
                                       automatic     5      16.89     63.6   28.1×  1.1e-06        0.76
ViT            B4 H12 L197 S197 D64    naive         5      209.2     2.28   1.00×      ref           —
                                       blas          5      6.272     76.0   33.4×  1.2e-06        0.72
                                       automatic     5      6.246     76.3   33.5×  1.2e-06        0.75
decode GQA     B1 H32/8 L1 S4096 D128  naive         5      54.91     1.22   1.00×      ref           —
                                       blas          5      5.151     13.0   10.7×  2.3e-07        0.99
                                       automatic     5      5.405     12.4   10.2×  2.3e-07        0.96

--batch 1 --heads 8 --query-length 512 --dim 64 --threads 1 --repetitions 9:
custom  B1 H8 L512 S512 D64  naive  9  253.8 ms   2.12 GFLOP/s   1.00×   ref
                             blas   9  10.79 ms   49.8 GFLOP/s  23.5×   5.2e-07   GEMM share 0.72
Targets (blas ≥ 20× naive and GEMM share ≥ 0.7 at this shape, 1 thread): met, the share
narrowly (0.71-0.74 over 5 runs).

Reading the numbers: at D=64 the GEMM-only rate is ~55-70 GFLOP/s on one core and the
mask + softmax layer is the other ~27% of blas's time. Decode GQA (L=1, 4 query rows per
K/V head) is a different story: a perf profile of blas there shows ~70% of the time in
OpenBLAS packing K and V (sgemm_incopy/itcopy) for 4-row sgemm calls and ~14% in the
sgemm compute kernel, so its GEMM share ≈ 1 means "all GEMM", not "near optimal": an
sgemv or streaming path for very few rows would read K and V (33.5 MB) once instead.

Later versions of the tiled kernel (Benchmarks/NOTES.md, "How the tiled kernel works"; B1 H8 L2048 D64
and the decode shapes, --kernels tiled --no-naive, medians, 2026-11-25):
- v1 (18:46 UTC): online softmax in natural base, max pass with NaN tracking, sgemv per row
  for decode blocks. 173-184 ms on one thread, GEMM share 0.70-0.72.
- v2: base-2 scores (log2 e in the sgemm alpha), a 2^x polynomial with no range-reduction
  multiply, lazy rescaling (reference max moves only when exceeded by > 8), a maxps row
  maximum. 143 ms, share 0.81; the Swift layer ~0.8 ns per score instead of ~1.5.
- v3: memset + beta = 1 score tiles instead of OpenBLAS's beta = 0 pass (sgemm_beta, 5-6 %
  of samples in perf). About 7 % faster in five paired runs.
- v4: Swift row-wise products for decode blocks of up to four rows, a 4 KiB prefetch, four
  query rows per key/value load. MHA decode B1 H32 L1 S4096 D128: 15.3 -> 10-11 ms on one
  thread (12 GB/s of K and V); GQA B1 H32/8: 5.8 -> 5.0 ms (one thread), 3.2 -> 2.5 (two).
- v5 (21:21 UTC): each row's reference maximum written into the score tile before the
  beta = 1 sgemm (scores arrive as s - m, nothing to subtract), the first tile keeping the
  reference 0 when its maximum is within [0, 8], and on unmasked rows a Cauchy-Schwarz
  bound on the scores that lets the 2^x drop its clamp and the step find the maximum in the
  same pass as the exponentials. Nine alternating rounds against v4: 131.9 -> 129.6 ms,
  GEMM share 0.797 -> 0.816 (Swift layer 26.7 -> 23.8 ms, 0.71 ns per score). Review
  fixes after it (NaN keys, sum overflow, distant references, underflowing norms, tiny
  values) left this path's cost unchanged in perf.
- v6 (23:04 UTC): the one-pass step tracks no maximum; the tile's sum of exponentials
  bounds each of them, and a maximum pass runs only when the sum leaves [1, 2^16] (first
  tile) or passes 2^16 relative to the reference; lazy threshold 8 -> 16. Loop 0.65 ->
  0.56 ns per score in a micro-benchmark; alternating rounds against v5 in a slow phase of
  the machine: paired speed-ups 1.040 (L2048), 1.029 (causal), 1.043 (L8192), GEMM share
  0.792 -> 0.836, 0.803 -> 0.831, 0.784 -> 0.824.
- v7 (2026-11-26): tiled lays its tiles and key splits over the keys some row may see (a
  KV cache's key lengths), not over all S, and recomputes in natural units only the
  (batch, kv head) units with a suspect row; automatic runs blas for S <= 32, where five
  alternating rounds per shape measured blas/tiled time ratios of 0.80-0.94 (B1 H8 L16,
  B64 H8 L16, B1 H8 L32 on one and two threads, 1.00 once); at S = 64 the two split
  (B8 H8: 1.17 on one thread, 0.89 on two) and from S = 128 tiled is faster, except
  eight-row decode blocks on one thread (0.87 at H8/1 S16384). The comparison shapes run
  the same code as v6 (two runs against PyTorch: geometric means 1.24 and 1.30 on one
  thread, 1.30 and 1.30 on two).

The blas kernel, version 2 (2026-11-26 ~02:00 UTC): its share at B1 H8 L512 D64 on one
thread was down to 0.70-0.72 on a busy machine, too close to the 0.7 target. It now computes
its scores in base 2 like tiled (log2 e in alpha, the 2^x polynomial: 16 vector
instructions per 4 lanes against 27 for exp), for blocks whose scores a Cauchy-Schwarz
bound (Frobenius norms of the block's queries and the unit's keys) keeps within float's
range in base 2, and for units of at least 32 query rows; natural units elsewhere. Seven
alternating rounds against version 1 (02:21 UTC): GEMM share 0.72 -> 0.78 (B1 H8 L512),
0.71 -> 0.75 (B32 H8 L128), 0.69 -> 0.74 (ViT), 0.72 -> 0.81 (L2048); paired speed-ups
1.06-1.16. Default suite, one thread: blas 27.6x naive, share 0.79.

tiled v8 (2026-11-26 ~02:40 UTC): decode blocks of five to eight rows (a group of eight query
heads per key/value head) take the row-wise products when the call's K and V in use take
16 MiB or more, instead of sgemm per 512-key tile: v7's one loss to blas (0.87 at H8/1
S16384 on one thread). Builds with the limit at 4 and 8, five alternating rounds, speed-up
of 8 over 4 (one / two threads): 1.50 / 1.03 at H8/1 S16384, 1.38 / 1.08 at H32/4 S4096,
1.50 / 1.26 at H32/4 S16384, 1.52 / 1.16 at H64/8 S8192, but 0.57 / 0.65 at H8/1 S4096 and
1.10 / 0.67 at S8192, whose K and V stay in L3 between calls (SSE2 Swift against OpenBLAS's
AVX2 sgemm), hence the 16 MiB threshold. blas / tiled after it: H8/1 S16384 1.22 / 2.22,
H32/4 S16384 1.17 / 1.14, H8/1 S4096 0.84 / 0.86 (still a loss, on L3-resident K and V).
The rule counts rows, so six to eight queries per head against a long cache (draft-token
verification) take it too: 1.85 / 1.31 at H32 L6 S4096 lower-right causal.

Mask layer, boolean tensors (2026-11-26 ~04:50 UTC, both kernels): a boolean [S] padding
mask made B1 H8 L2048 D64 take 2.5 times the unmasked time (attention-bench run, 2 threads,
median of 5: 200-236 ms masked against 80-88 unmasked); perf put 53 % of it in the mask
layer, whose SIMD8<UInt8> -> SIMD8<Int32> conversion compiled to a per-lane loop through
the stack (7.0 ns per key in a swiftc -O micro-benchmark). Spreading eight bytes over lanes
with shifts instead: 0.22 ns per key, and the same call 80-89 ms, bit-identical output.
`--mask boolean` and `--mask bias` now time the mask-tensor paths in the suite.

Both kernels, non-finite rows (2026-11-26 ~04:00 UTC): rows that finish NaN or +-inf, or
without weight although keys were allowed, are computed again in float64 (excluded keys
left out), checked as each block's rows are normalised: +0.41 % instructions for a blas run
at B32 H8 L128 on one thread (callgrind), timing ratios against the build before 0.98-1.05.
*/

import ArgumentParser
import Foundation

/// The root command. With no subcommand it runs `suite`, so `attention-bench` and all of its
/// options work as before; `run` computes attention on .npy files (RunCommand.swift); `layer`
/// times the multi-head attention layer (LayerBench.swift).
struct AttentionBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attention-bench",
        abstract: "Times AttentionKit's attention kernels and layer, or runs them on tensors from .npy files.",
        discussion: """
            With no subcommand, runs `suite`: `attention-bench --threads 1` times the default \
            suite on one thread. Its options (shape, mask, kernels, threads, repetitions, \
            --sweep, --format) are listed by `attention-bench help suite`.
            """,
        subcommands: [Suite.self, Run.self, LayerBench.self],
        defaultSubcommand: Suite.self)
}

// A reader that goes away (`| head`, a FIFO's reader closing) makes writes fail with EPIPE
// instead of killing the process, so that `run` can undo its renames and say so.
signal(SIGPIPE, SIG_IGN)

// Like `AttentionBenchCommand.main()`, except that an error is one line on stderr: ArgumentParser
// follows a parse error with a help line and the usage, which buries the message. Help
// (`--help`, `help run`) is not an error and still prints the full help with status 0.
do {
    var command = try AttentionBenchCommand.parseAsRoot()
    try command.run()
} catch {
    let status = AttentionBenchCommand.exitCode(for: error)
    if status.isSuccess { AttentionBenchCommand.exit(withError: error) }
    let message = AttentionBenchCommand.message(for: error)
        .split(whereSeparator: \.isNewline).joined(separator: "; ")
    if !message.isEmpty { FileHandle.standardError.write(Data("Error: \(message)\n".utf8)) }
    exit(status.rawValue)
}
