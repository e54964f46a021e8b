"""Per-step summary of a cubecl profiling log written by scripts/gpu/profile-step.sh.

cubecl's profiling logger (level `basic`) writes one line per kernel launch (`| duration | kernel
name ... | CudaRuntime`) plus summary tables at each synchronisation. This splits the launches into
training steps at the step's first RMSNorm (a LLaMA step runs `2 * layers + 1` RMSNorm forwards:
pass that number) and prints, for the last two steps, device time and launch count per kernel.

Usage: python3 scripts/gpu/profile-summary.py profile-dense-csr-x.log.gz RMSNORMS_PER_STEP
"""
import collections
import gzip
import re
import sys
path, per_step_norms = sys.argv[1], int(sys.argv[2])
launches = []
opener = gzip.open if path.endswith('.gz') else open
for line in opener(path, 'rt', encoding='utf-8'):
    parts = [p.strip() for p in line.strip().strip('|').split('|')]
    if len(parts) < 2 or not re.match(r'^[\d.]+(ns|µs|ms|s)$', parts[0]):
        continue
    if parts[-1] != 'CudaRuntime' and not (len(parts) > 2 and 'CudaRuntime' in parts):
        continue
    v = float(re.match(r'[\d.]+', parts[0]).group())
    unit = re.search(r'(ns|µs|ms|s)$', parts[0]).group()
    us = v * {'ns': 1e-3, 'µs': 1, 'ms': 1e3, 's': 1e6}[unit]
    name = parts[1]
    if name in ('KernelBinop', 'KernelScalarBinop', 'UnaryFloat', 'PrngKernel'):
        name = name + ' ' + parts[2]
    launches.append((name, us))
norm_idx = [i for i, (n, _) in enumerate(launches) if n == 'RmsNormForwardKernel']
steps = len(norm_idx) // per_step_norms
starts = [norm_idx[k * per_step_norms] for k in range(steps)]
print(f"{len(launches)} launches, {len(norm_idx)} norms, {steps} steps")
# last step: from its first norm to the end (includes optimizer)
last = launches[starts[-1]:]
prev = launches[starts[-2]:starts[-1]]
for label, seg in [('step %d' % steps, last), ('step %d' % (steps - 1), prev)]:
    agg = collections.defaultdict(lambda: [0, 0.0])
    for n, us in seg:
        agg[n][0] += 1; agg[n][1] += us
    tot = sum(v[1] for v in agg.values())
    print(f"== {label}: {len(seg)} launches, {tot/1e3:.1f} ms device time in cubecl kernels")
    for n, (c, us) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:25]:
        print(f"  {n[:40]:40s} {c:6d} {us/1e3:8.2f} ms  {us/c:8.1f} us/launch")
