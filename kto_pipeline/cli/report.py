"""What `kto train` prints once the run is over: the results and what to do next, or what failed and why."""

from __future__ import annotations

import re

from kto_pipeline.cli.figures import fmt
from kto_pipeline.cli.materialize import Outcome
from kto_pipeline.cli.view import RunView

RESULT_KEYS = (
    "valid",
    "quarantined",
    "eval_loss",
    "steps",
    "tokens_per_s",
    "peak_vram_gib",
    "train_rows_prompt_cut",
    "train_rows_dropped",
    "kl_zero_share",
    "size_bytes",
)
EVAL_KEYS = ("eval_loss", "train_loss", "final_loss", "rewards_chosen", "rewards_rejected", "rewards_margins", "kl")
UI_URL = "http://127.0.0.1:3000"
# The last line of a Python traceback: "package.module.SomeError: what went wrong".
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failure|Interrupt)\b.*")


def _latest(instance, key) -> dict:
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def summary() -> str:
    """One line per asset: where its latest output is and its headline numbers. CI greps "  <asset> "."""
    import dagster as dg

    from kto_pipeline.definitions import defs

    instance = dg.DagsterInstance.get()
    lines = ["", "Results:"]
    for key in defs.resolve_asset_graph().toposorted_asset_keys:
        meta = _latest(instance, key)
        if not meta:
            continue
        nums = ", ".join(f"{k}={fmt(meta[k])}" for k in RESULT_KEYS if k in meta)
        where = meta.get("path") or meta.get("location", "")  # hub_release: the registry folder or the Hub URL
        lines.append(f"  {key.to_user_string():<20} {where}  {nums}")
    return "\n".join(lines)


def commands(run_id: str | None) -> list[str]:
    """The eval numbers of the latest adapter and the commands to try the model and to see the run."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    adapter = _latest(instance, dg.AssetKey("lora_adapter"))
    merged = _latest(instance, dg.AssetKey("merged_model"))
    lines = []
    if adapter:
        lines += ["", "Eval (lora_adapter): " + ", ".join(f"{k}={fmt(adapter[k])}" for k in EVAL_KEYS if k in adapter)]
    lines += ["", "Next:"]
    # Only a merged model of the latest adapter: one merged from an older adapter is not what was just trained.
    if merged.get("path") and merged.get("lora_adapter") == adapter.get("data_version", "~"):  # the lineage it records
        lines.append(f"  kto chat {merged['path']}    # talk to the model")
    elif adapter:
        lines.append("  kto train --select merged_model    # merge the adapter, then kto chat <its path>")
    lines.append(f"  kto ui    # then open {UI_URL}/runs/{run_id}" if run_id else f"  kto ui    # then open {UI_URL}")
    return lines


def failure_text(view: RunView, outcome: Outcome, command: str = "kto train") -> str:
    lines = [""]
    for failure in view.failures:
        lines += [*failure.lines(), ""]
    if outcome.run_id is None:
        lines += [
            f"{command}: Dagster stopped before the run started:",
            *(f"  {line}" for line in startup_error(outcome.tail)),
            "",
        ]
    elif not view.failures:
        lines += [f"FAILED: {view.run_failure or 'the run did not finish'}", ""]
    if view.not_run():
        lines.append(f"Not run: {', '.join(view.not_run())} (they need what failed)")
    if view.warnings:
        lines += ["Warnings:", *(f"  {w}" for w in view.warnings)]
    if outcome.run_id:
        state = "interrupted" if outcome.interrupted else "failed"
        lines.append(f"Run {outcome.run_id} {state}: kto ui, then open {UI_URL}/runs/{outcome.run_id}")
    lines.append(f"Full log: {outcome.log}  (--verbose shows it as it is written)")
    return "\n".join(lines)


def success_text(view: RunView, outcome: Outcome, next_steps: bool = True) -> str:
    lines = [summary()]
    if next_steps:
        lines += commands(outcome.run_id)
    if view.warnings:
        lines += ["", "Warnings:", *(f"  {w}" for w in view.warnings)]
    lines += ["", f"Full log: {outcome.log}"]
    return "\n".join(lines)


def startup_error(tail: list[str]) -> list[str]:
    """The exception line(s) that ended Dagster's CLI before any run existed, without the traceback."""
    for i in range(len(tail) - 1, -1, -1):
        if EXCEPTION_LINE.match(tail[i]):
            rest = []
            for line in tail[i + 1 :]:
                if line.startswith(("Traceback", "  File ")) or not line.strip():
                    break
                rest.append(line)
            return [tail[i], *rest[:10]]
    return [line for line in tail if line.strip()][-5:] or ["(no output)"]
