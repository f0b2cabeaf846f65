"""Length-grouped batching, when the reference is precomputed, and the reference-model shortcuts."""

import random

import pytest

from kto_pipeline.config import get_config
from kto_pipeline.training.trainer import (
    drop_reference_adapter,
    fast_reference_pass,
    length_grouped_order,
    model_fingerprint,
    wants_precompute,
)


def padded_tokens(lengths, order, b):
    """Tokens computed for main rows (x_i, y_i) and KTO's KL rows (x_i, y_{i-1}), each batch padded to its max."""
    total = 0
    for s in range(0, len(order), b):
        batch = order[s : s + b]
        total += len(batch) * max(lengths[i][0] + lengths[i][1] for i in batch)
        total += len(batch) * max(lengths[batch[j]][0] + lengths[batch[j - 1]][1] for j in range(len(batch)))
    return total


def test_grouped_order_is_a_permutation_of_full_similar_batches():
    rng = random.Random(0)
    lengths = [(int(rng.lognormvariate(5.2, 0.9)), int(rng.lognormvariate(5.6, 0.8))) for _ in range(1001)]
    order = length_grouped_order(lengths, 4, seed=3)
    assert sorted(order) == list(range(1001))
    assert order == length_grouped_order(lengths, 4, seed=3)  # deterministic: a resumed run sees the same batches
    assert order != length_grouped_order(lengths, 4, seed=4)
    longest = max(range(1001), key=lambda i: sum(lengths[i]))
    assert longest in order[:4]  # an out-of-memory shows at step 1
    shuffled = list(range(1001))
    random.Random(1).shuffle(shuffled)
    real = 2 * sum(p + c for p, c in lengths)
    assert padded_tokens(lengths, order, 4) < 1.15 * real < 0.75 * padded_tokens(lengths, shuffled, 4)


def test_precompute_only_when_it_saves_work():
    c = get_config(
        "tiny",
        {
            "training": {
                "per_device_train_batch_size": 4,
                "gradient_accumulation_steps": 2,
                "max_steps": -1,
                "num_train_epochs": 1.0,
            }
        },
    )
    assert not wants_precompute(c, 80)  # one epoch: the same reference passes, just moved (and measured slower)
    assert wants_precompute(get_config("tiny", {"training": {"num_train_epochs": 2.0, "max_steps": -1}}), 80)
    four = {"per_device_train_batch_size": 4}  # 16 rows: 4 steps an epoch
    assert wants_precompute(get_config("tiny", {"training": {**four, "max_steps": 12}}), 16)  # 12 steps > 4 per epoch
    assert not wants_precompute(get_config("tiny", {"training": {**four, "max_steps": 3}}), 16)
    assert not wants_precompute(
        get_config("tiny", {"training": {"precompute_ref_log_probs": False, "num_train_epochs": 2.0, "max_steps": -1}}),
        80,
    )
    assert wants_precompute(get_config("tiny", {"training": {"precompute_ref_log_probs": True}}), 16)


def test_no_precompute_with_several_processes(monkeypatch):
    """TRL's rank 0 writes the precomputed scores into its own temp folder (our datasets live in memory); the other
    ranks looked for them in theirs and failed: with several processes the reference is scored in each step."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not wants_precompute(
        get_config("tiny", {"training": {"per_device_train_batch_size": 4, "max_steps": 12}}), 16
    )


@pytest.fixture(scope="module")
def peft_tiny(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


def test_reference_adapter_is_dropped_only_while_it_equals_the_base(peft_tiny):
    import torch

    peft_tiny.add_adapter("ref", peft_tiny.peft_config["default"])
    assert drop_reference_adapter(peft_tiny) and list(peft_tiny.peft_config) == ["default"]
    # a trained (non-zero) adapter: its copy is not the base model, keep it
    with torch.no_grad():
        next(p for n, p in peft_tiny.named_parameters() if "lora_B" in n).add_(0.1)
    peft_tiny.add_adapter("ref", peft_tiny.peft_config["default"])
    assert not drop_reference_adapter(peft_tiny) and "ref" in peft_tiny.peft_config
    peft_tiny.delete_adapter("ref")


def test_model_fingerprint_tells_weights_apart_and_replaces_trl_hash(peft_tiny):
    import torch
    import trl.trainer.kto_trainer as kto
    from trl import KTOTrainer

    before = model_fingerprint(peft_tiny)
    assert model_fingerprint(peft_tiny) == before
    w = peft_tiny.get_base_model().model.embed_tokens.weight
    with torch.no_grad():
        w[0, 0] += 1.0
    assert model_fingerprint(peft_tiny) != before
    with torch.no_grad():
        w[0, 0] -= 1.0
    original = kto.hash_module
    with fast_reference_pass(KTOTrainer):
        assert kto.hash_module is model_fingerprint
    assert kto.hash_module is original
