"""The model card (README.md) of a release, rendered from a plain dict.

The Dagster layer passes whatever it knows; every section is optional and unknown keys are shown as
they come, so a new metric reaches the card without a change here. The card holds no timestamps or run
ids: the same inputs give the same bytes, which keeps re-releases idempotent.

Recognised keys (all optional):
  repo_id, title, base_model, license, save_method, weights {dtype, parameters, ...}
  dataset {sha256, rows, train_rows, eval_rows, n_desirable, n_undesirable, quarantined, sources, ...}
  label_balance {desirable_share, min_share, max_share, passed, ...}
  training {...}   eval {...}   lineage {asset: version, ...}
  gguf [{file, quantization, size_bytes, rel_error, top1_agreement, passed, ...}, ...]
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kto_pipeline.release.content import repo_id_problem


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.4e}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v).replace("|", "\\|").replace("\n", " ")


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return _fmt(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _kv_table(d: dict, header: tuple[str, str] = ("", "")) -> str:
    rows = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    rows += [f"| {k} | {_fmt(v)} |" for k, v in _flatten(d).items()]
    return "\n".join(rows)


def _gguf_table(items: list[dict]) -> str:
    first = ["file", "quantization", "size_bytes"]
    extra = [k for it in items for k in it if k not in first]
    cols = first + list(dict.fromkeys(extra))
    head = [("size" if c == "size_bytes" else c.replace("_", " ")) for c in cols]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
    for it in items:
        cells = [_size(it.get(c)) if c == "size_bytes" else _fmt(it.get(c, "")) for c in cols]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


GGUF_FIGURES = ("bits_per_weight", "rel_error", "top1_agreement", "mean_kl", "positions")


def gguf_rows(items: list[dict]) -> list[dict]:
    """Card rows from GGUF export results (kto_pipeline.export.gguf) or already-flat dicts."""
    rows = []
    for it in items:
        flat = {**it, **(it.get("verification") or {})}
        row = {
            "file": Path(str(flat.get("file") or flat.get("path", ""))).name,
            "quantization": flat.get("quantization") or flat.get("type"),
            "size_bytes": flat.get("size_bytes"),
        }
        row.update({k: flat[k] for k in GGUF_FIGURES if k in flat})
        if "passed" in flat:
            row["verified"] = flat["passed"]
        rows.append({k: v for k, v in row.items() if v is not None})
    return rows


def _hub_id(value: Any) -> bool:
    """Whether value is a Hub repo id "namespace/name" (the Hub rejects base_model values that are local paths)."""
    return isinstance(value, str) and value.count("/") == 1 and not repo_id_problem(value)


def _front_matter(info: dict, library: str, has_gguf: bool) -> str:
    from huggingface_hub import ModelCardData

    base = info.get("base_model")
    data = ModelCardData(
        library_name=library,
        pipeline_tag="text-generation",
        tags=["kto", "trl", "kto_pipeline"] + (["gguf"] if has_gguf else []),
        base_model=base if _hub_id(base) else None,
        license=info.get("license") or None,
    )
    return "---\n" + data.to_yaml() + "\n---\n"


def _usage(info: dict, gguf: list[dict]) -> str:
    repo = info.get("repo_id", "<repo_id>")
    lora = info.get("save_method") == "lora"
    parts = ["## Usage", "", "### transformers", "", "```python"]
    if lora:
        parts += [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")  # loads the base, adds the adapter',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
        ]
    else:
        parts += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
            f'model = AutoModelForCausalLM.from_pretrained("{repo}", dtype="auto")',
        ]
    parts += [
        'messages = [{"role": "user", "content": "What is machine learning?"}]',
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",',
        "                                       return_dict=True)",
        "output = model.generate(**inputs, max_new_tokens=256, do_sample=True, temperature=0.7)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        "With `kto_pipeline` installed, on a downloaded copy (`hf download REPO --local-dir ./model`); "
        "`kto chat ./model` opens an interactive chat:",
        "",
        "```python",
        "from kto_pipeline.inference import KTOInference",
        "",
        'bot = KTOInference("./model")  # or a .gguf file',
        'print(bot.generate("What is machine learning?", temperature=0.7, max_new_tokens=256))',
        "```",
    ]
    if gguf:
        pick = next((g for g in gguf if "Q4_K_M" in str(g.get("quantization", g.get("file", "")))), gguf[0])
        quant = pick.get("quantization") or pick["file"].rsplit("-", 1)[-1].removesuffix(".gguf")
        parts += [
            "",
            "### llama.cpp",
            "",
            "```bash",
            f"llama-cli --hf-repo {repo} --hf-file {pick['file']} -cnv",
            f"# or, after downloading: llama-cli -m {pick['file']} -cnv",
            "```",
            "",
            "### Ollama",
            "",
            "```bash",
            f"ollama run hf.co/{repo}:{quant}",
            "```",
        ]
    return "\n".join(parts)


def render_model_card(info: dict) -> str:
    """Markdown with YAML front matter; deterministic for a given dict."""
    info = dict(info)
    gguf = list(info.get("gguf") or [])
    lora = info.get("save_method") == "lora"
    repo = info.get("repo_id", "model")
    out = [
        _front_matter(info, "peft" if lora else "transformers", bool(gguf)),
        f"# {info.get('title') or repo.split('/')[-1]}",
        "",
        "A language model aligned with **KTO** (Kahneman-Tversky Optimization) on unpaired preference "
        "feedback — each answer marked desirable or undesirable — using TRL's `KTOTrainer` and a LoRA "
        "adapter, built by the `kto_pipeline` Dagster pipeline.",
        "",
    ]

    facts = {
        "base model": info.get("base_model"),
        "save method": info.get("save_method"),
        **{k: v for k, v in (info.get("weights") or {}).items()},
    }
    facts = {k: v for k, v in facts.items() if v is not None}
    if facts:
        out += ["## Model", "", _kv_table(facts, ("", "")), ""]
        if info.get("save_method") == "merged_16bit":
            out += ["The LoRA adapter is merged into the base weights, saved as 16-bit safetensors.", ""]
        elif lora:
            out += ["This repo holds the LoRA adapter only; load it on top of the base model.", ""]
        elif info.get("save_method") == "merged_4bit":
            out += ["Merged weights quantized to 4-bit NF4 with bitsandbytes (needs CUDA to load).", ""]

    ds = info.get("dataset") or {}
    if ds:
        out += ["## Training data", "", _kv_table(ds, ("", "")), ""]
    lb = info.get("label_balance") or {}
    if lb:
        share = lb.get("desirable_share")
        line = f"Desirable share: **{_fmt(share)}**" if share is not None else "Label balance:"
        if "min_share" in lb and "max_share" in lb:
            line += f" (allowed band [{_fmt(lb['min_share'])}, {_fmt(lb['max_share'])}])"
        if "passed" in lb:
            line += " — check " + ("passed" if lb["passed"] else "FAILED")
        rest = {k: v for k, v in lb.items() if k not in ("desirable_share", "min_share", "max_share", "passed")}
        out += ["### Label balance", "", line + ".", ""] + ([_kv_table(rest, ("", "")), ""] if rest else [])
    if info.get("training"):
        out += ["## Training configuration", "", _kv_table(info["training"], ("parameter", "value")), ""]
    if info.get("eval"):
        out += ["## Evaluation", "", _kv_table(info["eval"], ("metric", "value")), ""]
    if gguf:
        out += [
            "## GGUF files",
            "",
            "Quantized with llama.cpp; each file was loaded back and its logits compared with the 16-bit "
            "model (relative error, top-1 agreement) where the figures are given.",
            "",
            _gguf_table(gguf),
            "",
        ]
    if info.get("lineage"):
        lin = info["lineage"]
        out += ["## Lineage", "", _kv_table(lin if isinstance(lin, dict) else {"steps": lin}, ("asset", "version")), ""]
    out += [_usage(info, gguf), ""]
    return "\n".join(out)
