#!/usr/bin/env python
"""Fault trials with real processes and a real Dagster instance (results: benchmarks/FAULTS.md).

  kill       per asset: `dagster asset materialize --select <asset>`, SIGKILL its step process and every child of
             it (the training process, llama.cpp's child) at a random moment while the step runs (--trigger step),
             or after the store's scratch folder appeared, i.e. while it builds (build), then re-run.
             Per trial it checks: the killed run recorded no materialization of the asset; every folder under
             artifacts/<asset>/ that holds `.complete` is whole (each json parses, each safetensors / parquet /
             GGUF file reads, GGUF sha256 as recorded); the re-run succeeds and its folder is whole; training
             resumed from the newest complete checkpoint the killed run left (metrics.json `resumed_from`, step
             > 0) whenever there was one; a Hub release is tagged only when the Hub serves exactly its bytes.
  diskfull   per asset: the artifact root is a small tmpfs (mount -t tmpfs; needs root) filled up to leave a
             random 10-90 % of the asset's output size free, then the asset is materialized: it must fail with
             "<path>: disk full (N MB free) while writing <asset>", leave no complete folder and no scratch folder.

    python benchmarks/faults.py kill --assets kto_dataset lora_adapter merged_model gguf_quantizations hub_release \\
        --trials 6
    python benchmarks/faults.py diskfull --trials 3
    python benchmarks/faults.py table benchmarks/results/faults_*.jsonl     # the tables of FAULTS.md

One project (DAGSTER_HOME, artifacts, data/raw) per asset under a temp folder; hub_release goes to the fake Hub
server of kto_pipeline_tests/hub_server.py (a new repo per trial, so every trial uploads).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from kto_pipeline.reports import GGUFFile, TrainingMetrics  # noqa: E402
from kto_pipeline_tests.procs import parents  # noqa: E402

UPSTREAM = {
    "kto_dataset": "raw_preferences",
    "lora_adapter": "raw_preferences,kto_dataset",
    "merged_model": "raw_preferences,kto_dataset,lora_adapter",
    "gguf_quantizations": "raw_preferences,kto_dataset,lora_adapter,merged_model",
    "hub_release": "raw_preferences,kto_dataset,lora_adapter,merged_model,gguf_quantizations",
}
TOKEN = "hf_faults_token_0123456789"


# ------------------------------------------------------------------------------------------- processes
def children() -> dict[int, list[int]]:
    """parent pid -> its children's pids, now."""
    out: dict[int, list[int]] = {}
    for pid, ppid in parents().items():
        out.setdefault(ppid, []).append(pid)
    return out


def descendants(pid: int, tree: dict[int, list[int]]) -> list[int]:
    out, todo = [], list(tree.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def step_process(cli: int) -> int | None:
    """The process running the step: Dagster's multiprocess executor forks it from its forkserver (or spawns it)."""
    tree = children()
    for p in descendants(cli, tree):
        parent = next((q for q, kids in tree.items() if p in kids), None)
        c = cmdline(p)
        if ("forkserver" in c and parent is not None and "forkserver" in cmdline(parent)) or "spawn_main" in c:
            return p
    return None


# ------------------------------------------------------------------------------------------- project
class Project:
    def __init__(self, base: Path, rows: int = 0):
        self.dir = base
        self.home, self.root = base / "home", base / "artifacts"
        self.home.mkdir(parents=True)
        shutil.copyfile(REPO / "kto_pipeline" / "dagster.yaml", self.home / "dagster.yaml")
        shutil.copytree(REPO / "data" / "raw", base / "data" / "raw")
        if rows:  # a longer data build, so a random kill lands inside it
            with open(base / "data" / "raw" / "synthetic.jsonl", "w") as f:
                for i in range(rows):
                    f.write(
                        json.dumps({"prompt": f"question {i}", "completion": f"answer {i} " * 20, "label": i % 3 != 0})
                        + "\n"
                    )
        self.env = dict(
            os.environ,
            DAGSTER_HOME=str(self.home),
            KTO_ARTIFACT_ROOT=str(self.root),
            PYTHONPATH=str(REPO),
            KTO_GPU_LOCK=str(base / "gpu.lock"),
            HF_TOKEN=TOKEN,
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
        )

    def start(self, select: str, config: dict | None = None) -> subprocess.Popen:
        cmd = [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "kto_pipeline.definitions",
            "--select",
            select,
        ]
        if config:
            cmd += ["--config-json", json.dumps(config)]
        return subprocess.Popen(
            cmd,
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def run(self, select: str, config: dict | None = None) -> tuple[int, str]:
        p = self.start(select, config)
        out, _ = p.communicate(timeout=1800)
        return p.returncode, out

    def instance(self):
        import dagster as dg

        os.environ["DAGSTER_HOME"] = str(self.home)
        return dg.DagsterInstance.get()


def run_id_of(output: str) -> str | None:
    m = re.search(r"\b([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b", output)
    return m.group(1) if m else None


def materialized_in(instance, run_id: str, asset: str) -> list[str]:
    """Paths (hub_release: locations) of the materializations of `asset` that run `run_id` recorded."""
    import dagster as dg

    records = instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records
    out = []
    for r in records:
        if r.run_id == run_id:
            meta = r.asset_materialization.metadata
            out.append(str((meta.get("path") or meta.get("location")).value))  # hub_release: its location
    return out


# ------------------------------------------------------------------------------------------- checks
def whole(folder: Path) -> list[str]:
    """What is wrong with a folder that claims to be complete (empty: every file reads)."""
    import pyarrow.parquet as pq
    from safetensors import safe_open

    from kto_pipeline.artifacts import file_sha256

    bad = []
    if not (folder / ".complete").is_file():
        bad.append(f"{folder}: no .complete")
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and ".resume" not in p.parts):
        try:
            if f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".safetensors":
                with safe_open(str(f), "np") as st:
                    for k in st.keys():
                        st.get_tensor(k)
            elif f.suffix == ".parquet":
                pq.read_table(f)
            elif f.suffix == ".gguf" and "checkpoints" not in f.parts:
                side = f.with_name(f.name + ".verified.json")
                if side.is_file() and GGUFFile.read(side).sha256 != file_sha256(f):
                    bad.append(f"{f}: sha256 differs from its verification record")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the finding
            bad.append(f"{f}: {type(exc).__name__}: {str(exc)[:120]}")
    return bad


def complete_folders(root: Path, asset: str) -> list[Path]:
    base = root / asset
    return [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")] if base.is_dir() else []


def checkpoints(root: Path) -> list[int]:
    """Steps of the complete checkpoints in training's scratch folders (what a re-run can resume from)."""
    return sorted(
        int(p.name.split("-")[-1])
        for p in (root / "lora_adapter" / ".resume").glob("*/checkpoints/checkpoint-*")
        if (p / "trainer_state.json").is_file()
    )


# ------------------------------------------------------------------------------------------- kill trials
def hub_config(server, repo: str) -> dict:
    return {
        "resources": {
            "release_target": {
                "config": {"target": "hub", "repo_id": repo, "endpoint": server.endpoint, "backoff_s": 0.05}
            }
        }
    }


def fresh(proj: Project, asset: str) -> None:
    """Remove the asset's finished folders and scratch, so the next run builds it from nothing."""
    for folder in complete_folders(proj.root, asset):
        shutil.rmtree(folder)
    shutil.rmtree(proj.root / asset / ".resume", ignore_errors=True)


def scratch(proj: Project, asset: str) -> list[str]:
    """The store's scratch folders of the asset (`.<version>.tmp-*`, `.resume/<version>`): a build is writing."""
    folder = proj.root / asset
    if not folder.is_dir():
        return []
    return [q.name for q in folder.iterdir() if ".tmp-" in q.name and q.is_dir()] + (
        [f".resume/{q.name}" for q in (folder / ".resume").iterdir()] if (folder / ".resume").is_dir() else []
    )


def wait_for(p: subprocess.Popen, what) -> float:
    while p.poll() is None:
        got = what()
        if got:
            return got
        time.sleep(0.01)
    return 0


def step_seconds(proj: Project, asset: str, config: dict | None) -> tuple[float, float]:
    """How long the asset's step process lives, and how long after its build began, when nothing kills it (the
    windows a random kill lands in)."""
    fresh(proj, asset)
    p = proj.start(asset, config)
    step = wait_for(p, lambda: step_process(p.pid))
    t0 = time.time()
    t_build = wait_for(p, lambda: scratch(proj, asset) and time.time()) if asset != "hub_release" else t0
    while step and Path(f"/proc/{step}").exists() and p.poll() is None:
        time.sleep(0.01)
    end = time.time()
    out, _ = p.communicate(timeout=1800)
    if p.returncode:
        raise SystemExit(f"{asset}: warm-up failed\n{out[-3000:]}")
    return end - t0, (end - t_build) if t_build else 0.0


def kill_trials(
    asset: str, trials: int, proj: Project, rng: random.Random, server=None, trigger: str = "mixed"
) -> list[dict]:
    config = hub_config(server, "faults/warm") if server else None
    step_window, build_window = step_seconds(proj, asset, config)
    print(f"{asset}: the step process lives {step_window:.1f} s, {build_window:.1f} s of it building", flush=True)
    rows = []
    for trial in range(trials):
        fresh(proj, asset)
        repo = f"faults/{asset}-{trial}-{rng.randrange(10**6)}"
        config = hub_config(server, repo) if server else None
        t_start = time.time()
        p = proj.start(asset, config)
        step = wait_for(p, lambda p=p: step_process(p.pid)) or None
        # "step": anywhere in the step process's life; "build": after the store's scratch folder appeared.
        mode = trigger if trigger != "mixed" else ("step", "build")[trial % 2]
        if asset == "hub_release":
            mode = "step"  # its build writes to the Hub, not to a scratch folder
        if mode == "build":
            wait_for(p, lambda: scratch(proj, asset))
        window = build_window if mode == "build" else step_window
        delay = rng.uniform(0, window)
        t_step = time.time()
        while p.poll() is None and time.time() - t_step < delay:
            time.sleep(0.01)
        writing = scratch(proj, asset)
        victims = [step] + descendants(step, children()) if step is not None and Path(f"/proc/{step}").exists() else []
        killed = []
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        ckpt = checkpoints(proj.root) if asset == "lora_adapter" else []
        out, _ = p.communicate(timeout=900)
        killed_rc, killed_run = p.returncode, run_id_of(out)
        reported = materialized_in(proj.instance(), killed_run, asset) if killed_run else []
        problems = [b for f in complete_folders(proj.root, asset) for b in whole(f)]
        if server and repo in server.repos:
            from huggingface_hub import HfApi

            from kto_pipeline.release.hub import verify_remote

            api = HfApi(endpoint=server.endpoint, token=TOKEN)
            for tag in server.repos[repo].tags:  # a tag is a claim that the release is whole
                problems += verify_remote(api, repo, tag)
        t_rerun = time.time()
        rc2, out2 = proj.run(asset, config)
        rerun_run = run_id_of(out2)
        again = materialized_in(proj.instance(), rerun_run, asset) if rerun_run else []
        if asset != "hub_release":
            problems += [b for f in again for b in whole(Path(f))]
        elif server and repo in server.repos:
            from huggingface_hub import HfApi

            from kto_pipeline.release.hub import verify_remote

            api = HfApi(endpoint=server.endpoint, token=TOKEN)
            tags = list(server.repos[repo].tags)
            problems += ["no tag after the re-run"] if not tags else []
            for tag in tags:
                problems += verify_remote(api, repo, tag)
        resumed = None
        if asset == "lora_adapter" and again:
            metrics = TrainingMetrics.read(Path(again[0]))
            resumed = int(metrics.resumed_from.rsplit("-", 1)[1]) if metrics.resumed_from else 0
        row = {
            "asset": asset,
            "trial": trial + 1,
            "trigger": mode,
            "window_s": round(window, 1),
            "delay_s": round(delay, 2),
            "killed": bool(killed),
            "processes_killed": len(killed),
            "scratch_at_kill": writing,
            "killed_run_rc": killed_rc,
            "reported_by_killed_run": len(reported),
            "problems": problems[:3],
            "n_problems": len(problems),
            "rerun_rc": rc2,
            "rerun_materialized": len(again),
            "rerun_s": round(time.time() - t_rerun, 1),
            "trial_s": round(time.time() - t_start, 1),
        }
        if asset == "lora_adapter":
            row.update(
                checkpoints_at_kill=ckpt,
                resumed_from_step=resumed,
                resume_ok=(resumed == max(ckpt)) if ckpt else (resumed == 0),
            )
        if rc2:
            row["rerun_error"] = out2[-1500:]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ------------------------------------------------------------------------------------------- disk full
def diskfull_trials(assets: list[str], trials: int, base: Path, rng: random.Random) -> list[dict]:
    """One project whose artifact root is a 64 MB tmpfs: the graph is built once, then per asset and trial the
    asset's folder is removed, the disk filled to leave a random 10-90 % of what the asset writes, and the asset
    materialized again."""
    proj = Project(base / "diskfull")
    proj.root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(proj.root)], check=True)
    rows = []
    try:
        rc, out = proj.run("raw_preferences,kto_dataset,lora_adapter,merged_model,gguf_quantizations")
        if rc:
            raise SystemExit(f"building the graph failed\n{out[-3000:]}")
        filler = proj.root / "filler.bin"
        for asset in assets:
            built = complete_folders(proj.root, asset)
            size = sum(f.stat().st_size for f in built[0].rglob("*") if f.is_file())
            for trial in range(trials):
                fresh(proj, asset)
                free_kb = max(8, int(size * rng.uniform(0.1, 0.9) / 1024))  # runs out part-way through its files
                with open(filler, "wb") as f:  # leave free_kb free
                    f.write(b"\0" * max(0, shutil.disk_usage(proj.root).free - free_kb * 1024))
                rc, out = proj.run(asset)
                m = re.search(r"(/\S+): disk full \((\d+(?:\.\d+)?) MB free\) while writing (\w+)", out)
                folder = proj.root / asset
                scratch = [q.name for q in folder.iterdir() if ".tmp-" in q.name] if folder.is_dir() else []
                resume = [q.name for q in (folder / ".resume").iterdir()] if (folder / ".resume").is_dir() else []
                row = {
                    "asset": asset,
                    "trial": trial + 1,
                    "free_kb": free_kb,
                    "rc": rc,
                    "message": m.group(0) if m else None,
                    "complete_folders": len(complete_folders(proj.root, asset)),
                    "scratch_left": scratch,
                    "resume_kept": resume,
                }
                if not m:
                    row["tail"] = out[-2000:]
                rows.append(row)
                print(json.dumps(row), flush=True)
                filler.unlink()
            rc, out = proj.run(asset)  # restored, for the assets downstream of it
            if rc:
                raise SystemExit(f"{asset}: rebuilding it after the trials failed\n{out[-3000:]}")
    finally:
        subprocess.run(["umount", str(proj.root)], check=False)
    return rows


def table(paths: list[str]) -> str:
    """The markdown tables of FAULTS.md from the JSON lines the trials wrote."""
    rows = [json.loads(line) for path in paths for line in Path(path).read_text().splitlines() if line.strip()]
    kill = [r for r in rows if "killed" in r]
    full = [r for r in rows if "free_kb" in r]
    out = []
    if kill:
        out += [
            "| asset | kill at a random moment of | trials | killed while building (scratch folder there) | "
            "killed before the build began | killed after the asset had materialized | step already gone | "
            "partial folder or tag reported complete | re-run succeeded | resumed from the newest checkpoint |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for asset, trigger in dict.fromkeys((r["asset"], r.get("trigger", "step")) for r in kill):
            rs = [r for r in kill if r["asset"] == asset and r.get("trigger", "step") == trigger]
            k = [r for r in rs if r["killed"]]
            after = [r for r in k if r["reported_by_killed_run"] > 0]
            during = [r for r in k if r not in after and r["scratch_at_kill"]]
            before = [r for r in k if r not in after and not r["scratch_at_kill"]]
            where = "the step" if trigger == "step" else "the build"
            resume = (
                (
                    f"{sum(r['resume_ok'] for r in rs)} of {len(rs)} (resumed from step "
                    f"{', '.join(str(r['resumed_from_step']) for r in rs)})"
                )
                if asset == "lora_adapter"
                else "-"
            )
            out.append(
                f"| {asset} | {where} ({rs[0]['window_s']} s) | {len(rs)} | {len(during)} | {len(before)} | "
                f"{len(after)} | {len(rs) - len(k)} | {sum(r['n_problems'] > 0 for r in rs)} | "
                f"{sum(r['rerun_rc'] == 0 and r['rerun_materialized'] == 1 for r in rs)} of {len(rs)} | {resume} |"
            )
    if full:
        out += [
            "",
            '| asset | trials | failed with "<path>: disk full (N MB free) while writing <asset>" | '
            "complete folders left | scratch folders left |",
            "|---|---|---|---|---|",
        ]
        for asset in dict.fromkeys(r["asset"] for r in full):
            rs = [r for r in full if r["asset"] == asset]
            out.append(
                f"| {asset} | {len(rs)} | {sum(r['rc'] != 0 and bool(r['message']) for r in rs)} | "
                f"{sum(r['complete_folders'] for r in rs)} | {sum(len(r['scratch_left']) for r in rs)} |"
            )
    return "\n".join(out)


def main() -> int:
    if sys.argv[1:2] == ["table"]:
        print(table(sys.argv[2:]))
        return 0
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["kill", "diskfull"])
    p.add_argument(
        "--assets",
        nargs="+",
        default=["kto_dataset", "lora_adapter", "merged_model", "gguf_quantizations", "hub_release"],
    )
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--trigger",
        choices=["step", "build", "mixed"],
        default="mixed",
        help="kill: a random moment of the step's life, of its build (after the store's scratch folder "
        "appeared), or alternately",
    )
    p.add_argument("--rows", type=int, default=60000, help="kill kto_dataset: synthetic rows added to the raw data")
    p.add_argument("--out", default=None, help="append the rows as JSON lines here")
    args = p.parse_args()
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix=f"faults_{args.scenario}_"))

    def emit(rows: list[dict]) -> None:
        if args.out:
            with open(args.out, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    if args.scenario == "diskfull":
        emit(diskfull_trials([a for a in args.assets if a != "hub_release"], args.trials, base, rng))
    else:
        model_assets = [a for a in args.assets if a != "kto_dataset"]
        if "kto_dataset" in args.assets:  # its own project: a bigger raw file, so the build takes seconds
            data = Project(base / "data", rows=args.rows)
            rc, out = data.run("raw_preferences")
            if rc:
                raise SystemExit(out[-3000:])
            emit(kill_trials("kto_dataset", args.trials, data, rng, trigger=args.trigger))
        if model_assets:  # one project for the model assets: built once, then each asset rebuilt per trial
            from kto_pipeline_tests.hub_server import FakeHub

            model = Project(base / "model")
            rc, out = model.run("raw_preferences,kto_dataset,lora_adapter,merged_model,gguf_quantizations")
            if rc:
                raise SystemExit(out[-3000:])
            server = FakeHub(token=TOKEN).start() if "hub_release" in model_assets else None
            for asset in model_assets:
                emit(
                    kill_trials(
                        asset, args.trials, model, rng, server if asset == "hub_release" else None, trigger=args.trigger
                    )
                )
            if server:
                server.stop()
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
