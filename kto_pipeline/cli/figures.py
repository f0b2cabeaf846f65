"""Materialization metadata as a person reads it: one line of headline figures per asset, one per GGUF file."""

from __future__ import annotations

from typing import Any


def figures_of(metadata: dict) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def scalars(meta: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={fmt(v)}"
        for k, v in meta.items()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool) and len(str(v)) < 80
    )


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def asset_line(asset: str, meta: dict[str, Any]) -> str:
    """The headline figures of one materialization."""
    g = meta.get
    if asset == "raw_preferences":
        text = f"{g('valid')} valid rows, {g('quarantined')} quarantined, from {g('files')} file(s)"
    elif asset == "kto_dataset":
        text = (
            f"{g('valid')} valid rows ({g('train_rows')} train, {g('eval_rows')} eval; {g('n_desirable')} "
            f"desirable, {g('n_undesirable')} undesirable), {g('quarantined')} quarantined, "
            f"{g('duplicates_dropped')} duplicates dropped"
        )
    elif asset == "lora_adapter":
        parts = [f"{int(g('steps', 0))} steps"]
        parts += [
            f"{label} {fmt(g(k))}"
            for k, label in (("final_loss", "loss"), ("eval_loss", "eval loss"), ("rewards_margins", "margin"))
            if g(k) is not None
        ]
        if g("tokens_per_s"):
            parts.append(f"{g('tokens_per_s'):,.0f} tok/s")
        if g("peak_vram_gib"):
            parts.append(f"peak {g('peak_vram_gib'):.1f} GiB")
        if g("wall_s"):
            parts.append(f"in {duration(g('wall_s'))}")
        text = ", ".join(parts)
    elif asset == "merged_model":
        text = f"{g('parameters', 0):,} parameters, {g('dtype')}, into {g('merged_into')}"
    elif asset == "gguf_quantizations":
        text = f"{len(g('files').records) if g('files') else 0} GGUF files verified, llama.cpp {g('llama_cpp_version')}"
    elif asset == "hub_release":
        text = (
            f"{g('target')} release {g('tag')} of {g('repo_id')} "
            f"({'new version' if g('created') else 'unchanged'}) at {g('location')}"
        )
    else:
        text = ""
    return f"done  {text}".rstrip() + (f"  -> {g('path')}" if g("path") and asset != "hub_release" else "")


def gguf_file_line(file: str, size_bytes: float, bits_per_weight: float, verification: dict) -> str:
    """One GGUF file and its verification against the HF model (export.gguf's figures)."""
    v = verification
    return (
        f"  {file}: {size_bytes / 2**20:.1f} MB, {bits_per_weight:.2f} bits/weight, rel. error "
        f"{v['rel_error']:.3g}, top-1 {100 * v['top1_agreement']:.1f}% over {v['decisive_positions']} positions, "
        f"KL {v['mean_kl']:.3g}, tokenization {'matches' if v['tokenization_match'] else 'DIFFERS'}"
    )


def gguf_lines(meta: dict[str, Any]) -> list[str]:
    """Each file of a gguf_quantizations materialization (its `files` table)."""
    table = meta.get("files")
    out = []
    for rec in table.records if table is not None else []:
        r = rec.data
        out.append(
            gguf_file_line(
                r["file"],
                r["size_mb"] * 2**20,
                r["bits_per_weight"],
                {
                    "rel_error": r["rel_error"],
                    "top1_agreement": (r["top1_pct"] or 0) / 100,
                    "decisive_positions": r["decisive_positions"],
                    "mean_kl": r["mean_kl"],
                    "tokenization_match": r["tokenization_match"],
                },
            )
        )
    return out
