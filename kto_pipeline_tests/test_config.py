"""Config dataclasses, presets, the seed's Python API, and the Dagster config derived from them."""

import dataclasses

import pytest

from kto_pipeline.config import PRESETS, SECTIONS, Config, apply_overrides, get_7b_config, get_config
from kto_pipeline.defs.config import TrainConfig


def test_seed_python_api():
    config = get_7b_config()
    config.training.learning_rate = 1e-6
    config.training.num_train_epochs = 2
    assert config.model.model_name == PRESETS["7b"]["model"]["model_name"]
    assert config.training.per_device_train_batch_size * config.training.gradient_accumulation_steps == 32
    custom = Config()
    custom.lora.r = 32
    assert custom.lora.r == 32 and Config().lora.r == 16  # no shared mutable defaults
    assert Config.from_dict(config.to_dict()) == config


def test_every_field_is_documented():
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_overrides_and_errors():
    c = apply_overrides(get_config("tiny"), {"training": {"learning_rate": 0.1, "seed": None}})
    assert c.training.learning_rate == 0.1 and c.training.seed == get_config("tiny").training.seed
    assert c.fingerprint() != get_config("tiny").fingerprint()
    with pytest.raises(ValueError, match="unknown field training.lr"):
        apply_overrides(c, {"training": {"lr": 1}})
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("70b")


def test_dagster_config_mirrors_dataclasses():
    tc = TrainConfig(preset="3b", training={"max_steps": 7})
    resolved = tc.resolve()
    assert resolved.training.max_steps == 7
    assert resolved.model.model_name == PRESETS["3b"]["model"]["model_name"]
    for section, cls in SECTIONS.items():
        derived = type(getattr(tc, section)).model_fields
        assert set(derived) == {f.name for f in dataclasses.fields(cls)}
        assert all(derived[name].description for name in derived)
