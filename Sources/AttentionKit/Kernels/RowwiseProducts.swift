/// The two products of attention for a single query row against a key tile (decoding with
/// one query head per key/value head), in Swift.
///
/// With one query row, Q·Kᵀ and P·V are matrix–vector products: two flops per float read,
/// bound by memory bandwidth, not arithmetic. OpenBLAS's
/// `sgemv` walks four rows of K (or V) at a time, four interleaved streams, and reached only
/// 8.7–9.2 GB/s reading the K and V of the decode shape (32 heads, S = 4096, D = 128,
/// 128 MiB) on the machine in the README, one thread, while one sequential pass over each
/// row, as below, reached 12.6–12.8 GB/s compiled for the SSE2 baseline (a C probe of both,
/// 2026-11-25; a plain read of the same memory: 13.2–14.3 GB/s). So the decode path streams
/// each key and value row once, in order, prefetching a few rows ahead (see
/// `prefetchDistance`). Only for one row: with several rows sharing each key row
/// (grouped-query heads) the arithmetic grows with the rows while the bytes read do not, and
/// there sgemv's AVX2 arithmetic beat SSE2 loops like these (see `TilePlan.rowwiseLimit`).

/// `scores[j] = alpha · Σ_d q[d] · k[j · Dk + d]` for `j < count`: one query row's scores
/// against a tile of `count` keys.
///
///     scores[n] = alpha · K[n, Dk] · q[Dk]
@inline(__always)
func rowwiseScores(
    query q: UnsafePointer<Float>, keys k: UnsafePointer<Float>, count: Int, dim Dk: Int,
    alpha: Float, scores: UnsafeMutablePointer<Float>
) {
    let rowBytes = Dk * MemoryLayout<Float>.stride
    for j in 0..<count {
        let key = k + j * Dk                                     // [Dk]
        prefetch(UnsafeRawPointer(key) + prefetchDistance, bytes: rowBytes)
        scores[j] = alpha * dot(q, key, count: Dk)
    }
}

/// `output[d] += Σ_j weights[j] · v[j · Dv + d]`: accumulates a tile of `count` value rows,
/// weighted, into one output row.
///
///     o[Dv] += p[n] · V[n, Dv]
@inline(__always)
func rowwiseAccumulate(
    weights p: UnsafePointer<Float>, values v: UnsafePointer<Float>, count: Int, dim Dv: Int,
    output o: UnsafeMutablePointer<Float>
) {
    let rowBytes = 2 * Dv * MemoryLayout<Float>.stride
    var j = 0
    while j + 2 <= count {                                       // two value rows per pass over o
        let v0 = v + j * Dv, v1 = v0 + Dv                        // [Dv] each
        prefetch(UnsafeRawPointer(v0) + prefetchDistance, bytes: rowBytes)
        axpy2(p[j], v0, p[j + 1], v1, o, count: Dv)
        j += 2
    }
    if j < count {
        let v0 = v + j * Dv
        axpy2(p[j], v0, 0, v0, o, count: Dv)
    }
}

/// `Σ_d a[d] · b[d]`, two SIMD accumulators.
@inline(__always)
func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
    var s0 = SIMD8<Float>(), s1 = SIMD8<Float>()
    var d = 0
    while d + 2 * lanes <= count {
        s0 += load(a + d) * load(b + d)
        s1 += load(a + d + lanes) * load(b + d + lanes)
        d += 2 * lanes
    }
    if d + lanes <= count {
        s0 += load(a + d) * load(b + d)
        d += lanes
    }
    var sum = (s0 + s1).sum()
    while d < count { sum += a[d] * b[d]; d += 1 }
    return sum
}

/// `y[d] += a0 · x0[d] + a1 · x1[d]` for `d < count`.
@inline(__always)
func axpy2(_ a0: Float, _ x0: UnsafePointer<Float>, _ a1: Float, _ x1: UnsafePointer<Float>,
           _ y: UnsafeMutablePointer<Float>, count: Int) {
    let w0 = SIMD8<Float>(repeating: a0), w1 = SIMD8<Float>(repeating: a1)
    var d = 0
    while d + lanes <= count {
        store(load(y + d) + w0 * load(x0 + d) + w1 * load(x1 + d), y + d)
        d += lanes
    }
    while d < count { y[d] += a0 * x0[d] + a1 * x1[d]; d += 1 }
}

/// How far ahead of the row being read the row-wise products prefetch, in bytes: 8 rows at
/// D = 128. Measured at B1 H32 L1 S4096 D128 (medians of three interleaved rounds of
/// attention-bench, 11 repetitions each, 2026-11-25): no prefetch 14.9 ms on one thread and
/// 9.3 on two; 2 KiB ahead 12.3 and 8.8; 4 KiB 12.1 and 7.3; 8 KiB 11.8 and 8.3.
let prefetchDistance = 4096

/// Prefetches every cache line of `bytes` bytes from `p`, which may lie past the end of its
/// buffer (prefetches never fault).
@inline(__always)
func prefetch(_ p: UnsafeRawPointer, bytes: Int) {
    var offset = 0
    while offset < bytes {
        BLAS.prefetch(p + offset)
        offset += 64
    }
}
