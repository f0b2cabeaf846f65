"""Blocking quality gates: a failed check stops everything downstream of its asset."""


import json
import math

import dagster as dg

from kto_pipeline.data import label_balance as balance_of
from kto_pipeline.defs.lineage import upstream
from kto_pipeline.defs.resources import QualityGates


@dg.asset_check(asset="kto_dataset", blocking=True,
                description="Desirable share inside [min, max]; one-class data always fails.")
def label_balance(context: dg.AssetCheckExecutionContext, quality_gates: QualityGates) -> dg.AssetCheckResult:
    path, _ = upstream(context, "kto_dataset")
    report = json.loads((path / "report.json").read_text())
    n_d, n_u = report["n_desirable"], report["n_undesirable"]
    b = balance_of(n_d, n_u)
    lo, hi = quality_gates.min_desirable_share, quality_gates.max_desirable_share
    passed = n_d > 0 and n_u > 0 and lo <= b["desirable_share"] <= hi
    return dg.AssetCheckResult(
        passed=passed, severity=dg.AssetCheckSeverity.ERROR,
        description=None if passed else (
            f"desirable share {b['desirable_share']:.3f} ({n_d} desirable, {n_u} undesirable) "
            f"is outside [{lo}, {hi}]"),
        metadata={"n_desirable": n_d, "n_undesirable": n_u, **b, "min_share": lo, "max_share": hi})


@dg.asset_check(asset="lora_adapter", blocking=True,
                description="Eval KTO loss is finite and at most quality_gates.max_eval_loss.")
def eval_loss(context: dg.AssetCheckExecutionContext, quality_gates: QualityGates) -> dg.AssetCheckResult:
    path, _ = upstream(context, "lora_adapter")
    metrics = json.loads((path / "metrics.json").read_text())
    loss = metrics.get("eval_loss")
    limit = quality_gates.max_eval_loss
    if loss is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   description="no eval split: enable split_dataset to evaluate the adapter")
    passed = math.isfinite(loss) and loss <= limit
    return dg.AssetCheckResult(
        passed=passed, severity=dg.AssetCheckSeverity.ERROR,
        description=None if passed else f"eval loss {loss} is not finite or above {limit}",
        metadata={"eval_loss": float(loss), "max_eval_loss": limit})
