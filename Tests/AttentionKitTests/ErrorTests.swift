@_spi(Benchmarking) @testable import AttentionKit
import Foundation
import Testing

/// Every bad input throws an `AttentionError` with the right code and a message that names
/// the shapes involved; nothing traps.
@Suite("Bad input throws")
struct ErrorTests {
    func t(_ shape: [Int]) -> Tensor<Float> { try! Tensor(shape: shape) }

    func attend(_ q: [Int], _ k: [Int], _ v: [Int], mask: AttentionMask = .none, scale: Float? = nil,
                kernel: AttentionKernel = .blas) throws {
        _ = try scaledDotProductAttention(query: t(q), key: t(k), value: t(v), mask: mask, scale: scale, kernel: kernel)
    }

    /// The message the README and AttentionError's doc quote, and `localizedDescription`
    /// (what code written against `Error` prints) giving that message, not a generic one.
    @Test func messageAndLocalizedDescription() throws {
        let (q, k, v) = (try Tensor<Float>(shape: [1, 8, 128, 64]), try Tensor<Float>(shape: [1, 8, 128, 32]),
                         try Tensor<Float>(shape: [1, 8, 128, 64]))
        let quoted = "query Dk 64 does not match key Dk 32 (query [1, 8, 128, 64], key [1, 8, 128, 32], value [1, 8, 128, 64])"
        do {
            _ = try scaledDotProductAttention(query: q, key: k, value: v)
            Issue.record("no error thrown")
        } catch let error as AttentionError {
            #expect(error.code == .keyDimensionMismatch && error.message == quoted)
            #expect((error as any Error).localizedDescription == quoted)
            #expect("\(error)" == quoted)
        }
    }

    @Test func tensorConstruction() {
        expectError(.scalarCountMismatch, mentions: ["[2, 3]", "6", "5"]) {
            _ = try Tensor<Float>(shape: [2, 3], scalars: [1, 2, 3, 4, 5])
        }
        expectError(.negativeDimension, mentions: ["[2, -1]"]) { _ = try Tensor<Float>(shape: [2, -1], scalars: []) }
        expectError(.negativeDimension, mentions: ["[-4]"]) { _ = try Tensor<Bool>(shape: [-4], repeating: true) }
        expectError(.sizeOverflow, mentions: ["[\(Int.max), 2]"]) { _ = try Tensor<Float>(shape: [Int.max, 2]) }
        expectError(.scalarCountMismatch, mentions: ["[3, 3]"]) { _ = try t([2, 3]).reshaped([3, 3]) }
    }

    @Test(arguments: AttentionKernel.allCases) func shapes(_ kernel: AttentionKernel) {
        expectError(.invalidRank, mentions: ["[4]"]) { try attend([4], [4], [4], kernel: kernel) }
        expectError(.invalidRank, mentions: ["[1, 1, 1, 2, 4]"]) {
            try attend([1, 1, 1, 2, 4], [1, 1, 1, 2, 4], [1, 1, 1, 2, 4], kernel: kernel)
        }
        expectError(.invalidRank, mentions: ["[2, 4]", "[1, 3, 4]"]) { try attend([2, 4], [1, 3, 4], [1, 3, 4], kernel: kernel) }
        expectError(.keyDimensionMismatch, mentions: ["64", "32", "[1, 8, 128, 64]", "[1, 8, 128, 32]"]) {
            try attend([1, 8, 128, 64], [1, 8, 128, 32], [1, 8, 128, 64], kernel: kernel)
        }
        expectError(.sequenceLengthMismatch, mentions: ["[1, 2, 5, 4]", "[1, 2, 6, 4]"]) {
            try attend([1, 2, 3, 4], [1, 2, 5, 4], [1, 2, 6, 4], kernel: kernel)
        }
        expectError(.batchMismatch, mentions: ["[2, 2, 3, 4]", "[3, 2, 5, 4]"]) {
            try attend([2, 2, 3, 4], [3, 2, 5, 4], [3, 2, 5, 4], kernel: kernel)
        }
        expectError(.batchMismatch, mentions: ["[2, 3, 4]", "[2, 5, 4]", "[1, 5, 4]"]) {
            try attend([2, 3, 4], [2, 5, 4], [1, 5, 4], kernel: kernel)
        }
        expectError(.headCountMismatch, mentions: ["[1, 2, 5, 4]", "[1, 4, 5, 4]"]) {
            try attend([1, 4, 3, 4], [1, 2, 5, 4], [1, 4, 5, 4], kernel: kernel)
        }
        expectError(.headGrouping, mentions: ["6", "4", "[1, 6, 3, 4]"]) {
            try attend([1, 6, 3, 4], [1, 4, 5, 4], [1, 4, 5, 4], kernel: kernel)
        }
        expectError(.headGrouping, mentions: ["[1, 2, 3, 4]", "[1, 0, 5, 4]"]) {
            try attend([1, 2, 3, 4], [1, 0, 5, 4], [1, 0, 5, 4], kernel: kernel)
        }
    }

    @Test func masks() throws {
        let q = [2, 3, 4, 8], k = [2, 3, 5, 8]
        expectError(.maskShape, mentions: ["[6]", "[2, 3, 4, 5]"]) {
            try attend(q, k, k, mask: .boolean(try Tensor(shape: [6], repeating: true)))
        }
        // [3, 4, 1] does broadcast to [2, 3, 4, 5] (one bias per head and query).
        try attend(q, k, k, mask: .additive(try Tensor(shape: [3, 4, 1], repeating: 0)))
        expectError(.maskShape, mentions: ["[2, 2, 4, 5]"]) {
            try attend(q, k, k, mask: .additive(try Tensor(shape: [2, 2, 4, 5], repeating: 0)))
        }
        expectError(.maskShape, mentions: ["[1, 2, 3, 4, 5]", "rank"]) {
            try attend(q, k, k, mask: .boolean(try Tensor(shape: [1, 2, 3, 4, 5], repeating: true)))
        }
        expectError(.maskShape, mentions: ["[1, 4, 5]", "[4, 5]"]) {
            try attend([4, 8], [5, 8], [5, 8], mask: .boolean(try Tensor(shape: [1, 4, 5], repeating: true)))
        }
        // A size that would need the scores to broadcast, not the mask.
        expectError(.maskShape, mentions: ["[2, 1, 3]", "[2, 1, 5]"]) {
            try attend([2, 1, 8], [2, 5, 8], [2, 5, 8], mask: .boolean(try Tensor(shape: [2, 1, 3], repeating: true)))
        }
        expectError(.keyLengths, mentions: ["3", "2"]) { try attend(q, k, k, mask: .keyLengths([1, 2, 3])) }
        expectError(.keyLengths, mentions: ["6", "0...5"]) { try attend(q, k, k, mask: .keyLengths([6, 1])) }
        expectError(.keyLengths, mentions: ["-1"]) { try attend(q, k, k, mask: [.causal(.upperLeft), .keyLengths([2, -1])]) }
        expectError(.keyLengths, mentions: ["2", "1"]) { try attend([4, 8], [5, 8], [5, 8], mask: .keyLengths([2, 2])) }
    }

    @Test func scaleAndDropout() {
        for bad: Float in [.nan, .infinity, -.infinity] {
            expectError(.invalidScale, mentions: ["\(bad)"]) { try attend([2, 4], [3, 4], [3, 4], scale: bad) }
        }
        for bad: Float in [-0.1, 1, 1.5, .nan, .infinity] {
            expectError(.dropoutProbability, mentions: ["\(bad)"]) { _ = try Dropout(probability: bad, seed: 1) }
        }
    }

    @Test func threadSettings() throws {
        expectError(.threadCount, mentions: ["0"]) { try AttentionThreads.setCount(0) }
        expectError(.threadCount, mentions: ["abc"]) { _ = try AttentionThreads.resolve(override: nil, environment: "abc", cores: 2) }
        expectError(.threadCount, mentions: ["'0'"]) { _ = try AttentionThreads.resolve(override: nil, environment: "0", cores: 2) }
        expectError(.threadCount, mentions: ["-2"]) { _ = try AttentionThreads.resolve(override: nil, environment: "-2", cores: 2) }
        #expect(try AttentionThreads.resolve(override: nil, environment: " 3 ", cores: 2) == 3)
        #expect(try AttentionThreads.resolve(override: 5, environment: "3", cores: 2) == 5)
        #expect(try AttentionThreads.resolve(override: nil, environment: nil, cores: 2) == 2)
        // Set but blank counts as unset, as OpenMP and OpenBLAS treat their variables.
        #expect(try AttentionThreads.resolve(override: nil, environment: "", cores: 2) == 2)
        #expect(try AttentionThreads.resolve(override: nil, environment: " \t", cores: 2) == 2)
        #expect((1...AttentionThreads.maximum).contains(AttentionThreads.coreCount))
    }

    /// A mask dimension against a score dimension of 1 says so plainly.
    @Test func broadcastMessageAgainstSizeOne() {
        let q = gridTensor([1, 2, 3, 4], seed: 1), k = gridTensor([1, 2, 3, 4], seed: 2)
        let bad = try! Tensor<Bool>(shape: [3, 1, 1, 1], scalars: [true, false, true])     // 3 against batch 1
        expectError(.maskShape, mentions: ["size 3 at axis 0 is not 1"]) {
            _ = try scaledDotProductAttention(query: q, key: k, value: k, mask: .boolean(bad))
        }
    }
}

/// Inputs found by review that used to trap or to hide NaN.
@Suite("Edge cases from review")
struct EdgeCaseTests {
    /// Empty but enormous shapes: valid tensors (a 0 makes any size valid) whose other
    /// sizes overflow when multiplied. They give an empty result or a thrown error, never a trap.
    @Test func hugeEmptyShapes() throws {
        for kernel in AttentionKernel.allCases {
            let out = try scaledDotProductAttention(
                query: try Tensor(shape: [1 << 40, 1, 1 << 30, 0]), key: try Tensor(shape: [1 << 40, 1, 0, 0]),
                value: try Tensor(shape: [1 << 40, 1, 0, 0]), kernel: kernel)
            #expect(out.count == 0 && out.shape == [1 << 40, 1, 1 << 30, 0])
            // 2⁶² query heads over one key/value head: an empty output, so nothing for BLAS to
            // index; the weights [1, 2⁶², 4, 4] would have more elements than an Int counts.
            let heads = try scaledDotProductAttention(query: try Tensor(shape: [1, 1 << 62, 4, 0]),
                                                      key: try Tensor(shape: [1, 1, 4, 0]),
                                                      value: try Tensor(shape: [1, 1, 4, 0]), kernel: kernel)
            #expect(heads.count == 0 && heads.shape == [1, 1 << 62, 4, 0])
            expectError(.sizeOverflow, mentions: ["[1, 4611686018427387904, 4, 4]"]) {
                _ = try scaledDotProductAttentionWithWeights(query: try Tensor(shape: [1, 1 << 62, 4, 0]),
                                                             key: try Tensor(shape: [1, 1, 4, 0]),
                                                             value: try Tensor(shape: [1, 1, 4, 0]), kernel: kernel)
            }
            // Dv = 0 with a huge B·H·L and no weights: nothing to compute.
            let empty = try scaledDotProductAttention(
                query: try Tensor(shape: [1 << 30, 1, 1 << 30, 0]), key: try Tensor(shape: [1 << 30, 1, 3, 0]),
                value: try Tensor(shape: [1 << 30, 1, 3, 0]), kernel: kernel)
            #expect(empty.count == 0)
        }
    }

    /// Tiny or empty inputs that describe results larger than the machine's memory throw
    /// `.sizeOverflow` naming the shapes, before anything is allocated, instead of trapping in
    /// the allocator; so does a tensor initialiser asked for such a shape. A problem with work
    /// for BLAS whose g·L rows pass its 32-bit sizes throws before its output is allocated.
    @Test func resultsBeyondMemory() throws {
        let n = Int(Int32.max)
        for kernel in AttentionKernel.allCases {
            // Weights [1, 1, n, n]: 2⁶² elements, more bytes than an Int counts.
            expectError(.sizeOverflow, mentions: ["[1, 1, 2147483647, 2147483647]", "query [1, 1, 2147483647, 0]"]) {
                let empty = try Tensor<Float>(shape: [1, 1, n, 0])
                _ = try scaledDotProductAttentionWithWeights(query: empty, key: empty, value: empty, kernel: kernel)
            }
            // Output [1, 32768, 65535, 1000] from inputs of a few bytes: 8 TiB.
            expectError(.sizeOverflow, mentions: ["output [1, 32768, 65535, 1000]", "TiB", "of memory"]) {
                _ = try scaledDotProductAttention(query: try Tensor(shape: [1, 32768, 65535, 0]),
                                                  key: try Tensor(shape: [1, 1, 1, 0]),
                                                  value: try Tensor(shape: [1, 1, 1, 1000]), kernel: kernel)
            }
            // 2³¹ query rows of one head (Dk = 0, an 8 GiB output): beyond BLAS's 32-bit sizes,
            // refused before the output is allocated.
            expectError(.sizeOverflow, mentions: ["32-bit", "query [1, 1, 2147483648, 0]"]) {
                _ = try scaledDotProductAttention(query: try Tensor(shape: [1, 1, 1 << 31, 0]),
                                                  key: try Tensor(shape: [1, 1, 1, 0]),
                                                  value: try Tensor(shape: [1, 1, 1, 1]), kernel: kernel)
            }
        }
        expectError(.sizeOverflow, mentions: ["[1048576, 1048576, 1024]", "of memory"]) {
            _ = try Tensor<Float>(shape: [1 << 20, 1 << 20, 1 << 10])
        }
    }

    /// The memory ceiling follows the process's cgroup: the lowest limit from its cgroup up to
    /// the root, in cgroup v2 (`memory.max`, "max" for none) and v1 (`memory.limit_in_bytes`,
    /// near 2⁶³ for none), with the files given here by hand.
    @Test func cgroupMemoryLimits() {
        func limit(_ cgroups: String, _ files: [String: String]) -> UInt64? {
            cgroupMemoryLimit(processCgroups: cgroups, readFile: { files[$0] })
        }
        // v2: a service whose slice holds the limit.
        #expect(limit("0::/user.slice/app.service\n", [
            "/sys/fs/cgroup/user.slice/app.service/memory.max": "max\n",
            "/sys/fs/cgroup/user.slice/memory.max": "4294967296\n",
        ]) == 4294967296)
        // v2 inside a container's own namespace: its cgroup is the root of what it sees.
        #expect(limit("0::/\n", ["/sys/fs/cgroup/memory.max": "1073741824\n"]) == 1073741824)
        #expect(limit("0::/a/b\n", ["/sys/fs/cgroup/a/b/memory.max": "max", "/sys/fs/cgroup/a/memory.max": "max"]) == nil)
        // v1, the memory controller alone or with others; unlimited values are ignored.
        let v1 = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n"
        #expect(limit(v1, [
            "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "2147483648\n",
            "/sys/fs/cgroup/memory/docker/memory.limit_in_bytes": "9223372036854771712\n",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
            "/sys/fs/cgroup/cpu,cpuacct/docker/abc/memory.limit_in_bytes": "1",    // not the memory hierarchy
        ]) == 2147483648)
        #expect(limit("5:blkio,memory:/x\n", ["/sys/fs/cgroup/memory/x/memory.limit_in_bytes": "3000000000"]) == 3000000000)
        #expect(limit(v1, ["/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "9223372036854771712"]) == nil)
        // A hybrid system: the lower of its two hierarchies' limits.
        #expect(limit("4:memory:/s\n0::/s\n", [
            "/sys/fs/cgroup/memory/s/memory.limit_in_bytes": "8000000000",
            "/sys/fs/cgroup/s/memory.max": "6000000000",
        ]) == 6000000000)
        // Nothing readable or nothing that parses: no limit.
        #expect(limit("", [:]) == nil)
        #expect(limit("garbage\n3:memory\n0::relative\n", ["/sys/fs/cgroup/memory.max": "12"]) == nil)
        #expect(limit("0::/\n", ["/sys/fs/cgroup/memory.max": "-5"]) == nil)
        // The process's own ceiling is never above the machine's memory.
        #expect(memoryCeiling.bytes <= ProcessInfo.processInfo.physicalMemory && memoryCeiling.bytes > 0)
    }

    /// What is left under `ulimit -v` and `ulimit -d`: each limit less what the process uses
    /// of it (statm's size and data fields, in pages), the tighter one named; nothing without
    /// limits; 0, not a wrapped-around number, when the use reaches the limit or overflows.
    @Test func memoryLeftUnderLimits() {
        let statm: [UInt64] = [25_000, 900, 300, 10, 0, 12_000, 0]       // pages of 4 KiB
        #expect(memoryLeft(addressSpace: nil, data: nil, statm: statm, pageSize: 4096) == nil)
        let v = memoryLeft(addressSpace: 200_000_000, data: nil, statm: statm, pageSize: 4096)
        #expect(v?.left == 200_000_000 - 25_000 * 4096 && v?.name == "address-space limit (ulimit -v)")
        let d = memoryLeft(addressSpace: nil, data: 100_000_000, statm: statm, pageSize: 4096)
        #expect(d?.left == 100_000_000 - 12_000 * 4096 && d?.name == "data limit (ulimit -d)")
        // Both set: the one with less left, whichever limit is lower.
        #expect(memoryLeft(addressSpace: 200_000_000, data: 100_000_000, statm: statm, pageSize: 4096)?.name
                == "data limit (ulimit -d)")
        #expect(memoryLeft(addressSpace: 150_000_000, data: 140_000_000, statm: statm, pageSize: 4096)?.left
                == 150_000_000 - 25_000 * 4096)
        // Used up, overflowing, or statm unreadable.
        #expect(memoryLeft(addressSpace: 25_000 * 4096, data: nil, statm: statm, pageSize: 4096)?.left == 0)
        #expect(memoryLeft(addressSpace: 1 << 40, data: nil, statm: [UInt64.max / 2], pageSize: 4096)?.left == 0)
        #expect(memoryLeft(addressSpace: 1 << 30, data: 1 << 29, statm: [], pageSize: 4096)?.left == 1 << 29)
    }

    /// The kernels' working buffers grow with S on every worker (a block of score rows, a
    /// mask probe, the repair pass's float64 row). A review found q [256, 0], k [2²⁸, 0],
    /// v [2²⁸, 1] (1 GiB) trapping on a 32 GiB score block per worker: the blocks are now
    /// capped so that all workers' blocks stay within a sixteenth of memory, and a call whose
    /// buffers and results would still not fit throws. The check is arithmetic only here;
    /// the inputs that reach it would take gigabytes.
    @Test func workingBuffersBeyondMemory() throws {
        let S = Int(Int32.max)
        let huge = try AttentionProblem(query: [256, 0], key: [S, 0], value: [S, 1])
        expectError(.sizeOverflow, mentions: ["working buffers", "2147483647 keys on 2 threads", "of memory"]) {
            try huge.checkWorkingMemory(threads: 2, wantWeights: false, results: 256, "shapes")
        }
        // A long but ordinary call passes: 2²⁰ keys, 8 heads, two threads.
        let long = try AttentionProblem(query: [1, 8, 4096, 64], key: [1, 8, 1 << 20, 64], value: [1, 8, 1 << 20, 64])
        try long.checkWorkingMemory(threads: 2, wantWeights: false, results: 8 * 4096 * 64, "shapes")
        // Workers need a query row each: a decode step of 32 rows counts 32 workers' buffers,
        // not those of the 4096 threads asked for (which a review found refusing it).
        let decode = try AttentionProblem(query: [1, 32, 1, 128], key: [1, 8, 1 << 20, 128], value: [1, 8, 1 << 20, 128])
        try decode.checkWorkingMemory(threads: AttentionThreads.maximum, wantWeights: false, results: 32 * 128, "shapes")
        for (keys, threads) in [(1 << 28, 2), (S, 1), (1 << 24, 64), (1 << 20, 2)] {
            let rows = blasRowBlock(unitRows: 4096, units: 1, keyLength: keys, threads: threads)
            let bytes = rows * keys * threads * 4
            #expect(rows >= 1 && (rows == 1 || bytes <= Int(memoryCeiling.bytes) / 16), "S \(keys), \(threads) threads: \(rows) rows")
        }
        // Ordinary lengths keep their cache-sized blocks.
        #expect(blasRowBlock(unitRows: 2048, units: 8, keyLength: 8192, threads: 2) == 32)
        #expect(blasRowBlock(unitRows: 512, units: 8, keyLength: 512, threads: 2) == 256)
        // Shapes given as arrays (not tensors) are checked for negative sizes too.
        expectError(.negativeDimension, mentions: ["query has negative size -1"]) {
            _ = try automaticKernel(query: [-1, 4], key: [-1, 4], value: [-1, 4])
        }
    }

    /// A long decode step on the largest thread count: most threads have nothing to do, and
    /// the call computes what it does on two threads (a review found it refused with
    /// `.sizeOverflow` from about 256k keys on 4096 threads).
    @Test func longDecodeOnManyThreads() throws {
        let S = 1_000_000
        let q = try Tensor<Float>(shape: [1, 1, 1, 1], scalars: [1])
        let k = gridTensor([1, 1, S, 1], seed: 81), v = normalTensor([1, 1, S, 1], seed: 82)
        let want = referenceAttention(query: q, key: k, value: v)
        for kernel in [AttentionKernel.automatic, .blas] {
            for threads in [2, AttentionThreads.maximum] {
                let out = try AttentionThreads.withCount(threads) {
                    try scaledDotProductAttention(query: q, key: k, value: v, kernel: kernel)
                }
                assertClose(out, want.output, shape: [1, 1, 1, 1], absolute: outputTolerance(v), "\(kernel), \(threads) threads")
            }
        }
    }

    @Test func threadCountLimit() {
        expectError(.threadCount, mentions: ["\(Int.max)"]) { try AttentionThreads.setCount(Int.max) }
        expectError(.threadCount, mentions: ["4097"]) { try AttentionThreads.setCount(AttentionThreads.maximum + 1) }
        expectError(.threadCount, mentions: ["9223372036854775807"]) {
            _ = try AttentionThreads.resolve(override: nil, environment: "9223372036854775807", cores: 2)
        }
    }

    /// NaN scores give NaN outputs on every kernel and tiling, as in PyTorch, not zero rows.
    @Test func nanScoresPropagate() throws {
        var q = gridTensor([1, 1, 40, 8], seed: 3)
        let k = gridTensor([1, 1, 40, 8], seed: 4), v = gridTensor([1, 1, 40, 8], seed: 5)
        q.withUnsafeMutableBufferPointer { p in for d in 0..<8 { p[3 * 8 + d] = .nan } }      // query row 3
        var k2 = k
        k2.withUnsafeMutableBufferPointer { p in p[20 * 8] = .nan }                           // key 20
        for (key, nanRows) in [(k, Set([3])), (k2, Set(20..<40).union([3]))] {
            let want = referenceAttention(query: q, key: key, value: v, mask: [.causal(.upperLeft)])
            var outputs = try AttentionKernel.allCases.map {
                try scaledDotProductAttention(query: q, key: key, value: v, mask: .causal(.upperLeft), kernel: $0)
            }
            for tiles in [TileSizes(queryBlock: 7, keyBlock: 20), TileSizes(queryBlock: 40, keyBlock: 1, splits: 3),
                          TileSizes(queryBlock: 1, keyBlock: 21, splits: 2)] {
                outputs.append(try runAttention(query: q, key: key, value: v, mask: .causal(.upperLeft), scale: nil,
                                                dropout: nil, kernel: .tiled, wantWeights: false, tiles: tiles).output)
            }
            for (n, out) in outputs.enumerated() {
                for row in 0..<40 {
                    let values = out.scalars[(row * 8)..<((row + 1) * 8)]
                    if nanRows.contains(row) {
                        #expect(values.allSatisfy { $0.isNaN }, "output \(n) row \(row) should be NaN: \(Array(values))")
                    } else {
                        #expect(values.allSatisfy { !$0.isNaN }, "output \(n) row \(row) should be finite")
                        let err = zip(values, want.output[(row * 8)..<((row + 1) * 8)]).map { Swift.abs(Double($0) - $1) }.max()!
                        #expect(err <= outputTolerance(v), "output \(n) row \(row) error \(err)")
                    }
                }
            }
        }
    }

    /// A row whose only allowed key has a NaN score is NaN too, not an all-excluded zero row,
    /// on every kernel (the naive oracle included).
    @Test func nanScoreAsTheOnlyAllowedKey() throws {
        let q = gridTensor([1, 1, 4, 8], seed: 6)
        var k = gridTensor([1, 1, 6, 8], seed: 7)
        let v = gridTensor([1, 1, 6, 8], seed: 8)
        k.withUnsafeMutableBufferPointer { p in p[2 * 8] = .nan }                            // key 2
        let only2 = try Tensor<Bool>(shape: [4, 6], scalars: (0..<24).map { $0 / 6 != 0 || $0 % 6 == 2 })
        var outputs = try AttentionKernel.allCases.map {
            ("\($0)", try scaledDotProductAttention(query: q, key: k, value: v, mask: .boolean(only2), kernel: $0))
        }
        for tiles in [TileSizes(queryBlock: 1, keyBlock: 2), TileSizes(queryBlock: 4, keyBlock: 3, rowwiseLimit: 0)] {
            outputs.append(("\(tiles)", try runAttention(query: q, key: k, value: v, mask: .boolean(only2), scale: nil,
                                                         dropout: nil, kernel: .tiled, wantWeights: false, tiles: tiles).output))
        }
        for (name, out) in outputs {
            #expect(out.scalars[0..<8].allSatisfy { $0.isNaN }, "\(name) row 0: \(Array(out.scalars[0..<8]))")
        }
    }
}

