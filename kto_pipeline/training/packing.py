"""Padding-free KTO passes and one fused reference pass, on top of TRL's KTOTrainer.

Packing. TRL's collator pads every micro-batch to its longest row, and each KTO step runs the model on those padded
tensors several times (policy on the KL rows, policy on the rows with gradient, reference on both). Here every call
of the model's fused LM-head forward (`model(..., labels=..., fused_lm_head=True)`, the one TRL's KTO uses for all
of them) is packed instead: the real tokens of the B rows go into one [1, N] sequence, the position ids restart at 0
at each row, and the labels are shifted per row (`shift_labels`), so no row predicts the next row's first token.
Attention stays inside each row:
- transformers (sdpa, eager, flex): `attention_mask=None` with restarting position ids makes its masking utilities
  build the block-diagonal causal mask (`find_packed_sequence_indices`); flash-attention reads the same position
  ids as varlen boundaries;
- Unsloth honours the packed position ids in its own attention (test_gpu.py checks it against the padded path).
The per-token log-probs (and entropy, mean logits) are scattered back into TRL's padded [B, L-1] layout, so TRL's
loss, metrics and the precompute pass read them unchanged. The collator still pads (cheap, on the CPU): packing
happens at the forward, for every pass at once.

Fused reference. TRL scores the reference twice per step (its KL rows, then the rows), each a separate forward with
the adapter disabled. `fuse_reference` stacks the rows and the KL rows into one no-grad forward (one packed sequence
when packing), hands the result to TRL through its own precomputed-reference path (`ref_logps`, `ref_KL_logps` in
the batch), and does the same in the precompute pass.

Not fused: the policy's KL rows into the policy's gradient pass. TRL takes the KL estimate under no_grad and
detaches it (`kl = (KL_logps - ref_KL_logps).mean().detach()`), so it would be correct, but in the gradient pass
every KL token would also be checkpoint-recomputed and back-propagated (with zero gradient): about 3 forwards' work
instead of the 1 of its own no-grad pass, to save launches that packing has already made few.

The private TRL surface used here: the instance `forward` TRL's `add_fused_lm_head` installs, `use_adapter`,
`disable_gradient_checkpointing`, and the `precompute_ref_logps` attribute read by `_compute_loss`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

# Forward kwargs whose rows packing cannot place (vision inputs, per-row token types): refuse rather than guess.
_UNPACKABLE = ("pixel_values", "token_type_ids", "mm_token_type_ids", "image_grid_thw", "inputs_embeds")


class PackStats:
    """Whether the forwards pack (switchable on a live trainer), and the tokens they computed against what the
    padded tensors would have held: for benchmarks and tests (a packing that fell back to padding shows here)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.calls = self.tokens = self.padded = 0

    def add(self, tokens: int, padded: int) -> None:
        self.calls += 1
        self.tokens += tokens
        self.padded += padded


def pack(input_ids, attention_mask, labels):
    """Padded rows -> one packed row: (ids [1, N], position ids [1, N], shifted labels [1, N], where), `where` being
    the flat positions [N] of the real tokens in the padded [B, L] layout.

    Works for left or right padding (the real tokens of each row must be contiguous, as TRL's collator makes them).
    One host sync (the nonzero that sizes N): the gathers here and the scatters in `unpack` index with `where`
    rather than with the boolean mask, which would sync once per tensor and leave the GPU idle between passes.
    """
    import torch

    keep = attention_mask.bool()
    positions = attention_mask.long().cumsum(1) - 1
    shifted = torch.full_like(labels, -100)
    shifted[:, :-1] = labels[:, 1:]  # token j predicts token j+1 of its own row; a row's last token predicts nothing
    shifted = shifted.masked_fill(~keep, -100)
    where = keep.reshape(-1).nonzero().squeeze(1)
    return tuple(t.reshape(-1)[where][None] for t in (input_ids, positions, shifted)) + (where,)


def unpack(values, where, shape):
    """Packed per-token values [1, N] -> TRL's padded layout [B, L-1] (zeros where nothing was scored)."""
    if values is None:
        return None
    full = values.new_zeros(shape[0] * shape[1])
    full[where] = values[0]
    return full.view(shape)[:, :-1]


def packed_forward(forward: Callable, stats: PackStats) -> Callable:
    """Wrap the fused-LM-head forward TRL installed on the model: same call, same output shapes, packed inside."""

    @functools.wraps(forward)
    def packed(
        *args: Any, fused_lm_head: bool = False, labels=None, input_ids=None, attention_mask=None, **kwargs: Any
    ):
        if not stats.enabled or not fused_lm_head or attention_mask is None or args or attention_mask.dim() != 2:
            return forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                input_ids=input_ids,
                attention_mask=attention_mask,
                **kwargs,
            )
        extra = [k for k in _UNPACKABLE if kwargs.get(k) is not None]
        if extra or kwargs.get("shift_labels") is not None or kwargs.get("position_ids") is not None:
            raise ValueError(
                f"training.packing supports text-only batches; this forward also got "
                f"{extra or 'shift_labels/position_ids'}: set training.packing=false"
            )
        kwargs.pop("shift_labels", None)
        kwargs.pop("position_ids", None)
        ids, positions, shift_labels, where = pack(input_ids, attention_mask, labels)
        stats.add(ids.shape[1], input_ids.numel())
        out = forward(
            input_ids=ids,
            position_ids=positions,
            attention_mask=None,
            shift_labels=shift_labels,
            fused_lm_head=True,
            **kwargs,
        )
        for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask"):
            setattr(out, name, unpack(getattr(out, name), where, input_ids.shape))
        return out

    return packed


def stack_rows(batch: dict[str, Any], pad_token_id: int) -> tuple[Any, Any, Any]:
    """The rows and the KL rows of a micro-batch as one padded batch of 2B rows: (ids, attention mask, labels)."""
    import torch
    import torch.nn.functional as F

    width = max(batch["input_ids"].shape[1], batch["KL_input_ids"].shape[1])

    def widen(t, value):
        return F.pad(t, (0, width - t.shape[1]), value=value)

    def padded(prefix: str):
        ids, am, cm = (batch[f"{prefix}{k}"] for k in ("input_ids", "attention_mask", "completion_mask"))
        return widen(ids, pad_token_id), widen(am, 0), widen(ids.masked_fill(cm == 0, -100), -100)

    return tuple(torch.cat(pair) for pair in zip(padded(""), padded("KL_")))


def packed_trainer_class(base: type) -> type:
    """`base` (TRL's KTOTrainer, or the class Unsloth rewrote it into) with packing and the fused reference.

    A class built around whichever KTOTrainer is current, since Unsloth replaces trl.KTOTrainer on import."""

    class PackedKTOTrainer(base):
        def __init__(self, *args: Any, packing: bool = False, fuse_reference: bool = False, **kwargs: Any):
            self.fuse_reference = fuse_reference
            self.pack_stats = PackStats(packing)
            self._packed_models: set[int] = set()
            super().__init__(*args, **kwargs)
            self._install_packing()

        def _install_packing(self) -> None:
            """Wrap the fused forward TRL installed, once per model; before TRL's precompute pass too (it runs
            inside KTOTrainer.__init__, after the fused head is added). Packs only while pack_stats.enabled."""
            for model in filter(None, (self.model, getattr(self, "ref_model", None))):
                inner = model.get_base_model() if hasattr(model, "get_base_model") else model
                if id(inner) not in self._packed_models:
                    inner.forward = packed_forward(inner.forward, self.pack_stats)
                    self._packed_models.add(id(inner))

        def _precompute_ref_logps(self, *args: Any, **kwargs: Any):
            self._install_packing()
            return super()._precompute_ref_logps(*args, **kwargs)

        # One no-grad forward for the reference's rows and KL rows -----------------------------------------------
        def _reference_logps(self, batch: dict[str, Any], model: Any = None):
            """Reference log-probs of the rows and the KL rows, (B,) each, from one forward without the adapter
            (`model`: what TRL's precompute pass scores with; in the step, the reference model or the policy)."""
            import torch
            from trl.trainer.kto_trainer import disable_gradient_checkpointing, use_adapter

            model = model or self.ref_model or self.model
            adapter = contextlib.nullcontext()
            if self.ref_model is None and hasattr(self.model, "peft_config"):
                unwrapped = self.accelerator.unwrap_model(self.model)
                adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
            ids, am, labels = stack_rows(
                {k: v.to(self.accelerator.device) for k, v in batch.items() if isinstance(v, torch.Tensor)},
                self._tokenizer.pad_token_id,
            )
            with (
                torch.no_grad(),
                disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
                adapter,
                self.accelerator.autocast(),
            ):
                out = model(input_ids=ids, attention_mask=am, labels=labels, use_cache=False, fused_lm_head=True)
            logps = out.log_probs[:, -(ids.shape[1] - 1) :].sum(-1)
            n = batch["input_ids"].shape[0]
            return logps[:n], logps[n:]

        def compute_ref_log_probs(self, model, inputs):  # TRL's precompute pass, one batch
            if not (self.fuse_reference and self.calculate_KL):
                return super().compute_ref_log_probs(model, inputs)
            return self._reference_logps(inputs, model)

        def _compute_loss(self, model, inputs, return_outputs):
            if not (self.fuse_reference and self.calculate_KL) or self.precompute_ref_logps:
                return super()._compute_loss(model, inputs, return_outputs)
            ref, ref_kl = self._reference_logps(inputs)
            # TRL's own path for precomputed reference log-probs: read from the batch instead of scored in the step
            self.precompute_ref_logps = True
            try:
                return super()._compute_loss(
                    model, {**inputs, "ref_logps": ref, "ref_KL_logps": ref_kl}, return_outputs
                )
            finally:
                self.precompute_ref_logps = False

    PackedKTOTrainer.__name__ = PackedKTOTrainer.__qualname__ = f"Packed{base.__name__}"
    return PackedKTOTrainer
