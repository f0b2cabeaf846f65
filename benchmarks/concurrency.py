#!/usr/bin/env python
"""Many-trial version of kto_pipeline_tests/test_artifacts.py and test_concurrency.py: N builds of one version at once.

Three scenarios, each against a code tree (--code: this checkout, or an export of the commit before the store):

  store  N processes released together by a barrier build one version of an artifact (5 files, 20 ms apart):
         the old tree through `artifacts.building` behind an `is_complete` check (what every asset did), the new
         one through `Store.get_or_build`.
  cli    a fresh DAGSTER_HOME (shipped dagster.yaml, SQLite), warmed by materializing raw_preferences, then N
         `dagster asset materialize --select kto_dataset` started at once.

Per trial it counts failed builds/runs, builds (runs that did not reuse a finished folder), and corrupt results
(the final folder missing a file or `.complete`). Builds: processes that started building (a failed one too).

  data   the data step (raw_preferences + kto_dataset) of a new version per trial, materialized by N runs at once on
         one instance (--storage sqlite: the shipped dagster.yaml; postgres: dagster_postgres.yaml on a throwaway
         cluster), half `dagster asset materialize` processes and half launched through a running
         dagster-webserver's GraphQL API (--launch cli+graphql; the shipped DefaultRunCoordinator hands them
         straight to the DefaultRunLauncher, which runs each in its own process, no daemon). Each trial adds a raw
         file of --rows rows of its own, so every trial races on new raw_preferences and kto_dataset versions.
         Counted from the instance and the folders: failed runs, builds of the kto_dataset version, corrupt
         outputs (parquet unreadable, row counts off the report, not the trial's sources), mislabelled runs (a
         run's materialization naming another folder or data version), and how many runs reached kto_dataset
         while the build was under way (the overlap that makes it a race).

    git archive <commit-before> kto_pipeline | tar -x -C /tmp/before
    python benchmarks/concurrency.py store --code /tmp/before --trials 20 --runs 10
    python benchmarks/concurrency.py store --trials 20 --runs 10
    python benchmarks/concurrency.py cli --code /tmp/before --trials 3 --runs 6
    python benchmarks/concurrency.py cli --cold --storage sqlite --trials 5 --runs 6   # first runs, new instance
    python benchmarks/concurrency.py data --storage postgres --launch cli+graphql --trials 20 --runs 10
"""

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from kto_pipeline.reports import DatasetReport  # noqa: E402
from kto_pipeline_tests.postgres import InstanceHomes  # noqa: E402 - the throwaway PostgreSQL cluster
from kto_pipeline_tests.procs import free_ports  # noqa: E402

FILES = [f"part{i}.json" for i in range(5)]


def store_contender(code: str, root: str, barrier, results) -> None:
    sys.path.insert(0, code)
    import kto_pipeline.artifacts as artifacts

    started = []

    def build(tmp: Path) -> None:
        started.append(True)
        for name in FILES:
            (tmp / name).write_text(json.dumps({"pid": os.getpid()}))
            time.sleep(0.02)

    barrier.wait()
    try:
        if hasattr(artifacts, "Store"):
            built = artifacts.Store(root).get_or_build("kto_dataset", "v1", build).built
        else:  # the pattern every asset hand-rolled before the store
            out = Path(root) / "kto_dataset" / "v1"
            built = not artifacts.is_complete(out)
            if built:
                with artifacts.building(out) as tmp:
                    build(tmp)
        results.put(("ok", built, ""))
    except Exception as e:  # noqa: BLE001 - counted, with its type
        results.put(("failed", bool(started), type(e).__name__))


def store_trial(code: str, runs: int) -> dict:
    root = tempfile.mkdtemp(prefix="store_race_")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(runs), ctx.Queue()
    procs = [ctx.Process(target=store_contender, args=(code, root, barrier, results)) for _ in range(runs)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    final = Path(root) / "kto_dataset" / "v1"
    names = sorted(p.name for p in final.iterdir()) if final.is_dir() else []
    corrupt = int(names != sorted(FILES + [".complete"]))
    shutil.rmtree(root, ignore_errors=True)
    return {
        "failed": sum(s != "ok" for s, _, _ in got),
        "builds": sum(b for _, b, _ in got),
        "corrupt": corrupt,
        "errors": [e for s, _, e in got if s != "ok"],
    }


def cli_trial(code: str, runs: int, rows: int = 0, homes: InstanceHomes | None = None, cold: bool = False) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cli_race_"))
    home, artifacts = tmp / "home", tmp / "artifacts"
    storage_env = homes.new(home) if homes else {"DAGSTER_HOME": str(home)}
    if not homes:
        home.mkdir()
        shutil.copyfile(REPO / "kto_pipeline" / "dagster.yaml", home / "dagster.yaml")
    shutil.copytree(REPO / "data" / "raw", tmp / "data" / "raw")
    if rows:  # a bigger dataset: a build long enough for the runs to overlap (CLI start-up jitter is ~seconds)
        write_rows(tmp / "data" / "raw" / "synthetic.jsonl", rows)
    env = dict(
        os.environ, **storage_env, KTO_ARTIFACT_ROOT=str(artifacts), PYTHONPATH=code, PYTHONDONTWRITEBYTECODE="1"
    )

    def start(select: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster",
                "asset",
                "materialize",
                "-m",
                "kto_pipeline.definitions",
                "--select",
                select,
            ],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    if not cold:  # cold: the N runs are the first the brand-new instance sees (its schema is created by them)
        warm = start("raw_preferences")
        out, _ = warm.communicate(timeout=600)
        if warm.returncode != 0:
            raise SystemExit(f"warming failed:\n{out[-3000:]}")
    # cold: nothing is materialized yet either, so the runs take the data step whole
    procs = [start("raw_preferences,kto_dataset" if cold else "kto_dataset") for _ in range(runs)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    errors = []
    for p, o in zip(procs, outs):
        if p.returncode != 0:
            causes = [
                line.strip()
                for line in o.splitlines()
                if "Error: " in line and "DagsterExecutionStepExecutionError" not in line
            ]
            errors.append(causes[0][:200] if causes else "exit != 0")
    root = artifacts / "kto_dataset"
    folders = (
        [p for p in root.iterdir() if not p.name.startswith(".") and not p.name.endswith((".partial", ".lock"))]
        if root.is_dir()
        else []
    )
    corrupt = sum(not all((f / n).is_file() for n in (".complete", "report.json", "train.parquet")) for f in folders)
    shutil.rmtree(tmp, ignore_errors=True)
    # builds: runs whose kto_dataset step started and did not reuse a finished folder
    return {
        "failed": len(errors),
        "builds": sum('Started execution of step "kto_dataset"' in o and "already built" not in o for o in outs),
        "corrupt": corrupt,
        "errors": errors,
    }


def write_rows(path: Path, rows: int, tag: str = "") -> None:
    """rows synthetic feedback rows (a third undesirable); tag makes the content, hence the version, a trial's own."""
    with open(path, "w") as f:
        for i in range(rows):
            f.write(
                json.dumps({"prompt": f"question {tag}{i}", "completion": f"answer {i} " * 20, "label": i % 3 != 0})
                + "\n"
            )


# ---- data: CLI + GraphQL runs of one new data version at once, on SQLite or PostgreSQL ---------------------------

LOCATION = "kto_pipeline.definitions"
DATA_STEP = ["raw_preferences", "kto_dataset"]
LOCATION_STATUS = """{ workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


class Webserver:
    """`dagster-webserver -m kto_pipeline.definitions` on the instance, until stop()."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.port = free_ports(1)[0]
        self.log = cwd / "webserver.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dagster_webserver", "-m", LOCATION, "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_loaded()
        except BaseException:
            self.stop()
            raise

    def graphql(self, query: str) -> dict:
        r = httpx.post(f"http://127.0.0.1:{self.port}/graphql", json={"query": query}, timeout=60)
        r.raise_for_status()
        return r.json()["data"]

    def _wait_loaded(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("dagster-webserver exited:\n" + self.log.read_text()[-3000:])
            try:
                entries = self.graphql(LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
            except (httpx.HTTPError, KeyError, TypeError):
                entries = []
            for e in entries:
                if e["name"] == LOCATION and e["loadStatus"] == "LOADED":
                    if e["locationOrLoadError"]["__typename"] != "RepositoryLocation":
                        raise RuntimeError(f"code location failed to load: {e}")
                    return
            time.sleep(1)
        raise TimeoutError("code location did not load:\n" + self.log.read_text()[-3000:])

    def launch(self, run_config: dict) -> str:
        """What the UI's Materialize button sends (launchPipelineExecution): the run id, or raises."""
        from dagster_graphql import DagsterGraphQLClient

        client = DagsterGraphQLClient("127.0.0.1", port_number=self.port, timeout=300)
        return client.submit_job_execution(
            "__ASSET_JOB", repository_location_name=LOCATION, run_config=run_config, asset_selection=DATA_STEP
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class DataSession:
    """One instance (and, for GraphQL launches, one webserver on it) for every trial of the data scenario."""

    def __init__(self, homes: InstanceHomes, code: str, graphql: bool):
        self.tmp = Path(tempfile.mkdtemp(prefix="data_race_"))
        self.artifacts = self.tmp / "artifacts"
        self.storage_env = homes.new(self.tmp / "home")  # DAGSTER_HOME and what its dagster.yaml reads
        self.env = dict(
            os.environ,
            **self.storage_env,
            KTO_ARTIFACT_ROOT=str(self.artifacts),
            PYTHONPATH=code,
            PYTHONDONTWRITEBYTECODE="1",
        )
        self.webserver = None
        # Warm the instance first (its schema created by one run): N first runs at once on a brand-new SQLite
        # instance is the `cli --cold` scenario.
        proc = self.materialize(self.trial_config(REPO / "data" / "raw"), DATA_STEP)
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"warming failed:\n{out[-3000:]}")
        if graphql:
            # Dagster's default 60 s for a call to the code server: on the shared 2-core machine (load 20+) the
            # first attempt's launches hit it ("User code server request timed out") while their runs went on;
            # raised so that the count is about the store, not about the host's load (CONCURRENCY.md says so).
            self.webserver = Webserver(self.tmp, dict(self.env, DAGSTER_GRPC_TIMEOUT_SECONDS="300"))

    @staticmethod
    def trial_config(raw: Path) -> dict:
        return {"ops": {"raw_preferences": {"config": {"raw_dir": str(raw)}}}}

    def materialize(self, config: dict, select: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster",
                "asset",
                "materialize",
                "-m",
                LOCATION,
                "--select",
                ",".join(select),
                "--config-json",
                json.dumps(config),
            ],
            cwd=self.tmp,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @contextmanager
    def instance(self):
        """The instance, opened here (its dagster.yaml reads the environment when it is loaded)."""
        import dagster as dg

        saved = {k: os.environ.get(k) for k in self.storage_env}
        os.environ.update(self.storage_env)
        try:
            with dg.DagsterInstance.from_config(self.storage_env["DAGSTER_HOME"]) as instance:
                yield instance
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def close(self) -> None:
        if self.webserver:
            self.webserver.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def folders(self, asset: str) -> set[Path]:
        root = self.artifacts / asset
        return {p for p in root.iterdir() if not p.name.startswith(".")} if root.is_dir() else set()


def data_trial(session: DataSession, trial: int, n_cli: int, n_graphql: int, rows: int) -> dict:
    import dagster as dg

    raw = session.tmp / f"trial{trial}" / "raw"
    shutil.copytree(REPO / "data" / "raw", raw)
    write_rows(raw / "synthetic.jsonl", rows, tag=f"t{trial}-")
    config = session.trial_config(raw)
    before = {a: session.folders(a) for a in DATA_STEP}
    started = time.time()
    with ThreadPoolExecutor(max(n_graphql, 1)) as pool:  # the launches and the CLI processes all start together
        launches = [pool.submit(session.webserver.launch, config) for _ in range(n_graphql)]
        procs = [session.materialize(config, DATA_STEP) for _ in range(n_cli)]
        outs = [p.communicate(timeout=1800)[0] for p in procs]
        errors = [cli_error(o) for p, o in zip(procs, outs) if p.returncode != 0]
        graphql_ids = []
        for f in launches:
            try:
                graphql_ids.append(f.result())
            except Exception as e:  # noqa: BLE001 - a refused launch is a failed run, counted with its cause
                errors.append(f"launch: {type(e).__name__}: {str(e)[:150]}")
    with session.instance() as instance:
        runs = instance.get_runs(dg.RunsFilter(created_after=datetime.fromtimestamp(started - 1, UTC)))
        unfinished = wait_done(instance, graphql_ids + [r.run_id for r in runs])
        runs = instance.get_runs(dg.RunsFilter(created_after=datetime.fromtimestamp(started - 1, UTC)))
        # A run failed when its status is not SUCCESS; one that never reached the instance (a CLI process that
        # died before creating its run, a refused launch) is missing. A launch whose request timed out but whose
        # run was created and succeeded is a launch error, not a failed run.
        bad = [r for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
        errors += [f"run {r.status.value}: {first_error(instance, r.run_id)}" for r in bad]
        facts = [run_facts(instance, run.run_id) for run in runs]
    wall = time.time() - started
    new = {a: session.folders(a) - before[a] for a in DATA_STEP}
    dataset = next(iter(new["kto_dataset"])) if len(new["kto_dataset"]) == 1 else None
    raw_folder = next(iter(new["raw_preferences"])) if len(new["raw_preferences"]) == 1 else None
    problem = dataset_problem(dataset, raw) if dataset else f"{len(new['kto_dataset'])} new kto_dataset folders"
    report = DatasetReport.read(dataset).to_dict() if dataset and not problem else {}
    mislabelled = sum(
        f["dataset_path"] is not None
        and (
            f["dataset_path"] != str(dataset)
            or f["data_version"] != report.get("data_version")
            or f["raw_path"] != str(raw_folder)
        )
        for f in facts
    )
    built = [f for f in facts if f["dataset_started"] is not None and not f["reused"]]
    build_end = max((f["dataset_ended"] or 0 for f in built), default=0)
    overlapped = sum(
        f["dataset_started"] is not None and f["dataset_started"] < build_end for f in facts if f not in built
    )
    missing = max(n_cli + n_graphql - len(runs), 0)
    return {
        "runs": n_cli + n_graphql,
        "instance_runs": len(runs),
        "unfinished": unfinished,
        "failed": len(bad) + missing,
        "launch_errors": sum(e.startswith("launch:") for e in errors),
        "builds": len(built),
        "corrupt": int(bool(problem)),
        "mislabelled": mislabelled,
        "overlapped": overlapped,
        "wall_s": round(wall, 1),
        "errors": errors + ([problem] if problem else []),
    }


def cli_error(out: str) -> str:
    causes = [
        line.strip()
        for line in out.splitlines()
        if "Error: " in line and "DagsterExecutionStepExecutionError" not in line
    ]
    return causes[0][:200] if causes else "cli exit != 0: " + out.strip().splitlines()[-1][:150] if out.strip() else ""


def wait_done(instance, run_ids: list[str], timeout: float = 900) -> int:
    """Wait until every run has finished; how many had not after timeout (counted as failed by their status)."""
    import dagster as dg

    done = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    deadline = time.time() + timeout
    while True:
        left = [r for r in set(run_ids) if instance.get_run_by_id(r).status not in done]
        if not left or time.time() > deadline:
            return len(left)
        time.sleep(1)


def first_error(instance, run_id: str) -> str:
    for entry in instance.all_logs(run_id):
        ev = entry.dagster_event
        if ev is not None and ev.is_failure and ev.event_specific_data is not None:
            err = getattr(ev.event_specific_data, "error", None)
            if err is not None:
                return f"{err.cls_name}: {err.message.strip()[:150]}"
    return "no failure event"


def run_facts(instance, run_id: str) -> dict:
    """What one run recorded: the paths and versions of its materializations, when its kto_dataset step ran, and
    whether it reused the version ("already built") instead of building it."""
    facts = {
        "dataset_path": None,
        "data_version": None,
        "raw_path": None,
        "dataset_started": None,
        "dataset_ended": None,
        "reused": False,
    }
    for entry in instance.all_logs(run_id):
        ev = entry.dagster_event
        if entry.step_key == "kto_dataset" and "already built" in (entry.user_message or ""):
            facts["reused"] = True
        if ev is None or entry.step_key != "kto_dataset" and not ev.is_step_materialization:
            continue
        if ev.is_step_start and entry.step_key == "kto_dataset":
            facts["dataset_started"] = entry.timestamp
        elif (ev.is_step_success or ev.is_step_failure) and entry.step_key == "kto_dataset":
            facts["dataset_ended"] = entry.timestamp
        elif ev.is_step_materialization:
            mat = ev.event_specific_data.materialization
            meta = {k: v.value for k, v in mat.metadata.items()}
            if mat.asset_key == dg_key("kto_dataset"):
                facts["dataset_path"], facts["data_version"] = meta.get("path"), meta.get("data_version")
            elif mat.asset_key == dg_key("raw_preferences"):
                facts["raw_path"] = meta.get("path")
    return facts


def dg_key(name: str):
    import dagster as dg

    return dg.AssetKey(name)


def dataset_problem(folder: Path, raw: Path) -> str:
    """Why a built kto_dataset folder is not a complete, readable build of this trial's raw files ("" if it is)."""
    import pyarrow.parquet as pq

    names = ["report.json", "train.parquet", "eval.parquet", "quarantine.parquet"]
    missing = [n for n in [".complete", *names] if not (folder / n).is_file()]
    if missing:
        return f"{folder.name}: missing {missing}"
    try:
        report = DatasetReport.read(folder).to_dict()
        n = {s: pq.read_table(folder / f"{s}.parquet").num_rows for s in ("train", "eval", "quarantine")}
    except Exception as e:  # noqa: BLE001 - unreadable is what corrupt means
        return f"{folder.name}: unreadable: {type(e).__name__}: {e}"
    if (n["train"], n["eval"]) != (report["train_rows"], report["eval_rows"]):
        return f"{folder.name}: parquet rows {n} != report {report['train_rows']}/{report['eval_rows']}"
    if report["valid"] != n["train"] + n["eval"]:
        return f"{folder.name}: valid {report['valid']} != train + eval rows"
    expected = sorted(str(p.resolve()) for p in raw.iterdir())
    if sorted(str(Path(s["source"]).resolve()) for s in report["sources"]) != expected:
        return f"{folder.name}: sources {[s['source'] for s in report['sources']]} are not the trial's {expected}"
    return ""


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["store", "cli", "data"])
    p.add_argument("--code", default=str(REPO), help="the tree whose kto_pipeline runs")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--rows", type=int, default=0, help="cli, data: add a synthetic raw file of this many rows")
    p.add_argument("--storage", choices=["sqlite", "postgres"], default="sqlite", help="cli, data: instance storage")
    p.add_argument(
        "--launch",
        choices=["cli", "graphql", "cli+graphql"],
        default="cli+graphql",
        help="data: how the runs start (cli+graphql: half each)",
    )
    p.add_argument("--cold", action="store_true", help="cli: no warming run, the N runs are the instance's first")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=0,
        help="start no new trial after this long (0: no limit); the summary says how many ran",
    )
    args = p.parse_args()
    code = str(Path(args.code).resolve())
    rows, started = [], time.time()
    with InstanceHomes(args.storage) as homes:
        session = None
        if args.scenario == "data":
            n_graphql = {"cli": 0, "graphql": args.runs, "cli+graphql": args.runs // 2}[args.launch]
            session = DataSession(homes, code, graphql=n_graphql > 0)
        try:
            for i in range(args.trials):
                if args.max_minutes and time.time() - started > args.max_minutes * 60:
                    print(f"stopped after {i} of {args.trials} trials: --max-minutes {args.max_minutes}")
                    break
                if args.scenario == "store":
                    r = store_trial(code, args.runs)
                elif args.scenario == "cli":
                    r = cli_trial(code, args.runs, args.rows, homes, args.cold)
                else:
                    r = data_trial(session, i, args.runs - n_graphql, n_graphql, args.rows)
                rows.append(r)
                print(f"trial {i + 1}: {r}", flush=True)
        finally:
            if session:
                session.close()
    total = len(rows) * args.runs
    errors = Counter(e.split(":")[0] for r in rows for e in r["errors"])
    extra_builds = sum(r["builds"] - 1 for r in rows)
    what = args.scenario + (f" ({args.rows} rows)" if args.rows else "")
    if args.scenario != "store":
        what += f", {args.storage}" + (", cold" if args.cold else "") + (f", {args.launch}" if session else "")
    line = (
        f"| {what} | {args.code} | {len(rows)} x {args.runs} | {sum(r['failed'] for r in rows)} of {total} | "
        f"{sum(r['corrupt'] for r in rows)} | "
    )
    if args.scenario == "data":
        line += (
            f"{sum(r['mislabelled'] for r in rows)} | builds per trial {dict(Counter(r['builds'] for r in rows))} | "
            f"{sum(r['overlapped'] for r in rows)} | {sum(r['launch_errors'] for r in rows)} | "
        )
    else:
        line += f"{extra_builds} | "
    print(line + f"{dict(errors) or '-'} | {time.time() - started:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
