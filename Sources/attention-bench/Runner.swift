@_spi(Benchmarking) import AttentionKit

/// Settings shared by every shape.
struct BenchSettings {
    var kernels: [BenchKernel]
    /// False with `--no-naive`: naive is never timed, only used as the check's reference.
    var timeNaive: Bool
    var mask: MaskKind
    var threads: Int
    var repetitions: Int
    /// Stop a kernel's timed reps once they add up to this many seconds (after at least
    /// `minimumRepetitions`), or nil to always run `repetitions`.
    var timeBudget: Double?
    /// Naive runs on the full problem (and is timed) only if one run is estimated to take
    /// at most this long; otherwise on a slice cut to fit the same budget.
    var naiveBudget: Double
    var tolerance: Float
    var seed: UInt64
    /// Time the GEMM-only calls too (the GEMM share column); off for sweeps.
    var gemmShare = true
    /// `--scaling-baseline`: also time each fast kernel on this many threads, rep by rep.
    var baselineThreads: Int? = nil

    static let minimumRepetitions = 3
}

/// How a kernel's output was checked.
enum CheckKind: String, Encodable {
    /// This row is naive itself, the reference.
    case reference
    /// Compared with naive on the full problem.
    case full
    /// Compared with naive on batch entry 0, key/value head 0 and its query-head group
    /// (and, for very long sequences, only some of the query rows: see `ReferenceSlice`).
    case slice
    /// Not compared.
    case none
}

/// One row of the report: one kernel on one shape.
struct KernelResult {
    var shape: BenchShape
    var mask: MaskKind
    var kernel: BenchKernel
    var threads: Int
    var repetitions: Int = 0
    var median: Double?          // seconds
    var minimum: Double?         // seconds
    var speedup: Double?         // median naive / median kernel
    var maxError: Float?
    var check: CheckKind = .none
    var gemmMedian: Double?      // seconds, attentionGEMMOnly
    var gemmShares: [Double] = []  // per rep: GEMM-only time / kernel time, timed back to back
    var baselineThreads: Int?    // --scaling-baseline
    var baselineMedian: Double?  // seconds, on baselineThreads
    var threadSpeedup: Double?   // median over reps of baseline time / kernel time
    var note: String?
    var failed = false           // max error above --tolerance

    var gflops: Double? { median.map { shape.flops / $0 / 1e9 } }
    /// The median over reps of (GEMM-only time / kernel time), each pair timed back to back:
    /// a slow spell of the machine then shifts both parts of a pair, not one median.
    var gemmShare: Double? { attention_bench.median(gemmShares) }
    /// True when the pairs disagree enough that the share says more about the machine than
    /// the kernel: a median above 1.05 (the products alone cannot take longer than the kernel
    /// that runs them; up to 1.05 is timing noise on kernels that are nearly all products,
    /// such as blas decoding) or per-rep shares spread over more than 0.3.
    var gemmShareNoisy: Bool {
        guard let share = gemmShare, let low = gemmShares.min(), let high = gemmShares.max() else { return false }
        return share > 1.05 || high - low > 0.3
    }
}

/// Inputs for one shape.
struct Inputs {
    var query: Tensor<Float>
    var key: Tensor<Float>
    var value: Tensor<Float>
    var mask: AttentionMask
}

func seconds(_ duration: Duration) -> Double {
    let parts = duration.components
    return Double(parts.seconds) + Double(parts.attoseconds) * 1e-18
}

/// Runs `body` once and returns its result and wall time (monotonic clock).
private func timed<T>(_ body: () throws -> T) rethrows -> (T, Double) {
    let clock = ContinuousClock()
    let start = clock.now
    let result = try body()
    let elapsed = clock.now - start
    return (result, seconds(elapsed))
}

func median(_ values: [Double]) -> Double? {
    guard !values.isEmpty else { return nil }
    let sorted = values.sorted()
    let mid = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/// The largest |a − b| over the first `count` elements; NaN if either side has a NaN.
private func maxAbsError(_ a: [Float], _ b: [Float], count: Int) -> Float {
    precondition(a.count >= count && b.count >= count)
    var worst: Float = 0
    for i in 0..<count {
        let d = abs(a[i] - b[i])
        if d.isNaN { return .nan }
        worst = max(worst, d)
    }
    return worst
}

/// Formats a duration estimate for notes: `0.8 s`, `40 s`, `12 min`.
func formatEstimate(_ s: Double) -> String {
    if s < 1 { return String(format: "%.2f s", s) }
    if s < 10 { return String(format: "%.1f s", s) }
    if s < 600 { return String(format: "%.0f s", s) }
    return String(format: "%.0f min", s / 60)
}

/// Measures every requested kernel on one shape.
struct ShapeBench {
    let shape: BenchShape
    let settings: BenchSettings
    let progress: Progress
    let label: String        // "[2/4] batched short"

    func run() throws -> [KernelResult] {
        progress.update("\(label): generating inputs…")
        let inputs = makeInputs(shape, seed: settings.seed)

        // 1. Estimate naive from a few query rows of the same S, Dk, Dv and mask: naive's
        //    work per row does not depend on the row (it scores every key, masked or not).
        progress.update("\(label): estimating naive…")
        let perRow = try naiveSecondsPerRow(inputs)
        let naiveEstimate = perRow * Double(shape.batch * shape.heads * shape.queryLength)
        let wantNaive = settings.kernels.contains(.naive)
        let timeNaive = wantNaive && settings.timeNaive && naiveEstimate <= settings.naiveBudget

        // 2. The reference output: naive on the full problem when that fits the naive budget
        //    (when naive is timed, this run doubles as its warm-up), else naive on a slice.
        var reference: [Float]?
        var slice: ReferenceSlice?
        var naiveResult: KernelResult?
        let needReference = timeNaive || settings.kernels.contains { $0 != .naive }
        if needReference && naiveEstimate <= settings.naiveBudget {
            progress.update("\(label): naive reference run (est. \(formatEstimate(naiveEstimate)))…")
            reference = try run(.naive, inputs).scalars
        } else if needReference {
            // Query rows of the slice that fit the budget (at least one).
            let affordable = Int(min(Double(shape.queryLength), settings.naiveBudget / (perRow * Double(shape.group))))
            let cut = ReferenceSlice(shape: shape, rows: max(1, affordable), mask: shape.mask(default: settings.mask))
            let estimate = perRow * Double(shape.group * cut.rows.count)
            progress.update("\(label): naive reference run on the slice (est. \(formatEstimate(estimate)))…")
            reference = try run(.naive, cut.inputs(inputs)).scalars
            slice = cut
        }
        if wantNaive {
            var result = KernelResult(shape: shape, mask: shape.mask(default: settings.mask), kernel: .naive, threads: 1)
            result.check = .reference
            if timeNaive {
                let times = try timeReps(.naive, inputs, gemmOnly: false, baseline: nil)
                result.repetitions = times.kernel.count
                result.median = median(times.kernel)
                result.minimum = times.kernel.min()
                result.maxError = 0
                result.speedup = 1
            } else if !settings.timeNaive {
                result.note = "naive not timed (--no-naive, or --sweep); est. \(formatEstimate(naiveEstimate))"
            } else {
                result.note = "naive skipped: est. \(formatEstimate(naiveEstimate))"
            }
            naiveResult = result
        }

        // 3. Check, then time, each fast kernel.
        var results = naiveResult.map { [$0] } ?? []
        for kernel in settings.kernels where kernel != .naive {
            var result = KernelResult(shape: shape, mask: shape.mask(default: settings.mask), kernel: kernel, threads: settings.threads)
            progress.update("\(label): checking \(kernel.rawValue)…")
            let output = try run(kernel, inputs).scalars        // also the warm-up
            if let reference {
                if let slice {
                    result.maxError = slice.maxAbsError(output: output, reference: reference)
                    result.check = slice.isWholeProblem ? .full : .slice
                    result.note = slice.note
                } else {
                    result.maxError = maxAbsError(output, reference, count: reference.count)
                    result.check = .full
                }
                result.failed = !(result.maxError! <= settings.tolerance)
            }
            let times = try timeReps(kernel, inputs, gemmOnly: settings.gemmShare && kernel.hasGEMMShare,
                                     baseline: settings.baselineThreads)
            result.repetitions = times.kernel.count
            result.median = median(times.kernel)
            result.minimum = times.kernel.min()
            result.gemmMedian = median(times.gemm)
            result.gemmShares = zip(times.gemm, times.kernel).compactMap { $1 > 0 ? $0 / $1 : nil }
            if result.gemmShareNoisy, let low = result.gemmShares.min(), let high = result.gemmShares.max() {
                result.note = [result.note, String(format: "GEMM share noisy: per-rep %.2f–%.2f (the machine's speed "
                    + "changed during the reps; rerun)", low, high)].compactMap { $0 }.joined(separator: "; ")
            }
            if let baseline = settings.baselineThreads {
                result.baselineThreads = baseline
                result.baselineMedian = median(times.baseline)
                result.threadSpeedup = median(zip(times.baseline, times.kernel).map { $0 / $1 })
            }
            if let naive = naiveResult?.median, let mine = result.median, mine > 0 {
                result.speedup = naive / mine
            }
            results.append(result)
        }
        return results
    }

    // MARK: - Running and timing

    private func run(_ kernel: BenchKernel, _ inputs: Inputs) throws -> Tensor<Float> {
        try scaledDotProductAttention(query: inputs.query, key: inputs.key, value: inputs.value,
                                      mask: inputs.mask, kernel: kernel.library)
    }

    /// The kernel whose BLAS calls ``runGEMMOnly(_:_:)`` makes: ``automatic`` resolved to the
    /// kernel it runs, once before timing, so that the resolution is not timed as a product.
    private func gemmKernel(_ kernel: BenchKernel, _ inputs: Inputs) throws -> AttentionKernel {
        guard kernel.library == .automatic else { return kernel.library }
        return try automaticKernel(query: inputs.query.shape, key: inputs.key.shape, value: inputs.value.shape)
    }

    /// The BLAS calls alone of `kernel` (not `.automatic`).
    private func runGEMMOnly(_ kernel: AttentionKernel, _ inputs: Inputs) throws -> Tensor<Float> {
        try attentionGEMMOnly(query: inputs.query, key: inputs.key, value: inputs.value, mask: inputs.mask, kernel: kernel)
    }

    /// Timed repetitions after a warm-up the caller has already done. With `gemmOnly`, the
    /// GEMM-only call is warmed up and then timed interleaved with the kernel, rep by rep
    /// (kernel, GEMM, kernel, GEMM, …), so drift in the machine's speed hits both alike; the
    /// same for the kernel on `baseline` threads (`--scaling-baseline`), which runs after the
    /// kernel on odd reps and before it on even ones, so that neither side always follows
    /// the other.
    private func timeReps(_ kernel: BenchKernel, _ inputs: Inputs, gemmOnly: Bool, baseline: Int?) throws
        -> (kernel: [Double], gemm: [Double], baseline: [Double])
    {
        // The kernel whose products the GEMM-only runs time (automatic resolved), if any.
        let products = gemmOnly ? try gemmKernel(kernel, inputs) : nil
        if let products {
            progress.update("\(label): warming up \(kernel.rawValue) GEMM-only…")
            _ = try runGEMMOnly(products, inputs)
        }
        if let baseline {
            progress.update("\(label): warming up \(kernel.rawValue) on \(baseline) thread(s)…")
            _ = try AttentionThreads.withCount(baseline) { try run(kernel, inputs) }
        }
        var kernelTimes: [Double] = [], gemmTimes: [Double] = [], baselineTimes: [Double] = []
        var total = 0.0
        let planned = settings.repetitions
        func timeBaseline() throws {
            guard let baseline else { return }
            let (other, b) = try timed { try AttentionThreads.withCount(baseline) { try run(kernel, inputs) } }
            withExtendedLifetime(other) {}
            baselineTimes.append(b)
        }
        for rep in 1...planned {
            progress.update("\(label): timing \(kernel.rawValue) (rep \(rep)/\(planned))…")
            if rep % 2 == 0 { try timeBaseline() }
            let (output, t) = try timed { try run(kernel, inputs) }
            withExtendedLifetime(output) {}
            kernelTimes.append(t)
            total += t
            if let products {
                let (gemm, g) = try timed { try runGEMMOnly(products, inputs) }
                withExtendedLifetime(gemm) {}
                gemmTimes.append(g)
            }
            if rep % 2 == 1 { try timeBaseline() }
            if let budget = settings.timeBudget, total >= budget,
               rep >= min(planned, BenchSettings.minimumRepetitions) {
                break
            }
        }
        return (kernelTimes, gemmTimes, baselineTimes)
    }

    /// Seconds per query row of naive for this shape's S, Dk, Dv and mask, from a small
    /// problem of about 4 MFLOP (best of two runs). Naive's work per row does not depend on
    /// the row: it scores every key and then masks.
    private func naiveSecondsPerRow(_ inputs: Inputs) throws -> Double {
        let flopsPerRow = 2 * Double(shape.keyLength) * Double(shape.keyDim + shape.valueDim)
        let rows = max(1, min(shape.queryLength, Int(4e6 / max(1, flopsPerRow))))
        let small = ReferenceSlice(shape: shape, rows: rows, mask: shape.mask(default: settings.mask), heads: 1).inputs(inputs)
        var best = Double.infinity
        for _ in 0..<2 {
            let (output, t) = try timed { try run(.naive, small) }
            withExtendedLifetime(output) {}
            best = min(best, t)
        }
        return best / Double(rows)
    }

    // MARK: - Inputs

    private func makeInputs(_ shape: BenchShape, seed: UInt64) -> Inputs {
        var rng = SplitMix64(seed: seed)
        // Validated shapes: the element counts were checked when the options were parsed.
        let q = rng.normals(count: shape.queryShape.reduce(1, *))
        let k = rng.normals(count: shape.keyShape.reduce(1, *))
        let v = rng.normals(count: shape.valueShape.reduce(1, *))
        return Inputs(query: try! Tensor(shape: shape.queryShape, scalars: q),
                      key: try! Tensor(shape: shape.keyShape, scalars: k),
                      value: try! Tensor(shape: shape.valueShape, scalars: v),
                      mask: shape.mask(default: settings.mask).mask(batch: shape.batch, keyLength: shape.keyLength))
    }
}

/// The part of a problem that naive checks when the full problem is too slow for it.
///
/// Batch entry 0 and key/value head 0 with its group of query heads 0..<g (B=1, Hkv=1,
/// Hq=g), same S, D and mask: in the row-major `[B, H, L, D]` layout these are leading
/// elements of each tensor, and the slice's output is the leading `g·L·Dv` elements of the
/// full output. Key lengths keep batch entry 0's length, which is S.
///
/// When even that is too slow (very long sequences), only `rows` of the L query rows are
/// kept. Attention rows are independent, so this is the same computation provided the mask
/// lines up: the first rows for no mask, key lengths and the upper-left causal mask
/// (key j allowed iff j ≤ i), the last rows for the lower-right causal mask (j ≤ i + S − L
/// holds unchanged for the last L′ rows, whose offset becomes S − L′).
struct ReferenceSlice {
    let shape: BenchShape
    let heads: Int
    let rows: Range<Int>
    let mask: MaskKind

    init(shape: BenchShape, rows count: Int, mask: MaskKind, heads: Int? = nil) {
        self.shape = shape
        self.heads = heads ?? shape.group
        self.mask = mask
        let count = min(count, shape.queryLength)
        rows = mask == .causalLowerRight
            ? (shape.queryLength - count)..<shape.queryLength
            : 0..<count
    }

    var isWholeProblem: Bool {
        shape.batch == 1 && shape.kvHeads == 1 && rows.count == shape.queryLength
    }

    /// Where the check was restricted, for the notes.
    var note: String? {
        rows.count == shape.queryLength ? nil
            : "checked on query rows \(rows.lowerBound)..<\(rows.upperBound) of the slice (naive budget)"
    }

    func inputs(_ full: Inputs) -> Inputs {
        let (L, S, Dk, Dv) = (shape.queryLength, shape.keyLength, shape.keyDim, shape.valueDim)
        var query: [Float] = []
        query.reserveCapacity(heads * rows.count * Dk)
        full.query.withUnsafeBufferPointer { q in
            for h in 0..<heads {
                let start = (h * L + rows.lowerBound) * Dk
                query += q[start..<(start + rows.count * Dk)]
            }
        }
        return Inputs(
            query: try! Tensor(shape: [1, heads, rows.count, Dk], scalars: query),
            key: try! Tensor(shape: [1, 1, S, Dk], scalars: Array(full.key.scalars.prefix(S * Dk))),
            value: try! Tensor(shape: [1, 1, S, Dv], scalars: Array(full.value.scalars.prefix(S * Dv))),
            mask: mask.mask(batch: 1, keyLength: S))
    }

    /// Max |output − reference| over the slice, where `output` is the full problem's output
    /// `[B, Hq, L, Dv]` and `reference` naive's output on the slice.
    func maxAbsError(output: [Float], reference: [Float]) -> Float {
        let (L, Dv) = (shape.queryLength, shape.valueDim)
        var worst: Float = 0
        for h in 0..<heads {
            for (r, i) in rows.enumerated() {
                for e in 0..<Dv {
                    let d = abs(output[(h * L + i) * Dv + e] - reference[(h * rows.count + r) * Dv + e])
                    if d.isNaN { return .nan }
                    worst = max(worst, d)
                }
            }
        }
        return worst
    }
}
