import AttentionKit
import Testing

/// A randomly drawn attention problem and the thread count to run it with.
struct RandomCase: CustomTestStringConvertible, Sendable {
    var problem: AttentionCase
    var threads: Int
    var testDescription: String { "\(problem.name), \(threads) thread\(threads == 1 ? "" : "s")" }
}

/// Problems drawn from a fixed seed, combining what the hand-written cases take one or two at
/// a time: rank, grouped heads, lengths around the tiled kernel's tiles (256 query rows, 512
/// keys), every mask kind with random broadcast shapes, scales, and queries, keys and values
/// off any grid. Sizes are kept to about two million multiply-adds per problem so that the float64
/// reference stays quick in a debug build.
enum RandomCases {
    static let all: [RandomCase] = {
        var rng = SplitMix64(seed: 2026_11_26)
        func pick<T>(_ values: [T]) -> T { values.randomElement(using: &rng)! }
        func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }
        var cases: [RandomCase] = []
        for n in 0..<48 {
            let rank = pick([2, 3, 4, 4, 4])
            let Dk = pick([1, 3, 8, 16, 33, 64])
            let Dv = chance(0.7) ? Dk : pick([1, 5, 24])
            let S = chance(0.2) ? pick([511, 512, 513, 1025]) : pick([1, 2, 7, 16, 31, 32, 33, 63, 64, 65, 100])
            let L = S > 200 ? pick([1, 2, 3, 9]) : pick([1, 2, 3, 7, 17, 32, 33, 64, 65])
            var B = rank >= 3 ? pick([1, 2, 3]) : 1
            let Hkv = rank == 4 ? pick([1, 1, 2, 3]) : 1
            var Hq = rank == 4 ? Hkv * pick([1, 1, 2, 4]) : 1
            while B * Hq * L * S * (Dk + Dv) > 2_000_000 && (B > 1 || Hq > Hkv) {
                if B > 1 { B -= 1 } else { Hq -= Hkv }
            }
            func shape(_ heads: Int, _ length: Int, _ width: Int) -> [Int] {
                rank == 4 ? [B, heads, length, width] : rank == 3 ? [B, length, width] : [length, width]
            }
            let scores = rank == 4 ? [B, Hq, L, S] : rank == 3 ? [B, L, S] : [L, S]
            // A broadcast shape: a suffix of the score shape with some dimensions set to 1.
            func broadcastShape() -> [Int] {
                Array(scores.suffix(Int.random(in: 1...rank, using: &rng))).map { chance(0.4) ? 1 : $0 }
            }
            var mask: [MaskSpec] = []
            if chance(0.35) { mask.append(.causal(pick([.upperLeft, .lowerRight]))) }
            if rank >= 3 && chance(0.3) {
                mask.append(.keyLengths((0..<B).map { _ in chance(0.2) ? pick([0, S]) : Int.random(in: 0...S, using: &rng) }))
            }
            if chance(0.35) {
                let s = broadcastShape()
                mask.append(.boolean(shape: s, data: randomBools(s, seed: rng.next(), probabilityTrue: 0.8)))
            }
            if chance(0.35) {
                mask.append(Cases.bias(broadcastShape(), seed: rng.next(), withInfinity: chance(0.3)))
            }
            let scale: Float? = chance(0.7) ? nil : pick([0, -0.3, 0.02, 1.5])
            let name = "#\(n): \(shape(Hq, L, Dk)) · \(shape(Hkv, S, Dk)) → Dv \(Dv), "
                + "mask \(mask), scale \(scale.map { "\($0)" } ?? "default")"
            let problem = Cases.c(name, shape(Hq, L, Dk), shape(Hkv, S, Dk), shape(Hkv, S, Dv),
                                  mask: mask, scale: scale, normal: true, seed: rng.next())
            cases.append(RandomCase(problem: problem, threads: pick([1, 2])))
        }
        return cases
    }()
}

@Suite("Random combinations against the float64 reference")
struct RandomCombinationTests {
    /// Every kernel, with and without the weights, within the issue's tolerance of the
    /// float64 reference; weight rows sum to 1 or are zero.
    @Test(arguments: RandomCases.all)
    func randomProblem(_ c: RandomCase) throws {
        try AttentionThreads.withCount(c.threads) { try checkAgainstReference(c.problem) }
    }

    /// The draw covers what it is meant to: every rank, grouped heads, lengths past a key
    /// tile, every mask kind and non-default scales.
    @Test func drawCoversEveryFeature() {
        let problems = RandomCases.all.map(\.problem)
        #expect(Set(problems.map(\.query.count)) == [2, 3, 4])
        #expect(problems.contains { $0.query.count == 4 && $0.query[1] > $0.key[1] })
        #expect(problems.contains { $0.key[$0.key.count - 2] > 512 })
        // Each part's kind: its description up to the shape or lengths ("boolean[2, 1, 9]" → "boolean").
        let kinds = Set(problems.flatMap { $0.mask.map { String($0.description.prefix { $0 != "[" }) } })
        #expect(kinds == ["causal(upperLeft)", "causal(lowerRight)", "keyLengths", "boolean", "additive"])
        #expect(problems.contains { $0.mask.count >= 3 })
        #expect(problems.contains { $0.scale != nil })
        #expect(Set(RandomCases.all.map(\.threads)) == [1, 2])
    }
}
