"""Merge a LoRA adapter into 16-bit base weights and save safetensors + tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kto_pipeline.artifacts import dir_digest

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")


def merge_adapter(base_path: str, adapter_dir: Path, out_dir: Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """Load the base in its own dtype (never 4-bit: merging into quantized weights loses precision)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto", trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    base_files = [Path(base_path) / name for name in TOKENIZER_FILES if (Path(base_path) / name).is_file()]
    if base_files:
        # The base's own files, byte for byte: a re-save drops tokenizer.model (which llama.cpp's converter
        # needs for a SentencePiece vocabulary) and load-time-only settings such as `legacy`.
        for path in base_files:
            shutil.copyfile(path, out_dir / path.name)
    else:  # a Hub id: the tokenizer as training saved it
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(out_dir))
    info = {"base_model": base_path, "dtype": str(merged.dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in merged.parameters())}
    (out_dir / "merge_info.json").write_text(json.dumps(info, indent=2))
    return {**info, **dir_digest(out_dir, "*.safetensors")}
