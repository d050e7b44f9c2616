// The examples of the DocC guide (Sources/AttentionKit/AttentionKit.docc/UnderstandingAttention.md),
// run as tests. Each example is the guide's code, checks what the guide says about its result,
// and compares its heatmap with the image committed under the catalog's Resources: the cells
// must carry the same weights (within 1e-5; the committed files were made on this project's
// machine and BLAS may round differently elsewhere).
//
// To remake the images after changing an example:
//
//     ATTENTIONKIT_WRITE_GUIDE_IMAGES=1 swift test --filter HeatmapGuideTests

import AttentionKit
import Foundation
import Testing

/// A fixed pseudo-random vector for each id (entries of mean 0 and variance 1).
func vector(_ id: Int, dim: Int) -> [Float] {
    (0..<dim).map { d in
        let s = sin(Double(id * 131 + d * 17 + 1)) * 43758.5453
        return Float(3.0.squareRoot() * (2 * (s - s.rounded(.down)) - 1))
    }
}

/// Splits `x` of shape [L, H·D] into heads, [1, H, L, D], as multi-head attention does.
func splitHeads(_ x: [Float], length: Int, heads: Int, dim: Int) throws -> Tensor<Float> {
    var out: [Float] = []
    for h in 0..<heads {
        for i in 0..<length { out += x[(i * heads + h) * dim..<(i * heads + h + 1) * dim] }
    }
    return try Tensor(shape: [1, heads, length, dim], scalars: out)
}

/// The directory of the guide's images.
private let guideResources = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Sources/AttentionKit/AttentionKit.docc/Resources")

/// Writes the heatmap when regenerating; otherwise checks it against the committed image.
private func checkGuideImage(_ name: String, _ heatmap: AttentionHeatmap,
                             sourceLocation: SourceLocation = #_sourceLocation) throws {
    let url = guideResources.appendingPathComponent(name)
    if ProcessInfo.processInfo.environment["ATTENTIONKIT_WRITE_GUIDE_IMAGES"] != nil {
        try heatmap.write(to: url)
        return
    }
    let committed = try parseSVG(Data(contentsOf: url))
    let fresh = try parseSVG(Data(heatmap.svg().utf8))
    #expect(committed.cells.count == fresh.cells.count, "\(name): cell count", sourceLocation: sourceLocation)
    for (a, b) in zip(committed.cells, fresh.cells) {
        guard a.query == b.query, a.key == b.key, abs(a.weight - b.weight) <= 1e-5 else {
            Issue.record("\(name): committed cell \(a) differs from the example's \(b)", sourceLocation: sourceLocation)
            return
        }
    }
}

@Suite("Guide examples")
struct HeatmapGuideTests {
    @Test("self-attention: q = k = v, repeated words attend to each other")
    func selfAttention() throws {
        let tokens = ["the", "cat", "sat", "on", "the", "mat", "by", "the", "door"]
        let vocabulary = Array(Set(tokens)).sorted()
        let x = tokens.flatMap { vector(vocabulary.firstIndex(of: $0)!, dim: 16) }
        let q = try Tensor<Float>(shape: [tokens.count, 16], scalars: x)        // [L, D]
        let (output, weights) = try scaledDotProductAttentionWithWeights(query: q, key: q, value: q)
        let heatmap = try AttentionHeatmap(weights: weights, title: "Self-attention, q = k = v",
                                           queryLabels: tokens, keyLabels: tokens)
        try checkGuideImage("self-attention.svg", heatmap)
        #expect(output.shape == [9, 16])

        // Each "the" puts most of its weight on the three "the"s.
        let S = tokens.count
        for i in [0, 4, 7] {
            let onThe = [0, 4, 7].map { weights.scalars[i * S + $0] }.reduce(0, +)
            #expect(onThe > 0.5, "row \(i): \(onThe)")
        }
    }

    @Test("scaling by 1/√d_k keeps the softmax soft")
    func scaling() throws {
        let (L, D) = (10, 64)
        let q = try Tensor<Float>(shape: [L, D], scalars: (0..<L).flatMap { vector($0, dim: D) })
        let k = try Tensor<Float>(shape: [L, D], scalars: (0..<L).flatMap { vector(100 + $0, dim: D) })
        let (_, scaled) = try scaledDotProductAttentionWithWeights(query: q, key: k, value: k)   // scale 1/√64
        let (_, unscaled) = try scaledDotProductAttentionWithWeights(query: q, key: k, value: k, scale: 1)
        let both = try Tensor<Float>(shape: [1, 2, L, L], scalars: scaled.scalars + unscaled.scalars)
        let heatmap = try AttentionHeatmap(weights: both, title: "The same scores, scaled and unscaled",
                                           headLabels: ["scale 1/√64 = 0.125", "scale 1"])
        try checkGuideImage("scaling.svg", heatmap)

        // Unscaled rows are much closer to one-hot: their largest weight is larger.
        let peak = { (w: Tensor<Float>) in (0..<L).map { i in w.scalars[i * L..<(i + 1) * L].max()! }.reduce(0, +) / Float(L) }
        #expect(peak(unscaled) > 0.75 && peak(scaled) < 0.6, "mean row peaks \(peak(unscaled)), \(peak(scaled))")
    }

    @Test("causal mask: query i sees keys j ≤ i")
    func causal() throws {
        let L = 10
        let x = try Tensor<Float>(shape: [L, 16], scalars: (0..<L).flatMap { vector($0, dim: 16) })
        let (_, weights) = try scaledDotProductAttentionWithWeights(query: x, key: x, value: x,
                                                                    mask: .causal(.upperLeft))
        let heatmap = try AttentionHeatmap(weights: weights, title: "Causal self-attention")
        try checkGuideImage("causal.svg", heatmap)
        for i in 0..<L {
            for j in 0..<L where j > i { #expect(weights.scalars[i * L + j] == 0) }
        }
        #expect(weights.scalars[0] == 1)
    }

    @Test("padding: key lengths exclude the padded keys of each batch entry")
    func padding() throws {
        let (B, L, D) = (2, 10, 16)
        let x = try Tensor<Float>(shape: [B, L, D], scalars: (0..<B * L).flatMap { vector($0, dim: D) })
        let (_, weights) = try scaledDotProductAttentionWithWeights(query: x, key: x, value: x,
                                                                    mask: .keyLengths([10, 6]))
        let heatmap = try AttentionHeatmap(weights: weights, batch: 1,
                                           title: "Padding: batch entry 1 has 6 real keys of 10")
        try checkGuideImage("padding.svg", heatmap)
        for i in 0..<L {
            for j in 6..<L { #expect(weights.scalars[(L + i) * L + j] == 0) }
        }
    }

    @Test("an additive ALiBi bias on a long causal sequence, downsampled for display")
    func alibi() throws {
        let (L, D) = (192, 32)
        let x = try Tensor<Float>(shape: [L, D], scalars: (0..<L).flatMap { vector($0, dim: D) })
        let slope: Float = 0.05
        let bias = try Tensor<Float>(shape: [L, L], scalars: (0..<L * L).map { n in
            -slope * Float(abs(n / L - n % L))                       // −slope · |i − j|
        })
        let (_, weights) = try scaledDotProductAttentionWithWeights(
            query: x, key: x, value: x, mask: [.causal(.upperLeft), .additive(bias)])
        let heatmap = try AttentionHeatmap(weights: weights, title: "Causal attention with an ALiBi bias (slope 0.05)",
                                           maximumCells: 48)
        try checkGuideImage("alibi.svg", heatmap)
        #expect(heatmap.cellCounts == (48, 48))
    }

    @Test("dropout zeroes weights and scales the survivors by 1/(1 − p)")
    func dropout() throws {
        let (L, D) = (10, 16)
        let q = try Tensor<Float>(shape: [L, D], scalars: (0..<L).flatMap { vector($0, dim: D) })
        let k = try Tensor<Float>(shape: [L, D], scalars: (0..<L).flatMap { vector(100 + $0, dim: D) })
        let (_, plain) = try scaledDotProductAttentionWithWeights(query: q, key: k, value: k)
        let (_, dropped) = try scaledDotProductAttentionWithWeights(
            query: q, key: k, value: k, dropout: Dropout(probability: 0.3, seed: 7))
        let both = try Tensor<Float>(shape: [1, 2, L, L], scalars: plain.scalars + dropped.scalars)
        let heatmap = try AttentionHeatmap(weights: both, title: "Dropout on the weights",
                                           headLabels: ["no dropout", "dropout p = 0.3, seed 7"])
        try checkGuideImage("dropout.svg", heatmap)
        var zeros = 0
        for (p, d) in zip(plain.scalars, dropped.scalars) {
            if d == 0 { zeros += 1 } else { #expect(abs(d - p / 0.7) <= 1e-6 * max(1, d)) }
        }
        #expect(zeros > 15 && zeros < 45, "\(zeros) of 100 dropped")
    }

    @Test("multi-head self-attention: four heads look at different features")
    func encoderHeads() throws {
        let (L, H, D) = (8, 4, 8)
        let x = (0..<L).flatMap { vector($0, dim: H * D) }               // [L, H·D]
        let q = try splitHeads(x, length: L, heads: H, dim: D)           // [1, H, L, D]
        let (_, encoder) = try scaledDotProductAttentionWithWeights(query: q, key: q, value: q)
        let (_, decoder) = try scaledDotProductAttentionWithWeights(query: q, key: q, value: q,
                                                                    mask: .causal(.upperLeft))
        let encoderMap = try AttentionHeatmap(weights: encoder, title: "Encoder self-attention, 4 heads")
        let decoderMap = try AttentionHeatmap(weights: decoder, title: "Decoder (masked) self-attention, 4 heads")
        try checkGuideImage("encoder-heads.svg", encoderMap)
        try checkGuideImage("decoder-heads.svg", decoderMap)
        // The heads differ: each sees its own slice of the features.
        let perHead = L * L
        #expect(encoder.scalars[0..<perHead] != encoder.scalars[perHead..<2 * perHead])
        #expect(decoder.scalars[1] == 0)
    }

    @Test("cross-attention: target queries find the source keys they translate")
    func crossAttention() throws {
        // Word ids shared by the two languages stand in for what training would learn.
        let source = ["ich", "habe", "das", "Buch", "gestern", "gelesen", "."]
        let sourceIds = [1, 2, 3, 4, 5, 6, 7]
        let target = ["I", "read", "the", "book", "yesterday", "."]
        let targetIds = [1, 6, 3, 4, 5, 7]
        let D = 32
        let q = try Tensor<Float>(shape: [target.count, D], scalars: targetIds.flatMap { vector($0, dim: D) })
        let kv = try Tensor<Float>(shape: [source.count, D], scalars: sourceIds.flatMap { vector($0, dim: D) })
        let (_, weights) = try scaledDotProductAttentionWithWeights(query: q, key: kv, value: kv)   // L = 6, S = 7
        let heatmap = try AttentionHeatmap(weights: weights, title: "Encoder-decoder (cross) attention",
                                           queryLabels: target, keyLabels: source)
        try checkGuideImage("cross-attention.svg", heatmap)
        #expect(weights.shape == [6, 7])
        for (i, id) in targetIds.enumerated() {
            let row = Array(weights.scalars[i * 7..<(i + 1) * 7])
            #expect(row.firstIndex(of: row.max()!) == sourceIds.firstIndex(of: id), "\(target[i])")
        }
    }

    @Test("grouped-query attention: eight query heads share two key/value heads")
    func groupedQuery() throws {
        let (Hq, Hkv, L, D) = (8, 2, 8, 16)
        var qs: [Float] = []
        for h in 0..<Hq {
            for i in 0..<L { qs += vector(1000 + h * L + i, dim: D).enumerated().map { $0 == 0 ? 3 : $1 } }
        }
        var ks: [Float] = []
        for g in 0..<Hkv {
            for j in 0..<L {
                let marked = g == 0 ? 0 : L - 1                // the key each K/V head makes stand out
                ks += vector(2000 + g * L + j, dim: D).enumerated().map { $0 == 0 ? (j == marked ? 4 : 0) : $1 }
            }
        }
        let q = try Tensor<Float>(shape: [1, Hq, L, D], scalars: qs)
        let k = try Tensor<Float>(shape: [1, Hkv, L, D], scalars: ks)
        let (_, weights) = try scaledDotProductAttentionWithWeights(query: q, key: k, value: k)
        let labels = (0..<Hq).map { "head \($0) · kv \($0 / (Hq / Hkv))" }
        let heatmap = try AttentionHeatmap(weights: weights, title: "Grouped-query attention: 8 query heads, 2 K/V heads",
                                           headLabels: labels)
        try checkGuideImage("grouped-query.svg", heatmap)
        // Heads 0-3 favour key 0, heads 4-7 key 7: what a K/V head offers, its whole group sees.
        for h in 0..<Hq {
            let column = h < 4 ? 0 : L - 1
            let mean = (0..<L).map { weights.scalars[(h * L + $0) * L + column] }.reduce(0, +) / Float(L)
            #expect(mean > 0.3, "head \(h): mean weight \(mean) on key \(column)")
        }
    }

    @Test("KV cache: new queries with causal lower-right match the full causal computation")
    func kvCache() throws {
        let (S, L, D) = (10, 3, 16)
        let x = try Tensor<Float>(shape: [S, D], scalars: (0..<S).flatMap { vector($0, dim: D) })
        // Decoding with a cache: the last L positions query all S cached keys and values.
        let newQueries = try Tensor<Float>(shape: [L, D], scalars: Array(x.scalars[((S - L) * D)...]))
        let (_, cached) = try scaledDotProductAttentionWithWeights(query: newQueries, key: x, value: x,
                                                                   mask: .causal(.lowerRight))
        let (_, wrong) = try scaledDotProductAttentionWithWeights(query: newQueries, key: x, value: x,
                                                                  mask: .causal(.upperLeft))
        let (_, full) = try scaledDotProductAttentionWithWeights(query: x, key: x, value: x, mask: .causal(.upperLeft))
        let both = try Tensor<Float>(shape: [1, 2, L, S], scalars: cached.scalars + wrong.scalars)
        let heatmap = try AttentionHeatmap(weights: both, title: "Three new queries against a cache of 10 keys",
                                           headLabels: ["causal(.lowerRight): right", "causal(.upperLeft): wrong here"])
        try checkGuideImage("kv-cache.svg", heatmap)
        // The cached rows are the last L rows of full causal attention.
        for (a, b) in zip(cached.scalars, full.scalars[((S - L) * S)...]) { #expect(abs(a - b) <= 1e-6) }
    }

    @Test("every line of the guide's code is code run here")
    func guideCodeIsTested() throws {
        let guide = try String(contentsOf: guideResources.deletingLastPathComponent()
            .appendingPathComponent("UnderstandingAttention.md"), encoding: .utf8)
        let tested = Set(try String(contentsOf: URL(fileURLWithPath: #filePath), encoding: .utf8)
            .split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) })
        var blocks = 0
        for block in guide.components(separatedBy: "```swift\n").dropFirst() {
            blocks += 1
            let code = block.components(separatedBy: "```").first!
            for line in code.split(separator: "\n") {
                let text = line.trimmingCharacters(in: .whitespaces)
                // The guide writes its pictures to files; the tests compare them instead.
                if text.isEmpty || text.hasPrefix("try heatmap.write(to:") { continue }
                #expect(tested.contains(text), "guide line not in the tested examples: \(text)")
            }
        }
        #expect(blocks == 11, "\(blocks) Swift blocks in the guide")
    }
}
