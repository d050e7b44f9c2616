import CBLAS
import Synchronization

/// The only door to OpenBLAS: typed wrappers that convert `Int` sizes to BLAS's 32-bit
/// `blasint` (callers have already checked that sizes fit; see `AttentionProblem`).
enum BLAS {
    /// Hints the CPU to fetch the cache line holding `address` (a no-op where unsupported;
    /// never faults, so it may point past the end of a buffer).
    @inline(__always)
    static func prefetch(_ address: UnsafeRawPointer) {
        attentionkit_prefetch(address)
    }

    /// Row-major `C[m, n] = alpha · A[m, k] · op(B) + beta · C`, with `op(B) = Bᵀ` when
    /// `transposeB` (B stored `[n, k]`) and `B` otherwise (B stored `[k, n]`).
    ///
    /// Handles the empty cases itself: OpenBLAS rejects a leading dimension of 0, and a
    /// zero `k` must still scale `C` by `beta`. With `alpha` = ±0 it keeps IEEE arithmetic's
    /// `0 · NaN = 0 · ∞ = NaN`, which BLAS drops (it does not read A or B when alpha is 0):
    /// `C[i, j]` becomes NaN where row `i` of A or column `j` of `op(B)` holds NaN or ±∞, as
    /// the float64 definition and PyTorch give for a scale of 0 (a zero-scale attention row
    /// is NaN when its query or a key it may see is).
    @inline(__always)
    static func sgemm(
        m: Int, n: Int, k: Int,
        alpha: Float,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int, transposeB: Bool,
        beta: Float,
        c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        guard m > 0, n > 0 else { return }
        guard k > 0 else {
            for row in 0..<m {
                let p = c + row * ldc
                if beta == 0 { p.update(repeating: 0, count: n) } else { for j in 0..<n { p[j] *= beta } }
            }
            return
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k),
                    alpha, a, blasint(lda), b, blasint(ldb),
                    beta, c, blasint(ldc))
        if alpha == 0 {
            markNonFiniteProducts(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, transposeB: transposeB, c: c, ldc: ldc)
        }
    }

    /// Sets `C[i, j]` to NaN where row `i` of A or column `j` of `op(B)` holds NaN or ±∞:
    /// what `0 · (A · op(B))` gives in IEEE arithmetic (any non-finite term makes the sum
    /// non-finite or NaN, and 0 times that is NaN). Reads A and B once; only zero-alpha calls
    /// (a scale of 0) pay for it.
    private static func markNonFiniteProducts(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int, transposeB: Bool,
        c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        let columns: [Int]
        if transposeB {                                              // B [n, k]: column j of Bᵀ is row j
            columns = (0..<n).filter { !allFinite(b + $0 * ldb, count: k) }
        } else {                                                     // B [k, n]
            var finite = [Bool](repeating: true, count: n)
            for l in 0..<k {
                let row = b + l * ldb
                for j in 0..<n where !row[j].isFinite { finite[j] = false }
            }
            columns = (0..<n).filter { !finite[$0] }
        }
        for i in 0..<m {
            let row = c + i * ldc                                    // [n]
            if !allFinite(a + i * lda, count: k) {
                row.update(repeating: .nan, count: n)
            } else {
                for j in columns { row[j] = .nan }
            }
        }
    }

    /// Row-major `y[m] = alpha · A[m, n] · x[n] + beta · y` (`transposeA: false`) or
    /// `y[n] = alpha · A[m, n]ᵀ · x[m] + beta · y` (`transposeA: true`), unit strides.
    @inline(__always)
    static func sgemv(
        transposeA: Bool, m: Int, n: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, x: UnsafePointer<Float>,
        beta: Float, y: UnsafeMutablePointer<Float>
    ) {
        let outputs = transposeA ? n : m
        let inputs = transposeA ? m : n
        guard outputs > 0 else { return }
        guard inputs > 0 else {
            if beta == 0 { y.update(repeating: 0, count: outputs) } else { for j in 0..<outputs { y[j] *= beta } }
            return
        }
        cblas_sgemv(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), alpha, a, blasint(lda), x, 1, beta, y, 1)
    }

    /// The largest size a BLAS dimension or leading dimension may have.
    static let maximumDimension = Int(Int32.max)

    /// How many kernels are inside ``singleThreaded(_:)`` right now.
    private static let runningKernels = Mutex(0)

    /// Runs `body` with OpenBLAS limited to one thread. AttentionKit's kernels parallelise
    /// over their own work items, so a multi-threaded sgemm inside them would oversubscribe
    /// the cores.
    ///
    /// OpenBLAS is left at one thread afterwards on purpose: measured with
    /// `strace -f -c -e trace=sched_yield`, restoring the previous count after every call
    /// wakes OpenBLAS's idle pool threads, which then spin in `sched_yield` (777 calls
    /// against 71 over the same attention-bench run) and take a core from the kernel's own
    /// threads (the kernel took 18.6 ms instead of 14.5 at B1 H8 L512 D64, both under strace).
    /// A program that
    /// wants multi-threaded OpenBLAS for its own calls sets it with
    /// `openblas_set_num_threads`; AttentionKit sets it back to one at its next call.
    static func singleThreaded<R>(_ body: () throws -> R) rethrows -> R {
        runningKernels.withLock { kernels in
            kernels += 1
            if openblas_get_num_threads() != 1 { openblas_set_num_threads(1) }
        }
        defer { runningKernels.withLock { $0 -= 1 } }
        return try body()
    }
}

// MARK: - Used by the layers (Linear, MultiHeadAttention)

extension BLAS {
    /// Runs `body` with OpenBLAS's own thread pool set to `count` threads, for BLAS calls
    /// that should use AttentionKit's thread count themselves (the layers' projections).
    ///
    /// While a kernel holds OpenBLAS to one thread (``singleThreaded(_:)``, possibly on
    /// another thread), the count is left alone: a kernel must never run multi-threaded
    /// sgemm calls inside its own parallel loop. The results then agree only up to rounding:
    /// multi-threaded sgemm and sgemv split the products differently from one thread, so
    /// outputs can differ in the last bits with OpenBLAS's count (an E = 2048 projection of
    /// four rows: by 2.7e-5 on outputs of about 26, one ulp), and so a projection can round
    /// differently while another thread runs a kernel. As with ``singleThreaded(_:)``, the
    /// count is not restored afterwards, so that OpenBLAS's idle threads are not woken for
    /// nothing.
    ///
    /// OpenBLAS gets at most ``AttentionThreads/coreCount`` threads, whatever `count`:
    /// more would only take turns on the same cores, and each OpenBLAS thread reserves about
    /// 140 MB of address space (a C program's virtual size after one sgemm: 0.3 GB with 2
    /// threads, 8.9 GB with 64, OpenBLAS 0.3.21), so that under `ulimit -v` a layer set to 64
    /// threads left Dispatch unable to start a thread for the next kernel, which then waited
    /// forever.
    static func withThreads<R>(_ count: Int, _ body: () throws -> R) rethrows -> R {
        let target = Int32(clamping: min(max(1, count), AttentionThreads.coreCount))
        runningKernels.withLock { kernels in
            if kernels == 0, openblas_get_num_threads() != target { openblas_set_num_threads(target) }
        }
        return try body()
    }

    /// OpenBLAS's current thread count, for tests.
    static var openBLASThreadCount: Int { Int(openblas_get_num_threads()) }
}
