import AttentionKit
import Foundation

// An independent float64 reference for scaled dot-product attention, written from the
// definition (and PyTorch's documented semantics), sharing no code with the library.

/// One part of a mask, as the tests describe it. `library` builds the library's mask and
/// the reference interprets the same description on its own.
enum MaskSpec: CustomStringConvertible {
    case causal(CausalAlignment)
    case boolean(shape: [Int], data: [Bool])
    case additive(shape: [Int], data: [Float])
    case keyLengths([Int])

    var library: AttentionMask {
        switch self {
        case .causal(let a): return .causal(a)
        case .boolean(let shape, let data): return .boolean(try! Tensor(shape: shape, scalars: data))
        case .additive(let shape, let data): return .additive(try! Tensor(shape: shape, scalars: data))
        case .keyLengths(let l): return .keyLengths(l)
        }
    }

    var description: String {
        switch self {
        case .causal(let a): return "causal(\(a))"
        case .boolean(let shape, _): return "boolean\(shape)"
        case .additive(let shape, _): return "additive\(shape)"
        case .keyLengths(let l): return "keyLengths\(l)"
        }
    }
}

/// NumPy broadcasting, written out: the flat index into a tensor of shape `shape` for the
/// element at `index` of a larger array (aligned on the right, size-1 dimensions repeat).
func broadcastIndex(_ shape: [Int], _ index: [Int]) -> Int {
    precondition(shape.count <= index.count)
    let offset = index.count - shape.count
    var flat = 0
    for axis in 0..<shape.count {
        let i = shape[axis] == 1 ? 0 : index[axis + offset]
        flat = flat * shape[axis] + i
    }
    return flat
}

struct ReferenceResult {
    var output: [Double]
    var weights: [Double]
    /// Per query row, whether any key was allowed.
    var rowHasKeys: [Bool]
}

/// Whether the mask parts allow key `j` for query `i` of batch entry `b`, and the sum of
/// their biases there; `index` is the score's index in the mask tensors' broadcast shape.
func referenceMask(_ mask: [MaskSpec], batch b: Int, query i: Int, key j: Int,
                   queryLength L: Int, keyLength S: Int, index: [Int]) -> (allowed: Bool, bias: Double) {
    var allowed = true
    var bias = 0.0
    for part in mask {
        switch part {
        case .causal(.upperLeft): if j > i { allowed = false }
        case .causal(.lowerRight): if j > i + S - L { allowed = false }
        case .keyLengths(let lengths): if j >= lengths[b] { allowed = false }
        case .boolean(let shape, let data): if !data[broadcastIndex(shape, index)] { allowed = false }
        case .additive(let shape, let data):                  // −∞ excludes, whatever the score
            let x = Double(data[broadcastIndex(shape, index)])
            if x == -.infinity { allowed = false } else { bias += x }
        }
    }
    return (allowed, bias)
}

/// Float64 attention over float32 inputs. Shapes are the user's (rank 2, 3 or 4).
/// With `dropoutKeep`, weights are multiplied by `dropoutKeep(row, j)` after the softmax.
func referenceAttention(
    query: Tensor<Float>, key: Tensor<Float>, value: Tensor<Float>,
    mask: [MaskSpec] = [], scale: Double? = nil
) -> ReferenceResult {
    let rank = query.shape.count
    func dims(_ s: [Int]) -> (Int, Int, Int, Int) {
        rank == 4 ? (s[0], s[1], s[2], s[3]) : rank == 3 ? (s[0], 1, s[1], s[2]) : (1, 1, s[0], s[1])
    }
    let (B, Hq, L, Dk) = dims(query.shape)
    let (_, Hkv, S, _) = dims(key.shape)
    let Dv = dims(value.shape).3
    let scale = scale ?? (Dk > 0 ? 1 / Double(Dk).squareRoot() : 1)
    let q = query.scalars.map(Double.init), k = key.scalars.map(Double.init), v = value.scalars.map(Double.init)

    var output = [Double](repeating: 0, count: B * Hq * L * Dv)
    var weights = [Double](repeating: 0, count: B * Hq * L * S)
    var rowHasKeys = [Bool](repeating: false, count: B * Hq * L)
    for b in 0..<B {
        for h in 0..<Hq {
            let g = Hq / Hkv
            let kh = h / g
            for i in 0..<L {
                let row = (b * Hq + h) * L + i
                var s = [Double](repeating: -.infinity, count: S)
                for j in 0..<S {
                    // The score's index in the user's rank.
                    let index = rank == 4 ? [b, h, i, j] : rank == 3 ? [b, i, j] : [i, j]
                    let (allowed, bias) = referenceMask(mask, batch: b, query: i, key: j,
                                                        queryLength: L, keyLength: S, index: index)
                    guard allowed else { continue }
                    var dot = 0.0
                    for d in 0..<Dk { dot += q[row * Dk + d] * k[((b * Hkv + kh) * S + j) * Dk + d] }
                    s[j] = dot * scale + bias
                }
                // A NaN score makes the row NaN (Swift's max() would skip it or return it,
                // depending on where it stands).
                let m = s.contains(where: \.isNaN) ? .nan : s.max() ?? -.infinity
                guard m.isNaN || m > -.infinity else { continue }   // no allowed key: zero row
                rowHasKeys[row] = true
                let e = s.map { Foundation.exp($0 - m) }
                let total = e.reduce(0, +)
                for j in 0..<S where s[j] != -.infinity {     // excluded keys take no part
                    let p = e[j] / total
                    weights[row * S + j] = p
                    for d in 0..<Dv { output[row * Dv + d] += p * v[((b * Hkv + kh) * S + j) * Dv + d] }
                }
            }
        }
    }
    return ReferenceResult(output: output, weights: weights, rowHasKeys: rowHasKeys)
}
