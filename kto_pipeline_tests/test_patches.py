"""Each patch in kto_pipeline.patches rests on a private library API; these fail when an upgrade moves it.

They check what the patch relies on (the attribute exists, the library calls it where we assume, with the
arguments we assume) and that the patch does what it says and is undone afterwards.
"""

from __future__ import annotations

import inspect

import pytest

from kto_pipeline import patches


def test_trl_chunked_logprob_is_the_kernel_kto_calls_and_the_stand_in_matches_its_call():
    import torch
    import trl.trainer.utils as trl_utils

    assert hasattr(trl_utils, "_ChunkedLogProbFunction"), "TRL renamed its fused LM-head kernel"
    # Where TRL calls it, with the argument order TorchChunkedLogProb.apply takes.
    import ast

    from kto_pipeline.training.torch_logprob import TorchChunkedLogProb

    calls = [
        n
        for n in ast.walk(ast.parse(inspect.getsource(trl_utils)))
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "apply"
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "_ChunkedLogProbFunction"
    ]
    assert calls, "TRL no longer calls _ChunkedLogProbFunction.apply"
    params = list(inspect.signature(TorchChunkedLogProb.apply).parameters)
    for call in calls:
        assert len(call.args) <= len(params) and {k.arg for k in call.keywords} <= set(params), (
            f"TRL calls the kernel with arguments the stand-in does not take: {ast.unparse(call)}"
        )

    original = trl_utils._ChunkedLogProbFunction
    try:
        installed = patches.install_torch_chunked_logprob()
        assert installed == (original is None)
        assert trl_utils._ChunkedLogProbFunction is (TorchChunkedLogProb if original is None else original)
    finally:
        trl_utils._ChunkedLogProbFunction = original
    # The stand-in computes log p(target) exactly.
    torch.manual_seed(0)
    hidden, weight = torch.randn(5, 8), torch.randn(11, 8)
    targets = torch.randint(0, 11, (5,))
    logp, *_ = TorchChunkedLogProb.apply(hidden, weight, None, targets, 1.0, 4, None, 1.0, ())
    expected = torch.log_softmax(hidden @ weight.t(), -1).gather(1, targets[:, None]).squeeze(1)
    assert torch.allclose(logp, expected, atol=1e-5)


def test_trl_hash_module_and_precompute_are_where_the_reference_pass_patch_swaps_them():
    import trl.trainer.kto_trainer as kto_module
    from trl import KTOTrainer

    assert callable(getattr(kto_module, "hash_module", None)), "TRL moved hash_module"
    assert callable(getattr(KTOTrainer, "_precompute_ref_logps", None)), "TRL renamed _precompute_ref_logps"
    source = inspect.getsource(KTOTrainer)
    assert "hash_module(" in source and "self._precompute_ref_logps(" in source, (
        "KTOTrainer no longer calls hash_module / _precompute_ref_logps: the fast reference pass does nothing"
    )

    original_hash, original_pre = kto_module.hash_module, KTOTrainer._precompute_ref_logps
    seen = []
    with patches.trl_reference_pass(KTOTrainer, lambda m: "fingerprint", seen.append):
        assert kto_module.hash_module(object()) == "fingerprint"

        class Stub:
            model = "the model"

        try:
            KTOTrainer._precompute_ref_logps(Stub())  # our hook runs first, then TRL's (which fails on a stub)
        except Exception:  # noqa: BLE001 - TRL's own method cannot run on a stub; only the hook is checked
            pass
        assert seen == ["the model"]
    assert kto_module.hash_module is original_hash and KTOTrainer._precompute_ref_logps is original_pre


def test_transformers_gguf_gate_is_what_blocks_the_bundled_gguf_module():
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    assert callable(getattr(gguf_utils, "is_gguf_available", None)), "transformers moved is_gguf_available"
    assert "is_gguf_available(" in inspect.getsource(gguf_utils.load_gguf_checkpoint), (
        "load_gguf_checkpoint no longer asks is_gguf_available: the gate patch is not needed (or not enough)"
    )
    original = gguf_utils.is_gguf_available
    with patches.transformers_gguf_gate():
        assert gguf_utils.is_gguf_available() is True
        import gguf

        assert all(hasattr(gguf, n) for n in patches.GGUF_NAMES)
    assert gguf_utils.is_gguf_available is original


def test_llama_cpp_builds_its_model_params_from_llama_model_default_params():
    pytest.importorskip("llama_cpp")
    import llama_cpp
    import llama_cpp.llama_cpp as api

    params = api.llama_model_default_params()
    assert hasattr(params, "use_extra_bufts"), "llama.cpp dropped use_extra_bufts"
    assert "llama_model_default_params()" in inspect.getsource(llama_cpp.Llama.__init__), (
        "Llama.__init__ no longer starts from llama_model_default_params(): extra buffer types are back on"
    )
    original = api.llama_model_default_params
    for value in (False, True):
        with patches.llama_model_params(use_extra_bufts=value):
            assert api.llama_model_default_params().use_extra_bufts is value
        assert api.llama_model_default_params is original


def test_transformers_saves_through_weight_conversions_whose_operations_name_their_module():
    import transformers.core_model_loading as cml

    assert 'getattr(model, "_weight_conversions"' in inspect.getsource(cml.revert_weight_conversion), (
        "save_pretrained no longer reverses model._weight_conversions: the patch is not needed (or not enough)"
    )
    assert "operations" in cml.WeightConverter.__slots__

    class Op:
        pass

    class BnbOp:
        pass

    BnbOp.__module__ = "transformers.integrations.bitsandbytes"

    class Conversion:
        def __init__(self, *ops):
            self.operations = list(ops)

    class Renaming:  # like cml.WeightRenaming: no operations
        pass

    class Model:
        pass

    m = Model()
    kept, renaming = Conversion(Op()), Renaming()
    m._weight_conversions = [kept, Conversion(BnbOp()), renaming, Conversion(Op(), BnbOp())]
    patches.drop_bnb_weight_conversions(m)
    assert m._weight_conversions == [kept, renaming]


def test_no_library_attribute_is_assigned_outside_the_patches_module():
    """The one-module rule, checked: assignments to attributes of trl/transformers/peft/llama_cpp modules or
    classes appear only in kto_pipeline/patches.py."""
    import ast
    from pathlib import Path

    import kto_pipeline

    libs = {"trl", "transformers", "peft", "llama_cpp", "unsloth", "gguf"}
    offenders = []
    for path in Path(kto_pipeline.__file__).parent.rglob("*.py"):
        if path.name == "patches.py":
            continue
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in libs:
                        aliases[a.asname or a.name.split(".")[0]] = a.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in libs:
                for a in node.names:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in aliases:
                    offenders.append(f"{path.name}:{node.lineno} {t.value.id}.{t.attr}")
    assert not offenders, offenders


def test_unsloth_flash_varlen_relies_on_torch_varlen_as_called():
    """patches.unsloth_flash_varlen: under torch.compile its stand-in calls torch's public varlen_attn with the
    arguments Unsloth passes (cu_seqlens for queries and keys, max lengths, scale, window_size). The kernel-level
    check (one flash call per layer, the per-row result) is test_gpu.py's; here, on any machine, the signature it
    relies on, and that without Unsloth (or CUDA) the patch changes nothing."""
    import importlib.util
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    from kto_pipeline.patches import unsloth_flash_varlen

    params = list(inspect.signature(varlen_attn).parameters)
    assert params[:7] == ["query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k"]
    assert {"scale", "window_size"} <= set(params)
    if importlib.util.find_spec("unsloth") is None:
        assert unsloth_flash_varlen() is False and unsloth_flash_varlen(False) is False
