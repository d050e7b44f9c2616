@testable import AttentionKit
import Testing

/// Rotary position embeddings in the layer: the forward pass, decoding with the KV cache
/// (keys cached rotated, new tokens at positions P ..< P + n), attending to a cached memory,
/// all against the float64 reference, which rotates from the definition
/// (`referenceRotate`); and the errors.
@Suite("Rotary position embeddings")
struct RotaryEmbeddingTests {
    static let rotaries: [(name: String, rotary: RotaryEmbedding)] = [
        ("halves, full", try! RotaryEmbedding(dimensions: 8)),
        ("interleaved, full", try! RotaryEmbedding(dimensions: 8, base: 500_000, pairing: .interleaved)),
        ("halves, partial 4 of 8", try! RotaryEmbedding(dimensions: 4, base: 100)),
        ("interleaved, partial 2 of 8", try! RotaryEmbedding(dimensions: 2, pairing: .interleaved)),
    ]

    @Test("forward pass: self- and cross-attention, GQA, masks, weights", arguments: rotaries.indices)
    func forward(_ index: Int) throws {
        let (name, rotary) = Self.rotaries[index]
        let layer = try gridLayer(modelDim: 32, heads: 4, kvHeads: 2, rotary: rotary, seed: 600 + UInt64(index))   // Dk 8
        let x = gridTensor([2, 11, 32], seed: 610), memory = gridTensor([2, 17, 32], seed: 611)
        let tolerance = layerTolerance(layer, value: memory)
        for (what, key, mask) in [("self, causal", x, [MaskSpec.causal(.upperLeft)]), ("self", x, []),
                                  ("cross, key lengths", memory, [.keyLengths([17, 9])])] {
            let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: x, key: key, value: key, mask: mask)
            let plain = referenceMultiHeadAttention(ReferenceWeights(try gridLayer(modelDim: 32, heads: 4, kvHeads: 2,
                                                                                   seed: 600 + UInt64(index))),
                                                    query: x, key: key, value: key, mask: mask)
            let moved = zip(want.output, plain.output).map { Swift.abs($0 - $1) }.max()!
            #expect(moved > 100 * tolerance, "\(name), \(what): the rotation changes the reference's output (by \(moved))")
            let library = AttentionMask(mask.map(\.library))
            let (out, weights) = try layer.withWeights(query: x, key: key, value: key, mask: library)
            assertClose(out, want.output, shape: [2, 11, 32], absolute: tolerance, relative: 0, "\(name), \(what)")
            assertClose(weights, want.weights, shape: [2, 4, 11, key.shape[1]], absolute: 2e-6, relative: 0,
                        "\(name), \(what): weights")
            let alone = try layer(query: x, key: key, value: key, mask: library)
            assertClose(alone, want.output, shape: [2, 11, 32], absolute: tolerance, relative: 0, "\(name), \(what), no weights")
        }
        // Rank 2 is one sequence, positions from 0 as well.
        let one = slice(x, 0..<11)
        let single = try Tensor<Float>(shape: [11, 32], scalars: Array(one.scalars[0..<(11 * 32)]))
        let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: single, key: single, value: single)
        assertClose(try layer(query: single, key: single, value: single), want.output, shape: [11, 32],
                    absolute: layerTolerance(layer, value: single), relative: 0, "\(name), rank 2")
    }

    @Test("decoding: new tokens at positions P ..< P + n, keys cached rotated, rollback", arguments: rotaries.indices)
    func decoding(_ index: Int) throws {
        let (name, rotary) = Self.rotaries[index]
        // GQA with Dv ≠ Dk for half of the cases (cached keys are token-major rows of several
        // heads), MQA for the others.
        let layer = try gridLayer(modelDim: 32, heads: 4, kvHeads: index % 2 == 0 ? 2 : 1,
                                  valueHeadDim: index % 2 == 0 ? 6 : nil, rotary: rotary, seed: 620 + UInt64(index))
        let x = gridTensor([2, 23, 32], seed: 621)
        var cache = layer.makeCache(batch: 2)
        var outputs: [Tensor<Float>] = []
        var position = 0
        for n in [5, 1, 0, 3, 1, 1, 12] {
            outputs.append(try layer.decode(slice(x, position..<(position + n)), cache: &cache))
            position += n
        }
        let tolerance = layerTolerance(layer, value: x)
        let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: x, key: x, value: x, mask: [.causal(.upperLeft)])
        assertClose(joined(outputs), want.output, shape: [2, 23, 32], absolute: tolerance, relative: 0, "\(name): decoded")
        // Roll back 12 positions and decode other tokens: they take positions 11 ..< 15.
        try cache.removeLast(12)
        let y = gridTensor([2, 4, 32], seed: 622)
        let again = try layer.decode(y, cache: &cache)
        let sequence = joined([slice(x, 0..<11), y])
        // The reference's queries 11 ..< 15 over the 15 keys: the last rows of causal attention.
        let rows = referenceMultiHeadAttention(ReferenceWeights(layer), query: slice(sequence, 11..<15), key: sequence,
                                               value: sequence, mask: [.causal(.lowerRight)], queryStart: 11)
        assertClose(again, rows.output, shape: [2, 4, 32], absolute: tolerance, relative: 0, "\(name): after rollback")
        // Swap the batch entries and go on: each continues its own sequence at position 15.
        var swapped = try cache.selectingBatch([1, 0])
        let z = gridTensor([2, 3, 32], seed: 623)
        let onward = try layer.decode(z, cache: &swapped)
        let swappedSequence = joined([entries(sequence, [1, 0]), z])
        let last = referenceMultiHeadAttention(ReferenceWeights(layer), query: slice(swappedSequence, 15..<18),
                                               key: swappedSequence, value: swappedSequence, mask: [.causal(.lowerRight)],
                                               queryStart: 15)
        assertClose(onward, last.output, shape: [2, 3, 32], absolute: tolerance, relative: 0, "\(name): after selectingBatch")
    }

    @Test("attending to a cached memory equals the forward call (queries at 0 ..< n)", arguments: rotaries.indices)
    func attendToMemory(_ index: Int) throws {
        let (name, rotary) = Self.rotaries[index]
        let layer = try gridLayer(modelDim: 32, heads: 4, kvHeads: 2, rotary: rotary, seed: 630 + UInt64(index))
        let x = gridTensor([2, 3, 32], seed: 631), memory = gridTensor([2, 9, 32], seed: 632)
        let cache = try layer.makeCache(key: memory, value: memory)
        let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: x, key: memory, value: memory)
        assertClose(try layer.attend(x, to: cache), want.output, shape: [2, 3, 32],
                    absolute: layerTolerance(layer, value: memory), relative: 0, "\(name): attend")
        // A cache that decode filled holds the same rotated keys: attend still places its
        // queries at 0 ..< n, as the forward call does.
        var decoded = layer.makeCache(batch: 2)
        _ = try layer.decode(slice(memory, 0..<4), cache: &decoded)
        _ = try layer.decode(slice(memory, 4..<9), cache: &decoded)
        assertClose(try layer.attend(x, to: decoded), want.output, shape: [2, 3, 32],
                    absolute: layerTolerance(layer, value: memory), relative: 0, "\(name): attend to a decoded cache")
    }

    @Test("positions far along: decoding at P = 5000 against the reference")
    func farPositions() throws {
        let layer = try gridLayer(modelDim: 64, heads: 2, rotary: try RotaryEmbedding(dimensions: 32), seed: 640)
        let x = gridTensor([1, 5003, 64], seed: 641)
        var cache = layer.makeCache(batch: 1)
        _ = try layer.decode(slice(x, 0..<5000), cache: &cache)
        let last = try layer.decode(slice(x, 5000..<5003), cache: &cache)
        // The reference for the last three rows only: queries at 5000 ..< 5003 over keys 0 ..< 5003.
        let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: slice(x, 5000..<5003), key: x, value: x,
                                               mask: [.causal(.lowerRight)], queryStart: 5000)
        assertClose(last, want.output, shape: [1, 3, 64], absolute: layerTolerance(layer, value: x), relative: 0, "P = 5000")
    }

    @Test func errors() throws {
        for bad in [0, -2, 3, 1] {
            expectError(.rotaryEmbedding, mentions: ["even", "got \(bad)"]) { _ = try RotaryEmbedding(dimensions: bad) }
        }
        for bad in [0, -10, Double.nan, .infinity] {
            expectError(.rotaryEmbedding, mentions: ["base", "got \(bad)"]) { _ = try RotaryEmbedding(dimensions: 4, base: bad) }
        }
        let wide = try RotaryEmbedding(dimensions: 10)
        expectError(.rotaryEmbedding, mentions: ["10 dimensions", "Dk = 8"]) {
            _ = try MultiHeadAttention(modelDim: 32, heads: 4, rotary: wide)
        }
        expectError(.rotaryEmbedding, mentions: ["10 dimensions", "Dk = 8", "[32, 32]"]) { _ = try gridLayer(modelDim: 32, heads: 4, rotary: wide, seed: 1) }
        #expect(try MultiHeadAttention(modelDim: 32, heads: 4, rotary: try RotaryEmbedding(dimensions: 8)).rotary?.dimensions == 8)
    }
}
