"""On a CUDA machine with Unsloth (`pip install -e '.[gpu]'`): the GPU-only paths of training.

Skipped elsewhere (CI has no GPU); run on the lent GPU with `python -m pytest kto_pipeline_tests/test_gpu.py`
(benchmarks/results/gpu_tests_h200.txt holds the last run).
"""

from __future__ import annotations

import importlib.util
import math

import pytest

from kto_pipeline.config import get_config

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("unsloth") is None,
    reason="needs a CUDA GPU and unsloth (pip install -e '.[gpu]')",
)


def test_unsloth_evaluates_the_released_adapter_beside_the_new_one(kto_data, tmp_path):
    """The champion comparison on Unsloth's PEFT model: a second adapter loaded, evaluated, removed."""
    from kto_pipeline.training.run import train

    released = train(get_config("tiny"), kto_data, tmp_path / "released", tmp_path / "cache", log=lambda s: None)
    assert released["backend"] == "unsloth" and math.isfinite(released["eval_loss"])
    untrained = get_config("tiny", {"training": {"learning_rate": 1e-9}})
    new = train(
        untrained, kto_data, tmp_path / "new", tmp_path / "cache", log=lambda s: None, champion=tmp_path / "released"
    )
    assert new["champion"]["eval_loss"] == pytest.approx(released["eval_loss"], rel=1e-2)
    assert new["eval_loss"] > new["champion"]["eval_loss"]  # the untrained adapter is the worse one
    assert not list((tmp_path / "new").rglob("*champion*")), "the champion adapter was saved with the new one"


def test_packed_attention_is_one_flash_kernel_per_layer_with_the_per_row_result(tmp_path):
    """patches.unsloth_flash_varlen: on torch 2.11 Unsloth runs a packed sequence's attention row by row; with the
    patch, one flash varlen kernel per layer computes the same logits and LoRA gradients. Fails when an Unsloth or
    torch upgrade moves what the patch sets, or when the patched path stops being taken."""
    from torch.profiler import ProfilerActivity, profile

    from kto_pipeline.patches import unsloth_flash_varlen
    from kto_pipeline.training.model import load_for_training

    loaded = load_for_training(get_config("tiny", {"training": {"packing": True}}), tmp_path / "cache")
    model = loaded.model
    model.train()
    lengths = [37, 5, 120, 64, 1, 77]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size - 1, (1, sum(lengths)), generator=gen).cuda()
    positions = torch.cat([torch.arange(n) for n in lengths])[None].cuda()

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=ids, position_ids=positions, attention_mask=None).logits.float()
        logits.logsumexp(-1).mean().backward()
        grads = [p.grad.detach().clone() for n, p in model.named_parameters() if "lora_B" in n]
        return logits.detach(), grads

    try:
        unsloth_flash_varlen(False)
        per_row, per_row_grads = run()
        assert unsloth_flash_varlen(True), "the patch did not install (torch already has GQA varlen? then drop it)"
        run()  # compile / warm up before counting kernels
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            packed, packed_grads = run()
    finally:
        unsloth_flash_varlen(True)
    names = [e.name for e in prof.events()]
    layers = model.config.num_hidden_layers
    flash = sum(n == "aten::_flash_attention_forward" for n in names)  # forward, + its recompute under checkpointing
    assert flash and flash % layers == 0, (flash, layers)
    assert not [n for n in names if "scaled_dot_product" in n or "cudnn_attention" in n], "a per-row SDPA call"
    assert torch.allclose(packed, per_row, rtol=2e-2, atol=2e-2)
    assert per_row_grads and all(g.abs().sum() > 0 for g in packed_grads)
    for a, b in zip(packed_grads, per_row_grads):
        assert (a - b).norm() <= 2e-2 * b.norm()
