"""A Hugging Face dataset as one more raw file: snapshot it to Parquet, then validate like any file.

`name` is what `datasets.load_dataset` takes: a Hub id ("trl-lib/kto-mix-14k"; from the local cache
when HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1, from the Hub when online) or a local dataset folder;
`data_file` picks one file inside it (the seed's --dataset-file). A dataset that cannot be loaded
fails with one line saying which and why — never a traceback from inside `datasets`.
"""

from __future__ import annotations

import os
from pathlib import Path

import xxhash

from kto_pipeline.data.readers import DataFileError


def source_label(name: str, data_file: str | None = None, split: str = "train") -> str:
    """How rows from this dataset name their source in reports and the quarantine."""
    return f"hf://{name}" + (f"/{data_file}" if data_file else "") + (f"[{split}]" if split != "train" else "")


def snapshot(name: str, folder: Path, *, data_file: str | None = None, split: str = "train") -> tuple[Path, str]:
    """Write the dataset's `split` to folder/<hash>.parquet; returns (path, source label)."""
    import datasets  # heavy import: only when a dataset is asked for

    label = source_label(name, data_file, split)
    try:
        ds = datasets.load_dataset(_cached_snapshot(name, data_file) or name, data_files=data_file or None, split=split)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError...)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        hint = (
            "offline mode is on: only cached datasets and local folders work"
            if offline
            else "no network? set HF_HUB_OFFLINE=1 to use the local cache, or pass a local folder or --local-file"
        )
        raise DataFileError(
            f"Hugging Face dataset {label}: could not be loaded ({type(e).__name__}: {reason}); {hint}"
        ) from None
    if not isinstance(ds, datasets.Dataset):
        raise DataFileError(f"Hugging Face dataset {label}: expected one split, got {type(ds).__name__}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{xxhash.xxh3_64_hexdigest(label.encode())}.parquet"
    tmp = path.with_suffix(f".partial-{os.getpid()}")
    ds.to_parquet(str(tmp))
    tmp.replace(path)
    return path, label


def _cached_snapshot(name: str, data_file: str | None) -> str | None:
    """Offline, the Hub cache's snapshot folder holding `data_file` of Hub dataset `name`, if it is there.

    `datasets` cannot reload a Hub dataset loaded with data_files from its own cache offline (the cached
    config's id hashes the resolved hf:// URLs, which offline it cannot resolve: huggingface/datasets#7551),
    but the file the online load downloaded is in the Hub cache: load that snapshot as a local folder.
    """
    import datasets
    from huggingface_hub import try_to_load_from_cache

    if not (datasets.config.HF_HUB_OFFLINE and data_file) or os.path.exists(name):
        return None
    try:
        path = try_to_load_from_cache(name, data_file, repo_type="dataset")
    except Exception:  # not a valid repo id: let load_dataset say what is wrong
        return None
    return path[: -len(data_file)] if isinstance(path, str) else None
