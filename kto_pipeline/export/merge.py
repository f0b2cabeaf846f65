"""Merge a LoRA adapter into 16-bit base weights and save safetensors + tokenizer.

Every preset trains on a pre-quantized 4-bit checkpoint (unsloth/*-bnb-4bit). Merging into those weights as
loaded would give back a 4-bit model (PEFT re-quantizes the merged weights): not 16-bit, and llama.cpp's
converter cannot read it. So for such a base the adapter goes into 16-bit weights instead, as the plan says:
- "original" (default): the checkpoint's 16-bit original (Unsloth's merged_16bit does the same; Unsloth measured
  that folding into the dequantized weights instead raises Qwen2.5's perplexity by ~20%). Named by
  `base_16bit`, else looked up (Unsloth's name map where installed, the presets' table, the name without its
  -bnb-4bit suffix). A Hub id downloads on first use.
- "dequantize": the 4-bit weights dequantized, so exactly the model that was trained; offline, no download.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kto_pipeline.artifacts import dir_digest
from kto_pipeline.patches import drop_bnb_weight_conversions
from kto_pipeline.reports import MergeInfo

TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
QUANTIZED_BASES = ("original", "dequantize")
# The presets' checkpoints and their 16-bit originals (from Unsloth's mapper, for machines without unsloth).
SIXTEEN_BIT = {
    "unsloth/Qwen2.5-3B-Instruct-bnb-4bit": "unsloth/Qwen2.5-3B-Instruct",
    "unsloth/mistral-7b-v0.3-bnb-4bit": "unsloth/mistral-7b-v0.3",
    "unsloth/llama-2-13b-bnb-4bit": "unsloth/llama-2-13b",
    "unsloth/gpt-oss-20b-unsloth-bnb-4bit": "unsloth/gpt-oss-20b",
}


class MergeError(RuntimeError):
    """The merge cannot be done as configured; the message says what to change."""


def read_config(model: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """config.json of a local model folder or a Hub id (the Hub cache when offline)."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MergeError(f"{path} has no config.json: not a model folder")
        return json.loads((path / "config.json").read_text())
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code).to_dict()
    except (OSError, ValueError) as e:
        raise MergeError(f"cannot read the config of base model {model!r}: {str(e).splitlines()[0]}") from None


def quantization(config: dict[str, Any]) -> str | None:
    """'bnb-4bit' / 'bnb-8bit' / another quant_method for a pre-quantized checkpoint; None for plain weights."""
    q = config.get("quantization_config")
    if not q:
        return None
    if q.get("quant_method") == "bitsandbytes":
        return "bnb-4bit" if q.get("load_in_4bit") or q.get("_load_in_4bit") else "bnb-8bit"
    return str(q.get("quant_method", "unknown"))


def original_of(model: str) -> str | None:
    """The 16-bit checkpoint a pre-quantized one was made from, where that can be told from its name."""
    mapped = _unsloth_map().get(model)
    if mapped:
        return mapped
    if model in SIXTEEN_BIT:
        return SIXTEEN_BIT[model]
    for suffix in ("-unsloth-bnb-4bit", "-bnb-4bit"):
        if model.endswith(suffix) and not Path(model).exists():
            return model[: -len(suffix)]
    return None


def _unsloth_map() -> dict[str, str]:
    """Unsloth's own table (unsloth/models/mapper.py, where unsloth is installed), read as a file: importing the
    unsloth package would patch transformers and needs a GPU."""
    import importlib.util

    spec = importlib.util.find_spec("unsloth")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "mapper.py"
    try:
        loader = importlib.util.spec_from_file_location("_unsloth_mapper", path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        return dict(module.INT_TO_FLOAT_MAPPER)
    except Exception:  # noqa: BLE001 - a changed or missing file: fall back to the table below
        return {}


@dataclass(frozen=True)
class MergePlan:
    """What the adapter is merged into: `source` is loaded (dequantized when `dequantize`)."""

    base: str
    source: str
    quantized: str | None
    dequantize: bool

    @property
    def key(self) -> str:
        """'' when the base is merged as it is; else a short hash of the plan (part of the output's version)."""
        if not self.quantized:
            return ""
        return hashlib.sha256(f"{self.source}|{self.dequantize}".encode()).hexdigest()[:8]

    def describe(self) -> str:
        if self.dequantize:
            return f"{self.base} ({self.quantized}, dequantized to 16-bit)"
        return f"{self.source} (16-bit original of {self.base})" if self.quantized else self.base


def plan_merge(
    base: str, quantized_base: str = "original", base_16bit: str | None = None, trust_remote_code: bool = False
) -> MergePlan:
    if quantized_base not in QUANTIZED_BASES:
        raise MergeError(f"quantized_base must be one of {', '.join(QUANTIZED_BASES)}, not {quantized_base!r}")
    quant = quantization(read_config(base, trust_remote_code))
    if quant is None:  # plain weights: merged into as they are (base_16bit is for quantized bases only)
        return MergePlan(base, base, None, False)
    if quant != "bnb-4bit":
        raise MergeError(
            f"base model {base} is quantized with {quant}; merging supports plain and bitsandbytes "
            "4-bit checkpoints only: set base_16bit to its 16-bit weights"
        )
    if quantized_base == "dequantize":
        return MergePlan(base, base, quant, True)
    source = base_16bit or original_of(base)
    if source is None:
        raise MergeError(
            f"base model {base} is a pre-quantized 4-bit checkpoint and its 16-bit original is unknown: set "
            "base_16bit to it (Hub id or folder), or quantized_base='dequantize' to merge into the "
            "dequantized 4-bit weights (offline; exactly the model that was trained)"
        )
    if quantization(read_config(source, trust_remote_code)) is not None:
        raise MergeError(f"base_16bit {source} is itself quantized: name the 16-bit checkpoint")
    return MergePlan(base, source, quant, False)


def _load_base(plan: MergePlan, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    if not plan.dequantize:
        # Never 4-bit: merging into quantized weights loses precision and stays quantized.
        return AutoModelForCausalLM.from_pretrained(plan.source, dtype="auto", trust_remote_code=trust_remote_code)
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise MergeError(
            f"quantized_base='dequantize' reads the 4-bit weights of {plan.base} with bitsandbytes, "
            "which is not installed: pip install '.[gpu]' (or bitsandbytes alone)"
        )
    config = read_config(plan.base, trust_remote_code)
    compute = config["quantization_config"].get("bnb_4bit_compute_dtype") or "bfloat16"
    device = "cuda:0" if _fits_on_gpu(plan.base, factor=4) else "cpu"  # dequantizing is far faster on a GPU
    model = AutoModelForCausalLM.from_pretrained(
        plan.base, dtype=compute, device_map={"": device}, trust_remote_code=trust_remote_code
    )
    model.dequantize()  # every Linear4bit -> nn.Linear in the compute dtype; drops quantization_config
    # transformers 5 keeps the loading's bnb deserialization step to reverse on save, which it cannot do
    # (NotImplementedError); the weights are plain now, so there is nothing to reverse.
    drop_bnb_weight_conversions(model)
    return model


def _fits_on_gpu(model: str, factor: float) -> bool:
    """Whether `factor` x the checkpoint's safetensors (4-bit -> 16-bit: at most 4x) fit in free GPU memory."""
    import torch

    if not torch.cuda.is_available() or not Path(model).is_dir():
        return False
    size = sum(p.stat().st_size for p in Path(model).glob("*.safetensors"))
    return factor * size * 1.1 < torch.cuda.mem_get_info()[0]


def merge_adapter(
    base_path: str, adapter_dir: Path, out_dir: Path, trust_remote_code: bool = False, plan: MergePlan | None = None
) -> dict[str, Any]:
    """Merge adapter_dir into the base `plan` names (default: plan_merge(base_path)); save into out_dir."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    plan = plan or plan_merge(base_path, trust_remote_code=trust_remote_code)
    base = _load_base(plan, trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    if quantization(json.loads((out_dir / "config.json").read_text())):
        raise MergeError(f"the merged model in {out_dir} is still quantized; this is a bug, please report it")
    base_files = [Path(base_path) / name for name in TOKENIZER_FILES if (Path(base_path) / name).is_file()]
    if base_files:
        # The base's own files, byte for byte: a re-save drops tokenizer.model (which llama.cpp's converter
        # needs for a SentencePiece vocabulary) and load-time-only settings such as `legacy`.
        for path in base_files:
            shutil.copyfile(path, out_dir / path.name)
    else:  # a Hub id: the tokenizer as training saved it
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(out_dir))
    info = {
        "base_model": base_path,
        "merged_into": plan.describe(),
        "dtype": str(merged.dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in merged.parameters()),
    }
    MergeInfo.of(info).write(out_dir)
    return {**info, **dir_digest(out_dir, "*.safetensors")}
