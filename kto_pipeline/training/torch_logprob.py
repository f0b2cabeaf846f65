"""A pure-PyTorch stand-in for TRL's Triton `ChunkedLogProbFunction`, for machines without Triton.

TRL 1.15's KTOTrainer always scores completions through a fused LM head whose kernel is written in Triton;
the CPU build of PyTorch ships no Triton, so on a CPU `trl.trainer.utils._ChunkedLogProbFunction` is None and
training fails with "'NoneType' object has no attribute 'apply'". This computes the same per-token
outputs in token chunks (each chunk's logits are recomputed in backward via checkpointing, so memory
stays at one [chunk, vocab] tile). kto_pipeline.patches.install_torch_chunked_logprob installs it, only where
TRL's own kernel could not be imported.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

TOKEN_CHUNK = 1024


def _chunk(hidden, weight, bias, targets, inv_t, softcap, logit_scale, outputs):
    z = hidden.float() @ weight.float().t()
    if bias is not None:
        z = z + bias.float()
    z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = z * inv_t
    logp = torch.log_softmax(z, dim=-1)
    target_logp = logp.gather(1, targets[:, None]).squeeze(1)
    entropy = -(logp.exp() * logp).sum(-1) if "entropy" in outputs else None
    with torch.no_grad():
        sq = torch.logsumexp(2 * logp, dim=-1) if "log_sum_sq_probs" in outputs else None
        mean = z.mean(-1) if "mean_logits" in outputs else None
        top1 = (z.argmax(-1) == targets) if "is_top1" in outputs else None
    return target_logp, entropy, sq, mean, top1


class TorchChunkedLogProb:
    """Drop-in for `ChunkedLogProbFunction.apply(hidden, weight, bias, targets, temperature, chunk_size,
    final_logit_softcapping, logit_scale, outputs)` -> (log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1)."""

    @staticmethod
    def apply(
        hidden,
        weight,
        bias,
        targets,
        temperature,
        chunk_size,
        final_logit_softcapping=None,
        logit_scale=1.0,
        outputs=(),
    ):
        parts = []
        for s in range(0, hidden.shape[0], TOKEN_CHUNK):
            args = (
                hidden[s : s + TOKEN_CHUNK],
                weight,
                bias,
                targets[s : s + TOKEN_CHUNK],
                1.0 / temperature,
                final_logit_softcapping,
                logit_scale,
                tuple(outputs),
            )
            needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
            parts.append(checkpoint(_chunk, *args, use_reentrant=False) if needs_grad else _chunk(*args))
        if not parts:  # no scored token in this micro-batch
            empty = hidden.new_zeros(0, dtype=torch.float32) + hidden.sum() * 0
            return (
                empty,
                *(empty if k in outputs else None for k in ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")),
            )
        return tuple(None if parts[0][i] is None else torch.cat([p[i] for p in parts]) for i in range(5))
