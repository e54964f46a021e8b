#!/usr/bin/env python3
"""Create a LoRA adapter with HF `peft` and record what it computes, or check one we saved.

Default mode writes, under --out (default tests/fixtures/peft-tiny):

  adapter/        peft `save_pretrained` output (adapter_config.json, its
                  target_modules put in a fixed order, + adapter_model.safetensors;
                  the model-card README.md is dropped) of a rank-8 LoRA on every projection
                  (q,k,v,o,gate,up,down) of tests/fixtures/tiny-llama, lora_B drawn
                  N(0, 0.1) so that the adapter changes the outputs
  expected.json   a fixed batch (input_ids [2,10], one left-padded row, labels with
                  -100 on prompt and padding), the loss `model(input_ids,
                  attention_mask, labels).loss`, the logits [2,10,256], and the
                  gradient of every lora_A / lora_B after one backward, keyed by
                  the adapter_model.safetensors name, flattened row-major

float32, CPU, eager attention, deterministic: re-running gives byte-identical files
(for given torch/transformers/peft versions).

`--check-ours DIR` goes the other way: it loads into peft an adapter folder that our
Rust code saved (DIR/adapter_config.json + DIR/adapter_model.safetensors), checks that
peft picked up every tensor of the file and nothing else, computes the logits of the
batch in DIR/ours.json and compares them with the logits our code recorded there
(exit status 1 above 1e-4 normwise relative error).

Run:  python3 scripts/make_peft_fixture.py
      python3 scripts/make_peft_fixture.py --check-ours tests/fixtures/peft-tiny/ours
Deps: pip install torch transformers safetensors peft   (CPU build is enough)
"""

import argparse
import json
import os
import sys

import numpy as np
import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

SEED = 0
B_SEED = 1234
B_STD = 0.1
RANK, ALPHA = 8, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BATCH, SEQ = 2, 10
LEFT_PAD_ROW1 = 3
PROMPT_LEN = 4  # real tokens at the start of each row that are masked out of the loss
PAD_ID = 0
TOLERANCE = 1e-4


def f32(x):
    """Shortest decimal that round-trips to the same float32 (exact, compact)."""
    return float(str(np.float32(x)))


def flat_f32(t):
    return [f32(v) for v in t.detach().to(torch.float32).reshape(-1).cpu().numpy()]


def load_base(base_dir):
    model = LlamaForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert model.config._attn_implementation == "eager"
    return model


def make_batch():
    gen = torch.Generator().manual_seed(SEED)
    ids = torch.randint(3, 256, (BATCH, SEQ), dtype=torch.long, generator=gen)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, :LEFT_PAD_ROW1] = 0
    ids = ids.masked_fill(mask == 0, PAD_ID)
    labels = ids.clone()
    labels[0, :PROMPT_LEN] = -100
    labels[1, : LEFT_PAD_ROW1 + PROMPT_LEN] = -100
    return ids, mask, labels


def rel_err(ours, ref):
    """max |a - b| / max |b| (normwise, as the Rust tests measure)."""
    return (ours - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)


def normalise_saved_folder(adapter_dir):
    """Makes save_pretrained's output reproducible: peft writes `target_modules` from a set
    (order varies with PYTHONHASHSEED) and a model card README.md we do not need."""
    os.remove(os.path.join(adapter_dir, "README.md"))
    path = os.path.join(adapter_dir, "adapter_config.json")
    with open(path) as fh:
        cfg = json.load(fh)
    assert sorted(cfg["target_modules"]) == sorted(TARGETS), cfg["target_modules"]
    cfg["target_modules"] = TARGETS
    with open(path, "w") as fh:
        fh.write(json.dumps(cfg, indent=2, sort_keys=True))  # as peft writes it


def make_fixture(base_dir, out):
    torch.manual_seed(SEED)
    base = load_base(base_dir)
    config = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=TARGETS,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(B_SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".lora_B." in name:
                p.copy_(B_STD * torch.randn(p.shape, dtype=torch.float32, generator=gen))
    model.eval()

    adapter_dir = os.path.join(out, "adapter")
    os.makedirs(adapter_dir, exist_ok=True)
    model.save_pretrained(adapter_dir, safe_serialization=True)
    normalise_saved_folder(adapter_dir)
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))

    ids, mask, labels = make_batch()
    result = model(input_ids=ids, attention_mask=mask, labels=labels)
    result.loss.backward()
    logits = result.logits.detach()
    assert torch.isfinite(logits).all() and torch.isfinite(result.loss)

    # Gradients keyed by the saved name: `...q_proj.lora_A.default.weight` -> `...q_proj.lora_A.weight`.
    grads, shapes = {}, {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = name.replace(".default.", ".")
            assert key in saved, f"{key} not in the saved adapter"
            assert p.grad is not None and p.grad.abs().max() > 0, f"no gradient for {key}"
            grads[key] = flat_f32(p.grad)
            shapes[key] = list(p.shape)
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
    assert sorted(grads) == sorted(saved), "trainable parameters differ from the saved tensors"

    with torch.no_grad(), model.disable_adapter():
        off = model(input_ids=ids, attention_mask=mask).logits
    print(f"adapter changes logits by {rel_err(logits, off):.3f} (relative); loss {result.loss.item():.6f}")
    assert rel_err(logits, off) > 1e-2, "adapter has no visible effect"

    expected = {
        "base_model": "tiny-llama",
        "lora": {"r": RANK, "lora_alpha": ALPHA, "target_modules": TARGETS, "lora_dropout": 0.0},
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "labels": labels.tolist(),
        "loss": f32(result.loss.item()),
        "logits": flat_f32(logits),
        "logits_shape": list(logits.shape),
        "grads": grads,
        "grad_shapes": shapes,
        "notes": "model(input_ids, attention_mask, labels) with no position_ids (0..seq per row); "
        "loss is transformers' shifted mean cross-entropy over labels != -100; "
        "grads after one backward of that loss, keyed as in adapter_model.safetensors, row-major",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "seed": SEED,
            "lora_b_seed": B_SEED,
            "dtype": "float32",
            "attn_implementation": "eager",
        },
    }
    path = os.path.join(out, "expected.json")
    with open(path, "w") as fh:
        json.dump(expected, fh, separators=(",", ":"))
        fh.write("\n")
    for root, _dirs, files in sorted(os.walk(out)):
        for fn in sorted(files):
            full = os.path.join(root, fn)
            print(f"  {full}: {os.path.getsize(full)} bytes")


def check_ours(base_dir, ours_dir):
    with open(os.path.join(ours_dir, "ours.json")) as fh:
        ours = json.load(fh)
    base = load_base(base_dir)
    model = PeftModel.from_pretrained(base, ours_dir).eval()
    cfg = model.peft_config["default"]
    print(
        f"peft loaded {ours_dir}: r={cfg.r} alpha={cfg.lora_alpha} targets={sorted(cfg.target_modules)}"
    )

    # Every tensor of the file must have landed in the model, and every adapter tensor of the
    # model must come from the file (peft only warns about either).
    saved = load_file(os.path.join(ours_dir, "adapter_model.safetensors"))
    state = get_peft_model_state_dict(model)
    ok = True
    if sorted(state) != sorted(saved):
        print(f"FAIL: key sets differ: only in model {sorted(set(state) - set(saved))[:5]}, "
              f"only in file {sorted(set(saved) - set(state))[:5]}")
        ok = False
    else:
        for key, value in saved.items():
            if not torch.equal(state[key], value):
                print(f"FAIL: {key} differs after loading")
                ok = False
    print(f"  {len(saved)} adapter tensors loaded, all equal to the file: {ok}")

    ids = torch.tensor(ours["input_ids"], dtype=torch.long)
    mask = torch.tensor(ours["attention_mask"], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        with model.disable_adapter():
            off = model(input_ids=ids, attention_mask=mask).logits
    theirs = torch.tensor(ours["logits"], dtype=torch.float32).reshape(logits.shape)
    err = rel_err(theirs, logits)
    effect = rel_err(logits, off)
    print(f"  logits: peft vs ours relative error {err:.3e} (adapter effect {effect:.3f})")
    if err > TOLERANCE or effect < 1e-2:
        ok = False
    print("OK" if ok else "FAIL")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="tests/fixtures/tiny-llama", help="HF base model folder")
    ap.add_argument("--out", default="tests/fixtures/peft-tiny", help="output folder")
    ap.add_argument("--check-ours", metavar="DIR", help="check an adapter folder saved by our code")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if args.check_ours:
        sys.exit(0 if check_ours(args.base, args.check_ours) else 1)
    make_fixture(args.base, args.out)


if __name__ == "__main__":
    main()
