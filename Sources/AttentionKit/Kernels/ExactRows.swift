#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Computes again, in float64, every query row whose output came out NaN or ±∞ (or whose
/// weights did, when `Dv = 0` leaves no output to show it), so that a row's result depends
/// only on the keys it may see and on the arithmetic, not on the kernel's float32 shortcuts
/// or blocking.
///
/// The fast kernels multiply whole blocks: `P·V` includes keys the mask excludes (with weight
/// 0, and `0 · NaN` is NaN), the normalisation can come after `P·V` (whose unnormalised sums
/// can pass float's largest value where the normalised output would not), and a score
/// `scale · q·k` can overflow float (scale 1e38, say) where float64 holds it. Such rows are
/// rare and the kernels flag them as they finish (the rows are still in cache), so ordinary
/// calls pay nothing here. A repaired row is NaN only when an input the row may see is NaN or
/// ±∞ (or a bias is +∞, which leaves the softmax undefined, as in PyTorch), and ±∞ only when
/// the output itself is beyond float's range.
func repairNonFiniteRows(_ a: KernelArguments) {
    let p = a.problem
    let (S, Dv) = (p.keyLength, p.valueDim)
    let rows = p.batch * p.queryHeads * p.queryLength
    let scores = UnsafeMutablePointer<Double>.allocate(capacity: max(1, S))    // [S]
    let weights = UnsafeMutablePointer<Float>.allocate(capacity: max(1, S))    // [S]
    defer { scores.deallocate(); weights.deallocate() }
    for row in 0..<rows {
        let finite = Dv > 0 ? allFinite(a.output + row * Dv, count: Dv)
                            : a.weights.map { allFinite($0 + row * S, count: S) } ?? true
        if !finite { exactRow(a, row: row, scores: scores, weights: weights) }
    }
}

/// One query row from the definition, in float64 (the naive kernel's steps, with excluded
/// keys left out of `P·V` rather than multiplied by 0):
///
///     s[j] = (q · k_j) · scale + Σ bias[j]      excluded (mask, or a −∞ bias, whatever
///                                               q · k_j is): left out
///     w    = softmax(s) rounded to float, then dropout (the kernels' decisions)
///     out  = Σ over keys not left out of w[j] · v_j
///
/// Writes the output row and, when the caller wants them, the weights row. `scores` and
/// `weights` are scratch of `S` elements.
func exactRow(_ a: KernelArguments, row: Int, scores s: UnsafeMutablePointer<Double>,
              weights w: UnsafeMutablePointer<Float>) {
    let p = a.problem
    let (L, S, Dk, Dv) = (p.queryLength, p.keyLength, p.keyDim, p.valueDim)
    let i = row % L
    let h = (row / L) % p.queryHeads
    let b = row / (L * p.queryHeads)
    let unit = b * p.kvHeads + h / p.group                    // shared K/V head
    let q = a.query + row * Dk                                // [Dk]
    let keys = a.key + unit * S * Dk                          // [S, Dk]
    let values = a.value + unit * S * Dv                      // [S, Dv]

    // s = q · Kᵀ · scale + bias, −∞ where excluded; a NaN score makes the row NaN.
    var m = -Double.infinity
    var sawNaN = false
    for j in 0..<S {
        guard a.mask.allows(batch: b, head: h, query: i, key: j, keyLength: S),
              let bias = a.mask.exactBias(batch: b, head: h, query: i, key: j) else { s[j] = -.infinity; continue }
        var dot = 0.0
        for d in 0..<Dk { dot += Double(q[d]) * Double(keys[j * Dk + d]) }
        s[j] = dot * Double(a.scale) + bias
        if s[j].isNaN { sawNaN = true } else { m = max(m, s[j]) }
    }
    if sawNaN { m = .nan }

    // w = softmax(s): zeros when no key is allowed.
    var total = 0.0
    for j in 0..<S where s[j] != -.infinity { total += exp(s[j] - m) }
    for j in 0..<S {
        let excluded = s[j] == -.infinity
        w[j] = excluded || m == -.infinity ? 0 : Float(exp(s[j] - m) / total)
    }
    a.dropout?.apply(w, count: S, rowIndex: row)
    if let weights = a.weights { (weights + row * S).update(from: w, count: S) }

    // out = Σ w[j] · v_j over the keys not excluded.
    let out = a.output + row * Dv
    for e in 0..<Dv {
        var acc = 0.0
        for j in 0..<S where s[j] != -.infinity { acc += Double(w[j]) * Double(values[j * Dv + e]) }
        out[e] = Float(acc)
    }
}

/// Whether `x[0..<count]` holds no NaN and no ±∞ (a mask AND per vector, so no long
/// dependency chain through a floating-point sum).
@inline(__always)
func allFinite(_ x: UnsafePointer<Float>, count: Int) -> Bool {
    let limit = SIMD8<Float>(repeating: .greatestFiniteMagnitude)
    var finite = SIMDMask<SIMD8<Int32>>(repeating: true)
    var j = 0
    while j + lanes <= count {
        let y = load(x + j)
        finite .&= (y .<= limit) .& (y .>= -limit)               // false for ±∞ and NaN
        j += lanes
    }
    var tailFinite = true
    while j < count { tailFinite = tailFinite && x[j].isFinite; j += 1 }
    return all(finite) && tailFinite
}
