"""Peak-VRAM planner for KTO LoRA training, from the model's config alone (no weights).

    peak = weights + LoRA state + tokens_per_micro_batch * bytes_per_token + fixed overhead

Weights and LoRA sizes are counted from the architecture (4-bit NF4 with double quantization: 0.5 byte per
weight plus ~1/64 byte of block scales; embeddings and LM head stay 16-bit, or 32-bit where PEFT's
`prepare_model_for_kbit_training` upcasts them). LoRA state: fp32 weight + fp32 gradient + 8-bit AdamW's two
1-byte moments = 10 bytes per LoRA parameter. The per-token term is a multiple of (hidden + intermediate) fitted
to peaks measured on an H100 with a Llama-3.1-8B-shaped model (benchmarks/RESULTS.md, "memory planner"), and
checked against every preset's architecture (benchmarks/plan_check.py: within -0.6% .. +7.8% of the measured peak):
- unsloth: Unsloth's gradient checkpointing offloads each layer's input to the CPU, so only one layer's working
  set lives on the GPU: 13.65 * (hidden + intermediate) bytes per token.
- transformers: PEFT's checkpointing keeps every layer's input on the GPU (layers * hidden * 2 bytes per token)
  plus a larger working set: 35 * (hidden + intermediate) bytes per token (fitted on one point only).
The worst micro-batch is planned: every row at max_seq_length; with packing (training.packing) activations follow
the micro-batch's real tokens instead, so given the rows' token counts (and the order training walks them in) the
worst micro-batch is the largest one training will see (`packed_tokens`), and plain transformers' SDPA adds its
[tokens, tokens] block-diagonal boolean mask. MoE layers count the experts a token visits, times MOE_PER_TOKEN
(fitted on one gpt-oss-20b point, checked on two others); targeting their MLP puts a LoRA adapter on every expert.

Hub ids cannot be looked up here (no network is assumed), so the configs of the presets' architectures ship in
KNOWN; a local model folder or config.json path works for anything else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kto_pipeline.config import ALL_LINEAR, ATTENTION, Config

GiB = 2**30
CUDA_CONTEXT_GIB = 0.5  # CUDA context + cuBLAS workspace: outside PyTorch's allocator, but on the card
DEFAULT_BUDGET_GIB = 24.0  # the seed's RTX 3090
HEADROOM_GIB = 1.0  # the desktop, fragmentation: plan to leave this free

# config.json fields of the presets' architectures (and Llama-3.1-8B, the benchmark's), from their Hub repos
KNOWN: dict[str, dict[str, Any]] = {
    "qwen2.5-3b": dict(
        model_type="qwen2",
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "mistral-7b": dict(
        model_type="mistral",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32768,
        tie_word_embeddings=False,
    ),
    "llama-3.1-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
    "llama-2-13b": dict(
        model_type="llama",
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    "smollm2-135m": dict(
        model_type="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "gpt-oss-20b": dict(
        model_type="gpt_oss",
        hidden_size=2880,
        intermediate_size=2880,
        num_hidden_layers=24,
        num_attention_heads=64,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=201088,
        num_local_experts=32,
        num_experts_per_tok=4,
        tie_word_embeddings=False,
    ),
}
# Hub-id fragments (lower case) -> KNOWN key; the first match wins
ALIASES = [
    ("qwen2.5-3b", "qwen2.5-3b"),
    ("mistral-7b", "mistral-7b"),
    ("llama-3.1-8b", "llama-3.1-8b"),
    ("meta-llama-3.1-8b", "llama-3.1-8b"),
    ("llama-2-13b", "llama-2-13b"),
    ("gpt-oss-20b", "gpt-oss-20b"),
    ("smollm2-135m", "smollm2-135m"),
]

# Fitted on the H100 measurements (see the module docstring)
PER_TOKEN = {"unsloth": 13.65, "transformers": 35.0}
MOE_PER_TOKEN = 1.52  # MoE tokens also keep router logits and expert gather/scatter buffers (fitted on gpt-oss-20b)
# Packed passes under Unsloth (H200, Llama-3.1-8B shape; benchmarks/RESULTS.md, issue 20), as shares of the padded
# per-token bytes plus a fixed part. The fused reference forward (rows + KL rows: 2x the tokens, no grad) sets the
# peak: 0.505 of a padded token's bytes per token it scores, + 0.65 GiB, fitted on a sweep of 8k to 33k packed
# tokens (flash varlen attention; 16x512 and 16x2048 fit, four more points and a training run's own micro-batches
# within 1%). The gradient pass alone (packing without fuse_reference): 0.65 per real token, one point (16x2048,
# per-row attention). Plain transformers was not measured packed: it keeps the padded figure (plus SDPA's mask).
PACKED_GRAD_SHARE = {"unsloth": 0.65, "transformers": 1.0}
PACKED_FUSED_REF_SHARE = {"unsloth": 0.505, "transformers": 1.0}
PACKED_FIXED_GIB = {"unsloth": 0.65, "transformers": 0.0}
RESERVED_FACTOR = 1.05  # PyTorch's caching allocator holds a little more than it hands out
FIXED_GIB = 0.35  # RoPE caches, cuBLAS handles, Unsloth's buffers (fitted with PER_TOKEN)


@dataclass(frozen=True)
class Arch:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    experts: int = 0
    experts_per_token: int = 0

    @classmethod
    def from_config(cls, name: str, c: dict[str, Any]) -> Arch:
        c = c.get("text_config", c)  # multimodal configs nest the language model's
        try:
            hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
            return cls(
                name=name,
                hidden=hidden,
                intermediate=int(c.get("moe_intermediate_size") or c["intermediate_size"]),
                layers=int(c["num_hidden_layers"]),
                heads=heads,
                kv_heads=int(c.get("num_key_value_heads") or heads),
                head_dim=int(c.get("head_dim") or hidden // heads),
                vocab=int(c["vocab_size"]),
                tied=bool(c.get("tie_word_embeddings", False)),
                experts=int(c.get("num_local_experts") or c.get("num_experts") or 0),
                experts_per_token=int(c.get("num_experts_per_tok") or c.get("experts_per_token") or 0),
            )
        except KeyError as e:
            raise ValueError(
                f"{name}: config has no {e.args[0]!r}; is this a causal language model's config.json?"
            ) from None

    # parameter counts ----------------------------------------------------------------------------------------
    def linear_shapes(self) -> dict[str, tuple[int, int, int]]:
        """name -> (in, out, copies per layer) of every linear layer in a decoder block."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        mlp_copies = max(self.experts, 1)
        return {
            "q_proj": (self.hidden, q, 1),
            "k_proj": (self.hidden, kv, 1),
            "v_proj": (self.hidden, kv, 1),
            "o_proj": (q, self.hidden, 1),
            "gate_proj": (self.hidden, self.intermediate, mlp_copies),
            "up_proj": (self.hidden, self.intermediate, mlp_copies),
            "down_proj": (self.intermediate, self.hidden, mlp_copies),
        }

    @property
    def block_params(self) -> int:
        return self.layers * sum(i * o * n for i, o, n in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        return self.block_params + self.embedding_params

    def lora_params(self, r: int, targets: list[str]) -> int:
        """LoRA A and B on each targeted linear layer. MoE experts (gpt-oss) get one adapter per expert, on the
        fused gate_up (hidden -> 2 x intermediate) and on down: Unsloth 2026.10 attaches them whenever an MLP
        projection is targeted (measured: 1,479,278,592 trainable at r=128, exactly this count)."""
        shapes = self.linear_shapes()
        dense = sum(
            r * (shapes[t][0] + shapes[t][1])
            for t in targets
            if t in shapes and (shapes[t][2] == 1 or not self.experts)
        )
        experts = 0
        if self.experts:
            h, i = self.hidden, self.intermediate
            experts = (
                self.experts
                * r
                * (
                    ((h + 2 * i) if {"gate_proj", "up_proj"} & set(targets) else 0)
                    + ((i + h) if "down_proj" in targets else 0)
                )
            )
        return self.layers * (dense + experts)

    @property
    def active_intermediate(self) -> int:
        return self.intermediate * (self.experts_per_token if self.experts else 1)


def arch_for(model_name: str) -> Arch:
    """The architecture of a preset's model: 'tiny', a local folder or config.json, or a known Hub id."""
    if model_name == "tiny":
        from kto_pipeline.training.tiny import TINY_CONFIG, VOCAB_SIZE

        return Arch.from_config("tiny", {**TINY_CONFIG, "vocab_size": VOCAB_SIZE})
    if model_name == "smol":
        return Arch.from_config("smollm2-135m", KNOWN["smollm2-135m"])
    path = Path(model_name).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            return Arch.from_config(str(path), json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    key = model_name.lower()
    for fragment, arch in ALIASES:
        if fragment in key:
            return Arch.from_config(arch, KNOWN[arch])
    raise ValueError(
        f"no architecture known for {model_name!r}: without network access only these are built in: "
        f"{', '.join(KNOWN)}. Pass a local model folder or the path of its config.json instead."
    )


@dataclass(frozen=True)
class Estimate:
    arch: Arch
    backend: str
    micro_batch: int
    seq: int
    weights_gib: float
    lora_gib: float
    activations_gib: float
    fixed_gib: float
    tokens: int = 0  # tokens of the micro-batch planned (micro_batch x seq unless packed rows were given)

    @property
    def peak_allocated_gib(self) -> float:
        return self.weights_gib + self.lora_gib + self.activations_gib + self.fixed_gib

    @property
    def peak_reserved_gib(self) -> float:
        return self.peak_allocated_gib * RESERVED_FACTOR

    @property
    def on_card_gib(self) -> float:
        """What nvidia-smi would show: reserved + the CUDA context."""
        return self.peak_reserved_gib + CUDA_CONTEXT_GIB

    def fits(self, budget_gib: float = DEFAULT_BUDGET_GIB) -> bool:
        return self.on_card_gib <= budget_gib - HEADROOM_GIB


def backend_for(config: Config) -> str:
    """The backend a CUDA machine would use: Unsloth unless the config says never, or says auto on a CUDA machine
    without Unsloth installed (there transformers + PEFT runs, at ~2.5x Unsloth's memory: planning for Unsloth
    would promise a fit that then runs out of memory). Planning ahead on a CPU machine assumes Unsloth."""
    import importlib.util

    import torch

    if config.model.use_unsloth == "never":
        return "transformers"
    if config.model.use_unsloth == "auto" and torch.cuda.is_available() and importlib.util.find_spec("unsloth") is None:
        return "transformers"
    return "unsloth"


def packed_tokens(row_tokens: list[int], micro_batch: int, max_seq_length: int, order: list[int] | None = None) -> int:
    """Tokens of the worst packed micro-batch (each row at most max_seq_length). With `order`, the row order
    training will walk (TRL's KTO samples sequentially), the largest run of `micro_batch` consecutive rows in it;
    without, its `micro_batch` longest rows: a bound for any order."""
    tokens = [min(t, max_seq_length) for t in row_tokens]
    if order is None:
        return sum(sorted(tokens, reverse=True)[:micro_batch])
    return max(
        (sum(tokens[i] for i in order[s : s + micro_batch]) for s in range(0, len(order), micro_batch)), default=0
    )


def estimate(
    config: Config,
    arch: Arch | None = None,
    backend: str | None = None,
    micro_batch: int | None = None,
    seq: int | None = None,
    tokens: int | None = None,
) -> Estimate:
    """Planned peak of one micro-batch: `tokens` packed tokens, or micro_batch x seq (every row at max length)."""
    arch = arch or arch_for(config.model.model_name)
    backend = backend or backend_for(config)
    if backend not in PER_TOKEN:
        raise ValueError(f"unknown backend {backend!r}; expected one of {sorted(PER_TOKEN)}")
    b = micro_batch or config.training.per_device_train_batch_size
    t = seq or config.model.max_seq_length
    four_bit = config.model.load_in_4bit
    block_bytes = arch.block_params * ((0.5 + 1 / 64) if four_bit else 2)
    # PEFT's prepare_model_for_kbit_training upcasts the 16-bit leftovers of a 4-bit model to fp32
    emb_bytes = arch.embedding_params * (4 if four_bit and backend == "transformers" else 2)
    lora = arch.lora_params(config.lora.r, config.lora.target_modules) * 10
    per_token = PER_TOKEN[backend] * (arch.hidden + arch.active_intermediate)
    per_token *= MOE_PER_TOKEN if arch.experts else 1
    if backend == "transformers" and config.lora.gradient_checkpointing:
        per_token += arch.layers * arch.hidden * 2
    if not config.lora.gradient_checkpointing:  # every layer's activations stay: ~layers x one layer's
        per_token *= arch.layers
    n = tokens if tokens is not None else b * t
    activations = n * per_token
    if config.training.packing:
        # the larger of the gradient pass over n tokens and, fused, the reference forward over the 2n of rows + KL rows
        share = PACKED_GRAD_SHARE[backend]
        if config.training.fuse_reference:
            share = max(share, 2 * PACKED_FUSED_REF_SHARE[backend])
        activations = activations * share + PACKED_FIXED_GIB[backend] * GiB
        if backend == "transformers":  # SDPA's block-diagonal mask: one bool per (query, key) pair
            activations += (2 * n if config.training.fuse_reference else n) ** 2
    return Estimate(
        arch,
        backend,
        b,
        t,
        weights_gib=(block_bytes + emb_bytes) / GiB,
        lora_gib=lora / GiB,
        activations_gib=activations / GiB,
        fixed_gib=FIXED_GIB,
        tokens=n,
    )


def pick_micro_batch(
    config: Config,
    budget_gib: float,
    arch: Arch | None = None,
    row_tokens: list[int] | None = None,
    order: Callable[[int], list[int]] | None = None,
) -> tuple[int, int]:
    """Largest micro-batch (a divisor of the effective batch, at least 2 for KTO's KL term) whose planned peak
    fits the budget, and the accumulation that keeps the effective batch; unchanged if none fits.

    row_tokens: the training rows' token counts; with packing the micro-batch is planned by its real tokens instead
    of micro-batch x max_seq_length: by the worst micro-batch of `order(b)` (the row order training will use at
    micro-batch b) when given, else by the longest rows."""
    t = config.training
    effective = t.per_device_train_batch_size * t.gradient_accumulation_steps
    arch = arch or arch_for(config.model.model_name)
    packed = t.packing and row_tokens

    def tokens(b: int) -> int | None:
        return (
            packed_tokens(row_tokens, b, config.model.max_seq_length, order(b) if order else None) if packed else None
        )

    fitting = [
        b
        for b in range(2, effective + 1)  # the accumulation must still split among the processes
        if effective % b == 0
        and (effective // b) % t.num_processes == 0
        and estimate(config, arch, micro_batch=b, tokens=tokens(b)).fits(budget_gib)
    ]
    if not fitting:
        return t.per_device_train_batch_size, t.gradient_accumulation_steps
    return max(fitting), effective // max(fitting)


def with_budget(
    config: Config, row_tokens: list[int] | None = None, order: Callable[[int], list[int]] | None = None
) -> Config:
    """config with the micro-batch chosen by the planner when training.memory_budget_gib is set (by the rows' real
    tokens when packing and row_tokens are given; `order` as in pick_micro_batch)."""
    budget = config.training.memory_budget_gib
    if not budget:
        return config
    micro, accum = pick_micro_batch(config, budget, row_tokens=row_tokens, order=order)
    training = replace(config.training, per_device_train_batch_size=micro, gradient_accumulation_steps=accum)
    return replace(config, training=training)


def tokens_that_fit(config: Config, budget_gib: float, arch: Arch, backend: str | None = None) -> int:
    """Most packed tokens one micro-batch may hold within the budget (0 if not even one token fits)."""
    lo, hi = 0, 1 << 22
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(config, arch, backend, tokens=mid).fits(budget_gib):
            lo = mid
        else:
            hi = mid - 1
    return lo


def plan_report(config: Config, budget_gib: float = DEFAULT_BUDGET_GIB, backend: str | None = None) -> str:
    """The plan from the config alone (no data): every row at max_seq_length, packed or not."""
    arch = arch_for(config.model.model_name)
    e = estimate(config, arch, backend)
    t = config.training
    targets = (
        "all linear layers"
        if set(config.lora.target_modules) >= set(ALL_LINEAR)
        else "/".join(config.lora.target_modules)
    )
    lines = [
        f"Memory plan for {config.model.model_name} ({arch.name}: {arch.params / 1e9:.2f}B parameters, "
        f"{arch.layers} layers, hidden {arch.hidden}, vocab {arch.vocab}"
        + (f", {arch.experts} experts / {arch.experts_per_token} per token" if arch.experts else "")
        + ")",
        f"  backend {e.backend}, {'4-bit NF4' if config.model.load_in_4bit else '16-bit'} weights, "
        f"LoRA r={config.lora.r} on {targets}, micro-batch {e.micro_batch} x {e.seq} tokens "
        f"(every row at max_seq_length), "
        f"gradient checkpointing {'on' if config.lora.gradient_checkpointing else 'off'}",
        f"  weights        {e.weights_gib:6.2f} GiB",
        f"  LoRA + AdamW   {e.lora_gib:6.2f} GiB",
        f"  activations    {e.activations_gib:6.2f} GiB",
        f"  other          {e.fixed_gib:6.2f} GiB",
        f"  peak allocated {e.peak_allocated_gib:6.2f} GiB, reserved ~{e.peak_reserved_gib:.2f} GiB, "
        f"on the card with the CUDA context ~{e.on_card_gib:.2f} GiB",
    ]
    experts_lora = arch.lora_params(config.lora.r, config.lora.target_modules) - arch.lora_params(
        config.lora.r, [m for m in config.lora.target_modules if m in ATTENTION]
    )
    if arch.experts and experts_lora:
        lines.append(
            f"  LoRA on each of the {arch.experts} experts' MLPs: {experts_lora * 10 / GiB:.2f} GiB of the "
            f"{e.lora_gib:.2f}; attention only (--lora-target-modules {' '.join(ATTENTION)}) leaves "
            f"{e.peak_allocated_gib - experts_lora * 10 / GiB:.2f} GiB allocated"
        )
    if e.fits(budget_gib):
        lines.append(f"  fits {budget_gib:g} GiB (with {HEADROOM_GIB:g} GiB to spare)")
    else:
        lines.append(
            f"  does NOT fit {budget_gib:g} GiB: lower --batch-size (and raise --gradient-accumulation "
            f"to keep the effective batch), or --max-seq-length"
        )
    if t.packing:
        lines.append(
            f"  packed (training.packing): a micro-batch may hold up to "
            f"{tokens_that_fit(config, budget_gib, arch, backend):,} real tokens in {budget_gib:g} GiB; "
            "planned here at its worst (every row at max_seq_length); with memory_budget_gib, training "
            "picks the micro-batch by the largest one it will train on"
        )
    micro, accum = pick_micro_batch(config, budget_gib, arch)
    if micro != t.per_device_train_batch_size:
        lines.append(
            f"  largest micro-batch that fits {budget_gib:g} GiB at the same effective batch "
            f"({t.per_device_train_batch_size * t.gradient_accumulation_steps}): "
            f"--batch-size {micro} --gradient-accumulation {accum} (faster: fewer, bigger steps)"
        )
    if config.model.model_name == "tiny":
        lines.append("  (the tiny preset trains on the CPU by default; the GPU numbers are for reference)")
    return "\n".join(lines)


def dry_run_report(config: Config) -> str:
    """For `kto train --dry-run`: the plan against the seed's 24 GB card."""
    try:
        return plan_report(config)
    except ValueError as e:
        return f"Memory plan unavailable: {e}"
