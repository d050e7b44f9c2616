// swift-tools-version:6.1
// The benchmark suite is its own package so that AttentionKit itself keeps no benchmark
// dependency: `make test` and CI never build or resolve anything here.
import PackageDescription

let package = Package(
    name: "AttentionKitBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "AttentionKit", path: ".."),
        // Trait listed explicitly: the malloc interposer backs the malloc metrics on Swift 6.3
        // without jemalloc; listing traits also turns off the package's other default trait.
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1",
                 traits: ["MallocInterposer"]),
    ],
    targets: [
        // Shapes, inputs and registration shared by the benchmark targets.
        .target(
            name: "AttentionBenchmarkSupport",
            dependencies: [
                .product(name: "AttentionKit", package: "AttentionKit"),
                .product(name: "Benchmark", package: "benchmark"),
            ]
        ),
    ] + ["Prefill", "Decode", "Memory", "Dropout"].map { name in
        // One benchmark target per concern, under Benchmarks/ where the plugin looks for them.
        .executableTarget(
            name: name,
            dependencies: [
                "AttentionBenchmarkSupport",
                .product(name: "AttentionKit", package: "AttentionKit"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/\(name)",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    }
)
