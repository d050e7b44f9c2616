#!/usr/bin/env python3
"""Generate PyTorch reference fixtures for AttentionKit's scaled dot-product attention.

How to run (from the package root):

    python3 Tests/AttentionKitTests/Fixtures/make_pytorch_fixtures.py

It (re)writes Tests/AttentionKitTests/Fixtures/pytorch-sdpa.json next to this script.
The committed fixtures were produced with torch 2.13.0+cpu and numpy 2.4.6 (CPU only);
the exact torch version is also recorded in the JSON's "generator" field.

What the fixtures contain
-------------------------
* Inputs (query/key/value and any additive mask) are float32 random normals from a fixed
  seed, stored as the Python floats (doubles) of those float32 values, so they convert back
  to Float exactly.  An explicit scale is also a float32 value (0.3 is stored as
  0.30000001192092896, the nearest float32), so the Swift side sees exactly what torch saw.
* "output" is torch.nn.functional.scaled_dot_product_attention computed in float64 (math
  backend) on the float64 conversion of those float32 inputs.
* "weights" is softmax(q @ k^T * scale + mask) computed by torch in float64, with
  fully-masked rows set to 0.  The script asserts weights @ v == SDPA output to 1e-12 in
  float64, and that torch's own float32 SDPA agrees with the float64 output to 1e-5.
* Masks: "booleanMask" uses PyTorch's bool attn_mask convention (true = may attend);
  "causal" is "upperLeft" (is_causal=True / torch.nn.attention.bias.causal_upper_left) or
  "lowerRight" (torch.nn.attention.bias.causal_lower_right); "additiveMask" holds finite
  floats only (exclusions are expressed with booleanMask/causal, never -inf in JSON).
  When a case has several mask parts they are combined (intersection of the exclusions,
  plus the additive bias) into a single float attn_mask for torch.

Fully-masked rows: with torch 2.13.0+cpu, SDPA returns an all-zero output row for a query
row whose mask excludes every key (both the default CPU dispatch and the math backend, in
float32 and float64).  The script asserts this, and the "boolean-mask-fully-masked-row" case
includes such a row (its output row and weight row are all zeros).  If a future torch
returned NaN instead, the assertion below fails; then drop that row from the mask.
"""

import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

SEED = 20240611
OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pytorch-sdpa.json")

gen = torch.Generator().manual_seed(SEED)


def randn32(*shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float32)


def f32(x):
    """Nearest float32 value, as a Python float."""
    return float(np.float32(x))


def encode_float(t):
    t = t.detach().contiguous()
    data = [float(x) for x in t.reshape(-1).tolist()]
    assert all(math.isfinite(x) for x in data), "non-finite value in fixture"
    return {"shape": list(t.shape), "data": data}


def encode_bool(t):
    t = t.detach().contiguous()
    return {"shape": list(t.shape), "data": [bool(x) for x in t.reshape(-1).tolist()]}


def allowed_causal(kind, L, S):
    """Bool [L, S]: True where query i may attend key j."""
    if kind == "upperLeft":
        m = torch.ones(L, S, dtype=torch.bool).tril(diagonal=0)
        ref = causal_upper_left(L, S)._materialize()
    else:
        m = torch.ones(L, S, dtype=torch.bool).tril(diagonal=S - L)
        ref = causal_lower_right(L, S)._materialize()
    assert torch.equal(m, ref), f"causal {kind} materialization mismatch"
    return m


def make_case(name, q, k, v, causal=None, bool_mask=None, add_mask=None, scale=None, gqa=False):
    """q, k, v (and add_mask) are float32 tensors.  Returns the JSON dict for one case."""
    L, S = q.shape[-2], k.shape[-2]
    Dk = q.shape[-1]
    eff_scale = scale if scale is not None else 1.0 / math.sqrt(Dk)

    q64, k64, v64 = q.double(), k.double(), v.double()

    # Allowed-pattern and additive bias, broadcastable to the scores shape.
    allowed = torch.ones((), dtype=torch.bool)
    if causal is not None:
        allowed = allowed & allowed_causal(causal, L, S)
    if bool_mask is not None:
        allowed = allowed & bool_mask
    bias64 = torch.zeros((), dtype=torch.float64)
    if add_mask is not None:
        bias64 = bias64 + add_mask.double()

    # --- Expected output: torch SDPA in float64 (math backend). ---
    n_parts = sum(x is not None for x in (causal, bool_mask, add_mask))

    def sdpa(qq, kk, vv, dtype):
        kwargs = dict(scale=scale, enable_gqa=gqa)
        if n_parts == 0:
            return F.scaled_dot_product_attention(qq, kk, vv, **kwargs)
        if n_parts == 1 and causal == "upperLeft":
            return F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, **kwargs)
        if n_parts == 1 and causal == "lowerRight":
            return F.scaled_dot_product_attention(
                qq, kk, vv, attn_mask=causal_lower_right(L, S), **kwargs)
        if n_parts == 1 and bool_mask is not None:
            return F.scaled_dot_product_attention(qq, kk, vv, attn_mask=bool_mask, **kwargs)
        if n_parts == 1 and add_mask is not None:
            return F.scaled_dot_product_attention(
                qq, kk, vv, attn_mask=add_mask.to(dtype), **kwargs)
        # Several parts: one float mask (-inf where excluded, plus the bias).
        combined = torch.where(allowed, torch.zeros((), dtype=dtype),
                               torch.tensor(float("-inf"), dtype=dtype))
        if add_mask is not None:
            combined = combined + add_mask.to(dtype)
        return F.scaled_dot_product_attention(qq, kk, vv, attn_mask=combined, **kwargs)

    with sdpa_kernel(SDPBackend.MATH):
        out64 = sdpa(q64, k64, v64, torch.float64)
    assert out64.dtype == torch.float64

    # --- Expected weights: softmax(q k^T * scale + mask) in float64. ---
    if gqa:
        rep = q.shape[-3] // k.shape[-3]
        assert rep * k.shape[-3] == q.shape[-3]
        k_full = k64.repeat_interleave(rep, dim=-3)
        v_full = v64.repeat_interleave(rep, dim=-3)
    else:
        k_full, v_full = k64, v64
    scores = (q64 @ k_full.transpose(-2, -1)) * eff_scale + bias64
    allowed_full = allowed.expand_as(scores)
    scores = scores.masked_fill(~allowed_full, float("-inf"))
    fully_masked = ~allowed_full.any(dim=-1, keepdim=True)
    weights = torch.softmax(scores, dim=-1)
    weights = torch.where(fully_masked, torch.zeros_like(weights), weights)
    assert torch.isfinite(weights).all()

    # Consistency: weights @ v reproduces the SDPA output in float64.
    recon = weights @ v_full
    err = (recon - out64).abs().max().item()
    assert err <= 1e-12, f"{name}: weights @ v differs from SDPA output by {err}"
    if fully_masked.any():
        # torch 2.13 returns zeros (not NaN) for fully-masked rows.
        assert torch.isfinite(out64).all(), f"{name}: torch returned NaN for a fully masked row"
        assert (out64.masked_select(fully_masked.expand_as(out64)) == 0).all()

    # torch's float32 SDPA agrees with the float64 result to 1e-5: always with the math
    # backend, and also with the default CPU dispatch (flash kernel) when it accepts the
    # inputs (torch 2.13's CPU flash kernel rejects a rank-1 [S] attn_mask).
    with sdpa_kernel(SDPBackend.MATH):
        out32 = sdpa(q, k, v, torch.float32)
    err32 = (out32.double() - out64).abs().max().item()
    assert err32 <= 1e-5, f"{name}: float32 SDPA (math) differs from float64 by {err32}"
    for qq, kk, vv, dtype, tol in ((q64, k64, v64, torch.float64, 1e-12),
                                   (q, k, v, torch.float32, 1e-5)):
        try:
            out_default = sdpa(qq, kk, vv, dtype)
        except (RuntimeError, IndexError) as e:
            print(f"  note: {name}: default dispatch ({dtype}) unsupported: {e}")
            continue
        err = (out_default.double() - out64).abs().max().item()
        assert err <= tol, f"{name}: default-dispatch {dtype} SDPA differs by {err}"

    return {
        "name": name,
        "query": encode_float(q),
        "key": encode_float(k),
        "value": encode_float(v),
        "causal": causal,
        "booleanMask": encode_bool(bool_mask) if bool_mask is not None else None,
        "additiveMask": encode_float(add_mask) if add_mask is not None else None,
        "scale": scale,
        "output": encode_float(out64),
        "weights": encode_float(weights),
    }


def main():
    cases = []

    # 1. Plain rank-4 self-attention [B=2, H=3, L=S=5, D=8].
    cases.append(make_case("plain-rank4-self-attention",
                           randn32(2, 3, 5, 8), randn32(2, 3, 5, 8), randn32(2, 3, 5, 8)))

    # 2. Rank-3 [B, L, D] with Dk != Dv and L != S.
    cases.append(make_case("rank3-cross-attention-dk-ne-dv",
                           randn32(2, 4, 6), randn32(2, 7, 6), randn32(2, 7, 3)))

    # 3. is_causal=True (upper-left), L = S = 7.
    cases.append(make_case("causal-upper-left-square",
                           randn32(1, 2, 7, 4), randn32(1, 2, 7, 4), randn32(1, 2, 7, 4),
                           causal="upperLeft"))

    # 4. Lower-right causal, L=3, S=9 (torch.nn.attention.bias.causal_lower_right).
    cases.append(make_case("causal-lower-right-L3-S9",
                           randn32(1, 2, 3, 4), randn32(1, 2, 9, 4), randn32(1, 2, 9, 5),
                           causal="lowerRight"))

    # 5. Upper-left causal, L=3, S=9 (is_causal=True).
    cases.append(make_case("causal-upper-left-L3-S9",
                           randn32(1, 2, 3, 4), randn32(1, 2, 9, 4), randn32(1, 2, 9, 5),
                           causal="upperLeft"))

    # 6. Boolean mask [1, 1, L, S] broadcast over B and H, with one fully masked row.
    L, S = 4, 6
    bmask = torch.rand(1, 1, L, S, generator=gen) < 0.6
    bmask[..., 0, 1] = True          # make sure other rows keep at least one key
    bmask[..., 1, :] = False         # row 1: fully masked -> zeros
    bmask[..., 2, :] = True
    bmask[..., 3, 4] = True
    cases.append(make_case("boolean-mask-fully-masked-row",
                           randn32(2, 2, L, 5), randn32(2, 2, S, 5), randn32(2, 2, S, 3),
                           bool_mask=bmask))

    # 7. Boolean key-padding mask of shape [S] (broadcast over B, H, L).
    S = 6
    kp = torch.tensor([True, True, False, True, False, True])
    cases.append(make_case("boolean-mask-key-padding-S",
                           randn32(2, 2, 3, 4), randn32(2, 2, S, 4), randn32(2, 2, S, 4),
                           bool_mask=kp))

    # 8. Additive ALiBi-like bias of shape [H, 1, S].
    H, L, S = 3, 4, 6
    slopes = torch.tensor([2.0 ** -(i + 1) for i in range(H)], dtype=torch.float32)
    dist = torch.arange(S, dtype=torch.float32) - (S - 1)          # -(S-1) ... 0
    alibi = (slopes[:, None, None] * dist[None, None, :]).to(torch.float32)  # [H, 1, S]
    alibi = alibi + 0.25 * randn32(H, 1, S)   # non-trivial, still float32 and finite
    cases.append(make_case("additive-alibi-H1S",
                           randn32(2, H, L, 4), randn32(2, H, S, 4), randn32(2, H, S, 4),
                           add_mask=alibi))

    # 9. Explicit scale = 0.3 (stored as the float32 nearest 0.3).
    cases.append(make_case("explicit-scale-0.3",
                           randn32(1, 2, 4, 6), randn32(1, 2, 5, 6), randn32(1, 2, 5, 3),
                           scale=f32(0.3)))

    # 10. Explicit negative scale = -0.5.
    cases.append(make_case("explicit-scale-negative-0.5",
                           randn32(1, 2, 4, 6), randn32(1, 2, 5, 6), randn32(1, 2, 5, 3),
                           scale=-0.5))

    # 11. Grouped-query attention: Hq=4, Hkv=2, enable_gqa=True.
    cases.append(make_case("gqa-hq4-hkv2",
                           randn32(2, 4, 3, 4), randn32(2, 2, 5, 4), randn32(2, 2, 5, 3),
                           gqa=True))

    # 12. Combined mask parts: lower-right causal + additive [S] bias.
    L, S = 3, 5
    cases.append(make_case("combined-lower-right-causal-plus-additive",
                           randn32(1, 2, L, 4), randn32(1, 2, S, 4), randn32(1, 2, S, 3),
                           causal="lowerRight", add_mask=randn32(S)))

    doc = {"generator": f"torch {torch.__version__} (numpy {np.__version__}); "
                        f"make_pytorch_fixtures.py seed {SEED}",
           "cases": cases}
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    with open(OUT_PATH, "w") as f:
        f.write(text)
        f.write("\n")
    size = os.path.getsize(OUT_PATH)
    assert size < 120 * 1024, f"fixture file too large: {size} bytes"
    print(f"wrote {len(cases)} cases, {size} bytes -> {OUT_PATH}")


if __name__ == "__main__":
    main()
