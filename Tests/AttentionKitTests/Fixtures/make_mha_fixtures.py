#!/usr/bin/env python3
"""Generate PyTorch reference fixtures for AttentionKit's MultiHeadAttention layer.

How to run (from the package root):

    python3 Tests/AttentionKitTests/Fixtures/make_mha_fixtures.py

It (re)writes Tests/AttentionKitTests/Fixtures/pytorch-mha.json next to this script. The
committed fixtures were produced with torch 2.13.0+cpu (CPU only); the exact version is in
the JSON's "generator" field.

What the fixtures contain
-------------------------
* "mha" cases: a torch.nn.MultiheadAttention(batch_first=True) module in eval mode, with or
  without bias, with packed in_proj_weight (kdim == vdim == E) or separate
  q/k/v_proj_weight (kdim/vdim != E). Its parameters are float32 values (the module's own
  initialisation from a fixed seed, biases re-drawn so they are not zero). Masks are in
  PyTorch's nn.MultiheadAttention convention: a boolean key_padding_mask / attn_mask is
  True where the key is EXCLUDED; a float attn_mask is added to the scores. A 3-D attn_mask
  is [B*H, L, S]. Outputs come from module(q, k, v, need_weights=True,
  average_attn_weights=False), weights [B, H, L, S].
* "gqa" cases: a grouped-query layer written out here from torch ops: q/k/v/o nn.Linear
  projections, heads split as [B, L, H, D] -> [B, H, L, D], then
  F.scaled_dot_product_attention(q, k, v, is_causal=..., enable_gqa=True), heads merged
  and the output projection applied. Weights are softmax(q k^T / sqrt(D) + causal mask)
  with the key/value head h // (Hq / Hkv).
* "gqa" cases with a "rotary" entry: the same layer with rotary position embeddings on q and
  k after the projections, written out here as Hugging Face's Llama / GPT-NeoX code does
  (inv_freq = 1 / base^(arange(0, R, 2) / R), cos/sin of position * inv_freq,
  x * cos + rotate_half(x) * sin on the first R coordinates of each head, the rest passed
  through) or, with pairing "interleaved", as GPT-J does (rotate_every_two on neighbouring
  coordinates). Positions are 0 ..< L for queries and 0 ..< S for keys.
* Every expected value is computed in float64 (the module converted with .double(), inputs
  converted from their float32 values). The script asserts that torch's own float32 result
  agrees with the float64 one to 1e-5, so the 1e-5 tolerance of the Swift test is one that
  float32 arithmetic can meet.
* All numbers are stored as Python floats (doubles) of float32 values, so they convert back
  to Float exactly.
"""

import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

SEED = 20261125
OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pytorch-mha.json")
TOLERANCE = 1e-5

torch.manual_seed(SEED)


def encode(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bool:
        return {"shape": list(t.shape), "data": [bool(x) for x in t.reshape(-1).tolist()]}
    data = [float(x) for x in t.reshape(-1).tolist()]
    assert all(math.isfinite(x) for x in data), "non-finite value in fixture"
    return {"shape": list(t.shape), "data": data}


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float32)


def check_close(f32, f64, what):
    diff = (f32.double() - f64).abs().max().item() if f64.numel() else 0.0
    assert diff <= TOLERANCE, f"{what}: torch float32 differs from float64 by {diff}"


def mha_case(name, E, H, B, L, S, bias=True, kdim=None, vdim=None, key_padding=None,
             attn_mask=None, unbatched=False, self_attention=False):
    module = nn.MultiheadAttention(E, H, bias=bias, batch_first=True, kdim=kdim, vdim=vdim).eval()
    with torch.no_grad():
        if bias:  # PyTorch initialises the biases to zero; make them count
            module.in_proj_bias.copy_(0.1 * randn(3 * E))
            module.out_proj.bias.copy_(0.1 * randn(E))
    kd, vd = kdim or E, vdim or E
    if unbatched:
        q, k, v = randn(L, E), randn(S, kd), randn(S, vd)
    else:
        q, k, v = randn(B, L, E), randn(B, S, kd), randn(B, S, vd)
    if self_attention:
        assert L == S and kd == E and vd == E
        k = v = q

    kwargs = dict(key_padding_mask=key_padding, attn_mask=attn_mask,
                  need_weights=True, average_attn_weights=False)
    with torch.no_grad():
        out32, w32 = module(q, k, v, **kwargs)
        m64 = module.double()
        double_mask = attn_mask.double() if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
        out64, w64 = m64(q.double(), k.double(), v.double(), **dict(kwargs, attn_mask=double_mask))
    check_close(out32, out64, f"{name} output")
    check_close(w32, w64, f"{name} weights")
    assert not torch.isnan(out64).any(), f"{name}: NaN output (fully masked row?)"

    params = {}
    sd = {key: value.float() for key, value in module.state_dict().items()}
    for key in ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                "in_proj_bias", "out_proj.weight", "out_proj.bias"]:
        if key in sd:
            params[key] = encode(sd[key])
    case = {"name": name, "kind": "mha", "heads": H, "kvHeads": H, "params": params,
            "query": encode(q), "key": encode(k), "value": encode(v),
            "output": encode(out64), "weights": encode(w64)}
    if key_padding is not None:
        case["keyPaddingMask"] = encode(key_padding)
    if attn_mask is not None:
        case["attnMask"] = encode(attn_mask)
    return case


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rotate_every_two(x):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rotary(x, rotary):
    """x [B, H, T, D] at positions 0 ..< T; rotates the first R coordinates of each head."""
    R, base, pairing = rotary["dimensions"], rotary["base"], rotary["pairing"]
    T = x.shape[2]
    inv_freq = 1.0 / (base ** (torch.arange(0, R, 2, dtype=torch.int64).to(x.dtype) / R))
    freqs = torch.outer(torch.arange(T, dtype=x.dtype), inv_freq)          # [T, R/2]
    rot, rest = x[..., :R], x[..., R:]
    if pairing == "halves":
        emb = torch.cat((freqs, freqs), dim=-1)                             # [T, R]
        rot = rot * emb.cos() + rotate_half(rot) * emb.sin()
    else:
        emb = freqs.repeat_interleave(2, dim=-1)                            # [T, R]
        rot = rot * emb.cos() + rotate_every_two(rot) * emb.sin()
    return torch.cat((rot, rest), dim=-1)


def gqa_forward(p, q_in, k_in, v_in, Hq, Hkv, causal, rotary=None):
    B, L, _ = q_in.shape
    S = k_in.shape[1]
    D = p["q_weight"].shape[0] // Hq
    q = F.linear(q_in, p["q_weight"], p["q_bias"]).view(B, L, Hq, D).transpose(1, 2)
    k = F.linear(k_in, p["k_weight"], p["k_bias"]).view(B, S, Hkv, D).transpose(1, 2)
    if rotary is not None:
        q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
    v = F.linear(v_in, p["v_weight"], p["v_bias"]).view(B, S, Hkv, -1).transpose(1, 2)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    out = F.linear(a.transpose(1, 2).reshape(B, L, -1), p["o_weight"], p["o_bias"])
    # The weights, written out: key/value head h // (Hq/Hkv), upper-left causal mask.
    kr = k.repeat_interleave(Hq // Hkv, dim=1)
    scores = q @ kr.transpose(-2, -1) / math.sqrt(D)
    if causal:
        scores = scores.masked_fill(torch.ones(L, S, dtype=torch.bool).triu(1), float("-inf"))
    return out, scores.softmax(-1)


def gqa_case(name, E, Hq, Hkv, B, L, S, causal, rotary=None):
    D = E // Hq
    shapes = {"q": (Hq * D, E), "k": (Hkv * D, E), "v": (Hkv * D, E), "o": (E, Hq * D)}
    p = {}
    for key, (rows, cols) in shapes.items():
        p[f"{key}_weight"] = randn(rows, cols) / math.sqrt(cols)
        p[f"{key}_bias"] = 0.1 * randn(rows)
    x = randn(B, L, E)
    mem = x if S == L else randn(B, S, E)
    with torch.no_grad():
        out32, w32 = gqa_forward(p, x, mem, mem, Hq, Hkv, causal, rotary)
        p64 = {key: value.double() for key, value in p.items()}
        out64, w64 = gqa_forward(p64, x.double(), mem.double(), mem.double(), Hq, Hkv, causal, rotary)
    check_close(out32, out64, f"{name} output")
    check_close(w32, w64, f"{name} weights")
    case = {"name": name, "kind": "gqa", "heads": Hq, "kvHeads": Hkv, "causal": causal,
            "params": {key: encode(value) for key, value in p.items()},
            "query": encode(x), "key": encode(mem), "value": encode(mem),
            "output": encode(out64), "weights": encode(w64)}
    if rotary is not None:
        case["rotary"] = rotary
    return case


def main():
    cases = []
    # 1. Encoder self-attention, bias, key_padding_mask (a suffix for entry 1, a hole in entry 2).
    kpm = torch.zeros(3, 6, dtype=torch.bool)
    kpm[1, 4:] = True
    kpm[2, 1] = True
    cases.append(mha_case("mha-self-bias-key-padding", E=16, H=4, B=3, L=6, S=6, key_padding=kpm,
                          self_attention=True))
    # 2. Decoder self-attention with a boolean causal attn_mask (True = excluded above the diagonal).
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    cases.append(mha_case("mha-causal-bool-attn-mask", E=12, H=3, B=2, L=5, S=5, attn_mask=causal,
                          self_attention=True))
    # 3. Encoder-decoder attention, kdim/vdim != E (separate q/k/v weights), float attn_mask.
    cases.append(mha_case("mha-cross-kdim-vdim-float-mask", E=12, H=2, B=2, L=4, S=7, kdim=7, vdim=5,
                          attn_mask=0.5 * randn(4, 7)))
    # 4. No bias, a per-(batch, head) boolean attn_mask [B*H, L, S] plus key padding.
    mask3 = torch.rand(2 * 4, 3, 5) < 0.3
    mask3[:, :, 0] = False  # every row keeps key 0, so no row is fully masked
    kpm4 = torch.zeros(2, 5, dtype=torch.bool)
    kpm4[0, 3:] = True
    cases.append(mha_case("mha-no-bias-3d-attn-mask-key-padding", E=8, H=4, B=2, L=3, S=5, bias=False,
                          key_padding=kpm4, attn_mask=mask3))
    # 5. Unbatched [L, E] input with a [S] key_padding_mask, kdim != E.
    kpm5 = torch.tensor([False, False, False, False, True, True])
    cases.append(mha_case("mha-unbatched-kdim-key-padding", E=8, H=2, B=1, L=4, S=6, kdim=5, vdim=8,
                          key_padding=kpm5, unbatched=True))
    # 6. GQA self-attention, causal, enable_gqa=True.
    cases.append(gqa_case("gqa-8-2-causal-self", E=32, Hq=8, Hkv=2, B=2, L=7, S=7, causal=True))
    # 7. MQA cross-attention, L != S.
    cases.append(gqa_case("gqa-6-1-cross", E=24, Hq=6, Hkv=1, B=2, L=3, S=9, causal=False))
    # 8. Llama-style: GQA, causal, rotary embeddings over the whole head (rotate_half).
    cases.append(gqa_case("rope-llama-4-2-causal", E=32, Hq=4, Hkv=2, B=2, L=9, S=9, causal=True,
                          rotary={"dimensions": 8, "base": 10000.0, "pairing": "halves"}))
    # 9. GPT-J-style: interleaved pairs on 4 of 8 coordinates, causal.
    cases.append(gqa_case("rope-gptj-interleaved-partial", E=24, Hq=3, Hkv=3, B=1, L=6, S=6, causal=True,
                          rotary={"dimensions": 4, "base": 10000.0, "pairing": "interleaved"}))
    # 10. GPT-NeoX-style partial rotary (4 of 16, base 100), MQA, not causal.
    cases.append(gqa_case("rope-neox-partial-mqa", E=32, Hq=2, Hkv=1, B=2, L=7, S=7, causal=False,
                          rotary={"dimensions": 4, "base": 100.0, "pairing": "halves"}))

    out = {"generator": f"torch {torch.__version__}, make_mha_fixtures.py, seed {SEED}", "cases": cases}
    with open(OUT_PATH, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(cases)} cases to {OUT_PATH} ({os.path.getsize(OUT_PATH)} bytes)")


if __name__ == "__main__":
    main()
