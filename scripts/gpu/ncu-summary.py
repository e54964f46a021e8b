"""Per-kernel summary of an ncu CSV written by scripts/gpu/ncu-step.sh: the one training step
profiled there, summed per kernel category and per kernel name.

Usage: python3 scripts/gpu/ncu-summary.py ncu-dense-csr-x.csv[.gz]
"""
import collections
import csv
import gzip
import re
import sys

CATEGORIES = [
    ('GEMM (cuBLASLt)', r'gemm|nvjet|cutlass|sm90_|sm80_|xmma|splitK|cublas'),
    ('GEMM (burn matmul)', r'matmul_entry'),
    ('softmax', r'softmax'),
    ('attention (other)', r'attention'),
    ('RMSNorm', r'rms_norm'),
    ('RoPE', r'rope'),
    ('SwiGLU', r'swiglu|silu'),
    ('cross-entropy', r'cross_entropy'),
    ('AdamW + clipping', r'adamw|global_norm|norm_sq|sum_sq|sums?_of_squares|clip_factor'),
    ('estimator', r'top_k|mlp_scores|sequence_kernel|sequence_mean|partial_sums|finish_kernel|'
                  r'masked_gram|quadratic_form|kv_channels|query_channels'),
    # The sliced products' weight and input gathers, their scatters to full width, the
    # masked-dense projections' masks, the token split's row moves.
    ('slices / token split', r'channel|gather|scatter|row_|mask|positions|select'),
    ('copies / layout', r'copy|contiguous|reshape|transpose|permute'),
    ('casts', r'cast'),
    ('reductions', r'reduce|sum|mean|max'),
    ('element-wise', r'binop|unary|elemwise|kernel_scalar|add|mul|fill|prng|zeros'),
]


def load(path):
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rt', encoding='utf-8', errors='replace') as f:
        lines = [l for l in f if l.startswith('"')]
    rows = csv.DictReader(lines)
    launches = []
    for r in rows:
        if r.get('Metric Name') != 'gpu__time_duration.sum':
            continue
        try:
            ns = float(r['Metric Value'].replace(',', ''))
        except ValueError:
            continue
        launches.append((int(r['ID']), r['Kernel Name'], ns))
    launches.sort()
    return [(n, ns) for _, n, ns in launches]


def category(name):
    low = name.lower()
    for label, pattern in CATEGORIES:
        if re.search(pattern, low):
            return label
    return 'other'


def main():
    launches = load(sys.argv[1])
    norms = sum(1 for n, _ in launches if 'rms_norm_forward' in n.lower())
    total = sum(ns for _, ns in launches)
    print(f'{len(launches)} kernels ({norms} RMSNorm forwards), {total / 1e6:.1f} ms of kernel time')
    by_cat = collections.defaultdict(lambda: [0, 0.0])
    by_name = collections.defaultdict(lambda: [0, 0.0])
    for n, ns in launches:
        by_cat[category(n)][0] += 1
        by_cat[category(n)][1] += ns
        short = re.sub(r'\(.*$', '', n)[:70]
        by_name[short][0] += 1
        by_name[short][1] += ns
    for label, (c, ns) in sorted(by_cat.items(), key=lambda kv: -kv[1][1]):
        print(f'  {label:28s} {c:6d} {ns / 1e6:8.2f} ms')
    print('== kernels by name (top 45)')
    for n, (c, ns) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:45]:
        print(f'  {n:70s} {c:6d} {ns / 1e6:8.2f} ms {ns / c / 1e3:8.1f} us')


main()
