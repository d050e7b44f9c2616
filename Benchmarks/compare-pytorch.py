#!/usr/bin/env python3
"""Side-by-side timing of AttentionKit and PyTorch on this machine.

    python3 Benchmarks/compare-pytorch.py sdpa [--threads 1 2] [--rounds 5]

`sdpa` runs the eight shapes of attention-bench's comparison suite through
torch.nn.functional.scaled_dot_product_attention (enable_gqa for grouped heads, is_causal
for the causal shape) and through `attention-bench --suite compare`-style custom shapes,
alternating the two round by round so that both see the same machine state, at the same
thread count (torch.set_num_threads and attention-bench --threads). Each round takes the
median of several calls; the table shows the median over rounds of each side, and the ratio
torch time / AttentionKit time (> 1: AttentionKit is faster), with the geometric mean.

Needs PyTorch (a CPU build; not used by CI) and a release build of attention-bench, which
the script makes with `swift build -c release --product attention-bench` unless
--no-build is given. Run from the repository root or anywhere: paths are resolved from
this file.
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

# (name, B, Hq, Hkv, L, S, D, causal): the same list as BenchShape.compare in
# Sources/attention-bench/Shapes.swift.
SDPA_SHAPES = [
    ("encoder 512", 1, 8, 8, 512, 512, 64, False),
    ("prefill 2048", 1, 8, 8, 2048, 2048, 64, False),
    ("causal 2048", 1, 8, 8, 2048, 2048, 64, True),
    ("long 8192", 1, 1, 1, 8192, 8192, 64, False),
    ("batched short", 32, 8, 8, 128, 128, 64, False),
    ("ViT", 4, 12, 12, 197, 197, 64, False),
    ("decode MHA", 1, 32, 32, 1, 4096, 128, False),
    ("decode GQA", 1, 32, 8, 1, 4096, 128, False),
]


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
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n## {threads} thread{'s' if threads > 1 else ''}\n")
        print("| shape | B·Hq/Hkv·L·S·D | causal | torch ms | AttentionKit ms | torch / AK | AK GEMM share |")
        print("|---|---|---|---:|---:|---:|---:|")
        ratios = []
        for shape in args.shapes:
            name, B, H, Hkv, L, S, D, causal = shape
            g = torch.Generator().manual_seed(0)
            tensors = (torch.randn(B, H, L, D, generator=g), torch.randn(B, Hkv, S, D, generator=g),
                       torch.randn(B, Hkv, S, D, generator=g))
            ak, pt, shares = [], [], []
            for r in range(args.rounds):
                print(f"  {name}: round {r + 1}/{args.rounds}", end="\r", file=sys.stderr, flush=True)
                t, share = attention_bench(shape, threads, args.kernel, args.reps)
                ak.append(t)
                if share is not None:
                    shares.append(share)
                pt.append(torch_sdpa(shape, args.reps, tensors))
            ak_t, pt_t = statistics.median(ak), statistics.median(pt)
            ratios.append(pt_t / ak_t)
            share = f"{statistics.median(shares):.2f}" if shares else "—"
            print(f"| {name} | {B}·{H}/{Hkv}·{L}·{S}·{D} | {'yes' if causal else 'no'} | "
                  f"{pt_t * 1e3:.3f} | {ak_t * 1e3:.3f} | {pt_t / ak_t:.2f} | {share} |", flush=True)
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"\ngeometric mean torch / AttentionKit: {geo:.2f}; lowest {min(ratios):.2f}")


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
    args = parser.parse_args()
    if args.command == "sdpa":
        args.shapes = [s for s in SDPA_SHAPES if not args.only or s[0] in args.only]
        sdpa(args)


if __name__ == "__main__":
    main()
