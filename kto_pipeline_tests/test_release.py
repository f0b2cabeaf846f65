"""Release: the local registry, the Hub target (real huggingface_hub client against hub_server.FakeHub),
save methods and the model card."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from pathlib import Path

import pytest
import yaml

from kto_pipeline.release import (
    HubTarget,
    LocalRegistry,
    ReleaseError,
    folder_manifest,
    release_model,
    render_model_card,
    stage_release,
)
from kto_pipeline_tests.hub_server import FakeHub

TOKEN = "hf_testTOKEN_7f3a9c1e5b2d4f6a8c0e"
REPO = "tester/tiny-kto"

CARD = {
    "base_model": "mistralai/Mistral-7B-Instruct-v0.3",
    "dataset": {
        "sha256": "d" * 64,
        "rows": 120,
        "train_rows": 108,
        "eval_rows": 12,
        "n_desirable": 70,
        "n_undesirable": 50,
        "quarantined": 3,
    },
    "label_balance": {"desirable_share": 0.5833, "min_share": 0.2, "max_share": 0.8, "passed": True},
    "training": {"beta": 0.1, "learning_rate": 5e-7, "max_steps": 20, "lora": {"r": 16, "alpha": 16}},
    "eval": {"eval_loss": 0.4931, "eval_rewards/margins": 0.12},
    "lineage": {"kto_dataset": "a1b2c3", "lora_adapter": "d4e5f6", "merged_model": "d4e5f6"},
    "gguf": [
        {
            "file": "model-Q4_K_M.gguf",
            "type": "Q4_K_M",
            "bits_per_weight": 4.89,
            "passed": True,
            "verification": {"rel_error": 0.157, "top1_agreement": 0.73, "mean_kl": 0.02, "positions": 67},
        }
    ],
}


@pytest.fixture
def gguf_file(tmp_path) -> Path:
    """Stand-in bytes: the release only moves GGUF files, it does not read them."""
    path = tmp_path / "gguf" / "model-Q4_K_M.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + hashlib.sha256(b"seed").digest() * 4000)
    return path


@pytest.fixture
def hub(monkeypatch):
    """FakeHub speaking LFS; the client is told to skip Xet exactly as HF_HUB_DISABLE_XET=1 would."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    server = FakeHub(token=TOKEN).start()
    yield server
    server.stop()


def hub_target(server: FakeHub, **kw) -> HubTarget:
    return HubTarget(endpoint=server.endpoint, backoff_s=0.01, **kw)


def download_all(server: FakeHub, repo: str, revision: str, files: list[str], dest: Path) -> dict[str, bytes]:
    from huggingface_hub import hf_hub_download

    out = {}
    for name in files:
        p = hf_hub_download(
            repo,
            name,
            revision=revision,
            endpoint=server.endpoint,
            token=TOKEN,
            cache_dir=str(dest / "cache"),
            local_dir=str(dest / "files"),
        )
        out[name] = Path(p).read_bytes()
    return out


# ------------------------------------------------------------------------------------------- hub


def test_hub_release_round_trips_byte_for_byte(hub, tiny_model_dir, gguf_file, tmp_path):
    local = release_model(
        tiny_model_dir, REPO, target=LocalRegistry(tmp_path / "art"), card_info=CARD, gguf_files=[gguf_file]
    )
    result = release_model(tiny_model_dir, REPO, target=hub_target(hub), card_info=CARD, gguf_files=[gguf_file])
    assert result.created and result.version == local.version  # same content id on both targets
    assert result.tag == f"release-{result.version}"

    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    assert api.model_info(REPO).private is True  # private unless asked otherwise
    refs = api.list_repo_refs(REPO)
    assert {t.name: t.target_commit for t in refs.tags} == {result.tag: result.revision}
    tree = {f.path: f for f in api.list_repo_tree(REPO, recursive=True)}
    assert tree["model.safetensors"].lfs is not None and tree["model-Q4_K_M.gguf"].lfs is not None  # went via LFS
    assert tree["config.json"].lfs is None  # small text: inline in the commit

    released = folder_manifest(Path(local.location))
    got = download_all(hub, REPO, result.tag, sorted(released), tmp_path / "dl")
    for name, data in got.items():
        assert hashlib.sha256(data).hexdigest() == released[name].sha256, name
    assert got["tokenizer.model"] == (tiny_model_dir / "tokenizer.model").read_bytes()
    assert got["model-Q4_K_M.gguf"] == gguf_file.read_bytes()
    assert set(api.list_repo_files(REPO)) == set(released) | {".gitattributes"}

    # The downloaded release is a working model.
    from kto_pipeline.inference import KTOInference

    bot = KTOInference(tmp_path / "dl" / "files")
    assert isinstance(bot.generate("Hello", temperature=0, max_new_tokens=4), str)


def test_hub_release_is_idempotent_and_tracks_changes(hub, tiny_model_dir, gguf_file):
    target = hub_target(hub)
    first = release_model(tiny_model_dir, REPO, target=target, card_info=CARD, gguf_files=[gguf_file])
    commits, uploads = hub.count("commit"), hub.count("lfs_upload")

    again = release_model(tiny_model_dir, REPO, target=target, card_info=CARD, gguf_files=[gguf_file])
    assert not again.created and again.revision == first.revision
    assert hub.count("commit") == commits and hub.count("lfs_upload") == uploads  # nothing sent at all
    assert len(hub.history(REPO)) == 2  # initial commit + one release

    # New eval figures: only the card changes; the weights are not uploaded again.
    changed = release_model(
        tiny_model_dir, REPO, target=target, card_info={**CARD, "eval": {"eval_loss": 0.4}}, gguf_files=[gguf_file]
    )
    assert changed.created and changed.revision != first.revision and changed.version != first.version
    assert hub.count("lfs_upload") == uploads
    assert b"0.4" in hub.file_bytes(REPO, "README.md")

    # Dropping the GGUF file deletes it from main: main always equals exactly one release.
    no_gguf = release_model(tiny_model_dir, REPO, target=target, card_info=CARD)
    assert "model-Q4_K_M.gguf" not in hub.repos[REPO].commits[no_gguf.revision].files
    assert "model-Q4_K_M.gguf" in hub.repos[REPO].commits[first.revision].files  # still under its tag

    # Releasing the first content again restores it as a new commit but reuses its tag.
    back = release_model(tiny_model_dir, REPO, target=target, card_info=CARD, gguf_files=[gguf_file])
    assert back.created and back.version == first.version and back.tag == first.tag
    assert hub.repos[REPO].tags[first.tag] == first.revision

    with pytest.raises(ReleaseError, match="immutable"):  # a used tag cannot name other content
        release_model(tiny_model_dir, REPO, target=target, card_info=CARD, tag=first.tag)


def test_hub_retries_server_errors_mid_upload(hub, tiny_model_dir, gguf_file, tmp_path):
    hub.inject_fault("lfs_upload", nth=2)  # the second LFS PUT fails: the client's own backoff retries it
    hub.inject_fault("commit", nth=1)  # the commit fails before applying: our retry commits again
    result = release_model(tiny_model_dir, REPO, target=hub_target(hub), card_info=CARD, gguf_files=[gguf_file])
    assert hub.count("lfs_upload", status=500) == 1 and hub.count("commit", status=500) == 1
    assert result.created and len(hub.history(REPO)) == 2  # exactly one release commit landed
    files = hub.repos[REPO].commits[result.revision].files
    for name in ("model-Q4_K_M.gguf", "tokenizer.model"):
        assert (
            hub.file_bytes(REPO, name) == (gguf_file if name.endswith("gguf") else tiny_model_dir / name).read_bytes()
        )
    assert all(e.key in hub.blobs for e in files.values())  # every file of the commit is stored


def test_hub_lost_commit_response_is_not_committed_twice(hub, tiny_model_dir):
    hub.inject_fault("commit", nth=1, after=True)  # applied on the server, but the client sees a 500
    result = release_model(tiny_model_dir, REPO, target=hub_target(hub), card_info=CARD)
    assert hub.count("commit") == 1  # the retry re-planned from the remote tree and found nothing to do
    assert len(hub.history(REPO)) == 2 and hub.repos[REPO].tags[result.tag] == result.revision


def test_hub_gives_up_after_bounded_retries_and_leaves_repo_unchanged(hub, tiny_model_dir):
    for _ in range(3):
        hub.inject_fault("commit", nth=1)
    with pytest.raises(ReleaseError, match=r"commit failed after 2 attempts.*500"):
        release_model(tiny_model_dir, REPO, target=hub_target(hub, max_attempts=2), card_info=CARD)
    assert hub.count("commit") == 2
    assert [c.title for c in hub.history(REPO)] == ["initial commit"] and not hub.repos[REPO].tags


def test_token_never_appears_in_logs_errors_or_files(hub, tiny_model_dir, caplog, capfd, tmp_path):
    caplog.set_level(logging.DEBUG)
    for name in ("huggingface_hub", "httpx", "httpcore", "kto_pipeline"):
        caplog.set_level(logging.DEBUG, logger=name)
    hub.inject_fault("commit", nth=1)  # make the retry path log too
    result = release_model(tiny_model_dir, REPO, target=hub_target(hub), card_info=CARD)
    for _ in range(3):
        hub.inject_fault("tag", nth=1)
    with pytest.raises(ReleaseError) as err:
        release_model(tiny_model_dir, REPO, target=hub_target(hub, max_attempts=2), card_info=CARD, tag="v2")
    out, errs = capfd.readouterr()
    assert "hub: commit failed" in caplog.text  # the logs were captured at all
    for text in (
        caplog.text,
        out,
        errs,
        str(err.value),
        json.dumps(result.as_metadata()),
        hub.file_bytes(REPO, "README.md").decode(),
        hub.file_bytes(REPO, "kto_release.json").decode(),
    ):
        assert TOKEN not in text
    # ...while the token was what authorized every write.
    writes = [r for r in hub.requests if r["kind"] in ("create_repo", "preupload", "commit", "tag", "lfs_batch")]
    assert writes and all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in writes)


def test_hub_token_only_from_env(hub, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ReleaseError, match="HF_TOKEN"):
        release_model(tiny_model_dir, REPO, target=hub_target(hub))
    assert hub.requests == []  # failed before any request
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(ReleaseError, match="create_repo failed: .*401") as err:
        release_model(tiny_model_dir, REPO, target=hub_target(hub))
    assert hub.count("create_repo") == 1 and "hf_wrong" not in str(err.value)  # 401 is not retried


def test_hub_release_with_xet_enabled_client(monkeypatch, tiny_model_dir):
    """The client as installed (hf_xet present, Xet on) works when the server steers files to regular uploads."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    server = FakeHub(token=TOKEN, upload_mode="regular").start()
    try:
        result = release_model(tiny_model_dir, REPO, target=hub_target(server))
        assert result.created and server.count("lfs_batch") == 0
        assert server.file_bytes(REPO, "tokenizer.model") == (tiny_model_dir / "tokenizer.model").read_bytes()
        again = release_model(tiny_model_dir, REPO, target=hub_target(server))
        assert not again.created and server.count("commit") == 1
    finally:
        server.stop()


def test_upload_folder_multipart_through_fake_hub(hub, tiny_model_dir, tmp_path):
    """The fake hub also serves the client's multipart LFS path and plain upload_folder."""
    from huggingface_hub import HfApi

    hub.multipart_chunk_size = 100_000
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    api.create_repo(REPO, exist_ok=True)
    api.upload_folder(repo_id=REPO, folder_path=str(tiny_model_dir), commit_message="raw upload")
    assert hub.count("lfs_part") >= 6 and hub.count("lfs_complete") == 2
    got = download_all(hub, REPO, "main", ["model.safetensors"], tmp_path)
    assert got["model.safetensors"] == (tiny_model_dir / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------------------------- local


def test_local_registry_versions_tags_and_content_addressing(tiny_model_dir, tmp_path):
    reg = LocalRegistry(tmp_path / "art")
    a = release_model(tiny_model_dir, REPO, target=reg, card_info=CARD, tag="v1")
    again = release_model(tiny_model_dir, REPO, target=reg, card_info=CARD)
    assert a.created and not again.created and again.version == a.version
    idx = reg.index(REPO)
    assert [v["id"] for v in idx["versions"]] == [a.version]
    assert idx["tags"] == {"v1": a.version, f"release-{a.version}": a.version}

    b = release_model(tiny_model_dir, REPO, target=reg, card_info={**CARD, "eval": {"eval_loss": 0.3}}, tag="v2")
    assert b.created and b.version != a.version and reg.index(REPO)["head"] == b.version
    assert reg.resolve(REPO) == reg.resolve(REPO, "v2") == Path(b.location)
    assert (reg.repo_dir(REPO) / "latest").resolve() == Path(b.location).resolve()
    # Unchanged weights are stored once: both versions link the same blob.
    wa, wb = Path(a.location) / "model.safetensors", Path(b.location) / "model.safetensors"
    assert os.stat(wa).st_ino == os.stat(wb).st_ino and len(list((reg.repo_dir(REPO) / "blobs").iterdir())) == 11
    assert not os.stat(wa).st_mode & stat.S_IWUSR  # released files are read-only

    back = release_model(tiny_model_dir, REPO, target=reg, card_info=CARD, tag="v1")
    assert not back.created and reg.index(REPO)["head"] == a.version and len(reg.index(REPO)["versions"]) == 2
    with pytest.raises(ReleaseError, match="immutable"):
        release_model(tiny_model_dir, REPO, target=reg, card_info=CARD, tag="v2")
    assert reg.verify(REPO, "v1") and reg.verify(REPO, "v2")
    with pytest.raises(ReleaseError, match="no version or tag"):
        reg.resolve(REPO, "v9")

    # a flipped byte in a released file (bit rot, an edit through the read-only link): caught before it is handed out
    assert reg.checkout(REPO, "v1") == reg.resolve(REPO, "v1")
    weights = Path(a.location) / "model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert not reg.verify(REPO, "v1") and not reg.verify(REPO, "v2")  # one blob, linked by both versions
    with pytest.raises(ReleaseError, match=r"v1 in .* is damaged: model.safetensors: content changed"):
        reg.checkout(REPO, "v1")
    with pytest.raises(ReleaseError, match="invalid repo id"):
        reg.publish(Path(a.location), "../escape")


# ------------------------------------------------------------------------------------------- save methods


def test_merged_16bit_casts_float32_and_keeps_16bit_bytes(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    facts = stage_release(tiny_model_dir, tmp_path / "a")
    src, out = load_file(tiny_model_dir / "model.safetensors"), load_file(tmp_path / "a" / "model.safetensors")
    assert facts["dtype"] == "bfloat16" and {t.dtype for t in out.values()} == {torch.bfloat16}
    assert all(torch.equal(out[k], src[k].to(torch.bfloat16)) for k in src)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["dtype"] == "bfloat16"
    assert not (tmp_path / "a" / ".complete").exists()  # only model and tokenizer files are released
    stage_release(tmp_path / "a", tmp_path / "b")  # already 16-bit: copied unchanged
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == (tmp_path / "a" / "model.safetensors").read_bytes()


def _adapter(tiny_model_dir: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    (out / "metrics.json").write_text("{}")  # training leftovers must not be released
    return out


def test_lora_and_merge_from_adapter(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    adapter = _adapter(tiny_model_dir, tmp_path / "adapter")
    stage_release(adapter, tmp_path / "lora", "lora")
    names = {p.name for p in (tmp_path / "lora").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
    assert "metrics.json" not in names and "model.safetensors" not in names
    with pytest.raises(ReleaseError, match="holds a full model"):
        stage_release(tiny_model_dir, tmp_path / "bad", "lora")
    # merged_16bit from an adapter merges it into the base (the base's weights change).
    stage_release(adapter, tmp_path / "merged", "merged_16bit")
    merged, base = load_file(tmp_path / "merged" / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert merged[key].dtype == torch.bfloat16 and not torch.equal(merged[key], base[key].to(torch.bfloat16))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA: 4-bit would run")
def test_merged_4bit_needs_cuda_and_bitsandbytes(tiny_model_dir, tmp_path):
    with pytest.raises(ReleaseError, match="merged_4bit needs CUDA and bitsandbytes.*merged_16bit"):
        stage_release(tiny_model_dir, tmp_path / "q4", "merged_4bit")
    with pytest.raises(ReleaseError, match="unknown save method"):
        stage_release(tiny_model_dir, tmp_path / "x", "merged_8bit")


# ------------------------------------------------------------------------------------------- model card


def test_model_card_has_every_section_and_is_deterministic():
    card = render_model_card(
        {
            **CARD,
            "repo_id": REPO,
            "save_method": "merged_16bit",
            "gguf": [
                {
                    "file": "model-Q4_K_M.gguf",
                    "quantization": "Q4_K_M",
                    "size_bytes": 4_400_000_000,
                    "rel_error": 0.157,
                    "top1_agreement": 0.73,
                    "verified": True,
                }
            ],
        }
    )
    assert card == render_model_card(
        {
            **CARD,
            "repo_id": REPO,
            "save_method": "merged_16bit",
            "gguf": [
                {
                    "file": "model-Q4_K_M.gguf",
                    "quantization": "Q4_K_M",
                    "size_bytes": 4_400_000_000,
                    "rel_error": 0.157,
                    "top1_agreement": 0.73,
                    "verified": True,
                }
            ],
        }
    )
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == CARD["base_model"] and "kto" in meta["tags"] and "gguf" in meta["tags"]
    for needle in (
        "d" * 64,
        "| n_desirable | 70 |",
        "Desirable share: **0.5833** (allowed band [0.2, 0.8])",
        "| beta | 0.1 |",
        "| lora.r | 16 |",
        "| eval_loss | 0.4931 |",
        "| model-Q4_K_M.gguf | Q4_K_M | 4.1 GiB |",
        "0.157",
        "| lora_adapter | d4e5f6 |",
        f'AutoModelForCausalLM.from_pretrained("{REPO}"',
        f"llama-cli --hf-repo {REPO} --hf-file model-Q4_K_M.gguf",
        f"ollama run hf.co/{REPO}:Q4_K_M",
    ):
        assert needle in card, needle
    local = render_model_card({"base_model": "/tmp/cache/tiny", "save_method": "lora", "repo_id": REPO})
    assert "base_model" not in yaml.safe_load(local.split("---")[1])  # the Hub rejects local paths there
    assert "AutoPeftModelForCausalLM" in local and "ollama" not in local


# ------------------------------------------------------------------------------------------- Dagster


def _hub_run_config(server: FakeHub, gates: dict | None = None) -> dict:
    resources = {
        "release_target": {"config": {"target": "hub", "endpoint": server.endpoint, "repo_id": REPO, "backoff_s": 0.01}}
    }
    if gates:
        resources["quality_gates"] = {"config": gates}
    return {"resources": resources}


def _step_failure(result, step: str) -> str:
    return "\n".join(
        e.event_specific_data.error.message for e in result.all_events if e.is_step_failure and e.step_key == step
    )


@pytest.mark.slow
def test_dagster_release_to_the_hub_is_gated_idempotent_and_keeps_the_token_out(project, hub):
    import dagster as dg

    from kto_pipeline.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    with project.instance() as instance:
        assert job.execute_in_process(instance=instance, run_config=_hub_run_config(hub)).success
        meta = project.latest("hub_release")
        assert meta["target"] == "hub" and meta["created"] and meta["revision"] == hub.repos[REPO].branches["main"]
        adapter, merged = project.latest("lora_adapter"), project.latest("merged_model")
        card = hub.file_bytes(REPO, "README.md").decode()
        assert f"| eval_loss | {adapter['eval_loss']:.4g} |" in card and merged["data_version"] in card
        assert "Desirable share:" in card and "| training.beta |" in card
        release_info = json.loads(hub.file_bytes(REPO, "kto_release.json"))
        assert release_info["lineage"]["merged_model"] == merged["data_version"]
        assert hub.file_bytes(REPO, "tokenizer.json") == (Path(merged["path"]) / "tokenizer.json").read_bytes()

        # Materializing again with nothing new: no commit, same revision.
        commits = hub.count("commit")
        again = job.execute_in_process(
            instance=instance, run_config=_hub_run_config(hub), asset_selection=[dg.AssetKey("hub_release")]
        )
        assert again.success and hub.count("commit") == commits
        assert project.latest("hub_release")["created"] is False

        # A failing eval_loss blocks the release in the same run (training and merge are cached)...
        gated = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config=_hub_run_config(hub, {"max_eval_loss": -1.0}),
            asset_selection=[dg.AssetKey(k) for k in ("lora_adapter", "merged_model", "hub_release")],
        )
        assert not gated.success and hub.count("commit") == commits
        succeeded = {e.step_key for e in gated.all_events if e.is_step_success}
        assert "lora_adapter" in succeeded and not {"merged_model", "hub_release"} & succeeded
        # ...and in any later run, until the check passes on the current adapter.
        alone = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config=_hub_run_config(hub),
            asset_selection=[dg.AssetKey("hub_release")],
        )
        assert "release blocked by quality gates: eval_loss failed on lora_adapter" in _step_failure(
            alone, "hub_release"
        )
        assert job.execute_in_process(
            instance=instance, run_config=_hub_run_config(hub), asset_selection=[dg.AssetKey("lora_adapter")]
        ).success  # check passes again

        # A dataset whose label balance fails blocks a later release of the (older) model.
        bad = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config=_hub_run_config(hub, {"min_desirable_share": 0.95}),
            asset_selection=[dg.AssetKey("kto_dataset")],
        )
        assert not bad.success
        blocked = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config=_hub_run_config(hub),
            asset_selection=[dg.AssetKey("hub_release")],
        )
        assert not blocked.success
        assert "release blocked by quality gates: label_balance failed on kto_dataset" in _step_failure(
            blocked, "hub_release"
        )
        assert hub.count("commit") == commits

    # The token reached the server, but none of the instance's storage (runs, events, logs, configs).
    assert any(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)
    stored = [f for f in project.home.rglob("*") if f.is_file()]
    assert any(f.suffix == ".db" for f in stored)
    for f in stored + [f for f in project.artifacts.rglob("*") if f.is_file()]:
        assert TOKEN.encode() not in f.read_bytes(), f


# ------------------------------------------------------------------------------------------- kto upload


def test_kto_upload_to_the_hub_with_a_token_flag(hub, tiny_model_dir, monkeypatch, capsys):
    from kto_pipeline.cli import main

    monkeypatch.delenv("HF_TOKEN")
    args = [
        "upload",
        str(tiny_model_dir),
        REPO,
        "--target",
        "hub",
        "--endpoint",
        hub.endpoint,
        "--public",
        "--tag",
        "v1",
        "--token",
        TOKEN,
    ]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "--token puts the token in your shell history" in err and TOKEN not in out + err
    assert "hub: tester/tiny-kto v1 ->" in out and "[new version]" in out
    assert hub.repos[REPO].private is False and "v1" in hub.repos[REPO].tags
    assert main(args) == 0 and "unchanged" in capsys.readouterr()[0] and hub.count("commit") == 1
    assert main(["upload", str(tiny_model_dir), REPO, "--save-method", "lora"]) == 1
    assert "holds a full model" in capsys.readouterr()[1]


def test_kto_upload_create_gguf_releases_verified_files(tiny_model_dir, tmp_path, capsys):
    """`--create-gguf` runs the real GGUF export; the released Q4_K_M file then chats in llama.cpp."""
    import shutil

    from kto_pipeline.cli import main
    from kto_pipeline.inference import KTOInference

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    # llama.cpp puts a space after special tokens (transformers' legacy=True); until the tiny preset's
    # tokenizer says so itself, the export's tokenization check would (rightly) reject its files.
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**cfg, "legacy": True}))
    assert (
        main(
            [
                "upload",
                str(model),
                "me/tiny-kto",
                "--root",
                str(tmp_path / "art"),
                "--create-gguf",
                "--gguf-quantizations",
                "Q4_K_M",
                "Q8_0",
            ]
        )
        == 0
    )
    version = LocalRegistry(tmp_path / "art").resolve("me/tiny-kto")
    assert {p.name for p in version.glob("*.gguf")} == {"model-Q4_K_M.gguf", "model-Q8_0.gguf"}  # not the F16 base
    out = capsys.readouterr().out  # each released file with its verification figures, then what to run next
    assert re.search(
        r"^  model-Q4_K_M\.gguf: [\d.]+ MB, [\d.]+ bits/weight, rel\. error [\d.e-]+, top-1 [\d.]+% over "
        r"\d+ positions, KL [\d.e-]+, tokenization matches$",
        out,
        re.M,
    ), out
    assert f"kto chat {version.resolve()}" in out or f"kto chat {version}" in out
    card = (version / "README.md").read_text()
    assert re.search(r"\| model-Q4_K_M\.gguf \| Q4_K_M \| [\d.]+ KiB \| [\d.]+ \| [\d.e-]+ \| [\d.]+ \|", card), card
    assert "ollama run hf.co/me/tiny-kto:Q4_K_M" in card
    with KTOInference(version / "model-Q4_K_M.gguf", n_ctx=256) as bot:
        hello = [{"role": "user", "content": "Hello!"}]
        assert bot.backend.has_template  # the chat template travelled into the GGUF metadata
        answer = bot.chat(hello, temperature=0, max_new_tokens=4)
        assert isinstance(answer, str) and answer == bot.chat(hello, temperature=0, max_new_tokens=4)


def test_kto_upload_reports_an_unexpected_error_in_plain_words(tmp_path, capsys):
    from kto_pipeline.cli import main

    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "merge_info.json").write_text("{not json")
    args = ["upload", str(broken), "me/broken", "--root", str(tmp_path / "art")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "kto upload failed, nothing was released: JSONDecodeError: Expecting property name" in err
    assert "--verbose shows the stack trace" in err and "Traceback" not in err
    with pytest.raises(json.JSONDecodeError):
        main([*args, "--verbose"])
