import Foundation

/// SplitMix64 (Steele, Lea & Flood 2014): a 64-bit state, one add and a bijective mix per
/// output. Small, fast and good enough for benchmark inputs; fixed seeds make every run of
/// the bench multiply the same numbers.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform double in (0, 1]: never 0, so its logarithm is finite.
    mutating func nextOpenUnit() -> Double {
        (Double(next() >> 11) + 1) * 0x1p-53
    }

    /// `count` standard normal floats by the Box–Muller transform (two per pair of uniforms).
    mutating func normals(count: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            var i = 0
            while i < count {
                let radius = (-2 * Foundation.log(nextOpenUnit())).squareRoot()
                let angle = 2 * Double.pi * nextOpenUnit()
                buffer[i] = Float(radius * Foundation.cos(angle))
                if i + 1 < count { buffer[i + 1] = Float(radius * Foundation.sin(angle)) }
                i += 2
            }
            initialized = count
        }
    }
}
