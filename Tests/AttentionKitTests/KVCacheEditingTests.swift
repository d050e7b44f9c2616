@testable import AttentionKit
import Testing

/// Rolling a KV cache back (`removeLast`) and selecting or reordering its batch entries
/// (`selectingBatch`): decoding afterwards equals full causal self-attention over the
/// sequences the edited cache stands for, against the float64 reference.
@Suite("KV cache editing")
struct KVCacheEditingTests {
    /// Checks `decoded` `[B, T, E_out]` against causal self-attention over `x` `[B, T, E]`.
    func checkCausal(_ layer: MultiHeadAttention, _ x: Tensor<Float>, decoded: Tensor<Float>, _ what: String,
                     sourceLocation: SourceLocation = #_sourceLocation) {
        let (B, T) = (x.shape[0], x.shape[1])
        let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: x, key: x, value: x, mask: [.causal(.upperLeft)])
        assertClose(decoded, want.output, shape: [B, T, layer.outputDim], absolute: layerTolerance(layer, value: x),
                    relative: 0, what, sourceLocation: sourceLocation)
    }

    @Test("removeLast rolls back: decoding other tokens after it equals causal attention over the shorter prefix")
    func rollback() throws {
        let layer = try gridLayer(modelDim: 32, heads: 8, kvHeads: 2, seed: 500)
        let x = gridTensor([2, 12, 32], seed: 501)                     // prompt 7 + 5 draft tokens
        let y = gridTensor([2, 6, 32], seed: 502)                      // what follows the prompt instead
        var cache = layer.makeCache(batch: 2)
        let prompt = try layer.decode(slice(x, 0..<7), cache: &cache)
        _ = try layer.decode(slice(x, 7..<12), cache: &cache)
        let (capacity, reallocations) = (cache.capacity, cache.reallocations)
        try cache.removeLast(5)
        #expect(cache.count == 7 && cache.capacity == capacity)
        let first = try layer.decode(slice(y, 0..<2), cache: &cache)
        let rest = try layer.decode(slice(y, 2..<6), cache: &cache)
        #expect(cache.count == 13 && cache.reallocations == reallocations)    // 13 fit the storage kept
        checkCausal(layer, joined([slice(x, 0..<7), y]), decoded: joined([prompt, first, rest]), "prompt then y after rollback")
        // Removing nothing, and everything.
        try cache.removeLast(0)
        #expect(cache.count == 13)
        try cache.removeLast(13)
        #expect(cache.count == 0)
        let again = try layer.decode(y, cache: &cache)
        checkCausal(layer, y, decoded: again, "y alone after removing everything")
    }

    @Test("selectingBatch reorders, repeats and drops entries: each new entry continues its source sequence")
    func selectAndContinue() throws {
        let layer = try gridLayer(modelDim: 24, heads: 6, kvHeads: 3, seed: 510)
        let x = gridTensor([3, 9, 24], seed: 511)
        var cache = layer.makeCache(batch: 3)
        let head = try layer.decode(slice(x, 0..<6), cache: &cache)
        let tail = try layer.decode(slice(x, 6..<9), cache: &cache)
        let before = joined([head, tail])
        for indices in [[2, 0, 2, 1], [1], [2, 1, 0]] {
            var selected = try cache.selectingBatch(indices)
            #expect(selected.batch == indices.count && selected.count == 9 && selected.capacity == cache.capacity)
            let z = gridTensor([indices.count, 4, 24], seed: 512 + UInt64(indices.count))
            let z1 = try layer.decode(slice(z, 0..<1), cache: &selected)
            let z2 = try layer.decode(slice(z, 1..<4), cache: &selected)
            checkCausal(layer, joined([entries(x, indices), z]), decoded: joined([entries(before, indices), z1, z2]),
                        "entries \(indices)")
        }
        // The source cache is unchanged and goes on with its own sequences.
        #expect(cache.batch == 3 && cache.count == 9)
        let w = gridTensor([3, 2, 24], seed: 520)
        let next = try layer.decode(w, cache: &cache)
        checkCausal(layer, joined([x, w]), decoded: joined([before, next]), "source after selections")
    }

    @Test("selectingBatch before anything is stored, and an empty selection")
    func selectEmpty() throws {
        let layer = try gridLayer(modelDim: 16, heads: 4, kvHeads: 2, seed: 530)
        let fresh = try layer.makeCache(batch: 2, capacity: 10).selectingBatch([1, 1, 0])
        #expect(fresh.batch == 3 && fresh.count == 0 && fresh.capacity == 0)
        var grown = fresh
        let x = gridTensor([3, 7, 16], seed: 531)
        checkCausal(layer, x, decoded: try layer.decode(x, cache: &grown), "decode from a selected empty cache")
        #expect(grown.capacity == 10)                                  // the capacity requested of the source
        var none = try grown.selectingBatch([])
        #expect(none.batch == 0 && none.count == 7)
        let out = try layer.decode(Tensor(shape: [0, 2, 16]), cache: &none)
        #expect(out.shape == [0, 2, 16] && none.count == 9)
    }

    @Test("bad indices and counts throw, and a selected cache still belongs to its layer")
    func errors() throws {
        let layer = try gridLayer(modelDim: 16, heads: 4, kvHeads: 2, seed: 540)
        let twin = try gridLayer(modelDim: 16, heads: 4, kvHeads: 2, seed: 541)
        var cache = layer.makeCache(batch: 3)
        _ = try layer.decode(gridTensor([3, 4, 16], seed: 542), cache: &cache)
        expectError(.cacheMismatch, mentions: ["last 5", "holds 4"]) { try cache.removeLast(5) }
        expectError(.cacheMismatch, mentions: ["last -1", "holds 4"]) { try cache.removeLast(-1) }
        #expect(cache.count == 4)
        expectError(.cacheMismatch, mentions: ["batch index 3", "0..<3"]) { _ = try cache.selectingBatch([0, 3]) }
        expectError(.cacheMismatch, mentions: ["batch index -1", "0..<3"]) { _ = try cache.selectingBatch([-1]) }
        // A cache of a negative batch size (which every decode refuses) has no entries to select.
        expectError(.cacheMismatch, mentions: ["batch index 0", "0..<0"]) { _ = try layer.makeCache(batch: -2).selectingBatch([0]) }
        var selected = try cache.selectingBatch([2, 0])
        expectError(.cacheMismatch, mentions: ["another layer"]) { _ = try twin.decode(gridTensor([2, 1, 16], seed: 543), cache: &selected) }
        expectError(.cacheMismatch, mentions: ["batch 2", "[3, 1, 16]"]) {
            _ = try layer.decode(gridTensor([3, 1, 16], seed: 544), cache: &selected)
        }
    }
}
