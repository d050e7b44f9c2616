/// The two products of attention for a few query rows (decoding), in Swift.
///
/// With one to four query rows against a tile of keys (up to eight on large caches, see
/// `rowwiseEightRowBytes`), Q·Kᵀ and P·V are matrix–vector
/// products: a few flops per float read, bound by memory bandwidth more than arithmetic.
/// OpenBLAS's `sgemv` walks four rows of K (or V) at a time, four interleaved streams, and
/// reached only 8.7–9.2 GB/s reading the K and V of the decode shape (32 heads, S = 4096,
/// D = 128, 128 MiB) on the machine in the README, one thread, while one sequential pass over
/// each row, as below, reached 12.6–12.8 GB/s compiled for the SSE2 baseline (a C probe of
/// both, 2026-11-25; a plain read of the same memory: 13.2–14.3 GB/s). So the decode path
/// streams each key and value row once, in order, prefetching a few rows ahead (see
/// `prefetchDistance`), and does the arithmetic of up to four query rows (the query heads
/// of a grouped-query group) per load of a key or value row, so that at the SSE2 baseline the
/// arithmetic of several rows does not fall behind sgemv's AVX2 either. Measured at
/// B1 H32/8 L1 S4096 D128 (four rows per block; medians of four interleaved rounds of
/// attention-bench, 2026-11-25): sgemv per row 5.8 ms on one thread and 3.2 on two; these
/// products one row at a time 7.3 and 3.6; four rows per key load 5.0 and 2.5.

/// `scores[r · scoreStride + j] = alpha · Σ_d q[r · Dk + d] · k[j · Dk + d]` for `r < rows`,
/// `j < count`: the score tile of `rows` query rows against `count` keys.
///
///     scores[R, n] = alpha · Q[R, Dk] · K[n, Dk]ᵀ
@inline(__always)
func rowwiseScores(
    query q: UnsafePointer<Float>, rows: Int, keys k: UnsafePointer<Float>, count: Int, dim Dk: Int,
    alpha: Float, scores: UnsafeMutablePointer<Float>, scoreStride: Int
) {
    let rowBytes = Dk * MemoryLayout<Float>.stride
    for j in 0..<count {
        let key = k + j * Dk                                     // [Dk]
        prefetch(UnsafeRawPointer(key) + prefetchDistance, bytes: rowBytes)
        if rows == 1 {
            scores[j] = alpha * dot(q, key, count: Dk)
            continue
        }
        var r0 = 0
        while r0 < rows {                                        // groups of up to four rows
            let group = min(4, rows - r0)
            let s = alpha * dot4(q + r0 * Dk, rows: group, key, count: Dk)
            for r in 0..<group { scores[(r0 + r) * scoreStride + j] = s[r] }
            r0 += group
        }
    }
}

/// `output[r · Dv + d] += Σ_j weights[r · weightStride + j] · v[j · Dv + d]` for `r < rows`:
/// accumulates a tile of `count` value rows, weighted, into `rows` output rows.
///
///     O[R, Dv] += P[R, n] · V[n, Dv]
@inline(__always)
func rowwiseAccumulate(
    weights p: UnsafePointer<Float>, rows: Int, weightStride: Int, values v: UnsafePointer<Float>,
    count: Int, dim Dv: Int, output o: UnsafeMutablePointer<Float>
) {
    let rowBytes = 2 * Dv * MemoryLayout<Float>.stride
    var j = 0
    while j + 2 <= count {                                       // two value rows per pass over O
        let v0 = v + j * Dv, v1 = v0 + Dv                        // [Dv] each
        prefetch(UnsafeRawPointer(v0) + prefetchDistance, bytes: rowBytes)
        var r = 0
        while r + 4 <= rows {
            axpy2x4(p + r * weightStride + j, weightStride: weightStride, v0, v1, o + r * Dv, count: Dv)
            r += 4
        }
        while r < rows {
            let w = p + r * weightStride + j
            axpy2(w[0], v0, w[1], v1, o + r * Dv, count: Dv)
            r += 1
        }
        j += 2
    }
    if j < count {                                               // a lone last value row
        let v0 = v + j * Dv
        for r in 0..<rows { axpy1(p[r * weightStride + j], v0, o + r * Dv, count: Dv) }
    }
}

/// The dot products of `rows` (1…4) query rows `q[r · count ..< (r + 1) · count]` with one
/// key row, in lanes `0 ..< rows` (the other lanes repeat the last row). Each key vector is
/// loaded once for all rows.
@inline(__always)
func dot4(_ q: UnsafePointer<Float>, rows: Int, _ key: UnsafePointer<Float>, count: Int) -> SIMD4<Float> {
    let q0 = q, q1 = q + min(1, rows - 1) * count
    let q2 = q + min(2, rows - 1) * count, q3 = q + min(3, rows - 1) * count
    var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
    var d = 0
    while d + lanes <= count {
        let k = load(key + d)
        a0 += k * load(q0 + d)
        a1 += k * load(q1 + d)
        a2 += k * load(q2 + d)
        a3 += k * load(q3 + d)
        d += lanes
    }
    var s = SIMD4<Float>(a0.sum(), a1.sum(), a2.sum(), a3.sum())
    while d < count {
        s += key[d] * SIMD4<Float>(q0[d], q1[d], q2[d], q3[d])
        d += 1
    }
    return s
}

/// `y_r[d] += w[r · weightStride] · x0[d] + w[r · weightStride + 1] · x1[d]` for four rows
/// `y_r = y + r · count`, loading each `x` vector once for the four rows.
@inline(__always)
func axpy2x4(_ w: UnsafePointer<Float>, weightStride: Int,
             _ x0: UnsafePointer<Float>, _ x1: UnsafePointer<Float>,
             _ y: UnsafeMutablePointer<Float>, count: Int) {
    let c0 = w[0], e0 = w[1], c1 = w[weightStride], e1 = w[weightStride + 1]
    let c2 = w[2 * weightStride], e2 = w[2 * weightStride + 1]
    let c3 = w[3 * weightStride], e3 = w[3 * weightStride + 1]
    let a0 = SIMD8<Float>(repeating: c0), b0 = SIMD8<Float>(repeating: e0)
    let a1 = SIMD8<Float>(repeating: c1), b1 = SIMD8<Float>(repeating: e1)
    let a2 = SIMD8<Float>(repeating: c2), b2 = SIMD8<Float>(repeating: e2)
    let a3 = SIMD8<Float>(repeating: c3), b3 = SIMD8<Float>(repeating: e3)
    let y0 = y, y1 = y + count, y2 = y + 2 * count, y3 = y + 3 * count
    var d = 0
    while d + lanes <= count {
        let u = load(x0 + d), t = load(x1 + d)
        store(load(y0 + d) + a0 * u + b0 * t, y0 + d)
        store(load(y1 + d) + a1 * u + b1 * t, y1 + d)
        store(load(y2 + d) + a2 * u + b2 * t, y2 + d)
        store(load(y3 + d) + a3 * u + b3 * t, y3 + d)
        d += lanes
    }
    while d < count {
        y0[d] += c0 * x0[d] + e0 * x1[d]
        y1[d] += c1 * x0[d] + e1 * x1[d]
        y2[d] += c2 * x0[d] + e2 * x1[d]
        y3[d] += c3 * x0[d] + e3 * x1[d]
        d += 1
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

/// `y[d] += a · x[d]` for `d < count`.
@inline(__always)
func axpy1(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    let w = SIMD8<Float>(repeating: a)
    var d = 0
    while d + lanes <= count {
        store(load(y + d) + w * load(x + d), y + d)
        d += lanes
    }
    while d < count { y[d] += a * x[d]; d += 1 }
}
