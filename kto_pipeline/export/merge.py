"""Merge a LoRA adapter into 16-bit base weights and save safetensors + tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kto_pipeline.artifacts import dir_digest


def merge_adapter(base_path: str, adapter_dir: Path, out_dir: Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """Load the base in its own dtype (never 4-bit: merging into quantized weights loses precision)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto", trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(out_dir))
    info = {"base_model": base_path, "dtype": str(merged.dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in merged.parameters())}
    (out_dir / "merge_info.json").write_text(json.dumps(info, indent=2))
    return {**info, **dir_digest(out_dir, "*.safetensors")}
