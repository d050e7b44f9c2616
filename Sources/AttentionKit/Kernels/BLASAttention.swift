/// The BLAS kernel: two `cblas_sgemm` calls per block of query rows around the Swift
/// mask + softmax layer.
///
/// Work is split into items of up to `rowBlock` query rows of one (batch, key/value head).
/// The `g = Hq / Hkv` query heads that share a key/value head are contiguous in memory, so
/// their rows form one `[g·L, Dk]` matrix and each item multiplies against K and V once for
/// all of them, without copying K or V. For each item:
///
///     scores[R, S']  = scale · Q[R, Dk] · K[S', Dk]ᵀ     (sgemm, scale folded into alpha)
///     scores[r, :]   = softmax(mask(scores[r, :]))        (Swift, SIMD, row by row)
///     out[R, Dv]     = scores[R, S'] · V[S', Dv]          (sgemm)
///
/// where `S' ≤ S` stops at the last key any row of the item may see: keys excluded for the
/// whole item by a causal mask or key lengths are never multiplied. Scores go straight into
/// the caller's weights tensor when it wants them, else into a per-thread scratch buffer.
/// Items run on `threads` threads with OpenBLAS held to one thread.
///
/// With `gemmOnly`, the softmax layer is skipped and only the two sgemm calls run, on the
/// same items; attention-bench uses this to report the GEMM share of the kernel's time.
/// With `units`, only those (batch, key/value head) units (`b · Hkv + kvHead`) are computed,
/// into output rows the caller has zeroed: the tiled kernel's second pass for rows it could
/// not compute in base 2.
func blasAttention(_ a: KernelArguments, gemmOnly: Bool = false, units selected: [Int]? = nil) {
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

    BLAS.singleThreaded {
        parallelWork(threads: a.threads, items: items) { claim in
            let scratch: UnsafeMutablePointer<Float>? = a.weights == nil
                ? .allocate(capacity: rowBlock * S) : nil
            let inverseSums = UnsafeMutablePointer<Float>.allocate(capacity: rowBlock)
            defer { scratch?.deallocate(); inverseSums.deallocate() }

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

                // scores[R, S'] = scale · Q[R, Dk] · K[S', Dk]ᵀ
                // beta = 1 on zeros (the weights tensor starts zeroed; the scratch is zeroed
                // by memset): OpenBLAS's beta = 0 pass zeroes C column by column, slower.
                if a.weights == nil {
                    for r in 0..<rows { (scores + r * S).update(repeating: 0, count: blockEnd) }
                }
                BLAS.sgemm(m: rows, n: blockEnd, k: Dk, alpha: a.scale,
                           a: q, lda: Dk, b: k, ldb: Dk, transposeB: true,
                           beta: 1, c: scores, ldc: S)

                if !gemmOnly {
                    for r in 0..<rows {
                        let h = kvHead * g + (r0 + r) / L
                        let i = (r0 + r) % L
                        let row = scores + r * S
                        let end = a.mask.rowEnd(batch: b, query: i, keyLength: S)
                        a.mask.apply(row, count: end, batch: b, head: h, query: i)
                        let sum = softmaxRow(row, end: end, count: blockEnd, normalize: !deferNormalization)
                        inverseSums[r] = sum == 0 ? 0 : 1 / sum        // NaN stays NaN
                        a.dropout?.apply(row, count: end, rowIndex: firstRow + r)
                    }
                }

                // out[R, Dv] = P[R, S'] · V[S', Dv]   (beta = 1: the output starts zeroed)
                BLAS.sgemm(m: rows, n: Dv, k: blockEnd, alpha: 1,
                           a: scores, lda: S, b: v, ldb: Dv, transposeB: false,
                           beta: 1, c: out, ldc: Dv)

                if deferNormalization && !gemmOnly {
                    // out[r, :] /= Σ_j exp(s_rj − m_r)
                    for r in 0..<rows { scaleRow(out + r * Dv, count: Dv, by: inverseSums[r]) }
                }
            }
        }
    }
}

/// Query rows per work item.
///
/// Large enough that sgemm runs near its peak, small enough that a block of scores stays in
/// L2 (512 KiB per core here), and split further when there are fewer units than threads.
func blasRowBlock(unitRows: Int, units: Int, keyLength: Int, threads: Int) -> Int {
    guard unitRows > 0 else { return 1 }
    let cacheRows = max(32, (128 * 1024) / max(1, keyLength))       // ≈ 512 KiB of scores
    var block = min(unitRows, 256, cacheRows)
    // Give every thread a few items to balance uneven (causal) rows.
    let wanted = 4 * threads
    if units * ((unitRows + block - 1) / block) < wanted {
        let perUnit = (wanted + units - 1) / units
        block = max(16, min(block, (unitRows + perUnit - 1) / perUnit))
    }
    return max(1, min(block, unitRows))
}
