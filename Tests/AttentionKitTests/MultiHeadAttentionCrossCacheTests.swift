@testable import AttentionKit
import Testing

/// Encoder-decoder attention over keys and values projected once
/// (`makeCache(key:value:)` + `attend(_:to:mask:)`) equals the layer's full call with the
/// same memory, checked against the float64 reference.
@Suite("Cross-attention cache")
struct MultiHeadAttentionCrossCacheTests {
    /// Decoder states attend, a few rows per step, to a memory with its own key and value
    /// widths and padding; MHA, GQA and MQA, batch 2.
    @Test(arguments: [(4, 4), (4, 2), (4, 1)])
    func stepsEqualFullCall(_ heads: (Int, Int)) throws {
        let layer = try gridLayer(modelDim: 16, heads: heads.0, kvHeads: heads.1, keyDim: 24, valueDim: 20, seed: 300)
        let x = gridTensor([2, 7, 16], seed: 301)                      // decoder states [B, L, E]
        let memoryKeys = gridTensor([2, 13, 24], seed: 302)            // [B, S, kdim]
        let memoryValues = gridTensor([2, 13, 20], seed: 303)          // [B, S, vdim]
        let cache = try layer.makeCache(key: memoryKeys, value: memoryValues)
        #expect(cache.count == 13 && cache.capacity == 13 && cache.batch == 2)
        let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: x, key: memoryKeys, value: memoryValues,
                                               mask: [.keyLengths([13, 9])])
        let tolerance = layerTolerance(layer, value: memoryValues)
        var position = 0
        for n in [1, 0, 3, 1, 2] {
            let y = try layer.attend(slice(x, position..<(position + n)), to: cache, mask: .keyLengths([13, 9]))
            #expect(y.shape == [2, n, 16])
            var rows: [Double] = []
            for b in 0..<2 { rows += want.output[((b * 7 + position) * 16)..<((b * 7 + position + n) * 16)] }
            assertClose(y, rows, shape: [2, n, 16], absolute: tolerance, relative: 0, "\(heads) rows \(position)..<\(position + n)")
            position += n
        }
        #expect(cache.count == 13, "attending appends nothing")
    }

    /// A self-attention cache grown by `decode` (storage longer than its count) is attended
    /// in place, its lower-right causal mask counted from the cached positions, not the
    /// storage; rank-2 tokens with a batch-1 cache.
    @Test func decodeGrownCache() throws {
        let layer = try gridLayer(modelDim: 24, heads: 6, kvHeads: 3, seed: 310)
        let sequence = gridTensor([1, 11, 24], seed: 311)
        var cache = layer.makeCache(batch: 1, capacity: 32)
        _ = try layer.decode(sequence, cache: &cache)
        #expect(cache.count == 11 && cache.capacity == 32)
        let queries = gridTensor([5, 24], seed: 312)                   // [n, E]
        let y = try layer.attend(queries, to: cache, mask: .causal(.lowerRight))
        let want = referenceMultiHeadAttention(ReferenceWeights(layer),
                                               query: try Tensor(shape: [1, 5, 24], scalars: queries.scalars),
                                               key: sequence, value: sequence, mask: [.causal(.lowerRight)])
        assertClose(y, want.output, shape: [5, 24], absolute: layerTolerance(layer, value: sequence), relative: 0, "decode-grown")
    }

    /// Empty memory gives the output projection's bias; an empty batch gives empty results.
    @Test func emptySizes() throws {
        let layer = try gridLayer(modelDim: 8, heads: 2, seed: 320)
        let none = try layer.makeCache(key: try Tensor(shape: [1, 0, 8]), value: try Tensor(shape: [1, 0, 8]))
        let y = try layer.attend(gridTensor([1, 3, 8], seed: 321), to: none)
        let bias = layer.outputProjection.bias!.scalars
        #expect(y.shape == [1, 3, 8] && y.scalars == bias + bias + bias)
        let noBatch = try layer.makeCache(key: try Tensor(shape: [0, 5, 8]), value: try Tensor(shape: [0, 5, 8]))
        #expect(noBatch.count == 5 && noBatch.batch == 0)
        #expect(try layer.attend(try Tensor(shape: [0, 2, 8]), to: noBatch).shape == [0, 2, 8])

        // An emptied cache that keeps its storage (count 0, capacity 16): masks over its zero
        // keys fit the scores [B, Hq, n, 0], and every row is the bias again.
        var emptied = layer.makeCache(batch: 2)
        _ = try layer.decode(gridTensor([2, 9, 8], seed: 322), cache: &emptied)
        emptied.removeAll()
        #expect(emptied.count == 0 && emptied.capacity > 0)
        for mask in [AttentionMask.boolean(try Tensor(shape: [2, 1, 1, 0], scalars: [])), .additive(try Tensor(shape: [3, 0])),
                     [.causal(.lowerRight), .keyLengths([0, 0])]] {
            let rows = try layer.attend(gridTensor([2, 3, 8], seed: 323), to: emptied, mask: mask)
            #expect(rows.shape == [2, 3, 8] && rows.scalars == Array([[Float]](repeating: bias, count: 6).joined()), "\(mask)")
        }
    }

    @Test func badInputThrows() throws {
        let layer = try gridLayer(modelDim: 8, heads: 2, keyDim: 6, seed: 330)
        let other = try gridLayer(modelDim: 8, heads: 2, keyDim: 6, seed: 331)
        let memory = gridTensor([2, 5, 6], seed: 333), values = gridTensor([2, 5, 8], seed: 332)
        expectError(.inputWidth, mentions: ["key [2, 5, 8]", "takes 6"]) { _ = try layer.makeCache(key: values, value: values) }
        expectError(.invalidRank, mentions: ["[5, 6]", "[2, 5, 8]"]) { _ = try layer.makeCache(key: gridTensor([5, 6], seed: 1), value: values) }
        expectError(.batchMismatch, mentions: ["key 2, value 3"]) { _ = try layer.makeCache(key: memory, value: gridTensor([3, 5, 8], seed: 2)) }
        expectError(.sequenceLengthMismatch, mentions: ["key length 5", "value length 4"]) {
            _ = try layer.makeCache(key: memory, value: gridTensor([2, 4, 8], seed: 3))
        }
        let cache = try layer.makeCache(key: memory, value: values)
        expectError(.cacheMismatch, mentions: ["another layer"]) { _ = try other.attend(gridTensor([2, 1, 8], seed: 4), to: cache) }
        expectError(.cacheMismatch, mentions: ["batch 2", "batch 1"]) { _ = try layer.attend(gridTensor([1, 1, 8], seed: 5), to: cache) }
        expectError(.inputWidth, mentions: ["[2, 1, 6]", "model width is 8"]) { _ = try layer.attend(gridTensor([2, 1, 6], seed: 6), to: cache) }
        expectError(.invalidRank, mentions: ["[8]"]) { _ = try layer.attend(gridTensor([8], seed: 7), to: cache) }
        expectError(.keyLengths, mentions: ["keyLengths"]) { _ = try layer.attend(gridTensor([2, 1, 8], seed: 8), to: cache, mask: .keyLengths([5])) }
    }
}
