/// Everything a kernel needs, as raw pointers with explicit sizes. Valid only inside the
/// closure that made it (see `runAttention`); kernels must not let the pointers escape.
///
/// Layouts (row-major, contiguous):
/// - query   `[B, Hq, L, Dk]`
/// - key     `[B, Hkv, S, Dk]`
/// - value   `[B, Hkv, S, Dv]`
/// - output  `[B, Hq, L, Dv]`, zero-initialised
/// - weights `[B, Hq, L, S]`, zero-initialised, or nil when the caller does not want them
struct KernelArguments: @unchecked Sendable {
    let problem: AttentionProblem
    let query: UnsafePointer<Float>
    let key: UnsafePointer<Float>
    let value: UnsafePointer<Float>
    let output: UnsafeMutablePointer<Float>
    let weights: UnsafeMutablePointer<Float>?
    let mask: MaskRows
    let scale: Float
    let dropout: Dropout?
    let threads: Int
    /// Forced tile sizes for the tiled kernel, or nil for its defaults.
    var tiles: TileSizes? = nil
}
