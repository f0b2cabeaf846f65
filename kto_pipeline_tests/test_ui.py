"""The Dagster UI as a person uses it: a real dagster-webserver, GraphQL, and headless Chromium."""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from kto_pipeline.config import PRESETS
from kto_pipeline_tests.conftest import REPO, SHIPPED_DAGSTER_YAML

pytestmark = pytest.mark.slow  # a real webserver and a training run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LOCATION = "kto_pipeline.definitions"
CORE_ASSETS = {"raw_preferences", "kto_dataset", "lora_adapter", "merged_model"}

TINY_STEPS = PRESETS["tiny"]["training"]["max_steps"]


@dataclass
class Webserver:
    url: str
    port: int
    home: Path
    artifacts: Path
    log: Path

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        r = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
        r.raise_for_status()
        body = r.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def client(self):
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient("127.0.0.1", port_number=self.port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOCATION_STATUS = """{ workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


@pytest.fixture(scope="module")
def webserver(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ui")
    home, artifacts = root / "dagster_home", root / "artifacts"
    home.mkdir()
    shutil.copyfile(SHIPPED_DAGSTER_YAML, home / "dagster.yaml")  # DefaultRunCoordinator: no daemon needed
    shutil.copytree(tiny_model_dir, artifacts / "cache" / "tiny")
    port = _free_port()
    log = root / "webserver.log"
    env = dict(os.environ, DAGSTER_HOME=str(home), KTO_ARTIFACT_ROOT=str(artifacts))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster_webserver",
                "-w",
                str(REPO / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Webserver(f"http://127.0.0.1:{port}", port, home, artifacts, log)
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "code location did not load:\n" + log.read_text()[-3000:]
            try:
                entries = server.graphql(LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
            except (requests.ConnectionError, requests.HTTPError):
                entries = []
            loaded = [e for e in entries if e["name"] == LOCATION and e["loadStatus"] == "LOADED"]
            if loaded:
                assert loaded[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation", loaded
                break
            time.sleep(1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def materialized(webserver) -> str:
    """Data and training, launched through the GraphQL client as the UI's Materialize button does (the rest of
    the graph runs once in the suite, in test_pipeline)."""
    from dagster import DagsterRunStatus

    client = webserver.client()
    nodes = webserver.graphql("{ assetNodes { assetKey { path } isPartitioned } }")["assetNodes"]
    unpartitioned = {n["assetKey"]["path"][-1] for n in nodes if not n["isPartitioned"]}  # files: the sensor's job
    assert CORE_ASSETS <= unpartitioned
    run_id = client.submit_job_execution(
        "__ASSET_JOB",
        repository_location_name=LOCATION,
        asset_selection=["raw_preferences", "kto_dataset", "lora_adapter"],
    )
    deadline = time.time() + 600
    while (status := client.get_run_status(run_id)) not in (
        DagsterRunStatus.SUCCESS,
        DagsterRunStatus.FAILURE,
        DagsterRunStatus.CANCELED,
    ):
        assert time.time() < deadline, f"run {run_id} still {status}"
        time.sleep(2)
    assert status == DagsterRunStatus.SUCCESS, webserver.log.read_text()[-3000:]
    return run_id


ASSET_NODES = """{ assetNodes { assetKey { path } groupName kinds description
  assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }"""


def test_graphql_lists_assets_groups_kinds_and_checks(webserver):
    nodes = {n["assetKey"]["path"][-1]: n for n in webserver.graphql(ASSET_NODES)["assetNodes"]}
    assert CORE_ASSETS <= set(nodes)
    for name in CORE_ASSETS:
        assert nodes[name]["groupName"] in {"data", "training", "export", "release"}, name
        assert nodes[name]["kinds"] and nodes[name]["description"], name
    checks = {
        (a, c["name"]): c["blocking"] for a, n in nodes.items() for c in n["assetChecksOrError"].get("checks", [])
    }
    assert checks[("kto_dataset", "label_balance")] is True
    assert checks[("lora_adapter", "eval_loss")] is True


LATEST_METADATA = """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset {
  assetMaterializations(limit: 1) { runId metadataEntries { label __typename
    ... on FloatMetadataEntry { floatValue } ... on IntMetadataEntry { intValue }
    ... on TextMetadataEntry { text } ... on MarkdownMetadataEntry { mdStr } } } } } }"""


def _metadata(webserver, asset: str) -> tuple[str, dict]:
    data = webserver.graphql(LATEST_METADATA, {"key": {"path": [asset]}})
    [mat] = data["assetOrError"]["assetMaterializations"]
    values = {
        e["label"]: e.get("floatValue", e.get("intValue", e.get("text", e.get("mdStr"))))
        for e in mat["metadataEntries"]
    }
    return mat["runId"], values


def test_graphql_launch_and_read_back_metadata(webserver, materialized):
    run_id, data = _metadata(webserver, "kto_dataset")
    assert run_id == materialized and data["valid"] == 66 and data["quarantined"] == 0
    _, adapter = _metadata(webserver, "lora_adapter")
    assert math.isfinite(adapter["eval_loss"]) and adapter["steps"] == TINY_STEPS
    assert adapter["training_curves"].startswith("![loss and rewards](data:image/png;base64,")


needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
)
SCREENSHOTS = Path(os.environ.get("KTO_SCREENSHOT_DIR", "")) if os.environ.get("KTO_SCREENSHOT_DIR") else None


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


def _shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=False)
    assert path.stat().st_size > 10_000  # a real render, not a blank page
    if SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / name)
    return path


def _open(browser, url: str, height: int = 900):
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.goto(url, wait_until="networkidle")
    # A new browser profile gets a "join the community" dialog, sometimes a moment after the page settles;
    # a person clicks Skip. It only shows once per profile.
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=8_000)
        skip.click()
        skip.wait_for(state="detached", timeout=5_000)
    except Exception:  # noqa: BLE001 - no dialog this time
        pass
    return page


def _leaf_asset(webserver) -> str:
    nodes = webserver.graphql("{ assetNodes { assetKey { path } dependedByKeys { path } } }")["assetNodes"]
    [leaf] = [n["assetKey"]["path"][-1] for n in nodes if not n["dependedByKeys"]]
    return leaf


@needs_chromium
def test_browser_shows_the_asset_graph(webserver, materialized, browser, tmp_path):
    leaf = _leaf_asset(webserver)
    nodes = webserver.graphql("{ assetNodes { assetKey { path } groupName } }")["assetNodes"]
    page = _open(browser, f"{webserver.url}/assets/{leaf}?view=lineage&lineageScope=upstream&lineageDepth=10")
    # every asset of the code location and every group box is drawn
    for name in {n["assetKey"]["path"][-1] for n in nodes} | {n["groupName"] for n in nodes}:
        page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
    _shot(page, tmp_path, "asset_graph.png")


@needs_chromium
def test_browser_shows_lora_adapter_metadata_and_checks(webserver, materialized, browser, tmp_path):
    page = _open(browser, f"{webserver.url}/assets/lora_adapter", height=1000)
    for text in ("eval_loss", "tokens_per_s", "rewards_chosen", "training_curves"):
        page.get_by_text(text, exact=True).first.wait_for(timeout=30_000)
    page.get_by_text("LoRA adapter trained with TRL's KTOTrainer", exact=False).first.wait_for(timeout=10_000)
    _shot(page, tmp_path, "lora_adapter_page.png")
    page.get_by_role("tab", name="Checks").click()
    page.get_by_text("eval_loss", exact=True).first.wait_for(timeout=30_000)
    page.get_by_text("Passed", exact=False).first.wait_for(timeout=30_000)
    assert page.get_by_text("Failed", exact=False).count() == 0


RUNS = """{ runsOrError(limit: 1) { ... on Runs { results { runId status assetSelection { path } } } } }"""


@needs_chromium
def test_materialize_button_on_kto_dataset_runs_it(webserver, materialized, browser):
    page = _open(browser, f"{webserver.url}/assets/kto_dataset")
    # the accessible name carries the icon's ligature ("materialization Materialize"): match the label's end
    page.get_by_role("button", name=re.compile(r"\bMaterialize$")).first.click()
    deadline = time.time() + 180
    while True:
        [run] = webserver.graphql(RUNS)["runsOrError"]["results"]
        if run["runId"] != materialized and run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        assert time.time() < deadline, f"no finished run after clicking Materialize: {run}"
        time.sleep(1)
    assert run["status"] == "SUCCESS" and run["assetSelection"] == [{"path": ["kto_dataset"]}]
