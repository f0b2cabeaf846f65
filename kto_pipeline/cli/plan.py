"""`kto plan`: peak GPU memory of a training run, from the model's config alone (nothing is downloaded).

    kto plan --model-size 7b                          # the preset, against the seed's 24 GB card
    kto plan --model-size 13b --batch-size 4 --max-seq-length 4096
    kto plan --model-name ./my-model/config.json --budget-gib 16
    kto plan --model-size 7b --packing                # packed micro-batches: how many real tokens fit
    kto plan --model-size 7b --packing --fuse-reference
    kto plan --model-size 20b --lora-target-modules q_proj,v_proj --set lora.r=64   # any kto train config flag

Exit status 0 when the run fits the budget, 1 when it does not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys

from kto_pipeline.cli.flags import add_config_flags, command_flags, overrides
from kto_pipeline.config import PRESETS, get_config
from kto_pipeline.training.memory import (
    DEFAULT_BUDGET_GIB,
    PER_TOKEN,
    arch_for,
    estimate,
    pick_micro_batch,
    plan_report,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="estimate peak VRAM for a preset, batch and sequence length (no download)",
        usage="%(prog)s [--model-size PRESET] [--budget-gib GIB] [--backend NAME] [config flags of kto train]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-size", default="7b", choices=sorted(PRESETS), help="preset (default: 7b)")
    p.add_argument(
        "--budget-gib",
        type=float,
        default=None,
        metavar="GIB",
        help=f"GPU memory to fit in (default: --memory-budget-gib where given, else {DEFAULT_BUDGET_GIB:g}: an "
        "RTX 3090)",
    )
    p.add_argument(
        "--backend",
        choices=sorted(PER_TOKEN),
        default=None,
        help="unsloth (default where installed) or transformers (plain PEFT + bitsandbytes)",
    )
    add_config_flags(p)  # kto train's: --model-name, --batch-size, --lora-target-modules, --packing, ...
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        given = overrides(args)
        if args.backend == "transformers":
            given.setdefault("model", {}).setdefault("use_unsloth", "never")
        config = get_config(args.model_size, given)
        budgets = (args.budget_gib, config.training.memory_budget_gib, DEFAULT_BUDGET_GIB)
        budget = next(b for b in budgets if b is not None)
        print(plan_report(config, budget, args.backend))
        arch = arch_for(config.model.model_name)
    except ValueError as e:
        print(f"kto plan: {e}", file=sys.stderr)
        return 2
    seq = config.model.max_seq_length
    print(f"\n  micro-batch x {seq} tokens -> planned peak on the card (GiB)")
    for b in (2, 4, 8, 16, 32):
        e = estimate(config, arch, args.backend, micro_batch=b)
        print(f"  {b:>5}  {e.on_card_gib:6.2f}  {'fits' if e.fits(budget) else 'too big'}")
    fits = estimate(config, arch, args.backend).fits(budget)
    print("\n" + verdict(args, given, config, arch, budget, fits))
    return 0 if fits else 1


def verdict(args, given: dict, config, arch, budget: float, fits: bool) -> str:
    """The answer in plain words, last, where a person looks: does it fit, and the `kto train` command to run (the
    planned flags, the micro-batch and accumulation last)."""
    t = config.training
    e = estimate(config, arch, args.backend)
    batch = {"per_device_train_batch_size", "gradient_accumulation_steps"}
    kept = {s: {k: v for k, v in fields.items() if k not in batch} for s, fields in given.items()}
    flags = " ".join([f"--model-size {args.model_size}", *command_flags(kept)])
    if fits:
        return (
            f"Fits {budget:g} GiB: ~{e.on_card_gib:.2f} GiB on the card at micro-batch {e.micro_batch}.\n"
            f"Train: kto train {flags} --batch-size {t.per_device_train_batch_size} "
            f"--gradient-accumulation {t.gradient_accumulation_steps}"
        )
    micro, accum = pick_micro_batch(config, budget, arch)
    if micro != t.per_device_train_batch_size:
        return (
            f"Does NOT fit {budget:g} GiB: ~{e.on_card_gib:.2f} GiB on the card at micro-batch "
            f"{e.micro_batch}.\nWhat fits at the same effective batch: kto train {flags} "
            f"--batch-size {micro} --gradient-accumulation {accum}  (or --memory-budget-gib {budget:g})"
        )
    return (
        f"Does NOT fit {budget:g} GiB: ~{e.on_card_gib:.2f} GiB on the card, and no micro-batch of at "
        f"least 2 does. Lower --max-seq-length (now {config.model.max_seq_length}), take a smaller preset, or "
        "plan for a larger card (--budget-gib)."
    )
