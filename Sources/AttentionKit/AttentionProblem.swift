/// The validated geometry of one attention call, in the internal 4-d layout.
///
/// Rank-3 inputs `[B, L, D]` are one head (`H = 1`); rank-2 inputs `[L, D]` are one batch
/// entry of one head. Internally every call is `[B, Hq, L, Dk] × [B, Hkv, S, Dk]ᵀ →
/// [B, Hq, L, S]`, then `× [B, Hkv, S, Dv] → [B, Hq, L, Dv]`.
struct AttentionProblem: Sendable {
    let rank: Int
    let batch: Int
    let queryHeads: Int
    let kvHeads: Int
    let queryLength: Int
    let keyLength: Int
    let keyDim: Int
    let valueDim: Int
    let queryShape: [Int]
    let keyShape: [Int]
    let valueShape: [Int]

    /// Query heads per key/value head (grouped-query attention); 1 for ordinary attention.
    var group: Int { kvHeads == 0 ? 1 : queryHeads / kvHeads }

    /// The user-facing shape of the scores and weights: `[B, Hq, L, S]`, `[B, L, S]` or `[L, S]`.
    var scoreShape: [Int] { userShape(last2: queryLength, keyLength) }

    /// The user-facing shape of the output: `[B, Hq, L, Dv]`, `[B, L, Dv]` or `[L, Dv]`.
    var outputShape: [Int] { userShape(last2: queryLength, valueDim) }

    private func userShape(last2 a: Int, _ b: Int) -> [Int] {
        switch rank {
        case 4: return [batch, queryHeads, a, b]
        case 3: return [batch, a, b]
        default: return [a, b]
        }
    }

    init(query: [Int], key: [Int], value: [Int]) throws {
        let shapes = "query \(describe(query)), key \(describe(key)), value \(describe(value))"
        guard (2...4).contains(query.count), (2...4).contains(key.count), (2...4).contains(value.count) else {
            throw AttentionError(.invalidRank,
                "query, key and value must have rank 2 [L, D], 3 [B, L, D] or 4 [B, H, L, D]; got \(shapes)")
        }
        guard query.count == key.count, key.count == value.count else {
            throw AttentionError(.invalidRank, "query, key and value ranks differ: \(shapes)")
        }
        for (name, shape) in [("query", query), ("key", key), ("value", value)] {
            if let bad = shape.firstIndex(where: { $0 < 0 }) {
                throw AttentionError(.negativeDimension, "\(name) has negative size \(shape[bad]) at axis \(bad) (\(shapes))")
            }
        }
        rank = query.count
        queryShape = query
        keyShape = key
        valueShape = value

        func padded(_ s: [Int]) -> (b: Int, h: Int, l: Int, d: Int) {
            switch s.count {
            case 4: return (s[0], s[1], s[2], s[3])
            case 3: return (s[0], 1, s[1], s[2])
            default: return (1, 1, s[0], s[1])
            }
        }
        let q = padded(query), k = padded(key), v = padded(value)
        guard q.b == k.b, k.b == v.b else {
            throw AttentionError(.batchMismatch,
                "batch sizes differ: query \(q.b), key \(k.b), value \(v.b) (\(shapes))")
        }
        guard k.h == v.h else {
            throw AttentionError(.headCountMismatch,
                "key has \(k.h) heads but value has \(v.h) (\(shapes))")
        }
        guard (k.h == 0 && q.h == 0) || (k.h > 0 && q.h % k.h == 0) else {
            throw AttentionError(.headGrouping,
                "query heads (\(q.h)) must be a multiple of key/value heads (\(k.h)) (\(shapes))")
        }
        guard q.d == k.d else {
            throw AttentionError(.keyDimensionMismatch,
                "query Dk \(q.d) does not match key Dk \(k.d) (\(shapes))")
        }
        guard k.l == v.l else {
            throw AttentionError(.sequenceLengthMismatch,
                "key length \(k.l) does not match value length \(v.l) (\(shapes))")
        }
        batch = q.b
        queryHeads = q.h
        kvHeads = k.h
        queryLength = q.l
        keyLength = k.l
        keyDim = q.d
        valueDim = v.d
    }

    /// Checks what computing this problem needs, before anything is allocated, and returns
    /// the element counts of the output (and of the weights, 0 unless `wantWeights`) and
    /// whether there is anything to compute.
    ///
    /// A dimension of size 0 makes any other size valid, so the counts are checked here
    /// (`.sizeOverflow` when one overflows). With something to compute, BLAS's 32-bit limits
    /// apply (`checkBLASLimits`); an empty output and no weights, no query rows, or no keys
    /// (zeros) need no BLAS call. The results are checked against the machine's memory,
    /// since tiny or empty inputs can describe an output of terabytes. `shapes` names the
    /// caller's inputs in messages.
    func checkResults(wantWeights: Bool, _ shapes: @autoclosure () -> String) throws -> (output: Int, weights: Int, hasWork: Bool) {
        let output = try elementCount(of: outputShape)
        let weights = wantWeights ? try elementCount(of: scoreShape) : 0
        let hasWork = try (output > 0 || weights > 0)
            && elementCount(of: [batch, queryHeads, queryLength]) > 0
            && keyLength > 0
        if hasWork { try checkBLASLimits(shapes()) }
        try checkAllocation(count: output.addingReportingOverflow(weights), of: Float.self,
                            wantWeights ? "the output \(describe(outputShape)) and weights \(describe(scoreShape)) (\(shapes()))"
                                        : "the output \(describe(outputShape)) (\(shapes()))")
        return (output, weights, hasWork)
    }

    /// Throws `.sizeOverflow` when the results and the kernels' working buffers would not fit
    /// in the machine's memory together: each worker holds buffers that grow
    /// with S (a block of score rows in the BLAS kernel, which the other kernels fall back on,
    /// unless the weights hold the scores; a mask probe of one float per key; the repair
    /// pass's float64 scores and float weights for non-finite rows, three floats' worth per
    /// key: counted as five per key with one to spare), which a huge S with tiny or empty
    /// Q, K or V would make larger than memory. The kernels with such buffers (BLAS, and the
    /// repair pass) start at most one worker per work item, and each item holds at least one
    /// query row, so there are at most min(`threads`, B·Hq·L) workers: a thread count far
    /// beyond the cores (up to ``AttentionThreads/maximum``) does not refuse a long decode
    /// step. `results` is the output and weights' count.
    func checkWorkingMemory(threads: Int, wantWeights: Bool, results: Int, _ shapes: @autoclosure () -> String) throws {
        let rowBlock = wantWeights ? 0 : blasRowBlock(unitRows: group * queryLength, units: batch * kvHeads,
                                                      keyLength: keyLength, threads: threads)
        let rows = (try? elementCount(of: [batch, queryHeads, queryLength])) ?? Int.max
        let workers = max(1, min(threads, rows))
        let perThread = keyLength.multipliedReportingOverflow(by: rowBlock + 5)
        let working = perThread.partialValue.multipliedReportingOverflow(by: workers)
        let total = working.partialValue.addingReportingOverflow(results)
        try checkAllocation(count: (total.partialValue, perThread.overflow || working.overflow || total.overflow), of: Float.self,
                            "the results and the kernels' working buffers for \(keyLength) keys on \(workers) thread\(workers == 1 ? "" : "s") (\(shapes()))")
    }

    /// Throws `.sizeOverflow` when a size the kernels pass to BLAS exceeds its 32-bit
    /// integers: L, S, Dk, Dv, and the `g·L` rows of a group of query heads. Checked only
    /// for problems with something to compute: an empty result needs no BLAS call.
    func checkBLASLimits(_ shapes: @autoclosure () -> String) throws {
        let limit = BLAS.maximumDimension
        let rows = queryLength.multipliedReportingOverflow(by: max(1, group))
        guard queryLength <= limit, keyLength <= limit, keyDim <= limit, valueDim <= limit,
              !rows.overflow, rows.partialValue <= limit else {
            throw AttentionError(.sizeOverflow, "a dimension exceeds BLAS's 32-bit sizes (\(shapes()))")
        }
    }
}
