#!/usr/bin/env python3
"""Create tiny random LLaMA checkpoints + reference outputs from HF transformers.

Writes, under --out (default tests/fixtures):

  tiny-llama/    plain RoPE (theta 1e4), untied lm_head, GQA 4 q heads / 2 kv heads
  tiny-llama31/  llama3 RoPE scaling (theta 5e5, factor 8, original_max 16), tied lm_head

Each folder holds config.json + model.safetensors (model.save_pretrained) and
expected.json with the logits, the mean next-token NLL, the layer-0 normalised
hidden states, and a greedy generation, all computed by LlamaForCausalLM
(float32, CPU, eager attention). The output is deterministic: re-running the
script gives byte-identical files (for a given torch/transformers version).

Run:  python3 scripts/make_tiny_llama_fixture.py --out tests/fixtures
Deps: pip install torch transformers safetensors   (CPU build is enough)
"""

import argparse
import json
import math
import os

import numpy as np
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

SEED = 0
BATCH, SEQ = 3, 12
LEFT_PAD_ROW1 = 4
RIGHT_PAD_ROW2 = 3
GEN_PROMPT_LEN = 7
GEN_ROW1_PADS = 3
GEN_NEW_TOKENS = 8
PAD_ID = 0

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    hidden_act="silu",
    rms_norm_eps=1e-5,
    max_position_embeddings=128,
    attention_bias=False,
    mlp_bias=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=PAD_ID,
)

MODELS = {
    "tiny-llama": dict(
        tie_word_embeddings=False,
        # transformers 5.x keeps rope_theta inside `rope_parameters`.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    "tiny-llama31": dict(
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
}


def f32(x):
    """Shortest decimal that round-trips to the same float32 (exact, compact)."""
    return float(str(np.float32(x)))


def to_list_f32(t):
    return _nested_f32(t.detach().to(torch.float32).cpu().numpy())


def _nested_f32(a):
    if a.ndim == 0:
        return f32(a)
    if a.ndim == 1:
        return [f32(v) for v in a]
    return [_nested_f32(r) for r in a]


def build_model(extra):
    config = LlamaConfig(**COMMON, **extra, attn_implementation="eager")
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    assert model.config._attn_implementation == "eager"

    # Re-draw every parameter explicitly (HF's std 0.02 init gives near-uniform logits).
    # named_parameters() de-duplicates tied tensors, so a tied lm_head/embedding is drawn once.
    norm_weights = set()
    for mod in model.modules():
        if isinstance(mod, LlamaRMSNorm):
            norm_weights.add(id(mod.weight))
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if id(p) in norm_weights:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, dtype=torch.float32))
            else:
                p.copy_(0.2 * torch.randn(p.shape, dtype=torch.float32))
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def make_inputs():
    ids = torch.randint(3, 256, (BATCH, SEQ), dtype=torch.long)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, :LEFT_PAD_ROW1] = 0  # row 1: left padding
    mask[2, SEQ - RIGHT_PAD_ROW2 :] = 0  # row 2: right padding
    ids = ids.masked_fill(mask == 0, PAD_ID)
    return ids, mask


def make_prompts():
    ids = torch.randint(3, 256, (2, GEN_PROMPT_LEN), dtype=torch.long)
    mask = torch.ones(2, GEN_PROMPT_LEN, dtype=torch.long)
    mask[1, :GEN_ROW1_PADS] = 0
    ids = ids.masked_fill(mask == 0, PAD_ID)
    return ids, mask


def mean_nll(logits, ids, mask):
    lg = logits.to(torch.float64)
    logp = torch.log_softmax(lg, dim=-1)
    total, count = 0.0, 0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if mask[b, t] == 1 and mask[b, t + 1] == 1:
                total += -logp[b, t, ids[b, t + 1]].item()
                count += 1
    return total / count, count


def manual_greedy(model, ids, mask, steps):
    """No-cache reference for generate(): full recompute each step, HF-style position ids."""
    ids, mask = ids.clone(), mask.clone()
    out = []
    for _ in range(steps):
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        lg = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        nxt = lg[:, -1, :].argmax(-1)
        out.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], dim=1)
    return torch.stack(out, dim=1)


def make_fixture(name, extra, out_root):
    torch.manual_seed(SEED)  # per model, so each folder is reproducible on its own
    model = build_model(extra)
    folder = os.path.join(out_root, name)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)

    with open(os.path.join(folder, "config.json")) as fh:
        saved_cfg = json.load(fh)
    print(f"== {folder}/config.json ==")
    print(json.dumps(saved_cfg, indent=2, sort_keys=True))
    rp = saved_cfg.get("rope_parameters") or saved_cfg.get("rope_scaling")
    assert rp is not None and rp.get("rope_type") == extra["rope_parameters"]["rope_type"], rp
    assert float(rp["rope_theta"]) == extra["rope_parameters"]["rope_theta"], rp

    ids, mask = make_inputs()
    captured = {}

    def hook(_mod, args):
        captured["q_in"] = args[0].detach().clone()

    h = model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(hook)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits  # no position_ids: 0..seq per row
    h.remove()
    assert logits.shape == (BATCH, SEQ, COMMON["vocab_size"]) and logits.dtype == torch.float32

    # Sanity checks.
    assert torch.isfinite(logits).all(), "non-finite logits"
    assert torch.isfinite(logits[1, :LEFT_PAD_ROW1]).all(), "padded-query rows not finite"
    vocab_std = logits.std(dim=-1)
    print(f"{name}: logits std over vocab min={vocab_std.min():.3f} mean={vocab_std.mean():.3f}")
    assert vocab_std.min() > 0.5, "logits nearly uniform"

    nll, nll_count = mean_nll(logits, ids, mask)
    print(f"{name}: mean_nll={nll:.6f} over {nll_count} positions (ln 256 = {math.log(256):.4f})")

    # Greedy generation, left-padded prompts, eos stopping disabled -> exactly 8 new tokens.
    p_ids, p_mask = make_prompts()
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        gen = model.generate(
            input_ids=p_ids,
            attention_mask=p_mask,
            max_new_tokens=GEN_NEW_TOKENS,
            min_new_tokens=GEN_NEW_TOKENS,
            do_sample=False,
            num_beams=1,
            pad_token_id=PAD_ID,
            eos_token_id=None,
        )
        new_tokens = gen[:, GEN_PROMPT_LEN:]
        assert new_tokens.shape == (2, GEN_NEW_TOKENS), new_tokens.shape
        ref = manual_greedy(model, p_ids, p_mask, GEN_NEW_TOKENS)
    assert torch.equal(ref, new_tokens), f"generate() {new_tokens.tolist()} != manual {ref.tolist()}"
    print(f"{name}: new_tokens={new_tokens.tolist()}")

    inv_freq = model.model.rotary_emb.inv_freq
    expected = {
        "model": name,
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "position_ids_note": "no position_ids passed: transformers uses 0..seq-1 for every row",
        "logits": to_list_f32(logits),
        "mean_nll": nll,
        "mean_nll_count": nll_count,
        "layer_inputs_l0": to_list_f32(captured["q_in"][0, :4, :8]),
        "layer_inputs_l0_note": "input of layers[0].self_attn.q_proj (input_layernorm output), row 0, positions 0..3, channels 0..7",
        "rope_inv_freq": to_list_f32(inv_freq),
        "generate": {
            "prompt_ids": p_ids.tolist(),
            "prompt_mask": p_mask.tolist(),
            "new_tokens": new_tokens.tolist(),
            "note": "greedy, eos disabled; HF uses position_ids = cumsum(mask)-1 (pads -> 0), new tokens continue from the last position",
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "seed": SEED,
            "dtype": "float32",
            "attn_implementation": "eager",
        },
    }
    path = os.path.join(folder, "expected.json")
    with open(path, "w") as fh:
        json.dump(expected, fh, separators=(",", ":"))
        fh.write("\n")
    for fn in sorted(os.listdir(folder)):
        print(f"  {fn}: {os.path.getsize(os.path.join(folder, fn))} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures", help="output root folder")
    args = ap.parse_args()
    torch.set_num_threads(1)  # cheap, and avoids thread-count-dependent reductions
    torch.use_deterministic_algorithms(True)
    for name, extra in MODELS.items():
        make_fixture(name, extra, args.out)


if __name__ == "__main__":
    main()
