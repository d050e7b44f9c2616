#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A picture of attention weights: a standalone SVG heatmap of `[L, S]` weights, one row per
/// query and one column per key, for one batch entry and head or as a grid of all the heads
/// of one batch entry.
///
/// Each cell is coloured by its weight on the perceptually uniform viridis scale (dark purple
/// for the lowest value, yellow for the highest), with a colour legend, query positions `i`
/// down the left and key positions `j` along the top (or token labels), a title, and a note
/// saying how the colours were scaled and, for large matrices, how they were downsampled.
///
/// ```swift
/// let (_, weights) = try scaledDotProductAttentionWithWeights(
///     query: q, key: k, value: v, mask: .causal(.upperLeft))        // weights [B, H, L, S]
/// let heatmap = try AttentionHeatmap(weights: weights, batch: 0)     // every head of entry 0
/// try heatmap.write(to: URL(fileURLWithPath: "weights.svg"))
/// ```
///
/// Weights may have rank 4 `[B, H, L, S]`, rank 3 `[B, L, S]` or rank 2 `[L, S]`, as the
/// attention functions return them; B is the batch size, H the number of (query) heads, L the
/// number of queries and S the number of keys. Any `Float` tensor of those shapes can be
/// drawn, such as scores or an additive bias.
///
/// Large matrices are drawn with at most ``init(weights:batch:head:title:queryLabels:keyLabels:headLabels:maximumCells:downsampling:colorRange:)``'s
/// `maximumCells` cells along each axis: rows and columns are split into that many contiguous
/// blocks of nearly equal size, and each cell shows the mean (or the maximum) of its block.
/// The figure states the method and the block sizes.
///
/// The SVG is plain SVG 1.1 with no scripts or external references. Every cell is a `<rect>`
/// carrying its data: `data-query` and `data-key` (a position, or `first-last` for a
/// downsampled block) and `data-weight` (the value drawn, written so that `Float(_:)` reads
/// it back exactly).
public struct AttentionHeatmap: Sendable {
    /// How a block of weights becomes one cell when a matrix is downsampled for display.
    public enum Downsampling: String, Sendable, CaseIterable {
        /// The mean of the block: row patterns keep their mass, thin stripes fade.
        case mean
        /// The largest weight of the block: a single strong key stays visible.
        case maximum
    }

    /// Which values the colour scale spans.
    public enum ColorRange: Sendable, Equatable {
        /// From `min(0, smallest value drawn)` to the largest value drawn (finite values only),
        /// shared by all panels. An all-zero matrix spans 0 to 1.
        case automatic
        /// From `lower` (darkest) to `upper` (brightest); values outside are clamped. Use
        /// `.fixed(lower: 0, upper: 1)` to compare figures on one scale.
        case fixed(lower: Float, upper: Float)
    }

    /// One drawn matrix: a batch entry and head, after downsampling.
    struct Panel: Sendable {
        var title: String?
        var head: Int?
        var rows: Int
        var columns: Int
        /// `rows × columns` values, row-major.
        var values: [Float]
    }

    let panels: [Panel]
    let title: String
    let subtitle: String
    let notes: [String]
    let queryLength: Int
    let keyLength: Int
    let rowStarts: [Int]        // first query position of each displayed row, plus L
    let columnStarts: [Int]     // first key position of each displayed column, plus S
    let queryLabels: [String]?
    let keyLabels: [String]?
    let lower: Float
    let upper: Float

    /// Checks the arguments of ``init(weights:batch:head:title:queryLabels:keyLabels:headLabels:maximumCells:downsampling:colorRange:)``
    /// that depend only on the weights' shape, so that a caller can check them before it
    /// computes the weights (attention-bench `run` does).
    ///
    /// - Throws: ``AttentionError`` with code `.invalidRank` for a rank other than 2, 3 or 4,
    ///   and `.heatmapArgument` when `batch` or `head` is out of range, H, L or S is 0, or
    ///   `maximumCells < 1`.
    @_spi(Benchmarking)
    public static func checkSelection(weightsShape shape: [Int], batch: Int, head: Int?, maximumCells: Int) throws {
        guard (2...4).contains(shape.count) else {
            throw AttentionError(.invalidRank,
                "heatmap weights must have rank 2 [L, S], 3 [B, L, S] or 4 [B, H, L, S], got \(describe(shape))")
        }
        let B = shape.count == 2 ? 1 : shape[0]
        let H = shape.count == 4 ? shape[1] : 1
        let (L, S) = (shape[shape.count - 2], shape[shape.count - 1])
        func bad(_ message: String) -> AttentionError { argumentError(message, shape: shape) }
        guard (0..<B).contains(batch) else { throw bad("batch \(batch) is outside 0..<\(B)") }
        if let head, !(0..<H).contains(head) { throw bad("head \(head) is outside 0..<\(H)") }
        guard H > 0, L > 0, S > 0 else { throw bad("there is nothing to draw: H, L and S must be positive") }
        guard maximumCells >= 1 else { throw bad("maximumCells must be at least 1, got \(maximumCells)") }
    }

    /// A `.heatmapArgument` error naming the weights' shape.
    private static func argumentError(_ message: String, shape: [Int]) -> AttentionError {
        AttentionError(.heatmapArgument, "\(message) (weights \(describe(shape)))")
    }

    /// Prepares a heatmap of one batch entry's weights.
    ///
    /// - Parameters:
    ///   - weights: Weights `[B, H, L, S]`, `[B, L, S]` or `[L, S]`.
    ///   - batch: The batch entry to draw, in `0..<B` (0 for rank 2).
    ///   - head: The head to draw, in `0..<H`; `nil` draws every head of the entry as a grid
    ///     of panels sharing one colour scale. For rank 2 and 3 (one head) use `nil` or 0.
    ///   - title: The figure's title; by default "Attention weights".
    ///   - queryLabels: One label per query (L of them), such as tokens, drawn instead of the
    ///     query positions when the rows are not downsampled (otherwise a note says that they
    ///     were dropped).
    ///   - keyLabels: One label per key (S of them), drawn instead of the key positions when
    ///     the columns are not downsampled (otherwise a note says that they were dropped).
    ///   - headLabels: One title per head (H of them) for the panels, such as "head 3 (kv 1)"
    ///     for grouped-query attention; by default "head h".
    ///   - maximumCells: The most cells drawn along each axis (at least 1); larger matrices
    ///     are downsampled by `downsampling`.
    ///   - downsampling: How a block of weights becomes one cell.
    ///   - colorRange: The values the colour scale spans.
    /// - Throws: ``AttentionError`` with code `.invalidRank` for weights of rank other than
    ///   2, 3 or 4, and `.heatmapArgument` when `batch` or `head` is out of range, L or S is
    ///   0 (nothing to draw), a label array has the wrong count, `maximumCells < 1`, or a
    ///   fixed colour range is not finite with `lower < upper`.
    public init(
        weights: Tensor<Float>, batch: Int = 0, head: Int? = nil, title: String? = nil,
        queryLabels: [String]? = nil, keyLabels: [String]? = nil, headLabels: [String]? = nil,
        maximumCells: Int = 64, downsampling: Downsampling = .mean, colorRange: ColorRange = .automatic
    ) throws {
        let shape = weights.shape
        try Self.checkSelection(weightsShape: shape, batch: batch, head: head, maximumCells: maximumCells)
        let H = shape.count == 4 ? shape[1] : 1
        let (L, S) = (shape[shape.count - 2], shape[shape.count - 1])
        func bad(_ message: String) -> AttentionError { Self.argumentError(message, shape: shape) }
        if let queryLabels, queryLabels.count != L {
            throw bad("\(queryLabels.count) query labels for L = \(L) queries")
        }
        if let keyLabels, keyLabels.count != S { throw bad("\(keyLabels.count) key labels for S = \(S) keys") }
        if let headLabels, headLabels.count != H { throw bad("\(headLabels.count) head labels for H = \(H) heads") }
        if case .fixed(let lower, let upper) = colorRange {
            guard lower.isFinite, upper.isFinite, lower < upper else {
                throw bad("a fixed colour range needs finite lower < upper, got \(lower)...\(upper)")
            }
        }

        // Blocks: displayed row r covers query positions rowStarts[r]..<rowStarts[r + 1].
        let rows = min(L, maximumCells), columns = min(S, maximumCells)
        let rowStarts = (0...rows).map { $0 * L / rows }
        let columnStarts = (0...columns).map { $0 * S / columns }
        self.rowStarts = rowStarts
        self.columnStarts = columnStarts
        queryLength = L
        keyLength = S
        self.queryLabels = queryLabels
        self.keyLabels = keyLabels

        let heads = head.map { [$0] } ?? Array(0..<H)
        var panels: [Panel] = []
        weights.withUnsafeBufferPointer { w in
            for h in heads {
                let base = (batch * H + h) * L * S
                var values = [Float](repeating: 0, count: rows * columns)
                for r in 0..<rows {
                    for c in 0..<columns {
                        var sum = 0.0
                        var largest = -Float.infinity
                        var sawNaN = false
                        for i in rowStarts[r]..<rowStarts[r + 1] {
                            for j in columnStarts[c]..<columnStarts[c + 1] {
                                let x = w[base + i * S + j]
                                sum += Double(x)
                                if x.isNaN { sawNaN = true } else if x > largest { largest = x }
                            }
                        }
                        let count = (rowStarts[r + 1] - rowStarts[r]) * (columnStarts[c + 1] - columnStarts[c])
                        switch downsampling {
                        case .mean: values[r * columns + c] = Float(sum / Double(count))
                        case .maximum: values[r * columns + c] = sawNaN ? .nan : largest
                        }
                    }
                }
                let panelTitle = head == nil && H > 1 ? (headLabels?[h] ?? "head \(h)") : headLabels?[h]
                panels.append(Panel(title: panelTitle, head: shape.count == 4 ? h : nil,
                                    rows: rows, columns: columns, values: values))
            }
        }
        self.panels = panels

        // Colour scale.
        let finite = panels.lazy.flatMap(\.values).filter(\.isFinite)
        switch colorRange {
        case .automatic:
            let low = min(0, finite.min() ?? 0)
            var high = finite.max() ?? 1
            // One value throughout: a range of width 1, or up to 0 for values below −1 (where
            // low + 1 would round back to low, and the legend would have no span).
            if !(high > low) { high = low + max(1, -low) }
            (lower, upper) = (low, high)
        case .fixed(let low, let high):
            (lower, upper) = (low, high)
        }

        // Text.
        self.title = title ?? "Attention weights"
        var where_ = shape.count == 2 ? "" : "batch \(batch)"
        if shape.count == 4 {
            where_ += head.map { ", head \($0)" } ?? (H == 1 ? ", head 0" : ", heads 0–\(H - 1)")
        }
        subtitle = "weights \(describe(shape))" + (where_.isEmpty ? "" : " · " + where_)
            + " · \(L) queries × \(S) keys"
        var notes: [String] = []
        if rows < L || columns < S {
            func blockSizes(_ starts: [Int]) -> String {
                let sizes = zip(starts.dropFirst(), starts).map { $0 - $1 }
                let (a, b) = (sizes.min()!, sizes.max()!)
                return a == b ? "\(a)" : "\(a)–\(b)"
            }
            let method = downsampling == .mean ? "block mean" : "block maximum"
            notes.append("Downsampled for display: \(L)×\(S) drawn as \(rows)×\(columns) cells, each the \(method) of "
                + "\(blockSizes(rowStarts)) queries × \(blockSizes(columnStarts)) keys.")
            // Square cells for blocks of unequal sides: say which way slopes are distorted.
            let queriesPerCell = Double(L) / Double(rows), keysPerCell = Double(S) / Double(columns)
            if max(queriesPerCell, keysPerCell) >= 1.5 * min(queriesPerCell, keysPerCell) {
                notes.append("The axes are scaled differently, so slopes such as a causal edge look "
                    + (keysPerCell > queriesPerCell ? "steeper" : "flatter") + " than in the full matrix.")
            }
        }
        // Token labels are drawn only on axes that are not downsampled; say when some are dropped.
        let droppedQueryLabels = queryLabels != nil && rows < L
        let droppedKeyLabels = keyLabels != nil && columns < S
        if droppedQueryLabels && droppedKeyLabels {
            notes.append("Query and key labels are not drawn because both axes are downsampled; positions are shown instead.")
        } else if droppedQueryLabels {
            notes.append("Query labels are not drawn because the query axis is downsampled; positions are shown instead.")
        } else if droppedKeyLabels {
            notes.append("Key labels are not drawn because the key axis is downsampled; positions are shown instead.")
        }
        let scale = colorRange == .automatic ? "automatic range" : "fixed range"
        notes.append("Colour: viridis, linear from \(formatNumber(lower)) to \(formatNumber(upper)) (\(scale); values outside are clamped).")
        if panels.contains(where: { $0.values.contains(where: \.isNaN) }) {
            notes.append("Grey cells are NaN.")
        }
        self.notes = notes
    }

    /// The number of cells drawn along the query and key axes (after downsampling).
    public var cellCounts: (rows: Int, columns: Int) { (rowStarts.count - 1, columnStarts.count - 1) }

    /// The values at the darkest and brightest ends of the colour scale.
    public var colorBounds: (lower: Float, upper: Float) { (lower, upper) }

    /// Writes the SVG to a file, completely or not at all (through a temporary file in the
    /// same directory that is renamed over the file, which gets a new file's default
    /// permissions). A symbolic link at `url` is kept and the file it points to is replaced;
    /// a character device or FIFO there (`/dev/stdout`, a named pipe) is written into.
    ///
    /// - Parameter url: A file URL, conventionally ending in `.svg`; an existing file is replaced.
    /// - Throws: ``AttentionError`` with code `.fileAccess` when the file cannot be written;
    ///   `url` is then unchanged.
    public func write(to url: URL) throws {
        var text = svg()
        try text.withUTF8 { try writeWholeFile([UnsafeRawBufferPointer($0)], to: url) }
    }

    // MARK: - Layout

    private static let queryAxisTitle = "← query position i", shortQueryAxisTitle = "← query i"
    private static let keyAxisTitle = "key position j →"
    private var showQueryLabels: Bool { queryLabels != nil && cellCounts.rows == queryLength }
    private var showKeyLabels: Bool { keyLabels != nil && cellCounts.columns == keyLength }

    /// The standalone SVG document.
    public func svg() -> String {
        let (rows, columns) = cellCounts
        let n = panels.count
        let gridColumns = n <= 4 ? n : (n <= 8 ? 4 : Int(Double(n).squareRoot().rounded(.up)))
        let gridRows = (n + gridColumns - 1) / gridColumns
        let budget = n == 1 ? 480 : (n <= 4 ? 300 : 220)
        var cell = max(2, min(40, budget / max(rows, columns)))
        if showQueryLabels || showKeyLabels { cell = max(cell, 14) }

        let font = 11.0, charWidth = 6.2          // DejaVu Sans at 11 px: about 6.2 px per character
        let margin = 16
        let queryLabelChars = showQueryLabels ? queryLabels!.map { shortLabel($0).count }.max()! : String(queryLength - 1).count
        let keyLabelChars = showKeyLabels ? keyLabels!.map { shortLabel($0).count }.max()! : 0
        let leftGutter = 18 + Int(Double(queryLabelChars) * charWidth) + 8          // axis title + labels + tick
        // Key labels are rotated by −60° above the cells; numbers are horizontal.
        let keyLabelHeight = showKeyLabels ? Int(Double(keyLabelChars) * charWidth * 0.87) + 10 : 16
        let keyLabelOverhang = showKeyLabels ? Int(Double(keyLabelChars) * charWidth * 0.5) : 8
        let panelTitleHeight = panels.first?.title == nil ? 0 : 18
        let topGutter = panelTitleHeight + 16 + keyLabelHeight                         // title + axis title + labels
        // The axis titles need room of their own when the cells are few (a decoding step's
        // single query row, a single key): beside a short column of cells the rotated query
        // title is the short one, running down from the cells' top, and the panel is at
        // least as tall and as wide as the titles.
        func titleLength(_ title: String) -> Int { Int(Double(title.count) * charWidth) + 8 }
        let queryAxisTitle = rows * cell >= titleLength(Self.queryAxisTitle) ? Self.queryAxisTitle : Self.shortQueryAxisTitle
        let queryAxisLength = max(rows * cell, titleLength(queryAxisTitle))
        let keyTitleLength = titleLength(Self.keyAxisTitle)
        let panelWidth = leftGutter + max(columns * cell + max(16, keyLabelOverhang), keyTitleLength + 16)
        let panelHeight = topGutter + queryAxisLength + 16

        let headerHeight = 56
        let gridLeft = margin, gridTop = headerHeight
        let gridWidth = gridColumns * panelWidth, gridHeight = gridRows * panelHeight
        let legendLeft = gridLeft + gridWidth + 8
        let legendTop = gridTop + topGutter
        let legendHeight = max(120, min(320, rows * cell))
        let legendWidth = 90
        // Below the grid and below the legend, which is taller than the grid of a short matrix.
        let notesTop = max(gridTop + gridHeight, legendTop + legendHeight + margin) + 8
        let textWidth = ([title].map { Double($0.count) * 9.5 } + ([subtitle] + notes).map { Double($0.count) * charWidth })
            .max()! + Double(2 * margin)
        let width = max(legendLeft + legendWidth + margin, Int(textWidth.rounded(.up)))
        let height = max(notesTop + 16 * notes.count + margin, legendTop + legendHeight + 40)

        var out = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="\(width)" height="\(height)" \
            viewBox="0 0 \(width) \(height)" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="\(Int(font))">
            <title>\(escape(title))</title>
            <rect width="\(width)" height="\(height)" fill="#ffffff"/>
            <text x="\(margin)" y="26" font-size="16" font-weight="bold">\(escape(title))</text>
            <text x="\(margin)" y="44" fill="#444444">\(escape(subtitle))</text>

            """
        out.reserveCapacity(out.utf8.count + panels.count * rows * columns * 110)

        for (index, panel) in panels.enumerated() {
            let left = gridLeft + (index % gridColumns) * panelWidth
            let top = gridTop + (index / gridColumns) * panelHeight
            let cellsLeft = left + leftGutter, cellsTop = top + topGutter
            out += "<g data-panel=\"\(index)\"\(panel.head.map { " data-head=\"\($0)\"" } ?? "")>\n"
            if let panelTitle = panel.title {
                out += "<text x=\(quoted(cellsLeft)) y=\(quoted(top + 13)) font-size=\"13\" font-weight=\"bold\">\(escape(panelTitle))</text>\n"
            }
            // Axis titles.
            out += "<text x=\(quoted(cellsLeft)) y=\(quoted(top + panelTitleHeight + 12)) fill=\"#444444\">\(Self.keyAxisTitle)</text>\n"
            let axisY = cellsTop + queryAxisLength / 2
            out += "<text transform=\"translate(\(left + 10),\(axisY)) rotate(-90)\" text-anchor=\"middle\" fill=\"#444444\">\(queryAxisTitle)</text>\n"

            // Cells.
            out += "<g shape-rendering=\"crispEdges\">\n"
            for r in 0..<rows {
                let queries = range(rowStarts, r)
                for c in 0..<columns {
                    let value = panel.values[r * columns + c]
                    out += "<rect x=\"\(cellsLeft + c * cell)\" y=\"\(cellsTop + r * cell)\" width=\"\(cell)\" height=\"\(cell)\" "
                        + "fill=\"\(color(value))\" data-query=\"\(queries)\" data-key=\"\(range(columnStarts, c))\" data-weight=\"\(value)\"/>\n"
                }
            }
            out += "</g>\n<rect x=\"\(cellsLeft)\" y=\"\(cellsTop)\" width=\"\(columns * cell)\" height=\"\(rows * cell)\" fill=\"none\" stroke=\"#888888\" stroke-width=\"0.5\"/>\n"

            // Query ticks (left) and key ticks (top).
            let pixelsPerQuery = Double(rows * cell) / Double(queryLength)
            let pixelsPerKey = Double(columns * cell) / Double(keyLength)
            if showQueryLabels {
                for (i, label) in queryLabels!.enumerated() {
                    let y = Double(cellsTop) + (Double(i) + 0.5) * pixelsPerQuery + 4
                    out += "<text x=\(quoted(cellsLeft - 4)) y=\(quoted(y)) text-anchor=\"end\">\(escape(shortLabel(label)))</text>\n"
                }
            } else {
                for i in stride(from: 0, to: queryLength, by: tickStep(pixelsPerPosition: pixelsPerQuery, spacing: 16)) {
                    let y = Double(cellsTop) + (Double(i) + 0.5) * pixelsPerQuery
                    out += "<line x1=\(quoted(cellsLeft - 3)) y1=\(quoted(y)) x2=\(quoted(cellsLeft)) y2=\(quoted(y)) stroke=\"#444444\"/>"
                    out += "<text x=\(quoted(cellsLeft - 5)) y=\(quoted(y + 4)) text-anchor=\"end\">\(i)</text>\n"
                }
            }
            if showKeyLabels {
                for (j, label) in keyLabels!.enumerated() {
                    let x = Double(cellsLeft) + (Double(j) + 0.5) * pixelsPerKey + 3
                    out += "<text transform=\"translate(\(format(x)),\(cellsTop - 4)) rotate(-60)\">\(escape(shortLabel(label)))</text>\n"
                }
            } else {
                let digits = String(keyLength - 1).count
                let spacing = max(24, Double(digits) * charWidth + 8)
                for j in stride(from: 0, to: keyLength, by: tickStep(pixelsPerPosition: pixelsPerKey, spacing: spacing)) {
                    let x = Double(cellsLeft) + (Double(j) + 0.5) * pixelsPerKey
                    out += "<line x1=\(quoted(x)) y1=\(quoted(cellsTop - 3)) x2=\(quoted(x)) y2=\(quoted(cellsTop)) stroke=\"#444444\"/>"
                    out += "<text x=\(quoted(x)) y=\(quoted(cellsTop - 5)) text-anchor=\"middle\">\(j)</text>\n"
                }
            }
            out += "</g>\n"
        }

        // Legend: a vertical gradient, brightest at the top, with five ticks.
        out += "<defs><linearGradient id=\"viridis\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">"
        for stop in 0...16 {
            let t = Double(stop) / 16
            out += "<stop offset=\"\(format(t))\" stop-color=\"\(hex(viridis[Int((t * 255).rounded())]))\"/>"
        }
        out += "</linearGradient></defs>\n"
        out += "<g data-legend=\"\(formatNumber(lower)) \(formatNumber(upper))\">\n"
        out += "<text x=\(quoted(legendLeft)) y=\(quoted(legendTop - 10)) fill=\"#444444\">weight</text>\n"
        out += "<rect x=\(quoted(legendLeft)) y=\(quoted(legendTop)) width=\"14\" height=\(quoted(legendHeight)) fill=\"url(#viridis)\" stroke=\"#888888\" stroke-width=\"0.5\"/>\n"
        for value in legendTicks(lower: lower, upper: upper) {
            // In Double: upper − lower overflows Float for ranges wider than about 3.4e38.
            let fraction = (Double(value) - Double(lower)) / (Double(upper) - Double(lower))
            let y = Double(legendTop + legendHeight) - Double(legendHeight) * fraction
            out += "<line x1=\(quoted(legendLeft + 14)) y1=\(quoted(y)) x2=\(quoted(legendLeft + 18)) y2=\(quoted(y)) stroke=\"#444444\"/>"
            out += "<text x=\(quoted(legendLeft + 21)) y=\(quoted(y + 4))>\(formatNumber(value))</text>\n"
        }
        out += "</g>\n"

        for (n, note) in notes.enumerated() {
            out += "<text x=\(quoted(margin)) y=\(quoted(notesTop + 12 + 16 * n)) fill=\"#444444\">\(escape(note))</text>\n"
        }
        out += "</svg>\n"
        return out
    }

    /// The colour of a value: viridis at its position in the colour range, grey for NaN.
    func color(_ value: Float) -> String {
        guard !value.isNaN else { return "#bbbbbb" }
        let t = min(1, max(0, (Double(value) - Double(lower)) / (Double(upper) - Double(lower))))
        return hex(viridis[Int((t * 255).rounded())])
    }
}

// MARK: - Formatting helpers

/// Round values for the legend: multiples of 1, 2 or 5 × 10ⁿ inside `lower...upper`, at
/// least three of them, with the bounds themselves when no round value is near them.
func legendTicks(lower: Float, upper: Float) -> [Float] {
    let span = Double(upper) - Double(lower)
    guard span > 0, span.isFinite else { return [lower, upper] }
    var step = 1.0
    while span / step > 6 { step *= 10 }
    while span / step < 3 { step /= 10 }
    for factor in [1.0, 2, 5] where span / (step * factor) <= 6 {
        step *= factor
        break
    }
    var ticks: [Float] = []
    var n = (Double(lower) / step).rounded(.up)
    // At most 7 round values fit (span / step ≤ 6); the slack, relative to the step, keeps
    // a value that equals `upper` up to rounding.
    while n * step <= Double(upper) + step * 1e-6, ticks.count < 8 {
        ticks.append(Float(n * step))
        n += 1
    }
    // Label the ends too when the nearest round value is more than a third of a step away.
    if let first = ticks.first, Double(first) - Double(lower) > step / 3 { ticks.insert(lower, at: 0) }
    if let last = ticks.last, Double(upper) - Double(last) > step / 3 { ticks.append(upper) }
    return ticks
}

/// `"i"` for a single position, `"first-last"` for a block.
private func range(_ starts: [Int], _ index: Int) -> String {
    let first = starts[index], last = starts[index + 1] - 1
    return first == last ? "\(first)" : "\(first)-\(last)"
}

/// The smallest step of 1, 2 or 5 × 10ⁿ positions whose ticks are at least `spacing` pixels apart.
private func tickStep(pixelsPerPosition: Double, spacing: Double) -> Int {
    var magnitude = 1
    while true {
        for factor in [1, 2, 5] where Double(factor * magnitude) * pixelsPerPosition >= spacing {
            return factor * magnitude
        }
        if magnitude > Int.max / 100 { return magnitude }
        magnitude *= 10
    }
}

private func hex(_ rgb: UInt32) -> String {
    let digits = Array("0123456789abcdef")
    return "#" + String((0..<6).map { digits[Int((rgb >> (20 - 4 * UInt32($0))) & 15)] })
}

/// A coordinate with at most two decimals.
private func format(_ x: Double) -> String {
    var text = String((x * 100).rounded() / 100)
    if text.hasSuffix(".0") { text.removeLast(2) }
    return text
}

private func quoted(_ x: Int) -> String { "\"\(x)\"" }
private func quoted(_ x: Double) -> String { "\"\(format(x))\"" }

/// A value for people: three significant digits, in exponent form only below 0.001 or from 100000.
func formatNumber(_ value: Float) -> String {
    guard value.isFinite else { return "\(value)" }
    guard value != 0 else { return "0" }
    let x = Double(value)
    var exponent = 0                      // floor(log10 |x|)
    var m = abs(x)
    while m >= 10 { m /= 10; exponent += 1 }
    while m < 1 { m *= 10; exponent -= 1 }
    func power(_ n: Int) -> Double { n >= 0 ? (0..<n).reduce(1.0) { r, _ in r * 10 } : 1 / power(-n) }
    func trimmed(_ text: String) -> String {
        guard text.contains("."), !text.contains("e") else { return text }
        var text = text
        while text.hasSuffix("0") { text.removeLast() }
        if text.hasSuffix(".") { text.removeLast() }
        return text
    }
    if exponent >= -3 && exponent < 5 {
        let decimals = max(0, 2 - exponent)
        return trimmed(String((x * power(decimals)).rounded() / power(decimals)))
    }
    var mantissa = (x / power(exponent) * 100).rounded() / 100
    if abs(mantissa) >= 10 { mantissa /= 10; exponent += 1 }       // 9.999 rounds to 10: 1e(n+1)
    return trimmed(String(mantissa)) + "e\(exponent)"
}

/// A label cut to 14 characters.
private func shortLabel(_ label: String) -> String {
    label.count <= 14 ? label : String(label.prefix(13)) + "…"
}

/// Text safe inside XML elements and attribute values; characters XML forbids become U+FFFD.
func escape(_ text: String) -> String {
    var out = ""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&apos;"
        case "\t", "\n", "\r": out.unicodeScalars.append(scalar)
        default:
            let v = scalar.value
            let allowed = v >= 0x20 && !(0xD800...0xDFFF).contains(v) && v != 0xFFFE && v != 0xFFFF
            out.unicodeScalars.append(allowed ? scalar : "\u{FFFD}")
        }
    }
    return out
}
