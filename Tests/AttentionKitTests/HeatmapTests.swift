// AttentionHeatmap: the SVG is well-formed XML (checked with Foundation's XMLParser), every
// cell carries the weight it stands for (exactly, or the block mean/maximum computed here in
// float64 when downsampled), colours follow the viridis scale, and bad arguments throw.

import AttentionKit
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing

// MARK: - Reading SVG back

struct SVGCell: CustomStringConvertible {
    var query: String, key: String
    var weight: Float
    var fill: String
    var x: Int, y: Int, size: Int
    var panel: Int

    var description: String { "cell(q \(query), k \(key), w \(weight), \(fill))" }

    /// The first and last position of a `data-query`/`data-key` value ("5" or "4-7").
    static func bounds(_ text: String) -> (Int, Int) {
        let parts = text.split(separator: "-").map { Int($0)! }
        return (parts[0], parts.last!)
    }
}

struct ParsedSVG {
    var rootName = ""
    var rootAttributes: [String: String] = [:]
    var cells: [SVGCell] = []
    var texts: [String] = []
    var panelHeads: [Int?] = []
    var elementCount = 0
    /// Every text's baseline `y` (nil for rotated texts placed by a transform), in order.
    var textBaselines: [(text: String, y: Double?)] = []
    /// The legend's colour bar, and the `y` of its tick marks.
    var legendBar: (y: Double, height: Double)?
    var legendTickYs: [Double] = []
}

struct SVGParseError: Error, CustomStringConvertible { let description: String }

private final class SVGCollector: NSObject, XMLParserDelegate {
    var parsed = ParsedSVG()
    var text = ""
    var inText = false
    var panel = -1
    var problems: [String] = []
    var textY: Double?
    var inLegend = false

    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?,
                qualifiedName: String?, attributes: [String: String] = [:]) {
        parsed.elementCount += 1
        if parsed.elementCount == 1 {
            parsed.rootName = name
            parsed.rootAttributes = attributes
        }
        switch name {
        case "g" where attributes["data-panel"] != nil:
            panel = Int(attributes["data-panel"]!)!
            parsed.panelHeads.append(attributes["data-head"].map { Int($0)! })
        case "rect" where attributes["data-weight"] != nil:
            guard let weight = Float(attributes["data-weight"]!), let x = Int(attributes["x"] ?? ""),
                  let y = Int(attributes["y"] ?? ""), let size = Int(attributes["width"] ?? ""),
                  attributes["height"] == attributes["width"],
                  let query = attributes["data-query"], let key = attributes["data-key"], let fill = attributes["fill"]
            else {
                problems.append("malformed cell \(attributes)")
                return
            }
            parsed.cells.append(SVGCell(query: query, key: key, weight: weight, fill: fill, x: x, y: y, size: size, panel: panel))
        case "text":
            inText = true
            text = ""
            textY = attributes["y"].flatMap(Double.init)
        case "g" where attributes["data-legend"] != nil:
            inLegend = true
        case "rect" where inLegend && attributes["fill"] == "url(#viridis)":
            parsed.legendBar = (Double(attributes["y"] ?? "") ?? .nan, Double(attributes["height"] ?? "") ?? .nan)
        case "line" where inLegend:
            parsed.legendTickYs.append(Double(attributes["y1"] ?? "") ?? .nan)
        default:
            break
        }
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        if inText { text += string }
    }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        if name == "text" {
            parsed.texts.append(text)
            parsed.textBaselines.append((text, textY))
            inText = false
        }
        if name == "g" { inLegend = false }
    }
}

/// Parses an SVG document with XMLParser; throws if it is not well-formed XML.
func parseSVG(_ data: Data) throws -> ParsedSVG {
    let parser = XMLParser(data: data)
    let collector = SVGCollector()
    parser.delegate = collector
    parser.shouldProcessNamespaces = true
    guard parser.parse() else {
        throw SVGParseError(description: "not well-formed XML: \(parser.parserError.map { "\($0)" } ?? "unknown error") "
                            + "at line \(parser.lineNumber), column \(parser.columnNumber)")
    }
    guard collector.problems.isEmpty else { throw SVGParseError(description: collector.problems.joined(separator: "; ")) }
    return collector.parsed
}

/// Relative luminance of "#rrggbb" (sRGB, linearised).
private func luminance(_ hex: String) -> Double {
    let v = Int(hex.dropFirst(), radix: 16)!
    func channel(_ shift: Int) -> Double {
        let c = Double((v >> shift) & 255) / 255
        return c <= 0.04045 ? c / 12.92 : Foundation.pow((c + 0.055) / 1.055, 2.4)
    }
    return 0.2126 * channel(16) + 0.7152 * channel(8) + 0.0722 * channel(0)
}

// MARK: - Tests

@Suite("Attention heatmaps")
struct HeatmapTests {
    @Test("one head: well-formed SVG whose cells carry exactly the weights, in grid order")
    func cellsMatchWeights() throws {
        let (B, H, L, S) = (2, 3, 5, 7)
        let q = normalTensor([B, H, L, 4], seed: 1), k = normalTensor([B, H, S, 4], seed: 2)
        let (_, weights) = try scaledDotProductAttentionWithWeights(query: q, key: k, value: k, mask: .causal(.lowerRight))
        let heatmap = try AttentionHeatmap(weights: weights, batch: 1, head: 2)
        let svg = try parseSVG(Data(heatmap.svg().utf8))
        #expect(svg.rootName == "svg")
        #expect(svg.cells.count == L * S)
        #expect(heatmap.cellCounts == (L, S))
        for cell in svg.cells {
            let i = Int(cell.query)!, j = Int(cell.key)!
            let want = weights.scalars[((1 * H + 2) * L + i) * S + j]
            #expect(cell.weight.bitPattern == want.bitPattern, "cell (\(i), \(j)): \(cell.weight) vs \(want)")
        }
        // Every (i, j) once; x grows with j and y with i, one cell size apart.
        #expect(Set(svg.cells.map { "\($0.query),\($0.key)" }).count == L * S)
        let origin = svg.cells.first { $0.query == "0" && $0.key == "0" }!
        for cell in svg.cells {
            #expect(cell.x == origin.x + Int(cell.key)! * origin.size && cell.y == origin.y + Int(cell.query)! * origin.size)
        }
        #expect(svg.texts.contains("Attention weights"))
        #expect(svg.texts.contains { $0.contains("weights [2, 3, 5, 7] · batch 1, head 2") })
    }

    @Test("colours: viridis from the smallest to the largest value, brighter for larger weights")
    func colours() throws {
        let weights = try Tensor<Float>(shape: [4, 4], scalars: (0..<16).map { Float($0) / 30 })
        let svg = try parseSVG(Data(try AttentionHeatmap(weights: weights).svg().utf8))
        let byWeight = svg.cells.sorted { $0.weight < $1.weight }
        #expect(byWeight.first!.fill == "#440154")          // viridis(0), matplotlib's table
        #expect(byWeight.last!.fill == "#fde725")           // viridis(1)
        for (a, b) in zip(byWeight, byWeight.dropFirst()) {
            #expect(luminance(a.fill) < luminance(b.fill), "\(a) is not darker than \(b)")
        }
        // A fixed range 0...1 puts 0.5 in the middle of the scale.
        let half = try Tensor<Float>(shape: [1, 3], scalars: [0.5, 2, -1])
        let fixed = try parseSVG(Data(try AttentionHeatmap(weights: half, colorRange: .fixed(lower: 0, upper: 1)).svg().utf8))
        #expect(fixed.cells.map(\.fill) == ["#21918c", "#fde725", "#440154"])   // viridis(0.5); clamped
        #expect(fixed.texts.contains { $0.contains("linear from 0 to 1 (fixed range") })
    }

    @Test("a grid of every head shares one scale and labels each panel")
    func grid() throws {
        let (H, L, S) = (8, 6, 6)
        let q = normalTensor([1, H, L, 8], seed: 3), k = normalTensor([1, 2, S, 8], seed: 4)
        let (_, weights) = try scaledDotProductAttentionWithWeights(query: q, key: k, value: k)
        let labels = (0..<H).map { "head \($0) · kv \($0 / 4)" }
        let heatmap = try AttentionHeatmap(weights: weights, headLabels: labels)
        let svg = try parseSVG(Data(heatmap.svg().utf8))
        #expect(svg.panelHeads == (0..<H).map { $0 })
        #expect(svg.cells.count == H * L * S)
        for label in labels { #expect(svg.texts.contains(label)) }
        for cell in svg.cells {
            let want = weights.scalars[(svg.panelHeads[cell.panel]! * L + Int(cell.query)!) * S + Int(cell.key)!]
            #expect(cell.weight == want)
        }
        #expect(heatmap.colorBounds.upper == weights.scalars.max()!)
        #expect(svg.texts.filter { $0 == "weight" }.count == 1)     // one legend
    }

    @Test("large matrices are downsampled by block mean or maximum, and the figure says so",
          arguments: [AttentionHeatmap.Downsampling.mean, .maximum])
    func downsampling(method: AttentionHeatmap.Downsampling) throws {
        let (L, S) = (100, 70)
        let weights = normalTensor([L, S], seed: 5)
        let heatmap = try AttentionHeatmap(weights: weights, queryLabels: (0..<L).map { "t\($0)" },
                                           maximumCells: 30, downsampling: method)
        #expect(heatmap.cellCounts == (30, 30))
        let svg = try parseSVG(Data(heatmap.svg().utf8))
        #expect(svg.cells.count == 900)
        var covered = [Int](repeating: 0, count: L * S)
        for cell in svg.cells {
            let (i0, i1) = SVGCell.bounds(cell.query), (j0, j1) = SVGCell.bounds(cell.key)
            #expect((3...4).contains(i1 - i0 + 1) && (2...3).contains(j1 - j0 + 1), "block \(cell)")
            var sum = 0.0, largest = -Double.infinity
            for i in i0...i1 {
                for j in j0...j1 {
                    covered[i * S + j] += 1
                    sum += Double(weights.scalars[i * S + j])
                    largest = max(largest, Double(weights.scalars[i * S + j]))
                }
            }
            let want = method == .mean ? sum / Double((i1 - i0 + 1) * (j1 - j0 + 1)) : largest
            #expect(abs(Double(cell.weight) - want) <= 1e-6 * max(1, abs(want)), "\(cell) vs \(want)")
        }
        #expect(covered.allSatisfy { $0 == 1 }, "blocks must cover each weight once")
        let name = method == .mean ? "block mean" : "block maximum"
        #expect(svg.texts.contains("Downsampled for display: 100×70 drawn as 30×30 cells, each the \(name) of 3–4 queries × 2–3 keys."))
        #expect(!svg.texts.contains { $0.hasPrefix("The axes are scaled differently") }, "3.3 against 2.3 per cell is close enough")
        // Token labels are not drawn for downsampled rows; positions are.
        #expect(!svg.texts.contains("t5") && svg.texts.contains("0"))
    }

    /// A 1000 × 3000 lower-right causal matrix drawn as 64 × 64 cells of about 16 queries ×
    /// 47 keys: the note says the axes are scaled differently and which way slopes look.
    @Test("unequal blocks: the notes say the axes are scaled differently")
    func unequalBlocks() throws {
        let (L, S) = (40, 120)
        let weights = try Tensor<Float>(shape: [L, S], scalars: (0..<(L * S)).map { n in n % S <= n / S + S - L ? 1 : 0 })
        let wide = try parseSVG(Data(AttentionHeatmap(weights: weights, maximumCells: 10).svg().utf8))
        #expect(wide.texts.contains("The axes are scaled differently, so slopes such as a causal edge look steeper than in the full matrix."),
                "\(wide.texts)")
        let transposed = try Tensor<Float>(shape: [S, L], scalars: (0..<(L * S)).map { n in weights.scalars[(n % L) * S + n / L] })
        let tall = try parseSVG(Data(AttentionHeatmap(weights: transposed, maximumCells: 10).svg().utf8))
        #expect(tall.texts.contains { $0.contains("look flatter") }, "\(tall.texts)")
    }

    @Test("token labels dropped by downsampling are mentioned in the notes")
    func droppedLabelsNote() throws {
        let weights = normalTensor([20, 10], seed: 6)
        let queries = (0..<20).map { "q\($0)" }, keys = (0..<10).map { "k\($0)" }
        func notes(_ heatmap: AttentionHeatmap) throws -> [String] {
            try parseSVG(Data(heatmap.svg().utf8)).texts.filter { $0.contains("labels are not drawn") }
        }
        // Rows downsampled (20 > 12), columns not: the query labels go, the key labels stay.
        let rowsOnly = try AttentionHeatmap(weights: weights, queryLabels: queries, keyLabels: keys, maximumCells: 12)
        #expect(try notes(rowsOnly) == ["Query labels are not drawn because the query axis is downsampled; positions are shown instead."])
        #expect(try parseSVG(Data(rowsOnly.svg().utf8)).texts.contains("k3"))
        let both = try AttentionHeatmap(weights: weights, queryLabels: queries, keyLabels: keys, maximumCells: 8)
        #expect(try notes(both) == ["Query and key labels are not drawn because both axes are downsampled; positions are shown instead."])
        let keysOnly = try AttentionHeatmap(weights: weights, keyLabels: keys, maximumCells: 8)
        #expect(try notes(keysOnly) == ["Key labels are not drawn because the key axis is downsampled; positions are shown instead."])
        // Nothing dropped, or no labels given: no such note.
        #expect(try notes(AttentionHeatmap(weights: weights, queryLabels: queries, keyLabels: keys)).isEmpty)
        #expect(try notes(AttentionHeatmap(weights: weights, maximumCells: 8)).isEmpty)
    }

    @Test("the notes start below the legend, also for matrices shorter than the legend",
          arguments: [[2, 2], [1, 7], [1, 1], [1, 4, 1, 9], [40, 40]] as [[Int]])
    func notesBelowLegend(shape: [Int]) throws {
        let weights = normalTensor(shape, seed: 7)
        let svg = try parseSVG(Data(try AttentionHeatmap(weights: weights).svg().utf8))
        let bar = try #require(svg.legendBar)
        // The lowest legend label's baseline sits 4 px below its tick; a note's text rises
        // about 11 px (the font size) above its baseline.
        let legendBottom = max(bar.y + bar.height, (svg.legendTickYs.max() ?? 0) + 4)
        let notes = svg.textBaselines.filter { $0.text.hasPrefix("Colour:") || $0.text.hasPrefix("Downsampled") }
        #expect(!notes.isEmpty)
        for note in notes {
            let y = try #require(note.y)
            #expect(y - 11 > legendBottom, "\(shape): note at \(y) overlaps the legend ending at \(legendBottom)")
        }
        // The document is tall enough to show the notes.
        let height = try #require(svg.rootAttributes["height"].flatMap(Double.init))
        #expect(notes.allSatisfy { $0.y! < height })
    }

    @Test("legend ticks are spread over the bar even for a range wider than Float can subtract")
    func hugeLegendRange() throws {
        let weights = try Tensor<Float>(shape: [2, 2], scalars: [-3e38, 0, 1e38, 3e38])
        for range in [AttentionHeatmap.ColorRange.automatic, .fixed(lower: -3e38, upper: 3e38)] {
            let svg = try parseSVG(Data(try AttentionHeatmap(weights: weights, colorRange: range).svg().utf8))
            let bar = try #require(svg.legendBar)
            let ys = svg.legendTickYs
            #expect(ys.count >= 3, "\(ys)")
            #expect(ys.allSatisfy { $0.isFinite && $0 >= bar.y - 0.01 && $0 <= bar.y + bar.height + 0.01 }, "\(ys)")
            #expect(Set(ys).count == ys.count, "ticks coincide: \(ys)")
            // -3e38 at the bottom, 3e38 at the top, 0 in the middle.
            #expect(abs(ys.max()! - (bar.y + bar.height)) < 0.01 && abs(ys.min()! - bar.y) < 0.01, "\(ys)")
            let middle = bar.y + bar.height / 2
            #expect(svg.textBaselines.contains { $0.text == "0" && $0.y.map { abs($0 - 4 - middle) < 0.01 } == true },
                    "no legend label 0 at the middle of the bar: \(ys)")
        }
    }

    /// Colour ranges far narrower than 1e-12, and one value throughout far from 0: a few
    /// ticks on the bar (the legend's loop once ran for billions of steps on these), and
    /// labels whose rounded mantissa reaches 10 written as the next power (1e-5, not 10e-6).
    @Test("tiny and degenerate colour ranges give a few legend ticks on the bar", .timeLimit(.minutes(1)))
    func tinyLegendRanges() throws {
        func values(_ v: [Float]) throws -> Tensor<Float> { try Tensor(shape: [2, 2], scalars: v) }
        let cases: [(String, Tensor<Float>, AttentionHeatmap.ColorRange)] = [
            ("1e-20", try values([0, 1e-20, 0, 0]), .automatic),
            ("-1e-20", try values([0, -1e-20, 0, 0]), .automatic),
            ("subnormal", try values([0, .leastNonzeroMagnitude, 0, 0]), .automatic),
            ("fixed 1e-30", try values([0, 0, 0, 0]), .fixed(lower: 0, upper: 1e-30)),
            ("fixed 2e-12", try values([0, 0, 0, 0]), .fixed(lower: 0, upper: 2e-12)),
            ("all -1e30", try values([-1e30, -1e30, -1e30, -1e30]), .automatic),
            ("fixed 1e-5", try values([0, 1e-5, 0, 0]), .fixed(lower: 0, upper: 1e-5)),
        ]
        for (name, weights, range) in cases {
            let heatmap = try AttentionHeatmap(weights: weights, colorRange: range)
            #expect(heatmap.colorBounds.upper > heatmap.colorBounds.lower, "\(name)")
            let svg = try parseSVG(Data(heatmap.svg().utf8))
            let bar = try #require(svg.legendBar)
            let ys = svg.legendTickYs
            #expect((2...9).contains(ys.count), "\(name): \(ys.count) ticks")
            #expect(ys.allSatisfy { $0.isFinite && $0 >= bar.y - 0.01 && $0 <= bar.y + bar.height + 0.01 }, "\(name): \(ys)")
            #expect(!svg.texts.contains { $0.hasPrefix("10e") || $0.hasPrefix("-10e") || $0.contains("to 10e") }, "\(name): \(svg.texts)")
        }
        let fixed = try AttentionHeatmap(weights: values([0, 1e-5, 0, 0]), colorRange: .fixed(lower: 0, upper: 1e-5))
        #expect(try parseSVG(Data(fixed.svg().utf8)).texts.contains("1e-5"))
    }

    @Test("labels are escaped, odd values are drawn, the file write matches svg()")
    func labelsAndValues() throws {
        let weights = try Tensor<Float>(shape: [1, 3, 4], scalars: [0, .nan, 1, -0.5, .infinity, 2, 3, 4, 5, 6, 7, 8])
        let heatmap = try AttentionHeatmap(weights: weights, title: "<script> & \"quotes\" 'x'\u{1}",
                                           queryLabels: ["a<b", "c&d", "e>f"],
                                           keyLabels: ["k\"0", "k'1", "a very long token label indeed", "\u{7}"])
        let text = heatmap.svg()
        let svg = try parseSVG(Data(text.utf8))
        #expect(svg.texts.contains("<script> & \"quotes\" 'x'\u{FFFD}"))
        #expect(svg.texts.contains("a<b") && svg.texts.contains("k\"0") && svg.texts.contains("a very long t…"))
        #expect(svg.texts.contains("Grey cells are NaN."))
        #expect(svg.cells.first { $0.query == "0" && $0.key == "1" }!.fill == "#bbbbbb")
        #expect(heatmap.colorBounds == (-0.5, 8))            // finite values only
        #expect(svg.cells.first { $0.query == "1" && $0.key == "0" }!.fill == "#fde725")   // +inf clamps to the top

        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let url = directory.appendingPathComponent("w.svg")
        try heatmap.write(to: url)
        #expect(try String(contentsOf: url, encoding: .utf8) == text)
    }

    @Test("bad arguments throw named errors")
    func errors() throws {
        let w4 = try Tensor<Float>(shape: [2, 3, 4, 5])
        let cases: [(String, () throws -> AttentionHeatmap, AttentionError.Code, String)] = [
            ("rank 1", { try AttentionHeatmap(weights: Tensor<Float>(shape: [5])) }, .invalidRank, "[5]"),
            ("rank 5", { try AttentionHeatmap(weights: Tensor<Float>(shape: [1, 1, 1, 1, 1])) }, .invalidRank, "rank"),
            ("batch", { try AttentionHeatmap(weights: w4, batch: 2) }, .heatmapArgument, "batch 2 is outside 0..<2"),
            ("head", { try AttentionHeatmap(weights: w4, head: -1) }, .heatmapArgument, "head -1 is outside 0..<3"),
            ("rank-3 head", { try AttentionHeatmap(weights: Tensor<Float>(shape: [1, 4, 5]), head: 1) }, .heatmapArgument, "head 1"),
            ("empty", { try AttentionHeatmap(weights: Tensor<Float>(shape: [0, 5])) }, .heatmapArgument, "nothing to draw"),
            ("query labels", { try AttentionHeatmap(weights: w4, queryLabels: ["a"]) }, .heatmapArgument, "1 query labels for L = 4"),
            ("key labels", { try AttentionHeatmap(weights: w4, keyLabels: ["a"]) }, .heatmapArgument, "1 key labels for S = 5"),
            ("head labels", { try AttentionHeatmap(weights: w4, headLabels: []) }, .heatmapArgument, "0 head labels for H = 3"),
            ("cells", { try AttentionHeatmap(weights: w4, maximumCells: 0) }, .heatmapArgument, "maximumCells"),
            ("range", { try AttentionHeatmap(weights: w4, colorRange: .fixed(lower: 1, upper: 1)) }, .heatmapArgument, "lower < upper"),
            ("NaN range", { try AttentionHeatmap(weights: w4, colorRange: .fixed(lower: .nan, upper: 1)) }, .heatmapArgument, "finite"),
        ]
        for (name, make, code, phrase) in cases {
            guard let error = attentionError(name, make) else { continue }
            #expect(error.code == code, "\(name): \(error.code)")
            #expect(error.message.contains(phrase), "\(name): '\(error.message)' lacks '\(phrase)'")
        }
    }
}
