"""The one KTOTrainer setup shared by every backend.

On top of TRL's defaults this does two things that make KTO on one GPU faster (benchmarks/RESULTS.md):
- length-grouped batching: rows are reordered up front so each micro-batch holds similar lengths. TRL's
  KTO needs sequential sampling (each row's KL completion is taken from its micro-batch neighbours), so
  the grouping has to happen in the dataset order, before TRL builds those KL pairs.
- precomputed reference log-probs (TRL's own option) with a cheap fingerprint of the reference model
  instead of TRL's sha256 over every weight, which copies the whole model to the CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from kto_pipeline.config import Config
from kto_pipeline.data import label_balance


def load_split(dataset_dir: Path, split: str, chat: bool):
    """Parquet rows -> a datasets.Dataset in TRL's KTO format (conversational when the model has a chat template)."""
    from datasets import Dataset

    df = pd.read_parquet(dataset_dir / f"{split}.parquet", columns=["prompt", "completion", "label", "messages"])
    if not chat:
        return Dataset.from_dict({"prompt": df.prompt.tolist(), "completion": df.completion.tolist(),
                                  "label": df.label.tolist()})
    prompts = [json.loads(m) if isinstance(m, str) else [{"role": "user", "content": p}]
               for p, m in zip(df.prompt, df.messages)]
    completions = [[{"role": "assistant", "content": c}] for c in df.completion]
    return Dataset.from_dict({"prompt": prompts, "completion": completions, "label": df.label.tolist()})


def row_lengths(ds, tokenizer) -> list[int]:
    """Approximate token count of each row (prompt + completion), for grouping by length."""

    def text(x: Any) -> str:
        return "\n".join(m.get("content") or "" for m in x) if isinstance(x, list) else str(x)

    texts = [text(p) + text(c) for p, c in zip(ds["prompt"], ds["completion"])]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def length_grouped_order(lengths: list[int], batch_size: int, seed: int, megabatch: int = 64) -> list[int]:
    """Row order in which consecutive `batch_size` rows have similar lengths.

    Rows are shuffled, cut into megabatches of `megabatch` micro-batches, sorted by length inside each, and the
    micro-batches are shuffled again (so one step does not see only long or only short rows). The longest
    micro-batch goes first, so an out-of-memory shows at step 1 rather than hours in. Every micro-batch but the
    last is full: TRL pairs KL completions within consecutive blocks of `batch_size` rows.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = batch_size * megabatch
    ranked = [i for s in range(0, len(order), size)
              for i in sorted(order[s:s + size], key=lambda i: -lengths[i])]
    batches = [ranked[s:s + batch_size] for s in range(0, len(ranked), batch_size)]
    tail = batches.pop() if batches and len(batches[-1]) < batch_size else []
    if not batches:
        return tail
    first = batches.pop(max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b])))
    rng.shuffle(batches)
    return [i for b in [first, *batches, tail] for i in b]


def model_fingerprint(module: Any) -> str:
    """Cheap stand-in for TRL's `hash_module` (keys the precomputed reference log-probs cache).

    Names, dtypes and shapes of every tensor plus its first and last values: enough to tell models apart
    without copying gigabytes of weights to the CPU.
    """
    import torch

    h = hashlib.sha256(str(getattr(getattr(module, "config", None), "_name_or_path", "")).encode())
    with torch.no_grad():
        for name, t in sorted(module.state_dict().items()):
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            flat = t.reshape(-1)
            if flat.numel():
                h.update(torch.cat([flat[:16], flat[-16:]]).float().cpu().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def fast_reference_fingerprint(trainer_cls: type) -> Iterator[None]:
    """Swap TRL's `hash_module` for `model_fingerprint` in every module the trainer class comes from
    (Unsloth recompiles KTOTrainer into its own module, which imports its own reference to hash_module)."""
    mods = {sys.modules.get(c.__module__) for c in trainer_cls.__mro__}
    patched = [(m, m.hash_module) for m in mods if m is not None and hasattr(m, "hash_module")]
    for m, _ in patched:
        m.hash_module = model_fingerprint
    try:
        yield
    finally:
        for m, orig in patched:
            m.hash_module = orig


def kto_weights(config: Config, train_labels: list[bool]) -> tuple[float, float]:
    """The user's weights where set, else the paper's rule from the label balance."""
    n_d = sum(train_labels)
    auto = label_balance(n_d, len(train_labels) - n_d)
    dw = config.training.desirable_weight or auto["desirable_weight"]
    uw = config.training.undesirable_weight or auto["undesirable_weight"]
    return dw, uw


def kto_args(config: Config, output_dir: Path, weights: tuple[float, float], has_eval: bool):
    import torch
    from trl import KTOConfig

    t = config.training
    cuda = torch.cuda.is_available()
    optim = t.optim if t.optim != "auto" else ("adamw_8bit" if cuda else "adamw_torch")
    report_to = ["tensorboard"] + (["wandb"] if t.wandb else [])
    return KTOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float below 1 is a ratio of total steps
        lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=optim,
        beta=t.beta,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
        max_length=config.model.max_seq_length,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if (has_eval and t.eval_steps > 0) else "no",
        eval_steps=t.eval_steps or None,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        seed=t.seed,
        bf16=cuda and torch.cuda.is_bf16_supported() and config.model.dtype in ("auto", "bfloat16"),
        use_cpu=not cuda,
        gradient_checkpointing=config.lora.gradient_checkpointing,
        precompute_ref_log_probs=t.precompute_ref_log_probs,
        precompute_ref_batch_size=t.precompute_ref_batch_size or 2 * t.per_device_train_batch_size,
        report_to=report_to,
        run_name=t.wandb_run_name,
        dataloader_num_workers=t.dataloader_num_workers,
        dataloader_pin_memory=t.dataloader_pin_memory,
        dataset_num_proc=None,
    )


def build_trainer(config: Config, loaded: Any, dataset_dir: Path, output_dir: Path,
                  callbacks: list[Any]) -> tuple[Any, dict[str, Any]]:
    from trl import KTOTrainer

    from kto_pipeline.training.torch_logprob import install_if_needed

    install_if_needed()
    chat = bool(getattr(loaded.tokenizer, "chat_template", None))
    train_ds = load_split(dataset_dir, "train", chat)
    eval_ds = load_split(dataset_dir, "eval", chat)
    if len(train_ds) == 0:
        raise ValueError(f"{dataset_dir / 'train.parquet'}: no training rows")
    weights = kto_weights(config, train_ds["label"])
    t = config.training
    if t.group_by_length and len(train_ds) > t.per_device_train_batch_size:
        lengths = row_lengths(train_ds, loaded.tokenizer)
        train_ds = train_ds.select(length_grouped_order(lengths, t.per_device_train_batch_size, t.seed))
    args = kto_args(config, output_dir, weights, has_eval=len(eval_ds) > 0)
    with fast_reference_fingerprint(KTOTrainer):
        trainer = KTOTrainer(
            model=loaded.model, args=args, train_dataset=train_ds,
            eval_dataset=eval_ds if len(eval_ds) else None, processing_class=loaded.tokenizer,
            peft_config=loaded.peft_config, callbacks=callbacks,
        )
    info = {"train_rows": len(train_ds), "eval_rows": len(eval_ds), "desirable_weight": weights[0],
            "undesirable_weight": weights[1], "chat_format": chat}
    return trainer, info
