#!/usr/bin/env python3
"""Side-by-side timing of AttentionKit and PyTorch on this machine.

    python3 Benchmarks/compare-pytorch.py sdpa [--threads 1 2] [--rounds 5]

`sdpa` runs the eight shapes of attention-bench's comparison suite (and a decode shape with
one key/value head, reported apart from the geometric mean) through
torch.nn.functional.scaled_dot_product_attention (enable_gqa for grouped heads, is_causal
for the causal shape) and through `attention-bench --suite compare`-style custom shapes,
alternating the two round by round so that both see the same machine state, at the same
thread count (torch.set_num_threads and attention-bench --threads). Each round takes the
median of several calls, with a pause between the two sides for the other's worker threads to
go idle; one table shows, per thread count, the median over rounds of each side and the ratio
torch time / AttentionKit time (> 1: AttentionKit is faster), with the geometric mean.

Needs PyTorch (a CPU build; not used by CI) and a release build of attention-bench, which
the script makes with `swift build -c release --product attention-bench` unless
--no-build is given. Run from the repository root or anywhere: paths are resolved from
this file.

    python3 Benchmarks/compare-pytorch.py layer [--threads 1 2] [--rounds 5]

`layer` times the MultiHeadAttention layer, the work of `attention-bench layer`:
* forward: BERT-base self-attention, B=8 L=128 E=768 12 heads, no mask. PyTorch:
  torch.nn.MultiheadAttention(768, 12, batch_first=True) in eval mode, called as
  mha(x, x, x, need_weights=False) under torch.inference_mode() (its fused fast path,
  _native_multi_head_attention). AttentionKit does not return the weights either.
* generate: a 256-token generation loop of a GQA layer, E=2048, 32 query heads, 8 key/value
  heads (D=64), batch 1, one token per step from an empty cache. PyTorch: nn.Linear q/k/v/o
  projections, K/V buffers [1, 8, 256, 64] preallocated once, each step writes its k/v row
  and calls F.scaled_dot_product_attention(q, K[:, :, :t+1], V[:, :, :t+1], enable_gqa=True).
  AttentionKit: MultiHeadAttention.decode with a KVCache made empty per loop (no
  preallocation: it grows geometrically).
The Swift side is `attention-bench layer --format json --no-check` (it warms up with one
untimed rep), run as a subprocess; the two sides alternate in rounds (Swift, PyTorch, Swift,
...), each round timing --reps repetitions on each side. The table gives each side's median
over all rounds and PyTorch time / AttentionKit time (> 1: AttentionKit is faster), plus
the rate at which the generation loop reads its weights and K/V (bytes / time; part comes from the L3) against the machine's copy and read bandwidth
(`attention-bench layer --workload bandwidth`).

    python3 Benchmarks/compare-pytorch.py accuracy [--threads 1] [--seed 7]

`accuracy` measures how far each side's float32 result lies from a float64 computation on the
same float32 inputs (PyTorch's SDPA in float64, independent of AttentionKit), as the logits
grow: B1 H8 L512 S512, D 64 and 128, inputs uniform in [−m, m] for m = 1, 3, 10, 30. The
table gives max|s| (the largest score), the largest output error of PyTorch in float32 and of
AttentionKit's blas and tiled kernels (`attention-bench run` on .npy files), the scale
u·max|s|·max|V| (u = 2⁻²⁴) to which any float32 computation's error grows, and the tests'
tolerance 2e-5·max(1, max|V|) + 2e-5·max|out|.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, ".build", "release", "attention-bench")

# (name, B, Hq, Hkv, L, S, D, causal): the eight shapes of BenchShape.compare in
# Sources/attention-bench/Shapes.swift, and one more.
SDPA_SHAPES = [
    ("encoder 512", 1, 8, 8, 512, 512, 64, False),
    ("prefill 2048", 1, 8, 8, 2048, 2048, 64, False),
    ("causal 2048", 1, 8, 8, 2048, 2048, 64, True),
    ("long 8192", 1, 1, 1, 8192, 8192, 64, False),
    ("batched short", 32, 8, 8, 128, 128, 64, False),
    ("ViT", 4, 12, 12, 197, 197, 64, False),
    ("decode MHA", 1, 32, 32, 1, 4096, 128, False),
    ("decode GQA", 1, 32, 8, 1, 4096, 128, False),
    # Not one of the eight: decoding with a single key/value head, where the tiled kernel
    # splits the keys across threads (split-KV). Reported, left out of the geometric mean.
    ("decode MQA 16k", 1, 8, 1, 1, 16384, 128, False),
]
EXTRA_NAMES = {"decode MQA 16k"}


def build():
    subprocess.run(["swift", "build", "-c", "release", "--product", "attention-bench"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def attention_bench(shape, threads, kernel, reps):
    """Median seconds of one AttentionKit call, from attention-bench's JSON output."""
    name, B, H, Hkv, L, S, D, causal = shape
    cmd = [BENCH, "--batch", str(B), "--heads", str(H), "--kv-heads", str(Hkv),
           "--query-length", str(L), "--key-length", str(S), "--dim", str(D),
           "--mask", "causal" if causal else "none", "--kernels", kernel,
           "--threads", str(threads), "--repetitions", str(reps), "--no-naive",
           "--naive-budget", "0.2", "--format", "json", "--quiet"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = [r for r in json.loads(out) if r["kernel"] == kernel]
    if not rows[0]["checkPassed"]:
        raise SystemExit(f"attention-bench check failed on {name}: {rows[0]}")
    return rows[0]["medianMs"] / 1e3, rows[0].get("gemmShare")


def torch_sdpa(shape, reps, tensors):
    import torch
    import torch.nn.functional as F
    name, B, H, Hkv, L, S, D, causal = shape
    q, k, v = tensors
    times = []
    with torch.inference_mode():
        F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=H != Hkv)  # warm-up
        for _ in range(reps):
            t0 = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=H != Hkv)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sdpa(args):
    import torch
    if not args.no_build:
        build()
    print(f"torch {torch.__version__}, attention-bench kernel {args.kernel}, {args.rounds} rounds "
          f"alternating, {args.reps} calls per round, median of round medians; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    # results[(shape name, threads)] = (torch seconds, AttentionKit seconds, GEMM share or None)
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape in args.shapes:
            name, B, H, Hkv, L, S, D, causal = shape
            g = torch.Generator().manual_seed(0)
            tensors = (torch.randn(B, H, L, D, generator=g), torch.randn(B, Hkv, S, D, generator=g),
                       torch.randn(B, Hkv, S, D, generator=g))
            ak, pt, shares = [], [], []
            for r in range(args.rounds):
                print(f"  {threads} thread(s), {name}: round {r + 1}/{args.rounds}", end="\r",
                      file=sys.stderr, flush=True)
                t, share = attention_bench(shape, threads, args.kernel, args.reps)
                ak.append(t)
                if share is not None:
                    shares.append(share)
                settle()
                pt.append(torch_sdpa(shape, args.reps, tensors))
                settle()
            results[(name, threads)] = (statistics.median(pt), statistics.median(ak),
                                        statistics.median(shares) if shares else None)
    print(" " * 60, end="\r", file=sys.stderr)

    # One table: a column group per thread count; ratio = torch time / AttentionKit time.
    head = "| shape (B, Hq/Hkv, L, S, D) | causal |"
    rule = "|---|---|"
    for threads in args.threads:
        t = f"{threads} thread{'s' if threads > 1 else ''}"
        head += f" {t}: torch ms | AK ms | ratio |"
        rule += "---:|---:|---:|"
    head += " GEMM share " + " / ".join(str(t) for t in args.threads) + " threads |"
    rule += "---:|"
    print()
    print(head)
    print(rule)
    ratios = {threads: [] for threads in args.threads}
    for shape in args.shapes:
        name, B, H, Hkv, L, S, D, causal = shape
        extra = name in EXTRA_NAMES
        line = f"| {B}, {H}/{Hkv}, {L}, {S}, {D}{' (extra)' if extra else ''} | {'yes' if causal else 'no'} |"
        shares = []
        for threads in args.threads:
            pt_t, ak_t, share = results[(name, threads)]
            if not extra:
                ratios[threads].append(pt_t / ak_t)
            line += f" {pt_t * 1e3:.4g} | {ak_t * 1e3:.4g} | {pt_t / ak_t:.2f} |"
            shares.append(f"{share:.2f}" if share is not None else "—")
        print(line + " " + " / ".join(shares) + " |")
    if all(ratios[t] for t in args.threads):
        line = "| **geometric mean** (the issue's eight shapes where run) | |"
        for threads in args.threads:
            geo = math.exp(sum(math.log(r) for r in ratios[threads]) / len(ratios[threads]))
            line += f" | | **{geo:.2f}** (lowest {min(ratios[threads]):.2f}) |"
        print(line + " |")


def run_bench(binary, args):
    out = subprocess.run([binary] + args, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def settle():
    """Lets the other side's worker threads go idle (OpenMP spins for a while after a
    parallel region) before the next side starts timing."""
    time.sleep(0.3)


# MARK: - PyTorch workloads

def torch_forward(torch, reps):
    import torch.nn as nn
    B, L, E, H = 8, 128, 768, 12
    if not hasattr(torch_forward, "state"):
        mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
        with torch.no_grad():
            mha.in_proj_bias.normal_(0, 0.1)
            mha.out_proj.bias.normal_(0, 0.1)
        x = torch.randn(B, L, E)
        torch_forward.state = (mha, x)
        with torch.inference_mode():
            mha(x, x, x, need_weights=False)          # warm-up
    mha, x = torch_forward.state
    times = []
    with torch.inference_mode():
        for _ in range(reps):
            start = time.perf_counter()
            mha(x, x, x, need_weights=False)
            times.append(time.perf_counter() - start)
    return times


def torch_generate(torch, reps, tokens):
    import torch.nn as nn
    import torch.nn.functional as F
    E, H, Hkv, D = 2048, 32, 8, 64
    if not hasattr(torch_generate, "state"):
        q, k, v = nn.Linear(E, H * D), nn.Linear(E, Hkv * D), nn.Linear(E, Hkv * D)
        o = nn.Linear(H * D, E)
        xs = torch.randn(tokens, 1, 1, E)
        K = torch.zeros(1, Hkv, tokens, D)
        V = torch.zeros(1, Hkv, tokens, D)
        torch_generate.state = (q, k, v, o, xs, K, V)
    q, k, v, o, xs, K, V = torch_generate.state

    def loop():
        for t in range(tokens):
            x = xs[t]                                                  # [1, 1, E]
            qt = q(x).view(1, 1, H, D).transpose(1, 2)                 # [1, H, 1, D]
            K[:, :, t:t + 1] = k(x).view(1, 1, Hkv, D).transpose(1, 2)
            V[:, :, t:t + 1] = v(x).view(1, 1, Hkv, D).transpose(1, 2)
            a = F.scaled_dot_product_attention(qt, K[:, :, :t + 1], V[:, :, :t + 1], enable_gqa=True)
            o(a.transpose(1, 2).reshape(1, 1, H * D))                  # [1, 1, E]

    with torch.inference_mode():
        if not hasattr(torch_generate, "warm"):
            loop()
            torch_generate.warm = True
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            loop()
            times.append(time.perf_counter() - start)
    return times


# MARK: - layer

def layer(args):
    import torch
    if not args.no_build:
        build()
    binary = BENCH
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        bandwidth = run_bench(binary, ["layer", "--workload", "bandwidth", "--threads", str(threads),
                                       "--format", "json", "--quiet"])
        for workload in args.workloads:
            reps = args.reps if args.reps else (5 if workload == "forward" else 1)
            swift_times, torch_times = [], []
            for r in range(args.rounds):
                print(f"  {threads} thread(s), {workload}, round {r + 1}/{args.rounds}", file=sys.stderr)
                result = run_bench(binary, ["layer", "--workload", workload, "--threads", str(threads),
                                            "--repetitions", str(reps), "--tokens", str(args.tokens),
                                            "--format", "json", "--quiet", "--no-check"])
                swift_times += [t / 1e3 for t in result[workload]["times_ms"]]
                settle()
                if workload == "forward":
                    torch_times += torch_forward(torch, reps)
                else:
                    torch_times += torch_generate(torch, reps, args.tokens)
                settle()
            rows.append((threads, workload, statistics.median(swift_times), statistics.median(torch_times),
                         len(swift_times), len(torch_times), bandwidth))

    print(f"\nAttentionKit (attention-bench layer) vs PyTorch {torch.__version__}, "
          f"medians over {args.rounds} alternating rounds")
    header = f"{'threads':>7}  {'workload':<40} {'AttentionKit':>14} {'PyTorch':>14} {'PyTorch/AK':>10}  n"
    print(header)
    print("-" * len(header))
    for threads, workload, s, t, ns, nt, bw in rows:
        if workload == "forward":
            what = "forward BERT-base B8 L128 E768 H12"
            cells = f"{s * 1e3:11.2f} ms {t * 1e3:11.2f} ms"
        else:
            what = f"generate GQA E2048 H32/8, {args.tokens} tokens"
            cells = f"{args.tokens / s:8.1f} tok/s {args.tokens / t:8.1f} tok/s"
        print(f"{threads:>7}  {what:<40} {cells} {t / s:9.2f}x  {ns}/{nt}")
        if workload == "generate":
            # The bytes AttentionKit's loop must stream, as attention-bench counts them.
            E, Hkv, D, T = 2048, 8, 64, args.tokens
            weights = 4 * (E * E + E + 2 * (Hkv * D * E + Hkv * D) + E * E + E)
            bytes_per_loop = T * weights + 4 * 2 * Hkv * D * T * (T + 1) // 2
            print(f"{'':>7}  {'  weights + K/V read per second':<40} {bytes_per_loop / s / 1e9:8.2f} GB/s {bytes_per_loop / t / 1e9:8.2f} GB/s"
                  f"   machine: copy {bw['copy_gb_per_s']:.1f} GB/s (read+write), read {bw['read_gb_per_s']:.1f} GB/s")


def accuracy(args):
    import tempfile
    import numpy as np
    import torch
    import torch.nn.functional as F
    if not args.no_build:
        build()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    u = 2.0 ** -24
    print(f"torch {torch.__version__}, {args.threads} thread(s), inputs uniform in [-m, m], seed {args.seed}; "
          "errors are max |float32 result - float64 result|")
    print(f"{'shape':<22} {'m':>3} {'max|s|':>8} {'torch':>9} {'blas':>9} {'tiled':>9} {'u·s·V':>9} {'tolerance':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for D in (64, 128):
            for m in (1, 3, 10, 30):
                B, H, L, S = 1, 8, 512, 512
                q, k, v = (((rng.random((B, H, n, D)) * 2 - 1) * m).astype(np.float32) for n in (L, S, S))
                paths = {}
                for name, a in (("q", q), ("k", k), ("v", v)):
                    paths[name] = os.path.join(tmp, name + ".npy")
                    np.save(paths[name], a)
                want = F.scaled_dot_product_attention(*(torch.from_numpy(a).double() for a in (q, k, v))).numpy()
                torch_out = F.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (q, k, v))).numpy()
                errors = [np.abs(torch_out.astype(np.float64) - want).max()]
                for kernel in ("blas", "tiled"):
                    out = os.path.join(tmp, "out.npy")
                    subprocess.run([BENCH, "run", "--query", paths["q"], "--key", paths["k"], "--value", paths["v"],
                                    "--kernel", kernel, "--threads", str(args.threads), "--output", out],
                                   check=True, capture_output=True)
                    errors.append(np.abs(np.load(out).astype(np.float64) - want).max())
                max_s = np.abs(np.einsum("bhld,bhsd->bhls", q.astype(np.float64), k.astype(np.float64))).max() / math.sqrt(D)
                max_v = np.abs(v).max()
                tolerance = 2e-5 * max(1.0, max_v) + 2e-5 * np.abs(want).max()
                print(f"{f'B{B} H{H} L{L} S{S} D{D}':<22} {m:>3} {max_s:8.1f} " + " ".join(f"{e:9.1e}" for e in errors)
                      + f" {u * max_s * max_v:9.1e} {tolerance:9.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sdpa", help="scaled dot-product attention on the comparison shapes")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per shape (median taken)")
    p.add_argument("--reps", type=int, default=5, help="calls per round (median taken)")
    p.add_argument("--kernel", default="automatic", choices=["blas", "tiled", "automatic"])
    p.add_argument("--only", nargs="*", help="shape names to run (default: all)")
    p.add_argument("--no-build", action="store_true")
    p = sub.add_parser("layer", help="the multi-head attention layer (attention-bench layer)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default: 5)")
    p.add_argument("--reps", type=int, default=0,
                   help="repetitions per side per round (default: forward 5, generate 1)")
    p.add_argument("--tokens", type=int, default=256, help="tokens in the generation loop (default: 256)")
    p.add_argument("--workloads", nargs="+", choices=["forward", "generate"], default=["forward", "generate"])
    p.add_argument("--no-build", action="store_true")
    p = sub.add_parser("accuracy", help="float32 error against float64 as the logits grow, both sides")
    p.add_argument("--threads", type=int, default=1, help="threads on both sides (default: 1)")
    p.add_argument("--seed", type=int, default=7, help="seed of the random inputs (default: 7)")
    p.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    if args.command == "accuracy":
        accuracy(args)
    if args.command == "layer":
        layer(args)
    if args.command == "sdpa":
        args.shapes = [s for s in SDPA_SHAPES if not args.only or s[0] in args.only]
        sdpa(args)


if __name__ == "__main__":
    main()
