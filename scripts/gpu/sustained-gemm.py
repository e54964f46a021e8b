#!/usr/bin/env python3
"""bf16 GEMM throughput on the GPU in short bursts and sustained, with the SM clock and power
read by nvidia-smi alongside (read only: the card's settings are left alone).

`bench gemm` and the FLOP floors of docs/perf.md use the rate of short bursts (784 TFLOP/s for
8192^3 on the H200). A training step keeps the tensor cores busy for seconds, long enough for the
board's power limit to lower the SM clock; this script measures the rate the GEMMs then hold, on
the step's largest shape (the MLP's gate/up product, 4096 tokens) and on 8192^3, so that the
step's floor can be stated at the clock it actually runs at.

Usage: python3 scripts/gpu/sustained-gemm.py [--seconds 12] [--json OUT.json]
"""

import argparse
import json
import subprocess
import time

import torch


def smi():
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    try:
        sm, power = out.split(",")
        return int(float(sm)), float(power)
    except ValueError:
        return None, None


def windows(m, n, k, seconds, window_s=1.0):
    """TFLOP/s per window of back-to-back products (CUDA events), with the clock after each."""
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    flop = 2.0 * m * n * k
    for _ in range(3):
        torch.matmul(a, b, out=c)
    torch.cuda.synchronize()
    # Products per window, from one timed product.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.matmul(a, b, out=c)
    end.record()
    end.synchronize()
    per_window = max(1, int(window_s * 1e3 / max(start.elapsed_time(end), 1e-3)))
    rows = []
    t0 = time.time()
    while time.time() - t0 < seconds:
        start.record()
        for _ in range(per_window):
            torch.matmul(a, b, out=c)
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end)
        sm, power = smi()
        rows.append(
            {
                "t_s": round(time.time() - t0, 2),
                "tflops": round(flop * per_window / (ms * 1e-3) / 1e12, 1),
                "sm_mhz": sm,
                "power_w": power,
            }
        )
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}}
    for name, (m, n, k) in {
        "gate/up fwd 4096x14336x4096": (4096, 14336, 4096),
        "8192^3": (8192, 8192, 8192),
    }.items():
        time.sleep(3)  # let the clock recover between shapes
        rows = windows(m, n, k, args.seconds)
        first, last = rows[0], rows[len(rows) // 2 :]
        held = sorted(r["tflops"] for r in last)[len(last) // 2]
        clock = sorted(r["sm_mhz"] or 0 for r in last)[len(last) // 2]
        print(
            f"{name}: first window {first['tflops']} TFLOP/s at {first['sm_mhz']} MHz; "
            f"held (median of the second half) {held} TFLOP/s at {clock} MHz"
        )
        results["shapes"][name] = {"windows": rows, "held_tflops": held, "held_sm_mhz": clock}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
