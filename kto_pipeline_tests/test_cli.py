"""`kto train` and `kto ui` as a person runs them in a terminal: what they read, and what is left running."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests

from kto_pipeline.config import PRESETS
from kto_pipeline_tests.conftest import KTO, Terminal

pytestmark = pytest.mark.slow  # real Dagster runs and a real `dagster dev`

TINY_STEPS = PRESETS["tiny"]["training"]["max_steps"]
LOG_LINE = re.compile(r"Full Dagster log: (\S+)")


def test_kto_train_shows_progress_and_results(project):
    """The live view on an interactive terminal: training steps with loss and ETA, then the results and the next
    commands; Dagster's event lines go to the log file only."""
    term = Terminal([*KTO, "train", "--select", "raw_preferences,kto_dataset,lora_adapter"], term="xterm-256color")
    code, out = term.read_to_end()
    assert code == 0, out[-4000:]
    assert re.search(r"kto_dataset +done {2}\d+ valid rows \(\d+ train, \d+ eval", out), out[-4000:]
    assert "kto_dataset          check label_balance passed" in out
    steps = re.findall(
        rf"lora_adapter +step (\d+)/{TINY_STEPS} {{2}}loss \d\.\d{{4}}.*tok/s {{2}}ETA \d:\d\d:\d\d", out
    )
    assert len(steps) >= 5 and steps[-1] == str(TINY_STEPS), out[-4000:]
    assert re.search(rf"lora_adapter +done {{2}}{TINY_STEPS} steps, loss [\d.]+, eval loss [\d.]+", out)
    assert re.search(r"^Results:$", out, re.M) and re.search(r"^  lora_adapter {9}/\S+  eval_loss=", out, re.M)
    assert re.search(r"^Eval \(lora_adapter\): eval_loss=[\d.]+", out, re.M)
    run_id = re.search(r"kto ui {4}# then open http://127.0.0.1:3000/runs/([0-9a-f-]{36})", out)
    assert run_id, out[-2000:]
    assert "kto train --select merged_model" in out  # not merged in this run: how to get something to chat with
    assert " - dagster - DEBUG - " not in out and "Traceback" not in out
    log = Path(LOG_LINE.search(out).group(1))
    assert log.parent == project.home / "logs"
    text = log.read_text()
    assert f"{run_id.group(1)} - " in text and "RUN_SUCCESS" in text and "step 1: " in text


def _one_class(project) -> Path:
    path = project.root / "one_class.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}", "label": True}) + "\n" for i in range(20))
    )
    return path


def test_kto_train_explains_a_failed_check(project):
    """Every row desirable: the label_balance check's numbers, its gate and what to do; no stack trace."""
    term = Terminal([*KTO, "train", "--local-file", str(_one_class(project))])
    code, out = term.read_to_end()
    assert code == 1, out[-4000:]
    block = out[out.index("FAILED: check label_balance on kto_dataset") :]
    assert "desirable share 1.00 is outside [0.2, 0.8]" in block and "add undesirable (label false) rows" in block
    assert "n_desirable=20, n_undesirable=0" in block and "min_share=0.2" in block
    assert re.search(r"Not run: .*lora_adapter", block)
    assert re.search(r"Run [0-9a-f-]{36} failed: kto ui, then open http://127.0.0.1:3000/runs/", block)
    assert Path(LOG_LINE.search(out).group(1)).is_file()
    for noise in ("Traceback", "Stack Trace", "DagsterAssetCheckFailedError", " - dagster - "):
        assert noise not in out
    assert b"\x1b" not in term.raw  # TERM=dumb: plain lines, no escape codes

    # --verbose: Dagster's log as it is written, its stack traces included, then the same summary.
    code, out = Terminal([*KTO, "train", "--verbose", "--local-file", str(_one_class(project))]).read_to_end()
    assert code == 1 and " - dagster - DEBUG - " in out and "DagsterAssetCheckFailedError" in out
    assert "desirable share 1.00 is outside [0.2, 0.8]" in out[out.index("FAILED: check label_balance") :]


def test_kto_train_explains_a_run_that_never_started(project):
    """A broken dagster.yaml stops Dagster's CLI before any run exists: its error line, not its traceback."""
    (project.home / "dagster.yaml").write_text("storage:\n  bogus: 1\n")
    code, out = Terminal([*KTO, "train", "--select", "raw_preferences"]).read_to_end()
    assert code == 1
    block = out[out.index("kto train: Dagster stopped before the run started:") :]
    assert "DagsterInvalidConfigError: Errors whilst loading dagster instance config" in block
    assert 'unexpected config entry "bogus"' in block and "Full log: " in block and "Traceback" not in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kto_ui_stops_its_whole_process_tree_on_sigterm(tmp_path):
    port = _free_port()
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path / "home"), KTO_ARTIFACT_ROOT=str(tmp_path / "artifacts"))
    log = open(tmp_path / "ui.log", "w")  # a file, not a pipe nobody reads while the server runs
    proc = subprocess.Popen(
        [*KTO, "ui", "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    tree: list[psutil.Process] = []
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        tree = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "dagster dev" in names or " dev " in names, names
        assert "dagster_webserver" in names or "dagster-webserver" in names, names
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) != 0
        gone, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, [" ".join(p.cmdline()) for p in alive]
    finally:  # whatever the outcome, leave nothing of it running
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if proc.poll() is None:
            proc.kill()
        log.close()


def test_next_commands_offer_chat_only_for_the_latest_adapters_merge(project):
    """`kto chat <merged>` only when the merged model holds the adapter just trained (its recorded lineage)."""
    import dagster as dg

    from kto_pipeline.cli.report import commands

    def report(asset, **meta):
        with project.instance() as instance:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, metadata=meta))

    report("lora_adapter", path="/a/1", data_version="a1", eval_loss=0.4)
    report("merged_model", path="/m/1", data_version="m1", lora_adapter="a1")
    assert "  kto chat /m/1    # talk to the model" in commands("r1")
    report("lora_adapter", path="/a/2", data_version="a2", eval_loss=0.3)  # retrained, not merged yet
    lines = commands("r2")
    assert not any(line.startswith("  kto chat") for line in lines), lines
    assert any(line.startswith("  kto train --select merged_model") for line in lines)


def test_generated_config_flags_reach_the_training_run(project):
    """`--lora-*`, `--training-*` and `--set` travel kto train -> Dagster run config -> the training process."""
    argv = [*KTO, "train", "--select", "raw_preferences,kto_dataset,lora_adapter", "--training-max-steps", "2"]
    argv += ["--lora-r", "4", "--lora-target-modules", "q_proj,v_proj"]
    argv += ["--set", "training.per_device_train_batch_size=4"]
    code, out = Terminal(argv).read_to_end()
    assert code == 0, out[-4000:]
    adapter = Path(project.latest("lora_adapter")["path"])
    lora = json.loads((adapter / "adapter_config.json").read_text())
    assert lora["r"] == 4 and set(lora["target_modules"]) == {"q_proj", "v_proj"}
    metrics = json.loads((adapter / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["micro_batch"] == 4


def test_kto_train_dry_run_shows_generated_flags_and_refuses_unknown_fields(project):
    argv = [*KTO, "train", "--dry-run", "--training-warmup-ratio", "0.25", "--set", "model.long_rows=drop"]
    code, out = Terminal([*argv, "--no-training-group-by-length"]).read_to_end()
    assert code == 0, out[-4000:]
    resolved = out[out.index("Resolved config:") :]
    assert '"warmup_ratio": 0.25' in resolved and '"long_rows": "drop"' in resolved
    assert '"group_by_length": false' in resolved and f'"max_steps": {TINY_STEPS}' in resolved  # the preset's
    code, out = Terminal([*KTO, "train", "--dry-run", "--set", "training.warmup=0.2"]).read_to_end()
    assert code == 2 and "argument --set: unknown field training.warmup; fields of training: " in out
    assert "warmup_ratio" in out and "Full Dagster log" not in out  # refused before any Dagster run
