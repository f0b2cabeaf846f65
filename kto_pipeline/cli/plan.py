"""`kto plan`: peak GPU memory of a training run, from the model's config alone (nothing is downloaded).

    kto plan --model-size 7b                          # the preset, against the seed's 24 GB card
    kto plan --model-size 13b --batch-size 4 --max-seq-length 4096
    kto plan --model-name ./my-model/config.json --budget-gib 16
    kto plan --model-size 7b --packing                # packed micro-batches: how many real tokens fit
    kto plan --model-size 7b --packing --fuse-reference

Exit status 0 when the run fits the budget, 1 when it does not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys

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
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-size", default="7b", choices=sorted(PRESETS), help="preset (default: 7b)")
    p.add_argument(
        "--model-name", default=None, help="Hub id of a known architecture, a local model folder, or a config.json path"
    )
    p.add_argument("--batch-size", type=int, default=None, help="micro-batch size")
    p.add_argument("--gradient-accumulation", type=int, default=None, help="micro-batches per optimizer step")
    p.add_argument("--max-seq-length", type=int, default=None, help="longest prompt+completion in tokens")
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank")
    p.add_argument(
        "--lora-target-modules",
        nargs="+",
        default=None,
        metavar="NAME",
        help="modules that get adapters (default: the preset's; e.g. q_proj k_proj v_proj o_proj)",
    )
    p.add_argument("--no-4bit", action="store_true", help="plan 16-bit weights instead of 4-bit NF4")
    p.add_argument(
        "--backend",
        choices=sorted(PER_TOKEN),
        default=None,
        help="unsloth (default where installed) or transformers (plain PEFT + bitsandbytes)",
    )
    p.add_argument(
        "--packing",
        action="store_true",
        help="plan packed (padding-free) micro-batches (training.packing): prints the tokens one may hold",
    )
    p.add_argument(
        "--fuse-reference",
        action="store_true",
        help="with --packing: plan the fused reference forward (training.fuse_reference), the peak then",
    )
    p.add_argument(
        "--budget-gib",
        type=float,
        default=DEFAULT_BUDGET_GIB,
        help=f"GPU memory to fit in (default {DEFAULT_BUDGET_GIB:g}: an RTX 3090)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        config = get_config(
            args.model_size,
            {
                "model": {
                    "model_name": args.model_name,
                    "max_seq_length": args.max_seq_length,
                    "load_in_4bit": False if args.no_4bit else None,
                    "use_unsloth": "never" if args.backend == "transformers" else None,
                },
                "lora": {"r": args.lora_r, "target_modules": args.lora_target_modules},
                "training": {
                    "per_device_train_batch_size": args.batch_size,
                    "gradient_accumulation_steps": args.gradient_accumulation,
                    "packing": True if args.packing else None,
                    "fuse_reference": True if args.fuse_reference else None,
                },
            },
        )
        print(plan_report(config, args.budget_gib, args.backend))
        arch = arch_for(config.model.model_name)
    except ValueError as e:
        print(f"kto plan: {e}", file=sys.stderr)
        return 2
    seq = config.model.max_seq_length
    print(f"\n  micro-batch x {seq} tokens -> planned peak on the card (GiB)")
    for b in (2, 4, 8, 16, 32):
        e = estimate(config, arch, args.backend, micro_batch=b)
        print(f"  {b:>5}  {e.on_card_gib:6.2f}  {'fits' if e.fits(args.budget_gib) else 'too big'}")
    fits = estimate(config, arch, args.backend).fits(args.budget_gib)
    print("\n" + verdict(args, config, arch, fits))
    return 0 if fits else 1


def verdict(args, config, arch, fits: bool) -> str:
    """The answer in plain words, last, where a person looks: does it fit, and the `kto train` command to run."""
    t = config.training
    e = estimate(config, arch, args.backend)
    flags = [f"--model-size {args.model_size}"] + [
        f"--{flag} {value}"
        for flag, value in (("model-name", args.model_name), ("max-seq-length", args.max_seq_length))
        if value is not None
    ]
    if fits:
        return (
            f"Fits {args.budget_gib:g} GiB: ~{e.on_card_gib:.2f} GiB on the card at micro-batch {e.micro_batch}.\n"
            f"Train: kto train {' '.join(flags)} --batch-size {t.per_device_train_batch_size} "
            f"--gradient-accumulation {t.gradient_accumulation_steps}"
        )
    micro, accum = pick_micro_batch(config, args.budget_gib, arch)
    if micro != t.per_device_train_batch_size:
        return (
            f"Does NOT fit {args.budget_gib:g} GiB: ~{e.on_card_gib:.2f} GiB on the card at micro-batch "
            f"{e.micro_batch}.\nWhat fits at the same effective batch: kto train {' '.join(flags)} "
            f"--batch-size {micro} --gradient-accumulation {accum}  (or --memory-budget-gib {args.budget_gib:g})"
        )
    return (
        f"Does NOT fit {args.budget_gib:g} GiB: ~{e.on_card_gib:.2f} GiB on the card, and no micro-batch of at "
        f"least 2 does. Lower --max-seq-length (now {config.model.max_seq_length}), take a smaller preset, or "
        "plan for a larger card (--budget-gib)."
    )
