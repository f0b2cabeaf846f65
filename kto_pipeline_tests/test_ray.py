"""training.launcher='ray' on a real two-node Ray cluster on this machine: a head and a second node (`ray start`),
each offering one CPU and one `kto_worker` resource, so the two Ray Train workers land on different nodes."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest

from kto_pipeline import progress
from kto_pipeline_tests.conftest import run_ok
from kto_pipeline_tests.procs import descendants, free_ports

pytestmark = pytest.mark.slow  # a Ray cluster, Dagster runs and training

RAY = str(Path(sys.executable).with_name("ray"))  # the ray of this interpreter's environment


def node_args(resources: dict) -> list[str]:
    """What both nodes share: one CPU and our resource each, a small object store, ports of their own (two raylets
    on one machine would otherwise both take the agents' default ports)."""
    agent, agent_grpc, runtime_env, metrics, node_manager, object_manager = free_ports(6)
    return [
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "1",
        "--num-gpus",
        "0",
        "--resources",
        json.dumps(resources),
        "--object-store-memory",
        str(100 * 2**20),
        "--dashboard-agent-listen-port",
        str(agent),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--runtime-env-agent-port",
        str(runtime_env),
        "--metrics-export-port",
        str(metrics),
        "--node-manager-port",
        str(node_manager),
        "--object-manager-port",
        str(object_manager),
        "--block",
    ]


def cluster_processes(temp_dir: Path) -> list[str]:
    """Command lines of raylets and GCS servers whose session lives in temp_dir: this fixture's, nobody else's."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(temp_dir) in argv and ("raylet" in argv or "gcs_server" in argv):
            found.append(f"{cmdline.parent.name}: {argv[:200]}")
    return found


class Cluster:
    def __init__(self, temp_dir: Path):
        self.temp_dir = temp_dir
        self.gcs_port, self.dashboard_port, self.client_port = free_ports(3)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.nodes: list[subprocess.Popen] = []
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        self.env.pop("RAY_ADDRESS", None)

    def start_node(self, args: list[str], log: str) -> None:
        # Its own session (process group): the teardown signals exactly these processes and their children.
        with open(self.temp_dir.parent / log, "w") as out:
            self.nodes.append(
                subprocess.Popen(
                    [RAY, "start", *args], env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )

    def alive_nodes(self) -> list:
        from ray.util.state import list_nodes

        try:
            return [n for n in list_nodes(address=self.address) if n.state == "ALIVE"]
        except Exception:  # noqa: BLE001 - the dashboard is not up yet
            return []

    def wait_for_nodes(self, count: int, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while len(self.alive_nodes()) < count:
            for node in self.nodes:
                assert node.poll() is None, (self.temp_dir.parent / "head.log").read_text()[-3000:]
            assert time.time() < deadline, f"Ray cluster did not reach {count} nodes"
            time.sleep(1)

    def workers(self, state: str | None = None) -> list:
        from ray.util.state import list_actors

        filters = [("class_name", "=", "RayTrainWorker")] + ([("state", "=", state)] if state else [])
        return list_actors(address=self.address, filters=filters, detail=True)

    def stop(self) -> None:
        """SIGTERM to every process of the two `ray start --block` sessions and below, then SIGKILL what is left.
        Not `ray stop`: it kills every Ray process on the machine by name, other people's clusters included."""
        pids = descendants({n.pid for n in self.nodes})
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + grace
            while time.time() < deadline and any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
                time.sleep(0.2)
            pids = {p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)}
        for node in self.nodes:
            node.wait(timeout=10)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@pytest.fixture(scope="module")
def ray_cluster():
    # short: Ray's sockets live under it, and a Unix socket path has at most 107 characters
    temp_dir = Path(tempfile.mkdtemp(prefix="kto-ray-", dir="/tmp")) / "ray"
    temp_dir.mkdir()
    cluster = Cluster(temp_dir)
    try:
        cluster.start_node(
            [
                "--head",
                "--port",
                str(cluster.gcs_port),
                "--temp-dir",
                str(temp_dir),
                "--include-dashboard",
                "true",
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(cluster.dashboard_port),
                "--ray-client-server-port",
                str(cluster.client_port),
                *node_args({"kto_worker": 1, "head": 1}),
            ],
            "head.log",
        )
        cluster.wait_for_nodes(1)
        cluster.start_node(["--address", f"127.0.0.1:{cluster.gcs_port}", *node_args({"kto_worker": 1})], "node2.log")
        cluster.wait_for_nodes(2)
        assert len(cluster_processes(temp_dir)) >= 3, "the teardown check would not see this cluster's processes"
        yield cluster
    finally:
        cluster.stop()
        left = cluster_processes(temp_dir)
        shutil.rmtree(temp_dir.parent, ignore_errors=True)
        assert not left, f"Ray processes of the test cluster survived the teardown: {left}"


def ray_run_config(training: dict) -> dict:
    return {
        "ops": {"lora_adapter": {"config": {"training": {"launcher": "ray", **training}}}},
        "resources": {
            "ray_cluster": {
                "config": {
                    "python": sys.executable,
                    "worker_resources": {"kto_worker": 1},
                    "max_failures": 2,
                    "poll_interval_s": 0.5,
                }
            }
        },
    }


def metrics_of(project, meta: dict) -> dict:
    return json.loads((project.artifacts / "lora_adapter" / meta["data_version"] / "metrics.json").read_text())


def eval_loss_passed(project) -> bool:
    key = dg.AssetCheckKey(dg.AssetKey("lora_adapter"), "eval_loss")
    with project.instance() as instance:
        return instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key].evaluation.passed


def test_two_ray_workers_on_two_nodes_train_like_one_process(project, ray_cluster, monkeypatch):
    """The torchrun test's equivalence, through a Ray job: 2 Ray Train workers (one per node) with accumulation 1
    each see the rows one local process sees with accumulation 2, and the first step's gradient is the same."""
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    run_ok(project.materialize_cli("raw_preferences,kto_dataset"))
    before = {w.actor_id for w in ray_cluster.workers()}
    shape = {"max_steps": 6, "gradient_accumulation_steps": 2, "per_device_train_batch_size": 4}
    out = run_ok(project.materialize_cli("lora_adapter", ray_run_config({"num_processes": 2, **shape})), timeout=600)
    assert out.count("backend=transformers") == 1, "more than one worker reported through Pipes"
    assert "step 6:" in out  # rank 0's log lines came back through the Ray job's log
    # and its progress, as events of the run while it trained: one TrainingBegan, one StepLogged per step
    with project.instance() as instance:
        records = instance.fetch_observations(dg.AssetKey("lora_adapter"), limit=100).records
    sent = [progress.from_message(r.asset_observation.metadata) for r in reversed(records)]
    assert [p for p in sent if isinstance(p, progress.TrainingBegan)] == [progress.TrainingBegan(total_steps=6)]
    assert [p.step for p in sent if isinstance(p, progress.StepLogged) and p.loss is not None] == [1, 2, 3, 4, 5, 6]
    ray_meta = project.latest("lora_adapter")
    assert ray_meta["processes"] == 2 and ray_meta["steps"] == 6
    assert "data:image/png;base64," in ray_meta["training_curves"] and eval_loss_passed(project)
    adapter_dir = project.artifacts / "lora_adapter" / ray_meta["data_version"]
    assert (adapter_dir / "adapter_model.safetensors").stat().st_size > 0
    # Ray Train's copies, in the adapter's folder: both ranks' files merged (rank 1 wrote only its RNG state)
    checkpoints = adapter_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert {
        "adapter_model.safetensors",
        "optimizer.pt",
        "trainer_state.json",
        "rng_state_0.pth",
        "rng_state_1.pth",
    } <= {p.name for p in (checkpoints / "checkpoint-6").iterdir()}
    workers = [w for w in ray_cluster.workers() if w.actor_id not in before]
    assert len(workers) == 2 and len({w.node_id for w in workers}) == 2, workers  # one worker on each node

    run_ok(
        project.materialize_cli(
            "lora_adapter", {"ops": {"lora_adapter": {"config": {"training": {"num_processes": 1, **shape}}}}}
        )
    )
    one, two = metrics_of(project, project.latest("lora_adapter")), metrics_of(project, ray_meta)
    assert (one["gradient_accumulation"], two["gradient_accumulation"]) == (2, 1)  # same effective batch
    steps = [[h for h in r["history"] if "loss" in h] for r in (one, two)]
    assert [h["num_tokens"] for h in steps[0]] == [h["num_tokens"] for h in steps[1]]
    assert math.isclose(steps[0][0]["grad_norm"], steps[1][0]["grad_norm"], rel_tol=1e-3)


def test_a_killed_worker_is_restarted_from_the_last_checkpoint(project, ray_cluster, monkeypatch):
    """SIGKILL one Ray Train worker after the first checkpoint: Ray Train restarts both workers from the latest
    checkpoint it holds, the asset finishes, and at most one save interval of steps is trained twice."""
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    run_ok(project.materialize_cli("raw_preferences,kto_dataset"))
    before = {w.actor_id for w in ray_cluster.workers()}
    save_steps, max_steps = 4, 40  # the kill lands mid-run: 35 steps left when it is sent
    proc = project.materialize_cli(
        "lora_adapter",
        ray_run_config(
            {"num_processes": 2, "max_steps": max_steps, "save_steps": save_steps, "gradient_accumulation_steps": 2}
        ),
    )
    seen, victim = [], None
    for line in proc.stdout:  # rank 0's lines, live
        seen.append(line)
        if victim is None and f"training {max_steps} steps" in line:  # both workers are up: pick the second node's
            head = next(n.node_id for n in ray_cluster.alive_nodes() if n.is_head_node)
            victim = next(w for w in ray_cluster.workers("ALIVE") if w.node_id != head)
        if victim and re.search(rf"step {save_steps + 1}:", line):  # the step after the first save: Ray holds it
            os.kill(victim.pid, signal.SIGKILL)
            break
    assert victim, "".join(seen)[-4000:]
    rest, _ = proc.communicate(timeout=600)
    out = "".join(seen) + rest
    assert proc.returncode == 0, out[-4000:]

    meta = project.latest("lora_adapter")
    metrics = metrics_of(project, meta)
    assert meta["steps"] == max_steps and eval_loss_passed(project)
    resumed = re.search(r"checkpoint-(\d+)$", metrics["resumed_from"] or "")
    assert resumed, f"the restarted workers did not resume from a checkpoint: {metrics['resumed_from']}"
    first_attempt = out.split(f"training {max_steps} steps")[1]  # up to the restarted workers' own line
    reached = max(int(s) for s in re.findall(r"step (\d+):", first_attempt))
    lost = reached - int(resumed.group(1))
    assert 0 <= lost <= save_steps, f"reached step {reached}, resumed from {metrics['resumed_from']}"
    logged = [h for h in metrics["history"] if "loss" in h]  # the checkpoint's logs, then the resumed workers'
    assert [h["step"] for h in logged] == list(range(1, max_steps + 1))
    history = [h for h in logged if h["step"] > int(resumed.group(1))]
    assert history[0]["step"] == int(resumed.group(1)) + 1 and metrics["steps_this_run"] == len(history)
    # the resumed step is the one the first attempt trained: same rows, weights and optimizer state
    again = re.search(rf"step {history[0]['step']}: .*?grad_norm=([0-9.e+-]+),", first_attempt)
    assert again and f"{history[0]['grad_norm']:.4g}" == again.group(1)
    started = [w for w in ray_cluster.workers() if w.actor_id not in before]
    assert len(started) == 4 and not [w for w in started if w.state == "ALIVE"]  # two groups of two, all gone
