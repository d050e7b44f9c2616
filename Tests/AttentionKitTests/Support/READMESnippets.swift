import Foundation

/// README.md, read from the repository root above the test file at `testFilePath`.
func readmeText(besides testFilePath: String) throws -> String {
    let readme = URL(fileURLWithPath: testFilePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("README.md")
    return try String(contentsOf: readme, encoding: .utf8)
}

/// The code between each `// README: <name>` and the next `// README end` line of the test
/// file at `testFilePath`, in order, with the 8 spaces of a test body's indentation removed:
/// the README snippets that file compiles and runs.
func readmeSnippets(in testFilePath: String) throws -> [(name: String, code: String)] {
    let text = try String(contentsOf: URL(fileURLWithPath: testFilePath), encoding: .utf8)
    var snippets: [(name: String, code: String)] = []
    var current: (name: String, lines: [Substring])?
    for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
        let trimmed = line.drop { $0 == " " }
        if trimmed.hasPrefix("// README end"), let open = current {
            snippets.append((open.name, open.lines.map { String($0.dropFirst(8)) }.joined(separator: "\n")))
            current = nil
        } else if current != nil {
            current!.lines.append(line)
        } else if trimmed.hasPrefix("// README: ") {
            current = (String(trimmed.dropFirst("// README: ".count)), [])
        }
    }
    return snippets
}

/// The ```swift blocks of a Markdown text, in order, without their fences.
func swiftBlocks(_ markdown: some StringProtocol) -> [String] {
    markdown.components(separatedBy: "```swift\n").dropFirst().map { $0.components(separatedBy: "\n```").first! }
}
