/// The tiled kernel: flash-attention-style streaming over key tiles with an online softmax,
/// on OpenBLAS, in O(L·D) memory.
///
/// Work items are blocks of up to `queryBlock` query rows of one (batch, key/value head),
/// where, as in the BLAS kernel, the `g = Hq/Hkv` query heads sharing a key/value head form
/// one `[g·L, Dk]` matrix. Each item walks the keys in tiles of `keyBlock`:
///
///     s[R, n]   = log₂e · scale · Q[R, Dk] · K[n, Dk]ᵀ − c[R]   sgemm, beta = 1 on a tile of −c
///                                                         (R ≤ 4, or ≤ 8 on large caches: Swift row-wise products, c = 0)
///     s[r, :]   = mask(s[r, :])                           Swift, only rows the mask touches
///     m′, α, l′ = online softmax step                     s ← 2^(s + c − m′), l′ = α·l + Σ 2^(s + c − m′)
///     O[r, :]  *= α  (only when a row's reference maximum moved)
///     O[R, Dv] += s[R, n] · V[n, Dv]                      sgemm with beta = 1 (row-wise products)
///
/// and finally divides each output row by its `l`. The scores are in base 2 (`log₂ e` folded
/// into the GEMM's alpha and multiplied into additive biases), so the softmax's exponential is
/// a `2ˣ` with no range-reduction multiply, and the reference maximum moves only when a tile
/// exceeds it by more than 16 (see ``onlineSoftmaxStep(_:allowed:count:runningMax:runningSum:offset:lowest:highest:)``).
/// Together these cut the softmax layer from about 1.5 to 0.8 ns per score at the SSE2
/// baseline (B1 H8 L2048 D64, one thread: 173 → 143 ms, the sgemm share of the time from 0.71
/// to 0.81). Two more cuts from the exponential's loop, which at SSE2 is bound by the length
/// of its dependency chain more than by its instruction count: each row's reference `c` is
/// written into the score tile before the GEMM adds to it (beta = 1), so the scores arrive
/// as `s − c` and nothing is subtracted while the reference stays; and on unmasked rows the
/// scores are bounded by Cauchy–Schwarz, `|s| ≤ |log₂e · scale| · ‖q‖ · max‖k‖`, which when
/// it keeps every exponent above −126 (as it does for ordinary inputs) lets the exponential
/// skip its clamp and the online-softmax step go without the tile's maximum: one pass of
/// exponentials, whose sum bounds each of them (a maximum pass only when that sum is out of
/// range). Nothing of size L×S is allocated: the
/// score tile (`queryBlock × keyBlock` floats) lives in a per-thread scratch buffer that
/// stays in L2. Key tiles that a causal mask or key lengths exclude for the whole block are
/// never multiplied; tiles inside the allowed region pay for no mask work except the
/// boolean/additive tensors, which apply everywhere.
///
/// Split-KV: when (batch × key/value heads × query blocks) gives fewer items than the
/// threads can use — decoding, a few queries against a long cache — the keys are also split
/// into ranges, each item keeps its partial `(m, l, O)`, and the partials are merged:
///
///     M = max_s m_s,   O = Σ_s 2^(m_s − M)·O_s / Σ_s 2^(m_s − M)·l_s
///
/// Dropout is applied to the tile after its sum enters `l` (the denominator is that of the
/// undropped softmax, as in the other kernels), with the same per-(row, key) decisions.
/// When the caller asks for the weights, an L×S tensor is needed anyway and the kernel
/// computes them as the BLAS kernel does; so it does when the scale or the additive biases
/// are too large for base 2 (beyond `base2ScoreLimit`; the BLAS kernel then works in natural
/// units), and, after the fact, in natural units, when an output row comes out NaN,
/// infinite, or without weight although keys were allowed (scores beyond base 2's range, or
/// partial outputs overflowing under lazy rescaling; NaN inputs also take this second, BLAS,
/// pass), for the (batch, key/value head) units with such a row only. With boolean or
/// additive tensors a weightless row can be legitimate, so such calls are checked before the
/// fact as well: sgemm blocks by the BLAS kernel's Frobenius-norm bound, row-wise (decoding)
/// blocks by the largest magnitude among their scores; a block whose scores, biases added,
/// could leave float's range in base 2 marks its unit for the second pass.
///
/// With `gemmOnly`, only the products run (same tiles, no softmax): attention-bench's
/// roofline reference.
///
/// Returns whether an output row is NaN or ±∞ after the second pass, as the BLAS kernel does
/// (its rows are then computed again exactly, ``repairNonFiniteRows(_:)``); false with
/// `gemmOnly`, and when the tile sizes ask to keep the tiled path's own rows.
@discardableResult
func tiledAttention(_ a: KernelArguments, gemmOnly: Bool = false) -> Bool {
    // Base-2 scores are the natural ones times log₂e ≈ 1.44: a finite scale or bias beyond
    // about 2.4e38 would overflow to ±∞ and, for example, turn a row of −3.4e38 biases (the
    // "masked" value of float32 additive masks) from a uniform average into an excluded row.
    // Such calls go to the BLAS kernel, which takes them in natural units; so do calls that
    // want the weights (in base 2 when they allow it).
    if a.weights != nil {
        return blasAttention(a, gemmOnly: gemmOnly)
    }
    let biasMagnitude = a.mask.finiteBiasMagnitude()
    if !(Swift.abs(a.scale) <= base2ScoreLimit) || biasMagnitude > base2ScoreLimit {
        return blasAttention(a, gemmOnly: gemmOnly, naturalUnits: true)
    }
    let p = a.problem
    let (L, S, Dk, Dv, g) = (p.queryLength, p.keyLength, p.keyDim, p.valueDim, p.group)
    let unitRows = g * L
    let units = p.batch * p.kvHeads
    let schedule = TiledSchedule(a)
    let (plan, keysPerSplit) = (schedule.plan, schedule.keysPerSplit)
    let (Rq, Sk, splits) = (plan.queryBlock, plan.keyBlock, plan.splits)
    let blocksPerUnit = (unitRows + Rq - 1) / Rq
    let items = units * blocksPerUnit * splits
    // Scores in base 2: s = log₂e · scale · q·k (+ log₂e · bias), so the softmax uses 2ˣ.
    let alpha = a.scale * log2e
    // With boolean or additive tensors, a row can legitimately end with no weight, so base-2
    // overflow (natural scores beyond about 2.4e38 turning into ±∞, or biases pushing them
    // there) is checked before it can hide: scores (biases added) must stay within
    // `range`, else the item is suspect and its unit is computed again.
    let guarded = !gemmOnly && a.mask.hasTensors
    let range = Base2Range(biasMagnitude: biasMagnitude)

    // Split-KV partials: per item, O [Rq, Dv] then m [Rq] and l [Rq].
    let partialStride = Rq * (Dv + 2)
    let partials: UnsafeMutablePointer<Float>? = splits > 1 ? .allocate(capacity: items * partialStride) : nil
    defer { partials?.deallocate() }
    // Per item: whether a row came out non-finite or with no weight despite allowed keys,
    // the signs of scores beyond base 2's range (see the end of this function), or, under
    // mask tensors, whether its scores could pass that range (checked before the fact).
    let suspect = UnsafeMutablePointer<Bool>.allocate(capacity: max(items, 1))
    suspect.initialize(repeating: false, count: max(items, 1))
    defer { suspect.deallocate() }

    BLAS.singleThreaded {
        parallelWork(threads: a.threads, items: items) { claim in
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: Rq * Sk)       // [Rq, Sk]
            let rowEnds = UnsafeMutablePointer<Int>.allocate(capacity: Rq)
            let maxima = UnsafeMutablePointer<Float>.allocate(capacity: Rq)
            let sums = UnsafeMutablePointer<Float>.allocate(capacity: Rq)
            let offsets = UnsafeMutablePointer<Float>.allocate(capacity: Rq)           // c per row
            let queryNorms = UnsafeMutablePointer<Double>.allocate(capacity: Rq)       // ‖q_r‖
            // One key tile's P·V for row-wise blocks, added to the output tile by tile.
            let tileOutput = UnsafeMutablePointer<Float>.allocate(capacity: min(Rq, plan.rowwiseLimit) * Dv)  // [R, Dv]
            defer {
                scores.deallocate(); rowEnds.deallocate(); maxima.deallocate(); sums.deallocate()
                offsets.deallocate(); queryNorms.deallocate(); tileOutput.deallocate()
            }

            while let item = claim() {
                let split = item % splits
                let block = item / splits
                let unit = block / blocksPerUnit                       // b · Hkv + kvHead
                let r0 = (block % blocksPerUnit) * Rq
                let rows = min(Rq, unitRows - r0)
                let b = unit / p.kvHeads
                let kvHead = unit % p.kvHeads
                let firstRow = (b * p.queryHeads + kvHead * g) * L + r0  // flat row in [B, Hq, L]

                var blockEnd = 0
                for r in 0..<rows {
                    rowEnds[r] = a.mask.rowEnd(batch: b, query: (r0 + r) % L, keyLength: S)
                    blockEnd = max(blockEnd, rowEnds[r])
                    maxima[r] = -.infinity
                    sums[r] = 0
                }
                let keyStart = split * keysPerSplit
                let keyStop = min(blockEnd, keyStart + keysPerSplit)

                let q = a.query + firstRow * Dk                         // [R, Dk]
                let k = a.key + unit * S * Dk                           // [S, Dk]
                let v = a.value + unit * S * Dv                         // [S, Dv]
                let out: UnsafeMutablePointer<Float>                    // [R, Dv]
                if let partials {
                    out = partials + item * partialStride
                    out.update(repeating: 0, count: rows * Dv)
                } else {
                    out = a.output + firstRow * Dv                      // zero-initialised
                }
                let perRow = rows <= plan.rowwiseLimit
                if guarded && !perRow {
                    // The bound of the BLAS kernel: one pass over the block's queries and the
                    // item's keys, small next to the GEMMs.
                    let fits = range.holds(
                        alpha: alpha, queryNorm: sumOfSquares(q, count: rows * Dk).squareRoot(),               // [R, Dk]
                        keyNorm: sumOfSquares(k + keyStart * Dk, count: max(0, keyStop - keyStart) * Dk).squareRoot())   // [n, Dk]
                    if !fits { suspect[item] = true }
                }
                // Score bounds (Cauchy–Schwarz) for the sgemm blocks of unmasked rows, so the
                // exponential can skip its clamp: |s| ≤ |alpha|·‖q‖·max‖k‖.
                let bounded = !perRow && !gemmOnly && !a.mask.hasTensors
                if bounded {
                    for r in 0..<rows { queryNorms[r] = squaredNorm(q + r * Dk, count: Dk).squareRoot() }
                }

                var kt = keyStart
                while kt < keyStop {
                    let n = min(Sk, keyStop - kt)
                    let kTile = k + kt * Dk                             // [n, Dk]
                    let vTile = v + kt * Dv                             // [n, Dv]

                    // s[R, n] = log₂e · scale · Q[R, Dk] · K[n, Dk]ᵀ
                    if perRow {
                        rowwiseScores(query: q, rows: rows, keys: kTile, count: n, dim: Dk,
                                      alpha: alpha, scores: scores, scoreStride: Sk)
                        for r in 0..<rows { offsets[r] = 0 }
                        // Decoding blocks are bound by reading K and V, so their scores are
                        // checked directly (a few rows of a tile, in L1) instead of by norms,
                        // which would read the keys twice.
                        if guarded && !suspect[item] {
                            for r in 0..<rows where !range.holds(largestScore: largestMagnitude(scores + r * Sk, count: n)) {
                                suspect[item] = true
                            }
                        }
                    } else {
                        // beta = 1 on a tile that starts at −c per row, c the row's reference
                        // maximum (0 until it has one): the scores arrive as s − c, and the
                        // online softmax has nothing left to subtract unless the reference moves.
                        // (OpenBLAS's own beta = 0 pass, sgemm_beta, zeroes C column by column
                        // and cost 5-6 % of the time; filling the tile costs what a memset does.)
                        for r in 0..<rows {
                            // Only a small reference is written into the tile: s − c is rounded
                            // relative to |s − c|, which for a distant c would cost precision
                            // once the reference moves to the tile's own scores.
                            let c = Swift.abs(maxima[r]) <= prefillLimit ? maxima[r] : 0       // NaN: 0
                            offsets[r] = c
                            if c == 0 {
                                (scores + r * Sk).update(repeating: 0, count: n)     // memset
                            } else {
                                (scores + r * Sk).update(repeating: -c, count: n)
                            }
                        }
                        BLAS.sgemm(m: rows, n: n, k: Dk, alpha: alpha,
                                   a: q, lda: Dk, b: kTile, ldb: Dk, transposeB: true,
                                   beta: 1, c: scores, ldc: Sk)
                    }

                    if !gemmOnly {
                        // The tile's largest key norm, for the score bounds; NaN when a key
                        // holds NaN, so that its row takes the two-pass step.
                        var keyNorm = 0.0
                        if bounded {
                            var largest = 0.0
                            for j in 0..<n {
                                let squared = squaredNorm(kTile + j * Dk, count: Dk)
                                if !(squared <= largest) { largest = squared; if squared.isNaN { break } }
                            }
                            keyNorm = largest.squareRoot()
                        }
                        for r in 0..<rows {
                            let row = scores + r * Sk
                            let allowed = max(0, min(n, rowEnds[r] - kt))
                            if allowed > 0 {
                                let h = kvHead * g + (r0 + r) / L
                                a.mask.apply(row, count: allowed, batch: b, head: h, query: (r0 + r) % L, keyOffset: kt, biasFactor: log2e)
                            }
                            // Bounds on the stored s − c, in Double so that no product of tiny
                            // or huge factors rounds them away; 1 % over the exact bound covers
                            // the rounding of the products for any Dk below ~10⁵. Cauchy–Schwarz
                            // bounds the exact products, and the GEMM's float sums of q_i·k_i
                            // stay finite (so no −∞ reaches the unclamped 2ˣ) only while
                            // ‖q‖·‖k‖ is below float's largest value.
                            let norms = queryNorms[r] * keyNorm
                            let bound = bounded && norms < 1e38 ? Double(Swift.abs(alpha)) * norms * 1.01 : .infinity
                            let c = Double(offsets[r])
                            let rescale = onlineSoftmaxStep(row, allowed: allowed, count: n,
                                                          runningMax: &maxima[r], runningSum: &sums[r],
                                                          offset: offsets[r], lowest: Float(-bound - c),
                                                          highest: Float(bound - c))
                            if rescale != 1 { scaleRow(out + r * Dv, count: Dv, by: rescale) }
                            if allowed > 0 {
                                a.dropout?.apply(row, count: allowed, rowIndex: firstRow + r, keyOffset: kt)
                            }
                        }
                    }

                    // O[R, Dv] += P[R, n] · V[n, Dv]
                    if perRow {
                        // Summed per tile, then added: one float32 accumulator over every key
                        // of a long cache would drift by about S · 2⁻²⁴ relative when the terms
                        // are alike (a repeated token), beyond the tolerance from S ≈ 4096.
                        // sgemm blocks its sums the same way. The extra pass is R · Dv adds per
                        // n · R · Dv multiply-adds.
                        tileOutput.update(repeating: 0, count: rows * Dv)
                        rowwiseAccumulate(weights: scores, rows: rows, weightStride: Sk, values: vTile,
                                          count: n, dim: Dv, output: tileOutput)                        // [R, Dv]
                        axpy1(1, tileOutput, out, count: rows * Dv)
                    } else {
                        BLAS.sgemm(m: rows, n: Dv, k: n, alpha: 1,
                                   a: scores, lda: Sk, b: vTile, ldb: Dv, transposeB: false,
                                   beta: 1, c: out, ldc: Dv)
                    }
                    kt += n
                }

                if partials != nil {
                    let stats = out + Rq * Dv
                    for r in 0..<rows { stats[r] = maxima[r]; stats[Rq + r] = sums[r] }
                } else if !gemmOnly {
                    for r in 0..<rows { scaleRow(out + r * Dv, count: Dv, by: sums[r] == 0 ? 0 : 1 / sums[r]) }   // NaN stays NaN
                    for r in 0..<rows where !rowLooksRight(out + r * Dv, count: Dv, sum: sums[r],
                                                           allowed: rowEnds[r] > 0, mask: a.mask) {
                        suspect[item] = true
                        break
                    }
                }
            }
        }
    }

    // Merge the split-KV partials of each query block.
    if let partials, !gemmOnly {
        for block in 0..<(units * blocksPerUnit) {
            let unit = block / blocksPerUnit
            let r0 = (block % blocksPerUnit) * Rq
            let rows = min(Rq, unitRows - r0)
            let b = unit / p.kvHeads, kvHead = unit % p.kvHeads
            let out = a.output + ((b * p.queryHeads + kvHead * g) * L + r0) * Dv    // [R, Dv]
            for r in 0..<rows {
                var M = -Float.infinity
                for s in 0..<splits {
                    let m = partials[(block * splits + s) * partialStride + Rq * Dv + r]
                    if m > M || m.isNaN { M = m }
                    if M.isNaN { break }
                }
                if M.isNaN {                                                        // NaN scores: NaN out
                    (out + r * Dv).update(repeating: .nan, count: Dv)
                    suspect[block * splits] = true
                    continue
                }
                var total: Float = 0
                if M > -.infinity {                                                 // else no allowed key: zeros
                    for s in 0..<splits {
                        let base = partials + (block * splits + s) * partialStride
                        let m = base[Rq * Dv + r]
                        guard m > -.infinity else { continue }
                        let w = exponential2(m - M)
                        total += w * base[Rq * Dv + Rq + r]
                        axpy1(w, base + r * Dv, out + r * Dv, count: Dv)
                    }
                    scaleRow(out + r * Dv, count: Dv, by: 1 / total)
                }
                let rowEnd = a.mask.rowEnd(batch: b, query: (r0 + r) % L, keyLength: S)
                if !rowLooksRight(out + r * Dv, count: Dv, sum: total, allowed: rowEnd > 0, mask: a.mask) {
                    suspect[block * splits] = true
                }
            }
        }
    }

    // Scores in base 2 are the natural ones times log₂e ≈ 1.44, so a finite natural score
    // beyond about 2.4e38 (|scale|·|q·k| that large, not excluded by the scale check above)
    // is ±∞ here; so is a float q·k that overflows. A row with one +∞ comes out NaN, a row
    // whose every score is −∞ comes out as zeros, and the lazily rescaled partial output can
    // overflow where the normalised one would not. Rows like that are rare and cheap to spot,
    // so the kernel checks for them instead of scanning Q and K first (which would double
    // the memory traffic of decoding), and then computes their heads again in natural units.
    // Only under mask tensors, where a weightless row can be legitimate, is the range checked
    // before the fact too (norms for sgemm blocks, the scores of row-wise blocks).
    // Only the (batch, key/value head) units with such a row are computed again; the items of
    // unit u are u · blocksPerUnit · splits ..< (u + 1) · blocksPerUnit · splits.
    if !gemmOnly && a.tiles?.recomputeSuspectRows != false {
        let itemsPerUnit = blocksPerUnit * splits
        let redo = (0..<units).filter { u in (u * itemsPerUnit..<(u + 1) * itemsPerUnit).contains { suspect[$0] } }
        if !redo.isEmpty {
            for unit in redo {
                let b = unit / p.kvHeads, kvHead = unit % p.kvHeads
                (a.output + (b * p.queryHeads + kvHead * g) * L * Dv).update(repeating: 0, count: unitRows * Dv)  // [g·L, Dv]
            }
            return blasAttention(a, units: redo, naturalUnits: true)
        }
    }
    return false
}

/// How the tiled kernel lays out one call: the tile plan and the key range of each split.
struct TiledSchedule {
    /// Keys that any row may see. Causal masks and key lengths only cut a row's end, and that
    /// end never falls as the query index grows, so the last query of each batch entry sees
    /// the most. Tiles and key splits are laid over these keys, not over all S: a KV cache
    /// passes its whole allocated storage with key lengths, and splitting that evenly would
    /// leave the splits beyond the cached keys with nothing to do.
    var activeKeys = 0
    var plan: TilePlan
    /// Split `s` covers keys `s · keysPerSplit ..< (s + 1) · keysPerSplit` (cut at each
    /// block's last allowed key): whole tiles, together covering `activeKeys`.
    var keysPerSplit: Int

    init(_ a: KernelArguments) {
        let p = a.problem
        let L = p.queryLength
        if L > 0 {
            for b in 0..<p.batch { activeKeys = max(activeKeys, a.mask.rowEnd(batch: b, query: L - 1, keyLength: p.keyLength)) }
        }
        plan = TilePlan(unitRows: p.group * L, units: p.batch * p.kvHeads, keyLength: activeKeys,
                        threads: a.threads, keyValueBytes: p.batch * p.kvHeads * activeKeys * (p.keyDim + p.valueDim) * 4,
                        override: a.tiles)
        let tilesPerSplit = ((activeKeys + plan.keyBlock - 1) / plan.keyBlock + plan.splits - 1) / plan.splits
        keysPerSplit = tilesPerSplit * plan.keyBlock
    }
}

/// Whether a finished output row of the tiled kernel is free of the signs of base-2 range
/// trouble: no NaN or ±∞ in it, a finite row sum (an infinite one would turn the row into
/// zeros), and some weight when keys were allowed and the mask has no boolean or additive
/// tensors (which may legitimately exclude every key). NaN rows from NaN inputs fail too;
/// the BLAS kernel then gives them NaN again.
@inline(__always)
func rowLooksRight(_ row: UnsafePointer<Float>, count: Int, sum: Float, allowed: Bool, mask: MaskRows) -> Bool {
    if sum == .infinity { return false }
    if allowed && sum == 0 && !mask.hasTensors { return false }
    return allFinite(row, count: count)
}

/// `max_j |x[j]|` over `count` floats (0 for none), ignoring NaN; +∞ when one is ±∞.
@inline(__always)
func largestMagnitude(_ x: UnsafePointer<Float>, count: Int) -> Float {
    var vmax = SIMD8<Float>()
    var j = 0
    while j + lanes <= count {
        let v = load(x + j)
        let magnitude = v.replacing(with: -v, where: v .< 0)
        vmax.replace(with: magnitude, where: magnitude .> vmax)
        j += lanes
    }
    var m = vmax.max()
    while j < count { m = max(m, Swift.abs(x[j])); j += 1 }
    return m
}

/// The largest reference maximum (in magnitude, base-2 units) that the tiled kernel writes
/// into a score tile before the GEMM: beyond it the row's tile starts from 0 and its step
/// subtracts the reference, as rounding `s − c` costs `ulp(|s − c|)`.
let prefillLimit: Float = 16

/// `‖v‖²` for the tiled kernel's score bounds, accurate whatever the scale of `v`: the float
/// sum of squares when it can neither have underflowed nor overflowed, else the sum in Double.
/// NaN when `v` holds NaN, +∞ when it holds ±∞.
@inline(__always)
func squaredNorm(_ v: UnsafePointer<Float>, count: Int) -> Double {
    let squares = dot(v, v, count: count)
    if squares >= 0x1p-60 && squares <= 0x1p60 { return Double(squares) }
    var sum = 0.0
    for i in 0..<count { sum += Double(v[i]) * Double(v[i]) }
    return sum
}

/// The largest scale, and sum of finite bias magnitudes, that the BLAS and tiled kernels take
/// in base 2:
/// `Float.greatestFiniteMagnitude / log₂ e` would be the edge; half of it leaves room for the
/// scores themselves.
let base2ScoreLimit: Float = 1e38

/// The range that base-2 scores must stay within so that, biases added, none leaves float's
/// range: |s| ≤ 0.9 · `Float.greatestFiniteMagnitude` − log₂e · Σ max|bias|. The BLAS kernel
/// decides per block with it whether to work in base 2; the tiled kernel, under mask
/// tensors, marks a block's unit for the natural-unit second pass when it fails.
struct Base2Range {
    /// The largest score magnitude, before biases, that base 2 holds.
    let scoreLimit: Double

    /// For biases whose finite magnitudes sum to `biasMagnitude` (``MaskRows/finiteBiasMagnitude()``).
    init(biasMagnitude: Float) {
        scoreLimit = 0.9 * Double(Float.greatestFiniteMagnitude) - Double(biasMagnitude) * Double(log2e)
    }

    /// Whether every score `alpha · q·k` of a block stays in range, by Cauchy–Schwarz with the
    /// Frobenius norms of its queries and keys (each ‖q‖·‖k‖ is at most their product): a
    /// loose bound, but one pass over contiguous memory, and ordinary inputs sit dozens of
    /// orders of magnitude below it. The 1 % covers the rounding of the GEMM (for any Dk below
    /// about 1.6·10⁵) and of the norms. False for NaN norms.
    func holds(alpha: Float, queryNorm: Double, keyNorm: Double) -> Bool {
        Double(Swift.abs(alpha)) * queryNorm * keyNorm * 1.01 <= scoreLimit
    }

    /// Whether scores whose largest magnitude is `largestScore` stay in range.
    func holds(largestScore: Float) -> Bool { Double(largestScore) <= scoreLimit }
}

/// Tile sizes to force instead of the measured defaults (tests use this to put tile
/// boundaries at awkward places).
struct TileSizes: Sendable {
    var queryBlock: Int? = nil
    var keyBlock: Int? = nil
    var splits: Int? = nil
    var rowwiseLimit: Int? = nil
    /// False to return the tiled kernel's own output even when a row looks wrong, instead of
    /// computing their heads again with the BLAS kernel: tests use it to see what the tiled
    /// path itself computed.
    var recomputeSuspectRows = true
    /// For the BLAS kernel: the smallest unit (rows per batch and key/value head) that may take
    /// its base-2 path, instead of ``blasBase2MinimumRows``; tests pass 1 to run small cases
    /// through it.
    var blasBase2MinimumRows: Int? = nil
}

/// The size of a call's keys and values in use (all batch entries and key/value heads) from
/// which blocks of five to eight query rows take the row-wise products instead of sgemm:
/// 16 MiB, half of this machine's 32 MiB L3.
///
/// Eight rows per key and value row cost the row-wise products twice the arithmetic of four,
/// done by SSE2 Swift code, where sgemm runs OpenBLAS's AVX2 kernels: when K and V stay in
/// L3 from one call to the next (as in a benchmark loop, or a single layer), sgemm wins; when
/// they have to come from memory, reading them once in order wins. Measured 2026-11-26
/// (attention-bench `--kernels tiled`, builds with the limit at 4 and at 8, five alternating
/// rounds, median of per-round speed-ups of 8 over 4; one thread / two threads):
/// B1 H8/1 L1 D128 at S = 2048 (2 MiB of K and V) 0.58 / 0.62, S = 4096 (4 MiB) 0.57 / 0.65,
/// S = 8192 (8 MiB) 1.10 / 0.67, S = 16384 (16 MiB) 1.50 / 1.03, S = 65536 (64 MiB)
/// 1.55 / 1.25; B1 H16/2 S4096 (8 MiB) 1.09 / 0.67; B1 H32/4 S4096 (16 MiB) 1.38 / 1.08,
/// S = 16384 (64 MiB) 1.50 / 1.26; B1 H64/8 S8192 (64 MiB) 1.52 / 1.16. The rule counts rows,
/// so a few queries per head qualify too: B1 H32 L6 S4096 with `.causal(.lowerRight)`
/// (verifying draft tokens, 128 MiB) 1.85 / 1.31, B1 H8 L8 S4096 causal 1.37 / 1.12, B1 H32
/// L8 S4096 1.19 / 1.36; so does the last block of a long prefill when it has five to eight
/// rows (not measured separately; a few rows of many). In a real model the
/// caches of all layers together exceed L3, so each call's K and V come from memory even
/// when they are small; the threshold keeps the benchmarks' L3-resident shapes on sgemm.
let rowwiseEightRowBytes = 16 << 20

/// Block sizes and key splitting for the tiled kernel.
///
/// Tried on 2026-11-25 (AMD EPYC Zen 3, 512 KiB L2 per core, OpenBLAS 0.3.21, one thread,
/// medians of attention-bench runs on a shared machine, ±15 % noise):
/// - B1 H8 L2048 D64, query rows × keys per tile: 64×256 216 ms, 64×512 229, 64×1024 205,
///   64×2048 231; 128×256 221, 128×512 232, 128×1024 167, 128×2048 165; 256×256 170,
///   256×512 170, 256×1024 198, 256×2048 166; 512×256 170, 512×512 163, 512×1024 164,
///   512×2048 164. Small query blocks lose (K and V are repacked by sgemm once per query
///   block); beyond 256 rows nothing is consistently better.
/// - B1 H8 L512 D64: 256×512 14.3 ms, 128×512 13.3, 64×512 15.1, 128×256 14.9, 64×256 15.6,
///   512×512 15.7, 256×256 13.0: all within noise.
/// - Decode B1 H32 L1 S4096 D128 (when decode blocks still went through sgemv per row): 128 keys
///   17.7 ms, 256 15.2, 512 16.3, 1024 14.4, 4096 15.1: within noise; bound by reading K and V
///   (128 MB) from memory. Not measured again since decode blocks moved to the row-wise
///   products: those stream each key and value row once whatever the tile, so the key tile
///   only sets how many scores sit in the scratch buffer between the two passes.
/// - Again after the base-2 softmax (B1 H8 L2048 D64, one thread, eight interleaved rounds of
///   5 repetitions, medians of the rounds): 256×512 147 ms, 256×256 144, 192×384 147,
///   128×256 147, 128×128 157; each had one or two rounds in a slow phase of the machine
///   (163–205 ms). Within noise, except that 128×128 is slower.
/// - After the one-pass changes' first part (scores arriving as s − c, the unclamped 2ˣ; B1 H8
///   L2048 D64, one thread, nine interleaved rounds in one process): speed relative to 256×512,
///   the median over rounds of (256×512's time ÷ the other's time) in the same round, so
///   above 1 the other is faster: 512×512 1.005, 128×512 0.980, 256×256 0.967, 128×256 0.947.
/// Chosen: 256 × 512, a 512 KiB score tile (one L2): no other size was faster by more than
/// the noise, and smaller query blocks were slower. Sizes that depend on the length (PyTorch
/// takes 32, 64 or 256 query rows by L): shorter problems have fewer rows than a block
/// anyway (a block is min(256, g·L) rows), and on L = 512 no size differed beyond the noise
/// (the second list above), so one size serves every length.
struct TilePlan {
    /// Query rows per work item.
    var queryBlock: Int
    /// Keys per tile.
    var keyBlock: Int
    /// Key ranges per query block (split-KV); 1 for prefill.
    var splits: Int
    /// Blocks of at most this many rows use the Swift row-wise products
    /// (`RowwiseProducts.swift`) instead of sgemm: for a handful of rows, sgemm's packing of
    /// the key and value tiles costs more than streaming them once. Four rows (a grouped-query
    /// group of four at L = 1, the common case) always; up to eight (groups of eight: MQA with
    /// eight query heads, Hq/Hkv = 8) when the call's keys and values in use take at least
    /// ``rowwiseEightRowBytes``.
    var rowwiseLimit = 4

    init(unitRows: Int, units: Int, keyLength S: Int, threads: Int, keyValueBytes: Int = 0,
         override: TileSizes? = nil) {
        queryBlock = max(1, min(unitRows, override?.queryBlock ?? 256))
        keyBlock = max(1, min(S, override?.keyBlock ?? 512))
        rowwiseLimit = override?.rowwiseLimit ?? (keyValueBytes >= rowwiseEightRowBytes ? 8 : 4)
        let tiles = (S + keyBlock - 1) / keyBlock
        if let forced = override?.splits {
            splits = max(1, min(tiles, forced))
            return
        }
        splits = 1
        let blocks = units * ((unitRows + queryBlock - 1) / queryBlock)
        // Too few items for the threads (e.g. decoding with few heads): split the keys,
        // keeping at least one key tile per split.
        let wanted = 2 * threads
        if blocks < wanted && threads > 1 {
            splits = max(1, min(tiles, (wanted + blocks - 1) / blocks))
        }
    }
}
