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
        ds = datasets.load_dataset(name, data_files=data_file or None, split=split)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError...)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        hint = ("offline mode is on: only cached datasets and local folders work" if offline else
                "no network? set HF_HUB_OFFLINE=1 to use the local cache, or pass a local folder or --local-file")
        raise DataFileError(f"Hugging Face dataset {label}: could not be loaded ({type(e).__name__}: {reason}); "
                            f"{hint}") from None
    if not isinstance(ds, datasets.Dataset):
        raise DataFileError(f"Hugging Face dataset {label}: expected one split, got {type(ds).__name__}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{xxhash.xxh3_64_hexdigest(label.encode())}.parquet"
    tmp = path.with_suffix(f".partial-{os.getpid()}")
    ds.to_parquet(str(tmp))
    tmp.replace(path)
    return path, label
