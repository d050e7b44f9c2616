import Foundation

/// Rotary position embeddings (RoPE, Su et al. 2021), as Llama, Mistral, Qwen, GPT-NeoX and
/// GPT-J apply them: each query and key head vector is rotated, pair of coordinates by pair,
/// by angles proportional to its position, so that `q·k` depends on the two positions only
/// through their difference.
///
/// ```
/// R = dimensions (even, ≤ Dk),  θ_i = base^(−2i/R)  for i in 0 ..< R/2
/// for the token at position p, each pair (a, b) = (x[i], x[i + R/2])   (.halves)
///                                          or (x[2i], x[2i + 1])      (.interleaved)
/// becomes (a·cos(p·θ_i) − b·sin(p·θ_i),  b·cos(p·θ_i) + a·sin(p·θ_i));
/// coordinates from R on are left as they are (partial rotary, GPT-NeoX's rotary_pct).
/// ```
///
/// A ``MultiHeadAttention`` layer given one rotates its projected queries and keys (bias
/// included) before the scores, never the values. Positions count from 0 in each call,
/// except in ``MultiHeadAttention/decode(_:cache:mask:)``, where the new tokens sit at
/// positions `P ..< P + n` after the `P` cached ones, whose keys are cached rotated. The
/// angles are computed in float64 and rounded once to float32 (PyTorch forms them in float32,
/// which at position p is off by about p·2⁻²⁴ radians).
///
/// Hugging Face's Llama, Mistral, Qwen and GPT-NeoX pair the two halves of each head
/// (`rotate_half`): ``Pairing/halves``. GPT-J and Meta's original Llama checkpoints pair
/// neighbouring coordinates: ``Pairing/interleaved``. The frequencies are the plain
/// `base^(−2i/R)`: a model whose config has a `rope_scaling` entry (Llama 3.1's `llama3`,
/// linear, dynamic NTK, YaRN) scales them and is not computed by this type.
///
/// Queries take positions `0 ..< L` in a forward call and in
/// ``MultiHeadAttention/attend(_:to:mask:)``; queries that continue a cached sequence
/// (chunked prefill, scoring candidate tokens) go through
/// ``MultiHeadAttention/decode(_:cache:mask:)``, on a copy of the cache to leave it as it
/// was.
public struct RotaryEmbedding: Sendable, Equatable {
    /// Which coordinates of a head vector rotate together.
    public enum Pairing: String, Sendable, CaseIterable {
        /// `x[i]` with `x[i + R/2]`: Hugging Face's `rotate_half` (Llama, Mistral, Qwen, GPT-NeoX).
        case halves
        /// `x[2i]` with `x[2i + 1]`: GPT-J's `rotate_every_two` and Meta's original Llama code.
        case interleaved
    }

    /// R, the number of leading coordinates of each head that rotate: even, at least 2.
    public let dimensions: Int
    /// The base of the angle frequencies θ_i = base^(−2i/R) (10000 in most models; Llama 3
    /// uses 500000).
    public let base: Double
    /// Which coordinates rotate together.
    public let pairing: Pairing

    /// Creates rotary embeddings over the first `dimensions` coordinates of each head.
    ///
    /// - Parameters:
    ///   - dimensions: R: the head width Dk for full rotary embeddings, fewer for partial
    ///     ones (GPT-NeoX's `rotary_pct · Dk`); even and at least 2. A layer refuses an R
    ///     larger than its Dk.
    ///   - base: The frequency base (`rope_theta`), finite and greater than 0.
    ///   - pairing: ``Pairing/halves`` (Hugging Face) or ``Pairing/interleaved`` (GPT-J).
    /// - Throws: ``AttentionError`` with code `.rotaryEmbedding` when `dimensions` is not an
    ///   even number of at least 2 or `base` is not finite and positive.
    public init(dimensions: Int, base: Double = 10_000, pairing: Pairing = .halves) throws {
        guard dimensions >= 2, dimensions % 2 == 0 else {
            throw AttentionError(.rotaryEmbedding,
                "rotary dimensions must be an even number of at least 2 (coordinates rotate in pairs); got \(dimensions)")
        }
        guard base.isFinite, base > 0 else {
            throw AttentionError(.rotaryEmbedding, "the rotary base must be finite and greater than 0; got \(base)")
        }
        self.dimensions = dimensions
        self.base = base
        self.pairing = pairing
    }

    /// cos(p·θ_i) and sin(p·θ_i) for the positions `start ..< start + count`, `[count, R/2]`,
    /// in float64 rounded once to float32. Each block of 64 positions starts from `cos` and
    /// `sin` and steps on by the angle-addition formulas (4 multiplications instead of two
    /// calls), which drift by a few float64 ulps over the block: far below float32's rounding.
    func table(start: Int, count: Int, threads: Int) -> RotaryTable {
        let half = dimensions / 2
        var cosines = [Float](repeating: 0, count: count * half)
        var sines = [Float](repeating: 0, count: count * half)
        let frequencies = (0..<half).map { Foundation.pow(base, -Double(2 * $0) / Double(dimensions)) }
        let steps = frequencies.map { (Foundation.cos($0), Foundation.sin($0)) }
        let block = 64
        cosines.withUnsafeMutableBufferPointer { c in
            sines.withUnsafeMutableBufferPointer { s in
                guard let c = c.baseAddress, let s = s.baseAddress else { return }      // count 0
                let job = UncheckedSendable((c, s))
                parallelWork(threads: count * half < 65_536 ? 1 : threads, items: (count + block - 1) / block) { claim in
                    let (c, s) = job.value
                    while let item = claim() {
                        let first = item * block, last = min(count, first + block)
                        for i in 0..<half {
                            let angle = Double(start + first) * frequencies[i]
                            var (cp, sp) = (Foundation.cos(angle), Foundation.sin(angle))     // at position start + first
                            let (cd, sd) = steps[i]
                            for t in first..<last {
                                c[t * half + i] = Float(cp)
                                s[t * half + i] = Float(sp)
                                (cp, sp) = (cp * cd - sp * sd, sp * cd + cp * sd)           // one position on
                            }
                        }
                    }
                }
            }
        }
        return RotaryTable(cosines: cosines, sines: sines)
    }

    /// Rotates the head vectors of `x` in place: `T` positions, the first `T` of those `table`
    /// was made for, of `H` heads of width `D` (≥ ``dimensions``) for each of `B` batch
    /// entries, laid out head-major `[B, H, T, D]` or, with `tokenMajor`, as projection rows
    /// `[B, T, H, D]`.
    func rotate(_ x: UnsafeMutablePointer<Float>, batch B: Int, length T: Int, heads H: Int, width D: Int,
                tokenMajor: Bool, table: RotaryTable, threads: Int) {
        let half = dimensions / 2
        guard B > 0, T > 0, H > 0 else { return }
        let interleaved = pairing == .interleaved
        table.cosines.withUnsafeBufferPointer { c in
            table.sines.withUnsafeBufferPointer { s in
                let job = UncheckedSendable((x, nonNull(c.baseAddress), nonNull(s.baseAddress)))
                parallelWork(threads: B * H * T * D < 65_536 ? 1 : threads, items: B * H) { claim in
                    let (x, c, s) = job.value
                    while let item = claim() {
                        let b = item / H, h = item % H
                        for t in 0..<T {
                            let v = x + (tokenMajor ? ((b * T + t) * H + h) * D : (item * T + t) * D)   // x[b, h, t, :]
                            let (ct, st) = (c + t * half, s + t * half)
                            if interleaved {
                                for i in 0..<half {
                                    let (a, bb) = (v[2 * i], v[2 * i + 1])
                                    v[2 * i] = a * ct[i] - bb * st[i]
                                    v[2 * i + 1] = bb * ct[i] + a * st[i]
                                }
                            } else {
                                for i in 0..<half {
                                    let (a, bb) = (v[i], v[i + half])
                                    v[i] = a * ct[i] - bb * st[i]
                                    v[i + half] = bb * ct[i] + a * st[i]
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// cos(p·θ_i) and sin(p·θ_i) of a ``RotaryEmbedding`` for the positions
/// `start ..< start + count` given to ``RotaryEmbedding/table(start:count:threads:)``,
/// `[count, R/2]` each: made once per call and shared by the queries and keys at the same
/// positions.
struct RotaryTable {
    let cosines: [Float]
    let sines: [Float]
}
