#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Computes again, in float64, every query row whose output came out NaN or ±∞ (or whose
/// weights did, when `Dv = 0` leaves no output to show it; the kernels also mark rows that
/// ended without weight although keys were allowed this way), so that a row's result depends
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
///
/// Rows are spread over the call's threads. A row whose allowed scores include NaN or +∞ is
/// NaN (its weights NaN on the allowed keys whose score is not −∞), and costs a float64 pass
/// over its keys; rows that come out finite cost a float64 pass over their keys and values
/// (SIMD dot products), several times the fast kernels' time per row.
func repairNonFiniteRows(_ a: KernelArguments) {
    let p = a.problem
    let (S, Dv) = (p.keyLength, p.valueDim)
    let rows = p.batch * p.queryHeads * p.queryLength
    let rowsPerItem = 16
    parallelWork(threads: a.threads, items: (rows + rowsPerItem - 1) / rowsPerItem) { claim in
        let scratch = ExactRowScratch(keys: S, valueDim: Dv)
        defer { scratch.deallocate() }
        while let item = claim() {
            for row in (item * rowsPerItem)..<min(rows, (item + 1) * rowsPerItem) {
                let finite = Dv > 0 ? allFinite(a.output + row * Dv, count: Dv)
                                    : a.weights.map { allFinite($0 + row * S, count: S) } ?? true
                if !finite { exactRow(a, row: row, scratch: scratch) }
            }
        }
    }
}

/// Per-thread buffers of ``exactRow(_:row:scratch:)``.
struct ExactRowScratch {
    let scores: UnsafeMutablePointer<Double>          // [S]
    let weights: UnsafeMutablePointer<Float>          // [S]
    let output: UnsafeMutablePointer<Double>          // [Dv]

    init(keys: Int, valueDim: Int) {
        scores = .allocate(capacity: max(1, keys))
        weights = .allocate(capacity: max(1, keys))
        output = .allocate(capacity: max(1, valueDim))
    }

    func deallocate() { scores.deallocate(); weights.deallocate(); output.deallocate() }
}

/// One query row from the definition, in float64 (the naive kernel's steps, with excluded
/// keys left out of `P·V` rather than multiplied by 0):
///
///     s[j] = (q · k_j) · scale + Σ bias[j]      excluded (mask, or a −∞ bias, whatever
///                                               q · k_j is): left out
///     w    = softmax(s) rounded to float, then dropout (the kernels' decisions)
///     out  = Σ over keys not left out of w[j] · v_j
///
/// A NaN or +∞ among the allowed scores makes the softmax undefined: the row's output is NaN
/// and so are its weights, except on keys left out (excluded, or scored −∞), which stay 0
/// wherever they stand in the row. Writes the output row and, when the caller wants them,
/// the weights row.
func exactRow(_ a: KernelArguments, row: Int, scratch: ExactRowScratch) {
    let p = a.problem
    let (L, S, Dk, Dv) = (p.queryLength, p.keyLength, p.keyDim, p.valueDim)
    let i = row % L
    let h = (row / L) % p.queryHeads
    let b = row / (L * p.queryHeads)
    let unit = b * p.kvHeads + h / p.group                    // shared K/V head
    let q = a.query + row * Dk                                // [Dk]
    let keys = a.key + unit * S * Dk                          // [S, Dk]
    let values = a.value + unit * S * Dv                      // [S, Dv]
    let (s, w, out) = (scratch.scores, scratch.weights, a.output + row * Dv)

    // Keys from `end` on are excluded by the causal and key-length parts: never visited (a
    // row that sees one key of millions costs one key), their weights written as zeros.
    let end = a.mask.rowEnd(batch: b, query: i, keyLength: S)
    func storeWeights() {
        guard let weights = a.weights else { return }
        (weights + row * S).update(from: w, count: end)
        (weights + row * S + end).update(repeating: 0, count: S - end)
    }

    // s = q · Kᵀ · scale + bias, −∞ where excluded. Every score is computed even once the row
    // is undefined: which keys score −∞ (and so keep weight 0) must not depend on key order.
    var m = -Double.infinity
    var undefined = false
    for j in 0..<end {
        guard a.mask.allows(batch: b, head: h, query: i, key: j, keyLength: S),
              let bias = a.mask.exactBias(batch: b, head: h, query: i, key: j) else { s[j] = -.infinity; continue }
        s[j] = exactDot(q, keys + j * Dk, count: Dk) * Double(a.scale) + bias
        if s[j].isNaN || s[j] == .infinity { undefined = true; s[j] = .nan } else { m = max(m, s[j]) }
    }
    if undefined {
        for j in 0..<end { w[j] = s[j] == -.infinity ? 0 : .nan }
        storeWeights()
        out.update(repeating: .nan, count: Dv)
        return
    }

    // w = softmax(s): zeros when no key is allowed.
    var total = 0.0
    for j in 0..<end where s[j] != -.infinity { s[j] = exp(s[j] - m); total += s[j] }        // s[j] ≥ 0 from here
    for j in 0..<end { w[j] = s[j] == -.infinity ? 0 : Float(s[j] / total) }
    a.dropout?.apply(w, count: end, rowIndex: row)
    storeWeights()

    // out = Σ w[j] · v_j over the keys not excluded.
    let acc = scratch.output
    acc.update(repeating: 0, count: Dv)
    for j in 0..<end where s[j] != -.infinity {
        let weight = Double(w[j])
        let v = values + j * Dv
        for e in 0..<Dv { acc[e] += weight * Double(v[e]) }
    }
    for e in 0..<Dv { out[e] = Float(acc[e]) }
}

/// `x · y` of `count` floats, accumulated in float64.
@inline(__always)
func exactDot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, count: Int) -> Double {
    var acc = SIMD4<Double>()
    var d = 0
    while d + 4 <= count {
        let a = UnsafeRawPointer(x + d).loadUnaligned(as: SIMD4<Float>.self)
        let b = UnsafeRawPointer(y + d).loadUnaligned(as: SIMD4<Float>.self)
        acc += SIMD4<Double>(a) * SIMD4<Double>(b)
        d += 4
    }
    var sum = acc.sum()
    while d < count { sum += Double(x[d]) * Double(y[d]); d += 1 }
    return sum
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
