/// The BLAS kernel: two `cblas_sgemm` calls per block of query rows around the Swift
/// mask + softmax layer.
///
/// Work is split into items of up to `rowBlock` query rows of one (batch, key/value head).
/// The `g = Hq / Hkv` query heads that share a key/value head are contiguous in memory, so
/// their rows form one `[g·L, Dk]` matrix and each item multiplies against K and V once for
/// all of them, without copying K or V. For each item:
///
///     scores[R, S']  = log₂e · scale · Q[R, Dk] · K[S', Dk]ᵀ   (sgemm, log₂e · scale in alpha)
///     scores[r, :]   = softmax₂(mask(scores[r, :]))             (Swift, SIMD, row by row)
///     out[R, Dv]     = scores[R, S'] · V[S', Dv]                (sgemm)
///
/// where `S' ≤ S` stops at the last key any row of the item may see: keys excluded for the
/// whole item by a causal mask or key lengths are never multiplied. Scores go straight into
/// the caller's weights tensor when it wants them, else into a per-thread scratch buffer.
/// Items run on `threads` threads with OpenBLAS held to one thread.
///
/// The scores are in base 2, as in the tiled kernel, where that cannot change the result:
/// `log₂ e` is folded into alpha and multiplied into additive biases, and `softmax₂` is
/// `2^(s − m) / Σ 2^(s − m)`, the same weights as `exp(s′ − m′) / Σ exp(s′ − m′)` on the
/// natural scores, through the cheaper ``exponential2(_:clamped:)`` (16 vector instructions
/// per 4 lanes at the SSE2 baseline against 27). At B1 H8 L512 D64 on one thread that moved
/// the share of the time in sgemm from 0.70–0.72 to 0.78–0.80 (see attention-bench's header).
/// Base 2 holds natural values only up to about 2.4e38, so a block is computed in base 2
/// only when Cauchy–Schwarz proves that none of its scores, biases added, can leave float's
/// range there (``Base2Range``):
///
///     |log₂e · scale| · ‖Q_block‖ · ‖K_unit‖ · 1.01  +  log₂e · Σ max|bias|  ≤  0.9 · Float.greatestFiniteMagnitude
///
/// with Frobenius norms, `K_unit` the keys any row of the unit may see. Other blocks (huge or non-finite inputs, NaN),
/// calls whose scale or biases exceed ``base2ScoreLimit``, units of fewer than
/// ``blasBase2MinimumRows`` rows and `naturalUnits` calls work in natural units, as before.
///
/// With `gemmOnly`, the softmax layer is skipped and only the two sgemm calls run, on the
/// same items; attention-bench uses this to report the GEMM share of the kernel's time.
/// With `units`, only those (batch, key/value head) units (`b · Hkv + kvHead`) are computed,
/// into output rows the caller has zeroed: the tiled kernel's second pass for rows it could
/// not compute in base 2, which also passes `naturalUnits`. `gemmOnly` multiplies with the
/// natural alpha (the products cost the same).
///
/// Returns whether an output row came out NaN or ±∞ (its weights, when `Dv = 0`), checked as
/// each block finishes: the caller then computes such rows again exactly
/// (``repairNonFiniteRows(_:)``). Always false with `gemmOnly`.
@discardableResult
func blasAttention(_ a: KernelArguments, gemmOnly: Bool = false, units selected: [Int]? = nil,
                   naturalUnits: Bool = false) -> Bool {
    let p = a.problem
    let (L, S, Dk, Dv, g) = (p.queryLength, p.keyLength, p.keyDim, p.valueDim, p.group)
    let unitRows = g * L                                       // rows sharing one K/V head
    let unitCount = selected?.count ?? p.batch * p.kvHeads
    let rowBlock = blasRowBlock(unitRows: unitRows, units: unitCount, keyLength: S, threads: a.threads)
    let blocksPerUnit = (unitRows + rowBlock - 1) / rowBlock
    let items = unitCount * blocksPerUnit
    // Without weights or dropout to return, P need not be normalised before P·V: dividing
    // the [R, Dv] output rows is cheaper than the [R, S'] score rows.
    let deferNormalization = a.weights == nil && a.dropout == nil
    // Scores in base 2 (log₂e folded into alpha and into the biases) make the softmax's
    // exponential a cheaper 2ˣ, for the blocks whose scores provably stay in range (above).
    let base2Alpha = a.scale * log2e
    let mayUseBase2 = !naturalUnits && !gemmOnly && Swift.abs(a.scale) <= base2ScoreLimit
        && unitRows >= (a.tiles?.blasBase2MinimumRows ?? blasBase2MinimumRows)
    let biasMagnitude = mayUseBase2 ? a.mask.finiteBiasMagnitude() : 0
    let base2Call = mayUseBase2 && biasMagnitude <= base2ScoreLimit
    let range = Base2Range(biasMagnitude: biasMagnitude)
    // ‖K‖ per unit over the keys its rows may see (NaN when a key holds NaN).
    let keyNorms = UnsafeMutablePointer<Double>.allocate(capacity: max(1, unitCount))
    // Per item: whether one of its rows came out NaN or ±∞.
    let nonFinite = UnsafeMutablePointer<Bool>.allocate(capacity: max(1, items))
    nonFinite.initialize(repeating: false, count: max(1, items))
    defer { keyNorms.deallocate(); nonFinite.deallocate() }
    if base2Call {
        parallelWork(threads: a.threads, items: unitCount) { claim in
            while let index = claim() {
                let unit = selected?[index] ?? index
                let seen = L > 0 ? a.mask.rowEnd(batch: unit / p.kvHeads, query: L - 1, keyLength: S) : 0
                keyNorms[index] = sumOfSquares(a.key + unit * S * Dk, count: seen * Dk).squareRoot()   // [S', Dk]
            }
        }
    }

    BLAS.singleThreaded {
        parallelWork(threads: a.threads, items: items) { claim in
            let scratch: UnsafeMutablePointer<Float>? = a.weights == nil
                ? .allocate(capacity: rowBlock * S) : nil
            let inverseSums = UnsafeMutablePointer<Float>.allocate(capacity: rowBlock)
            let probe: UnsafeMutablePointer<Float>? = a.mask.hasTensors ? .allocate(capacity: S) : nil
            defer { scratch?.deallocate(); inverseSums.deallocate(); probe?.deallocate() }

            while let item = claim() {
                let unit = selected?[item / blocksPerUnit] ?? item / blocksPerUnit   // b · Hkv + kvHead
                let r0 = (item % blocksPerUnit) * rowBlock     // first row within the unit
                let rows = min(rowBlock, unitRows - r0)
                let b = unit / p.kvHeads
                let kvHead = unit % p.kvHeads
                let firstRow = (b * p.queryHeads + kvHead * g) * L + r0   // flat row in [B, Hq, L]

                // Keys any row of this block may see.
                var blockEnd = 0
                for r in r0..<(r0 + rows) {
                    blockEnd = max(blockEnd, a.mask.rowEnd(batch: b, query: r % L, keyLength: S))
                }
                if blockEnd == 0 { continue }                 // output rows stay zero

                let q = a.query + firstRow * Dk                // [R, Dk]
                let k = a.key + unit * S * Dk                  // [S, Dk]
                let v = a.value + unit * S * Dv                // [S, Dv]
                let out = a.output + firstRow * Dv             // [R, Dv]
                let scores = a.weights.map { $0 + firstRow * S } ?? scratch!   // [R, S], ld S

                // Base 2 when no score of the block can leave float's range there (above).
                var base2 = false
                if base2Call {
                    base2 = range.holds(alpha: base2Alpha, queryNorm: sumOfSquares(q, count: rows * Dk).squareRoot(),   // [R, Dk]
                                        keyNorm: keyNorms[item / blocksPerUnit])
                }

                // scores[R, S'] = scale · Q[R, Dk] · K[S', Dk]ᵀ   (times log₂e in base 2)
                // beta = 1 on zeros (the weights tensor starts zeroed; the scratch is zeroed
                // here): OpenBLAS's beta = 0 pass zeroes C column by column, slower.
                if a.weights == nil {
                    for r in 0..<rows { (scores + r * S).update(repeating: 0, count: blockEnd) }
                }
                BLAS.sgemm(m: rows, n: blockEnd, k: Dk, alpha: base2 ? base2Alpha : a.scale,
                           a: q, lda: Dk, b: k, ldb: Dk, transposeB: true,
                           beta: 1, c: scores, ldc: S)

                if !gemmOnly {
                    for r in 0..<rows {
                        let h = kvHead * g + (r0 + r) / L
                        let i = (r0 + r) % L
                        let row = scores + r * S
                        let end = a.mask.rowEnd(batch: b, query: i, keyLength: S)
                        a.mask.apply(row, count: end, batch: b, head: h, query: i, biasFactor: base2 ? log2e : 1)
                        let sum = softmaxRow(row, end: end, count: blockEnd, normalize: !deferNormalization, base2: base2)
                        inverseSums[r] = sum == 0 ? 0 : 1 / sum        // NaN stays NaN
                        a.dropout?.apply(row, count: end, rowIndex: firstRow + r)
                        // No weight although keys were allowed: every score is −∞, fallen out
                        // of float's range (scale 1e38, biases summing past −3.4e38) unless the
                        // mask tensors excluded them all (checked on a probe row). A NaN weight
                        // makes the row non-finite, so that it is computed again exactly.
                        if sum == 0 && end > 0
                            && (probe == nil || !a.mask.excludesEveryKey(batch: b, head: h, query: i, count: end, probe: probe!)) {
                            row[0] = .nan
                        }
                    }
                }

                // out[R, Dv] = P[R, S'] · V[S', Dv]   (beta = 1: the output starts zeroed)
                BLAS.sgemm(m: rows, n: Dv, k: blockEnd, alpha: 1,
                           a: scores, lda: S, b: v, ldb: Dv, transposeB: false,
                           beta: 1, c: out, ldc: Dv)

                if !gemmOnly {
                    if deferNormalization {
                        // out[r, :] /= Σ_j exp(s_rj − m_r)
                        for r in 0..<rows { scaleRow(out + r * Dv, count: Dv, by: inverseSums[r]) }
                    }
                    // Whether a row came out NaN or ±∞ (it is then computed again, exactly).
                    nonFinite[item] = Dv > 0 ? !allFinite(out, count: rows * Dv)           // [R, Dv]
                        : a.weights != nil && (0..<rows).contains { !allFinite(scores + $0 * S, count: blockEnd) }
                }
            }
        }
    }
    return (0..<items).contains { nonFinite[$0] }
}

/// Query rows per work item.
///
/// Large enough that sgemm runs near its peak, small enough that a block of scores stays in
/// L2 (512 KiB per core here), and split further when there are fewer units than threads.
func blasRowBlock(unitRows: Int, units: Int, keyLength: Int, threads: Int) -> Int {
    guard unitRows > 0 else { return 1 }
    let cacheRows = max(32, (128 * 1024) / max(1, keyLength))       // ≈ 512 KiB of scores
    // All workers' score blocks within a sixteenth of the memory the process may use
    // (`memoryCeiling`: the machine's, or its cgroup's limit): fewer than 32
    // rows only past about 6 M keys on two threads of this 24 GiB machine.
    let memoryRows = max(1, Int(memoryCeiling.bytes / 64) / max(1, threads * keyLength))
    var block = min(unitRows, 256, cacheRows, memoryRows)
    // Give every thread a few items to balance uneven (causal) rows.
    let wanted = 4 * threads
    if units * ((unitRows + block - 1) / block) < wanted {
        let perUnit = (wanted + units - 1) / units
        block = max(min(16, memoryRows), min(block, (unitRows + perUnit - 1) / perUnit))
    }
    return max(1, min(block, unitRows))
}

/// The smallest number of query rows per (batch, key/value head) for which the BLAS kernel
/// computes its scores in base 2. Below it the cheaper exponential saves less than the range
/// check costs: it reads each key once per unit, `S·Dk` values, against `rows · S`
/// exponentials saved (about 0.4 ns each at B1 H8 L512 D64). Measured 2026-11-26 with builds
/// that always and never take base 2 (one thread, eight alternating rounds of
/// attention-bench, medians; GEMM share, base 2 → natural): 8 rows (B1 H8 L8 S512) 0.78 →
/// 0.83 and 16 rows (B64 H8 L16 S16) 0.71 → 0.74, natural better; 32 rows (B1 H8 L32 S32)
/// 0.78 → 0.75 (0.091 against 0.112 ms) and 64 rows (B8 H8 L64 S64) 0.70 → 0.68 (1.81 against
/// 2.02 ms), base 2 better.
let blasBase2MinimumRows = 32

/// `‖x‖²` of `count` contiguous floats: float sums of squares over chunks of 4096 (relative
/// rounding about 2e-5 at most each), added in Double. +∞ when a chunk's sum overflows float
/// (or `x` holds ±∞), NaN when `x` holds NaN. Squares of values below about 8.4e-24 round
/// to 0 (with gradual underflow, the IEEE default, which nothing in the library changes),
/// so the range check can miss them: each adds at most 8.4e-24 · 1.8e19 · 1.44e38 ≈ 2.2e34 to
/// a score (the other factor's elements stay below 1.8e19, or its sum of squares would
/// overflow, and |log₂e · scale| ≤ 1.44e38), which the 10 % of headroom below float's
/// largest value (3.4e37) covers for any Dk up to about 1500.
func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
    var total = 0.0
    var start = 0
    while start < count {
        let n = min(4096, count - start)
        total += Double(dot(x + start, x + start, count: n))
        start += n
    }
    return total
}
