"""Save methods: what goes into a release folder, as the seed's upload tool offered them.

- merged_16bit (default): the merged model in 16-bit safetensors. A merged folder already in 16 bits is
  copied byte for byte; float32 tensors are cast (bfloat16 by default) so the release is half the size.
  Given a LoRA adapter folder instead, the adapter is merged into its base first.
- lora: the adapter only (adapter_config.json + adapter_model.safetensors + tokenizer).
- merged_4bit: bitsandbytes NF4 weights; needs CUDA and bitsandbytes, and says so elsewhere.

Only known model/tokenizer files are taken (no checkpoints, logs or pickles), so a release never ships
training state by accident.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import tempfile
from pathlib import Path

from kto_pipeline.release.content import ReleaseError

SAVE_METHODS = ("merged_16bit", "lora", "merged_4bit")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "*.tiktoken",
)
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _pick(src: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in src.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns))


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)  # a copy, not a link: the source folder may be rewritten later


def _check_safetensors_only(src: Path) -> None:
    if not list(src.glob("*.safetensors")):
        pickles = [p.name for p in src.glob("*.bin")] + [p.name for p in src.glob("*.pt")]
        hint = f" (found {', '.join(pickles)}: pickled weights are not released)" if pickles else ""
        raise ReleaseError(f"{src} holds no .safetensors weights{hint}")


def _copy_16bit(src: Path, dst: Path, dtype: str) -> dict:
    """Copy model files; cast float32 tensors to `dtype`. Already-16-bit files are copied unchanged."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if target is None:
        raise ReleaseError(f"merged_16bit dtype must be bfloat16 or float16, not {dtype!r}")
    if (src / "config.json").is_file() and json.loads((src / "config.json").read_text()).get("quantization_config"):
        raise ReleaseError(
            f"{src} holds quantized weights (config.json has a quantization_config), not a 16-bit "
            "model: release the merged_model folder, or use --save-method merged_4bit"
        )
    cast_any = False
    for f in _pick(src, MODEL_FILES + TOKENIZER_FILES):
        if f.suffix != ".safetensors":
            continue
        with safe_open(str(f), framework="pt") as st:
            meta = st.metadata() or {}
            tensors = {k: st.get_tensor(k) for k in st.keys()}
        if not any(t.dtype == torch.float32 for t in tensors.values()):
            _copy(f, dst / f.name)
            continue
        cast_any = True
        tensors = {k: (t.to(target) if t.dtype == torch.float32 else t).contiguous() for k, t in tensors.items()}
        save_file(tensors, str(dst / f.name), metadata={**meta, "format": "pt"})
    for f in _pick(src, MODEL_FILES + TOKENIZER_FILES):
        if f.suffix == ".safetensors":
            continue
        if f.name == "config.json" and cast_any:
            cfg = json.loads(f.read_text())
            cfg["dtype"] = dtype
            if "torch_dtype" in cfg:  # written by transformers 4
                cfg["torch_dtype"] = dtype
            (dst / f.name).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        elif f.name == "model.safetensors.index.json" and cast_any:
            index = json.loads(f.read_text())
            index.setdefault("metadata", {})["total_size"] = sum(
                (dst / name).stat().st_size for name in set(index["weight_map"].values())
            )
            (dst / f.name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        else:
            _copy(f, dst / f.name)
    return {"dtype": dtype if cast_any else "as-is", "cast_from_float32": cast_any}


def merge_adapter_dir(
    adapter_dir: Path,
    base_model: str | None,
    out: Path,
    quantized_base: str = "original",
    base_16bit: str | None = None,
) -> Path:
    """Merge with the lead's exporter (same code as the merged_model asset, same choices for a 4-bit base)."""
    from kto_pipeline.export.merge import MergeError, merge_adapter, plan_merge

    base = base_model or json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ReleaseError(f"{adapter_dir}/adapter_config.json names no base model; pass base_model=")
    try:
        merge_adapter(str(base), adapter_dir, out, plan=plan_merge(str(base), quantized_base, base_16bit))
    except MergeError as e:
        raise ReleaseError(str(e)) from None
    return out


def _save_4bit(src: Path, dst: Path) -> dict:
    """The real NF4 path: load the merged model through bitsandbytes on the GPU and serialize it."""
    import importlib.util

    import torch

    missing = [
        what
        for what, ok in (
            ("a CUDA GPU", torch.cuda.is_available()),
            ("bitsandbytes", importlib.util.find_spec("bitsandbytes") is not None),
        )
        if not ok
    ]
    if missing:
        raise ReleaseError(
            f"save method merged_4bit needs CUDA and bitsandbytes; missing here: {', '.join(missing)}. "
            "Install the gpu extra (pip install '.[gpu]') on a CUDA machine, or use --save-method merged_16bit."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(str(src), quantization_config=quant, device_map={"": 0})
    model.save_pretrained(str(dst), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(dst))
    return {"dtype": "nf4", "quantization": "bitsandbytes-nf4-double-quant"}


def stage_release(
    source: str | Path,
    out_dir: str | Path,
    save_method: str = "merged_16bit",
    gguf_files: list[str | Path] = (),
    base_model: str | None = None,
    dtype: str = "bfloat16",
) -> dict:
    """Fill out_dir (empty or absent) with the release's weight files; return facts for the model card.

    source: a merged model folder, or a LoRA adapter folder (adapter_config.json). GGUF files are copied
    to the folder's root under their own names.
    """
    src, out = Path(source), Path(out_dir)
    if save_method not in SAVE_METHODS:
        raise ReleaseError(f"unknown save method {save_method!r}; choose one of {', '.join(SAVE_METHODS)}")
    if not src.is_dir():
        raise ReleaseError(f"model folder {src} does not exist")
    if out.exists() and any(out.iterdir()):
        raise ReleaseError(f"staging folder {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    adapter = is_adapter_dir(src)
    facts: dict = {"save_method": save_method, "source": "lora_adapter" if adapter else "merged_model"}

    if save_method == "lora":
        if not adapter:
            raise ReleaseError(
                f"save method 'lora' publishes a LoRA adapter, but {src} holds a full model "
                "(no adapter_config.json); pass the adapter folder or use merged_16bit"
            )
        _check_safetensors_only(src)
        for f in _pick(src, ADAPTER_FILES + TOKENIZER_FILES):
            _copy(f, out / f.name)
        facts["adapter_config"] = json.loads((src / "adapter_config.json").read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="kto-merge-") as tmp:
            merged = merge_adapter_dir(src, base_model, Path(tmp) / "merged") if adapter else src
            _check_safetensors_only(merged)
            if save_method == "merged_16bit":
                facts.update(_copy_16bit(merged, out, dtype))
            else:
                facts.update(_save_4bit(merged, out))

    ggufs = []
    for g in gguf_files:
        g = Path(g)
        if not g.is_file() or g.suffix != ".gguf":
            raise ReleaseError(f"GGUF file {g} does not exist or is not a .gguf file")
        if (out / g.name).exists():
            raise ReleaseError(f"two GGUF files are named {g.name}")
        _copy(g, out / g.name)
        ggufs.append({"file": g.name, "size_bytes": g.stat().st_size})
    facts["gguf_files"] = ggufs
    return facts
