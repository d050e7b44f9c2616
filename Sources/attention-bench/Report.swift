import Foundation

// MARK: - Cells

private func formatMilliseconds(_ s: Double?) -> String {
    guard let s else { return "—" }
    let ms = s * 1e3
    if ms < 10 { return String(format: "%.3f", ms) }
    if ms < 100 { return String(format: "%.2f", ms) }
    return String(format: "%.1f", ms)
}

private func formatGFLOPs(_ g: Double?) -> String {
    guard let g else { return "—" }
    return g < 10 ? String(format: "%.2f", g) : String(format: "%.1f", g)
}

private func formatSpeedup(_ x: Double?) -> String {
    guard let x else { return "—" }
    return x < 10 ? String(format: "%.2f×", x) : String(format: "%.1f×", x)
}

private func formatError(_ r: KernelResult) -> String {
    if r.check == .reference { return r.median == nil ? "—" : "ref" }
    guard let e = r.maxError else { return "—" }
    var text = e.isNaN ? "NaN" : String(format: "%.1e", Double(e))
    if r.check == .slice { text += " †" }
    if r.failed { text += " FAIL" }
    return text
}

private func formatShare(_ share: Double?) -> String {
    guard let share else { return "—" }
    return String(format: "%.2f", share)
}

// MARK: - Table

/// An aligned text table: text columns left-aligned, number columns right-aligned.
func renderTable(_ results: [KernelResult], tolerance: Float) -> String {
    var headers = ["shape", "dims", "kernel", "reps", "median ms", "GFLOP/s", "×naive", "max err", "GEMM share"]
    let baseline = results.lazy.compactMap(\.baselineThreads).first
    if let baseline { headers.append("× \(baseline) thr") }
    let leftAligned: Set<Int> = [0, 1, 2]
    var rows: [[String]] = []
    var previousShape: String?
    for r in results {
        let first = r.shape.name != previousShape
        previousShape = r.shape.name
        rows.append([
            first ? r.shape.name : "",
            first ? r.shape.dims : "",
            r.kernel.rawValue,
            r.repetitions > 0 ? String(r.repetitions) : "—",
            formatMilliseconds(r.median),
            formatGFLOPs(r.gflops),
            formatSpeedup(r.speedup),
            formatError(r),
            r.kernel.hasGEMMShare ? formatShare(r.gemmShare) + (r.gemmShareNoisy ? "?" : "") : "—",
        ] + (baseline == nil ? [] : [formatSpeedup(r.threadSpeedup)]))
    }
    let widths = headers.indices.map { column in
        ([headers[column]] + rows.map { $0[column] }).map(\.count).max()!
    }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { column, cell in
            let pad = String(repeating: " ", count: widths[column] - cell.count)
            return leftAligned.contains(column) ? cell + pad : pad + cell
        }.joined(separator: "  ")
    }
    var out = [line(headers), widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")]
    out += rows.map(line)

    // Footnotes.
    var notes: [String] = []
    if results.contains(where: { $0.check == .slice }) {
        notes.append("† checked against naive on a slice: batch entry 0, key/value head 0 and its query heads "
                     + "(B=1, Hkv=1, Hq=Hq/Hkv; same L, S, D, mask).")
    }
    if results.contains(where: { $0.kernel.hasGEMMShare && $0.gemmShare != nil }) {
        notes.append("GEMM share: median over reps of (time of the kernel's matrix products alone / time of the kernel), "
                     + "the two timed alternately rep by rep; ? marks a noisy one (see its note).")
    }
    if let baseline {
        notes.append("× \(baseline) thr: median over reps of (time on \(baseline) thread(s) / time on --threads), "
                     + "the two timed alternately rep by rep.")
    }
    if results.contains(where: \.failed) {
        notes.append("FAIL: max abs error above --tolerance \(tolerance).")
    }
    // One line per (shape, note), naming every kernel it applies to.
    var noted: [(shape: String, note: String, kernels: [String])] = []
    for r in results {
        guard let note = r.note else { continue }
        if let i = noted.firstIndex(where: { $0.shape == r.shape.name && $0.note == note }) {
            noted[i].kernels.append(r.kernel.rawValue)
        } else {
            noted.append((r.shape.name, note, [r.kernel.rawValue]))
        }
    }
    for n in noted {
        notes.append("\(n.shape) / \(n.kernels.joined(separator: ", ")): \(n.note)")
    }
    if !notes.isEmpty { out.append("") ; out += notes }
    return out.joined(separator: "\n")
}

// MARK: - CSV and JSON

/// One row of the csv/json output. Missing values are empty (csv) or null (json).
struct ResultRecord: Encodable {
    var shape: String
    var dims: String
    var batch, heads, kvHeads, queryLength, keyLength, keyDim, valueDim: Int
    var mask: String
    var kernel: String
    var threads: Int
    var cores: Int
    var repetitions: Int
    var flops: Double
    var medianMs: Double?
    var minMs: Double?
    var gflops: Double?
    var speedupVsNaive: Double?
    var maxAbsError: Double?
    var check: String
    var checkPassed: Bool?
    var gemmOnlyMedianMs: Double?
    var gemmShare: Double?
    var scalingBaselineThreads: Int?
    var scalingBaselineMedianMs: Double?
    var threadSpeedup: Double?
    var note: String?

    init(_ r: KernelResult, cores: Int) {
        shape = r.shape.name; dims = r.shape.dims
        batch = r.shape.batch; heads = r.shape.heads; kvHeads = r.shape.kvHeads
        queryLength = r.shape.queryLength; keyLength = r.shape.keyLength
        keyDim = r.shape.keyDim; valueDim = r.shape.valueDim
        mask = r.mask.rawValue; kernel = r.kernel.rawValue
        threads = r.threads; self.cores = cores
        repetitions = r.repetitions
        flops = r.shape.flops
        medianMs = r.median.map { rounded($0 * 1e3, 1e-6) }
        minMs = r.minimum.map { rounded($0 * 1e3, 1e-6) }
        gflops = r.gflops.map { rounded($0, 1e-3) }
        speedupVsNaive = r.speedup.map { rounded($0, 1e-3) }
        maxAbsError = r.maxError.map(Double.init)
        check = r.check.rawValue
        checkPassed = (r.check == .full || r.check == .slice) ? !r.failed : nil
        gemmOnlyMedianMs = r.gemmMedian.map { rounded($0 * 1e3, 1e-6) }
        gemmShare = r.gemmShare.map { rounded($0, 1e-4) }
        scalingBaselineThreads = r.baselineThreads
        scalingBaselineMedianMs = r.baselineMedian.map { rounded($0 * 1e3, 1e-6) }
        threadSpeedup = r.threadSpeedup.map { rounded($0, 1e-4) }
        note = r.note
    }

    enum CodingKeys: String, CodingKey {
        case shape, dims, batch, heads, kvHeads, queryLength, keyLength, keyDim, valueDim, mask,
             kernel, threads, cores, repetitions, flops, medianMs, minMs, gflops, speedupVsNaive,
             maxAbsError, check, checkPassed, gemmOnlyMedianMs, gemmShare, scalingBaselineThreads,
             scalingBaselineMedianMs, threadSpeedup, note
    }

    /// Writes every key, with explicit nulls, so every object has the same fields.
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(shape, forKey: .shape); try c.encode(dims, forKey: .dims)
        try c.encode(batch, forKey: .batch); try c.encode(heads, forKey: .heads)
        try c.encode(kvHeads, forKey: .kvHeads); try c.encode(queryLength, forKey: .queryLength)
        try c.encode(keyLength, forKey: .keyLength); try c.encode(keyDim, forKey: .keyDim)
        try c.encode(valueDim, forKey: .valueDim); try c.encode(mask, forKey: .mask)
        try c.encode(kernel, forKey: .kernel); try c.encode(threads, forKey: .threads)
        try c.encode(cores, forKey: .cores); try c.encode(repetitions, forKey: .repetitions)
        try c.encode(flops, forKey: .flops); try c.encode(medianMs, forKey: .medianMs)
        try c.encode(minMs, forKey: .minMs); try c.encode(gflops, forKey: .gflops)
        try c.encode(speedupVsNaive, forKey: .speedupVsNaive)
        // JSON has no NaN: a NaN error is written as null with checkPassed false.
        let error: Double? = (maxAbsError?.isNaN ?? false) ? nil : maxAbsError
        try c.encode(error, forKey: .maxAbsError)
        try c.encode(check, forKey: .check); try c.encode(checkPassed, forKey: .checkPassed)
        try c.encode(gemmOnlyMedianMs, forKey: .gemmOnlyMedianMs)
        try c.encode(gemmShare, forKey: .gemmShare)
        try c.encode(scalingBaselineThreads, forKey: .scalingBaselineThreads)
        try c.encode(scalingBaselineMedianMs, forKey: .scalingBaselineMedianMs)
        try c.encode(threadSpeedup, forKey: .threadSpeedup); try c.encode(note, forKey: .note)
    }

    /// The csv columns, in `CodingKeys` order.
    static var csvHeader: String {
        ["shape", "dims", "batch", "heads", "kv_heads", "query_length", "key_length", "key_dim",
         "value_dim", "mask", "kernel", "threads", "cores", "repetitions", "flops", "median_ms",
         "min_ms", "gflops", "speedup_vs_naive", "max_abs_error", "check", "check_passed",
         "gemm_only_median_ms", "gemm_share", "scaling_baseline_threads", "scaling_baseline_median_ms",
         "thread_speedup", "note"].joined(separator: ",")
    }

    var csvRow: String {
        func number(_ x: Double?) -> String { x.map { "\($0)" } ?? "" }
        let fields: [String] = [
            shape, dims, "\(batch)", "\(heads)", "\(kvHeads)", "\(queryLength)", "\(keyLength)",
            "\(keyDim)", "\(valueDim)", mask, kernel, "\(threads)", "\(cores)", "\(repetitions)",
            String(format: "%.0f", flops), number(medianMs), number(minMs), number(gflops),
            number(speedupVsNaive), number(maxAbsError), check, checkPassed.map { "\($0)" } ?? "",
            number(gemmOnlyMedianMs), number(gemmShare), scalingBaselineThreads.map { "\($0)" } ?? "",
            number(scalingBaselineMedianMs), number(threadSpeedup), note ?? "",
        ]
        return fields.map(csvEscape).joined(separator: ",")
    }
}

/// `x` rounded to a multiple of `step` (a power of ten), so the csv and json stay readable.
private func rounded(_ x: Double, _ step: Double) -> Double {
    guard x.isFinite else { return x }
    let inverse = (1 / step).rounded()
    return (x * inverse).rounded() / inverse
}

private func csvEscape(_ field: String) -> String {
    guard field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) else { return field }
    return "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\""
}

func renderCSV(_ results: [KernelResult], cores: Int) -> String {
    ([ResultRecord.csvHeader] + results.map { ResultRecord($0, cores: cores).csvRow }).joined(separator: "\n")
}

func renderJSON(_ results: [KernelResult], cores: Int) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
    let data = try encoder.encode(results.map { ResultRecord($0, cores: cores) })
    return String(decoding: data, as: UTF8.self)
}
