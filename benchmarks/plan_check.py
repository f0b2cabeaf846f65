#!/usr/bin/env python
"""The memory planner (`kto plan`) against measured peaks, preset by preset, on one GPU.

For each preset: random weights of the preset's architecture (no hub on the GPU host), loaded by kto_pipeline's
own loader with the preset's config (4-bit, its LoRA rank, its micro-batch and max_seq_length), two optimizer
steps of KTO, each on one micro-batch whose rows are all max_seq_length long (the worst case the planner plans
for; the second step is the steady state: 8-bit AdamW's moments exist only after the first), then torch's peak
allocated / reserved memory next to `memory.estimate` for the same config.

    python benchmarks/plan_check.py --presets 3b,7b,13b,7b:transformers --root /dev/shm/presets --out plan.jsonl
    python benchmarks/plan_check.py --presets "20b@lora.target_modules=q_proj/k_proj/v_proj/o_proj" ...

A spec is PRESET[:BACKEND][@SECTION.FIELD=VALUE+...] (list values separated by "/").

Each preset runs in its own process (Unsloth patches transformers on import; a crash or time-out costs only that
preset) and its weights are deleted afterwards. CPU smoke test of the plumbing: `--presets tiny-smoke`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench as tb  # noqa: E402  (its build, synthetic rows and memory helpers)

STEPS = 2


def parse_spec(spec: str) -> tuple[str, str, dict[str, dict[str, object]]]:
    """'20b:unsloth@lora.r=32+training.per_device_train_batch_size=2' -> ('20b', 'unsloth', overrides)."""
    import ast

    head, _, sets = spec.partition("@")
    preset, _, backend = head.partition(":")
    overrides: dict[str, dict[str, object]] = {}
    for item in filter(None, sets.split("+")):
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        try:
            v: object = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            v = value.split("/") if "/" in value else value
        overrides.setdefault(section, {})[name] = v
    return preset, backend or "unsloth", overrides


def preset_config(preset: str, backend: str, model_dir: Path, overrides: dict):
    """The preset's config pointed at the local random-weight model: STEPS steps of one micro-batch each."""
    from kto_pipeline.config import apply_overrides, get_config

    config = get_config(
        preset,
        {
            "model": {"model_name": str(model_dir), "use_unsloth": "always" if backend == "unsloth" else "never"},
            "training": {
                "gradient_accumulation_steps": 1,
                "max_steps": STEPS,
                "save_steps": 10**9,
                "logging_steps": 1,
                "precompute_ref_log_probs": False,
            },
        },
    )
    return apply_overrides(config, overrides)


def arch_of(spec: str) -> str:
    from kto_pipeline.config import get_config
    from kto_pipeline.training.arch import arch_for

    preset = parse_spec(spec)[0]
    return "smoke" if preset == "tiny-smoke" else arch_for(get_config(preset).model.model_name).name


def one(spec: str, root: Path, out: Path) -> None:
    preset, backend, overrides = parse_spec(spec)
    smoke = preset == "tiny-smoke"
    if backend == "unsloth" and tb.cuda():
        import unsloth  # noqa: F401  (before transformers/trl, so its patches apply)
    from kto_pipeline.training.memory import estimate
    from kto_pipeline.training.model import load_for_training
    from kto_pipeline.training.trainer import build_trainer

    arch = arch_of(spec)
    model_dir = root / arch
    r: dict[str, Any] = {"preset": preset, "backend": backend, "arch": arch, "overrides": overrides}
    t0 = time.perf_counter()
    try:
        if not (model_dir / "config.json").exists():
            tb.build(model_dir, arch)
        r["build_s"] = round(time.perf_counter() - t0, 1)
        config = preset_config("3b" if smoke else preset, backend, model_dir, overrides)
        if smoke:
            from dataclasses import replace

            config = replace(config, model=replace(config.model, max_seq_length=64, load_in_4bit=False))
        b, t = config.training.per_device_train_batch_size, config.model.max_seq_length
        plan = estimate(config)
        r.update(
            batch=b,
            seq=t,
            lora_r=config.lora.r,
            planned_allocated_gib=round(plan.peak_allocated_gib, 2),
            planned_reserved_gib=round(plan.peak_reserved_gib, 2),
        )
        loaded = load_for_training(config, root)
        r["loaded_gib"] = tb.memory().get("allocated_gib")
        print(f"[{spec}] loaded in {time.perf_counter() - t0:.0f}s: {tb.memory()}", flush=True)
        if len(loaded.tokenizer("w1 w2 w3").input_ids) < 3:
            # transformers maps some model types (qwen2) to their own tokenizer class, which cannot read the
            # benchmark's word-level tokenizer.json and returns no ids; real checkpoints ship a matching one
            from transformers import PreTrainedTokenizerFast

            loaded.tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
            r["tokenizer"] = "word-level tokenizer loaded directly"
        rows = tb.synth_rows(model_dir, b * STEPS, t, seed=b * 10000 + t, fixed=(t // 2 - 1, t // 2))
        tb.fresh_memory()
        work = root / f"work-{preset}-{backend}"
        trainer, _ = build_trainer(config, loaded, tb.write_kto_dir(rows, work / "data"), work / "run", [])
        trainer.train()
        tb.sync()
        r.update(tb.memory())
        r["tokens"] = int(float(trainer.state.log_history[-2].get("num_tokens", 0)))  # sanity: b x t x STEPS
        if "peak_allocated_gib" in r:
            r["error_allocated"] = round(r["planned_allocated_gib"] / r["peak_allocated_gib"] - 1, 4)
            r["error_reserved"] = round(r["planned_reserved_gib"] / r["peak_reserved_gib"] - 1, 4)
    except Exception as e:  # keep the record: a preset that cannot load is a finding too
        import traceback

        traceback.print_exc()
        r["error"] = f"{type(e).__name__}: {e}"[:500]
    r["wall_s"] = round(time.perf_counter() - t0, 1)
    with open(out, "a") as f:
        f.write(json.dumps(r) + "\n")
    print(f"RESULT {json.dumps(r)}", flush=True)


def table(path: Path) -> str:
    lines = [
        "| preset | backend | architecture | LoRA r | micro-batch x seq | measured alloc / reserved GiB "
        "| planned alloc / reserved GiB | error alloc / reserved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        name = r["preset"] + "".join(f" {s}.{k}={v}" for s, d in r.get("overrides", {}).items() for k, v in d.items())
        if "peak_allocated_gib" not in r:
            why = r.get("error", "no CUDA, no peak")[:150]
            lines.append(f"| {name} | {r['backend']} | {r['arch']} | | | failed: {why} | | |")
            continue
        lines.append(
            f"| {name} | {r['backend']} | {r['arch']} | {r['lora_r']} | {r['batch']} x {r['seq']} "
            f"| {r['peak_allocated_gib']} / {r['peak_reserved_gib']} "
            f"| {r['planned_allocated_gib']} / {r['planned_reserved_gib']} "
            f"| {r['error_allocated']:+.1%} / {r['error_reserved']:+.1%} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="3b,7b,13b", help="PRESET[:transformers], comma-separated")
    p.add_argument("--root", type=Path, default=Path("/dev/shm/presets"))
    p.add_argument("--out", type=Path, default=Path("plan_check.jsonl"))
    p.add_argument("--timeout", type=int, default=300, help="seconds per preset")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--table", action="store_true", help="only print the table of --out")
    args = p.parse_args()
    if args.table:
        print(table(args.out))
        return 0
    if args.one:
        one(args.one, args.root, args.out)
        return 0
    args.root.mkdir(parents=True, exist_ok=True)
    specs = args.presets.split(",")
    for n, spec in enumerate(specs):
        cmd = [sys.executable, __file__, "--one", spec, "--root", str(args.root), "--out", str(args.out)]
        print("+", " ".join(cmd), flush=True)
        try:
            subprocess.call(cmd, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"[{spec}] timed out after {args.timeout}s", flush=True)
        # free the space for the next preset, keeping a model the next spec uses too
        keep = arch_of(specs[n + 1]) if n + 1 < len(specs) else None
        for d in args.root.iterdir():
            if d.name != keep:
                shutil.rmtree(d, ignore_errors=True)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
