"""Blocking quality gates: a failed check stops everything downstream of its asset."""

import math
from pathlib import Path

import dagster as dg

from kto_pipeline.data import label_balance as balance_of
from kto_pipeline.defs.lineage import upstream
from kto_pipeline.defs.resources import QualityGates
from kto_pipeline.reports import DatasetReport, LongRowsReport, SplitLengths, TrainingMetrics


@dg.asset_check(
    asset="kto_dataset",
    blocking=True,
    description="Desirable share inside [min, max]; one-class (or empty) data always fails. Reports the "
    "desirable/undesirable weights training will use (KTO paper: w_d*n_d/(w_u*n_u) in [1, 4/3]).",
)
def label_balance(context: dg.AssetCheckExecutionContext, quality_gates: QualityGates) -> dg.AssetCheckResult:
    report = upstream(context, "kto_dataset", DatasetReport).report
    n_d, n_u = report.n_desirable, report.n_undesirable
    b = balance_of(n_d, n_u)
    # The weights are computed on the train rows, as training does (trainer.kto_weights).
    weights = report.recommended_weights or b
    lo, hi = quality_gates.min_desirable_share, quality_gates.max_desirable_share
    passed = n_d > 0 and n_u > 0 and lo <= b["desirable_share"] <= hi
    share = b["desirable_share"]
    # The description is what `kto train` prints on failure: the numbers, the gate, and what to do about it.
    if n_d + n_u == 0:
        problem = (
            f"no valid rows ({report.quarantined} quarantined): nothing to train on. Fix the rows "
            "the quarantine lists (kto_dataset's quarantine_sample) or add feedback files."
        )
    elif n_d == 0 or n_u == 0:
        missing = "undesirable (label false)" if n_u == 0 else "desirable (label true)"
        problem = (
            f"one-class data: {n_d} desirable, {n_u} undesirable rows; desirable share {share:.2f} is "
            f"outside [{lo}, {hi}]. KTO learns from both labels: add {missing} rows."
        )
    elif share > hi:
        problem = (
            f"desirable share {share:.2f} ({n_d} desirable, {n_u} undesirable) is above "
            f"quality_gates.max_desirable_share={hi}: add undesirable rows, or raise "
            "quality_gates.max_desirable_share (training reweights the labels either way)."
        )
    else:
        problem = (
            f"desirable share {share:.2f} ({n_d} desirable, {n_u} undesirable) is below "
            f"quality_gates.min_desirable_share={lo}: add desirable rows, or lower "
            "quality_gates.min_desirable_share (training reweights the labels either way)."
        )
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if passed else problem,
        metadata={
            "n_desirable": n_d,
            "n_undesirable": n_u,
            "desirable_share": b["desirable_share"],
            "desirable_weight": weights["desirable_weight"],
            "undesirable_weight": weights["undesirable_weight"],
            "min_share": lo,
            "max_share": hi,
        },
    )


@dg.asset_check(
    asset="lora_adapter",
    blocking=True,
    description="Eval KTO loss is finite, at most quality_gates.max_eval_loss, and not worse (by more "
    "than max_regression) than the released adapter's on the same eval rows.",
)
def eval_loss(context: dg.AssetCheckExecutionContext, quality_gates: QualityGates) -> dg.AssetCheckResult:
    metrics = upstream(context, "lora_adapter", TrainingMetrics).report
    loss = metrics.eval_loss
    limit = quality_gates.max_eval_loss
    if loss is None:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description="no eval split to measure the adapter on: train with an eval "
            "split (kto train --split-dataset, the default)",
        )
    meta = {"eval_loss": float(loss), "max_eval_loss": limit}
    problems = (
        []
        if math.isfinite(loss) and loss <= limit
        else [
            f"eval loss {loss:.4f} is not finite or above quality_gates.max_eval_loss={limit}: train longer "
            "(--max-steps, --num-epochs), lower --learning-rate if the loss diverged, or raise the gate for this model"
        ]
    )
    champion = metrics.champion
    if champion is not None and champion.eval_loss is not None:
        bar = champion.eval_loss + quality_gates.max_regression
        meta.update(released_eval_loss=float(champion.eval_loss), released_adapter=Path(champion.adapter).name)
        if not loss <= bar:
            problems.append(
                f"eval loss {loss:.4f} is worse than the released adapter's {champion.eval_loss:.4f} "
                f"on the same eval rows (allowed: +{quality_gates.max_regression}); the released "
                "adapter stays the release: add feedback or change the training settings"
            )
    elif champion is not None and champion.skipped:
        meta["released_adapter"] = f"not compared: {champion.skipped}"
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or None,
        metadata=meta,
    )


@dg.asset_check(
    asset="gguf_quantizations",
    blocking=True,
    description="The GGUF files the last materialization recorded are on disk, unchanged (sha256) "
    "and verified; a file that failed verification already failed the asset.",
)
def gguf_files_intact(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    from kto_pipeline.export.gguf import recheck_files

    gguf = upstream(context, "gguf_quantizations")
    folder, table = gguf.path, gguf.metadata["files"]
    expected = {rec.data["file"]: rec.data["sha256"] for rec in table.records}
    problems = recheck_files(folder, expected)
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description=("; ".join(problems) + ". Build them again: kto train --select gguf_quantizations")
        if problems
        else None,
        metadata={"files": len(expected), "path": str(folder)},
    )


def _long_row_share(s: SplitLengths) -> float:
    return (s.dropped + s.prompt_cut) / s.rows if s.rows else 0.0


def suggested_max_seq_length(report: LongRowsReport, limit: float) -> tuple[int, float]:
    """The max_seq_length that keeps at least 1 - limit of every split's rows whole (the smallest recorded quantile
    that is enough), rounded up to a multiple of 64; and that quantile."""
    quantiles = sorted(float(q) for q in next(iter(report.splits.values())).tokens_needed)
    q = next((q for q in quantiles if q >= 1 - limit), 1.0)
    need = max(s.tokens_needed[str(q)] for s in report.splits.values())
    return -(-need // 64) * 64, q


@dg.asset_check(
    asset="lora_adapter",
    blocking=True,
    description="Rows longer than model.max_seq_length (counted with the model's tokenizer and chat "
    "template before training): at most quality_gates.max_long_row_share of each split may "
    "be dropped or have their prompt cut.",
)
def long_rows(context: dg.AssetCheckExecutionContext, quality_gates: QualityGates) -> dg.AssetCheckResult:
    report = upstream(context, "lora_adapter", TrainingMetrics).report.long_rows
    limit = quality_gates.max_long_row_share
    meta = {"max_long_row_share": limit, "max_seq_length": report.max_seq_length, "long_rows": report.policy}
    problems = []
    for split, s in report.splits.items():
        share = _long_row_share(s)
        meta.update(
            {
                f"{split}_long_row_share": share,
                f"{split}_rows_dropped": s.dropped,
                f"{split}_rows_prompt_cut": s.prompt_cut,
            }
        )
        if share > limit:
            problems.append(
                f"{split}: {s.dropped} of {s.rows} rows dropped and {s.prompt_cut} with their prompt cut ({share:.1%})"
            )
    description = None
    if problems:
        length, q = suggested_max_seq_length(report, limit)
        description = (
            f"{'; '.join(problems)}: more than quality_gates.max_long_row_share={limit:.1%} of the rows "
            f"are longer than max_seq_length={report.max_seq_length} tokens. Raise model.max_seq_length "
            f"(--max-seq-length {length} keeps {q:.0%} of the rows whole; `kto plan` shows whether it "
            f"fits in memory) or shorten the rows."
        )
        if report.dropped_rows_file:
            description += f" Dropped rows: {report.dropped_rows_file}"
    return dg.AssetCheckResult(
        passed=not problems, severity=dg.AssetCheckSeverity.ERROR, description=description, metadata=meta
    )


# KTO's KL estimate is the mean over one micro-batch (gathered over the data-parallel processes) of mismatched
# pairs; with fewer pairs than this it is noisy, and a negative mean is clamped to 0.
MIN_KL_PAIRS = 8
# Above this share of KL pairs whose "mismatched" completion is the row's own, the data is too uniform to tell.
MAX_SAME_COMPLETION = 0.25


def kl_advice(metrics: TrainingMetrics) -> str:
    """What to change, for the causes the run's own numbers point to."""
    pairs = metrics.micro_batch * metrics.processes
    same = metrics.kl_pairs_same_completion
    advice = []
    if pairs < MIN_KL_PAIRS:
        advice.append(
            f"per-device batch too small: each KL estimate averages only {pairs} mismatched pairs (micro-"
            f"batch {metrics.micro_batch} x {metrics.processes} process(es)) and a negative "
            f"mean is clamped to 0; raise training.per_device_train_batch_size (--batch-size) to at least "
            f"{MIN_KL_PAIRS} and lower --gradient-accumulation to keep the effective batch (`kto plan` "
            "shows what fits)"
        )
    if same > MAX_SAME_COMPLETION:
        advice.append(
            f"data too uniform: {same:.0%} of the KL pairs give a prompt its own completion again "
            "(identical completions next to each other), so the mismatched pairs are not mismatched; "
            "add varied completions or remove the repeated ones"
        )
    if not advice:
        advice.append(
            "the policy barely moves away from the reference on mismatched pairs: train longer or with "
            "a higher learning rate"
        )
    return "; ".join(advice)


@dg.asset_check(
    asset="lora_adapter",
    blocking=True,
    description="Share of logged training steps (after step 1) whose KL estimate was 0 is at most "
    "quality_gates.max_kl_zero_share; severity quality_gates.kl_health_severity (WARN).",
)
def kl_health(context: dg.AssetCheckExecutionContext, quality_gates: QualityGates) -> dg.AssetCheckResult:
    metrics = upstream(context, "lora_adapter", TrainingMetrics).report
    share, limit = metrics.kl_zero_share, quality_gates.max_kl_zero_share
    severity = dg.AssetCheckSeverity(quality_gates.kl_health_severity)
    meta = {
        "max_kl_zero_share": limit,
        "kl_logged_steps": metrics.kl_logged_steps,
        "micro_batch": metrics.micro_batch,
        "processes": metrics.processes,
        "kl_pairs_same_completion": metrics.kl_pairs_same_completion,
    }
    if share is None:
        return dg.AssetCheckResult(
            passed=True,
            severity=severity,
            metadata=meta,
            description="no KL estimate was logged after step 1: nothing to judge",
        )
    meta["kl_zero_share"] = share
    passed = share <= limit
    description = (
        None
        if passed
        else (
            f"the KL estimate was 0 on {metrics.kl_zero_steps} of {metrics.kl_logged_steps} logged steps "
            f"({share:.0%} > {limit:.0%}), so KTO's reference point was 0 rather than an estimate. Likely cause: "
            f"{kl_advice(metrics)}."
        )
    )
    return dg.AssetCheckResult(passed=passed, severity=severity, description=description, metadata=meta)
