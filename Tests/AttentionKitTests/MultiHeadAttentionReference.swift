import AttentionKit
import Foundation
import Testing

// An independent float64 reference for the multi-head attention layer, written from the
// definition (Vaswani et al. 2017, §3.2.2, and PyTorch's nn.MultiheadAttention docs), sharing
// no code with the library: it reads only the layer's weights (data), never its code.

/// The weights of a layer, as float64 arrays in PyTorch's `[out, in]` layout.
struct ReferenceWeights {
    var heads: Int
    var kvHeads: Int
    var wq, wk, wv, wo: (rows: Int, cols: Int, data: [Double])
    var bq, bk, bv, bo: [Double]?
    /// Rotary embeddings: R, the base, and whether pairs are neighbours (GPT-J) rather than
    /// halves (Hugging Face's rotate_half).
    var rotary: (dimensions: Int, base: Double, interleaved: Bool)?

    init(_ layer: MultiHeadAttention) {
        func matrix(_ t: Tensor<Float>) -> (rows: Int, cols: Int, data: [Double]) {
            (t.shape[0], t.shape[1], t.scalars.map(Double.init))
        }
        heads = layer.heads
        kvHeads = layer.kvHeads
        wq = matrix(layer.queryProjection.weight)
        wk = matrix(layer.keyProjection.weight)
        wv = matrix(layer.valueProjection.weight)
        wo = matrix(layer.outputProjection.weight)
        bq = layer.queryProjection.bias?.scalars.map(Double.init)
        bk = layer.keyProjection.bias?.scalars.map(Double.init)
        bv = layer.valueProjection.bias?.scalars.map(Double.init)
        bo = layer.outputProjection.bias?.scalars.map(Double.init)
        rotary = layer.rotary.map { ($0.dimensions, $0.base, $0.pairing == .interleaved) }
    }
}

/// `y[r, o] = Σ_i x[r, i]·W[o, i] + b[o]` in float64.
func referenceLinear(_ x: [Double], rows: Int, _ w: (rows: Int, cols: Int, data: [Double]), _ b: [Double]?) -> [Double] {
    var y = [Double](repeating: 0, count: rows * w.rows)
    for r in 0..<rows {
        for o in 0..<w.rows {
            var sum = b?[o] ?? 0
            for i in 0..<w.cols { sum += x[r * w.cols + i] * w.data[o * w.cols + i] }
            y[r * w.rows + o] = sum
        }
    }
    return y
}

/// Float64 multi-head attention. Inputs `[B, L, E]` or `[L, E]` (then B = 1); `mask` parts
/// are interpreted over the scores `[B, Hq, L, S]`. Returns the output `[B·L·E_out]` and
/// the weights `[B·Hq·L·S]`, flat.
func referenceMultiHeadAttention(
    _ w: ReferenceWeights, query: Tensor<Float>, key: Tensor<Float>, value: Tensor<Float>,
    mask: [MaskSpec] = [], queryStart: Int = 0, keyStart: Int = 0
) -> (output: [Double], weights: [Double]) {
    let rank = query.rank
    let B = rank == 3 ? query.shape[0] : 1
    let L = query.shape[rank - 2], S = key.shape[rank - 2]
    let (Hq, Hkv) = (w.heads, w.kvHeads)
    let Dk = w.wq.rows / Hq, Dv = w.wv.rows / Hkv
    let group = Hq / Hkv

    // Projections, row by row: Q [B·L, Hq·Dk], K [B·S, Hkv·Dk], V [B·S, Hkv·Dv].
    var q = referenceLinear(query.scalars.map(Double.init), rows: B * L, w.wq, w.bq)
    var k = referenceLinear(key.scalars.map(Double.init), rows: B * S, w.wk, w.bk)
    if let r = w.rotary {
        referenceRotate(&q, rows: B, length: L, heads: Hq, width: Dk, r, start: queryStart)
        referenceRotate(&k, rows: B, length: S, heads: Hkv, width: Dk, r, start: keyStart)
    }
    let v = referenceLinear(value.scalars.map(Double.init), rows: B * S, w.wv, w.bv)

    let scale = 1 / Double(Dk).squareRoot()
    var concat = [Double](repeating: 0, count: B * L * Hq * Dv)   // [B, L, Hq·Dv]
    var weights = [Double](repeating: 0, count: B * Hq * L * S)
    for b in 0..<B {
        for h in 0..<Hq {
            let kh = h / group
            for i in 0..<L {
                var s = [Double](repeating: -.infinity, count: S)
                for j in 0..<S {
                    let (allowed, bias) = referenceMask(mask, batch: b, query: i, key: j,
                                                        queryLength: L, keyLength: S, index: [b, h, i, j])
                    guard allowed else { continue }
                    var dot = 0.0
                    for d in 0..<Dk {
                        dot += q[(b * L + i) * Hq * Dk + h * Dk + d] * k[(b * S + j) * Hkv * Dk + kh * Dk + d]
                    }
                    s[j] = dot * scale + bias
                }
                let m = s.max() ?? -.infinity
                guard m > -.infinity else { continue }              // no allowed key: zero row
                let e = s.map { Foundation.exp($0 - m) }
                let total = e.reduce(0, +)
                for j in 0..<S where e[j] > 0 {
                    let p = e[j] / total
                    weights[((b * Hq + h) * L + i) * S + j] = p
                    for d in 0..<Dv {
                        concat[(b * L + i) * Hq * Dv + h * Dv + d] += p * v[(b * S + j) * Hkv * Dv + kh * Dv + d]
                    }
                }
            }
        }
    }
    return (referenceLinear(concat, rows: B * L, w.wo, w.bo), weights)
}

/// Rotary position embeddings (Su et al. 2021, §3.4) in float64 on projection rows
/// `[B, T, H·D]`: the token at position p = start + t turns each pair (x_a, x_b) of the first
/// R coordinates of every head by the angle p·base^(−2i/R), i the pair's index; pairs are
/// (i, i + R/2) or, interleaved, (2i, 2i + 1).
func referenceRotate(_ x: inout [Double], rows B: Int, length T: Int, heads H: Int, width D: Int,
                     _ r: (dimensions: Int, base: Double, interleaved: Bool), start: Int) {
    let half = r.dimensions / 2
    for b in 0..<B {
        for t in 0..<T {
            let p = Double(start + t)
            for h in 0..<H {
                let head = ((b * T + t) * H + h) * D
                for i in 0..<half {
                    let angle = p / Foundation.pow(r.base, Double(2 * i) / Double(r.dimensions))
                    let (ia, ib) = r.interleaved ? (head + 2 * i, head + 2 * i + 1) : (head + i, head + i + half)
                    let (xa, xb) = (x[ia], x[ib])
                    x[ia] = xa * Foundation.cos(angle) - xb * Foundation.sin(angle)
                    x[ib] = xb * Foundation.cos(angle) + xa * Foundation.sin(angle)
                }
            }
        }
    }
}

/// A layer with weights on a grid (multiples of 1/64, |w| ≤ 1/2) and biases (multiples of
/// 1/16, |b| ≤ 2), so that projections of grid inputs are exact in float32 and the
/// comparison measures the attention and the output projection.
func gridLayer(modelDim E: Int, heads: Int, kvHeads: Int? = nil, keyDim: Int? = nil, valueDim: Int? = nil,
               valueHeadDim: Int? = nil, outputDim: Int? = nil, bias: Bool = true, rotary: RotaryEmbedding? = nil,
               seed: UInt64) throws -> MultiHeadAttention {
    let kv = kvHeads ?? heads
    let Dk = E / heads
    let Dv = valueHeadDim ?? Dk
    func linear(_ out: Int, _ input: Int, _ s: UInt64) throws -> Linear {
        try Linear(weight: gridTensor([out, input], seed: seed &+ s, magnitude: 0.25),
                   bias: bias ? gridTensor([out], seed: seed &+ s &+ 100) : nil)
    }
    return try MultiHeadAttention(
        heads: heads, kvHeads: kv,
        queryProjection: linear(E, E, 1),
        keyProjection: linear(kv * Dk, keyDim ?? E, 2),
        valueProjection: linear(kv * Dv, valueDim ?? E, 3),
        outputProjection: linear(outputDim ?? E, heads * Dv, 4),
        rotary: rotary)
}

/// The tolerance for a layer's float32 output against the float64 reference: float32
/// rounding of the attention output (relative ~1e-6 of |V|) is amplified by the output
/// projection's sum over Hq·Dv terms, so the bound scales with the size of those terms.
/// |got − want| ≤ 2e-5 · (1 + Σ_i |W_o[o, i]| · max|V|), taking the largest row sum.
func layerTolerance(_ layer: MultiHeadAttention, value: Tensor<Float>) -> Double {
    let wo = layer.outputProjection.weight
    let inputs = wo.shape[1]
    var rowSum = 0.0
    for o in 0..<wo.shape[0] {
        rowSum = max(rowSum, (0..<inputs).reduce(0.0) { $0 + Double(Swift.abs(wo.scalars[o * inputs + $1])) })
    }
    // max|V| after the value projection: bounded by Σ|W_v row|·max|value| + |b_v|.
    let wv = layer.valueProjection.weight
    let vIn = wv.shape[1]
    let maxValue = Double(value.scalars.map { Swift.abs($0) }.max() ?? 0)
    var vBound = 0.0
    for o in 0..<wv.shape[0] {
        let row = (0..<vIn).reduce(0.0) { $0 + Double(Swift.abs(wv.scalars[o * vIn + $1])) }
        vBound = max(vBound, row * maxValue + Double(Swift.abs(layer.valueProjection.bias?.scalars[o] ?? 0)))
    }
    return 2e-5 * (1 + rowSum * vBound)
}
