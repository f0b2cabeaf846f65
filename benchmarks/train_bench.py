#!/usr/bin/env python
"""KTO training benchmark on one GPU: plain TRL+PEFT+bitsandbytes, Unsloth+TRL defaults, and kto_pipeline.

Same synthetic data (a realistic mix of prompt/completion lengths up to max_length), same steps, same effective
batch, Llama-3.1-8B architecture with random weights (no hub on the GPU host), LoRA r=16 on all linear layers,
KTO with its KL term. Reports non-padding tokens/s, peak VRAM (allocated and reserved), the first-step loss on one
fixed batch, and MFU. Results go to benchmarks/RESULTS.md (by hand, from `table`).

    python benchmarks/train_bench.py build /dev/shm/llama8b              # random weights + word-level tokenizer
    python benchmarks/train_bench.py run /dev/shm/llama8b --out r.jsonl --variants a,b,c
    python benchmarks/train_bench.py table r.jsonl

`run` starts one process per backend (transformers / unsloth: Unsloth patches transformers and TRL on import,
so (a) must not share a process with it); inside the Unsloth process the variants share one loaded model and
the LoRA weights are reset before each. Every variant's numbers are appended to the JSONL as soon as they exist.
CPU smoke test of the plumbing (no Unsloth, no 4-bit): `build /tmp/m --arch smoke`, then `run ... --variants a,c`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PEAK_TFLOPS = 790.0  # bf16 dense, what an 8192^3 bf16 matmul reaches on these H100/H200s (KINDS.md: 788-798)

ARCHS: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-3.1-8B config.json, as far as shapes and RoPE go
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    "smoke": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1280,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_theta=10000.0,
    ),
}
N_SPECIAL = 256  # the last 256 ids are special tokens, as in Llama 3
EOS, PAD, UNK = "<|eot_id|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_0|>"

BUDGET_GIB = 20.0  # the target peak; kto_pipeline's planner picks the micro-batch under it
VARIANTS: dict[str, dict[str, Any]] = {
    "a": dict(label="(a) TRL + PEFT + bitsandbytes QLoRA", backend="transformers", trainer="trl"),
    "b": dict(label="(b) Unsloth + TRL defaults (the seed)", backend="unsloth", trainer="trl"),
    "c": dict(
        label="(c) kto_pipeline (memory_budget_gib=20: micro-batch from the planner)",
        backend="unsloth",
        trainer="ours",
        budget=BUDGET_GIB,
    ),
    # levers, each against its neighbour in the table
    "c_mb4": dict(label="(c) at the seed's micro-batch 4 (no budget)", backend="unsloth", trainer="ours"),
    "c_mb8": dict(label="(c) at micro-batch 8 x accumulation 2", backend="unsloth", trainer="ours", batch=8, accum=2),
    "c_noprecompute": dict(
        label="(c) without the precomputed reference (scored inside every step)",
        backend="unsloth",
        trainer="ours",
        budget=BUDGET_GIB,
        precompute=False,
    ),
    "c_nogroup": dict(
        label="(c) without length grouping", backend="unsloth", trainer="ours", budget=BUDGET_GIB, group_by_length=False
    ),
    "c_precompute": dict(
        label="(c) + precomputed reference log-probs (one epoch)",
        backend="unsloth",
        trainer="ours",
        budget=BUDGET_GIB,
        precompute=True,
    ),
    "c_mb4_precompute": dict(
        label="(c) at micro-batch 4 + precomputed reference log-probs",
        backend="unsloth",
        trainer="ours",
        precompute=True,
    ),
    "b_precompute": dict(
        label="(b) + TRL precompute_ref_log_probs (TRL's full-weight hash)",
        backend="unsloth",
        trainer="trl",
        precompute=True,
    ),
    "b_unchunked": dict(
        label="(b) with an unchunked LM head ([tokens, vocab] fp32 logits)",
        backend="unsloth",
        trainer="trl",
        lm_head="unchunked",
    ),
    "b_repeat": dict(label="(b) again, last: run-to-run spread", backend="unsloth", trainer="trl"),
    # issue 20: (b') and one lever per row, each against the row above it
    "b16": dict(
        label="(b') Unsloth + TRL at 16 x 1 (the micro-batch ours picks)",
        backend="unsloth",
        trainer="trl",
        batch=16,
        accum=1,
    ),
    "c_pack": dict(
        label="(c) + packed (padding-free) passes", backend="unsloth", trainer="ours", budget=BUDGET_GIB, packing=True
    ),
    "c_pack_fuse": dict(
        label="(c) + packed + fused reference forward (rows and KL rows in one)",
        backend="unsloth",
        trainer="ours",
        budget=BUDGET_GIB,
        packing=True,
        fuse_reference=True,
    ),
    "c_varlen": dict(
        label="(c) + packed + fused reference + one flash varlen kernel per packed sequence "
        "(patches.unsloth_flash_varlen)",
        backend="unsloth",
        trainer="ours",
        budget=BUDGET_GIB,
        packing=True,
        fuse_reference=True,
        varlen=True,
    ),
}


# ----------------------------------------------------------------------------------------------- model + data
def arch_config(arch: str) -> dict[str, Any]:
    """config.json fields of `arch`: the benchmark's own (ARCHS) or a preset's architecture (the planner's KNOWN)."""
    from kto_pipeline.training.arch import KNOWN

    return dict(ARCHS[arch]) if arch in ARCHS else dict(KNOWN[arch])


def build(out: Path, arch: str) -> None:
    """Random-init weights of `arch` (bf16 safetensors) and a word-level tokenizer: "w17" is token 17."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    cfg = arch_config(arch)
    vocab = cfg["vocab_size"]
    words = vocab - N_SPECIAL
    special = [f"<|reserved_special_token_{i}|>" for i in range(N_SPECIAL)]
    special[1], special[4], special[9] = "<|end_of_text|>", PAD, EOS  # Llama 3's ids 128001/128004/128009
    special[2] = "<|begin_of_text|>"
    table = {f"w{i}": i for i in range(words)} | {t: words + i for i, t in enumerate(special)}
    tok = Tokenizer(models.WordLevel(table, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(special)
    config = AutoConfig.for_model(
        cfg.pop("model_type", "llama"), **cfg, bos_token_id=words + 2, eos_token_id=words + 9, pad_token_id=words + 4
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        bos_token="<|begin_of_text|>",
        model_max_length=config.max_position_embeddings,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config)
    torch.set_default_dtype(torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size="5GB")
    fast.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"built {arch}: {n / 1e9:.2f}B params in {time.time() - t0:.0f}s -> {out}", flush=True)


def lognormal_lengths(rng, n: int, max_length: int) -> list[tuple[int, int]]:
    """(prompt, completion) token counts: lognormal, medians 180 and 280 tokens, the long tail cut at max_length
    (about 16% of rows above 1024 tokens, mean ~650: a chat/instruction feedback set, not a benchmark of extremes)."""
    out = []
    for _ in range(n):
        p = int(min(max(rng.lognormvariate(math.log(180), 0.9), 8), max_length * 0.9))
        c = int(min(max(rng.lognormvariate(math.log(280), 0.8), 4), max_length - p - 1))
        out.append((p, c))
    return out


def synth_rows(model_dir: Path, n: int, max_length: int, seed: int, fixed: tuple[int, int] | None = None):
    import random

    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"] - N_SPECIAL
    rng = random.Random(seed)
    if fixed:  # the warm-up batch: row i is the same whatever n is, labels alternate
        out = []
        for i in range(n):
            r = random.Random(seed * 100_003 + i)
            out.append(
                {
                    "prompt": " ".join(f"w{r.randrange(vocab)}" for _ in range(fixed[0])),
                    "completion": " " + " ".join(f"w{r.randrange(vocab)}" for _ in range(fixed[1])),
                    "label": i % 2 == 0,
                }
            )
        return out
    lengths = lognormal_lengths(rng, n, max_length)
    labels = [i % 2 == 0 for i in range(n)]
    rng.shuffle(labels)
    words = lambda k: " ".join(f"w{rng.randrange(vocab)}" for _ in range(k))  # noqa: E731
    return [{"prompt": words(p), "completion": " " + words(c), "label": lab} for (p, c), lab in zip(lengths, labels)]


def as_dataset(rows, tag: str):
    """A datasets.Dataset; `tag` makes its fingerprint unique, so no variant reuses another's cached reference."""
    from datasets import Dataset

    return Dataset.from_dict(
        {k: [r[k] for r in rows] for k in ("prompt", "completion", "label")} | {"bench_tag": [tag] * len(rows)}
    )


def write_kto_dir(rows, path: Path) -> Path:
    """The validated-dataset layout kto_pipeline.training reads: train.parquet + eval.parquet."""
    import pandas as pd

    path.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(
        {
            "prompt": [r["prompt"] for r in rows],
            "completion": [r["completion"] for r in rows],
            "label": [r["label"] for r in rows],
            "messages": [None] * len(rows),
        }
    )
    df.to_parquet(path / "train.parquet")
    df.iloc[:0].to_parquet(path / "eval.parquet")
    return path


# ----------------------------------------------------------------------------------------------- accounting
def arch_numbers(model_dir: Path) -> dict[str, int]:
    c = json.loads((model_dir / "config.json").read_text())
    h, i, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    hd = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i
    return {"hidden": h, "layers": L, "q_dim": q, "vocab": c["vocab_size"], "body_params": per_layer * L}


def forward_flops(a: dict[str, int], n: int, scored: int) -> float:
    """Forward FLOPs of one sequence of n real tokens, `scored` of them through the LM head: 2 per weight per
    token, plus causal attention (QK^T and AV over the lower triangle)."""
    return 2 * a["body_params"] * n + 2 * a["layers"] * n * n * a["q_dim"] + 2 * a["hidden"] * a["vocab"] * scored


def batch_stats(trainer, a: dict[str, int]) -> dict[str, float]:
    """Walk the training dataloader once (no model calls): real and padded tokens, and the algorithm's FLOPs.

    KTO per row: policy forward + backward on (x, y) (backward ~ forward: the base is frozen, only input
    gradients), a no-grad policy forward on the KL pair (x, y'), and reference forwards on both:
    3 fwd(x, y) + 2 fwd(x, y'). Recomputation by gradient checkpointing is overhead, not counted.
    """
    s = dict(
        tokens=0,
        padded=0,
        kl_tokens=0,
        kl_padded=0,
        completion_tokens=0,
        flops=0.0,
        batches=0,
        max_batch_tokens=0,
        max_batch_tokens_with_kl=0,
    )  # max_*: the largest micro-batch, for the planner
    for batch in trainer.get_train_dataloader():
        am, cm = batch["attention_mask"], batch["completion_mask"]
        tokens = int(am.sum())
        s["batches"] += 1
        s["max_batch_tokens"] = max(s["max_batch_tokens"], tokens)
        s["max_batch_tokens_with_kl"] = max(
            s["max_batch_tokens_with_kl"], tokens + int(batch.get("KL_attention_mask", am[:0]).sum())
        )
        s["tokens"] += tokens
        s["padded"] += am.numel()
        s["completion_tokens"] += int(cm.sum())
        for n, c in zip(am.sum(1).tolist(), cm.sum(1).tolist()):
            s["flops"] += 3 * forward_flops(a, n, c)
        if "KL_attention_mask" in batch:
            kam, kcm = batch["KL_attention_mask"], batch["KL_completion_mask"]
            s["kl_tokens"] += int(kam.sum())
            s["kl_padded"] += kam.numel()
            for n, c in zip(kam.sum(1).tolist(), kcm.sum(1).tolist()):
                s["flops"] += 2 * forward_flops(a, n, c)
    return s


class Timer:
    def __init__(self):
        self.total = 0.0

    def wrap(self, fn):
        def inner(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                self.total += time.perf_counter() - t0

        return inner


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gib(x: float) -> float:
    return round(x / 2**30, 2)


def fresh_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def memory() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {
        "peak_allocated_gib": gib(torch.cuda.max_memory_allocated()),
        "peak_reserved_gib": gib(torch.cuda.max_memory_reserved()),
        "allocated_gib": gib(torch.cuda.memory_allocated()),
    }


# ----------------------------------------------------------------------------------------------- trainers
def first_log_callback(store: dict):
    from transformers import TrainerCallback

    class First(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs and "loss" not in store:
                store.update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})

    return First()


class UnchunkedLogProb:
    """The LM head as TRL computed it before its chunked kernel: full fp32 logits for every scored token."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0, outputs=()):
        import torch

        z = (hidden @ weight.t()).float() * logit_scale
        if bias is not None:
            z = z + bias.float()
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        logp = torch.log_softmax(z / temperature, dim=-1)
        lp = logp.gather(1, targets[:, None]).squeeze(1)
        with torch.no_grad():
            ent = -(logp.exp() * logp).sum(-1) if "entropy" in outputs else None
            mean = z.mean(-1) if "mean_logits" in outputs else None
        return lp, ent, None, mean, None


@contextlib.contextmanager
def lm_head(kind: str):
    import trl.trainer.utils as tu

    orig = tu._ChunkedLogProbFunction
    if kind == "unchunked":
        tu._ChunkedLogProbFunction = UnchunkedLogProb
    try:
        yield
    finally:
        tu._ChunkedLogProbFunction = orig


def trl_args(opts: dict, out: Path, steps_cfg: dict, **kw):
    """KTOConfig as the seed sets it: TRL defaults + the seed's batch, length, optimizer, bf16."""
    import torch
    from trl import KTOConfig

    cuda = torch.cuda.is_available()
    return KTOConfig(
        output_dir=str(out),
        per_device_train_batch_size=steps_cfg["batch"],
        gradient_accumulation_steps=steps_cfg["accum"],
        max_length=steps_cfg["max_length"],
        learning_rate=5e-7,
        num_train_epochs=steps_cfg.get("epochs", 1),
        max_steps=-1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        optim="adamw_8bit" if cuda else "adamw_torch",
        bf16=cuda,
        use_cpu=not cuda,
        precompute_ref_log_probs=opts.get("precompute", False),
        dataloader_num_workers=0,
        seed=42,
        **kw,
    )


def ours_config(model_dir: Path, opts: dict, steps_cfg: dict):
    from kto_pipeline.config import get_config

    return get_config(
        "7b",
        {
            "model": {
                "model_name": str(model_dir),
                "max_seq_length": steps_cfg["max_length"],
                "use_unsloth": "always" if opts["backend"] == "unsloth" and cuda() else "never",
            },
            "lora": {"r": 16, "alpha": 16, "dropout": 0.0},
            "training": {
                "per_device_train_batch_size": steps_cfg["batch"],
                "gradient_accumulation_steps": steps_cfg["accum"],
                "learning_rate": 5e-7,
                "num_train_epochs": float(steps_cfg.get("epochs", 1)),
                "max_steps": -1,
                "logging_steps": 1,
                "save_steps": 10**9,
                "warmup_ratio": 0.1,
                "group_by_length": opts.get("group_by_length", True),
                "precompute_ref_log_probs": opts.get("precompute"),
                "packing": opts.get("packing", False),
                "fuse_reference": opts.get("fuse_reference", False),
                "memory_budget_gib": opts.get("budget"),
            },
        },
    )


def planned_micro_batch(model_dir: Path, opts: dict, steps_cfg: dict) -> int:
    if opts["trainer"] != "ours" or not opts.get("budget"):
        return steps_cfg["batch"]
    from kto_pipeline.training.memory import with_budget

    return with_budget(ours_config(model_dir, opts, steps_cfg)).training.per_device_train_batch_size


def make_trainer(
    name: str, opts: dict, loaded, rows, model_dir: Path, work: Path, steps_cfg: dict, callbacks: list, tag: str
):
    """One trainer for this variant on `rows` (the warm-up batch or the measured set)."""
    from trl import KTOTrainer

    if loaded.backend == "unsloth":  # per variant: the varlen lever is process-wide, so set it for each trainer
        from kto_pipeline.patches import unsloth_flash_varlen

        unsloth_flash_varlen(opts.get("varlen", False))
    peft_config = getattr(loaded.model, "peft_config", {})
    if "ref" in peft_config:  # TRL adds a "ref" adapter to an already-wrapped model; one per trainer
        loaded.model.delete_adapter("ref")
    if opts["trainer"] == "ours":
        from kto_pipeline.training.trainer import build_trainer

        config = ours_config(model_dir, opts, steps_cfg)
        trainer, _ = build_trainer(config, loaded, write_kto_dir(rows, work / f"data-{tag}"), work / tag, callbacks)
        return trainer
    return KTOTrainer(
        model=loaded.model,
        args=trl_args(opts, work / tag, steps_cfg),
        train_dataset=as_dataset(rows, f"{name}-{tag}"),
        processing_class=loaded.tokenizer,
        peft_config=loaded.peft_config,
        callbacks=callbacks,
    )


def run_variant(name: str, loaded, model_dir: Path, work: Path, steps_cfg: dict) -> dict[str, Any]:
    import torch
    from trl import KTOTrainer

    opts = VARIANTS[name]
    steps_cfg = dict(steps_cfg, **{k: opts[k] for k in ("batch", "accum") if k in opts})
    a = arch_numbers(model_dir)
    result: dict[str, Any] = {
        "variant": name,
        "label": opts["label"],
        "backend": loaded.backend,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        **steps_cfg,
    }
    precompute_t, save_t = Timer(), Timer()
    orig_pre, orig_save = KTOTrainer._precompute_ref_logps, KTOTrainer._save_checkpoint
    KTOTrainer._precompute_ref_logps = precompute_t.wrap(orig_pre)
    KTOTrainer._save_checkpoint = save_t.wrap(orig_save)  # the final checkpoint is not training time
    try:
        with lm_head(opts.get("lm_head", "chunked")):
            # 1) warm-up on one fixed micro-batch at max_length: compiles kernels, gives the first-step loss on the
            #    same rows for every variant, and the peak memory at max_length x micro-batch.
            fresh_memory()
            first: dict = {}
            micro = planned_micro_batch(model_dir, opts, steps_cfg)
            warm_rows = synth_rows(
                model_dir,
                micro,
                steps_cfg["max_length"],
                seed=7,
                fixed=(steps_cfg["max_length"] // 2 - 1, steps_cfg["max_length"] // 2),
            )
            warm = make_trainer(
                name,
                opts,
                loaded,
                warm_rows,
                model_dir,
                work,
                dict(steps_cfg, batch=micro, accum=1),
                [first_log_callback(first)],
                "warm",
            )
            t0 = time.perf_counter()
            warm.train()
            sync()
            result["warmup_s"] = round(time.perf_counter() - t0, 1)
            result["first_loss"] = first.get("loss")
            result["first_logps_chosen"] = first.get("logps/chosen")
            result["first_logps_rejected"] = first.get("logps/rejected")
            result.update({f"warm_{k}": v for k, v in memory().items()})
            del warm
            reset_lora(loaded)
            # 2) the measured run: same rows, same steps, same effective batch for every variant
            fresh_memory()
            precompute_t.total = save_t.total = 0.0
            rows = synth_rows(model_dir, steps_cfg["examples"], steps_cfg["max_length"], seed=1)
            t0 = time.perf_counter()
            trainer = make_trainer(name, opts, loaded, rows, model_dir, work, steps_cfg, [], "run")
            sync()
            result["init_s"] = round(time.perf_counter() - t0, 1)
            result["precompute_s"] = round(precompute_t.total, 1)
            stats = batch_stats(trainer, a)
            epochs = steps_cfg.get("epochs", 1)  # every epoch walks the same batches
            stats = {k: v if k.startswith("max_") else v * epochs for k, v in stats.items()}
            packing = getattr(trainer, "pack_stats", None)
            if packing is not None and packing.enabled:
                result.update(packed_logp_check(trainer))
                packing.calls = packing.tokens = packing.padded = 0
            t0 = time.perf_counter()
            out = trainer.train()
            sync()
            train_s = time.perf_counter() - t0 - save_t.total
            if packing is not None and packing.enabled:
                # what the model computed: every packed forward (policy KL, policy, reference) of the run
                result["packed_forwards"] = packing.calls
                result["forwards_per_micro_batch"] = round(packing.calls / (stats["batches"] or 1), 2)
                result["padding_share_padded_path"] = round(1 - stats["tokens"] / stats["padded"], 3)
                stats["padded"], stats["kl_padded"] = stats["tokens"], stats["kl_tokens"]
            result["train_s"] = round(train_s, 1)
            result["checkpoint_s"] = round(save_t.total, 1)
            result["steps"] = trainer.state.global_step
            result["train_loss"] = out.metrics.get("train_loss")
            result["batch"] = trainer.args.per_device_train_batch_size
            result["accum"] = trainer.args.gradient_accumulation_steps
            result.update(stats)
            total = train_s + precompute_t.total
            result["tokens_per_s"] = round(stats["tokens"] / total, 1)
            result["tokens_per_s_train_only"] = round(stats["tokens"] / train_s, 1)
            result["padding_share"] = round(1 - stats["tokens"] / stats["padded"], 3)
            result["mfu"] = round(stats["flops"] / total / (PEAK_TFLOPS * 1e12), 4)
            result.update(memory())
            result["run_peak_allocated_gib"] = result.get("peak_allocated_gib")
            result["run_peak_reserved_gib"] = result.get("peak_reserved_gib")
            if opts["trainer"] == "ours":
                result.update(planned_peaks(trainer, model_dir, opts, steps_cfg))
            result["peak_allocated_gib"] = max(
                result.get("peak_allocated_gib", 0), result.get("warm_peak_allocated_gib", 0)
            )
            result["peak_reserved_gib"] = max(
                result.get("peak_reserved_gib", 0), result.get("warm_peak_reserved_gib", 0)
            )
            del trainer
    finally:
        KTOTrainer._precompute_ref_logps, KTOTrainer._save_checkpoint = orig_pre, orig_save
        reset_lora(loaded)
        fresh_memory()
    return result


def planned_peaks(trainer, model_dir: Path, opts: dict, steps_cfg: dict) -> dict[str, Any]:
    """The planner's peak for the measured run (packed: from the rows' real tokens, as TRL tokenized them) and for
    the warm-up micro-batch (every row at max_length), to set beside the measured peaks."""
    from kto_pipeline.training.memory import estimate, packed_tokens

    config = ours_config(model_dir, opts, steps_cfg)
    b, max_len = trainer.args.per_device_train_batch_size, steps_cfg["max_length"]
    ds = trainer.train_dataset
    toks = [len(p) + len(c) for p, c in zip(ds["prompt_ids"], ds["completion_ids"])]
    # the run's own micro-batches: the dataset is already in the order training walks
    run = estimate(
        config,
        micro_batch=b,
        tokens=packed_tokens(toks, b, max_len, list(range(len(toks)))) if opts.get("packing") else None,
    )
    warm = estimate(config, micro_batch=b)
    return {
        "plan_run_allocated_gib": round(run.peak_allocated_gib, 2),
        "plan_run_reserved_gib": round(run.peak_reserved_gib, 2),
        "plan_run_tokens": run.tokens,
        "plan_warm_allocated_gib": round(warm.peak_allocated_gib, 2),
        "plan_warm_reserved_gib": round(warm.peak_reserved_gib, 2),
    }


def packed_logp_check(trainer) -> dict[str, Any]:
    """Per-row summed log-probs of the run's first micro-batch (rows of mixed lengths), padded and packed, with the
    policy's adapter moved off zero (a copy of the LoRA B weights is restored afterwards): the GPU side of the CPU
    test's equality, in the run's dtype."""
    import torch

    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    gen = torch.Generator(device="cpu").manual_seed(0)
    out: dict[str, Any] = {}
    try:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in saved:
                    p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.device, p.dtype))
        for prefix in ("", "KL_"):
            ids, am, cm = (
                batch[f"{prefix}{k}"].to(model.device) for k in ("input_ids", "attention_mask", "completion_mask")
            )
            sums = {}
            for packed in (False, True):
                trainer.pack_stats.enabled = packed
                with torch.no_grad(), trainer.accelerator.autocast():
                    lp = model(
                        input_ids=ids,
                        attention_mask=am,
                        labels=ids.masked_fill(cm == 0, -100),
                        use_cache=False,
                        fused_lm_head=True,
                    ).log_probs
                sums[packed] = lp.float().sum(-1)
            rel = ((sums[True] - sums[False]).abs() / sums[False].abs().clamp(min=1e-6)).max().item()
            out[f"packed_vs_padded_max_rel{'_kl' if prefix else ''}"] = rel
            out[f"padded_row_logps{'_kl' if prefix else ''}"] = [round(x, 3) for x in sums[False].tolist()]
            out[f"packed_row_logps{'_kl' if prefix else ''}"] = [round(x, 3) for x in sums[True].tolist()]
    finally:
        trainer.pack_stats.enabled = True
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in saved:
                    p.copy_(saved[n])
    print(
        f"[packing] per-row log-probs packed vs padded, max relative difference: "
        f"{out['packed_vs_padded_max_rel']:.2e} (rows), {out['packed_vs_padded_max_rel_kl']:.2e} (KL rows)",
        flush=True,
    )
    return out


def snapshot_lora(loaded) -> None:
    loaded.lora_init = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if "lora_" in n}


def reset_lora(loaded) -> None:
    import torch

    init = getattr(loaded, "lora_init", None)
    if not init:
        return
    with torch.no_grad():
        for n, p in loaded.model.named_parameters():
            if n in init:
                p.copy_(init[n])


# ----------------------------------------------------------------------------------------------- processes
def load(backend: str, model_dir: Path, steps_cfg: dict):
    """The model for a backend. transformers: plain QLoRA as TRL's docs show it (PEFT config handed to the
    trainer). unsloth: kto_pipeline's loader, which is the seed's FastLanguageModel + get_peft_model call."""
    from kto_pipeline.training.model import LoadedModel

    if backend == "unsloth":
        from kto_pipeline.training.model import load_for_training

        config = ours_config(model_dir, {"backend": "unsloth"}, steps_cfg)
        loaded = load_for_training(config, model_dir.parent)
        snapshot_lora(loaded)
        return loaded
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"dtype": torch.bfloat16 if torch.cuda.is_available() else torch.float32}
    if torch.cuda.is_available():
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kw["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    if torch.cuda.is_available():
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    peft = LoraConfig(
        r=16,
        lora_alpha=16,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    return LoadedModel(model, AutoTokenizer.from_pretrained(model_dir), peft, "transformers", str(model_dir))


def child(args) -> None:
    """One backend's process: load once, run its variants, append each result to the JSONL at once."""
    if args.backend == "unsloth" and cuda():
        import unsloth  # noqa: F401  (before transformers/trl, so its patches apply)

    from kto_pipeline.patches import install_torch_chunked_logprob

    install_torch_chunked_logprob()  # CPU smoke runs only: TRL's LM-head kernel is Triton
    steps_cfg = dict(
        batch=args.batch, accum=args.accum, examples=args.examples, max_length=args.max_length, epochs=args.epochs
    )
    model_dir, work = Path(args.model), Path(args.work)
    fresh_memory()
    t0 = time.perf_counter()
    loaded = load(args.backend, model_dir, steps_cfg)
    base = memory()
    print(f"[{args.backend}] loaded in {time.perf_counter() - t0:.0f}s, {base}", flush=True)
    if args.backend == "unsloth" and cuda():
        compile_warmup(loaded, model_dir, work / "compile", steps_cfg, args.compile_warmup)
    for name in args.variants.split(","):
        t0 = time.perf_counter()
        try:
            r = run_variant(name, loaded, model_dir, work / name, steps_cfg)
            r["model_loaded_gib"] = base.get("allocated_gib")
        except Exception as e:  # keep going: one broken variant must not cost the others' device time
            import traceback

            traceback.print_exc()
            r = {"variant": name, "label": VARIANTS[name]["label"], "error": f"{type(e).__name__}: {e}"[:500]}
            fresh_memory()
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        with open(args.out, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"RESULT {json.dumps(r)}", flush=True)
    if args.sweep and args.backend == "unsloth":
        sweep(loaded, model_dir, work / "sweep", steps_cfg, args.sweep, args.out, args.sweep_variant)
    for name in filter(None, args.profile.split(",")):
        profile(loaded, model_dir, work / f"profile-{name}", steps_cfg, Path(args.out).parent, name)


def profile(loaded, model_dir: Path, work: Path, steps_cfg: dict, out_dir: Path, name: str) -> None:
    """Is the GPU busy? Device-kernel time against wall time for two micro-batches of `name` at its micro-batch,
    and the kernels that take the time."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    opts = VARIANTS[name]
    batch = planned_micro_batch(model_dir, opts, steps_cfg)
    cfg = dict(steps_cfg, batch=batch, accum=2, epochs=1)
    rows = synth_rows(model_dir, 2 * batch, cfg["max_length"], seed=5)
    tr = make_trainer(name, opts, loaded, rows, model_dir, work, cfg, [], "profile")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda() else [])
    with torch_profile(activities=acts) as prof:
        t0 = time.perf_counter()
        tr.train()
        sync()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in events)
    kernels = sum(getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA and e.count or 0 for e in events)
    line = {
        "profile": name,
        "micro_batch": batch,
        "wall_s": round(wall, 2),
        "device_busy_s": round(device_us / 1e6, 2),
        "device_busy_share": round(device_us / 1e6 / wall, 3),
        "launched_kernels": kernels,
    }
    sort = "self_device_time_total" if cuda() else "self_cpu_time_total"
    (out_dir / f"profile_{name}.txt").write_text(json.dumps(line) + "\n" + events.table(sort_by=sort, row_limit=30))
    print(f"PROFILE {json.dumps(line)}", flush=True)
    del tr
    reset_lora(loaded)


def compile_warmup(loaded, model_dir: Path, work: Path, steps_cfg: dict, names: str) -> None:
    """Unsloth compiles each decoder layer with torch.compile; new shapes and code paths (grad / no-grad, the
    "ref" adapter, batch 8) recompile. Run every path once on varied lengths before anything is timed, so that
    no variant pays for compiling (the first one otherwise would)."""
    t0 = time.perf_counter()
    for name in filter(None, names.split(",")):
        opts = VARIANTS[name]
        batch = planned_micro_batch(model_dir, opts, steps_cfg)
        rows = synth_rows(model_dir, 2 * batch, steps_cfg["max_length"], seed=99)
        tr = make_trainer(
            name, opts, loaded, rows, model_dir, work, dict(steps_cfg, batch=batch, accum=1), [], f"{name}"
        )
        tr.train()
        del tr
        reset_lora(loaded)
    fresh_memory()
    print(f"compile warm-up {time.perf_counter() - t0:.0f}s", flush=True)


def sweep(loaded, model_dir: Path, work: Path, steps_cfg: dict, spec: str, out: str, variant: str = "c") -> None:
    """Peak memory of kto_pipeline's path (`variant`) for one micro-batch of B rows of exactly T tokens, beside the
    planner's figure for it, for fitting and checking the planner."""
    from kto_pipeline.training.memory import estimate

    opts = {k: v for k, v in VARIANTS[variant].items() if k != "budget"}
    for bt in spec.split(","):
        b, t = map(int, bt.split("x"))
        cfg = dict(steps_cfg, batch=b, accum=1, max_length=t)
        rows = synth_rows(model_dir, b, t, seed=b * 10000 + t, fixed=(t // 2 - 1, t // 2))
        fresh_memory()
        plan = estimate(ours_config(model_dir, opts, cfg), micro_batch=b, tokens=b * t if opts.get("packing") else None)
        r: dict[str, Any] = {
            "sweep": True,
            "variant": variant,
            "batch": b,
            "seq": t,
            "plan_allocated_gib": round(plan.peak_allocated_gib, 3),
        }
        try:
            tr = make_trainer(variant, opts, loaded, rows, model_dir, work, cfg, [], f"{b}x{t}")
            tr.train()
            sync()
            r.update(memory())
            del tr
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {e}"[:300]
        reset_lora(loaded)
        fresh_memory()
        with open(out, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"SWEEP {json.dumps(r)}", flush=True)


def run(args) -> int:
    """Group the variants by backend and run each group in its own process, with a time limit."""
    groups: dict[str, list[str]] = {}
    for name in args.variants.split(","):
        groups.setdefault(VARIANTS[name]["backend"], []).append(name)
    if args.sweep:
        groups.setdefault("unsloth", [])
    code = 0
    for backend, names in groups.items():
        cmd = [
            sys.executable,
            __file__,
            "child",
            args.model,
            "--backend",
            backend,
            "--variants",
            ",".join(names),
            "--out",
            args.out,
            "--work",
            args.work,
            "--batch",
            str(args.batch),
            "--accum",
            str(args.accum),
            "--examples",
            str(args.examples),
            "--max-length",
            str(args.max_length),
            "--epochs",
            str(args.epochs),
            "--compile-warmup",
            args.compile_warmup,
        ]
        if args.profile and backend == "unsloth":
            cmd += ["--profile", args.profile]
        if args.sweep and backend == "unsloth":
            cmd += ["--sweep", args.sweep, "--sweep-variant", args.sweep_variant]
        if not names:
            cmd[cmd.index("--variants") + 1] = ""
        print("+", " ".join(cmd), flush=True)
        try:
            code |= subprocess.call(cmd, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"[{backend}] timed out after {args.timeout}s", flush=True)
            code |= 1
    print(table(args.out))
    return code


def table(path: str) -> str:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    runs = [r for r in rows if not r.get("sweep")]
    lines = [
        "| variant | tokens/s (non-pad) | train-only tokens/s | padding | peak alloc GiB | peak reserved GiB "
        "| at micro-batch x max_length: alloc / reserved GiB | first-step loss | first logps/chosen | MFU "
        "| precompute s | train s | vs (a) | vs best of (b), (b') | packed vs padded row log-probs (max rel.) "
        "| model forwards per micro-batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    speed = {r["variant"]: r["tokens_per_s"] for r in runs if "error" not in r}
    best_b = max((speed[v] for v in ("b", "b16") if v in speed), default=None)

    def ratio(x: float, base: float | None) -> str:
        return f"{x / base:.2f}x" if base else "-"

    for r in runs:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error'][:120]} |" + " |" * 14)
            continue
        check = r.get("packed_vs_padded_max_rel")
        check = "-" if check is None else f"{check:.1e} / {r['packed_vs_padded_max_rel_kl']:.1e}"
        lines.append(
            f"| {r['label']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_train_only']:,.0f} "
            f"| {r['padding_share']:.0%} | {r.get('peak_allocated_gib', '-')} | {r.get('peak_reserved_gib', '-')} "
            f"| {r.get('warm_peak_allocated_gib', '-')} / {r.get('warm_peak_reserved_gib', '-')} "
            f"| {r['first_loss']} | {r['first_logps_chosen']} | {r['mfu']:.1%} | {r['precompute_s']} "
            f"| {r['train_s']} | {ratio(r['tokens_per_s'], speed.get('a'))} | {ratio(r['tokens_per_s'], best_b)} "
            f"| {check} "
            f"| {r.get('forwards_per_micro_batch', '-')} |"
        )
    sweeps = [r for r in rows if r.get("sweep")]
    if sweeps:
        lines += [
            "",
            "| variant | micro-batch x seq | peak alloc GiB | planned alloc GiB | peak reserved GiB |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.get('variant', 'c')} | {r['batch']}x{r['seq']} | {r.get('peak_allocated_gib', r.get('error'))} "
            f"| {r.get('plan_allocated_gib', '')} | {r.get('peak_reserved_gib', '')} |"
            for r in sweeps
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out")
    b.add_argument("--arch", default="llama-3.1-8b", help="llama-3.1-8b, smoke, or a key of the planner's KNOWN")
    for name in ("run", "child"):
        r = sub.add_parser(name)
        r.add_argument("model")
        r.add_argument("--variants", default="a,b,c")
        r.add_argument("--out", default="train_bench.jsonl")
        r.add_argument("--work", default="/tmp/train_bench")
        r.add_argument("--batch", type=int, default=4)
        r.add_argument("--accum", type=int, default=4)
        r.add_argument("--examples", type=int, default=256)
        r.add_argument("--max-length", type=int, default=2048)
        r.add_argument(
            "--sweep", default="", help="micro-batch x seq points for the memory planner, e.g. 4x2048,8x1024"
        )
        r.add_argument("--sweep-variant", default="c", help="the variant the --sweep points run (c, c_varlen, ...)")
        r.add_argument("--timeout", type=int, default=3600)
        r.add_argument("--epochs", type=int, default=1)
        r.add_argument(
            "--compile-warmup",
            default="b,c_mb4,c_precompute",
            help="variants run once, untimed, before anything is measured",
        )
        r.add_argument(
            "--profile",
            default="",
            help="after the variants: profile two micro-batches of each of these variants (e.g. c,c_pack_fuse)",
        )
        if name == "child":
            r.add_argument("--backend", required=True)
    t = sub.add_parser("table")
    t.add_argument("path")
    args = p.parse_args(argv)
    if args.cmd == "build":
        build(Path(args.out), args.arch)
    elif args.cmd == "run":
        return run(args)
    elif args.cmd == "child":
        if args.variants:
            child(args)
        else:
            args.variants = ""
            child_sweep_only(args)
    else:
        print(table(args.path))
    return 0


def child_sweep_only(args) -> None:
    if cuda():
        import unsloth  # noqa: F401

    steps_cfg = dict(
        batch=args.batch, accum=args.accum, examples=args.examples, max_length=args.max_length, epochs=args.epochs
    )
    model_dir = Path(args.model)
    loaded = load("unsloth", model_dir, steps_cfg)
    sweep(loaded, model_dir, Path(args.work) / "sweep", steps_cfg, args.sweep, args.out, args.sweep_variant)


if __name__ == "__main__":
    sys.exit(main())
