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

The architecture (layer shapes, parameter counts) comes from the model's config.json: training/arch.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from kto_pipeline.config import ALL_LINEAR, ATTENTION, Config
from kto_pipeline.training.arch import Arch, arch_for
from kto_pipeline.training.model import backend_for

GiB = 2**30
CUDA_CONTEXT_GIB = 0.5  # CUDA context + cuBLAS workspace: outside PyTorch's allocator, but on the card
DEFAULT_BUDGET_GIB = 24.0  # the seed's RTX 3090
HEADROOM_GIB = 1.0  # the desktop, fragmentation: plan to leave this free

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
    backend = backend or backend_for(config, planning=True)
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
