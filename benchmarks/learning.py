#!/usr/bin/env python
"""Proof of learning: does KTO on data/learning make a model answer more concisely on questions it never saw?

The feedback set (benchmarks/learning_data.py) labels direct 1-2 sentence answers desirable and the same
answers padded with filler undesirable. This script greedy-generates answers to the 48 held-out questions with
the model's chat template and measures, per generation: words; concise = <= 40 words AND the model ended its
turn by itself within --max-new-tokens; filler = contains a stock filler phrase ("Great question", "I hope
this helps", "In conclusion", ...). It reports the rates before (base) -> after (trained).

    # the full experiment: per seed train (the pipeline's train()), merge, GGUF; evaluate every variant
    python benchmarks/learning.py experiment --base /path/to/smol_hf --device cuda --gguf --out learning-out
    # CPU smoke run of the plumbing on the tiny preset
    python benchmarks/learning.py experiment --base tiny --seeds 1 --steps 4 --limit 6 --gguf --out /tmp/lt
    # compare models already at hand (HF folders or .gguf files) with a base
    python benchmarks/learning.py compare --base BASE_DIR --model MERGED_DIR --model model-Q4_K_M.gguf --out DIR

Writes DIR/results.json (every number), DIR/results.md (mean ± sd over seeds, min..max) and
DIR/generations/*.jsonl (every answer, for reading).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO / "data" / "learning"
CONCISE_WORDS = 40
# Stock filler of chat assistants; the undesirable training answers use these, a direct answer needs none.
FILLER = re.compile(
    "|".join(
        [
            r"\b(great|good|excellent|interesting|wonderful) question",
            r"\bhappy to help",
            r"\bglad you asked",
            r"\bthanks? (you )?(so much )?for asking",
            r"\bhope (this|that|it) (helps|was helpful|answers)",
            r"\blet me know if",
            r"\bfeel free to",
            r"\bdon'?t hesitate",
            r"\bin conclusion",
            r"\bto summarize",
            r"\bin summary",
            r"\ball in all",
            r"\bto put it simply",
            r"\bin other words",
            r"\bto wrap (things|it) up",
        ]
    ),
    re.IGNORECASE,
)

TRAIN = """import json, sys
from pathlib import Path
from kto_pipeline.config import Config
from kto_pipeline.training.run import train
train(Config.from_dict(json.loads(sys.argv[1])), *map(Path, sys.argv[2:5]))
"""


# ---------------------------------------------------------------------------------------------- measuring


def heldout(limit: int | None = None) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in (DATA / "heldout.jsonl").read_text(encoding="utf-8").splitlines()]
    return rows[:limit] if limit else rows


def measure(text: str, stopped: bool, key: str | None = None) -> dict[str, Any]:
    """key: for factual held-out questions, a regex the right answer contains ("correct" is None without one)."""
    n = len(text.split())
    return {
        "words": n,
        "stopped": stopped,
        "concise": stopped and n <= CONCISE_WORDS,
        "filler": bool(FILLER.search(text)),
        "correct": bool(re.search(key, text, re.IGNORECASE)) if key else None,
    }


def summarize(gens: list[dict[str, Any]]) -> dict[str, float]:
    words = [g["words"] for g in gens]
    return {
        "concise_rate": _mean(g["concise"] for g in gens),
        "filler_rate": _mean(g["filler"] for g in gens),
        "stopped_rate": _mean(g["stopped"] for g in gens),
        "mean_words": statistics.mean(words),
        "median_words": statistics.median(words),
        "n": len(gens),
        # brevity must not be bought with wrong answers: the share of factual questions answered right
        "accuracy": _mean(g["correct"] for g in gens if g.get("correct") is not None)
        if any(g.get("correct") is not None for g in gens)
        else None,
    }


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs)


def generate_hf(
    path: str, prompts: list[str], device: str, max_new_tokens: int, batch_size: int = 16
) -> list[tuple[str, bool]]:
    """Greedy answers from a Hugging Face folder: (text, ended its turn by itself). Left-padded batches."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id])
    out: list[tuple[str, bool]] = []
    for s in range(0, len(prompts), batch_size):
        chats = [
            tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts[s : s + batch_size]
        ]
        # the template already holds any special tokens the model expects
        enc = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.inference_mode():
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
            )
        for row in gen[:, enc["input_ids"].shape[1] :].tolist():
            end = next((i for i, t in enumerate(row) if t in eos), None)
            out.append((tok.decode(row[:end], skip_special_tokens=True).strip(), end is not None))
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def generate_gguf(path: str, prompts: list[str], max_new_tokens: int) -> list[tuple[str, bool]]:
    """Greedy answers through llama.cpp (KTOInference), with the GGUF's own chat template."""
    from kto_pipeline.inference import KTOInference

    out = []
    with KTOInference(path, n_ctx=max(512, max_new_tokens + 256), seed=0) as bot:  # a chat prompt + answer fit
        for p in prompts:
            r = bot.backend.llm.create_chat_completion(  # finish_reason says whether it stopped by itself
                messages=[{"role": "user", "content": p}], max_tokens=max_new_tokens, temperature=0.0, top_p=1.0, seed=0
            )["choices"][0]
            out.append(((r["message"]["content"] or "").strip(), r["finish_reason"] == "stop"))
    return out


def completion_logprob(model, tok, prompt: str, completion: str, max_tokens: int | None = None) -> float:
    """Sum of log p(completion tokens | chat-formatted prompt): the sequence log-prob KTO's rewards are made of.
    max_tokens keeps only the completion's first tokens (for models with a short context)."""
    import torch

    user = [{"role": "user", "content": prompt}]
    head = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": completion}], tokenize=False)
    assert full.startswith(head), "chat template renders the prompt differently with an answer"
    p_ids = tok(head, add_special_tokens=False)["input_ids"]
    c_ids = tok(full[len(head) :], add_special_tokens=False)["input_ids"][:max_tokens]
    ids = torch.tensor([p_ids + c_ids], device=model.device)
    with torch.inference_mode():
        logits = model(ids).logits[0, len(p_ids) - 1 : -1].float()
    return float(logits.log_softmax(-1).gather(1, ids[0, len(p_ids) :, None]).sum())


def logprob_margin(model, tok, rows: list[dict[str, str]], max_tokens: int | None = None) -> float:
    """Mean over held-out prompts of log p(concise answer) - log p(verbose answer): rises as the model learns
    to prefer the concise style, whatever greedy decoding happens to pick."""
    return statistics.mean(
        completion_logprob(model, tok, r["prompt"], r["concise"], max_tokens)
        - completion_logprob(model, tok, r["prompt"], r["verbose"], max_tokens)
        for r in rows
    )


def hf_margin(path: str, device: str, rows: list[dict[str, str]]) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return logprob_margin(model, AutoTokenizer.from_pretrained(path), rows)


def evaluate(model: str, name: str, out_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """Generate for every held-out prompt, write the answers to generations/<name>.jsonl, return the rates."""
    rows = heldout(args.limit)
    prompts = [r["prompt"] for r in rows]
    t = time.time()
    if model.endswith(".gguf"):
        answers = generate_gguf(model, prompts, args.max_new_tokens)
    else:
        answers = generate_hf(model, prompts, args.device, args.max_new_tokens)
    gens = [
        {"prompt": r["prompt"], "answer": a, **measure(a, stopped, r.get("key"))}
        for r, (a, stopped) in zip(rows, answers)
    ]
    (out_dir / "generations").mkdir(parents=True, exist_ok=True)
    (out_dir / "generations" / f"{name}.jsonl").write_text(
        "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in gens), encoding="utf-8"
    )
    summary = {**summarize(gens), "generate_s": round(time.time() - t, 1)}
    if not model.endswith(".gguf"):
        summary["logprob_margin"] = hf_margin(model, args.device, rows)
    print(f"{name}: {summary}", flush=True)
    return summary


# --------------------------------------------------------------------------------------------- training


def config_for(base: str, seed: int, args: argparse.Namespace):
    """The pipeline's Config for this run. 16-bit LoRA (no 4-bit base): a 135M model fits anywhere, and the merge
    is then into the very weights that were trained against."""
    from kto_pipeline.config import Config, apply_overrides

    return apply_overrides(
        Config(),
        {
            "model": {
                "model_name": base,
                "max_seq_length": args.max_seq_length,
                "load_in_4bit": False,
                "use_unsloth": args.unsloth,
            },
            "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r, "gradient_checkpointing": False},
            "training": {
                "per_device_train_batch_size": args.batch_size,
                "gradient_accumulation_steps": 1,
                "learning_rate": args.learning_rate,
                "max_steps": args.steps,
                "warmup_ratio": 0.1,
                "lr_scheduler_type": "cosine",
                "beta": args.beta,
                "seed": seed,
                "optim": "adamw_torch",
                "save_steps": args.steps + 1,
                "logging_steps": 1,
            },
        },
    )


def train_seed(base: str, seed: int, data: Path, run_dir: Path, cache: Path, args: argparse.Namespace) -> dict:
    """train() in a child process (as the pipeline runs it: its memory is freed when it exits); its metrics."""
    config = config_for(base, seed, args)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), TQDM_DISABLE="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # train() picks CUDA whenever it sees a GPU
    adapter = run_dir / "adapter"
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.run(
            [sys.executable, "-c", TRAIN, json.dumps(config.to_dict()), str(data), str(adapter), str(cache)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode:
        raise RuntimeError(
            f"training seed {seed} failed; see {run_dir / 'train.log'}:\n" + (run_dir / "train.log").read_text()[-3000:]
        )
    from kto_pipeline.reports import TrainingMetrics

    m = TrainingMetrics.read(adapter).to_dict()
    ev = m.get("eval") or {}
    return {
        "steps": m["steps"],
        "backend": m["backend"],
        "train_loss": m["train_loss"],
        "final_loss": m["final_loss"],
        "eval_loss": m["eval_loss"],
        "eval_reward_margin": ev.get("eval_rewards/margins"),
        "eval_kl": ev.get("eval_kl"),
        "eval_rewards_chosen": ev.get("eval_rewards/chosen"),
        "eval_rewards_rejected": ev.get("eval_rewards/rejected"),
        "train_kl": m["kl"],
        "tokens_per_s": m["tokens_per_s"],
        "peak_vram_gib": m["peak_vram_gib"],
        "train_runtime_s": m["train_runtime_s"],
        "config_fingerprint": config.fingerprint(),
    }


def gguf_files(model_dir: Path, out_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Q8_0 and Q4_K_M files of model_dir through the pipeline's export (F16 base, llama.cpp-verified); the
    verification figures are kept, and a file outside the pipeline's limits is measured all the same."""
    from kto_pipeline.export.gguf import GGUFVerificationError, export_gguf

    try:
        results = export_gguf(
            model_dir, out_dir, ("Q8_0", "Q4_K_M"), transformers_check=False, modelfile_from=None, log=lambda s: None
        )
    except GGUFVerificationError as e:
        results = e.results
    except Exception as e:  # noqa: BLE001 - a converter or llama.cpp failure: recorded, the HF results still count
        print(f"GGUF export of {model_dir} failed: {str(e)[:2000]}", flush=True)
        return {}, {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
    files, checks = {}, {}
    for r in results:
        checks[r["type"]] = {
            "passed": r["passed"],
            "failures": r["failures"],
            **{k: r["verification"].get(k) for k in ("rel_error", "top1_agreement")},
        }
        if r["type"] != "F16":
            path = Path(r["path"])
            if not r["passed"]:  # rejected files are renamed *.gguf.rejected; llama.cpp wants the suffix
                path = path.rename(path.with_name(path.name.removesuffix(".rejected") + ".unverified.gguf"))
            files[r["type"]] = str(path)
    return files, checks


# --------------------------------------------------------------------------------------------- reporting

METRICS = ["concise_rate", "mean_words", "stopped_rate", "filler_rate", "accuracy", "logprob_margin"]
TRAIN_METRICS = ["eval_loss", "eval_reward_margin", "eval_kl", "train_loss", "train_runtime_s"]


def spread(values: list[float | None]) -> dict[str, float] | None:
    vs = [v for v in values if v is not None]
    if not vs:
        return None
    return {
        "mean": statistics.mean(vs),
        "sd": statistics.stdev(vs) if len(vs) > 1 else 0.0,
        "min": min(vs),
        "max": max(vs),
        "n": len(vs),
    }


def fmt(s: dict[str, float] | None, spec: str = ".3g", pct: bool = False) -> str:
    if s is None:
        return "–"
    f = (lambda v: f"{100 * v:.0f}%") if pct else (lambda v: format(v, spec))
    if s["n"] == 1:
        return f(s["mean"])
    return f"{f(s['mean'])} ± {f(s['sd'])} ({f(s['min'])}..{f(s['max'])})"


def aggregate(result: dict[str, Any]) -> dict[str, Any]:
    variants = sorted({v for s in result["seeds"] for v in s["eval"]}, key=["merged", "Q8_0", "Q4_K_M"].index)
    base_margin = result["base"]["hf"].get("logprob_margin")
    for s in result["seeds"]:  # what training added to the preference, per seed
        for v in s["eval"].values():
            if v.get("logprob_margin") is not None:
                v["margin_gain"] = v["logprob_margin"] - base_margin
    return {
        "eval": {
            v: {
                m: spread([s["eval"][v].get(m) for s in result["seeds"] if v in s["eval"]])
                for m in METRICS + ["margin_gain"]
            }
            for v in variants
        },
        "training": {m: spread([s["training"].get(m) for s in result["seeds"]]) for m in TRAIN_METRICS},
    }


def markdown(result: dict[str, Any]) -> str:
    agg = result["aggregate"]
    n = len(result["seeds"])
    lines = [
        f"Held-out prompts: {result['heldout_prompts']}; seeds: {n}; mean ± sd (min..max) over seeds.",
        "",
        "| model | concise (≤ 40 words, stopped) | mean words | stopped by itself | filler phrase | "
        "factual accuracy | log p(concise) − log p(verbose) | gain over base |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    one = lambda v: {"mean": v, "n": 1} if v is not None else None  # noqa: E731
    rows = [(f"base {v}", {m: one(s.get(m)) for m in METRICS + ["margin_gain"]}) for v, s in result["base"].items()]
    rows += [(f"trained {v}", s) for v, s in agg["eval"].items()]
    for name, s in rows:
        lines.append(
            f"| {name} | {fmt(s['concise_rate'], pct=True)} | {fmt(s['mean_words'], '.1f')} | "
            f"{fmt(s['stopped_rate'], pct=True)} | {fmt(s['filler_rate'], pct=True)} | "
            f"{fmt(s['accuracy'], pct=True)} | {fmt(s['logprob_margin'], '.1f')} | {fmt(s['margin_gain'], '.1f')} |"
        )
    lines += [
        "",
        "| training | " + " | ".join(TRAIN_METRICS) + " |",
        "| --- |" + " --- |" * len(TRAIN_METRICS),
        "| " + f"{n} seeds | " + " | ".join(fmt(agg["training"][m]) for m in TRAIN_METRICS) + " |",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ commands


def once(path: Path, key: dict[str, Any], make) -> dict[str, Any]:
    """make()'s result, stored in path with key; read back instead of redone while the key is the same."""
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("key") == key:
            print(f"{path.name}: done earlier, reused", flush=True)
            return done["result"]
    result = make()
    path.write_text(json.dumps({"key": key, "result": result}, indent=2))
    return result


def experiment(args: argparse.Namespace) -> dict[str, Any]:
    from kto_pipeline.data.dataset import build_kto_dataset
    from kto_pipeline.export.merge import merge_adapter
    from kto_pipeline.training.model import resolve_model_path

    if args.gguf:
        from kto_pipeline.export.gguf import llama_cpp_version

        llama_cpp_version()  # no llama.cpp here: say so now, not after the first seed has trained
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    base = resolve_model_path(args.base, cache)  # "tiny" is built here; a folder is used as it is
    report = build_kto_dataset([DATA / "train.jsonl"], out / "data", eval_fraction=args.eval_fraction)
    result: dict[str, Any] = {
        "base_model": base,
        "args": vars(args),
        "heldout_prompts": len(heldout(args.limit)),
        "data": {
            k: report[k] for k in ("train_rows", "eval_rows", "train_desirable", "train_undesirable", "data_version")
        },
        "config": config_for(args.base, 0, args).to_dict(),
        "base": {},
        "seeds": [],
    }
    save = lambda: (out / "results.json").write_text(json.dumps(result, indent=2))  # noqa: E731
    # Each finished part is kept beside its inputs: re-running the same command after a kill (or a device's
    # per-command time limit) continues where it stopped; different settings redo the part.
    measure_key = {
        "base": base,
        "limit": args.limit,
        "max_new_tokens": args.max_new_tokens,
        "gguf": args.gguf,
        "device": args.device,
    }

    def base_eval() -> dict[str, Any]:
        b = {"hf": evaluate(base, "base", out, args)}
        if args.gguf:
            files, b["gguf_checks"] = gguf_files(Path(base), out / "gguf-base")
            b.update({q: evaluate(path, f"base-{q}", out, args) for q, path in files.items()})
        return b

    b = once(out / "base.json", measure_key, base_eval)
    result["base_gguf_checks"] = b.pop("gguf_checks", None)
    result["base"] = b
    save()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        run = out / f"seed-{seed}"

        def one_seed(run: Path = run, seed: int = seed) -> dict[str, Any]:
            shutil.rmtree(run, ignore_errors=True)  # a half-finished earlier attempt
            run.mkdir()
            t = time.time()
            s: dict[str, Any] = {"seed": seed, "training": train_seed(args.base, seed, out / "data", run, cache, args)}
            print(f"seed {seed} trained in {time.time() - t:.0f}s: {s['training']}", flush=True)
            merge_adapter(base, run / "adapter", run / "merged")
            s["eval"] = {"merged": evaluate(str(run / "merged"), f"seed{seed}-merged", out, args)}
            if args.gguf:
                files, s["gguf_checks"] = gguf_files(run / "merged", run / "gguf")
                s["eval"].update({q: evaluate(path, f"seed{seed}-{q}", out, args) for q, path in files.items()})
            return s

        key = {
            **measure_key,
            "config": config_for(args.base, seed, args).fingerprint(),
            "data": result["data"]["data_version"],
        }
        result["seeds"].append(once(out / f"seed-{seed}.json", key, one_seed))
        result["aggregate"] = aggregate(result)
        save()
    (out / "results.md").write_text(markdown(result))
    print(markdown(result))
    return result


def compare(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    result = {"base": {"path": args.base, **evaluate(args.base, "base", out, args)}, "models": []}
    for i, m in enumerate(args.model):
        result["models"].append({"path": m, **evaluate(m, f"model{i}-{Path(m).name}", out, args)})
    lines = [
        "| model | concise | mean words | stopped | filler | factual accuracy |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in [result["base"], *result["models"]]:
        lines.append(
            f"| {r['path']} | {100 * r['concise_rate']:.0f}% | {r['mean_words']:.1f} | "
            f"{100 * r['stopped_rate']:.0f}% | {100 * r['filler_rate']:.0f}% | "
            f"{fmt(None if r['accuracy'] is None else {'mean': r['accuracy'], 'n': 1}, pct=True)} |"
        )
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base", required=True, help="base model: a local HF folder, or 'tiny'")
    common.add_argument("--out", required=True, help="output folder (results.json, results.md, generations/)")
    common.add_argument("--device", default=None, help="cuda or cpu (default: cuda when a GPU is seen)")
    common.add_argument("--max-new-tokens", type=int, default=96)
    common.add_argument("--limit", type=int, default=None, help="only the first N held-out prompts (smoke runs)")
    e = sub.add_parser("experiment", parents=[common], help="train per seed, merge, GGUF, evaluate every variant")
    e.add_argument("--seeds", type=int, default=3)
    e.add_argument("--first-seed", type=int, default=0)
    # For SmolLM2-135M with LoRA on all linear layers: 406 training rows, batch 16 -> 26 steps an epoch; 48 steps
    # is ~2 epochs. 1e-4 is the usual LoRA rate at this size (the tiny preset's 3e-3 is for random weights). Measured
    # on the CPU: 32 x 8 rows at 2e-4 already moved the style strongly (and cost some factual answers), so the
    # default is a comparable dose (lr x rows), not more. beta 0.1 is KTO's default.
    e.add_argument("--learning-rate", type=float, default=1e-4)
    e.add_argument("--steps", type=int, default=48)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2 r)")
    e.add_argument("--beta", type=float, default=0.1)
    e.add_argument(
        "--max-seq-length", type=int, default=512, help="longest training row: ~260 tokens in SmolLM2's tokenizer"
    )
    e.add_argument("--eval-fraction", type=float, default=0.1, help="prompts held out of training for eval loss")
    e.add_argument(
        "--unsloth",
        default="never",
        choices=["auto", "never", "always"],
        help="training backend; never: transformers+PEFT on every device, so seeds compare across hosts",
    )
    e.add_argument("--gguf", action="store_true", help="also export and evaluate Q8_0 and Q4_K_M (llama.cpp)")
    c = sub.add_parser("compare", parents=[common], help="evaluate --base and each --model (folder or .gguf)")
    c.add_argument("--model", action="append", required=True)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is local; never wait on a network
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: merging and GGUF stay off the GPU too
    args.device = args.device or ("cuda" if _cuda() else "cpu")
    experiment(args) if args.command == "experiment" else compare(args)
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
