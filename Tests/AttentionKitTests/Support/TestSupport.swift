@testable import AttentionKit
import Testing

/// SplitMix64: a small, fixed-seed generator so every test sees the same inputs.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    /// The library's SplitMix64 step (`Dropout`'s hash) applied to a counter: the same
    /// sequence as the textbook generator.
    mutating func next() -> UInt64 {
        defer { state &+= 0x9E37_79B9_7F4A_7C15 }
        return splitMix64(state)
    }
}

/// Random values on the grid k/16, |k| ≤ 32, times `magnitude`. Products of two grid values
/// and their sums are exact in float32, so the float32 kernels and the float64 reference
/// see the same scores up to the final scaling: differences measure the kernels, not
/// input rounding.
func gridTensor(_ shape: [Int], seed: UInt64, magnitude: Float = 1) -> Tensor<Float> {
    var rng = SplitMix64(seed: seed)
    let count = shape.reduce(1, *)
    let scalars = (0..<count).map { _ in Float(Int.random(in: -32...32, using: &rng)) / 16 * magnitude }
    return try! Tensor(shape: shape, scalars: scalars)
}

/// Random normal values (Box–Muller), for tests that want inputs off any grid.
func normalTensor(_ shape: [Int], seed: UInt64) -> Tensor<Float> {
    var rng = SplitMix64(seed: seed)
    let count = shape.reduce(1, *)
    let scalars = (0..<count).map { _ -> Float in
        let u = Double.random(in: Double.ulpOfOne..<1, using: &rng)
        let w = Double.random(in: 0..<1, using: &rng)
        return Float((-2 * Foundation.log(u)).squareRoot() * Foundation.cos(2 * .pi * w))
    }
    return try! Tensor(shape: shape, scalars: scalars)
}

func randomBools(_ shape: [Int], seed: UInt64, probabilityTrue: Double = 0.7) -> [Bool] {
    var rng = SplitMix64(seed: seed)
    return (0..<shape.reduce(1, *)).map { _ in Double.random(in: 0..<1, using: &rng) < probabilityTrue }
}

/// Asserts |got − want| ≤ absolute + relative·|want| elementwise, reporting the worst
/// element (by how far it exceeds its bound) with its index and values. NaN never passes.
func assertClose(
    _ got: Tensor<Float>, _ want: [Double], shape: [Int],
    absolute: Double, relative: Double = 2e-5,
    _ what: String, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(got.shape == shape, "\(what): shape \(got.shape), want \(shape)", sourceLocation: sourceLocation)
    guard got.shape == shape, got.count == want.count else { return }
    var worst = -1
    var worstExcess = 0.0
    var failures = 0
    for (n, (g, w)) in zip(got.scalars, want).enumerated() {
        let bound = absolute + relative * Swift.abs(w)
        let error = Swift.abs(Double(g) - w)
        if !(error <= bound) {
            failures += 1
            let excess = error.isNaN ? .infinity : error / bound
            if worst < 0 || excess > worstExcess { worst = n; worstExcess = excess }
        }
    }
    if worst >= 0 {
        Issue.record("""
            \(what): \(failures) of \(want.count) elements out of tolerance \
            (|got − want| ≤ \(absolute) + \(relative)·|want|); worst at \(flatToIndex(worst, shape)): \
            got \(got.scalars[worst]), want \(want[worst]), error \(Swift.abs(Double(got.scalars[worst]) - want[worst]))
            """, sourceLocation: sourceLocation)
    }
}

/// The issue's tolerance for float32 outputs against float64:
/// |got − want| ≤ 2e-5·max(1, max|V|) + 2e-5·|want|.
func outputTolerance(_ value: Tensor<Float>) -> Double {
    2e-5 * max(1, Double(value.scalars.map { Swift.abs($0) }.max() ?? 0))
}

/// Expects `body` to throw an AttentionError with `code` whose message contains every
/// string in `mentions`.
func expectError(_ code: AttentionError.Code, mentions: [String],
                 sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected \(code), nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as AttentionError {
        #expect(error.code == code, "got \(error.code): \(error.message)", sourceLocation: sourceLocation)
        for text in mentions {
            #expect(error.message.contains(text), "'\(error.message)' should mention \(text)",
                    sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("expected AttentionError, got \(error)", sourceLocation: sourceLocation)
    }
}

/// The kernels every semantic test runs.
let allKernels: [AttentionKernel] = AttentionKernel.allCases

import Foundation

/// Positions `range` of a sequence tensor `[B, T, E]`, as `[B, range.count, E]` (the
/// decoding and cross-attention tests feed a sequence to a cache piece by piece).
func slice(_ x: Tensor<Float>, _ range: Range<Int>) -> Tensor<Float> {
    let (B, T, E) = (x.shape[0], x.shape[1], x.shape[2])
    var scalars: [Float] = []
    for b in 0..<B { scalars += x.scalars[((b * T + range.lowerBound) * E)..<((b * T + range.upperBound) * E)] }
    return try! Tensor(shape: [B, range.count, E], scalars: scalars)
}

/// Sequence tensors `[B, T_i, E]` joined along the sequence: `[B, Σ T_i, E]` (what decoding
/// piece by piece returns, put back together).
func joined(_ parts: [Tensor<Float>]) -> Tensor<Float> {
    let (B, E) = (parts[0].shape[0], parts[0].shape[2])
    let total = parts.map { $0.shape[1] }.reduce(0, +)
    var scalars: [Float] = []
    for b in 0..<B {
        for p in parts { let n = p.shape[1]; scalars += p.scalars[(b * n * E)..<((b + 1) * n * E)] }
    }
    return try! Tensor(shape: [B, total, E], scalars: scalars)
}

/// Batch entries `indices` of a sequence tensor `[B, T, E]`, in that order (entries may
/// repeat): `[indices.count, T, E]`.
func entries(_ x: Tensor<Float>, _ indices: [Int]) -> Tensor<Float> {
    let (T, E) = (x.shape[1], x.shape[2])
    let scalars = indices.flatMap { b in x.scalars[(b * T * E)..<((b + 1) * T * E)] }
    return try! Tensor(shape: [indices.count, T, E], scalars: scalars)
}
