"""Packed (padding-free) KTO passes and the fused reference forward give the padded path's numbers (tiny model, CPU,
fp32): per-row log-probs, the loss and the first step's gradient norm."""

import pytest

from kto_pipeline.config import get_config

REL = 1e-3  # the bar; fp32 on the CPU lands orders of magnitude inside it


def tiny(**training):
    return get_config("tiny", {"training": {"per_device_train_batch_size": 8, **training}})


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, kto_data, cache):
    """One trainer whose packing and reference fusion are switched per case; its adapter moved off zero, so the
    policy differs from the reference and the KL estimate is not clamped to 0."""
    import torch

    from kto_pipeline.training.model import load_for_training
    from kto_pipeline.training.trainer import build_trainer

    config = tiny()
    trainer, _ = build_trainer(
        config, load_for_training(config, cache), kto_data, tmp_path_factory.mktemp("packed"), []
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return trainer


@pytest.fixture(scope="module")
def batch(trainer):
    """A micro-batch with both labels (every KTO metric is defined) and rows of mixed lengths (or packing is moot)."""
    for b in trainer.get_train_dataloader():
        lengths = b["attention_mask"].sum(1)
        if 0 < int(b["label"].sum()) < len(b["label"]) and lengths.min() < lengths.max():
            return b
    pytest.fail("no micro-batch of the sample data has both labels and mixed lengths")


def set_mode(trainer, packing: bool, fuse: bool) -> None:
    trainer.pack_stats.enabled, trainer.fuse_reference = packing, fuse


def row_logps(trainer, batch, prefix=""):
    import torch

    ids, am, cm = (batch[f"{prefix}{k}"] for k in ("input_ids", "attention_mask", "completion_mask"))
    with torch.no_grad():
        out = trainer.model(
            input_ids=ids, attention_mask=am, labels=ids.masked_fill(cm == 0, -100), use_cache=False, fused_lm_head=True
        )
    return out.log_probs.sum(-1), out.entropy.sum(-1)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("prefix", ["", "KL_"])
def test_packed_rows_score_as_padded(trainer, batch, prefix, attention):
    """Both attention backends of plain transformers get the block-diagonal mask from the restarting positions."""
    base = trainer.model.get_base_model()
    before = base.config._attn_implementation
    base.set_attn_implementation(attention)
    try:
        check_rows(trainer, batch, prefix)
    finally:
        base.set_attn_implementation(before)


def check_rows(trainer, batch, prefix):
    import torch

    set_mode(trainer, packing=False, fuse=False)
    padded, padded_entropy = row_logps(trainer, batch, prefix)
    set_mode(trainer, packing=True, fuse=False)
    calls, tokens = trainer.pack_stats.calls, trainer.pack_stats.tokens
    packed, packed_entropy = row_logps(trainer, batch, prefix)
    assert trainer.pack_stats.calls == calls + 1  # it did pack ...
    assert trainer.pack_stats.tokens - tokens == int(batch[f"{prefix}attention_mask"].sum())  # ... every real token
    assert torch.allclose(packed, padded, rtol=REL, atol=0)
    assert torch.allclose(packed_entropy, padded_entropy, rtol=REL, atol=0)


def test_rows_do_not_see_each_other(trainer, batch):
    """Changing the first row changes only the first row's log-prob: attention stays inside each packed row."""
    import torch

    set_mode(trainer, packing=True, fuse=False)
    before, _ = row_logps(trainer, batch)
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    n = int(batch["attention_mask"][0].sum())
    changed["input_ids"][0, : n - 1] = torch.roll(changed["input_ids"][0, : n - 1], 1)
    after, _ = row_logps(trainer, changed)
    assert not torch.isclose(after[0], before[0], rtol=REL)
    assert torch.equal(after[1:], before[1:]) or torch.allclose(after[1:], before[1:], rtol=1e-6, atol=0)


def loss_and_grad(trainer, batch, packing: bool, fuse: bool):
    import torch

    set_mode(trainer, packing, fuse)
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in trainer.model.parameters() if p.grad is not None))
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if v}
    trainer.model.zero_grad()
    return float(loss), float(norm), metrics


def test_loss_and_first_gradient_equal_the_padded_path(trainer, batch):
    base_loss, base_norm, base = loss_and_grad(trainer, batch, packing=False, fuse=False)
    assert base["kl"] > 0 and base_norm > 0  # the adapter is off zero: the comparison below is not trivial
    for packing, fuse in [(True, False), (False, True), (True, True)]:
        loss, norm, m = loss_and_grad(trainer, batch, packing, fuse)
        assert loss == pytest.approx(base_loss, rel=REL), (packing, fuse)
        assert norm == pytest.approx(base_norm, rel=REL), (packing, fuse)
        for key in ("kl", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "entropy"):
            assert m[key] == pytest.approx(base[key], rel=REL, abs=1e-6), (packing, fuse, key)


def test_fused_reference_pass_equals_trl_two_passes(trainer, batch):
    """The precompute pass's batch: TRL's two reference forwards against the one fused (and packed) forward."""
    import torch

    set_mode(trainer, packing=False, fuse=False)
    ref, ref_kl = trainer.compute_ref_log_probs(trainer.model, batch)
    set_mode(trainer, packing=True, fuse=True)
    fused, fused_kl = trainer.compute_ref_log_probs(trainer.model, batch)
    assert torch.allclose(fused, ref, rtol=REL, atol=0) and torch.allclose(fused_kl, ref_kl, rtol=REL, atol=0)


def test_packing_flags_must_be_booleans():
    with pytest.raises(ValueError, match="training.packing"):
        tiny(packing="false")
    with pytest.raises(ValueError, match="training.fuse_reference"):
        tiny(fuse_reference=1)


def test_precompute_pass_runs_packed_and_fused(tmp_path, kto_data, cache):
    """TRL's precompute pass runs inside KTOTrainer.__init__: it is packed and fused too, and stores what the
    padded two-pass scoring gives."""
    import torch

    from kto_pipeline.training.model import load_for_training
    from kto_pipeline.training.trainer import build_trainer

    config = tiny(packing=True, fuse_reference=True, precompute_ref_log_probs=True)
    pre, _ = build_trainer(config, load_for_training(config, cache), kto_data, tmp_path, [])
    assert pre.pack_stats.calls > 0 and pre.pack_stats.tokens < pre.pack_stats.padded  # packed, padding left out
    batch = next(iter(pre.get_train_dataloader()))
    set_mode(pre, packing=False, fuse=False)
    ref, ref_kl = pre.compute_ref_log_probs(pre.model, batch)  # TRL's own two padded forwards
    assert torch.allclose(batch["ref_logps"], ref, rtol=REL, atol=0)
    assert torch.allclose(batch["ref_KL_logps"], ref_kl, rtol=REL, atol=0)
