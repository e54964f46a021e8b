#!/usr/bin/env python3
"""Rebuild the data samples in this folder from the shared data copies (see README.md).

    python3 datasets/make_samples.py                 # write the samples
    python3 datasets/make_samples.py --check         # verify the shipped files, byte for byte
    python3 datasets/make_samples.py --src DIR       # data root (default: ../shared/data
                                                     # beside the repository)

Selection rule, with no random generator: from a source of n records, k are taken at the
evenly spaced indices i * n // k for i in 0..k (so the first record always, and the choice is
spread over the whole file). Training sets mixing several sources interleave them round-robin
(record 0 of each source, then record 1 of each, ...). Records are written with the fields
instruction, input, output, answer, in that order, values unchanged.
"""

import argparse
import json
import pathlib
import shutil
import sys

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_SRC = HERE.parent.parent / "shared" / "data"
FIELDS = ("instruction", "input", "output", "answer")

# (source file relative to the data root, records taken)
COMMONSENSE_TRAIN = [
    ("llm-adapters/dataset/boolq/train.json", 100),
    ("llm-adapters/dataset/ARC-Easy/train.json", 100),
    ("llm-adapters/dataset/ARC-Challenge/train.json", 100),
    ("llm-adapters/dataset/openbookqa/train.json", 100),
    ("pyreft-subsets/hellaswag_4k/train.jsonl", 100),
]
MATH_TRAIN = [("llm-adapters-derived/math_10k_subset.json", 400)]
EVAL_TAKE = 100
EVAL = ["boolq", "piqa", "social_i_qa", "winogrande", "ARC-Easy", "ARC-Challenge",
        "openbookqa", "gsm8k", "SVAMP", "mawps"]
LICENSES = {
    "LICENSE-LLM-Adapters-data": "llm-adapters/DATA_LICENSE",
    "LICENSE-pyreft": "pyreft-subsets/LICENSE-pyreft",
    "LICENSE-gsm8k": "gsm8k-original/LICENSE",
}


def read_records(path: pathlib.Path) -> list:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def spaced(records: list, k: int) -> list:
    n = len(records)
    if k > n:
        sys.exit(f"asked for {k} records of a source of {n}")
    return [records[i * n // k] for i in range(k)]


def normalised(record: dict) -> dict:
    return {f: record.get(f, "") for f in FIELDS}


def interleave(groups: list) -> list:
    out = []
    for i in range(max(len(g) for g in groups)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def jsonl(records: list) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def json_array(records: list) -> str:
    body = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    return "[\n" + body + "\n]\n"


def build(src: pathlib.Path) -> dict:
    """Relative output path -> file content (str for samples, bytes for licences)."""
    files = {}
    train_instructions = set()
    for name, sources in [("commonsense", COMMONSENSE_TRAIN), ("math", MATH_TRAIN)]:
        groups = [[normalised(r) for r in spaced(read_records(src / p), k)] for p, k in sources]
        records = interleave(groups)
        train_instructions.update(r["instruction"].strip() for r in records)
        files[f"train/{name}.jsonl"] = jsonl(records)
    for task in EVAL:
        records = spaced(read_records(src / "llm-adapters/dataset" / task / "test.json"), EVAL_TAKE)
        records = [normalised(r) for r in records]
        leaked = [r["instruction"] for r in records if r["instruction"].strip() in train_instructions]
        if leaked:
            sys.exit(f"{task}: {len(leaked)} evaluation records are also in a training sample")
        files[f"eval/{task}.json"] = json_array(records)
    for out, source in LICENSES.items():
        files[out] = (src / source).read_bytes()
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=pathlib.Path, default=DEFAULT_SRC)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    files = build(args.src)
    stale = []
    for rel, content in files.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        path = HERE / rel
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        lines = content.count("\n") if isinstance(content, str) else 0
        print(f"{rel}: {len(data)} bytes" + (f", {lines} lines" if lines else ""))
    if stale:
        sys.exit("differ from the rebuilt samples: " + ", ".join(stale))
    if args.check:
        print(f"all {len(files)} files match")


if __name__ == "__main__":
    main()
