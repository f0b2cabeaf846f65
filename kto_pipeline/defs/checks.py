"""Blocking quality gates: a failed check stops everything downstream of its asset."""


import json
import math
from pathlib import Path

import dagster as dg

from kto_pipeline.data import label_balance as balance_of
from kto_pipeline.defs.lineage import upstream
from kto_pipeline.defs.resources import QualityGates


@dg.asset_check(asset="kto_dataset", blocking=True,
                description="Desirable share inside [min, max]; one-class (or empty) data always fails. Reports the "
                            "desirable/undesirable weights training will use (KTO paper: w_d*n_d/(w_u*n_u) in [1, 4/3]).")
def label_balance(context: dg.AssetCheckExecutionContext, quality_gates: QualityGates) -> dg.AssetCheckResult:
    path, _ = upstream(context, "kto_dataset")
    report = json.loads((path / "report.json").read_text())
    n_d, n_u = report["n_desirable"], report["n_undesirable"]
    b = balance_of(n_d, n_u)
    # The weights are computed on the train rows, as training does (trainer.kto_weights).
    weights = report.get("recommended_weights") or b
    lo, hi = quality_gates.min_desirable_share, quality_gates.max_desirable_share
    passed = n_d > 0 and n_u > 0 and lo <= b["desirable_share"] <= hi
    if n_d + n_u == 0:
        problem = f"no valid rows ({report.get('quarantined', 0)} quarantined): nothing to train on"
    elif n_d == 0 or n_u == 0:
        problem = (f"one-class data: {n_d} desirable, {n_u} undesirable; KTO needs both labels "
                   f"(desirable share {b['desirable_share']:.3f} is outside [{lo}, {hi}])")
    else:
        problem = (f"desirable share {b['desirable_share']:.3f} ({n_d} desirable, {n_u} undesirable) "
                   f"is outside [{lo}, {hi}]")
    return dg.AssetCheckResult(
        passed=passed, severity=dg.AssetCheckSeverity.ERROR,
        description=None if passed else problem,
        metadata={"n_desirable": n_d, "n_undesirable": n_u, "desirable_share": b["desirable_share"],
                  "desirable_weight": weights["desirable_weight"], "undesirable_weight": weights["undesirable_weight"],
                  "min_share": lo, "max_share": hi})


@dg.asset_check(asset="lora_adapter", blocking=True,
                description="Eval KTO loss is finite, at most quality_gates.max_eval_loss, and not worse (by more "
                            "than max_regression) than the released adapter's on the same eval rows.")
def eval_loss(context: dg.AssetCheckExecutionContext, quality_gates: QualityGates) -> dg.AssetCheckResult:
    path, _ = upstream(context, "lora_adapter")
    metrics = json.loads((path / "metrics.json").read_text())
    loss = metrics.get("eval_loss")
    limit = quality_gates.max_eval_loss
    if loss is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   description="no eval split: enable split_dataset to evaluate the adapter")
    meta = {"eval_loss": float(loss), "max_eval_loss": limit}
    problems = [] if math.isfinite(loss) and loss <= limit else [f"eval loss {loss} is not finite or above {limit}"]
    champion = metrics.get("champion") or {}
    if "eval_loss" in champion:
        bar = champion["eval_loss"] + quality_gates.max_regression
        meta.update(released_eval_loss=float(champion["eval_loss"]), released_adapter=Path(champion["adapter"]).name)
        if not loss <= bar:
            problems.append(f"eval loss {loss:.4f} is worse than the released adapter's {champion['eval_loss']:.4f} "
                            f"on the same eval rows (allowed: +{quality_gates.max_regression})")
    elif champion.get("skipped"):
        meta["released_adapter"] = f"not compared: {champion['skipped']}"
    return dg.AssetCheckResult(passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
                               description="; ".join(problems) or None, metadata=meta)


@dg.asset_check(asset="gguf_quantizations", blocking=True,
                description="The GGUF files the last materialization recorded are on disk, unchanged (sha256) "
                            "and verified; a file that failed verification already failed the asset.")
def gguf_files_intact(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    from kto_pipeline.export.gguf import recheck_files

    folder, _ = upstream(context, "gguf_quantizations")
    event = context.instance.get_latest_materialization_event(dg.AssetKey("gguf_quantizations"))
    table = event.asset_materialization.metadata["files"].value
    expected = {rec.data["file"]: rec.data["sha256"] for rec in table.records}
    problems = recheck_files(folder, expected)
    return dg.AssetCheckResult(
        passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or None,
        metadata={"files": len(expected), "path": str(folder)})
