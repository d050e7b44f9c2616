import Foundation

/// `--sweep`: GFLOP/s against sequence length (L = S) for each kernel, as CSV and as an SVG
/// line plot.
struct SweepPlot {
    /// One line of the plot: a kernel's GFLOP/s at each length.
    struct Series {
        var kernel: BenchKernel
        var points: [(length: Int, gflops: Double)]
    }

    var title: String
    var subtitle: String
    var series: [Series]

    init(title: String, subtitle: String, results: [KernelResult]) {
        self.title = title
        self.subtitle = subtitle
        var byKernel: [BenchKernel: [(Int, Double)]] = [:]
        for r in results {
            guard let g = r.gflops else { continue }
            byKernel[r.kernel, default: []].append((r.shape.keyLength, g))
        }
        series = byKernel.keys.sorted().map { kernel in
            Series(kernel: kernel, points: byKernel[kernel]!.sorted { $0.0 < $1.0 }.map { (length: $0.0, gflops: $0.1) })
        }
    }

    /// `length,kernel,gflops` rows.
    func csv() -> String {
        var lines = ["sequence_length,kernel,gflops"]
        for s in series {
            for p in s.points { lines.append("\(p.length),\(s.kernel.rawValue),\(String(format: "%.3f", p.gflops))") }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// A standalone SVG: log₂ x axis of sequence lengths, linear y axis from 0, one
    /// coloured line with markers per kernel, a legend, axis titles and the run's details.
    func svg() -> String {
        let width = 760.0, height = 460.0
        let left = 70.0, right = 170.0, top = 60.0, bottom = 60.0
        let plotW = width - left - right, plotH = height - top - bottom
        let lengths = series.flatMap { $0.points.map(\.length) }
        let minX = log2(Double(lengths.min() ?? 1)), maxX = log2(Double(lengths.max() ?? 2))
        let spanX = max(maxX - minX, 1)
        let peak = series.flatMap { $0.points.map(\.gflops) }.max() ?? 1
        let step = niceStep(peak / 5)
        let maxY = (peak / step).rounded(.up) * step
        func x(_ length: Int) -> Double { left + (log2(Double(length)) - minX) / spanX * plotW }
        func y(_ g: Double) -> Double { top + plotH - g / maxY * plotH }
        let colours = ["naive": "#7f7f7f", "blas": "#1f77b4", "tiled": "#d62728", "automatic": "#2ca02c"]

        var out = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
            viewBox="0 0 \(Int(width)) \(Int(height))" font-family="Helvetica, Arial, sans-serif">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(left)" y="26" font-size="17" font-weight="bold">\(escape(title))</text>
            <text x="\(left)" y="46" font-size="12" fill="#444">\(escape(subtitle))</text>

            """
        // Grid and y ticks, with as many decimals as the step needs (0.5, 0.05…).
        let decimals = step >= 1 ? 0 : Int((-log10(step)).rounded(.up))
        for i in 0...Int((maxY / step).rounded()) {
            let g = Double(i) * step
            let yy = y(g)
            out += "<line x1=\"\(f(left))\" y1=\"\(f(yy))\" x2=\"\(f(left + plotW))\" y2=\"\(f(yy))\" stroke=\"#e5e5e5\"/>\n"
            out += "<text x=\"\(f(left - 8))\" y=\"\(f(yy + 4))\" font-size=\"11\" text-anchor=\"end\">\(String(format: "%.\(decimals)f", g))</text>\n"
        }
        // x ticks at the measured lengths.
        for length in Set(lengths).sorted() {
            let xx = x(length)
            out += "<line x1=\"\(f(xx))\" y1=\"\(f(top))\" x2=\"\(f(xx))\" y2=\"\(f(top + plotH))\" stroke=\"#f0f0f0\"/>\n"
            out += "<text x=\"\(f(xx))\" y=\"\(f(top + plotH + 18))\" font-size=\"11\" text-anchor=\"middle\">\(length)</text>\n"
        }
        // Axes and titles.
        out += "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\" fill=\"none\" stroke=\"#333\"/>\n"
        out += "<text x=\"\(f(left + plotW / 2))\" y=\"\(f(height - 18))\" font-size=\"13\" text-anchor=\"middle\">sequence length L = S (log scale)</text>\n"
        out += "<text transform=\"translate(20 \(f(top + plotH / 2))) rotate(-90)\" font-size=\"13\" text-anchor=\"middle\">GFLOP/s (dense 2·B·H·L·S·(Dk+Dv) / median time)</text>\n"
        // Lines, markers, legend.
        for (index, s) in series.enumerated() {
            let colour = colours[s.kernel.rawValue] ?? "#9467bd"
            let path = s.points.map { "\(f(x($0.length))),\(f(y($0.gflops)))" }.joined(separator: " ")
            out += "<polyline points=\"\(path)\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"2.5\"/>\n"
            for p in s.points {
                out += "<circle cx=\"\(f(x(p.length)))\" cy=\"\(f(y(p.gflops)))\" r=\"3.5\" fill=\"\(colour)\"><title>\(s.kernel.rawValue) L=\(p.length): \(String(format: "%.1f", p.gflops)) GFLOP/s</title></circle>\n"
            }
            let ly = top + 10 + Double(index) * 22
            out += "<line x1=\"\(f(left + plotW + 18))\" y1=\"\(f(ly))\" x2=\"\(f(left + plotW + 48))\" y2=\"\(f(ly))\" stroke=\"\(colour)\" stroke-width=\"2.5\"/>\n"
            out += "<text x=\"\(f(left + plotW + 56))\" y=\"\(f(ly + 4))\" font-size=\"13\">\(s.kernel.rawValue)</text>\n"
        }
        out += "</svg>\n"
        return out
    }

    private func f(_ v: Double) -> String { String(format: "%.1f", v) }

    private func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;")
    }

    /// 1, 2, 5 × 10ⁿ at or above `raw`.
    private func niceStep(_ raw: Double) -> Double {
        guard raw > 0 else { return 1 }
        let magnitude = pow(10, floor(log10(raw)))
        for m in [1.0, 2, 5, 10] where m * magnitude >= raw { return m * magnitude }
        return 10 * magnitude
    }
}

/// `--sweep 256,512,1024`: sequence lengths, each ≥ 1.
struct LengthList: ExpressibleByArgument {
    var lengths: [Int]

    init?(argument: String) {
        var list: [Int] = []
        for part in argument.split(separator: ",", omittingEmptySubsequences: false) {
            guard let n = Int(part.trimmingCharacters(in: .whitespaces)), n >= 1 else { return nil }
            list.append(n)
        }
        guard !list.isEmpty else { return nil }
        lengths = Array(Set(list)).sorted()
    }

    var defaultValueDescription: String { lengths.map(String.init).joined(separator: ",") }
}

import ArgumentParser
