"""The VRAM planner (kto_pipeline.training.memory) and `kto plan`."""

import json

import pytest

from kto_pipeline.cli import main
from kto_pipeline.config import ALL_LINEAR, ATTENTION, get_config
from kto_pipeline.training.arch import KNOWN, Arch, arch_for
from kto_pipeline.training.memory import dry_run_report, estimate, pick_micro_batch, with_budget

# Peaks measured on an H100 (benchmarks/RESULTS.md): Llama-3.1-8B shape, 4-bit, LoRA r=16 on all linear layers
MEASURED = [
    ("unsloth", 2, 2048, 7.00),
    ("unsloth", 4, 512, 6.53),
    ("unsloth", 4, 2048, 7.96),
    ("unsloth", 8, 2048, 9.88),
    ("unsloth", 16, 2048, 13.84),
    ("transformers", 4, 2048, 14.76),
]


def bench_config():
    return get_config("7b", {"model": {"model_name": "meta-llama/Llama-3.1-8B"}, "lora": {"r": 16, "alpha": 16}})


def test_parameter_counts_of_known_architectures():
    # published sizes: 3.09B, 7.25B, 8.03B, 13.0B, 20.9B
    sizes = {k: Arch.from_config(k, c).params / 1e9 for k, c in KNOWN.items()}
    assert sizes["qwen2.5-3b"] == pytest.approx(3.09, abs=0.02)
    assert sizes["mistral-7b"] == pytest.approx(7.25, abs=0.02)
    assert sizes["llama-3.1-8b"] == pytest.approx(8.03, abs=0.02)
    assert sizes["llama-2-13b"] == pytest.approx(13.02, abs=0.03)
    assert sizes["gpt-oss-20b"] == pytest.approx(20.9, abs=0.1)
    assert (
        Arch.from_config("x", KNOWN["llama-3.1-8b"]).lora_params(16, get_config("tiny").lora.target_modules)
        == 41_943_040
    )  # what PEFT/Unsloth reported on the GPU
    # gpt-oss-20b at r=128, as Unsloth 2026.10 reported them: MLP targets put an adapter on each of the 32 experts
    oss = Arch.from_config("x", KNOWN["gpt-oss-20b"])
    assert oss.lora_params(128, ALL_LINEAR) == 1_479_278_592
    assert oss.lora_params(128, ATTENTION) == 63_700_992


@pytest.mark.parametrize("backend,micro,seq,measured", MEASURED)
def test_estimate_matches_measured_peaks(backend, micro, seq, measured):
    e = estimate(bench_config(), backend=backend, micro_batch=micro, seq=seq)
    assert e.peak_allocated_gib == pytest.approx(measured, rel=0.03)


# Steady-state peaks (second optimizer step) of each preset on an H100, random weights of the preset's architecture,
# one micro-batch of max_seq_length rows (benchmarks/plan_check.py, benchmarks/results/plan_check_h100.jsonl)
MEASURED_PRESETS = [
    ("3b", {}, 5.28),
    ("7b", {}, 7.53),
    ("13b", {}, 10.24),
    ("7b", {"model": {"use_unsloth": "never"}}, 12.41),
    ("20b", {}, 16.32),  # attention-only LoRA (the preset)
    ("20b", {"lora": {"target_modules": ALL_LINEAR}}, 30.33),
    ("20b", {"lora": {"target_modules": ALL_LINEAR}, "training": {"per_device_train_batch_size": 2}}, 28.22),
]


@pytest.mark.parametrize("preset,overrides,measured", MEASURED_PRESETS)
def test_estimate_of_each_preset_errs_on_the_safe_side(preset, overrides, measured):
    # never more than 1% below what was measured (a plan that fits must fit), at most 8% above it
    planned = estimate(get_config(preset, overrides)).peak_allocated_gib
    assert measured * 0.99 <= planned <= measured * 1.08


def test_presets_against_24_gib():
    for size in ("3b", "7b", "13b", "20b"):
        assert estimate(get_config(size)).fits(24), size
    long = get_config("13b", {"training": {"per_device_train_batch_size": 16}, "model": {"max_seq_length": 4096}})
    assert not estimate(long).fits(24)
    # plain PEFT needs more than Unsloth for the same run, 16-bit weights more than 4-bit
    c = get_config("7b")
    assert estimate(c, backend="transformers").peak_allocated_gib > estimate(c).peak_allocated_gib
    assert estimate(get_config("7b", {"model": {"load_in_4bit": False}})).weights_gib > 3 * estimate(c).weights_gib


def test_architecture_from_local_config(tmp_path, tiny_model_dir):
    assert (
        arch_for(str(tiny_model_dir)).hidden == json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"]
    )
    assert arch_for("tiny").vocab == arch_for(str(tiny_model_dir / "config.json")).vocab
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 8,\n oops}')
    with pytest.raises(ValueError, match=r"config.json: not valid JSON .*line 2"):
        arch_for(str(bad))
    bad.write_text('{"hidden_size": 8}')
    with pytest.raises(ValueError, match="no 'num_attention_heads'"):
        arch_for(str(tmp_path))
    with pytest.raises(ValueError, match="no architecture known for 'acme/foo-7b'.*config.json"):
        arch_for("acme/foo-7b")


def test_planner_picks_the_largest_micro_batch_that_fits():
    c = bench_config()  # effective batch 32
    micro, accum = pick_micro_batch(c, 20)
    assert micro * accum == 32 and micro == 16  # 16 x 2048 plans ~14.9 GiB on the card, 32 x 2048 ~26
    assert estimate(c, micro_batch=micro).fits(20) and not estimate(c, micro_batch=32).fits(20)
    assert pick_micro_batch(c, 6) == (4, 8)  # nothing fits: unchanged
    planned = with_budget(
        get_config(
            "7b", {"model": {"model_name": "llama-3.1-8b"}, "lora": {"r": 16}, "training": {"memory_budget_gib": 20.0}}
        )
    )
    assert planned.training.per_device_train_batch_size == 16
    assert with_budget(c) is c  # no budget: the micro-batch as given


def test_kto_plan_command(capsys):
    assert main(["plan", "--model-size", "7b"]) == 0
    out = capsys.readouterr().out
    assert "mistral-7b" in out and "fits 24 GiB" in out and "--batch-size" in out
    assert out.rstrip().splitlines()[-1] == "Train: kto train --model-size 7b --batch-size 4 --gradient-accumulation 8"
    assert main(["plan", "--model-size", "13b", "--batch-size", "16", "--max-seq-length", "4096"]) == 1
    out = capsys.readouterr().out
    assert "does NOT fit 24 GiB" in out
    # the verdict comes last, in plain words, with the command that fits
    assert out.rstrip().splitlines()[-2].startswith("Does NOT fit 24 GiB: ~26.93 GiB on the card at micro-batch 16")
    assert (
        "kto train --model-size 13b --max-seq-length 4096 --batch-size 8 --gradient-accumulation 32"
        in out.rstrip().splitlines()[-1]
    )
    assert main(["plan", "--model-name", "acme/unknown"]) == 2
    assert "no architecture known" in capsys.readouterr().err
    assert "fits 24 GiB" in dry_run_report(get_config("20b"))
    # LoRA on gpt-oss's experts: the plan says what it costs and what attention-only would leave
    assert main(["plan", "--model-size", "20b", "--lora-target-modules", *ALL_LINEAR]) == 1
    out = capsys.readouterr().out
    assert "LoRA on each of the 32 experts' MLPs: 13.18 GiB" in out and "leaves 17.14 GiB" in out
    assert "unavailable" in dry_run_report(get_config("7b", {"model": {"model_name": "acme/unknown"}}))


def test_planner_plans_for_the_backend_that_will_run(monkeypatch):
    """On a CUDA machine without Unsloth, 'auto' trains with transformers + PEFT: plan for that, not for Unsloth."""
    import importlib.util

    import torch

    from kto_pipeline.training.model import backend_for, use_unsloth

    auto, never = get_config("7b"), get_config("7b", {"model": {"use_unsloth": "never"}})
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "unsloth" else real_find_spec(name, *a)
    )
    assert backend_for(auto, planning=True) == "transformers" and backend_for(never, planning=True) == "transformers"
    assert estimate(auto).backend == "transformers"
    assert not use_unsloth(auto)  # and loading agrees: the same decision
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # planning ahead on a CPU machine
    assert backend_for(auto, planning=True) == "unsloth" and estimate(auto).backend == "unsloth"
    assert backend_for(auto) == "transformers"  # while loading here runs transformers
    always = get_config("7b", {"model": {"use_unsloth": "always"}})
    assert backend_for(always, planning=True) == "unsloth"
    with pytest.raises(RuntimeError, match="use_unsloth='always' needs a CUDA GPU"):
        use_unsloth(always)


def test_packed_micro_batches_are_planned_by_their_real_tokens(capsys):
    from kto_pipeline.training.memory import packed_tokens

    def llama(**training):
        return get_config(
            "7b",
            {
                "model": {"model_name": "llama-3.1-8b"},
                "lora": {"r": 16},
                "training": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 16, **training},
            },
        )  # effective batch 128

    # the worst micro-batch is its longest rows, each cut at max_seq_length
    assert packed_tokens([100, 5000, 300, 200], 2, 2048) == 2048 + 300
    # given the order training walks the rows in: its largest micro-batch of consecutive rows
    assert packed_tokens([100, 5000, 300, 200], 2, 2048, order=[0, 2, 1, 3]) == 2048 + 200
    assert packed_tokens([100, 5000, 300, 200], 2, 2048, order=[3, 2, 0, 1]) == 2048 + 100
    short = [900] * 500 + [2000] * 3  # chat-like rows with a few long ones
    assert pick_micro_batch(llama(), 20, row_tokens=short) == (16, 8)  # padded: lengths change nothing
    assert pick_micro_batch(llama(packing=True), 20) == (32, 4)  # packed, every row at max_seq_length
    micro, accum = pick_micro_batch(llama(packing=True), 20, row_tokens=short)
    assert (micro, accum) == (64, 2)  # 3 x 2000 + 61 x 900 = 60,900 real tokens fit 20 GiB; 128 rows do not
    assert not estimate(llama(packing=True), micro_batch=128, tokens=packed_tokens(short, 128, 2048)).fits(20)
    assert (
        with_budget(llama(packing=True, memory_budget_gib=20.0), row_tokens=short).training.per_device_train_batch_size
        == 64
    )
    # plain transformers' SDPA adds its [tokens, tokens] mask: 23,400^2 bytes ~ 0.51 GiB
    t = get_config(
        "7b",
        {
            "model": {"model_name": "llama-3.1-8b", "use_unsloth": "never"},
            "lora": {"r": 16},
            "training": {"packing": True},
        },
    )
    plain = get_config("7b", {"model": {"model_name": "llama-3.1-8b", "use_unsloth": "never"}, "lora": {"r": 16}})
    assert estimate(t, tokens=23_400).activations_gib - estimate(plain, tokens=23_400).activations_gib == pytest.approx(
        23_400**2 / 2**30
    )

    # Unsloth, measured packed (benchmarks/RESULTS.md, issue 20): 16 rows x 2048 packed peaked at 11.67 GiB allocated,
    # 14.36 with the fused reference forward (twice the tokens, no grad)
    def packed_peak(fuse: bool) -> float:
        c = get_config(
            "7b",
            {
                "model": {"model_name": "llama-3.1-8b"},
                "lora": {"r": 16},
                "training": {"packing": True, "fuse_reference": fuse},
            },
        )
        return estimate(c, backend="unsloth", tokens=16 * 2048).peak_allocated_gib

    assert packed_peak(False) == pytest.approx(11.67, rel=0.03) and packed_peak(True) == pytest.approx(14.36, rel=0.03)
    # the fused path's sweep on the H200 (flash varlen; RESULTS.md, issue 20, run 6) and run 7's largest micro-batch
    # (22,732 real tokens of rows of mixed lengths): the plan within 5% of every measured peak
    fused = get_config(
        "7b",
        {
            "model": {"model_name": "llama-3.1-8b"},
            "lora": {"r": 16},
            "training": {"packing": True, "fuse_reference": True},
        },
    )
    for tokens, measured in ((8192, 8.64), (16384, 10.58), (24576, 12.52), (32768, 14.46), (22_732, 12.16)):
        assert estimate(fused, backend="unsloth", tokens=tokens).peak_allocated_gib == pytest.approx(measured, rel=0.05)
    assert main(["plan", "--model-size", "7b", "--packing", "--budget-gib", "20"]) == 0
    out = capsys.readouterr().out
    assert "packed (training.packing): a micro-batch may hold up to" in out and "real tokens in 20 GiB" in out
