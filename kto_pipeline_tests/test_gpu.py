"""On a CUDA machine with Unsloth (`pip install -e '.[gpu]'`): the GPU-only paths of training.

Skipped elsewhere (CI has no GPU); run on the lent GPU with `python -m pytest kto_pipeline_tests/test_gpu.py`
(benchmarks/results/gpu_tests_h200.txt holds the last run).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from kto_pipeline.config import get_config

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("unsloth") is None,
    reason="needs a CUDA GPU and unsloth (pip install -e '.[gpu]')")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from kto_pipeline.data.dataset import build_kto_dataset

    out = tmp_path_factory.mktemp("data")
    build_kto_dataset(sorted((REPO / "data" / "raw").glob("*.jsonl")), out, eval_fraction=0.2)
    return out


def test_unsloth_evaluates_the_released_adapter_beside_the_new_one(data, tmp_path):
    """The champion comparison on Unsloth's PEFT model: a second adapter loaded, evaluated, removed."""
    from kto_pipeline.training.run import train

    released = train(get_config("tiny"), data, tmp_path / "released", tmp_path / "cache", log=lambda s: None)
    assert released["backend"] == "unsloth" and math.isfinite(released["eval_loss"])
    untrained = get_config("tiny", {"training": {"learning_rate": 1e-9}})
    new = train(untrained, data, tmp_path / "new", tmp_path / "cache", log=lambda s: None,
                champion=tmp_path / "released")
    assert new["champion"]["eval_loss"] == pytest.approx(released["eval_loss"], rel=1e-2)
    assert new["eval_loss"] > new["champion"]["eval_loss"]  # the untrained adapter is the worse one
    assert not list((tmp_path / "new").rglob("*champion*")), "the champion adapter was saved with the new one"
