import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How many threads AttentionKit's kernels use.
///
/// By default a call uses every core the process may run on (``coreCount``). The environment
/// variable `ATTENTIONKIT_NUM_THREADS` (when set and not blank) overrides that for the process, ``setCount(_:)`` overrides both
/// from Swift, and ``withCount(_:_:)`` overrides all three for the calls inside one closure
/// (on the current task only, so concurrent code keeps its own setting). Kernels set
/// OpenBLAS to one thread and parallelise over their own work items, so the two never
/// oversubscribe the cores. OpenBLAS stays at one thread afterwards (restoring it after each
/// call woke OpenBLAS's idle threads, which then spun and took a core); call
/// `openblas_set_num_threads` yourself for your own BLAS work.
///
/// Reproducibility: with the same inputs and thread count, the attention kernels give the
/// same bits every time, concurrent calls or not. Across thread counts they agree up to
/// float rounding only: the BLAS kernel sizes its blocks of query rows by the count, and the
/// tiled kernel splits the keys of calls with few query blocks (decoding) by it and merges the
/// parts (differences of a few 1e-8 on outputs of order 1, measured at B1 H1 L512 S512 D64
/// and B1 H8/2 L1 S4096 D128). The projections of ``Linear`` and ``MultiHeadAttention`` run on
/// OpenBLAS's own threads, whose multi-threaded sgemm rounds differently from one thread, and
/// whose count is process-wide (see ``withCount(_:_:)``): a layer's output can differ in the
/// last bits with the thread count, and, while other threads run AttentionKit calls, from one
/// call to the next.
///
/// ```swift
/// try AttentionThreads.setCount(1)      // single-threaded from now on
/// try AttentionThreads.setCount(nil)    // back to the environment / all cores
/// let out = try AttentionThreads.withCount(2) {   // two threads for these calls only
///     try scaledDotProductAttention(query: q, key: k, value: v)
/// }
/// ```
public enum AttentionThreads {
    /// 0 means "not set from Swift".
    private static let override = Atomic<Int>(0)

    /// The largest thread count accepted (far above any core count; it keeps the work
    /// splitting arithmetic from overflowing).
    public static let maximum = 4096

    /// The number of cores this process may run on: on Linux, the CPUs in its affinity mask
    /// (`Cpus_allowed` in `/proc/self/status`, read once, at the first use; so `taskset -c 0`
    /// or a cpuset-limited container counts only the cores it was given), elsewhere the online
    /// cores.
    public static var coreCount: Int { startingCoreCount }

    private static let startingCoreCount: Int = {
        let online = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        #if os(Linux)
        // "Cpus_allowed:\t3" or, with many CPUs, "ff,ffffffff": one bit per CPU, in hex.
        if let file = fopen("/proc/self/status", "r") {
            defer { fclose(file) }
            var line = [CChar](repeating: 0, count: 4096)
            while fgets(&line, Int32(line.count), file) != nil {
                let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                guard text.hasPrefix("Cpus_allowed:") else { continue }
                let allowed = text.dropFirst("Cpus_allowed:".count).reduce(0) { count, c in
                    count + (c.hexDigitValue?.nonzeroBitCount ?? 0)
                }
                return allowed > 0 ? min(allowed, online) : online
            }
        }
        #endif
        return online
    }()

    /// Sets the thread count for subsequent calls, or restores the default with `nil`.
    ///
    /// - Throws: ``AttentionError`` with code `.threadCount` when `count` is outside
    ///   1...``maximum``.
    public static func setCount(_ count: Int?) throws {
        override.store(try count.map(checked) ?? 0, ordering: .relaxed)
    }

    /// The count set by an enclosing ``withCount(_:_:)`` on this task, if any.
    @TaskLocal private static var scoped: Int?

    /// Runs `body` with every AttentionKit call inside it (on the current task, including
    /// tasks it creates) using `count` threads, then returns what `body` returns. Other tasks
    /// and threads keep their setting, which makes this the safe way to pin the thread count
    /// in code that runs concurrently with other AttentionKit users, such as tests. (The
    /// projections of ``Linear`` and ``MultiHeadAttention`` set OpenBLAS's own thread count,
    /// which is process-wide: under concurrent calls each runs its projections on the count
    /// set last, or on one thread while another call's attention kernel runs, so their
    /// results can differ in the last bits, as with a different count.)
    ///
    /// - Throws: ``AttentionError`` with code `.threadCount` when `count` is outside
    ///   1...``maximum``; otherwise whatever `body` throws.
    public static func withCount<Result>(_ count: Int, _ body: () throws -> Result) throws -> Result {
        try $scoped.withValue(checked(count), operation: body)
    }

    /// Runs the asynchronous `body` with every AttentionKit call inside it using `count`
    /// threads: calls on the current task and on the child tasks it starts (a task group's
    /// tasks, `async let`), as ``withCount(_:_:)`` does for a synchronous body.
    ///
    /// ```swift
    /// try await AttentionThreads.withCount(1) {
    ///     try await withThrowingTaskGroup(of: Tensor<Float>.self) { group in
    ///         for request in requests { group.addTask { try mha(query: request, key: request, value: request) } }
    ///         for try await output in group { send(output) }
    ///     }
    /// }
    /// ```
    ///
    /// - Throws: ``AttentionError`` with code `.threadCount` when `count` is outside
    ///   1...``maximum``; otherwise whatever `body` throws.
    public static func withCount<Result>(_ count: Int, isolation: isolated (any Actor)? = #isolation,
                                         _ body: () async throws -> Result) async throws -> Result {
        try await $scoped.withValue(checked(count), operation: body, isolation: isolation)
    }

    /// `count` when it is in 1...``maximum``.
    private static func checked(_ count: Int) throws -> Int {
        guard (1...maximum).contains(count) else {
            throw AttentionError(.threadCount, "thread count must be in 1...\(maximum), got \(count)")
        }
        return count
    }

    /// The thread count the next call will use: an enclosing ``withCount(_:_:)``, else the
    /// ``setCount(_:)`` setting, else `ATTENTIONKIT_NUM_THREADS`, else ``coreCount``.
    ///
    /// - Throws: ``AttentionError`` with code `.threadCount` when
    ///   `ATTENTIONKIT_NUM_THREADS` is set, not blank, and not an integer in 1...``maximum``.
    public static func count() throws -> Int {
        if let scoped { return scoped }
        let set = override.load(ordering: .relaxed)
        let environment = getenv("ATTENTIONKIT_NUM_THREADS").map { String(cString: $0) }
        return try resolve(override: set > 0 ? set : nil, environment: environment, cores: coreCount)
    }

    /// The thread count from its three sources, in order of precedence.
    static func resolve(override: Int?, environment: String?, cores: Int) throws -> Int {
        if let override { return override }
        if let environment, !environment.allSatisfy(\.isWhitespace) {     // set but empty: unset
            let text = environment.trimmingWhitespace()
            guard let value = Int(text), (1...maximum).contains(value) else {
                throw AttentionError(.threadCount,
                    "ATTENTIONKIT_NUM_THREADS must be an integer in 1...\(maximum), got '\(text)'")
            }
            return value
        }
        return cores
    }
}

private extension String {
    func trimmingWhitespace() -> String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}

/// A shared counter from which workers claim work items.
private final class WorkQueue: Sendable {
    private let next = Atomic<Int>(0)
    let count: Int
    init(count: Int) { self.count = count }

    func claim() -> Int? {
        let item = next.add(1, ordering: .relaxed).oldValue
        return item < count ? item : nil
    }
}

/// Runs `worker` on up to `threads` threads. Each call of `worker` receives `claim`, which
/// hands out the items `0..<items` one at a time until none remain (dynamic scheduling, so
/// uneven items such as causal rows balance). Workers set up per-thread scratch before
/// claiming. Runs inline when one thread suffices.
func parallelWork(threads: Int, items: Int, _ worker: (_ claim: () -> Int?) -> Void) {
    let queue = WorkQueue(count: items)
    let workers = min(threads, items)
    if workers <= 1 {
        worker(queue.claim)
        return
    }
    withoutActuallyEscaping(worker) { worker in
        let box = UncheckedSendable(worker)
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            box.value(queue.claim)
        }
    }
}

/// Carries a value into concurrent code whose safety the caller guarantees (the kernels
/// write disjoint output rows and read shared inputs).
struct UncheckedSendable<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}
