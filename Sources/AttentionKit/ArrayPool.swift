import Synchronization

/// Recycles the layers' large intermediate arrays (projected heads, scratch, the core's
/// output) from one call to the next.
///
/// Why: a forward pass of a BERT-base layer allocates and frees about 20 MB of 3 MB arrays.
/// glibc hands such blocks back to the kernel when they are freed (munmap, or trimming the
/// top of the heap), so every call faulted in and zeroed ~5,000 fresh pages: 8–9 % of a
/// one-thread forward pass in `perf` (clear_page_erms, exc_page_fault and the memcg
/// accounting around them), more at two threads, where the faults are serial. Keeping a
/// few arrays alive between calls removes that.
///
/// Only arrays of at least ``minimumCount`` floats are kept, at most ``maximumFloats`` in
/// total (64 MiB): the memory a process keeps after using a layer is bounded. The arrays
/// handed out have unspecified contents (old data); callers overwrite every element.
enum ArrayPool {
    /// Smaller arrays come from malloc's bins without page faults anyway.
    static let minimumCount = 65_536                 // 256 KiB
    /// The most floats the pool keeps.
    static let maximumFloats = 16 << 20              // 64 MiB

    private static let arrays = Mutex<[[Float]]>([])

    /// An array of exactly `count` floats with unspecified contents, reusing a pooled one
    /// when one is large enough.
    static func take(count: Int) -> [Float] {
        if count >= minimumCount {
            let reused: [Float]? = arrays.withLock { pool in
                // The smallest pooled array that is large enough.
                var best: Int?
                for (i, a) in pool.enumerated() where a.capacity >= count {
                    if best == nil || a.capacity < pool[best!].capacity { best = i }
                }
                return best.map { pool.remove(at: $0) }
            }
            if var array = reused {
                if array.count > count {
                    array.removeLast(array.count - count)                  // keeps the capacity
                } else if array.count < count {
                    array.append(contentsOf: repeatElement(0, count: count - array.count))   // within capacity
                }
                return array
            }
        }
        return [Float](unsafeUninitializedCapacity: count) { _, initialized in initialized = count }
    }

    /// The floats currently kept (tests check the budget).
    static var pooledFloats: Int { arrays.withLock { $0.reduce(0) { $0 + $1.capacity } } }

    /// Gives `array` back for reuse (if it is large enough and the pool has room). Pass an
    /// array nothing else references, or the next user will copy it on write.
    static func recycle(_ array: consuming [Float]) {
        let array = consume array
        guard array.capacity >= minimumCount else { return }
        arrays.withLock { pool in
            var total = pool.reduce(0) { $0 + $1.capacity }
            pool.append(array)
            total += array.capacity
            // Over budget: drop the oldest arrays first.
            while total > maximumFloats, !pool.isEmpty {
                total -= pool.removeFirst().capacity
            }
        }
    }
}
