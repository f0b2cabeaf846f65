"""One call from a model folder to a published release: stage the files, write the card, publish."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from kto_pipeline.release.card import gguf_rows, render_model_card
from kto_pipeline.release.content import ReleaseError, ReleaseResult
from kto_pipeline.release.hub import HubTarget
from kto_pipeline.release.local import LocalRegistry
from kto_pipeline.release.save import stage_release
from kto_pipeline.reports import ReleaseRecord

log = logging.getLogger("kto_pipeline.release")
TARGETS = ("local", "hub")


def make_target(
    kind: str = "local", root: str | Path = "artifacts", endpoint: str | None = None, private: bool = True
) -> LocalRegistry | HubTarget:
    if kind == "local":
        return LocalRegistry(root)
    if kind == "hub":
        return HubTarget(endpoint=endpoint, private=private)
    raise ReleaseError(f"unknown release target {kind!r}; choose local or hub")


def _merge_gguf_facts(staged: list[dict], given: list[dict]) -> list[dict]:
    """Staged files (name, size) joined with the figures the caller knows (matched by file name)."""
    by_name = {row["file"]: row for row in gguf_rows(given)}
    return [{**by_name.get(s["file"], {}), "file": s["file"], "size_bytes": s["size_bytes"]} for s in staged]


def write_card(folder: Path, info: dict) -> None:
    (folder / "README.md").write_text(render_model_card(info), encoding="utf-8")
    # The same facts, machine-readable; sorted and timestamp-free so unchanged inputs give unchanged bytes.
    ReleaseRecord.of(info).write(folder)


def release_model(
    source: str | Path,
    repo_id: str,
    *,
    target: LocalRegistry | HubTarget,
    save_method: str = "merged_16bit",
    gguf_files: list[str | Path] = (),
    card_info: dict | None = None,
    tag: str | None = None,
    message: str | None = None,
    base_model: str | None = None,
    work_dir: str | Path | None = None,
) -> ReleaseResult:
    """Stage `source` with `save_method`, add GGUF files and the model card, publish to `target`."""
    with tempfile.TemporaryDirectory(prefix="kto-release-") as tmp:
        stage = Path(work_dir) if work_dir else Path(tmp) / "stage"
        facts = stage_release(source, stage, save_method, gguf_files, base_model=base_model)
        info = dict(card_info or {})
        info["repo_id"] = repo_id
        info["save_method"] = save_method
        info.setdefault("weights", {})
        info["weights"] = {**info["weights"], **{k: v for k, v in facts.items() if k in ("dtype", "quantization")}}
        info["gguf"] = _merge_gguf_facts(facts["gguf_files"], list(info.get("gguf") or []))
        if base_model and not info.get("base_model"):
            info["base_model"] = base_model
        write_card(stage, info)
        result = target.publish(stage, repo_id, tag=tag, message=message)
    log.info(
        "release %s of %s: %s (%s)", result.tag, repo_id, "new" if result.created else "unchanged", result.location
    )
    return result
