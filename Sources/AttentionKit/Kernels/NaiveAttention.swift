#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The naive kernel: plain loops that read like the formula, one query row at a time.
///
///     scores[j] = (q · k_j) · scale + bias[j]     (−∞ where the mask excludes j)
///     p         = softmax(scores)                 (zeros if every key is excluded)
///     p         = dropout(p)
///     out       = Σ_j p[j] · v_j
///
/// Single-threaded and scalar on purpose: it is the readable oracle that attention-bench
/// checks the fast kernels against, not a kernel to use. The scores are float32, as in the
/// other kernels; the sums over the keys (the softmax's denominator and P·V) are Double, so
/// that long rows keep the tolerance.
func naiveAttention(_ a: KernelArguments) {
    let p = a.problem
    let (S, Dk, Dv) = (p.keyLength, p.keyDim, p.valueDim)
    var scores = [Float](repeating: 0, count: S)
    for b in 0..<p.batch {
        for h in 0..<p.queryHeads {
            let kvHead = h / p.group                     // grouped-query: shared K/V head
            let keys = a.key + (b * p.kvHeads + kvHead) * S * Dk       // [S, Dk]
            let values = a.value + (b * p.kvHeads + kvHead) * S * Dv   // [S, Dv]
            for i in 0..<p.queryLength {
                let rowIndex = (b * p.queryHeads + h) * p.queryLength + i
                let q = a.query + rowIndex * Dk                        // [Dk]

                // scores = q · Kᵀ · scale + mask
                var anyAllowed = false
                for j in 0..<S {
                    var dot: Float = 0
                    for d in 0..<Dk { dot += q[d] * keys[j * Dk + d] }
                    let allowed = a.mask.allows(batch: b, head: h, query: i, key: j, keyLength: S)
                    anyAllowed = anyAllowed || allowed
                    scores[j] = allowed ? dot * a.scale + a.mask.bias(batch: b, head: h, query: i, key: j) : -.infinity
                }

                // p = softmax(scores), with the row maximum subtracted; a NaN score makes the
                // row NaN (as in the other kernels and PyTorch), which `max()` alone would skip.
                let m = scores.contains(where: \.isNaN) ? .nan : scores.max() ?? -.infinity
                if m == -.infinity {
                    for j in 0..<S { scores[j] = 0 }
                } else {
                    // Sums over S keys in Double: a float32 sum of thousands of alike terms
                    // drifts by about S · 2⁻²⁴ relative, beyond the tolerance at S ≈ 4096.
                    var sum = 0.0
                    for j in 0..<S { scores[j] = expf(scores[j] - m); sum += Double(scores[j]) }
                    for j in 0..<S { scores[j] = Float(Double(scores[j]) / sum) }
                }

                scores.withUnsafeMutableBufferPointer { row in
                    a.dropout?.apply(row.baseAddress!, count: S, rowIndex: rowIndex)
                    if let weights = a.weights {
                        (weights + rowIndex * S).update(from: row.baseAddress!, count: S)
                    }
                }

                // out = p · V
                let out = a.output + rowIndex * Dv
                for e in 0..<Dv {
                    var acc = 0.0
                    for j in 0..<S { acc += Double(scores[j]) * Double(values[j * Dv + e]) }
                    out[e] = Float(acc)
                }
                // Allowed keys but no weight (−∞ biases, or scores beyond float's range): marked
                // NaN, so that the row is computed again exactly, as the other kernels do.
                if m == -.infinity && anyAllowed {
                    out.update(repeating: .nan, count: Dv)
                    a.weights.map { ($0 + rowIndex * S).update(repeating: .nan, count: S) }
                }
            }
        }
    }
}
