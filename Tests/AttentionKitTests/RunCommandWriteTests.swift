@testable import attention_bench
import Foundation
import Testing

/// `attention-bench run` writes its outputs all or nothing. The up-front checks stop the
/// failures they can foresee; these tests make a rename into place fail after them (as a
/// full disk or a vanished directory would), so that the undoing itself runs: destinations
/// replaced before the failure get their old contents back, new ones are removed, and no
/// temporary or backup file is left.
@Suite("attention-bench run: undoing a failed write")
struct RunCommandWriteTests {
    /// A rename that fails with EIO on the `failAt`-th move into place (counting from 1).
    final class FailingRename: @unchecked Sendable {
        var moves = 0
        let failAt: Int
        init(failAt: Int) { self.failAt = failAt }
        func callAsFunction(_ from: String, _ to: String) -> Int32 {
            moves += 1
            if moves == failAt { errno = EIO; return -1 }
            return rename(from, to)
        }
    }

    func contents(_ url: URL) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? []).sorted()
    }

    @Test(arguments: [2, 3]) func laterRenameFails(_ failAt: Int) throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("out.npy").path
        let weights = dir.appendingPathComponent("w.npy").path
        let heatmap = dir.appendingPathComponent("w.svg").path
        try Data("old output".utf8).write(to: URL(fileURLWithPath: out))          // replaced, then restored
        try Data("old heatmap".utf8).write(to: URL(fileURLWithPath: heatmap))
        let failing = FailingRename(failAt: failAt)
        #expect(throws: BenchFailure.self) {
            try writeAllOrNothing([(out, Data("new output".utf8)), (weights, Data("new weights".utf8)),
                                   (heatmap, Data("new heatmap".utf8))], moveIntoPlace: failing.callAsFunction)
        }
        #expect(failing.moves == failAt)
        #expect(try String(contentsOfFile: out, encoding: .utf8) == "old output", "out.npy restored")
        #expect(try String(contentsOfFile: heatmap, encoding: .utf8) == "old heatmap", "w.svg untouched")
        #expect(contents(dir) == ["out.npy", "w.svg"], "w.npy removed, no temporary or backup left: \(contents(dir))")
    }

    @Test func everyRenameSucceeds() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("out.npy").path
        try Data("old output".utf8).write(to: URL(fileURLWithPath: out))
        let counting = FailingRename(failAt: 0)
        try writeAllOrNothing([(out, Data("new output".utf8)), (dir.appendingPathComponent("w.npy").path, Data("w".utf8))],
                              moveIntoPlace: counting.callAsFunction)
        #expect(counting.moves == 2)
        #expect(try String(contentsOfFile: out, encoding: .utf8) == "new output")
        #expect(contents(dir) == ["out.npy", "w.npy"], "\(contents(dir))")
    }
}
