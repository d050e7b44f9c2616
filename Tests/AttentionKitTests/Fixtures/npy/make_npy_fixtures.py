#!/usr/bin/env python3
"""Writes the .npy fixtures that NPYTests and NPYCommandLineTests read, with NumPy itself.

    cd Tests/AttentionKitTests/Fixtures/npy && python3 make_npy_fixtures.py

Every file is written by numpy.save / numpy.lib.format.write_array (NumPy 2.4.6 made the
committed ones). manifest.json says, for each file, what AttentionKit must read from it:
the shape and the exact float32 bit patterns (for float64 files, the bits of NumPy's own
a.astype(np.float32), the conversion AttentionKit promises to match) or the bools; or the
error code and a phrase its message must contain. The cli_* files are inputs of
`attention-bench run` with outputs NumPy computed in float64.
"""
import io
import json
import zipfile

import numpy as np

rng = np.random.default_rng(20261125)
manifest = {"generator": f"numpy {np.__version__}", "files": []}


def save(name, array, version=None):
    with open(name, "wb") as f:
        if version is None:
            np.save(f, array, allow_pickle=array.dtype == object)
        else:
            np.lib.format.write_array(f, array, version=version)


def readable(name, array, version=None, kind="float"):
    save(name, array, version)
    entry = {"file": name, "kind": kind, "shape": list(array.shape),
             "numpySave": version is None}
    if kind == "float":
        as32 = np.ascontiguousarray(array).astype(np.float32)
        entry["bits"] = [f"{b:08x}" for b in as32.view(np.uint32).ravel().tolist()]
    else:
        entry["bools"] = array.ravel().tolist()
    manifest["files"].append(entry)


def failing(name, array, read_as, code, contains, version=None):
    save(name, array, version)
    manifest["files"].append({"file": name, "kind": read_as, "error": code, "contains": contains})


f32 = np.float32
specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, np.finfo(f32).max,
                     np.finfo(f32).tiny, 1 / 3, -2.5], dtype=f32)
readable("f4_specials.npy", specials)
readable("f4_rank0.npy", np.array(2.5, dtype=f32))
readable("f4_rank2.npy", (np.arange(12, dtype=f32).reshape(3, 4) / 8 - 0.7).astype(f32))
readable("f4_rank4.npy", rng.standard_normal((2, 3, 4, 5)).astype(f32))
readable("f4_empty.npy", np.zeros((0, 3), dtype=f32))
readable("f4_v2.npy", rng.standard_normal((2, 3)).astype(f32), version=(2, 0))
readable("f4_v3.npy", rng.standard_normal((2, 3)).astype(f32), version=(3, 0))

# float64: rounding to nearest (ties to even), subnormals, underflow to zero, and the
# largest doubles that still round to the largest float32.
fmax = float(np.finfo(f32).max)
half_ulp = 2.0 ** (127 - 24)
f8 = np.concatenate([
    rng.standard_normal(20) * 1000,
    [0.1, -0.0, np.inf, -np.inf, np.nan, 1e-40, 1e-50, -1e-50, 1 + 2.0 ** -24, 1 + 3 * 2.0 ** -24,
     fmax, np.nextafter(fmax + half_ulp, 0), -np.nextafter(fmax + half_ulp, 0), 1e38],
]).astype(np.float64)
readable("f8_values.npy", f8.reshape(2, 17))
readable("f8_v2.npy", rng.standard_normal((3, 2)), version=(2, 0))
readable("b1_rank2.npy", rng.random((3, 5)) < 0.5, kind="bool")
readable("b1_rank4.npy", rng.random((2, 1, 3, 4)) < 0.5, kind="bool")
readable("b1_empty.npy", np.zeros((2, 0), dtype=bool), kind="bool")

# What AttentionKit refuses, as NumPy writes it.
failing("f8_overflow.npy", np.array([1.0, fmax + half_ulp]), "float", "npyValueOutOfRange", "too large for Float")
failing("f8_overflow_1e300.npy", np.array([[1.0, 2.0], [-1e300, 4.0]]), "float", "npyValueOutOfRange", "[1, 0]")
failing("f4_fortran.npy", np.asfortranarray(np.arange(6, dtype=f32).reshape(2, 3)), "float", "npyUnsupported", "Fortran")
failing("f4_bigendian.npy", np.arange(6, dtype=">f4"), "float", "npyUnsupported", "big-endian")
failing("i4.npy", np.arange(6, dtype="<i4"), "float", "npyUnsupported", "'<i4'")
failing("f2.npy", np.arange(6, dtype="<f2"), "float", "npyUnsupported", "float16")
failing("structured.npy", np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]), "float", "npyUnsupported", "structured")
failing("object.npy", np.array([1, "a", None], dtype=object), "float", "npyUnsupported", "'|O'")
failing("b1_as_float.npy", np.ones((2, 2), dtype=bool), "float", "npyUnsupported", "Tensor<Bool>")
failing("f4_as_bool.npy", np.ones((2, 2), dtype=f32), "bool", "npyUnsupported", "Tensor<Float>")
failing("u1_as_bool.npy", np.array([0, 1, 2], dtype=np.uint8), "bool", "npyUnsupported", "uint8")
# A fixed timestamp and attributes, so that rerunning the script rewrites the same bytes.
with zipfile.ZipFile("archive.npz", "w") as z:
    buffer = io.BytesIO()
    np.save(buffer, np.ones(3, dtype=f32))
    member = zipfile.ZipInfo("a.npy", date_time=(2026, 11, 25, 0, 0, 0))
    member.create_system = 3                 # Unix, whatever the machine
    member.external_attr = 0o644 << 16       # -rw-r--r--
    z.writestr(member, buffer.getvalue())
manifest["files"].append({"file": "archive.npz", "kind": "float", "error": "npyFormat", "contains": "zip archive"})

# attention-bench run inputs: B=2, Hq=4, Hkv=2 (grouped-query), L=5, S=7, Dk=8, Dv=6.
q = rng.standard_normal((2, 4, 5, 8)).astype(f32)
k = rng.standard_normal((2, 2, 7, 8)).astype(f32)
v = rng.standard_normal((2, 2, 7, 6)).astype(f32)
mask = rng.random((2, 1, 5, 7)) < 0.7
mask[:, :, :, 0] = True
bias = (rng.standard_normal((5, 7)) * 0.5)          # float64, converted on read
for name, array in [("cli_q.npy", q), ("cli_k.npy", k), ("cli_v.npy", v),
                    ("cli_mask.npy", mask), ("cli_bias.npy", bias)]:
    save(name, array)


def attention(q, k, v, allowed=None, bias=None, scale=None):
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ np.swapaxes(k, -1, -2) * scale
    if bias is not None:
        s = s + bias
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))
    total = e.sum(axis=-1, keepdims=True)
    p = np.where(total > 0, e / np.where(total > 0, total, 1), 0)
    return p @ v, p


L, S = 5, 7
lower_right = np.arange(S)[None, :] <= np.arange(L)[:, None] + (S - L)
lengths = np.arange(S)[None, None, None, :] < np.array([5, 7])[:, None, None, None]
cases = {
    "plain": attention(q, k, v),
    "causal_lower_right": attention(q, k, v, allowed=lower_right),
    "mask": attention(q, k, v, allowed=mask),
    "bias_scale": attention(q, k, v, bias=bias.astype(f32).astype(np.float64), scale=0.25),
    "key_lengths": attention(q, k, v, allowed=lengths),
}
for name, (out, weights) in cases.items():
    save(f"cli_expected_{name}.npy", out)
    save(f"cli_expected_{name}_weights.npy", weights)

with open("manifest.json", "w") as f:
    json.dump(manifest, f, indent=1)
    f.write("\n")
