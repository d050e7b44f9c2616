@testable import AttentionKit
import Testing

/// Incremental decoding with the KV cache equals full causal self-attention.
///
/// Both sides are float32 and sum in different orders, so they agree to rounding, not
/// bit for bit: the decoded rows are compared with the float64 reference within
/// `layerTolerance`, and with the library's own full causal pass within the same bound.
@Suite("KV cache decoding")
struct MultiHeadAttentionDecodeTests {
    /// Decodes `x` `[B, T, E]` in steps of the given sizes and checks the concatenated
    /// outputs against the float64 reference and the library's full causal pass.
    func checkDecoding(_ layer: MultiHeadAttention, _ x: Tensor<Float>, steps: [Int], capacity: Int = 0,
                       _ what: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let (B, T) = (x.shape[0], x.shape[1])
        #expect(steps.reduce(0, +) == T, sourceLocation: sourceLocation)
        var cache = layer.makeCache(batch: B, capacity: capacity)
        var outputs: [Tensor<Float>] = []
        var position = 0
        for n in steps {
            let out = try layer.decode(slice(x, position..<(position + n)), cache: &cache)
            #expect(out.shape == [B, n, layer.outputDim], sourceLocation: sourceLocation)
            position += n
            #expect(cache.count == position, sourceLocation: sourceLocation)
            #expect(cache.capacity >= position, sourceLocation: sourceLocation)
            outputs.append(out)
        }
        let decoded = joined(outputs)
        let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: x, key: x, value: x, mask: [.causal(.upperLeft)])
        let tolerance = layerTolerance(layer, value: x)
        assertClose(decoded, want.output, shape: [B, T, layer.outputDim], absolute: tolerance, relative: 0,
                    "\(what): decoded vs float64 reference", sourceLocation: sourceLocation)
        let full = try layer(query: x, key: x, value: x, mask: .causal(.upperLeft))
        assertClose(decoded, full.scalars.map(Double.init), shape: [B, T, layer.outputDim], absolute: tolerance, relative: 0,
                    "\(what): decoded vs full causal pass", sourceLocation: sourceLocation)
    }

    static let layers: [(name: String, heads: Int, kvHeads: Int)] = [("MHA 4/4", 4, 4), ("GQA 8/2", 8, 2), ("MQA 4/1", 4, 1)]

    @Test("one token at a time equals full causal self-attention (batch 3)", arguments: layers.indices)
    func oneAtATime(_ index: Int) throws {
        let c = Self.layers[index]
        let layer = try gridLayer(modelDim: 32, heads: c.heads, kvHeads: c.kvHeads, seed: 200 + UInt64(index))
        let x = gridTensor([3, 13, 32], seed: 210 + UInt64(index))
        try checkDecoding(layer, x, steps: Array(repeating: 1, count: 13), "\(c.name) one at a time")
    }

    @Test("chunks of 3 equal full causal self-attention (batch 2)", arguments: layers.indices)
    func chunksOfThree(_ index: Int) throws {
        let c = Self.layers[index]
        let layer = try gridLayer(modelDim: 32, heads: c.heads, kvHeads: c.kvHeads, seed: 220 + UInt64(index))
        let x = gridTensor([2, 13, 32], seed: 230 + UInt64(index))
        try checkDecoding(layer, x, steps: [3, 3, 3, 3, 1], "\(c.name) chunks of 3")
    }

    @Test("zero, one and many tokens per step, and a prompt that fills the reserved capacity exactly")
    func mixedSteps() throws {
        let layer = try gridLayer(modelDim: 24, heads: 6, kvHeads: 3, seed: 240)
        let x = gridTensor([2, 30, 24], seed: 241)
        try checkDecoding(layer, x, steps: [0, 7, 0, 1, 1, 0, 12, 1, 2, 6], "mixed")
        // capacity 10, prompt 10: the storage is exactly full (the `.causal(.lowerRight)` mask),
        // then growth to 20 on the next token.
        try checkDecoding(layer, x, steps: [10, 1, 9, 10], capacity: 10, "exact capacity")
        // A single step holding the whole sequence is the full causal pass.
        try checkDecoding(layer, x, steps: [30], "one step")
        // An empty step returns [B, 0, E] and leaves the cache alone.
        var cache = layer.makeCache(batch: 2)
        let empty = try layer.decode(Tensor(shape: [2, 0, 24]), cache: &cache)
        #expect(empty.shape == [2, 0, 24] && cache.count == 0 && cache.capacity == 0)
    }

    @Test("a long prompt into a larger reserved capacity, then chunks (GQA, batch 2)")
    func longPromptIntoLargerCapacity() throws {
        // 300 of 512 positions after the prompt: the storage is never exactly full, so every
        // step runs with the causal mask measured from the cached count, not the capacity.
        let layer = try gridLayer(modelDim: 32, heads: 8, kvHeads: 2, seed: 280)
        let x = gridTensor([2, 340, 32], seed: 281)
        try checkDecoding(layer, x, steps: [300, 7, 1, 16, 2, 14], capacity: 512, "prompt 300 into capacity 512")
        var cache = layer.makeCache(batch: 2, capacity: 512)
        _ = try layer.decode(slice(x, 0..<300), cache: &cache)
        #expect(cache.capacity == 512 && cache.reallocations == 0)
    }

    /// Growth doubles up to BLAS's 32-bit limit and stops there: a cache of 2³⁰ positions
    /// takes one more (batch 0, so nothing is allocated), and only a count past the limit
    /// throws.
    @Test("capacity growth stops at BLAS's 32-bit limit instead of refusing positions that fit")
    func growthCappedAtBLASLimit() throws {
        let layer = try MultiHeadAttention(modelDim: 8, heads: 4, kvHeads: 2, seed: 1)
        var cache = layer.makeCache(batch: 0)
        _ = try layer.decode(try Tensor(shape: [0, 1 << 30, 8]), cache: &cache)
        _ = try layer.decode(try Tensor(shape: [0, 1, 8]), cache: &cache)
        #expect(cache.count == (1 << 30) + 1 && cache.capacity == Int(Int32.max))
        let rest = Int(Int32.max) - cache.count
        _ = try layer.decode(try Tensor(shape: [0, rest, 8]), cache: &cache)
        #expect(cache.count == Int(Int32.max))
        expectError(.sizeOverflow, mentions: ["32-bit"]) { _ = try layer.decode(try Tensor(shape: [0, 1, 8]), cache: &cache) }
    }

    @Test("causal-to-key-lengths mask: every kernel against the float64 reference",
          arguments: [AttentionKernel.naive, .blas, .tiled])
    func causalToKeyLengthsMask(_ kernel: AttentionKernel) throws {
        // B 4, Hq 4 over Hkv 2, L 6, S 19. Lengths below L (early rows see nothing), 0, and S.
        let (B, L, S) = (4, 6, 19)
        let lengths = [11, 3, 0, 19]
        let q = gridTensor([B, 4, L, 8], seed: 290)
        let k = gridTensor([B, 2, S, 8], seed: 291)
        let v = gridTensor([B, 2, S, 5], seed: 292)
        // The same exclusions written from the definition: j < lengths[b] − L + i + 1.
        var allowed: [Bool] = []
        for b in 0..<B { for i in 0..<L { for j in 0..<S { allowed.append(j < lengths[b] - L + i + 1) } } }
        let want = referenceAttention(query: q, key: k, value: v, mask: [.boolean(shape: [B, 1, L, S], data: allowed)])
        let tilings = kernel == .tiled
            ? [TileSizes(), TileSizes(queryBlock: 4, keyBlock: 3, splits: 2), TileSizes(queryBlock: 5, keyBlock: 7)]
            : [TileSizes()]
        for tiles in tilings {
            let out = try runAttention(query: q, key: k, value: v, mask: .causalToKeyLengths(lengths), scale: nil,
                                       dropout: nil, kernel: kernel, wantWeights: false, tiles: tiles).output
            assertClose(out, want.output, shape: [B, 4, L, 5], absolute: outputTolerance(v), "\(kernel) \(tiles)")
        }
        // With every length S it is `.causal(.lowerRight)`.
        let full = try scaledDotProductAttention(query: q, key: k, value: v,
                                                 mask: .causalToKeyLengths([S, S, S, S]), kernel: kernel)
        let lowerRight = referenceAttention(query: q, key: k, value: v, mask: [.causal(.lowerRight)])
        assertClose(full, lowerRight.output, shape: [B, 4, L, 5], absolute: outputTolerance(v), "\(kernel) all lengths S")
        // Lengths are validated like `.keyLengths`.
        expectError(.keyLengths, mentions: ["causalToKeyLengths[3] = 20", "0...19"]) {
            _ = try scaledDotProductAttention(query: q, key: k, value: v, mask: .causalToKeyLengths([1, 2, 3, 20]))
        }
        expectError(.keyLengths, mentions: ["causalToKeyLengths has 3 entries", "batch size is 4"]) {
            _ = try scaledDotProductAttention(query: q, key: k, value: v, mask: .causalToKeyLengths([1, 2, 3]))
        }
    }

    @Test("rank-2 tokens decode a batch of one")
    func rankTwo() throws {
        let layer = try gridLayer(modelDim: 16, heads: 4, kvHeads: 2, seed: 250)
        let x = gridTensor([9, 16], seed: 251)
        var cache = layer.makeCache(batch: 1)
        var rows: [Float] = []
        for t in 0..<9 {
            let token = try Tensor(shape: [1, 16], scalars: Array(x.scalars[(t * 16)..<((t + 1) * 16)]))
            let out = try layer.decode(token, cache: &cache)
            #expect(out.shape == [1, 16])
            rows += out.scalars
        }
        let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: x, key: x, value: x, mask: [.causal(.upperLeft)])
        assertClose(try Tensor(shape: [9, 16], scalars: rows), want.output, shape: [9, 16],
                    absolute: layerTolerance(layer, value: x), relative: 0, "rank-2 decoding")
    }

    @Test("capacity grows geometrically past several doublings, keeping every cached row")
    func capacityGrowth() throws {
        let layer = try gridLayer(modelDim: 16, heads: 4, kvHeads: 2, seed: 260)
        let T = 150
        let x = gridTensor([2, T, 16], seed: 261)
        var cache = layer.makeCache(batch: 2, capacity: 1)
        var capacities: [Int] = []
        var outputs: [Tensor<Float>] = []
        for t in 0..<T {
            outputs.append(try layer.decode(slice(x, t..<(t + 1)), cache: &cache))
            if capacities.last != cache.capacity { capacities.append(cache.capacity) }
        }
        // Starts at the minimum of 8, then doubles: 8, 16, 32, 64, 128, 256.
        #expect(capacities == [8, 16, 32, 64, 128, 256], "capacities \(capacities)")
        #expect(cache.reallocations == 5)
        // The keys in the storage are the projections of the inputs, head by head, for every
        // position (nothing lost or shifted by the five moves).
        let w = ReferenceWeights(layer)
        let k = referenceLinear(x.scalars.map(Double.init), rows: 2 * T, w.wk, w.bk)   // [B·T, Hkv·Dk], exact on the grid
        var wrong = 0
        for b in 0..<2 { for h in 0..<2 { for t in 0..<T { for d in 0..<4 {
            let stored = cache.keys.scalars[((b * 2 + h) * cache.capacity + t) * 4 + d]
            if Double(stored) != k[(b * T + t) * 8 + h * 4 + d] { wrong += 1 }
        } } } }
        #expect(wrong == 0, "\(wrong) cached key elements differ from the projections")
        let decoded = joined(outputs)
        let want = referenceMultiHeadAttention(w, query: x, key: x, value: x, mask: [.causal(.upperLeft)])
        assertClose(decoded, want.output, shape: [2, T, 16], absolute: layerTolerance(layer, value: x), relative: 0,
                    "150 tokens with growth")
    }

    @Test("a reserved capacity is allocated once; removeAll keeps it; copies are independent")
    func cacheValueSemantics() throws {
        let layer = try gridLayer(modelDim: 16, heads: 2, seed: 270)
        let x = gridTensor([1, 20, 16], seed: 271)
        var cache = layer.makeCache(batch: 1, capacity: 20)
        for t in 0..<20 { _ = try layer.decode(slice(x, t..<(t + 1)), cache: &cache) }
        #expect(cache.capacity == 20 && cache.reallocations == 0)

        // Two continuations from the same prefix.
        var a = layer.makeCache(batch: 1)
        _ = try layer.decode(slice(x, 0..<10), cache: &a)
        var b = a
        let fromA = try layer.decode(slice(x, 10..<11), cache: &a)
        let fromB = try layer.decode(slice(x, 15..<16), cache: &b)
        var c = layer.makeCache(batch: 1)
        _ = try layer.decode(slice(x, 0..<10), cache: &c)
        #expect(try layer.decode(slice(x, 15..<16), cache: &c) == fromB)
        #expect(fromA != fromB)
        #expect(a.count == 11 && b.count == 11)

        // removeAll: the next sequence starts from position 0 in the same storage.
        let capacity = c.capacity
        c.removeAll()
        #expect(c.count == 0 && c.capacity == capacity)
        var fresh = layer.makeCache(batch: 1)
        #expect(try layer.decode(slice(x, 3..<7), cache: &c) == layer.decode(slice(x, 3..<7), cache: &fresh))
    }

    /// Batched generation from prompts of different lengths: the shorter ones are left-padded
    /// (0, 3 and 6 positions) and each step's mask excludes the padding, `.boolean` over
    /// `[B, 1, 1, P + n]`, growing with the cache; with and without an ALiBi-style bias sliced
    /// per step, `[1, Hq, n, P + n]`. Steps of 5, 1, 0, 2 and 3 tokens, so the cache's storage
    /// grows past the valid positions and the mask tensors are widened to it. The decoded rows
    /// equal the float64 reference of causal self-attention over the whole sequence under the
    /// same masks, the padding rows included (no key left: the output bias).
    @Test("a mask per step (left padding, per-head bias) against the float64 reference", arguments: layers.indices)
    func maskedSteps(_ index: Int) throws {
        let c = Self.layers[index]
        let layer = try gridLayer(modelDim: 32, heads: c.heads, kvHeads: c.kvHeads, seed: 300 + UInt64(index))
        let (B, T, H) = (3, 11, c.heads)
        let x = gridTensor([B, T, 32], seed: 310 + UInt64(index))
        let padding = [0, 3, 6]
        let allowed = (0..<B).flatMap { b in (0..<T).map { $0 >= padding[b] } }                      // [B, 1, 1, T]
        var bias = [Float](repeating: 0, count: H * T * T)                                          // [1, H, T, T]
        for h in 0..<H {
            for i in 0..<T {
                for j in 0..<T { bias[(h * T + i) * T + j] = -0.25 * Float(h + 1) * Float(Swift.abs(i - j)) }
            }
        }
        for withBias in [false, true] {
            var cache = layer.makeCache(batch: B)
            var outputs: [Tensor<Float>] = []
            var p = 0, storageWider = false
            for n in [5, 1, 0, 2, 3] {
                let keys = p + n
                var allowedNow: [Bool] = []                                                           // [B, 1, 1, P + n]
                for b in 0..<B { allowedNow += allowed[(b * T)..<(b * T + keys)] }
                var parts: [AttentionMask] = [.boolean(try Tensor(shape: [B, 1, 1, keys], scalars: allowedNow))]
                if withBias {
                    var biasNow: [Float] = []                                                         // [1, H, n, P + n]
                    for h in 0..<H {
                        for i in p..<keys { biasNow += bias[((h * T + i) * T)..<((h * T + i) * T + keys)] }
                    }
                    parts.append(.additive(try Tensor(shape: [1, H, n, keys], scalars: biasNow)))
                }
                outputs.append(try layer.decode(slice(x, p..<keys), cache: &cache, mask: AttentionMask(parts)))
                if n > 0 && cache.capacity > keys { storageWider = true }
                p = keys
            }
            #expect(storageWider, "some step must read storage wider than its keys, so that the mask is widened")
            let decoded = joined(outputs)
            var spec: [MaskSpec] = [.causal(.upperLeft), .boolean(shape: [B, 1, 1, T], data: allowed)]
            if withBias { spec.append(.additive(shape: [1, H, T, T], data: bias)) }
            let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: x, key: x, value: x, mask: spec)
            assertClose(decoded, want.output, shape: [B, T, layer.outputDim], absolute: layerTolerance(layer, value: x),
                        relative: 0, "\(c.name), bias \(withBias)")
        }
    }

    /// A decoding step's mask is checked against the step's scores `[B, Hq, n, P + n]` before
    /// anything is cached (a wrong key size, key lengths past P + n, also in a step of no
    /// tokens); `.causal(.lowerRight)` there is the step's own causal mask again.
    @Test("a step's mask must fit its scores; lower-right causal changes nothing")
    func stepMaskChecks() throws {
        let layer = try gridLayer(modelDim: 16, heads: 4, kvHeads: 2, seed: 320)
        let x = gridTensor([2, 6, 16], seed: 321)
        var cache = layer.makeCache(batch: 2, capacity: 16)
        _ = try layer.decode(slice(x, 0..<4), cache: &cache)
        for (mask, code) in [(AttentionMask.boolean(try Tensor(shape: [2, 1, 1, 5], repeating: true)), AttentionError.Code.maskShape),
                             (.keyLengths([6, 7]), .keyLengths)] {
            #expect { try layer.decode(slice(x, 4..<6), cache: &cache, mask: mask) } throws: { ($0 as? AttentionError)?.code == code }
            #expect { try layer.decode(slice(x, 4..<4), cache: &cache, mask: mask) } throws: { ($0 as? AttentionError)?.code == code }
            #expect(cache.count == 4)
        }
        var plain = cache
        let a = try layer.decode(slice(x, 4..<6), cache: &cache, mask: .causal(.lowerRight))
        let b = try layer.decode(slice(x, 4..<6), cache: &plain)
        #expect(a == b)
    }

    /// The other mask parts in a step: key lengths counted from position 0, upper-left causal
    /// over the step's own queries, and a boolean `[B, Hq, n, P + n]` with key lengths. One
    /// step of 3 tokens after a prompt of 4, into storage of 16 positions, against the float64
    /// reference of the step's queries over all 7 positions under the lower-right causal mask
    /// and the same parts.
    @Test("key lengths, upper-left causal and a full boolean mask in a step, against the float64 reference")
    func stepMaskParts() throws {
        let layer = try gridLayer(modelDim: 16, heads: 4, kvHeads: 2, seed: 330)
        let (B, H, P, n) = (2, 4, 4, 3)
        let x = gridTensor([B, P + n, 16], seed: 331)
        let pattern = (0..<(B * H * n * (P + n))).map { ($0 * 7 + 3) % 5 != 0 }
        let masks: [[MaskSpec]] = [[.keyLengths([5, 2])], [.causal(.upperLeft)],
                                   [.boolean(shape: [B, H, n, P + n], data: pattern), .keyLengths([7, 6])]]
        for spec in masks {
            var cache = layer.makeCache(batch: B, capacity: 16)
            _ = try layer.decode(slice(x, 0..<P), cache: &cache)
            let step = try layer.decode(slice(x, P..<(P + n)), cache: &cache, mask: AttentionMask(spec.map(\.library)))
            let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: slice(x, P..<(P + n)), key: x, value: x,
                                                   mask: [.causal(.lowerRight)] + spec)
            assertClose(step, want.output, shape: [B, n, layer.outputDim], absolute: layerTolerance(layer, value: x),
                        relative: 0, "\(spec)")
        }
    }

    /// Widening a step's mask to the cache's storage is checked like any other allocation:
    /// a size beyond memory (or beyond what an Int counts) throws `.sizeOverflow` before
    /// anything is allocated.
    @Test func wideningBeyondMemoryThrows() throws {
        let bias = try Tensor<Float>(shape: [1, 2, 3, 5], repeating: 0)
        for capacity in [Int.max / 2, Int(memoryCeiling.bytes / 4)] {
            #expect { try AttentionMask.additive(bias).overStorage(valid: 5, capacity: capacity, batch: 1) } throws: {
                ($0 as? AttentionError)?.code == .sizeOverflow
            }
        }
        #expect(try AttentionMask.additive(bias).overStorage(valid: 5, capacity: 8, batch: 1).parts.count == 1)
    }
}
