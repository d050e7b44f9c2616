@testable import AttentionKit
import Foundation
import Testing

/// The softmax layer's polynomial `exp` against a float64 `exp`.
@Suite("Polynomial exp")
struct ExponentialTests {
    /// Relative error ≤ 1 ulp of 1 (1.2e-7) over the whole normal range, on a dense sweep of
    /// 2 million points (measured worst: 8.0e-8 at x = −81.44).
    @Test func accuracyOverTheNormalRange() {
        var worst = 0.0, worstX: Float = 0
        let lower: Float = -87.33, upper: Float = 88.72
        let steps = 2_000_000
        var x = SIMD8<Float>()
        for n in stride(from: 0, to: steps, by: 8) {
            for lane in 0..<8 { x[lane] = lower + (upper - lower) * Float(n + lane) / Float(steps) }
            let e = exponential(x)
            for lane in 0..<8 {
                let want = Foundation.exp(Double(x[lane]))
                let error = Swift.abs(Double(e[lane]) - want) / want
                if error > worst { worst = error; worstX = x[lane] }
            }
        }
        #expect(worst <= 1.2e-7, "worst relative error \(worst) at x = \(worstX)")
    }

    @Test func specialValues() {
        let x = SIMD8<Float>(0, -.infinity, .infinity, .nan, -100, 100, 1, -1)
        let e = exponential(x)
        #expect(e[0] == 1)
        #expect(e[1] == 0)
        #expect(e[2] == .infinity)
        #expect(e[3].isNaN)
        #expect(e[4] == 0)              // below the normal range: flushed to zero
        #expect(e[5] == .infinity)
        #expect(Swift.abs(Double(e[6]) - M_E) <= 3e-7 * M_E)
        #expect(Swift.abs(Double(e[7]) - 1 / M_E) <= 3e-7 / M_E)
        #expect(exponential(Float(-1)) == e[7], "scalar and vector forms agree")
    }
}
