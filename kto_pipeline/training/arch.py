"""Model architectures from their config.json alone (no weights, no network): layer shapes and parameter counts.

Hub ids cannot be looked up offline, so the configs of the presets' architectures ship in KNOWN; a local model
folder or config.json path works for anything else. The memory planner (training/memory.py) and the config's
own checks (config.py) read architectures from here; this module imports neither of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        projection is targeted (this count matches Unsloth's trainable-parameter count exactly)."""
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
