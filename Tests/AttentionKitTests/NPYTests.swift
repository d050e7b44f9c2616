// The .npy reader and writer: files NumPy wrote (Fixtures/npy, made by make_npy_fixtures.py)
// read back bit for bit, the writer reproduces numpy.save's bytes, round trips, every refusal
// throws a named error, and a fuzz test over thousands of corrupted files sees only tensors
// that match their bytes or thrown AttentionErrors.

@_spi(Benchmarking) import AttentionKit
import Foundation
import Testing

// MARK: - Fixtures

struct NPYManifestEntry: Decodable {
    let file: String
    let kind: String                 // "float" or "bool": the tensor type to read it as
    let shape: [Int]?
    let numpySave: Bool?
    let bits: [String]?              // float32 bit patterns, hex
    let bools: [Bool]?
    let error: String?               // AttentionError.Code raw value
    let contains: String?
}

struct NPYManifest: Decodable {
    let generator: String
    let files: [NPYManifestEntry]
}

struct FixtureMissing: Error, CustomStringConvertible { let description: String }

func npyFixtureURL(_ name: String) throws -> URL {
    guard let url = Bundle.module.url(forResource: name, withExtension: nil, subdirectory: "Fixtures/npy") else {
        throw FixtureMissing(description: "Fixtures/npy/\(name) is missing from the test bundle")
    }
    return url
}

func loadNPYManifest() throws -> NPYManifest {
    try JSONDecoder().decode(NPYManifest.self, from: Data(contentsOf: try npyFixtureURL("manifest.json")))
}

/// A fresh empty directory, removed by the caller.
func makeTemporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("attentionkit-tests-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// Runs `body` and returns the AttentionError it throws; records an issue if it returns or
/// throws anything else.
func attentionError<T>(_ what: String, sourceLocation: SourceLocation = #_sourceLocation,
                       _ body: () throws -> T) -> AttentionError? {
    do {
        let value = try body()
        Issue.record("\(what): expected an AttentionError, got \(value)", sourceLocation: sourceLocation)
    } catch let error as AttentionError {
        return error
    } catch {
        Issue.record("\(what): expected an AttentionError, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// The .npy bytes for a hand-written header and payload (version 1.0 unless given).
func npyBytes(header: String, payload: [UInt8] = [], version: UInt8 = 1) -> Data {
    var data = Data([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, version, 0])
    let text = Array(header.utf8)
    if version == 1 {
        data.append(contentsOf: [UInt8(text.count & 0xFF), UInt8(text.count >> 8)])
    } else {
        data.append(contentsOf: (0..<4).map { UInt8((text.count >> (8 * $0)) & 0xFF) })
    }
    data.append(contentsOf: text)
    data.append(contentsOf: payload)
    return data
}

private func floatBits(_ tensor: Tensor<Float>) -> [String] {
    tensor.scalars.map { String(format: "%08x", $0.bitPattern) }
}

// MARK: - Tests

@Suite("NumPy .npy files")
struct NPYTests {
    @Test("files written by NumPy read back exactly (float32 bits, float64 as NumPy's astype, bools)")
    func numpyFixturesReadBack() throws {
        let manifest = try loadNPYManifest()
        #expect(manifest.generator.hasPrefix("numpy"))
        let readable = manifest.files.filter { $0.error == nil }
        #expect(readable.count >= 12, "manifest lists \(readable.count) readable files")
        for entry in readable {
            let url = try npyFixtureURL(entry.file)
            let shape = try #require(entry.shape)
            if entry.kind == "float" {
                let tensor = try Tensor<Float>(contentsOfNPY: url)
                #expect(tensor.shape == shape, "\(entry.file): shape \(tensor.shape), want \(shape)")
                #expect(floatBits(tensor) == entry.bits, "\(entry.file): bits differ")
            } else {
                let tensor = try Tensor<Bool>(contentsOfNPY: url)
                #expect(tensor.shape == shape, "\(entry.file): shape \(tensor.shape), want \(shape)")
                #expect(tensor.scalars == entry.bools, "\(entry.file): values differ")
            }
        }
    }

    @Test("writing reproduces numpy.save's bytes exactly")
    func writerMatchesNumPy() throws {
        let manifest = try loadNPYManifest()
        let saved = manifest.files.filter {
            $0.error == nil && $0.numpySave == true && ($0.file.hasPrefix("f4_") || $0.file.hasPrefix("b1_"))
        }
        #expect(saved.count >= 7)
        for entry in saved {
            let bytes = try Data(contentsOf: try npyFixtureURL(entry.file))
            let rewritten = entry.kind == "float"
                ? try Tensor<Float>(npyData: bytes).npyData()
                : try Tensor<Bool>(npyData: bytes).npyData()
            #expect(rewritten == bytes, "\(entry.file): \(rewritten.count) bytes written, NumPy wrote \(bytes.count)")
        }
    }

    @Test("files AttentionKit refuses throw an error naming the file and what was found")
    func refusedFixtures() throws {
        let manifest = try loadNPYManifest()
        let refused = manifest.files.filter { $0.error != nil }
        #expect(refused.count >= 10)
        for entry in refused {
            let url = try npyFixtureURL(entry.file)
            let error = entry.kind == "float"
                ? attentionError(entry.file) { try Tensor<Float>(contentsOfNPY: url) }
                : attentionError(entry.file) { try Tensor<Bool>(contentsOfNPY: url) }
            guard let error else { continue }
            #expect(error.code.rawValue == entry.error, "\(entry.file): code \(error.code), want \(entry.error!): \(error)")
            #expect(error.message.contains(entry.contains!), "\(entry.file): '\(error.message)' lacks '\(entry.contains!)'")
            #expect(error.message.contains(entry.file), "\(entry.file): message does not name the file: \(error)")
        }
    }

    @Test("round trips through files keep every bit pattern and shape", arguments: [
        [], [0], [1], [7], [3, 0, 2], [2, 3], [1, 1, 1, 1, 1], [4, 3, 2, 5], [2, 2, 3, 4, 2],
    ] as [[Int]])
    func roundTrip(shape: [Int]) throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        var rng = SplitMix64(seed: UInt64(shape.reduce(17) { $0 &* 31 &+ $1 }))
        let count = shape.reduce(1, *)
        // Any 32-bit pattern, NaN payloads included.
        let floats = (0..<count).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: rng.next())) }
        let bools = (0..<count).map { _ in rng.next() & 1 == 1 }
        let f = try Tensor(shape: shape, scalars: floats)
        let b = try Tensor(shape: shape, scalars: bools)

        let fURL = directory.appendingPathComponent("f.npy")
        let bURL = directory.appendingPathComponent("b.npy")
        try f.write(toNPY: fURL)
        try b.write(toNPY: bURL)
        let f2 = try Tensor<Float>(contentsOfNPY: fURL)
        let b2 = try Tensor<Bool>(contentsOfNPY: bURL)
        #expect(f2.shape == shape && floatBits(f2) == floatBits(f))
        #expect(b2 == b)
        #expect(try Tensor<Float>(npyData: f.npyData()).scalars.map(\.bitPattern) == floats.map(\.bitPattern))
        #expect(try Tensor<Bool>(npyData: b.npyData()) == b)
        // Nothing but the two files is left in the directory (no temporary files).
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        #expect(names == ["b.npy", "f.npy"])
    }

    @Test("a header too long for version 1.0 is written as version 2.0 and reads back")
    func longHeaderUsesVersion2() throws {
        let shape = [Int](repeating: 1, count: 30_000)           // "1, " × 30000 > 65535 bytes
        let tensor = try Tensor<Float>(shape: shape, scalars: [3.25])
        let data = tensor.npyData()
        #expect(data[6] == 2 && data[7] == 0, "version \(data[6]).\(data[7])")
        let headerLength = Int(data[8]) | Int(data[9]) << 8 | Int(data[10]) << 16 | Int(data[11]) << 24
        #expect((12 + headerLength) % 64 == 0, "data does not start on a 64-byte boundary")
        #expect(try Tensor<Float>(npyData: data) == tensor)
    }

    @Test("hand-made malformed files throw errors that say what was found")
    func malformedFiles() throws {
        let good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n"
        let payload: [UInt8] = [0, 0, 128, 63, 0, 0, 0, 64]      // 1.0, 2.0
        #expect(try Tensor<Float>(npyData: npyBytes(header: good, payload: payload)).scalars == [1, 2])
        #expect(try Tensor<Float>(npyData: npyBytes(header: good, payload: payload, version: 2)).scalars == [1, 2])
        // Python-2-era headers (long integers) and double quotes are still Python literals.
        #expect(try Tensor<Float>(npyData: npyBytes(header: "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2L,)}",
                                                      payload: payload)).shape == [2])

        func header(_ text: String, payload: [UInt8] = payload, version: UInt8 = 1) -> Data {
            npyBytes(header: text, payload: payload, version: version)
        }
        // Version 3.0 headers are UTF-8: a lone 0xFF byte in a string is not.
        var notUTF8 = header("{'descr': '<f4~', 'fortran_order': False, 'shape': (2,)}", version: 3)
        notUTF8[notUTF8.firstIndex(of: UInt8(ascii: "~"))!] = 0xFF
        let cases: [(String, Data, AttentionError.Code, String)] = [
            ("empty", Data(), .npyFormat, "empty"),
            ("bad magic", Data("PK\u{3}\u{4}hello".utf8), .npyFormat, "50 4B 03 04"),
            ("version 4.0", header(good, version: 4), .npyFormat, "version 4.0"),
            ("cut in the length", Data([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0, 0x76]), .npyFormat, "header length"),
            ("length past the end", Data([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0, 0xFF, 0xFF, 0x7B]), .npyFormat, "65535 bytes but only 1"),
            ("header of 64 MiB", Data([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 2, 0, 0, 0, 0, 4, 0x7B]), .npyFormat, "67108864 bytes; .npy headers"),
            ("header of 4 GiB", Data([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 3, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x7B]), .npyFormat, "4294967295 bytes"),
            ("missing key", header("{'descr': '<f4', 'shape': (2,), }"), .npyFormat, "missing 'fortran_order'"),
            ("extra key", header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}"), .npyFormat, "unexpected 'x'"),
            ("duplicate key", header("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}"), .npyFormat, "twice"),
            ("fortran_order 0", header("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}"), .npyFormat, "found 0"),
            ("shape as list", header("{'descr': '<f4', 'fortran_order': False, 'shape': [2]}"), .npyFormat, "found [2]"),
            ("shape as int", header("{'descr': '<f4', 'fortran_order': False, 'shape': (2)}"), .npyFormat, "found 2"),
            ("shape with string", header("{'descr': '<f4', 'fortran_order': False, 'shape': ('2',)}"), .npyFormat, "tuple of integers"),
            ("negative size", header("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}"), .npyFormat, "negative dimension -2"),
            ("element count overflows", header("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}"), .sizeOverflow, "too many elements"),
            ("byte count overflows", header("{'descr': '<f4', 'fortran_order': False, 'shape': (3037000499, 3037000499)}"), .sizeOverflow, "too many bytes"),
            ("size beyond Int", header("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}"), .sizeOverflow, "too large"),
            ("truncated payload", header(good, payload: [0, 0, 128]), .npyFormat, "truncated: shape [2] of '<f4' needs 8 bytes of data, the file has 3"),
            ("extra payload", header(good, payload: payload + [1, 2]), .npyFormat, "2 bytes of unexpected data"),
            ("not closed", header("{'descr': '<f4, 'fortran_order': False, 'shape': (2,)}"), .npyFormat, "expected ',' or '}' at byte"),
            ("not closed, padded as numpy pads", header("{'descr': '<f4, 'fortran_order': False, 'shape': (2,)}" + String(repeating: " ", count: 9) + "\n"),
             .npyFormat, "'shape': (2,)}"),
            ("unknown name", header("{'descr': '<f4', 'fortran_order': false, 'shape': (2,)}"), .npyFormat, "'false'"),
            ("trailing text", header(good + "x"), .npyFormat, "after the dictionary"),
            ("deep nesting", header("{'descr': " + String(repeating: "(", count: 10_000) + "}"), .npyFormat, "nested too deeply"),
            ("not a dict", header("['descr', '<f4']"), .npyFormat, "expected '{'"),
            ("version 3 not UTF-8", notUTF8, .npyFormat, "UTF-8"),
            ("little-endian int", header("{'descr': '<i4', 'fortran_order': False, 'shape': (2,)}"), .npyUnsupported, "'<i4' (int32)"),
            ("native-order float16", header("{'descr': '=f2', 'fortran_order': False, 'shape': (2,)}"), .npyUnsupported, "'=f2'"),
            ("Fortran order", header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2)}"), .npyUnsupported, "Fortran"),
            // Control bytes from the file are escaped, so the message stays one clean line.
            ("control bytes in descr", header("{'descr': '<f\u{0}\u{12}', 'fortran_order': False, 'shape': (2,)}"),
             .npyUnsupported, "'<f\\x00\\x12'"),
            ("control byte in a key", header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'a\u{7}': 1}"),
             .npyFormat, "unexpected 'a\\x07'"),
            ("C1 control and a bidi override in a version 3 descr",
             header("{'descr': '<f\u{85}\u{202E}4', 'fortran_order': False, 'shape': (2,)}", version: 3),
             .npyUnsupported, "'<f\\u{85}\\u{202E}4'"),
        ]
        for (name, data, code, phrase) in cases {
            guard let error = attentionError(name, { try Tensor<Float>(npyData: data) }) else { continue }
            #expect(error.code == code, "\(name): code \(error.code), want \(code): \(error)")
            #expect(error.message.contains(phrase), "\(name): '\(error.message)' lacks '\(phrase)'")
            #expect(!error.message.contains("\n"), "\(name): message spans lines")
            // The header's padding and final newline are not quoted back.
            #expect(!error.message.hasSuffix("\\n") && !error.message.hasSuffix(" "), "\(name): '\(error.message)'")
        }

        let boolHeader = "{'descr': '|b1', 'fortran_order': False, 'shape': (2, 2), }"
        #expect(try Tensor<Bool>(npyData: npyBytes(header: boolHeader, payload: [1, 0, 0, 1])).scalars == [true, false, false, true])
        let badBool = attentionError("bool byte 2") { try Tensor<Bool>(npyData: npyBytes(header: boolHeader, payload: [1, 0, 2, 1])) }
        #expect(badBool?.code == .npyFormat)
        #expect(badBool?.message.contains("bool byte 2 at index [1, 0]") == true, "\(String(describing: badBool))")
    }

    /// A file truncated by another process while it is read must not come back as a tensor
    /// with zeros where the lost bytes were (Linux can return a full count for such a read):
    /// every read either gives the values written or throws.
    @Test("a file truncated while it is read gives the right values or an error, never zeros")
    func truncatedWhileRead() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let url = directory.appendingPathComponent("race.npy")
        let count = 1 << 18
        let bytes = try Tensor<Float>(shape: [count], scalars: (0..<count).map(Float.init)).npyData()
        var wrong = 0
        for attempt in 0..<120 {
            try bytes.write(to: url)
            let done = DispatchSemaphore(value: 0)
            Thread {
                usleep(UInt32(attempt % 7) * 60)
                truncate(url.path, off_t(bytes.count - 4096))
                done.signal()
            }.start()
            if let tensor = try? Tensor<Float>(contentsOfNPY: url),
               tensor.count != count || tensor.scalars.enumerated().contains(where: { Float($0.offset) != $0.element }) {
                wrong += 1
            }
            done.wait()
        }
        #expect(wrong == 0, "\(wrong) of 120 reads returned a tensor with wrong values")
    }

    @Test("files that cannot be read or written throw fileAccess and leave the target as it was")
    func fileAccess() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let missing = directory.appendingPathComponent("missing.npy")
        let readError = attentionError("missing file") { try Tensor<Float>(contentsOfNPY: missing) }
        #expect(readError?.code == .fileAccess)
        #expect(readError?.message.contains(missing.path) == true)
        #expect(readError?.message.contains("No such file") == true, "\(String(describing: readError))")
        #expect(attentionError("directory") { try Tensor<Float>(contentsOfNPY: directory) }?.code == .fileAccess)

        let tensor = try Tensor<Float>(shape: [2], scalars: [1, 2])
        let nowhere = directory.appendingPathComponent("no-such-dir/out.npy")
        #expect(attentionError("missing directory") { try tensor.write(toNPY: nowhere) }?.code == .fileAccess)
        #expect(!FileManager.default.fileExists(atPath: nowhere.path))

        // Replacing an existing file; writing onto a directory fails and leaves it alone.
        let target = directory.appendingPathComponent("out.npy")
        try Data("old".utf8).write(to: target)
        try tensor.write(toNPY: target)
        #expect(try Tensor<Float>(contentsOfNPY: target) == tensor)
        let sub = directory.appendingPathComponent("sub.npy", isDirectory: true)
        try FileManager.default.createDirectory(at: sub, withIntermediateDirectories: false)
        #expect(attentionError("onto a directory") { try tensor.write(toNPY: sub) }?.code == .fileAccess)
        var isDirectory: ObjCBool = false
        #expect(FileManager.default.fileExists(atPath: sub.path, isDirectory: &isDirectory) && isDirectory.boolValue)
        // Names up to the 255-byte limit of a file name are written (the temporary file's
        // name is cut to fit), in ASCII and in two-byte characters; one byte more is refused.
        let long = ["\(String(repeating: "a", count: 251)).npy", "a\(String(repeating: "é", count: 125)).npy"]
        for name in long {
            #expect(name.utf8.count == 255)
            try tensor.write(toNPY: directory.appendingPathComponent(name))
            #expect(try Tensor<Float>(contentsOfNPY: directory.appendingPathComponent(name)) == tensor)
        }
        let tooLong = directory.appendingPathComponent("b\(long[0])")
        #expect(attentionError("a 256-byte name") { try tensor.write(toNPY: tooLong) }?.code == .fileAccess)
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        #expect(names == (["out.npy", "sub.npy"] + long).sorted(), "left behind: \(names)")
        #expect(attentionError("web URL") { try Tensor<Float>(contentsOfNPY: URL(string: "https://example.com/a.npy")!) }?.code == .fileAccess)
    }

    /// A file being written has no name in its directory until it is complete (on Linux, where
    /// the file system has unnamed files: this test's temporary directory on ext4 or tmpfs), so
    /// an interrupted write leaves nothing; it is named beside its destination, and a
    /// discarded one leaves nothing either. Where the file is named from the start, it is that
    /// one hidden name throughout.
    @Test("a pending file is unnamed while written, then named beside its destination; discarding removes it")
    func pendingFile() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let destination = directory.appendingPathComponent("out.npy").path
        let listing = { try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted() }
        let bytes: [UInt8] = Array("written".utf8)
        for keep in [true, false] {
            var file = try PendingFile(besides: destination)
            let failure = bytes.withUnsafeBytes { file.write([$0]) }
            #expect(failure == nil)
            #if os(Linux) && (arch(x86_64) || arch(arm64))
            #expect(file.isUnnamed || !unnamedFilesSupported(in: directory.path), "named although unnamed files work here")
            #endif
            let whileWritten = try listing()
            #expect(file.isUnnamed ? whileWritten.isEmpty : whileWritten.count == 1, "while written: \(whileWritten)")
            #expect(file.name() == nil)
            let temporary = try #require(file.temporary)
            #expect(temporary.hasPrefix(directory.path + "/.out.npy.") && temporary.hasSuffix(".tmp"), "\(temporary)")
            #expect(try listing() == [String(temporary.split(separator: "/").last!)])
            #expect(try Data(contentsOf: URL(fileURLWithPath: temporary)) == Data(bytes))
            if keep {
                #expect(rename(temporary, destination) == 0)
                #expect(try listing() == ["out.npy"])
                try FileManager.default.removeItem(atPath: destination)
            } else {
                file.discard()
                #expect(try listing().isEmpty)
            }
        }
        // Discarded before it is named: nothing is left.
        var unnamed = try PendingFile(besides: destination)
        unnamed.discard()
        #expect(try listing().isEmpty)
        // A directory that does not exist: the system's reason.
        #expect(throws: PendingFile.Failure.self) { try PendingFile(besides: directory.path + "/none/out.npy") }
    }

    @Test("writing through a symbolic link replaces its target and keeps the link; a device is written into, not replaced")
    func specialDestinations() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let tensor = try Tensor<Float>(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        let real = directory.appendingPathComponent("real.npy"), link = directory.appendingPathComponent("link.npy")
        try Data("old".utf8).write(to: real)
        try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: "real.npy")
        try tensor.write(toNPY: link)
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link.path) == "real.npy")
        #expect(try Tensor<Float>(contentsOfNPY: real) == tensor)

        try tensor.write(toNPY: URL(fileURLWithPath: "/dev/null"))
        var info = stat()
        #expect(stat("/dev/null", &info) == 0 && (info.st_mode & S_IFMT) == S_IFCHR, "/dev/null is no longer a device")
        let heatmap = try AttentionHeatmap(weights: Tensor<Float>(shape: [2, 2], scalars: [1, 0, 0.5, 0.5]))
        try heatmap.write(to: URL(fileURLWithPath: "/dev/null"))

        let dangling = directory.appendingPathComponent("dangling.npy")
        try FileManager.default.createSymbolicLink(atPath: dangling.path, withDestinationPath: "nowhere/x.npy")
        let error = attentionError("link to nothing") { try tensor.write(toNPY: dangling) }
        #expect(error?.code == .fileAccess && error?.message.contains("symbolic link") == true, "\(String(describing: error))")
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        #expect(names == ["dangling.npy", "link.npy", "real.npy"], "left behind: \(names)")
    }

    @Test("fuzz: thousands of corrupted files give tensors that match their bytes, or AttentionErrors")
    func fuzz() throws {
        var rng = SplitMix64(seed: 0x5EED_0005)
        // Seeds: our own files of several shapes and NumPy's fixtures (versions 1.0-3.0),
        // with their data types.
        var seeds: [(bytes: Data, type: String)] = []
        for shape in [[3], [2, 3], [1, 2, 2, 2], [0, 4], []] as [[Int]] {
            let count = shape.reduce(1, *)
            seeds.append((try Tensor(shape: shape, scalars: (0..<count).map { Float($0) * 0.5 - 1 }).npyData(), "<f4"))
            seeds.append((try Tensor(shape: shape, scalars: (0..<count).map { $0 % 3 == 0 }).npyData(), "|b1"))
        }
        for (name, type) in [("f4_v2.npy", "<f4"), ("f4_v3.npy", "<f4"), ("f8_values.npy", "<f8"),
                             ("b1_rank4.npy", "|b1"), ("f4_rank0.npy", "<f4"), ("f8_v2.npy", "<f8")] {
            seeds.append((try Data(contentsOf: try npyFixtureURL(name)), type))
        }
        let alphabet = Array("{}()[]'\",:-0123456789 TrueFalsNn<>|fb148\n\\L".utf8)

        var values = 0, errors = 0
        let variants = 6000
        for variant in 0..<variants {
            let seed = seeds[Int(rng.next() % UInt64(seeds.count))]
            var bytes = [UInt8](seed.bytes)
            // Where the payload starts: after the 2-byte (version 1) or 4-byte length and the header.
            let lengthSize = bytes[6] == 1 ? 2 : 4
            let headerEnd = 8 + lengthSize + (0..<lengthSize).reduce(0) { $0 | Int(bytes[8 + $1]) << (8 * $1) }
            let payloadOnly = variant % 3 == 0
            let edits = 1 + Int(rng.next() % 3)
            for _ in 0..<edits {
                let position = Int(rng.next() % UInt64(max(1, bytes.count)))
                let inHeader = Int(rng.next() % UInt64(max(1, min(headerEnd, bytes.count))))
                switch payloadOnly ? 8 : rng.next() % 9 {
                case 0 where !bytes.isEmpty: bytes[position] = UInt8(truncatingIfNeeded: rng.next())
                case 1 where !bytes.isEmpty: bytes[inHeader] = UInt8(truncatingIfNeeded: rng.next())
                case 2 where !bytes.isEmpty: bytes[inHeader] = alphabet[Int(rng.next() % UInt64(alphabet.count))]
                case 3: bytes.removeLast(Int(rng.next() % UInt64(bytes.count + 1)))           // truncate
                case 4: bytes += (0..<Int(rng.next() % 9)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                case 5 where bytes.count > 9: bytes[8 + Int(rng.next() % 2)] = UInt8(truncatingIfNeeded: rng.next())
                case 6 where !bytes.isEmpty: bytes.remove(at: inHeader)
                case 7: bytes.insert(alphabet[Int(rng.next() % UInt64(alphabet.count))], at: min(inHeader, bytes.count))
                default:                                                                       // payload bytes
                    if headerEnd < bytes.count {
                        let p = headerEnd + Int(rng.next() % UInt64(bytes.count - headerEnd))
                        bytes[p] = UInt8(truncatingIfNeeded: rng.next())
                    }
                }
            }
            let data = Data(bytes)
            var decodedAsFloat = false
            for asBool in [false, true] {
                do {
                    if asBool {
                        let tensor = try Tensor<Bool>(npyData: data)
                        values += 1
                        #expect(tensor.count == tensor.shape.reduce(1, *), "variant \(variant)")
                        let tail = bytes.suffix(tensor.count)
                        #expect(tensor.count <= bytes.count && tail.map { $0 == 1 } == tensor.scalars,
                                "variant \(variant): bools do not match the payload bytes")
                    } else {
                        let tensor = try Tensor<Float>(npyData: data)
                        values += 1
                        decodedAsFloat = true
                        #expect(tensor.count == tensor.shape.reduce(1, *), "variant \(variant)")
                        #expect(payloadMatches(tensor, bytes), "variant \(variant): floats do not match the payload bytes")
                    }
                } catch is AttentionError {
                    errors += 1
                } catch {
                    Issue.record("variant \(variant): a non-AttentionError was thrown: \(error)")
                }
            }
            // Any payload bytes are valid float32 values.
            if payloadOnly && seed.type == "<f4" {
                #expect(decodedAsFloat, "variant \(variant): a float32 file with changed payload bytes was refused")
            }
        }
        // Both paths were exercised in earnest.
        #expect(values > 1000 && errors > 7000, "values \(values), errors \(errors)")
    }
}

/// Whether the tensor's scalars are the last bytes of `bytes` read as little-endian float32,
/// or as float64 rounded to float32.
private func payloadMatches(_ tensor: Tensor<Float>, _ bytes: [UInt8]) -> Bool {
    func word(_ at: Int, _ size: Int) -> UInt64 {
        (0..<size).reduce(UInt64(0)) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) }
    }
    let n = tensor.count
    let as32 = n * 4 <= bytes.count && (0..<n).allSatisfy { i in
        tensor.scalars[i].bitPattern == UInt32(word(bytes.count - n * 4 + 4 * i, 4))
    }
    let as64 = n * 8 <= bytes.count && (0..<n).allSatisfy { i in
        let value = Float(Double(bitPattern: word(bytes.count - n * 8 + 8 * i, 8)))
        return value.bitPattern == tensor.scalars[i].bitPattern || (value.isNaN && tensor.scalars[i].isNaN)
    }
    return as32 || as64
}

// MARK: - Other writers' spellings, and sources that are not small .npy files

/// The bytes of `values` as little-endian float32 or float64.
private func littleEndianBytes(_ values: [Double], size: Int) -> [UInt8] {
    values.flatMap { value -> [UInt8] in
        let bits = size == 4 ? UInt64(Float(value).bitPattern) : value.bitPattern
        return (0..<size).map { UInt8(truncatingIfNeeded: bits >> (8 * UInt64($0))) }
    }
}

/// Writes `start` to `url` and extends the file to `size` bytes without writing them (a
/// sparse file: no disk space is used for the rest, which reads as zeros).
private func makeSparseFile(_ url: URL, startingWith start: Data, size: UInt64) throws -> URL {
    try start.write(to: url)
    let handle = try FileHandle(forWritingTo: url)
    try handle.truncate(atOffset: size)
    try handle.close()
    return url
}

/// Calls `body` with a `/dev/fd` URL of a pipe that another thread fills with `data` and then
/// closes; `body` must read the pipe to its end (a writer left blocked would never finish),
/// unless `data` is shorter than PIPE_BUF (4 KiB), which one write puts in the pipe whole.
private func throughPipe<T>(_ data: Data, _ body: (URL) throws -> T) throws -> T {
    let pipe = Pipe()
    let writer = Thread {
        try? pipe.fileHandleForWriting.write(contentsOf: data)
        try? pipe.fileHandleForWriting.close()
    }
    writer.start()
    defer { try? pipe.fileHandleForReading.close() }
    return try body(URL(fileURLWithPath: "/dev/fd/\(pipe.fileHandleForReading.fileDescriptor)"))
}

@Suite("NumPy .npy interop and large sources")
struct NPYSourceTests {
    // The expected values below were checked against numpy.load of the same bytes.
    @Test("<b1, >b1 and =b1 are bool; =f4 and =f8 are little-endian floats on little-endian machines")
    func otherSpellings() throws {
        for descr in ["|b1", "<b1", ">b1", "=b1"] {
            let data = npyBytes(header: "{'descr': '\(descr)', 'fortran_order': False, 'shape': (2, 2), }", payload: [1, 0, 0, 1])
            let mask = try Tensor<Bool>(npyData: data)
            #expect(mask.shape == [2, 2] && mask.scalars == [true, false, false, true], "\(descr)")
            let asFloat = attentionError(descr) { try Tensor<Float>(npyData: data) }
            #expect(asFloat?.code == .npyUnsupported && asFloat?.message.contains("read it as Tensor<Bool>") == true, "\(descr)")
        }
        #if _endian(little)
        for (descr, size) in [("=f4", 4), ("=f8", 8)] {
            let data = npyBytes(header: "{'descr': '\(descr)', 'fortran_order': False, 'shape': (3,), }",
                                payload: littleEndianBytes([1.5, -2, 0.1], size: size))
            let tensor = try Tensor<Float>(npyData: data)
            #expect(tensor.shape == [3] && tensor.scalars == [1.5, -2, Float(0.1)], "\(descr): \(tensor.scalars)")
        }
        #endif
        // Everything else is still refused.
        for (descr, kind) in [("|f4", "float"), (">f8", "float"), ("=f2", "float"), ("=i4", "float"), ("<b2", "bool"),
                              ("|u1", "bool"), ("b1", "bool"), ("f4", "float")] {
            let data = npyBytes(header: "{'descr': '\(descr)', 'fortran_order': False, 'shape': (2,), }",
                                payload: [UInt8](repeating: 0, count: 8))
            let error = kind == "bool"
                ? attentionError(descr) { try Tensor<Bool>(npyData: data) }
                : attentionError(descr) { try Tensor<Float>(npyData: data) }
            #expect(error?.code == .npyUnsupported, "\(descr): \(String(describing: error))")
            #expect(error?.message.contains("'\(descr)'") == true, "\(descr): \(String(describing: error))")
        }
    }

    @Test("Fortran order is read when at most one dimension is longer than 1, refused otherwise")
    func fortranOrder() throws {
        for (shape, text) in [([3], "(3,)"), ([1, 3], "(1, 3)"), ([3, 1], "(3, 1)"), ([1, 1, 3], "(1, 1, 3)"),
                              ([], "()"), ([0, 5], "(0, 5)")] as [([Int], String)] {
            let count = shape.reduce(1, *)
            let data = npyBytes(header: "{'descr': '<f4', 'fortran_order': True, 'shape': \(text), }",
                                payload: littleEndianBytes((0..<count).map(Double.init), size: 4))
            let tensor = try Tensor<Float>(npyData: data)
            #expect(tensor.shape == shape && tensor.scalars == (0..<count).map(Float.init), "\(text)")
            let bools = npyBytes(header: "{'descr': '|b1', 'fortran_order': True, 'shape': \(text), }",
                                 payload: (0..<count).map { UInt8($0 % 2) })
            #expect(try Tensor<Bool>(npyData: bools).scalars == (0..<count).map { $0 % 2 == 1 }, "\(text)")
        }
        for text in ["(2, 3)", "(1, 2, 2)", "(2, 1, 2)"] {
            let data = npyBytes(header: "{'descr': '<f4', 'fortran_order': True, 'shape': \(text), }",
                                payload: [UInt8](repeating: 0, count: 24))
            let error = attentionError(text) { try Tensor<Float>(npyData: data) }
            #expect(error?.code == .npyUnsupported && error?.message.contains("Fortran") == true, "\(text): \(String(describing: error))")
        }
    }

    @Test("a float64 value beyond Float's range: the error says how to convert it")
    func overflowAdvice() throws {
        let url = try npyFixtureURL("f8_overflow.npy")
        let error = attentionError("f8_overflow.npy") { try Tensor<Float>(contentsOfNPY: url) }
        #expect(error?.code == .npyValueOutOfRange)
        #expect(error?.message.contains("a.astype(np.float32)") == true && error?.message.contains("np.clip") == true,
                "\(String(describing: error))")
    }

    @Test("an endless source (/dev/zero) is refused after its first bytes, not read to the end",
          .enabled(if: FileManager.default.fileExists(atPath: "/dev/zero")))
    func endlessSource() throws {
        let url = URL(fileURLWithPath: "/dev/zero")
        let error = attentionError("/dev/zero") { try Tensor<Float>(contentsOfNPY: url) }
        #expect(error?.code == .npyFormat)
        #expect(error?.message.contains("/dev/zero") == true && error?.message.contains("magic string") == true,
                "\(String(describing: error))")
        #expect(attentionError("/dev/zero as bool") { try Tensor<Bool>(contentsOfNPY: url) }?.code == .npyFormat)
    }

    @Test("a pipe is read up to the payload and one byte more",
          .enabled(if: FileManager.default.fileExists(atPath: "/dev/fd")))
    func pipeSource() throws {
        let tensor = try Tensor<Float>(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        for extra in [0, 1, 100] {
            try throughPipe(tensor.npyData() + Data(repeating: 7, count: extra)) { (url: URL) throws in
                if extra == 0 {
                    #expect(try Tensor<Float>(contentsOfNPY: url) == tensor)
                } else {
                    let error = attentionError("pipe with \(extra) extra bytes") { try Tensor<Float>(contentsOfNPY: url) }
                    #expect(error?.code == .npyFormat)
                    #expect(error?.message.contains("unexpected data after the array") == true, "\(String(describing: error))")
                }
            }
        }
    }

    /// The reader decodes a payload in chunks of 256 KiB as they arrive (32 768 float64
    /// values, 65 536 float32, 262 144 bools): values across chunk boundaries, from a file
    /// and from a pipe, and errors that name an element of a later chunk by its index in the
    /// whole array, not in its chunk.
    @Test("payloads of several read chunks: exact values from a file and a pipe, errors at the right index")
    func payloadsOfSeveralChunks() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        func file(_ name: String, _ data: Data) throws -> URL {
            let url = directory.appendingPathComponent(name)
            try data.write(to: url)
            return url
        }
        let rows = 7, columns = 14_287                    // 100 009 elements: four float64 chunks, the last partial
        let count = rows * columns
        let values: [Double] = (0..<count).map { (n: Int) -> Double in
            Double(n) * 0.1 - 3_300 + 1e-9 * Double(n % 7)
        }
        let expected = values.map(Float.init)             // round to nearest, as the policy states
        for size in [8, 4] {
            let data = npyBytes(header: "{'descr': '<f\(size)', 'fortran_order': False, 'shape': (\(rows), \(columns)), }",
                                payload: littleEndianBytes(values, size: size))
            let fromFile = try Tensor<Float>(contentsOfNPY: file("f\(size).npy", data))
            #expect(fromFile.shape == [rows, columns] && fromFile.scalars == expected, "f\(size) from a file")
            let fromPipe = try throughPipe(data) { try Tensor<Float>(contentsOfNPY: $0) }
            #expect(fromPipe.shape == [rows, columns] && fromPipe.scalars == expected, "f\(size) from a pipe")

            // Cut 1000 bytes short: the message gives the bytes found, counted over all chunks.
            let short = data.dropLast(1000)
            for (name, error) in [("file", attentionError("short f\(size) file") { try Tensor<Float>(contentsOfNPY: file("short\(size).npy", short)) }),
                                  ("pipe", try throughPipe(short) { url in attentionError("short f\(size) pipe") { try Tensor<Float>(contentsOfNPY: url) } })] {
                #expect(error?.code == .npyFormat, "\(name): \(String(describing: error))")
                #expect(error?.message.contains("truncated") == true && error?.message.contains("the file has \(count * size - 1000)") == true,
                        "\(name): \(String(describing: error))")
            }
        }

        // A float64 value out of Float's range in the third chunk (from a file) and in the last
        // one (from a pipe, which is then read to its end).
        for (bad, viaPipe) in [(70_001, false), (99_000, true)] {
            var outOfRange = values
            outOfRange[bad] = -1e39
            let data = npyBytes(header: "{'descr': '<f8', 'fortran_order': False, 'shape': (\(rows), \(columns)), }",
                                payload: littleEndianBytes(outOfRange, size: 8))
            let error = viaPipe
                ? try throughPipe(data) { url in attentionError("-1e39 at \(bad), pipe") { try Tensor<Float>(contentsOfNPY: url) } }
                : attentionError("-1e39 at \(bad), file") { try Tensor<Float>(contentsOfNPY: file("bad\(bad).npy", data)) }
            #expect(error?.code == .npyValueOutOfRange, "\(String(describing: error))")
            #expect(error?.message.contains("at index [\(bad / columns), \(bad % columns)]") == true, "\(String(describing: error))")
        }

        // Bools: 600 000 of them, three chunks; a byte 3 in the third.
        let pattern: [UInt8] = (0..<600_000).map { (n: Int) -> UInt8 in UInt8((n * 7 + n / 5) % 2) }
        let boolHeader = "{'descr': '|b1', 'fortran_order': False, 'shape': (600000,), }"
        let mask = try throughPipe(npyBytes(header: boolHeader, payload: pattern)) { try Tensor<Bool>(contentsOfNPY: $0) }
        #expect(mask.scalars == pattern.map { $0 == 1 })
        var badPattern = pattern
        badPattern[530_001] = 3
        let error = attentionError("bool byte 3") { try Tensor<Bool>(contentsOfNPY: file("bad.npy", npyBytes(header: boolHeader, payload: badPattern))) }
        #expect(error?.code == .npyFormat && error?.message.contains("bool byte 3 at index [530001]") == true, "\(String(describing: error))")
    }

    @Test("a huge file is refused after reading its start: not .npy, or a header that does not match its size")
    func hugeFiles() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let size: UInt64 = 8 << 30                   // 8 GiB, sparse: no disk space is used
        func sparseFile(_ name: String, startingWith start: Data) throws -> URL {
            try makeSparseFile(directory.appendingPathComponent(name), startingWith: start, size: size)
        }
        let notNPY = try sparseFile("huge.bin", startingWith: Data("just some text".utf8))
        let header = try Tensor<Float>(shape: [2], scalars: [1, 2]).npyData()
        let npyWithTail = try sparseFile("huge.npy", startingWith: header)

        let clock = ContinuousClock()
        let start = clock.now
        let first = attentionError("8 GiB of text") { try Tensor<Float>(contentsOfNPY: notNPY) }
        #expect(first?.code == .npyFormat && first?.message.contains("magic string") == true, "\(String(describing: first))")
        let second = attentionError("8 GiB after a 2-element array") { try Tensor<Float>(contentsOfNPY: npyWithTail) }
        let tail = Int(size) - header.count
        #expect(second?.code == .npyFormat, "\(String(describing: second))")
        #expect(second?.message.contains("\(tail) bytes of unexpected data after the array") == true,
                "\(String(describing: second))")
        let third = attentionError("8 GiB as bool") { try Tensor<Bool>(contentsOfNPY: npyWithTail) }
        #expect(third?.code == .npyUnsupported)
        // Reading 8 GiB would take seconds and that much memory; the start takes microseconds.
        let elapsed = clock.now - start
        #expect(elapsed < .seconds(1), "took \(elapsed)")
    }

    /// A valid file (sparse here) whose tensor would not fit in the machine's memory: a
    /// thrown `.sizeOverflow` before anything is allocated, never the allocation's trap; from
    /// a pipe, as soon as its header is read.
    @Test("a tensor larger than the machine's memory is refused, from a file or a pipe")
    func largerThanMemory() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let memory = Int(ProcessInfo.processInfo.physicalMemory)
        for (descr, itemSize, asBool) in [("<f4", 4, false), ("<f8", 8, false), ("|b1", 1, true)] {
            let elementSize = asBool ? 1 : 4                     // Bool or Float in memory
            let rows = memory / elementSize / 4096 + 1           // one row more than memory holds
            let header = npyBytes(header: "{'descr': '\(descr)', 'fortran_order': False, 'shape': (\(rows), 4096), }")
            let url = try makeSparseFile(directory.appendingPathComponent("huge\(itemSize).npy"), startingWith: header,
                                         size: UInt64(header.count + rows * 4096 * itemSize))
            let read = { (url: URL) throws -> Void in
                if asBool { _ = try Tensor<Bool>(contentsOfNPY: url) } else { _ = try Tensor<Float>(contentsOfNPY: url) }
            }
            let fromFile = attentionError("\(descr) file") { try read(url) }
            #expect(fromFile?.code == .sizeOverflow, "\(descr): \(String(describing: fromFile))")
            #expect(fromFile?.message.contains("[\(rows), 4096]") == true && fromFile?.message.contains("memory") == true,
                    "\(descr): \(String(describing: fromFile))")
            let fromPipe = try throughPipe(header) { url in attentionError("\(descr) pipe") { try read(url) } }
            #expect(fromPipe?.code == .sizeOverflow, "\(descr) pipe: \(String(describing: fromPipe))")
        }
    }
}

/// Whether the system creates unnamed files (`O_TMPFILE`) in `directory`: a probe
/// independent of `PendingFile`, so that its tests expect unnamed files exactly where they work.
func unnamedFilesSupported(in directory: String) -> Bool {
    #if os(Linux) && (arch(x86_64) || arch(arm64))
    guard access("/proc/self/fd", X_OK) == 0 else { return false }
    let fd = open(directory, 0o20000000 | O_DIRECTORY | O_WRONLY, 0o600)
    guard fd >= 0 else { return false }
    close(fd)
    return true
    #else
    return false
    #endif
}
