"""Merging into 16-bit weights when training ran on a pre-quantized 4-bit checkpoint (what every preset does).

The checkpoint is the tiny model quantized to bitsandbytes NF4 on the CPU and saved, like unsloth/*-bnb-4bit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kto_pipeline.config import get_config
from kto_pipeline.export.merge import MergeError, merge_adapter, original_of, plan_merge
from kto_pipeline_tests.conftest import RAW_SAMPLES, run_ok


def quantize_to(src: Path, dst: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    AutoModelForCausalLM.from_pretrained(src, quantization_config=q, device_map={"": "cpu"}).save_pretrained(dst)
    for f in src.iterdir():  # the tokenizer, as the Hub's 4-bit repos carry it
        if f.name.startswith("tokenizer") or f.suffix == ".jinja":
            shutil.copyfile(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def q4(tmp_path_factory, tiny_model_dir) -> Path:
    return quantize_to(tiny_model_dir, tmp_path_factory.mktemp("q4") / "tiny-bnb-4bit")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, q4) -> Path:
    """A real adapter, trained by kto_pipeline on the 4-bit checkpoint (transformers + PEFT on the CPU)."""
    from kto_pipeline.data.dataset import build_kto_dataset
    from kto_pipeline.training.run import train

    root = tmp_path_factory.mktemp("q4_train")
    build_kto_dataset(sorted(RAW_SAMPLES.glob("*.jsonl")), root / "data", eval_fraction=0.2)
    config = get_config("tiny", {"model": {"model_name": str(q4)}, "training": {"max_steps": 8}})
    train(config, root / "data", root / "adapter", root / "cache", log=lambda line: None)
    return root / "adapter"


def logits(model_or_dir, adapter_dir: Path | None = None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = model_or_dir
    if isinstance(model_or_dir, Path):
        model = AutoModelForCausalLM.from_pretrained(model_or_dir, device_map={"": "cpu"})
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    with torch.no_grad():
        return model(torch.tensor([[1, 10, 20, 30, 40, 50, 60, 70, 80, 90]])).logits.float()


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_plans(q4, tiny_model_dir):
    plain = plan_merge(str(tiny_model_dir))
    assert (plain.source, plain.key, plain.dequantize) == (str(tiny_model_dir), "", False)
    with pytest.raises(MergeError, match="16-bit original is unknown: set base_16bit"):
        plan_merge(str(q4))
    with pytest.raises(MergeError, match="is itself quantized"):
        plan_merge(str(q4), base_16bit=str(q4))
    with pytest.raises(MergeError, match="no config.json"):
        plan_merge(str(q4.parent))
    original = plan_merge(str(q4), base_16bit=str(tiny_model_dir))
    dequant = plan_merge(str(q4), "dequantize")
    # the output's version names what the adapter went into
    assert len({plain.key, original.key, dequant.key}) == 3
    assert original_of("unsloth/mistral-7b-v0.3-bnb-4bit") == "unsloth/mistral-7b-v0.3"
    assert original_of("unsloth/gpt-oss-20b-unsloth-bnb-4bit") == "unsloth/gpt-oss-20b"
    assert original_of("acme/model-bnb-4bit") == "acme/model" and original_of("acme/model") is None


def test_merges_into_16bit_weights(q4, adapter, tiny_model_dir, tmp_path):
    """Both choices give plain 16/32-bit safetensors; each equals the adapter on the base it names."""
    from safetensors import safe_open

    trained = logits(q4, adapter)  # what training optimized: the 4-bit base + the adapter
    on_original = logits(tiny_model_dir, adapter)
    assert rel(trained, logits(tiny_model_dir)) > 0.05, "the adapter did not move the model"
    results = {}
    for name, plan in (
        ("original", plan_merge(str(q4), base_16bit=str(tiny_model_dir))),
        ("dequantize", plan_merge(str(q4), "dequantize")),
    ):
        info = merge_adapter(str(q4), adapter, tmp_path / name, plan=plan)
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert "quantization_config" not in config
        with safe_open(str(tmp_path / name / "model.safetensors"), framework="pt") as st:
            assert {str(st.get_tensor(k).dtype) for k in st.keys()} == {"torch.float32"}
        assert (tmp_path / name / "tokenizer.model").is_file()
        results[name] = logits(tmp_path / name)
        assert info["merged_into"] == plan.describe()
    assert rel(results["original"], on_original) < 1e-5
    assert rel(results["dequantize"], trained) < 0.02
    # the choice matters: the 4-bit rounding alone moves the logits by more than that
    assert rel(results["original"], results["dequantize"]) > 0.05


@pytest.mark.slow
def test_merged_model_asset_on_a_4bit_base(project, q4, tiny_model_dir):
    """The real graph on a pre-quantized base: a helpful failure, then GGUF files from the dequantized merge."""
    train = {"ops": {"lora_adapter": {"config": {"model": {"model_name": str(q4)}, "training": {"max_steps": 4}}}}}
    run_ok(project.materialize_cli("raw_preferences,kto_dataset,lora_adapter", train))
    proc = project.materialize_cli("merged_model")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "16-bit original is unknown: set base_16bit" in out
    assert "Traceback" not in out.split("16-bit original is unknown")[0][-300:]
    config = {"ops": {"merged_model": {"config": {"quantized_base": "dequantize"}}}}
    run_ok(project.materialize_cli("merged_model,gguf_quantizations", config), timeout=600)
    merged = project.latest("merged_model")
    assert merged["merged_into"].endswith("(bnb-4bit, dequantized to 16-bit)")
    assert merged["lora_adapter"] == project.latest("lora_adapter")["data_version"]
    files = [r.data for r in project.latest("gguf_quantizations")["files"].records]
    assert [f["type"] for f in files] == ["F16", "Q4_K_M", "Q5_K_M", "Q8_0"] and all(f["passed"] for f in files)


def test_kto_upload_of_an_adapter_on_a_4bit_base(adapter, tiny_model_dir, tmp_path, capsys):
    from kto_pipeline.cli import main

    assert main(["upload", str(adapter), "me/q4-model", "--root", str(tmp_path)]) == 1
    assert "16-bit original is unknown" in capsys.readouterr().err
    assert (
        main(["upload", str(adapter), "me/q4-model", "--root", str(tmp_path), "--base-16bit", str(tiny_model_dir)]) == 0
    )
    released = tmp_path / "registry" / "me" / "q4-model" / "latest"
    assert "quantization_config" not in json.loads((released / "config.json").read_text())
    assert rel(logits(released), logits(tiny_model_dir, adapter)) < 0.01  # the release casts to bf16
