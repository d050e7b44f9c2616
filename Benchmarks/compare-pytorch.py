#!/usr/bin/env python3
"""AttentionKit next to PyTorch (CPU), on the same work, at the same thread count.

    python3 Benchmarks/compare-pytorch.py layer                 # 1 and 2 threads
    python3 Benchmarks/compare-pytorch.py layer --threads 1 --rounds 7

Subcommands
-----------
layer   The MultiHeadAttention layer, the work of `attention-bench layer`:
        * forward: BERT-base self-attention, B=8 L=128 E=768 12 heads, no mask.
          PyTorch: torch.nn.MultiheadAttention(768, 12, batch_first=True) in eval mode,
          called as mha(x, x, x, need_weights=False) under torch.inference_mode()
          (its fused fast path, _native_multi_head_attention). AttentionKit does not
          return the weights either.
        * generate: a 256-token generation loop of a GQA layer, E=2048, 32 query heads,
          8 key/value heads (D=64), batch 1, one token per step from an empty cache.
          PyTorch: nn.Linear q/k/v/o projections, K/V buffers [1, 8, 256, 64]
          preallocated once, each step writes its k/v row and calls
          F.scaled_dot_product_attention(q, K[:, :, :t+1], V[:, :, :t+1], enable_gqa=True).
          AttentionKit: MultiHeadAttention.decode with a KVCache made empty per loop
          (no preallocation: it grows geometrically).
(sdpa)  Reserved for the scaled dot-product attention comparison.

How it measures: the Swift side is `attention-bench layer --format json --no-check`
(release build, run as a subprocess; it warms up with one untimed rep). The two sides
alternate in rounds -- Swift, then PyTorch, then Swift, ... -- so that both see the same
machine state; each round times --reps repetitions on each side. The table gives the
median over all rounds of each side and the ratio PyTorch time / AttentionKit time
(> 1: AttentionKit is faster). torch.set_num_threads(n) and `--threads n` set the same
thread count. Inputs are random normals; weights Xavier/PyTorch-default; values do not
affect the timing.

PyTorch is needed here only (pip install torch, CPU build); the package never depends on it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_bench():
    """Builds attention-bench in release mode and returns the binary's path."""
    subprocess.run(["swift", "build", "-c", "release", "--product", "attention-bench"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    path = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
    return os.path.join(path, "attention-bench")


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

def cmd_layer(args):
    import torch
    binary = build_bench()
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
            print(f"{'':>7}  {'  streamed bandwidth':<40} {bytes_per_loop / s / 1e9:8.2f} GB/s {bytes_per_loop / t / 1e9:8.2f} GB/s"
                  f"   machine: copy {bw['copy_gb_per_s']:.1f} GB/s (read+write), read {bw['read_gb_per_s']:.1f} GB/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    layer = sub.add_parser("layer", help="the multi-head attention layer (attention-bench layer)")
    layer.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    layer.add_argument("--rounds", type=int, default=5, help="alternating rounds (default: 5)")
    layer.add_argument("--reps", type=int, default=0,
                       help="repetitions per side per round (default: forward 5, generate 1)")
    layer.add_argument("--tokens", type=int, default=256, help="tokens in the generation loop (default: 256)")
    layer.add_argument("--workloads", nargs="+", choices=["forward", "generate"], default=["forward", "generate"])
    layer.set_defaults(run=cmd_layer)
    # The `sdpa` subcommand (scaled dot-product attention) is added by the core's benchmark work.
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
