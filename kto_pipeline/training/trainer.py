"""The one KTOTrainer setup shared by every backend.

On top of TRL's defaults (measured in benchmarks/RESULTS.md; on one GPU the step is launch-bound, so what pays
is fewer, bigger model passes):
- micro-batch from the memory planner when training.memory_budget_gib is set (same effective batch);
- precomputed reference log-probs when training sees the data more than once (TRL's option), keyed by a cheap
  fingerprint of the reference model instead of TRL's sha256 over every weight copied to the CPU;
- the reference scored with adapters disabled rather than through TRL's "ref" copy of a fresh adapter;
- packed (padding-free) passes and one fused reference forward when training.packing / fuse_reference are on
  (training/packing.py);
- length-grouped batching: rows reordered up front so each micro-batch holds similar lengths. TRL's KTO needs
  sequential sampling (each row's KL completion comes from its micro-batch neighbours), so the grouping has to
  happen in the dataset order, before TRL builds those KL pairs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from kto_pipeline.config import Config
from kto_pipeline.data import label_balance
from kto_pipeline.training.long_rows import account, check_trained


def load_split(dataset_dir: Path, split: str, chat: bool):
    """Parquet rows -> a datasets.Dataset in TRL's KTO format (conversational when the model has a chat template)."""
    from datasets import Dataset

    df = pd.read_parquet(dataset_dir / f"{split}.parquet", columns=["prompt", "completion", "label", "messages"])
    if not chat:
        return Dataset.from_dict(
            {"prompt": df.prompt.tolist(), "completion": df.completion.tolist(), "label": df.label.tolist()}
        )
    prompts = [
        json.loads(m) if isinstance(m, str) else [{"role": "user", "content": p}]
        for p, m in zip(df.prompt, df.messages)
    ]
    completions = [[{"role": "assistant", "content": c}] for c in df.completion]
    return Dataset.from_dict({"prompt": prompts, "completion": completions, "label": df.label.tolist()})


def row_lengths(ds, tokenizer) -> list[tuple[int, int]]:
    """Approximate (prompt, completion) token counts of each row, for grouping by length."""

    def text(x: Any) -> str:
        return "\n".join(m.get("content") or "" for m in x) if isinstance(x, list) else str(x)

    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return list(zip(count([text(p) for p in ds["prompt"]]), count([text(c) for c in ds["completion"]])))


def length_grouped_order(
    lengths: list[tuple[int, int]], batch_size: int, seed: int, megabatch: int = 64, window: int = 4
) -> list[int]:
    """Row order in which consecutive `batch_size` rows have similar lengths; `lengths` are (prompt, completion).

    Rows are shuffled and cut into megabatches of `megabatch` micro-batches; inside each, rows are sorted by total
    length, then each run of `window` micro-batches is re-sorted by prompt length. The second sort is for KTO's KL
    rows, (prompt_i, completion_{i-1}) within a micro-batch: they are short of padding only when prompts and
    completions are each alike, not just their sums (on the benchmark's length mix: padded tokens, main + KL rows,
    1.69x the real ones in random order, 1.22x sorted by total, 1.09x with the second sort).
    The micro-batches are then shuffled (one step should not see only long or only short rows), except that the
    longest goes first, so an out-of-memory shows at step 1 rather than hours in. Every micro-batch but the last
    is full: TRL pairs KL completions within consecutive blocks of `batch_size` rows.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    total = [p + c for p, c in lengths]
    size, win = batch_size * megabatch, batch_size * window
    ranked: list[int] = []
    for s in range(0, len(order), size):
        by_total = sorted(order[s : s + size], key=lambda i: -total[i])
        for w in range(0, len(by_total), win):
            ranked += sorted(by_total[w : w + win], key=lambda i: -lengths[i][0])
    batches = [ranked[s : s + batch_size] for s in range(0, len(ranked), batch_size)]
    tail = batches.pop() if batches and len(batches[-1]) < batch_size else []
    if not batches:
        return tail
    first = batches.pop(max(range(len(batches)), key=lambda b: max(total[i] for i in batches[b])))
    rng.shuffle(batches)
    return [i for b in [first, *batches, tail] for i in b]


def world_size() -> int:
    """Data-parallel processes of this run (torchrun sets WORLD_SIZE); 1 for a plain process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def per_process(config: Config, processes: int) -> Config:
    """Divide the accumulation steps among `processes` data-parallel processes, so the effective batch
    (micro-batch x accumulation x processes) stays what one process would train with (rounded, at least 1)."""
    if processes <= 1:
        return config
    accum = max(1, round(config.training.gradient_accumulation_steps / processes))
    # This process's share of the run: one process's accumulation (the others run the same config).
    return dataclasses.replace(
        config, training=dataclasses.replace(config.training, gradient_accumulation_steps=accum, num_processes=1)
    )


def wants_precompute(config: Config, train_rows: int) -> bool:
    """Precompute the reference log-probs when asked, or (None) when training sees the data more than once.

    The reference forwards are a third of a KTO step's compute. Precomputing does them once per row instead of
    once per row and epoch. For a single epoch it is the same work in a separate pass, which is slower than the
    same forwards inside the steps (benchmarks/RESULTS.md); from the second epoch on the reference costs nothing.
    """
    t = config.training
    if t.precompute_ref_log_probs is not None:
        return t.precompute_ref_log_probs
    if world_size() > 1:  # TRL hands the scores to the other ranks in a file they cannot find (TrainingConfig)
        return False
    per_epoch = math.ceil(train_rows / (t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size()))
    steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * per_epoch)
    return steps > per_epoch


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
def fast_reference_pass(trainer_cls: type) -> Iterator[None]:
    """While KTOTrainer is built: TRL's `hash_module` is `model_fingerprint`, and TRL's "ref" adapter is dropped
    before the precompute pass (see drop_reference_adapter); the patch itself is kto_pipeline.patches."""
    from kto_pipeline.patches import trl_reference_pass

    with trl_reference_pass(trainer_cls, model_fingerprint, drop_reference_adapter):
        yield


def drop_reference_adapter(model: Any) -> bool:
    """Score the reference with adapters disabled instead of through TRL's "ref" copy of a fresh adapter.

    Given an already-wrapped PEFT model (Unsloth's), TRL adds a frozen "ref" adapter copied from "default" and runs
    every reference forward through it. A freshly initialized LoRA adapter has lora_B == 0, so that copy is the base
    model: disabling the adapters gives the same log-probs without the extra LoRA matmuls and weights.
    """
    import torch

    peft_config = getattr(model, "peft_config", None)
    if not peft_config or "ref" not in peft_config:
        return False
    with torch.no_grad():
        fresh = all(not p.any() for n, p in model.named_parameters() if ".default." in n and "lora_B" in n)
    if fresh:
        model.delete_adapter("ref")
    return fresh


def kto_weights(config: Config, train_labels: list[bool]) -> tuple[float, float]:
    """The user's weights where set, else the paper's rule from the label balance."""
    n_d = sum(train_labels)
    auto = label_balance(n_d, len(train_labels) - n_d)
    t = config.training  # None derives a weight; 0.0 is a weight the user chose
    dw = auto["desirable_weight"] if t.desirable_weight is None else t.desirable_weight
    uw = auto["undesirable_weight"] if t.undesirable_weight is None else t.undesirable_weight
    return dw, uw


def kto_args(config: Config, output_dir: Path, weights: tuple[float, float], has_eval: bool, precompute: bool = False):
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
        logging_nan_inf_filter=False,  # transformers hides inf/NaN losses from the logs by default: we stop on them
        eval_strategy="steps" if (has_eval and t.eval_steps > 0) else "no",
        eval_steps=t.eval_steps or None,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        seed=t.seed,
        bf16=cuda and torch.cuda.is_bf16_supported() and config.model.dtype in ("auto", "bfloat16"),
        use_cpu=not cuda,
        gradient_checkpointing=config.lora.gradient_checkpointing,
        precompute_ref_log_probs=precompute,
        precompute_ref_batch_size=t.precompute_ref_batch_size or t.per_device_train_batch_size,
        report_to=report_to,
        run_name=t.wandb_run_name,
        dataloader_num_workers=t.dataloader_num_workers,
        dataloader_pin_memory=t.dataloader_pin_memory,
        dataset_num_proc=None,
        ddp_find_unused_parameters=False if world_size() > 1 else None,  # frozen base weights get no gradient
    )


def build_trainer(
    config: Config, loaded: Any, dataset_dir: Path, output_dir: Path, callbacks: list[Any]
) -> tuple[Any, dict[str, Any]]:
    from trl import KTOTrainer

    from kto_pipeline.patches import install_torch_chunked_logprob
    from kto_pipeline.training.memory import with_budget
    from kto_pipeline.training.packing import packed_trainer_class

    install_torch_chunked_logprob()
    chat = bool(getattr(loaded.tokenizer, "chat_template", None))
    max_length = config.model.max_seq_length
    # Rows longer than max_seq_length are fitted (or dropped) and counted here, so TRL drops and cuts nothing.
    fitted, long_rows, dropped = account(
        dataset_dir, loaded.tokenizer, max_length, config.model.long_rows, chat, load_split
    )
    train_ds, eval_ds = fitted["train"], fitted["eval"]
    if len(train_ds) == 0:
        raise ValueError(
            f"{dataset_dir / 'train.parquet'}: no training rows"
            + (
                f" left: all {long_rows['splits']['train']['rows']} are longer than max_seq_length={max_length}"
                if long_rows["splits"]["train"]["rows"]
                else ""
            )
        )
    t = config.training
    lengths, seed = (row_lengths(train_ds, loaded.tokenizer) if t.group_by_length else None), t.seed

    def order(batch: int) -> list[int]:  # the row order training walks at this micro-batch
        if lengths is None or len(lengths) <= batch:
            return list(range(len(train_ds)))
        return length_grouped_order(lengths, batch, seed)

    # Packed micro-batches are planned by their real tokens (as TRL will tokenize them), not rows x max length
    row_tokens = training_row_tokens(train_ds, loaded.tokenizer) if t.packing and t.memory_budget_gib else None
    config = per_process(with_budget(config, row_tokens, order), world_size())
    weights = kto_weights(config, train_ds["label"])
    t = config.training
    train_ds = train_ds.select(order(t.per_device_train_batch_size))
    args = kto_args(
        config, output_dir, weights, has_eval=len(eval_ds) > 0, precompute=wants_precompute(config, len(train_ds))
    )
    trainer_cls = packed_trainer_class(KTOTrainer)
    with fast_reference_pass(trainer_cls):
        trainer = trainer_cls(
            model=loaded.model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds if len(eval_ds) else None,
            processing_class=loaded.tokenizer,
            peft_config=loaded.peft_config,
            callbacks=callbacks,
            packing=t.packing,
            fuse_reference=t.fuse_reference,
        )
    drop_reference_adapter(trainer.model)
    # The rows TRL will train on, counted on its own tokenized datasets (not on our estimate).
    train_rows = check_trained("train", trainer.train_dataset, len(train_ds), max_length)
    eval_rows = check_trained("eval", trainer.eval_dataset, len(eval_ds), max_length) if len(eval_ds) else 0
    info = {
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "desirable_weight": weights[0],
        "undesirable_weight": weights[1],
        "chat_format": chat,
        "processes": world_size(),
        "long_rows": long_rows,
        "dropped_rows": dropped,
        "kl_pairs_same_completion": same_completion_share(train_ds["completion"], t.per_device_train_batch_size),
    }
    return trainer, info


def training_row_tokens(ds, tokenizer) -> list[int]:
    """Prompt + completion tokens of each fitted row, exactly as TRL tokenizes them."""
    from kto_pipeline.training.long_rows import trl_lengths

    return [sum(trl_lengths(tokenizer, p, c)) for p, c in zip(ds["prompt"], ds["completion"])]


def same_completion_share(completions: list[Any], batch_size: int) -> float:
    """Share of KTO's KL pairs whose "mismatched" completion is the row's own: TRL pairs row i with the completion
    of row i-1 within each block of `batch_size` rows (its add_kl_completion_ids), in the dataset's order."""
    same = total = 0
    for s in range(0, len(completions), batch_size):
        block = completions[s : s + batch_size]
        same += sum(block[i] == block[i - 1] for i in range(len(block)))
        total += len(block)
    return same / total if total else 0.0
