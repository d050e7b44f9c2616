// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "AttentionKit",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "AttentionKit", targets: ["AttentionKit"]),
        .executable(name: "attention-bench", targets: ["attention-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // `swift package generate-documentation` for the DocC catalog; the library does not use it.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // OpenBLAS through pkg-config (`openblas.pc`, shipped by Debian's libopenblas-dev
        // and Homebrew's openblas). The generic `blas` name is avoided on purpose: on Debian
        // it resolves through the alternatives system and may not be OpenBLAS.
        .systemLibrary(
            name: "CBLAS",
            pkgConfig: "openblas",
            providers: [
                .apt(["libopenblas-dev", "liblapacke-dev"]),
                .brew(["openblas"]),
            ]
        ),
        .target(
            name: "AttentionKit",
            dependencies: ["CBLAS"]
        ),
        .executableTarget(
            name: "attention-bench",
            dependencies: [
                "AttentionKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "AttentionKitTests",
            // attention-bench for its all-or-nothing file writing (RunCommandWriteTests).
            dependencies: ["AttentionKit", "attention-bench"],
            resources: [.copy("Fixtures")]
        ),
    ]
)
