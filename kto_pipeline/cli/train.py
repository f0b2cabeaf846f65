"""`kto train`: the seed's train_kto.py flags, executed as `dagster asset materialize` on this project.

kto train                              # the whole graph on the tiny preset and data/raw
kto train --model-size 7b --local-file my_data.jsonl --wandb
kto train --select kto_dataset         # just validate the data
kto train --training-warmup-ratio 0.2 --set lora.dropout=0.05   # any config field: kto train --help
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from kto_pipeline.cli.flags import add_config_flags, overrides
from kto_pipeline.cli.home import DAGSTER, child_env, dagster_home
from kto_pipeline.cli.materialize import log_path, materialize
from kto_pipeline.cli.report import failure_text, success_text
from kto_pipeline.cli.view import RunView
from kto_pipeline.config import PRESETS, get_config

MODULE = "kto_pipeline.definitions"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="materialize the pipeline (validate data, train, merge, export)",
        usage="%(prog)s [--model-size PRESET] [data, run and merge options] [config flags] [--set SECTION.FIELD=VALUE]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-size", default="tiny", choices=sorted(PRESETS), help="preset (default: tiny)")
    data = p.add_argument_group("data")
    data.add_argument("--raw-dir", default=None, help="folder of raw feedback files (default: data/raw)")
    data.add_argument(
        "--local-file",
        default=None,
        help="train on this one file (.jsonl, .json, .csv, .tsv, .parquet; .gz/.bz2/.zst for text)",
    )
    data.add_argument(
        "--dataset-name",
        default=None,
        help="Hugging Face dataset: a Hub id (from the cache when HF_HUB_OFFLINE=1) or a local dataset folder",
    )
    data.add_argument("--dataset-file", default=None, help="one data file inside --dataset-name")
    data.add_argument(
        "--split-dataset",
        action="store_true",
        default=None,
        help="hold out an eval split (on by default; needed by the eval_loss check)",
    )
    data.add_argument(
        "--no-split-dataset",
        dest="split_dataset",
        action="store_false",
        help="train on every row, no eval split (the eval_loss check then fails)",
    )
    launch = p.add_argument_group("run")
    launch.add_argument("--output-dir", default=None, help="artifact root (default: $KTO_ARTIFACT_ROOT or ./artifacts)")
    launch.add_argument(
        "--hf-token",
        default=None,
        help="Hugging Face token (prefer the HF_TOKEN environment variable: flags end up in shell history)",
    )
    launch.add_argument("--select", default="*", help="Dagster asset selection (default: the whole graph)")
    launch.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="print Dagster's full log as it is written (stack traces included), as `dagster asset "
        "materialize` does; by default it goes to a file under DAGSTER_HOME/logs",
    )
    launch.add_argument(
        "--dry-run",
        action="store_true",
        help="set up without training: validate the data and print the config and memory plan",
    )
    merge = p.add_argument_group("merge (merged_model)")
    merge.add_argument(
        "--quantized-base",
        choices=["original", "dequantize"],
        default=None,
        help="merged_model, when the base is a pre-quantized 4-bit checkpoint: merge into its 16-bit "
        "original (default) or into the dequantized 4-bit weights (offline)",
    )
    merge.add_argument(
        "--base-16bit",
        default=None,
        metavar="MODEL",
        help="that 16-bit original (Hub id or folder), where the checkpoint's name does not tell",
    )
    add_config_flags(p)
    p.set_defaults(func=run)


def selected_assets(select: str) -> set[str]:
    import dagster as dg

    from kto_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    keys: set[str] = set()
    with warnings.catch_warnings():  # Dagster's BetaWarning about its own selection parser is not the user's concern
        warnings.simplefilter("ignore")
        for part in select.split(","):
            keys |= {k.to_user_string() for k in dg.AssetSelection.from_string(part.strip()).resolve(graph)}
    return keys


def run_config(args) -> dict[str, Any]:
    """Run config for the selected assets only (Dagster rejects config for ops outside the run)."""
    source = {
        k: v
        for k, v in {
            "raw_dir": args.raw_dir,
            "local_file": args.local_file,
            "dataset_name": args.dataset_name,
            "dataset_file": args.dataset_file,
        }.items()
        if v is not None
    }
    split = {} if args.split_dataset is None else {"split_dataset": args.split_dataset}
    ops = {
        "raw_preferences": source,
        "kto_dataset": split,
        "lora_adapter": {"preset": args.model_size, **overrides(args)},
        "merged_model": {
            k: v
            for k, v in {"quantized_base": args.quantized_base, "base_16bit": args.base_16bit}.items()
            if v is not None
        },
    }
    chosen = selected_assets(args.select)
    return {"ops": {name: {"config": cfg} for name, cfg in ops.items() if name in chosen and cfg}}


def run(args) -> int:
    try:
        config = get_config(args.model_size, overrides(args))  # fails early on a bad preset or value
    except ValueError as e:
        print(f"kto train: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        args.select = "raw_preferences,kto_dataset"
    env = child_env(args.output_dir, args.hf_token or None)
    try:
        ops = run_config(args)
    except Exception as e:  # noqa: BLE001 - a selection Dagster cannot resolve: say so, without our traceback
        print(f"kto train: --select {args.select}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    cmd = [*DAGSTER, "asset", "materialize", "-m", MODULE, "--select", args.select, "--config-json", json.dumps(ops)]
    home = dagster_home()
    log = log_path(home, "train")
    print(f"DAGSTER_HOME={home} KTO_ARTIFACT_ROOT={env['KTO_ARTIFACT_ROOT']}", flush=True)
    print(f"Full Dagster log: {log}" + ("" if args.verbose else "  (--verbose prints it here)"), flush=True)
    with RunView(quiet=args.verbose) as view:
        outcome = materialize(cmd, env, log, args.verbose, view.on_event)
    ok = outcome.code == 0 and not outcome.interrupted
    print(success_text(view, outcome, next_steps=not args.dry_run) if ok else failure_text(view, outcome), flush=True)
    if args.dry_run:
        print(dry_run_text(config, env["KTO_ARTIFACT_ROOT"] if ok else None))
    return outcome.code or (130 if outcome.interrupted else 0)


def dry_run_text(config, artifact_root: str | None = None) -> str:
    lines = ["", "Dry run: data validated, no training. Resolved config:", json.dumps(config.to_dict(), indent=2)]
    if artifact_root:
        lines.append(long_rows_text(config, latest_dataset_dir(), Path(artifact_root) / "cache"))
    try:
        from kto_pipeline.training.memory import dry_run_report
    except ImportError:
        lines.append("(memory planning is not available in this build)")
    else:
        lines.append(dry_run_report(config))
    return "\n".join(lines)


def latest_dataset_dir() -> Path | None:
    import dagster as dg

    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey("kto_dataset"))
    return Path(str(event.asset_materialization.metadata["path"].value)) if event else None


def long_rows_text(config, dataset_dir: Path | None, cache_dir: Path) -> str:
    """How a kto_dataset's rows fit max_seq_length, counted as training counts them: the model's own tokenizer and
    chat template (the tokenizer files only, no weights; the tiny model is built into cache_dir)."""
    if dataset_dir is None:
        return "Long-row accounting unavailable: kto_dataset has not been materialized"
    try:
        from transformers import AutoTokenizer

        from kto_pipeline.training.long_rows import account, report_text
        from kto_pipeline.training.model import resolve_model_path
        from kto_pipeline.training.trainer import load_split

        path = resolve_model_path(config.model.model_name, cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.model.trust_remote_code)
        _, report, dropped = account(
            dataset_dir,
            tokenizer,
            config.model.max_seq_length,
            config.model.long_rows,
            bool(tokenizer.chat_template),
            load_split,
        )
    except Exception as e:  # noqa: BLE001 - the dry run still shows the rest (e.g. offline with an uncached model)
        return f"Long-row accounting unavailable: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    text = report_text(report)
    if dropped:
        ids = ", ".join(f"{d['split']}:{d['row_id']}" for d in dropped[:10])
        text += f"\n  would drop {len(dropped)} rows: {ids}" + (" ..." if len(dropped) > 10 else "")
    return text
