"""The seed's presets and Python API, and the config fields its command-line overrides land on."""

import dataclasses

from kto_pipeline.config import (
    PRESETS,
    SECTIONS,
    Config,
    get_3b_config,
    get_7b_config,
    get_13b_config,
    get_20b_config,
    get_config,
)


def test_presets_match_the_seed():
    # seed README: micro-batch x accumulation = 32 (3b: 8, 7b: 4, 13b: 2, 20b: 4); the seed's
    # configs/training_config.py: Hub ids, sequence lengths, LoRA rank/alpha, the 20b beta
    expected = {
        "3b": ("unsloth/Qwen2.5-3B-Instruct-bnb-4bit", 2048, 8, 4, 32, 64),
        "7b": ("unsloth/mistral-7b-v0.3-bnb-4bit", 2048, 4, 8, 64, 128),
        "13b": ("unsloth/llama-2-13b-bnb-4bit", 2048, 2, 16, 64, 128),
        "20b": ("unsloth/gpt-oss-20b-unsloth-bnb-4bit", 4096, 4, 8, 128, 256),
    }
    getters = {"3b": get_3b_config, "7b": get_7b_config, "13b": get_13b_config, "20b": get_20b_config}
    for size, (name, seq, micro, accum, r, alpha) in expected.items():
        c = getters[size]()
        assert (
            c.model.model_name,
            c.model.max_seq_length,
            c.training.per_device_train_batch_size,
            c.training.gradient_accumulation_steps,
            c.lora.r,
            c.lora.alpha,
        ) == (name, seq, micro, accum, r, alpha)
        assert c.training.per_device_train_batch_size * c.training.gradient_accumulation_steps == 32
        assert c.model.load_in_4bit and c.lora.gradient_checkpointing and c.model.use_unsloth == "auto"
        assert c.training.optim == "auto"  # adamw_8bit on CUDA
    assert get_20b_config().training.beta == 0.05 and get_7b_config().training.beta == 0.1
    assert set(PRESETS) == {"tiny", "smol", "3b", "7b", "13b", "20b"}  # + the two that run offline


def test_seed_python_api_edits_stick():
    config = get_7b_config()
    config.training.learning_rate = 1e-6
    config.training.num_train_epochs = 2
    assert get_7b_config().training.learning_rate == 5e-7  # a fresh copy each call
    custom = Config()
    custom.model.model_name = "unsloth/custom-model"
    custom.lora.r = 32
    custom.training.per_device_train_batch_size = 2
    back = Config.from_dict(custom.to_dict())
    assert (back.model.model_name, back.lora.r, back.training.per_device_train_batch_size) == (
        "unsloth/custom-model",
        32,
        2,
    )


def test_every_seed_override_has_a_field():
    # --output-dir, --hf-token and --dry-run act on the CLI (artifact root, HF_TOKEN in the environment)
    seed_flags = {
        "--model-name": "model.model_name",
        "--max-seq-length": "model.max_seq_length",
        "--batch-size": "training.per_device_train_batch_size",
        "--gradient-accumulation": "training.gradient_accumulation_steps",
        "--learning-rate": "training.learning_rate",
        "--num-epochs": "training.num_train_epochs",
        "--max-steps": "training.max_steps",
        "--wandb": "training.wandb",
        "--wandb-project": "training.wandb_project",
        "--wandb-run-name": "training.wandb_run_name",
    }
    for flag, target in seed_flags.items():
        section, name = target.split(".")
        assert name in {f.name for f in dataclasses.fields(SECTIONS[section])}, flag
    # the seed's troubleshooting edits: warmup_ratio, dataloader_num_workers, gradient checkpointing
    c = get_config(
        "7b", {"training": {"warmup_ratio": 0.2, "dataloader_num_workers": 0}, "lora": {"gradient_checkpointing": True}}
    )
    assert c.training.warmup_ratio == 0.2


def test_fingerprint_ignores_what_does_not_change_weights():
    base = get_config("tiny")
    same = get_config(
        "tiny",
        {
            "training": {
                "wandb": True,
                "wandb_run_name": "x",
                "logging_steps": 5,
                "save_steps": 9,
                "dataloader_num_workers": 2,
            }
        },
    )
    assert same.fingerprint() == base.fingerprint()  # a re-run with W&B on still resumes the crashed one
    for change in (
        {"training": {"learning_rate": 1e-3}},
        {"lora": {"r": 4}},
        {"model": {"max_seq_length": 128}},
        {"training": {"group_by_length": False}},
    ):
        assert get_config("tiny", change).fingerprint() != base.fingerprint(), change


def test_train_flags_parse_to_typed_overrides():
    import argparse

    from kto_pipeline.cli.train import add_parser, overrides

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="cmd"))
    args = p.parse_args(
        [
            "train",
            "--batch-size",
            "2",
            "--learning-rate",
            "1e-4",
            "--memory-budget-gib",
            "20",
            "--wandb",
            "--packing",
            "--fuse-reference",
        ]
    )
    assert overrides(args) == {
        "training": {
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-4,
            "memory_budget_gib": 20.0,
            "wandb": True,
            "packing": True,
            "fuse_reference": True,
        }
    }
    assert get_config("7b", overrides(args)).training.memory_budget_gib == 20.0


def test_train_flags_reach_the_merge_and_data_parallel_config():
    import argparse

    from kto_pipeline.cli.train import add_parser, run_config

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="cmd"))
    args = p.parse_args(
        ["train", "--num-processes", "2", "--quantized-base", "dequantize", "--base-16bit", "acme/model"]
    )
    ops = run_config(args)["ops"]
    assert ops["lora_adapter"]["config"]["training"] == {"num_processes": 2}
    assert ops["merged_model"]["config"] == {"quantized_base": "dequantize", "base_16bit": "acme/model"}
    args.select = "kto_dataset"  # config only for the selected assets (Dagster rejects the rest)
    assert "merged_model" not in run_config(args)["ops"]
