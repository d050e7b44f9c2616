import AttentionKit
import Foundation
import Testing

// The first example of README.md, compiled and run here: the region between the `README`
// markers below is the README's block without its `import AttentionKit` line (which cannot
// stand inside a function); what comes before the markers supplies qs, ks and vs.

@Suite("README introduction")
struct READMEIntroTests {
    @Test("the scaled dot-product attention example")
    func example() throws {
        let qs = normalTensor([2 * 8 * 128 * 64], seed: 21).scalars
        let ks = normalTensor([2 * 8 * 128 * 64], seed: 22).scalars
        let vs = normalTensor([2 * 8 * 128 * 64], seed: 23).scalars
        // README: introduction
        let q = try Tensor<Float>(shape: [2, 8, 128, 64], scalars: qs)        // [B, Hq, L, Dk], row-major
        let k = try Tensor<Float>(shape: [2, 8, 128, 64], scalars: ks)        // [B, Hkv, S, Dk]
        let v = try Tensor<Float>(shape: [2, 8, 128, 64], scalars: vs)        // [B, Hkv, S, Dv]
        let out = try scaledDotProductAttention(query: q, key: k, value: v,
                                                mask: [.causal(.upperLeft), .keyLengths([128, 97])])
        let (out2, weights) = try scaledDotProductAttentionWithWeights(query: q, key: k, value: v)
        print(out.shape, weights.shape)                                      // [2, 8, 128, 64] [2, 8, 128, 128]
        // README end
        #expect(out.shape == [2, 8, 128, 64] && out2.shape == [2, 8, 128, 64] && weights.shape == [2, 8, 128, 128])
        // The printed comment's claim, and the masked call against the float64 reference.
        let want = referenceAttention(query: q, key: k, value: v, mask: [.causal(.upperLeft), .keyLengths([128, 97])])
        assertClose(out, want.output, shape: [2, 8, 128, 64], absolute: outputTolerance(v), "README example")
    }

    @Test("README.md's first block is exactly the code of the test above")
    func readmeMatches() throws {
        let block = try #require(swiftBlocks(try readmeText(besides: #filePath)).first)
        #expect(block.hasPrefix("import AttentionKit\n\n"), "the README's first block starts with the import")
        let body = String(block.dropFirst("import AttentionKit\n\n".count))
        let snippet = try #require(try readmeSnippets(in: #filePath).first { $0.name == "introduction" }).code
        #expect(body == snippet, "README's first block differs from its test:\n\(body)\n---\n\(snippet)")
    }
}
