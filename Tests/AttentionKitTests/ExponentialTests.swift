@testable import AttentionKit
import Foundation
import Testing

/// The softmax layer's polynomial `exp` against a float64 `exp`, on its domain x ≤ 0.
@Suite("Polynomial exp")
struct ExponentialTests {
    /// Relative error ≤ 1 ulp of 1 (1.2e-7) over [−87.33, 0], on a dense sweep of 2 million
    /// points (measured worst: 8.0e-8).
    @Test func accuracyOverTheSoftmaxDomain() {
        var worst = 0.0, worstX: Float = 0
        let lower: Float = -87.33
        let steps = 2_000_000
        var x = SIMD8<Float>()
        for n in stride(from: 0, to: steps, by: 8) {
            for lane in 0..<8 { x[lane] = lower * Float(n + lane) / Float(steps - 1) }
            let e = exponential(x)
            for lane in 0..<8 {
                let want = Foundation.exp(Double(x[lane]))
                let error = Swift.abs(Double(e[lane]) - want) / want
                if !(error <= worst) { worst = error; worstX = x[lane] }
            }
        }
        #expect(worst <= 1.2e-7, "worst relative error \(worst) at x = \(worstX)")
    }

    /// Small arguments near 0, where most softmax weights live, and exact integers.
    @Test func smallArguments() {
        for k in 0..<4096 {
            let x = -Float(k) / 1024
            let want = Foundation.exp(Double(x))
            let got = exponential(x)
            #expect(Swift.abs(Double(got) - want) <= 1.2e-7 * want, "exp(\(x)) = \(got), want \(want)")
        }
    }

    @Test func specialValues() {
        let x = SIMD8<Float>(0, -.infinity, .nan, -100, -87.4, -1, -.leastNonzeroMagnitude, -0.0)
        let e = exponential(x)
        #expect(e[0] == 1)
        #expect(e[1] == 0, "exp(−∞) must be exactly 0 so that masked keys get zero weight")
        #expect(e[2].isNaN)
        #expect(e[3] == 0, "below the normal range: flushed to zero")
        #expect(e[4] == 0)
        #expect(Swift.abs(Double(e[5]) - 1 / M_E) <= 1.2e-7 / M_E)
        #expect(e[6] == 1)
        #expect(e[7] == 1)
        #expect(exponential(Float(-1)) == e[5], "scalar and vector forms agree")
    }

    /// The tiled kernel's base-2 exponential: relative error ≤ 2.0e-7 (measured worst 1.9e-7)
    /// against a float64 `exp2` over [−126, 125] (its softmax arguments reach +8 under lazy
    /// rescaling, +64 in the tiled kernel's one-pass step and +125 in its fix-up factor), on a
    /// dense sweep and on every float in [−1, 1] at a stride; with and without the lower clamp
    /// (the unclamped form is only used above −126).
    @Test(arguments: [true, false]) func exponential2Accuracy(_ clamped: Bool) {
        var worst = 0.0, worstX: Float = 0
        func check(_ x: SIMD8<Float>) {
            let e = exponential2(x, clamped: clamped)
            for lane in 0..<8 {
                let want = Foundation.exp2(Double(x[lane]))
                let error = Swift.abs(Double(e[lane]) - want) / want
                if !(error <= worst) { worst = error; worstX = x[lane] }
            }
        }
        let steps = 2_000_000
        var x = SIMD8<Float>()
        for n in stride(from: 0, to: steps, by: 8) {
            for lane in 0..<8 { x[lane] = -126 + 251 * Float(n + lane) / Float(steps - 1) }
            check(x)
        }
        var bits = Float(-1).bitPattern
        var lane = 0
        while bits > 0 {                                // −1 ⋯ −0 by 97 ulps, then 0 ⋯ 1
            x[lane] = Float(bitPattern: bits); lane += 1
            if lane == 8 { check(x); lane = 0 }
            bits = bits &- 97
            if bits < 0x8000_0000 { break }
        }
        bits = 0
        while Float(bitPattern: bits) <= 1 {
            x[lane] = Float(bitPattern: bits); lane += 1
            if lane == 8 { check(x); lane = 0 }
            bits += 97
        }
        if lane > 0 {                                   // the last, partly filled vector
            for rest in lane..<8 { x[rest] = 1 }
            check(x)
        }
        #expect(worst <= 2.0e-7, "worst relative error \(worst) at x = \(worstX), clamped: \(clamped)")
    }

    @Test func exponential2SpecialValues() {
        let x = SIMD8<Float>(0, -.infinity, .nan, -126.6, -127, 8, -1, 125)
        let e = exponential2(x)
        #expect(e[0] == 1)
        #expect(e[1] == 0, "2^−∞ must be exactly 0 so that masked keys get zero weight")
        #expect(e[2].isNaN)
        #expect(e[3] == 0, "below 2^−126.5: exactly 0")
        #expect(e[4] == 0)
        #expect(e[5] == 256, "integers are exact: 2^8")
        #expect(e[6] == 0.5)
        #expect(e[7] == 0x1p125)
        #expect(exponential2(Float(-1)) == e[6], "scalar and vector forms agree")
        let subnormal = exponential2(Float(-126.25))
        #expect(subnormal > 0 && subnormal < .leastNormalMagnitude, "2^−126.25 is subnormal, not flushed")
        // Without the clamp: the same values where x ≥ −126, and NaN still NaN.
        let unclamped = exponential2(SIMD8<Float>(0, -126, .nan, -125.5, 64, 8, -1, -0.5), clamped: false)
        let clampedToo = exponential2(SIMD8<Float>(0, -126, .nan, -125.5, 64, 8, -1, -0.5))
        #expect(unclamped[2].isNaN && clampedToo[2].isNaN, "NaN stays NaN without the clamp")
        for lane in [0, 1, 3, 4, 5, 6, 7] {
            #expect(unclamped[lane] == clampedToo[lane], "lane \(lane): \(unclamped[lane]) vs \(clampedToo[lane])")
        }
        #expect(unclamped[1] == 0x1p-126)
    }
}

