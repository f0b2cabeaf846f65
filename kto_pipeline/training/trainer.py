"""The one KTOTrainer setup shared by every backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
        report_to=report_to,
        run_name=t.wandb_run_name,
        dataloader_num_workers=0,
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
    args = kto_args(config, output_dir, weights, has_eval=len(eval_ds) > 0)
    trainer = KTOTrainer(
        model=loaded.model, args=args, train_dataset=train_ds,
        eval_dataset=eval_ds if len(eval_ds) else None, processing_class=loaded.tokenizer,
        peft_config=loaded.peft_config, callbacks=callbacks,
    )
    info = {"train_rows": len(train_ds), "eval_rows": len(eval_ds), "desirable_weight": weights[0],
            "undesirable_weight": weights[1], "chat_format": chat}
    return trainer, info
