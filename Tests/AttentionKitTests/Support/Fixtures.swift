import AttentionKit
import Foundation

// The JSON fixture format shared by the PyTorch parity tests (Fixtures/*.json, written by
// the make_*_fixtures.py scripts beside them).

/// A float tensor in a fixture file: its shape and its values (float64 in the JSON).
struct FloatTensorFixture: Decodable, Sendable {
    let shape: [Int]
    let data: [Double]

    /// The values rounded to a float32 tensor; a count that does not match the shape throws
    /// a `FixtureError` naming `what`.
    func tensor(_ what: String = "fixture") throws -> Tensor<Float> {
        try checkCount(data.count, shape, what)
        return try Tensor<Float>(shape: shape, scalars: data.map { Float($0) })
    }
}

/// A boolean tensor in a fixture file.
struct BoolTensorFixture: Decodable, Sendable {
    let shape: [Int]
    let data: [Bool]

    /// The values as a tensor; a count that does not match the shape throws.
    func tensor(_ what: String = "fixture") throws -> Tensor<Bool> {
        try checkCount(data.count, shape, what)
        return try Tensor<Bool>(shape: shape, scalars: data)
    }
}

/// A fixture file that is missing or does not fit its format.
struct FixtureError: Error, CustomStringConvertible {
    let description: String
}

/// Decodes `Fixtures/<name>.json` from the test bundle.
func loadFixture<File: Decodable>(_ name: String, as type: File.Type) throws -> File {
    guard let url = Bundle.module.url(forResource: name, withExtension: "json", subdirectory: "Fixtures") else {
        throw FixtureError(description: "Fixtures/\(name).json is missing from the test bundle")
    }
    return try JSONDecoder().decode(File.self, from: Data(contentsOf: url))
}

private func checkCount(_ count: Int, _ shape: [Int], _ what: String) throws {
    guard count == shape.reduce(1, *) else {
        throw FixtureError(description: "\(what): fixture has \(count) values for shape \(shape)")
    }
}
