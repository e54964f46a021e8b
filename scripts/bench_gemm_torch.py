#!/usr/bin/env python3
"""torch.matmul (bf16, cuBLAS) on the GEMM shapes of `cargo xtask bench gemm`: the yardstick for
our cuBLASLt seam, timed on the same GPU.

The shape list comes from the xtask (`xtask bench gemm --list-shapes FILE`), so both sides time the
same products. Each shape: `A[m, k] @ B` with `B = W.t()` for a weight `W[n, k]` ("wt", the
forward x W^T) or `B = W` for `W[k, n]` ("w", the input gradient dY W). Per shape, the median over
`--reps` repetitions of the mean time of enough back-to-back calls to last `--rep-seconds`, timed
with CUDA events after warm-up.

Usage: python3 scripts/bench_gemm_torch.py --shapes shapes.json [--output-dir bench/results]
"""

import argparse
import datetime
import json
import os
import re
import statistics
import sys

import torch


def time_call(fn, reps, rep_seconds):
    """Median seconds per call of `fn` over `reps` event-timed repetitions."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    one = max(start.elapsed_time(end) * 1e-3, 1e-7)
    iters = min(10_000, max(1, int(-(-rep_seconds // one))))
    per_call = []
    for _ in range(reps):
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) * 1e-3 / iters)
    return statistics.median(per_call)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", required=True, help="JSON from `xtask bench gemm --list-shapes`")
    parser.add_argument("--output-dir", default="bench/results")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--rep-seconds", type=float, default=0.01)
    args = parser.parse_args()

    with open(args.shapes) as f:
        shapes = json.load(f)["shapes"]
    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name(device)
    print(f"{gpu}, torch {torch.__version__} (CUDA {torch.version.cuda}), bf16", flush=True)
    results = []
    for s in shapes:
        m, n, k = s["m"], s["n"], s["k"]
        a = torch.randn(m, k, dtype=torch.bfloat16, device=device)
        if s["b"] == "wt":
            b = torch.randn(n, k, dtype=torch.bfloat16, device=device).t()
        else:
            b = torch.randn(k, n, dtype=torch.bfloat16, device=device)
        seconds = time_call(lambda: torch.matmul(a, b), args.reps, args.rep_seconds)
        flops = 2.0 * m * n * k
        results.append({"name": s["name"], "m": m, "n": n, "k": k, "b": s["b"], "flops": flops,
                        "median_s": seconds, "tflops": flops / seconds / 1e12})
        print(f"{s['name']:<24} {m:>5} {n:>6} {k:>6} {flops / 1e9:>8.2f} GFLOP "
              f"{flops / seconds / 1e12:>7.1f} TFLOP/s", flush=True)
        del a, b

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    slug = "-".join(p for p in re.split(r"[^a-z0-9]+", gpu.lower()) if p)
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, f"gemm-torch-{now.replace(':', '')}-{slug}.json")
    doc = {
        "kind": "gemm-torch",
        "command": " ".join(sys.argv),
        "date": now,
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git_commit": os.environ.get("GIT_COMMIT"),
        "dtype": "bf16",
        "reps": args.reps,
        "rep_seconds": args.rep_seconds,
        "results": results,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
