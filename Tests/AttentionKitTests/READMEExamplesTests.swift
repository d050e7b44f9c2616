import AttentionKit
import Foundation
import Testing

// The code of README.md's "Multi-head attention" section, compiled and run here. Each test
// holds one README snippet verbatim between the `README` markers; what comes before the
// first marker supplies the inputs the README leaves to the reader (xs, ms, decoderStates, prompt, the
// PyTorch tensors, promptStates, nextState). If you edit a snippet, edit it in both places.

/// Deterministic stand-in data for the README's inputs.
private func data(_ count: Int, seed: UInt64) -> [Float] { normalTensor([count], seed: seed).scalars }

@Suite("README examples")
struct READMEExamplesTests {
    @Test("encoder self-attention")
    func encoder() throws {
        let xs = data(2 * 10 * 512, seed: 1)
        // README: encoder self-attention
        let mha = try MultiHeadAttention(modelDim: 512, heads: 8, seed: 1)   // Xavier weights, zero biases
        let x = try Tensor<Float>(shape: [2, 10, 512], scalars: xs)         // [B, L, E]: 2 sequences padded to 10
        let encoded = try mha(query: x, key: x, value: x, mask: .keyLengths([10, 7]))
        print(encoded.shape)                                                 // [2, 10, 512]
        // README end
        #expect(encoded.shape == [2, 10, 512])
        #expect(encoded.scalars.allSatisfy { $0.isFinite })
    }

    @Test("decoder causal self-attention")
    func decoder() throws {
        let mha = try MultiHeadAttention(modelDim: 512, heads: 8, seed: 1)
        let x = try Tensor<Float>(shape: [2, 10, 512], scalars: data(2 * 10 * 512, seed: 2))
        // README: decoder causal self-attention
        let (y, weights) = try mha.withWeights(query: x, key: x, value: x, mask: .causal(.upperLeft))
        print(y.shape, weights.shape)       // [2, 10, 512] [2, 8, 10, 10]; weights[b, h, i, j] = 0 for j > i
        // README end
        #expect(y.shape == [2, 10, 512] && weights.shape == [2, 8, 10, 10])
        #expect((0..<160).allSatisfy { row in ((row % 10 + 1)..<10).allSatisfy { weights.scalars[row * 10 + $0] == 0 } })
    }

    @Test("encoder-decoder cross-attention")
    func cross() throws {
        let x = try Tensor<Float>(shape: [2, 10, 512], scalars: data(2 * 10 * 512, seed: 3))
        let ms = data(2 * 30 * 768, seed: 4)
        // README: encoder-decoder cross-attention
        let cross = try MultiHeadAttention(modelDim: 512, heads: 8, keyDim: 768, valueDim: 768, seed: 2)
        let memory = try Tensor<Float>(shape: [2, 30, 768], scalars: ms)    // encoder output [B, S, kdim]
        let attended = try cross(query: x, key: memory, value: memory, mask: .keyLengths([30, 21]))
        print(attended.shape)                                                // [2, 10, 512]
        // README end
        #expect(attended.shape == [2, 10, 512])
    }

    @Test("cross-attention over a memory projected once")
    func crossCache() throws {
        let x = try Tensor<Float>(shape: [2, 10, 512], scalars: data(2 * 10 * 512, seed: 11))
        let ms = data(2 * 30 * 768, seed: 12)
        let cross = try MultiHeadAttention(modelDim: 512, heads: 8, keyDim: 768, valueDim: 768, seed: 2)
        let memory = try Tensor<Float>(shape: [2, 30, 768], scalars: ms)
        // Step t's decoder state of each batch entry: row t of x.
        func decoderStates(_ t: Int) -> [Float] {
            (0..<2).flatMap { b in x.scalars[((b * 10 + t) * 512)..<((b * 10 + t + 1) * 512)] }
        }
        // README: cross-attention over a cached memory
        let memoryCache = try cross.makeCache(key: memory, value: memory)   // K, V projected once: 30 positions
        var outputs: [Tensor<Float>] = []
        for step in 0..<3 {
            let states = try Tensor<Float>(shape: [2, 1, 512], scalars: decoderStates(step))   // [B, 1, E]
            outputs.append(try cross.attend(states, to: memoryCache, mask: .keyLengths([30, 21])))  // [2, 1, 512] each
        }
        // README end
        // The steps' rows equal the full call's rows 0, 1, 2.
        let full = try cross(query: x, key: memory, value: memory, mask: .keyLengths([30, 21]))
        let scale = full.scalars.map { Swift.abs($0) }.max()!
        for (t, output) in outputs.enumerated() {
            let y = output.scalars
            #expect(output.shape == [2, 1, 512])
            let want = decoderRows(full, t)
            let worst = zip(y, want).map { Swift.abs($0 - $1) }.max()!
            #expect(worst <= 1e-5 * max(1, scale), "step \(t): max difference \(worst)")
        }
        #expect(memoryCache.count == 30)
        func decoderRows(_ t: Tensor<Float>, _ row: Int) -> [Float] {
            (0..<2).flatMap { b in t.scalars[((b * 10 + row) * 512)..<((b * 10 + row + 1) * 512)] }
        }
    }

    @Test("incremental decoding with the KV cache")
    func kvCache() throws {
        let prompt = try Tensor<Float>(shape: [1, 20, 256], scalars: data(20 * 256, seed: 5))
        // README: incremental decoding
        let gqa = try MultiHeadAttention(modelDim: 256, heads: 8, kvHeads: 2, seed: 3)   // grouped-query
        var cache = gqa.makeCache(batch: 1, capacity: 64)
        var h = try gqa.decode(prompt, cache: &cache)       // prompt [1, 20, 256]: all 20 positions in one step
        for _ in 0..<5 {
            // Your model turns the last output into the next token's input; here, the output itself.
            let next = try Tensor<Float>(shape: [1, 1, 256], scalars: Array(h.scalars.suffix(256)))
            h = try gqa.decode(next, cache: &cache)         // [1, 1, 256]: attends to every cached position
        }
        print(cache.count)                                  // 25
        // README end
        #expect(cache.count == 25 && h.shape == [1, 1, 256] && cache.capacity == 64)
    }

    @Test("loading PyTorch weights, with PyTorch's inverted masks")
    func pyTorch() throws {
        let (E, B, L) = (512, 2, 10)
        let inProjWeight = try Tensor<Float>(shape: [3 * E, E], scalars: data(3 * E * E, seed: 6).map { $0 * 0.05 })
        let inProjBias = try Tensor<Float>(shape: [3 * E], scalars: data(3 * E, seed: 7))
        let outProjWeight = try Tensor<Float>(shape: [E, E], scalars: data(E * E, seed: 8).map { $0 * 0.05 })
        let outProjBias = try Tensor<Float>(shape: [E], scalars: data(E, seed: 9))
        let x = try Tensor<Float>(shape: [B, L, E], scalars: data(B * L * E, seed: 10))
        let pad = try Tensor<Bool>(shape: [B, L], scalars: (0..<(B * L)).map { $0 >= 17 })   // entry 1: last 3 are padding
        let causal = try Tensor<Bool>(shape: [L, L], scalars: (0..<(L * L)).map { $0 % L > $0 / L })
        // README: PyTorch weights
        // From the state_dict of torch.nn.MultiheadAttention(512, 8, batch_first=True):
        let mha = try MultiHeadAttention(heads: 8,
                                         inProjWeight: inProjWeight,     // in_proj_weight  [3E, E]
                                         inProjBias: inProjBias,         // in_proj_bias    [3E]
                                         outProjWeight: outProjWeight,   // out_proj.weight [E, E]
                                         outProjBias: outProjBias)       // out_proj.bias   [E]
        // PyTorch: mha(x, x, x, key_padding_mask=pad, attn_mask=causal, need_weights=False)[0]
        let out = try mha(query: x, key: x, value: x,
                          mask: [.keyPadding(pad),        // pad    [B, S] Bool, true = padding
                                 .excluding(causal)])     // causal [L, S] Bool, true = excluded
        // README end
        // The same exclusions in AttentionKit's own terms; equal up to float rounding (the
        // boolean mask multiplies the excluded keys' zero weights, key lengths skip them).
        let same = try mha(query: x, key: x, value: x, mask: [.keyLengths([10, 7]), .causal(.upperLeft)])
        let scale = same.scalars.map { Swift.abs($0) }.max()!
        let worst = zip(out.scalars, same.scalars).map { Swift.abs($0 - $1) }.max()!
        #expect(out.shape == [2, 10, 512] && worst <= 1e-6 * scale, "max difference \(worst), max |output| \(scale)")
        let unmasked = try mha(query: x, key: x, value: x)
        #expect(zip(out.scalars, unmasked.scalars).map { Swift.abs($0 - $1) }.max()! > 1e-2 * scale, "the masks changed nothing")
    }

    @Test("rotary embeddings: a Llama-style layer decodes a prompt and a token")
    func rotary() throws {
        let (E, Hq, Hkv, D) = (256, 8, 2, 32)
        let qProj = try Tensor<Float>(shape: [Hq * D, E], scalars: data(Hq * D * E, seed: 20).map { $0 * 0.05 })
        let kProj = try Tensor<Float>(shape: [Hkv * D, E], scalars: data(Hkv * D * E, seed: 21).map { $0 * 0.05 })
        let vProj = try Tensor<Float>(shape: [Hkv * D, E], scalars: data(Hkv * D * E, seed: 22).map { $0 * 0.05 })
        let oProj = try Tensor<Float>(shape: [E, Hq * D], scalars: data(E * Hq * D, seed: 23).map { $0 * 0.05 })
        let x = try Tensor<Float>(shape: [1, 13, E], scalars: data(13 * E, seed: 24))
        let promptStates = try Tensor<Float>(shape: [1, 12, E], scalars: Array(x.scalars[0..<(12 * E)]))
        let nextState = try Tensor<Float>(shape: [1, 1, E], scalars: Array(x.scalars[(12 * E)...]))
        // README: rotary embeddings
        // From a Hugging Face LlamaAttention: q_proj, k_proj, v_proj, o_proj (no biases), rope_theta.
        let llama = try MultiHeadAttention(heads: 8, kvHeads: 2,
                                           queryProjection: Linear(weight: qProj),   // [Hq·D, E]  [256, 256]
                                           keyProjection: Linear(weight: kProj),     // [Hkv·D, E] [64, 256]
                                           valueProjection: Linear(weight: vProj),   // [Hkv·D, E] [64, 256]
                                           outputProjection: Linear(weight: oProj),  // [E, Hq·D]  [256, 256]
                                           rotary: RotaryEmbedding(dimensions: 32, base: 10_000, pairing: .halves))
        var llamaCache = llama.makeCache(batch: 1, capacity: 256)
        let first = try llama.decode(promptStates, cache: &llamaCache)   // [1, 12, 256]: positions 0 ..< 12
        let next = try llama.decode(nextState, cache: &llamaCache)       // [1, 1, 256]: position 12
        // README end
        #expect(first.shape == [1, 12, 256] && next.shape == [1, 1, 256] && llamaCache.count == 13)
        let want = referenceMultiHeadAttention(ReferenceWeights(llama), query: x, key: x, value: x, mask: [.causal(.upperLeft)])
        let decoded = try Tensor<Float>(shape: [1, 13, E], scalars: first.scalars + next.scalars)
        assertClose(decoded, want.output, shape: [1, 13, E], absolute: layerTolerance(llama, value: x), relative: 0,
                    "Llama-style layer, decoded")
    }

    @Test("README.md's multi-head attention snippets are exactly the code of these tests")
    func readmeMatches() throws {
        let readme = try readmeText(besides: #filePath)
        // The ```swift blocks of the "## Multi-head attention" section, and this file's snippets.
        let section = try #require(readme.components(separatedBy: "\n## Multi-head attention\n").dropFirst().first)
            .components(separatedBy: "\n## ").first!
        let blocks = swiftBlocks(section)
        let snippets = try readmeSnippets(in: #filePath).map(\.code)
        #expect(blocks.count == 7 && snippets.count == 7, "\(blocks.count) README blocks, \(snippets.count) test snippets")
        for (block, snippet) in zip(blocks, snippets) {
            #expect(block == snippet, "README block differs from its test:\n\(block)\n---\n\(snippet)")
        }
    }
}
