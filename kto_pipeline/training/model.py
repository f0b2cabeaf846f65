"""Load the base model, tokenizer and LoRA setup for training: Unsloth on CUDA, else transformers+PEFT."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kto_pipeline.config import Config
from kto_pipeline.training.smol import build_smol_model
from kto_pipeline.training.tiny import build_tiny_model


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    peft_config: Any  # None when the model already carries its LoRA adapters (Unsloth)
    backend: str  # "unsloth" or "transformers"
    model_path: str  # what was loaded: a local path or a Hub id


# Base models built locally (no hub), once, under the artifact cache: name -> builder(out_dir) -> out_dir.
LOCAL_MODELS = {"tiny": build_tiny_model, "smol": build_smol_model}


def resolve_model_path(model_name: str, cache_dir: Path) -> str:
    """'tiny' / 'smol' -> the locally built model (built once under cache_dir); anything else unchanged."""
    if model_name in LOCAL_MODELS:
        return str(LOCAL_MODELS[model_name](cache_dir / model_name))
    return model_name


def local_model_name(path: str) -> str | None:
    """'tiny' or 'smol' when `path` names one of them, or is their folder under some artifact cache."""
    p = Path(path)
    return path if path in LOCAL_MODELS else p.name if p.name in LOCAL_MODELS and p.parent.name == "cache" else None


def backend_for(config: Config, planning: bool = False) -> str:
    """'unsloth' or 'transformers': the one Unsloth-or-not decision, for loading and for the memory planner.

    Unsloth runs where model.use_unsloth allows it and this machine has CUDA and unsloth installed. Planning
    (`planning=True`) may be for another machine: from a CPU one it assumes the GPU install (Unsloth), and
    'always' plans for Unsloth; but on a CUDA machine without unsloth, 'auto' trains with transformers + PEFT at
    ~2.5x Unsloth's memory, so that is what gets planned (else the plan would promise a fit that runs out of
    memory). Loading with 'always' where Unsloth cannot run fails rather than silently using transformers.
    """
    import torch

    choice = config.model.use_unsloth
    if choice == "never":
        return "transformers"
    cuda = torch.cuda.is_available()
    if cuda and importlib.util.find_spec("unsloth") is not None:
        return "unsloth"
    if planning and (choice == "always" or not cuda):
        return "unsloth"
    if choice == "always":
        raise RuntimeError("use_unsloth='always' needs a CUDA GPU and `pip install .[gpu]`")
    return "transformers"


def use_unsloth(config: Config) -> bool:
    return backend_for(config) == "unsloth"


def compute_dtype(config: Config):
    import torch

    if config.model.dtype != "auto":
        return getattr(torch, config.model.dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_for_training(config: Config, cache_dir: Path) -> LoadedModel:
    path = resolve_model_path(config.model.model_name, cache_dir)
    if use_unsloth(config):
        return _load_unsloth(config, path)
    return _load_transformers(config, path)


def _load_unsloth(config: Config, path: str) -> LoadedModel:
    from unsloth import FastLanguageModel  # must be imported before transformers patches apply

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=path,
        max_seq_length=config.model.max_seq_length,
        dtype=compute_dtype(config),
        load_in_4bit=config.model.load_in_4bit,
        trust_remote_code=config.model.trust_remote_code,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        bias="none",
        random_state=config.training.seed,
        use_gradient_checkpointing="unsloth" if config.lora.gradient_checkpointing else False,
    )
    if config.training.packing:  # one flash kernel per packed sequence, not one SDPA call per row (torch 2.11)
        from kto_pipeline.patches import unsloth_flash_varlen

        unsloth_flash_varlen()
    return LoadedModel(model, tokenizer, None, "unsloth", path)


def _load_transformers(config: Config, path: str) -> LoadedModel:
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": compute_dtype(config), "trust_remote_code": config.model.trust_remote_code}
    quantized = config.model.load_in_4bit and torch.cuda.is_available()
    if quantized:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(config),
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.lora.gradient_checkpointing)
    peft_config = PeftLoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return LoadedModel(model, tokenizer, peft_config, "transformers", path)
