@testable import AttentionKit
import Dispatch
import Synchronization
import Testing

/// The layer against the float64 reference (MultiHeadAttentionReference.swift). Outputs
/// within `layerTolerance` (2e-5 relative to the output projection's term sizes), weights
/// within 2e-5 absolute, as in the core's tests.
@Suite("Multi-head attention")
struct MultiHeadAttentionTests {
    /// Runs the layer with and without weights and compares both with the reference.
    func check(_ layer: MultiHeadAttention, query: Tensor<Float>, key: Tensor<Float>, value: Tensor<Float>,
               mask: [MaskSpec] = [], _ what: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: query, key: key, value: value, mask: mask)
        let rank = query.rank
        let B = rank == 3 ? query.shape[0] : 1
        let L = query.shape[rank - 2], S = key.shape[rank - 2]
        let outputShape = rank == 3 ? [B, L, layer.outputDim] : [L, layer.outputDim]
        let weightShape = rank == 3 ? [B, layer.heads, L, S] : [layer.heads, L, S]
        let tolerance = layerTolerance(layer, value: value)
        let libraryMask = AttentionMask(mask.map(\.library))

        let output = try layer(query: query, key: key, value: value, mask: libraryMask)
        assertClose(output, want.output, shape: outputShape, absolute: tolerance, relative: 0,
                    "\(what) output", sourceLocation: sourceLocation)
        let (output2, weights) = try layer.withWeights(query: query, key: key, value: value, mask: libraryMask)
        assertClose(output2, want.output, shape: outputShape, absolute: tolerance, relative: 0,
                    "\(what) output (withWeights)", sourceLocation: sourceLocation)
        assertClose(weights, want.weights, shape: weightShape, absolute: 2e-5, relative: 0,
                    "\(what) weights", sourceLocation: sourceLocation)
    }

    // MARK: The Transformer's three uses

    @Test("encoder self-attention over a padded batch (keyLengths)")
    func encoderSelfAttention() throws {
        let layer = try gridLayer(modelDim: 24, heads: 4, seed: 10)
        let x = gridTensor([3, 9, 24], seed: 11)                        // [B, L, E]
        let lengths = [9, 5, 1]
        try check(layer, query: x, key: x, value: x, mask: [.keyLengths(lengths)], "encoder")

        // Padding really is ignored: changing the padded positions changes nothing.
        var scalars = x.scalars
        for b in 0..<3 { for t in lengths[b]..<9 { for e in 0..<24 { scalars[(b * 9 + t) * 24 + e] = 7 } } }
        let changedKeys = try Tensor(shape: [3, 9, 24], scalars: scalars)
        let a = try layer(query: x, key: x, value: x, mask: .keyLengths(lengths))
        let b = try layer(query: x, key: changedKeys, value: changedKeys, mask: .keyLengths(lengths))
        #expect(a == b, "keys past each length must not affect the output")
    }

    @Test("decoder causal self-attention (upper-left causal mask)")
    func decoderCausalSelfAttention() throws {
        let layer = try gridLayer(modelDim: 16, heads: 2, seed: 20)
        let y = gridTensor([2, 11, 16], seed: 21)
        try check(layer, query: y, key: y, value: y, mask: [.causal(.upperLeft)], "decoder")

        // Position i does not depend on later positions: changing the last token leaves the
        // earlier outputs unchanged, and every weight above the diagonal is zero.
        var scalars = y.scalars
        for b in 0..<2 { for e in 0..<16 { scalars[(b * 11 + 10) * 16 + e] = -3 } }
        let y2 = try Tensor(shape: [2, 11, 16], scalars: scalars)
        // (Both through the same call: with weights the softmax normalises before P·V,
        // without them after, which rounds differently.)
        let (o1, w) = try layer.withWeights(query: y, key: y, value: y, mask: .causal(.upperLeft))
        let o2 = try layer.withWeights(query: y2, key: y2, value: y2, mask: .causal(.upperLeft)).output
        for b in 0..<2 {
            let rows = (b * 11 * 16)..<((b * 11 + 10) * 16)
            #expect(Array(o1.scalars[rows]) == Array(o2.scalars[rows]), "batch \(b): earlier outputs changed")
        }
        var above = 0
        for bh in 0..<4 { for i in 0..<11 { for j in (i + 1)..<11 where w.scalars[(bh * 11 + i) * 11 + j] != 0 { above += 1 } } }
        #expect(above == 0, "\(above) weights above the diagonal")
    }

    @Test("encoder-decoder cross-attention with L ≠ S and keyDim, valueDim ≠ E")
    func encoderDecoderCrossAttention() throws {
        let layer = try gridLayer(modelDim: 12, heads: 3, keyDim: 10, valueDim: 6, seed: 30)
        #expect(layer.keyDim == 10 && layer.valueDim == 6 && layer.modelDim == 12)
        let decoder = gridTensor([2, 5, 12], seed: 31)                   // [B, L, E]
        let memoryK = gridTensor([2, 13, 10], seed: 32)                  // [B, S, keyDim]
        let memoryV = gridTensor([2, 13, 6], seed: 33)                   // [B, S, valueDim]
        try check(layer, query: decoder, key: memoryK, value: memoryV, "cross")
        try check(layer, query: decoder, key: memoryK, value: memoryV, mask: [.keyLengths([13, 4])], "cross padded")
    }

    // MARK: Variants

    @Test("grouped-query and multi-query heads, value heads wider than key heads, other output width")
    func groupedQuery() throws {
        let x = gridTensor([2, 7, 32], seed: 41)
        let gqa = try gridLayer(modelDim: 32, heads: 8, kvHeads: 2, seed: 40)
        try check(gqa, query: x, key: x, value: x, mask: [.causal(.upperLeft)], "GQA 8/2")
        let mqa = try gridLayer(modelDim: 32, heads: 4, kvHeads: 1, valueHeadDim: 5, outputDim: 9, seed: 42)
        #expect(mqa.valueHeadDim == 5 && mqa.outputDim == 9)
        try check(mqa, query: x, key: x, value: x, mask: [.keyLengths([7, 3])], "MQA, Dv 5, E_out 9")
    }

    @Test("one head, no bias, boolean and additive masks, rank-2 input")
    func variants() throws {
        let one = try gridLayer(modelDim: 8, heads: 1, bias: false, seed: 50)
        let x = gridTensor([3, 6, 8], seed: 51)
        try check(one, query: x, key: x, value: x, "one head, no bias")

        let layer = try gridLayer(modelDim: 12, heads: 3, seed: 52)
        let q = gridTensor([2, 4, 12], seed: 53), kv = gridTensor([2, 6, 12], seed: 54)
        let allowed = randomBools([2, 3, 4, 6], seed: 55)
        let bias = gridTensor([3, 1, 6], seed: 56)
        try check(layer, query: q, key: kv, value: kv,
                  mask: [.boolean(shape: [2, 3, 4, 6], data: allowed), .additive(shape: [3, 1, 6], data: bias.scalars)],
                  "boolean + additive")
        try check(layer, query: q, key: kv, value: kv, mask: [.causal(.lowerRight)], "lower-right causal, L < S")

        // Rank 2: [L, E] in, [L, E] out, weights [Hq, L, S].
        let single = gridTensor([5, 12], seed: 57)
        try check(layer, query: single, key: single, value: single, mask: [.causal(.upperLeft)], "rank 2")
        try check(layer, query: single, key: single, value: single, mask: [.keyLengths([3])], "rank 2 keyLengths")
    }

    @Test("single-row and few-row projections (sgemv path) equal the sgemm path")
    func fewRows() throws {
        let layer = try gridLayer(modelDim: 16, heads: 4, seed: 60)
        for rows in [1, 2, 3, 4, 5] {
            let x = gridTensor([rows, 1, 16], seed: 61 + UInt64(rows))      // B = rows, L = 1: no head copies
            let kv = gridTensor([rows, 3, 16], seed: 70 + UInt64(rows))
            try check(layer, query: x, key: kv, value: kv, "B=\(rows) L=1")
        }
        let lin = try Linear(weight: gridTensor([5, 7], seed: 80, magnitude: 0.25), bias: gridTensor([5], seed: 81))
        let ref = ReferenceWeights(try MultiHeadAttention(heads: 1, queryProjection: lin, keyProjection: lin,
                                                          valueProjection: lin, outputProjection: try Linear(weight: gridTensor([3, 5], seed: 82))))
        for rows in [0, 1, 2, 3, 4, 9] {
            let x = gridTensor([rows, 7], seed: 83)
            let y = try lin(x)
            assertClose(y, referenceLinear(x.scalars.map(Double.init), rows: rows, ref.wq, ref.bq),
                        shape: [rows, 5], absolute: 0, relative: 0, "Linear on \(rows) rows (exact on the grid)")
        }
        let x3 = gridTensor([2, 3, 7], seed: 84)
        #expect(try lin(x3).shape == [2, 3, 5])
        #expect(try lin(gridTensor([7], seed: 85)).shape == [5])
    }

    @Test("empty sizes: B = 0, L = 0, S = 0")
    func emptySizes() throws {
        let layer = try gridLayer(modelDim: 8, heads: 2, seed: 90)
        let none = try layer(query: Tensor(shape: [0, 3, 8]), key: Tensor(shape: [0, 4, 8]), value: Tensor(shape: [0, 4, 8]))
        #expect(none.shape == [0, 3, 8])
        let noQueries = try layer.withWeights(query: Tensor(shape: [2, 0, 8]), key: gridTensor([2, 4, 8], seed: 91),
                                              value: gridTensor([2, 4, 8], seed: 92))
        #expect(noQueries.output.shape == [2, 0, 8] && noQueries.weights.shape == [2, 2, 0, 4])
        // No keys: attention gives zeros, so the output is the output bias.
        let x = gridTensor([2, 3, 8], seed: 93)
        let noKeys = try layer(query: x, key: Tensor(shape: [2, 0, 8]), value: Tensor(shape: [2, 0, 8]))
        let bias = layer.outputProjection.bias!.scalars
        #expect(noKeys.shape == [2, 3, 8])
        #expect(noKeys.scalars == (0..<6).flatMap { _ in bias })
    }

    @Test("dropout reaches the attention weights, reproducibly")
    func dropout() throws {
        let layer = try gridLayer(modelDim: 8, heads: 2, seed: 95)
        let x = gridTensor([2, 6, 8], seed: 96)
        let d = try Dropout(probability: 0.5, seed: 7)
        let (a, wa) = try layer.withWeights(query: x, key: x, value: x, dropout: d)
        let (b, wb) = try layer.withWeights(query: x, key: x, value: x, dropout: d)
        #expect(a == b && wa == wb)
        let zeros = wa.scalars.filter { $0 == 0 }.count
        #expect(zeros > 30 && zeros < 114, "about half of 144 weights should be dropped, got \(zeros)")
        #expect(try layer(query: x, key: x, value: x) != a)
    }

    // MARK: Construction

    @Test("fresh layers: Xavier-uniform bounds, zero biases, shapes, reproducible from the seed")
    func freshLayer() throws {
        let layer = try MultiHeadAttention(modelDim: 64, heads: 8, kvHeads: 2, keyDim: 24, valueDim: 40, seed: 3)
        #expect(layer.queryProjection.weight.shape == [64, 64])
        #expect(layer.keyProjection.weight.shape == [16, 24])
        #expect(layer.valueProjection.weight.shape == [16, 40])
        #expect(layer.outputProjection.weight.shape == [64, 64])
        #expect((layer.headDim, layer.valueHeadDim, layer.kvHeads) == (8, 8, 2))
        for (name, p) in [("q", layer.queryProjection), ("k", layer.keyProjection),
                          ("v", layer.valueProjection), ("o", layer.outputProjection)] {
            let bound = Float((6 / Double(p.inputDim + p.outputDim)).squareRoot())
            let w = p.weight.scalars
            #expect(w.allSatisfy { Swift.abs($0) <= bound }, "\(name): a weight exceeds ±\(bound)")
            // Uniform on [−a, a]: the largest magnitude is close to a, the mean close to 0.
            #expect(w.map { Swift.abs($0) }.max()! > 0.9 * bound, "\(name): weights do not fill ±\(bound)")
            #expect(Swift.abs(w.reduce(0, +) / Float(w.count)) < 0.1 * bound, "\(name): mean far from 0")
            #expect(p.bias?.scalars.allSatisfy { $0 == 0 } == true, "\(name): bias not zero")
        }
        let again = try MultiHeadAttention(modelDim: 64, heads: 8, kvHeads: 2, keyDim: 24, valueDim: 40, seed: 3)
        let other = try MultiHeadAttention(modelDim: 64, heads: 8, kvHeads: 2, keyDim: 24, valueDim: 40, seed: 4)
        #expect(again.queryProjection.weight == layer.queryProjection.weight)
        #expect(other.queryProjection.weight != layer.queryProjection.weight)
        #expect(layer.queryProjection.weight != layer.outputProjection.weight, "projections share a stream")
        let noBias = try MultiHeadAttention(modelDim: 8, heads: 2, bias: false)
        #expect(noBias.queryProjection.bias == nil && noBias.outputProjection.bias == nil)
    }

    @Test("PyTorch packed in_proj_weight and separate q/k/v weights build the same layer")
    func pyTorchLoading() throws {
        let E = 12
        let inW = gridTensor([3 * E, E], seed: 100, magnitude: 0.25)
        let inB = gridTensor([3 * E], seed: 101)
        let outW = gridTensor([E, E], seed: 102, magnitude: 0.25)
        let outB = gridTensor([E], seed: 103)
        let packed = try MultiHeadAttention(heads: 3, inProjWeight: inW, inProjBias: inB, outProjWeight: outW, outProjBias: outB)
        func rows(_ t: Tensor<Float>, _ part: Int, width: Int) -> Tensor<Float> {
            try! Tensor(shape: width == 1 ? [E] : [E, width], scalars: Array(t.scalars[(part * E * width)..<((part + 1) * E * width)]))
        }
        #expect(packed.queryProjection.weight == rows(inW, 0, width: E))
        #expect(packed.keyProjection.weight == rows(inW, 1, width: E))
        #expect(packed.valueProjection.weight == rows(inW, 2, width: E))
        #expect(packed.keyProjection.bias == rows(inB, 1, width: 1))
        #expect(packed.valueProjection.bias == rows(inB, 2, width: 1))
        #expect(packed.outputProjection.weight == outW && packed.outputProjection.bias == outB)
        let separate = try MultiHeadAttention(heads: 3, qProjWeight: rows(inW, 0, width: E), kProjWeight: rows(inW, 1, width: E),
                                              vProjWeight: rows(inW, 2, width: E), inProjBias: inB,
                                              outProjWeight: outW, outProjBias: outB)
        let x = gridTensor([2, 4, E], seed: 104)
        #expect(try packed(query: x, key: x, value: x) == separate(query: x, key: x, value: x))
        let noBias = try MultiHeadAttention(heads: 3, inProjWeight: inW, inProjBias: nil, outProjWeight: outW, outProjBias: nil)
        #expect(noBias.queryProjection.bias == nil && noBias.outputProjection.bias == nil)
    }

    @Test("PyTorch's inverted masks: excluding(_:) and keyPadding(_:)")
    func invertedMasks() throws {
        let layer = try gridLayer(modelDim: 8, heads: 2, seed: 110)
        let x = gridTensor([2, 5, 8], seed: 111)
        // Equal up to float rounding: a boolean mask multiplies the excluded keys' zero
        // weights where key lengths and causal masks skip them.
        func expectSame(_ a: Tensor<Float>, _ b: Tensor<Float>, _ what: String) {
            #expect(a.shape == b.shape, "\(what)")
            let worst = zip(a.scalars, b.scalars).map { Swift.abs($0 - $1) }.max() ?? 0
            #expect(worst <= 1e-5, "\(what): max difference \(worst)")
        }
        // key_padding_mask: true = padding. Padding the last 2 keys of entry 1 is keyLengths [5, 3].
        let padding = try Tensor<Bool>(shape: [2, 5], scalars: [false, false, false, false, false,
                                                                false, false, false, true, true])
        expectSame(try layer(query: x, key: x, value: x, mask: .keyPadding(padding)),
                   try layer(query: x, key: x, value: x, mask: .keyLengths([5, 3])), "keyPadding")
        // attn_mask: true = excluded. The strict upper triangle is the causal mask.
        let upper = try Tensor<Bool>(shape: [5, 5], scalars: (0..<25).map { $0 % 5 > $0 / 5 })
        expectSame(try layer(query: x, key: x, value: x, mask: .excluding(upper)),
                   try layer(query: x, key: x, value: x, mask: .causal(.upperLeft)), "excluding")
        // Unbatched key_padding_mask [S].
        let single = gridTensor([5, 8], seed: 112)
        let pad1 = try Tensor<Bool>(shape: [5], scalars: [false, false, true, true, true])
        expectSame(try layer(query: single, key: single, value: single, mask: .keyPadding(pad1)),
                   try layer(query: single, key: single, value: single, mask: .keyLengths([2])), "unbatched keyPadding")
        // And the masks do something: without them the outputs differ.
        let unmasked = try layer(query: x, key: x, value: x)
        #expect(zip(unmasked.scalars, try layer(query: x, key: x, value: x, mask: .excluding(upper)).scalars)
                    .map { Swift.abs($0 - $1) }.max()! > 0.1)
    }

    @Test("PyTorch parity: a query with no key gives the output bias; float key padding; weights averaged over heads")
    func pyTorchParity() throws {
        let layer = try gridLayer(modelDim: 8, heads: 4, kvHeads: 2, seed: 120)       // nonzero biases
        let (B, L, S) = (2, 4, 4)
        let x = gridTensor([B, L, 8], seed: 121)
        let bias = layer.outputProjection.bias!.scalars
        #expect(bias.contains { $0 != 0 })

        // A query excluded from every key (attn_mask row of true) and a batch entry that is
        // all padding: zero attention rows, so the output rows are exactly the output bias.
        let excluded = try Tensor<Bool>(shape: [L, S], scalars: (0..<(L * S)).map { $0 / S == 1 })   // query 1
        let padding = try Tensor<Bool>(shape: [B, S], scalars: (0..<(B * S)).map { $0 / S == 1 })    // entry 1
        let (out, weights) = try layer.withWeights(query: x, key: x, value: x, mask: [.excluding(excluded), .keyPadding(padding)])
        for b in 0..<B {
            for i in 0..<L where b == 1 || i == 1 {
                #expect(Array(out.scalars[((b * L + i) * 8)..<((b * L + i + 1) * 8)]) == bias, "row \(b), \(i)")
                for h in 0..<4 {
                    let row = ((b * 4 + h) * L + i) * S
                    #expect(weights.scalars[row..<(row + S)].allSatisfy { $0 == 0 }, "weights \(b), \(h), \(i)")
                }
            }
        }
        #expect(out.scalars[0..<8] != bias[...], "an unmasked row is not just the bias")

        // A float key_padding_mask [B, S] is additive per batch entry: reshaped to [B, 1, 1, S].
        // The reference spells the bias out over the scores [B, Hq, L, S].
        let floatPadding = gridTensor([B, S], seed: 122, magnitude: 4)
        var spelled: [Float] = []
        for b in 0..<B { for _ in 0..<4 { for _ in 0..<L { for j in 0..<S { spelled.append(floatPadding.scalars[b * S + j]) } } } }
        let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: x, key: x, value: x,
                                               mask: [.additive(shape: [B, 4, L, S], data: spelled)])
        let (padded, paddedWeights) = try layer.withWeights(query: x, key: x, value: x,
                                                            mask: .additive(try floatPadding.reshaped([B, 1, 1, S])))
        assertClose(padded, want.output, shape: [B, L, 8], absolute: layerTolerance(layer, value: x), relative: 0,
                    "float key padding")
        // Unreshaped, [B, S] broadcasts as [L, S]: here B ≠ L, so it is refused.
        expectError(.maskShape, mentions: ["[2, 4]"]) {
            _ = try layer(query: x, key: x, value: x, mask: .additive(floatPadding))
        }

        // average_attn_weights=True: the mean over heads of the reference's weights.
        var mean = [Double](repeating: 0, count: B * L * S)
        for b in 0..<B { for h in 0..<4 { for e in 0..<(L * S) { mean[b * L * S + e] += want.weights[(b * 4 + h) * L * S + e] / 4 } } }
        let averaged = try MultiHeadAttention.averagingHeads(paddedWeights)
        assertClose(averaged, mean, shape: [B, L, S], absolute: 2e-5, relative: 0, "weights averaged over heads")
        let single = try MultiHeadAttention.averagingHeads(try paddedWeights.reshaped([B * 4, L, S]))   // rank 3: [Hq, L, S]
        #expect(single.shape == [L, S])
        expectError(.invalidRank, mentions: ["[4, 4]"]) { _ = try MultiHeadAttention.averagingHeads(Tensor(shape: [4, 4])) }
        expectError(.headWidth, mentions: ["[2, 0, 4, 4]"]) { _ = try MultiHeadAttention.averagingHeads(Tensor(shape: [2, 0, 4, 4])) }
    }

    @Test("the layer's threads: 1, 2, 3 and 64 threads each give the reference result; OpenBLAS gets at most the cores")
    func threadCounts() throws {
        let layer = try gridLayer(modelDim: 32, heads: 4, kvHeads: 2, seed: 120)
        let x = gridTensor([4, 33, 32], seed: 121)
        let want = referenceMultiHeadAttention(ReferenceWeights(layer), query: x, key: x, value: x, mask: [.causal(.upperLeft)])
        for threads in [1, 2, 3, 64] {
            let got = try AttentionThreads.withCount(threads) { try layer(query: x, key: x, value: x, mask: .causal(.upperLeft)) }
            assertClose(got, want.output, shape: [4, 33, 32], absolute: layerTolerance(layer, value: x), relative: 0,
                        "\(threads) threads")
            // The output projection set OpenBLAS's pool last (or a kernel elsewhere set it to 1).
            #expect(BLAS.openBLASThreadCount <= AttentionThreads.coreCount, "\(threads) threads")
        }
    }

    @Test("concurrent calls on one layer give the serial results (shared array pool, BLAS thread setting)")
    func concurrentCalls() throws {
        let layer = try gridLayer(modelDim: 64, heads: 4, kvHeads: 2, seed: 130)
        let inputs = (0..<6).map { gridTensor([2, 40, 64], seed: 131 + UInt64($0)) }
        let serial = try inputs.map { try layer(query: $0, key: $0, value: $0, mask: .causal(.upperLeft)) }
        let results = Mutex<[Int: Tensor<Float>]>([:])
        let box = UncheckedSendable((layer, inputs))
        DispatchQueue.concurrentPerform(iterations: 12) { i in
            let (layer, inputs) = box.value
            let x = inputs[i % 6]
            if let y = try? layer(query: x, key: x, value: x, mask: .causal(.upperLeft)) {
                results.withLock { $0[i] = y }
            }
        }
        let got = results.withLock { $0 }
        #expect(got.count == 12)
        // Equal up to rounding: under concurrency OpenBLAS's pool and the kernels' blocks may
        // run at other thread counts (and other tests change AttentionThreads meanwhile),
        // which changes summation order, not results.
        let tolerance = layerTolerance(layer, value: inputs[0])
        for (i, y) in got {
            assertClose(y, serial[i % 6].scalars.map(Double.init), shape: [2, 40, 64], absolute: tolerance, relative: 0,
                        "concurrent call \(i) against the serial result")
        }
    }

    @Test("ArrayPool reuses large arrays, resizes them and stays within its budget")
    func arrayPool() {
        let big = ArrayPool.minimumCount * 2
        var a = ArrayPool.take(count: big)
        a[0] = 42
        let address = a.withUnsafeBufferPointer { $0.baseAddress }
        ArrayPool.recycle(a)
        // Another test may take it first (the pool is shared): accept either outcome, but a
        // reused array must have the asked count and keep its storage.
        let b = ArrayPool.take(count: big - 10)
        #expect(b.count == big - 10)
        if b.withUnsafeBufferPointer({ $0.baseAddress }) == address { #expect(b.capacity >= big) }
        let small = ArrayPool.take(count: 10)
        #expect(small.count == 10)
        // Over budget, the pool drops arrays rather than growing past it.
        for _ in 0..<6 { ArrayPool.recycle([Float](repeating: 0, count: ArrayPool.maximumFloats / 4)) }
        #expect(ArrayPool.pooledFloats <= ArrayPool.maximumFloats)
    }
}
