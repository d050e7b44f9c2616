@testable import AttentionKit
import Testing

/// Every bad input to the layer throws an `AttentionError` with the right code and a
/// message naming the shapes or values involved; nothing traps.
@Suite("Multi-head attention: bad input throws")
struct MultiHeadAttentionErrorTests {
    func t(_ shape: [Int]) -> Tensor<Float> { try! Tensor(shape: shape) }
    func linear(_ out: Int, _ input: Int, bias: Bool = true) -> Linear {
        try! Linear(weight: t([out, input]), bias: bias ? t([out]) : nil)
    }

    @Test func linearShapes() {
        expectError(.weightShape, mentions: ["[6]"]) { _ = try Linear(weight: t([6])) }
        expectError(.weightShape, mentions: ["[2, 3, 4]"]) { _ = try Linear(weight: t([2, 3, 4])) }
        expectError(.weightShape, mentions: ["[4, 3]", "[3]"]) { _ = try Linear(weight: t([4, 3]), bias: t([3])) }
        expectError(.weightShape, mentions: ["[4, 1]"]) { _ = try Linear(weight: t([4, 3]), bias: t([4, 1])) }
        expectError(.headWidth, mentions: ["-2"]) { _ = try Linear(inputDim: -2, outputDim: 3) }
        expectError(.sizeOverflow, mentions: []) { _ = try Linear(inputDim: Int.max / 2, outputDim: 4) }
        // Counts that fit an Int but not this machine's memory (16 TiB of weights): thrown, not a trap.
        expectError(.sizeOverflow, mentions: ["[2097152, 2097152]", "of memory"]) { _ = try Linear(inputDim: 1 << 21, outputDim: 1 << 21) }
        expectError(.sizeOverflow, mentions: ["of memory"]) { _ = try MultiHeadAttention(modelDim: 1 << 21, heads: 1) }
        expectError(.inputWidth, mentions: ["[2, 5]", "5", "3"]) { _ = try self.linear(4, 3)(t([2, 5])) }
        expectError(.invalidRank, mentions: ["[]"]) { _ = try self.linear(4, 3)(t([])) }
    }

    @Test func widthNotDivisibleByHeads() {
        expectError(.headWidth, mentions: ["10", "4"]) { _ = try MultiHeadAttention(modelDim: 10, heads: 4) }
        expectError(.headWidth, mentions: ["0"]) { _ = try MultiHeadAttention(modelDim: 8, heads: 0) }
        expectError(.headWidth, mentions: ["-1"]) { _ = try MultiHeadAttention(modelDim: 8, heads: 2, kvHeads: -1) }
        expectError(.headWidth, mentions: ["0"]) { _ = try MultiHeadAttention(modelDim: 0, heads: 2) }
        expectError(.headWidth, mentions: ["keyDim", "-1"]) { _ = try MultiHeadAttention(modelDim: 8, heads: 2, keyDim: -1) }
        expectError(.headWidth, mentions: ["valueDim", "-3"]) { _ = try MultiHeadAttention(modelDim: 8, heads: 2, valueDim: -3) }
        expectError(.headWidth, mentions: ["[10, 8]", "4"]) {
            _ = try MultiHeadAttention(heads: 4, queryProjection: self.linear(10, 8), keyProjection: self.linear(10, 8),
                                       valueProjection: self.linear(10, 8), outputProjection: self.linear(8, 10))
        }
        expectError(.headWidth, mentions: ["[6, 8]", "4"]) {
            _ = try MultiHeadAttention(heads: 4, queryProjection: self.linear(8, 8), keyProjection: self.linear(8, 8),
                                       valueProjection: self.linear(6, 8), outputProjection: self.linear(8, 8))
        }
        // PyTorch's names for the sizes involved: embed_dim and num_heads.
        expectError(.headWidth, mentions: ["embed_dim E = 12", "num_heads (5)"]) {
            _ = try MultiHeadAttention(heads: 5, inProjWeight: self.t([36, 12]), inProjBias: nil,
                                       outProjWeight: self.t([12, 12]), outProjBias: nil)
        }
        expectError(.headWidth, mentions: ["embed_dim E = 8", "num_heads (0)"]) {
            _ = try MultiHeadAttention(heads: 0, qProjWeight: self.t([8, 8]), kProjWeight: self.t([8, 3]),
                                       vProjWeight: self.t([8, 5]), inProjBias: nil, outProjWeight: self.t([8, 8]), outProjBias: nil)
        }
    }

    @Test func headsNotAMultipleOfKVHeads() {
        expectError(.headGrouping, mentions: ["8", "3"]) { _ = try MultiHeadAttention(modelDim: 16, heads: 8, kvHeads: 3) }
        expectError(.headGrouping, mentions: ["4", "8"]) {
            _ = try MultiHeadAttention(heads: 4, kvHeads: 8, queryProjection: self.linear(8, 8), keyProjection: self.linear(16, 8),
                                       valueProjection: self.linear(16, 8), outputProjection: self.linear(8, 16))
        }
    }

    @Test func weightShapesThatDoNotFit() {
        // Key projection must output kvHeads·Dk.
        expectError(.weightShape, mentions: ["[6, 8]", "8"]) {
            _ = try MultiHeadAttention(heads: 2, queryProjection: self.linear(8, 8), keyProjection: self.linear(6, 8),
                                       valueProjection: self.linear(8, 8), outputProjection: self.linear(8, 8))
        }
        // GQA: key projection for 2 kv heads of width 4 is [8, E], not [16, E].
        expectError(.weightShape, mentions: ["[16, 16]", "2·4 = 8"]) {
            _ = try MultiHeadAttention(heads: 4, kvHeads: 2, queryProjection: self.linear(16, 16), keyProjection: self.linear(16, 16),
                                       valueProjection: self.linear(8, 16), outputProjection: self.linear(16, 16))
        }
        // Output projection must take heads·Dv.
        expectError(.weightShape, mentions: ["[8, 12]", "8"]) {
            _ = try MultiHeadAttention(heads: 2, queryProjection: self.linear(8, 8), keyProjection: self.linear(8, 8),
                                       valueProjection: self.linear(8, 8), outputProjection: self.linear(8, 12))
        }
        // PyTorch parameters.
        expectError(.weightShape, mentions: ["[24, 12]"]) {
            _ = try MultiHeadAttention(heads: 2, inProjWeight: self.t([24, 12]), inProjBias: nil, outProjWeight: self.t([12, 12]), outProjBias: nil)
        }
        expectError(.weightShape, mentions: ["[3, 4, 4]"]) {
            _ = try MultiHeadAttention(heads: 2, inProjWeight: self.t([3, 4, 4]), inProjBias: nil, outProjWeight: self.t([4, 4]), outProjBias: nil)
        }
        expectError(.weightShape, mentions: ["[24]", "[36]"]) {
            _ = try MultiHeadAttention(heads: 2, inProjWeight: self.t([36, 12]), inProjBias: self.t([24]),
                                       outProjWeight: self.t([12, 12]), outProjBias: nil)
        }
        expectError(.weightShape, mentions: ["[12, 10]"]) {
            _ = try MultiHeadAttention(heads: 2, inProjWeight: self.t([36, 12]), inProjBias: nil,
                                       outProjWeight: self.t([12, 10]), outProjBias: nil)
        }
        expectError(.weightShape, mentions: ["[12]", "[10]"]) {
            _ = try MultiHeadAttention(heads: 2, inProjWeight: self.t([36, 12]), inProjBias: nil,
                                       outProjWeight: self.t([12, 12]), outProjBias: self.t([10]))
        }
        expectError(.weightShape, mentions: ["[8, 7]", "[6, 5]"]) {
            _ = try MultiHeadAttention(heads: 2, qProjWeight: self.t([8, 8]), kProjWeight: self.t([8, 7]), vProjWeight: self.t([6, 5]),
                                       inProjBias: nil, outProjWeight: self.t([8, 8]), outProjBias: nil)
        }
    }

    @Test func inputsThatDoNotMatchTheProjections() throws {
        let layer = try MultiHeadAttention(modelDim: 8, heads: 2, keyDim: 6, valueDim: 5)
        expectError(.inputWidth, mentions: ["query [2, 3, 7]", "8"]) {
            _ = try layer(query: self.t([2, 3, 7]), key: self.t([2, 4, 6]), value: self.t([2, 4, 5]))
        }
        expectError(.inputWidth, mentions: ["key [2, 4, 8]", "6"]) {
            _ = try layer(query: self.t([2, 3, 8]), key: self.t([2, 4, 8]), value: self.t([2, 4, 5]))
        }
        expectError(.inputWidth, mentions: ["value [2, 4, 6]", "5"]) {
            _ = try layer.withWeights(query: self.t([2, 3, 8]), key: self.t([2, 4, 6]), value: self.t([2, 4, 6]))
        }
        expectError(.invalidRank, mentions: ["[1, 2, 3, 8]"]) {
            _ = try layer(query: self.t([1, 2, 3, 8]), key: self.t([1, 2, 4, 6]), value: self.t([1, 2, 4, 5]))
        }
        expectError(.invalidRank, mentions: ["[3, 8]", "[2, 4, 6]"]) {
            _ = try layer(query: self.t([3, 8]), key: self.t([2, 4, 6]), value: self.t([2, 4, 5]))
        }
        expectError(.batchMismatch, mentions: ["[2, 3, 8]", "[3, 4, 6]"]) {
            _ = try layer(query: self.t([2, 3, 8]), key: self.t([3, 4, 6]), value: self.t([3, 4, 5]))
        }
        expectError(.sequenceLengthMismatch, mentions: ["[2, 4, 6]", "[2, 5, 5]"]) {
            _ = try layer(query: self.t([2, 3, 8]), key: self.t([2, 4, 6]), value: self.t([2, 5, 5]))
        }
        // Masks are checked against the scores [B, Hq, L, S] before any arithmetic.
        expectError(.maskShape, mentions: ["[3, 5]", "[2, 2, 3, 4]"]) {
            _ = try layer(query: self.t([2, 3, 8]), key: self.t([2, 4, 6]), value: self.t([2, 4, 5]),
                          mask: .boolean(try Tensor(shape: [3, 5], repeating: true)))
        }
        expectError(.keyLengths, mentions: ["3", "2"]) {
            _ = try layer(query: self.t([2, 3, 8]), key: self.t([2, 4, 6]), value: self.t([2, 4, 5]), mask: .keyLengths([1, 2, 3]))
        }
        // PyTorch's 3-D attn_mask [B·H, L, S] passed as is: the message says how to reshape it.
        expectError(.maskShape, mentions: ["[4, 3, 4]", "PyTorch attn_mask [B·H, L, S]", "reshape it to [2, 2, 3, 4]"]) {
            _ = try layer(query: self.t([2, 3, 8]), key: self.t([2, 4, 6]), value: self.t([2, 4, 5]),
                          mask: .excluding(try Tensor(shape: [4, 3, 4], repeating: false)))
        }
        expectError(.maskShape, mentions: ["[3, 3, 4]", "neither 1 nor 2"]) {
            _ = try layer(query: self.t([2, 3, 8]), key: self.t([2, 4, 6]), value: self.t([2, 4, 5]),
                          mask: .excluding(try Tensor(shape: [3, 3, 4], repeating: false)))
        }
        expectError(.maskShape, mentions: ["[2, 2, 2]"]) { _ = try AttentionMask.keyPadding(Tensor(shape: [2, 2, 2], repeating: false)) }
    }

    @Test func decodeInputs() throws {
        let layer = try MultiHeadAttention(modelDim: 8, heads: 4, kvHeads: 2)
        var cache = layer.makeCache(batch: 2)
        expectError(.inputWidth, mentions: ["[2, 1, 6]", "8"]) { _ = try layer.decode(self.t([2, 1, 6]), cache: &cache) }
        expectError(.invalidRank, mentions: ["[8]"]) { _ = try layer.decode(self.t([8]), cache: &cache) }
        expectError(.invalidRank, mentions: ["[1, 2, 1, 8]"]) { _ = try layer.decode(self.t([1, 2, 1, 8]), cache: &cache) }
        let cross = try MultiHeadAttention(modelDim: 8, heads: 4, keyDim: 6)
        var crossCache = cross.makeCache(batch: 1)
        expectError(.inputWidth, mentions: ["keyDim 6"]) { _ = try cross.decode(self.t([1, 1, 8]), cache: &crossCache) }
        #expect(cache.count == 0 && crossCache.count == 0, "a failed decode must not change the cache")
    }

    /// A reserved capacity larger than the machine's memory throws on the first decode
    /// instead of trapping in the allocator, and leaves the cache as it was.
    @Test func cacheBeyondMemory() throws {
        let layer = try MultiHeadAttention(modelDim: 64, heads: 8)               // 8 kv heads of width 8
        var cache = layer.makeCache(batch: 1, capacity: 1 << 30)                 // 2 × 2³⁰ × 64 floats: 512 GiB
        expectError(.sizeOverflow, mentions: ["KV cache of 1073741824 positions", "of memory"]) {
            _ = try layer.decode(self.t([1, 1, 64]), cache: &cache)
        }
        #expect(cache.count == 0 && cache.capacity == 0)
    }

    /// Intermediates larger than the machine's memory from small inputs and weights (keys
    /// one float wide projected to 4096): a thrown `.sizeOverflow`, not the allocator's trap.
    @Test func intermediatesBeyondMemory() throws {
        let layer = try MultiHeadAttention(modelDim: 4096, heads: 32, keyDim: 1, valueDim: 1)
        let q = t([1, 1, 4096]), k = t([1, 1 << 22, 1])                          // projected keys: 2⁴⁴ bytes
        expectError(.sizeOverflow, mentions: ["[1, 4194304, 1]", "of memory"]) { _ = try layer(query: q, key: k, value: k) }
        let wide = try Linear(weight: t([1 << 22, 1]))                            // 16 MiB of weights
        expectError(.sizeOverflow, mentions: ["[4194304, 4194304]", "of memory"]) { _ = try wide(self.t([1 << 22, 1])) }
    }

    /// Shapes whose products overflow an Int in arithmetic that the valid, empty case never
    /// needed: an error or an empty result, never an overflow trap.
    @Test func emptyTensorsWithHugeDimensions() throws {
        let w = try Tensor<Float>(shape: [0, Int.max / 2], scalars: [])           // 3 · (Int.max / 2) overflows
        expectError(.weightShape, mentions: ["[0, \(Int.max / 2)]"]) {
            _ = try MultiHeadAttention(heads: 1, inProjWeight: w, inProjBias: nil, outProjWeight: w, outProjBias: nil)
        }
        let averaged = try MultiHeadAttention.averagingHeads(try Tensor(shape: [0, 1, 1 << 32, 1 << 32], scalars: []))
        #expect(averaged.shape == [0, 1 << 32, 1 << 32] && averaged.count == 0)
    }

    @Test func cacheOfAnotherLayerOrBatch() throws {
        let layer = try MultiHeadAttention(modelDim: 8, heads: 4, kvHeads: 2)
        let twin = try MultiHeadAttention(modelDim: 8, heads: 4, kvHeads: 2)      // same shapes, other weights
        let other = try MultiHeadAttention(modelDim: 8, heads: 2)
        var cache = layer.makeCache(batch: 2)
        _ = try layer.decode(t([2, 3, 8]), cache: &cache)
        expectError(.cacheMismatch, mentions: ["another layer of the same shape", "copies"]) { _ = try twin.decode(self.t([2, 1, 8]), cache: &cache) }
        expectError(.cacheMismatch, mentions: ["another layer", "2 kv heads"]) { _ = try other.decode(self.t([2, 1, 8]), cache: &cache) }
        expectError(.cacheMismatch, mentions: ["batch 2", "[3, 1, 8]"]) { _ = try layer.decode(self.t([3, 1, 8]), cache: &cache) }
        expectError(.cacheMismatch, mentions: ["batch 2", "[1, 8]"]) { _ = try layer.decode(self.t([1, 8]), cache: &cache) }
        // makeCache does not throw; a negative batch or capacity gives a cache every decode
        // refuses, with or without tokens, and leaves unallocated.
        var negative = layer.makeCache(batch: -1)
        expectError(.cacheMismatch, mentions: ["batch -1"]) { _ = try layer.decode(self.t([1, 1, 8]), cache: &negative) }
        expectError(.cacheMismatch, mentions: ["batch -1"]) { _ = try layer.decode(self.t([0, 1, 8]), cache: &negative) }
        expectError(.cacheMismatch, mentions: ["batch -1"]) { _ = try layer.decode(self.t([1, 8]), cache: &negative) }
        var negativeCapacity = layer.makeCache(batch: 2, capacity: -5)
        for tokens in [t([2, 1, 8]), t([2, 3, 8]), t([2, 0, 8])] {
            expectError(.cacheMismatch, mentions: ["capacity -5"]) { _ = try layer.decode(tokens, cache: &negativeCapacity) }
        }
        #expect(negative.count == 0 && negative.capacity == 0 && negativeCapacity.count == 0 && negativeCapacity.capacity == 0)
        #expect(cache.count == 3, "failed decodes must not change the cache")
        // A copy of the layer is the same layer: it accepts the cache.
        let copy = layer
        _ = try copy.decode(t([2, 1, 8]), cache: &cache)
        #expect(cache.count == 4)
    }
}
