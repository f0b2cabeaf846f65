"""Proof of learning, CI-sized: KTO on a slice of data/learning makes the model prefer concise answers on
held-out questions, measured with the real model (the full measurement is benchmarks/learning.py).

The tiny preset is a random model, so its greedy text means nothing; its log-probs still do. The measure is the
held-out margin log p(concise answer) - log p(verbose answer) under the chat template: training must raise it.
The control trains identically at learning rate 0 and must leave it where it was, so a rise cannot come from
the measurement or the plumbing.
"""

import json
import sys
from pathlib import Path

import pytest

from kto_pipeline.config import get_config
from kto_pipeline.training.run import train

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import learning  # noqa: E402  (the benchmark's data and measure)

TRAIN_PROMPTS = 40  # of 250: 72 rows, both labels
HELDOUT = 12
SCORED_TOKENS = 96  # the tiny model has 512 positions; a verbose answer alone is ~500 of its tokens


@pytest.fixture(scope="module")
def slice_dataset(tmp_path_factory) -> Path:
    """The first prompts' rows of data/learning/train.jsonl through the real data layer."""
    from kto_pipeline.data.dataset import build_kto_dataset

    root = tmp_path_factory.mktemp("learning")
    rows = (learning.DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()
    prompts = list(dict.fromkeys(json.loads(r)["prompt"] for r in rows))[:TRAIN_PROMPTS]
    keep = [json.loads(r) for r in rows if json.loads(r)["prompt"] in set(prompts)]
    # Only the start of each answer: a whole verbose answer is ~500 tiny-tokenizer tokens and would be dropped at
    # this max_seq_length (the completion is never cut); its first 40 words still carry the filler opener.
    for row in keep:
        row["completion"] = " ".join(row["completion"].split()[:40])
    (root / "slice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    build_kto_dataset([root / "slice.jsonl"], root / "data", eval_fraction=0.0)
    return root / "data"


def margin(model_dir: Path, adapter: Path | None = None) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    tok = AutoTokenizer.from_pretrained(model_dir)
    return learning.logprob_margin(model.eval(), tok, learning.heldout(HELDOUT), SCORED_TOKENS)


def test_heldout_is_not_trained_on():
    train_prompts = {json.loads(r)["prompt"] for r in (learning.DATA / "train.jsonl").read_text().splitlines()}
    held = learning.heldout()
    assert len(held) >= 40 and not train_prompts & {r["prompt"] for r in held}
    # the property is measurable on the references themselves
    assert all(learning.measure(r["concise"], True)["concise"] for r in held)
    assert not any(learning.measure(r["verbose"], True)["concise"] for r in held)
    assert all(learning.measure(r["verbose"], True)["filler"] for r in held)


@pytest.mark.slow
@pytest.mark.parametrize("lr", [3e-3, 0.0], ids=["trained", "lr0-control"])
def test_kto_raises_the_heldout_preference_for_concise_answers(lr, tmp_path, slice_dataset, cache):
    config = get_config(
        "tiny",
        {
            "model": {"max_seq_length": 256},
            "training": {"learning_rate": lr, "max_steps": 8, "per_device_train_batch_size": 8, "save_steps": 100},
        },
    )
    train(config, slice_dataset, tmp_path / "adapter", cache, log=lambda s: None)
    before = margin(cache / "tiny")
    after = margin(cache / "tiny", tmp_path / "adapter")
    if lr:
        assert after - before > 2.0, f"held-out margin {before:.2f} -> {after:.2f}: KTO did not learn concision"
    else:
        assert abs(after - before) < 1e-3, f"lr 0 moved the margin {before:.4f} -> {after:.4f}"
