#!/usr/bin/env python
"""The scenario users fear, on a real model: a retrain on a file of flipped labels, and what each gate says.

A champion is trained on good feedback (half of data/learning's prompts, true labels: concise desirable).
Then a file arrives whose labels are mostly flipped (the other half of the prompts, POISON_SHARE of them with
desirable and undesirable swapped: verbose marked desirable). The pipeline retrains on the union of its raw
files, so the poisoned candidate is trained on good + poison, with the champion passed to train() as the
released adapter: its eval loss, the champion's on the same eval rows and the eval_loss gate's verdict are
what the pipeline alone would have decided. Then base, champion and candidate are evaluated on the pinned
evaluation set data/learning/eval.jsonl (48 held-out prompts, each with its concise answer labelled desirable
and its verbose variant undesirable): reward accuracy with a 95% interval, degeneration of greedy answers,
and, with --judge-gguf, a pairwise judge served by llama.cpp's OpenAI-compatible server.

    python benchmarks/eval_poison.py train --base /tmp/smol_hf --out /tmp/poison-smol      # champion, candidate
    python benchmarks/eval_poison.py evaluate --base /tmp/smol_hf --out /tmp/poison-smol --judge-gguf FILE.gguf
    python benchmarks/eval_poison.py train --base tiny --out /tmp/poison-tiny --steps 8 --learning-rate 3e-3

Writes OUT/train.json (settings, data counts, training metrics, the eval_loss gate) and OUT/eval.json (every
figure, the timings), OUT/generations/*.jsonl (every answer) and OUT/verdicts.jsonl (the judge's reasons).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = REPO / "data" / "learning"
SPLIT_SEED = 26  # which prompts are good (half A) and which arrive in the poisoned file (half B)
POISON_SHARE = 0.9  # of half B's prompts, the share whose labels are flipped; the rest keep their true labels

TRAIN = """import json, sys
from pathlib import Path
from kto_pipeline.config import Config
from kto_pipeline.training.run import train
a = sys.argv
train(Config.from_dict(json.loads(a[1])), Path(a[2]), Path(a[3]), Path(a[4]), champion=Path(a[5]) if a[5] else None)
"""


# ------------------------------------------------------------------------------------------------- data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def poison_split(
    rows: list[dict[str, Any]], seed: int = SPLIT_SEED, share: float = POISON_SHARE
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """(good rows: half A of the prompts, true labels; poisoned rows: half B, `share` of its prompts flipped)."""
    prompts = sorted({r["prompt"] for r in rows})
    rng = random.Random(seed)
    rng.shuffle(prompts)
    half_a, half_b = set(prompts[: len(prompts) // 2]), prompts[len(prompts) // 2 :]
    flipped = set(half_b[: round(share * len(half_b))])
    good = [r for r in rows if r["prompt"] in half_a]
    poison = [
        {**r, "label": not r["label"]} if r["prompt"] in flipped else r for r in rows if r["prompt"] not in half_a
    ]
    counts = {
        "good_prompts": len(half_a),
        "good_rows": len(good),
        "poison_prompts": len(half_b),
        "poison_rows": len(poison),
        "flipped_prompts": len(flipped),
        "flipped_rows": sum(r["prompt"] in flipped for r in poison),
        "poison_desirable_rows": sum(r["label"] for r in poison),
    }
    return good, poison, counts


# --------------------------------------------------------------------------------------------- training


def train_one(
    base: str, data: Path, run_dir: Path, cache: Path, args: argparse.Namespace, champion: Path | None
) -> dict[str, Any]:
    """train() in a child process (as the pipeline runs it), the champion passed as the released adapter."""
    from learning import config_for

    from kto_pipeline.reports import TrainingMetrics

    config = config_for(base, args.seed, args)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), TQDM_DISABLE="1")
    env["CUDA_VISIBLE_DEVICES"] = "" if args.device == "cpu" else env.get("CUDA_VISIBLE_DEVICES", "")
    adapter = run_dir / "adapter"
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", TRAIN, json.dumps(config.to_dict()), str(data), str(adapter), str(cache)]
    t = time.time()
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.run([*argv, str(champion or "")], env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(
            f"training failed; see {run_dir / 'train.log'}:\n" + (run_dir / "train.log").read_text()[-3000:]
        )
    m = TrainingMetrics.read(adapter).to_dict()
    ev = m.get("eval") or {}
    return {
        "adapter": str(adapter),
        "steps": m["steps"],
        "train_rows": m.get("train_rows"),
        "eval_rows": m.get("eval_rows"),
        "train_loss": m["train_loss"],
        "eval_loss": m["eval_loss"],
        "eval_reward_margin": ev.get("eval_rewards/margins"),
        "eval_rewards_chosen": ev.get("eval_rewards/chosen"),
        "eval_rewards_rejected": ev.get("eval_rewards/rejected"),
        "eval_kl": ev.get("eval_kl"),
        "champion_eval_loss": (m.get("champion") or {}).get("eval_loss"),
        "train_runtime_s": m["train_runtime_s"],
        "process_wall_s": round(time.time() - t, 1),
        "config_fingerprint": config.fingerprint(),
    }


def eval_loss_gate(candidate: dict[str, Any]) -> dict[str, Any]:
    """What the blocking check eval_loss (defs/checks.py) decides on these numbers, with its default limits."""
    import math

    from kto_pipeline.defs.resources import QualityGates

    gates = QualityGates()
    loss, champ = candidate["eval_loss"], candidate["champion_eval_loss"]
    problems = []
    if not (loss is not None and math.isfinite(loss) and loss <= gates.max_eval_loss):
        problems.append(f"eval loss {loss} above max_eval_loss={gates.max_eval_loss}")
    if champ is not None and not loss <= champ + gates.max_regression:
        problems.append(f"eval loss {loss:.4f} worse than the champion's {champ:.4f} (+{gates.max_regression})")
    return {
        "passed": not problems,
        "problems": problems,
        "eval_loss": loss,
        "champion_eval_loss": champ,
        "max_eval_loss": gates.max_eval_loss,
        "max_regression": gates.max_regression,
    }


def train(args: argparse.Namespace) -> dict[str, Any]:
    from kto_pipeline.data.dataset import build_kto_dataset
    from kto_pipeline.training.model import resolve_model_path

    out = Path(args.out).resolve()
    cache = out / "cache"
    base = resolve_model_path(args.base, cache)
    good, poison, counts = poison_split(read_jsonl(DATA / "train.jsonl"), args.split_seed, args.poison_share)
    write_jsonl(out / "raw" / "good.jsonl", good)
    write_jsonl(out / "raw" / "poison.jsonl", poison)
    result: dict[str, Any] = {"base_model": base, "args": vars(args), "data": counts}
    save = lambda: (out / "train.json").write_text(json.dumps(result, indent=2))  # noqa: E731
    for name, files, champion in (
        ("champion", [out / "raw" / "good.jsonl"], None),
        ("candidate", [out / "raw" / "good.jsonl", out / "raw" / "poison.jsonl"], out / "champion" / "adapter"),
    ):
        ds = build_kto_dataset(files, out / f"data-{name}", eval_fraction=args.eval_fraction)
        result[f"{name}_data"] = {k: ds[k] for k in ("train_rows", "eval_rows", "train_desirable", "data_version")}
        print(f"training {name} on {[f.name for f in files]}: {result[f'{name}_data']}", flush=True)
        result[name] = train_one(args.base, out / f"data-{name}", out / name, cache, args, champion)
        print(f"{name}: {result[name]}", flush=True)
        save()
    result["eval_loss_gate"] = eval_loss_gate(result["candidate"])
    print(f"eval_loss gate on the candidate: {result['eval_loss_gate']}", flush=True)
    save()
    return result


# ------------------------------------------------------------------------------------------- evaluation


def load_policy(base: str, adapter: str | None):
    """The base model, or the base with a LoRA adapter merged in (fp32: this runs on the CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    if adapter is None:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()


def paired_change(cand: tuple[float, ...], champ: tuple[float, ...], groups: list[int], seed: int = 0) -> dict:
    """Candidate minus champion reward accuracy with a 95% interval, resampling prompts (paired: same rows)."""
    import numpy as np

    from kto_pipeline.evaluation.metrics import bootstrap_interval

    diff = np.asarray(cand) - np.asarray(champ)
    low, high = bootstrap_interval(diff, np.asarray(groups), seed=seed)
    return {"diff": float(diff.mean()), "low": low, "high": high}


class LlamaServer:
    """kto_pipeline.evaluation.llama_server serving one GGUF on localhost, for the judge."""

    def __init__(self, gguf: str, port: int, log: Path) -> None:
        self.url, self.log = f"http://127.0.0.1:{port}/v1", log
        cmd = [sys.executable, "-m", "kto_pipeline.evaluation.llama_server", "--model", gguf, "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--n_ctx", "2048", "--verbose", "False"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def __enter__(self) -> str:
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"judge server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                httpx.get(self.url + "/models", timeout=1)
                return self.url
            except httpx.TransportError:
                time.sleep(0.5)
        raise RuntimeError("judge server did not come up in 180 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def judge_pairs(url: str, prompts: list[str], answers: dict[str, list[str]], pairs, out: Path) -> dict[str, Any]:
    """Win-rate of the first model of each pair against the second (kto_pipeline.evaluation.judge, both orders)."""
    from kto_pipeline.evaluation.judge import Judge, JudgeConfig

    judge = Judge(
        JudgeConfig(base_url=url, model="smol", api_key_env=None, response_format="json_object", max_tokens=80)
    )
    figures, verdicts = {}, []
    for a, b in pairs:
        t = time.time()
        wr = judge.win_rate(prompts, answers[a], answers[b])
        figures[f"{a}_vs_{b}"] = {
            **{k: getattr(wr, k) for k in ("win_rate", "low", "high", "wins", "ties", "losses")},
            "seconds": round(time.time() - t, 1),
        }
        verdicts += [
            {
                "pair": f"{a}_vs_{b}",
                "prompt": prompts[v.prompt_index],
                "score": v.score,
                "winners": v.winners,
                "reasons": v.reasons,
            }
            for v in wr.verdicts
        ]
        print(f"judge {a} vs {b}: {figures[f'{a}_vs_{b}']}", flush=True)
    write_jsonl(out / "verdicts.jsonl", verdicts)
    return figures


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Generations, degeneration and reward accuracy of base, champion and candidate; optionally the judge."""
    from transformers import AutoTokenizer

    from kto_pipeline.evaluation.evalset import load_eval_set
    from kto_pipeline.evaluation.generate import generate
    from kto_pipeline.evaluation.metrics import degeneration, score_labelled
    from kto_pipeline.training.model import resolve_model_path

    out = Path(args.out).resolve()
    base = resolve_model_path(args.base, out / "cache")
    evalset = load_eval_set(args.eval_set)
    turns = [p.turns for p in evalset.prompts]
    rows = evalset.rows
    adapters = {
        "base": None,
        "champion": str(out / "champion" / "adapter"),
        "candidate": str(out / "candidate" / "adapter"),
    }
    tok = AutoTokenizer.from_pretrained(base)
    seconds: dict[str, float] = {"load": 0.0, "generate": 0.0, "score": 0.0}
    result: dict[str, Any] = {"base_model": base, "eval_set": evalset.report, "args": vars(args), "models": {}}
    answers: dict[str, list[str]] = {}
    t = time.time()
    reference = load_policy(base, None)
    seconds["load"] += time.time() - t
    for role, adapter in adapters.items():
        t = time.time()
        model = reference if adapter is None else load_policy(base, adapter)
        seconds["load"] += time.time() - t
        t = time.time()
        gens = generate(model, tok, turns, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        seconds[f"generate_{role}"] = round(time.time() - t, 1)
        seconds["generate"] += time.time() - t
        answers[role] = [g.text for g in gens]
        write_jsonl(
            out / "generations" / f"{role}.jsonl",
            [
                {"prompt": p.prompt, "answer": g.text, "stopped": g.stopped, "tokens": g.tokens}
                for p, g in zip(evalset.prompts, gens)
            ],
        )
        figures: dict[str, Any] = {"adapter": adapter, "answers": vars(degeneration(gens, args.ngram))}
        if adapter is not None:
            t = time.time()
            acc = score_labelled(
                model,
                reference,
                tok,
                [turns[r.prompt_index] for r in rows],
                [r.completion for r in rows],
                [r.label for r in rows],
                beta=args.beta,
                groups=[r.prompt_index for r in rows],
                seed=args.seed,
            )
            seconds[f"score_{role}"] = round(time.time() - t, 1)
            seconds["score"] += time.time() - t
            figures["accuracy"] = {k: v for k, v in vars(acc).items() if k not in ("rewards", "correct")}
            figures["correct"] = acc.correct
        result["models"][role] = figures
        print(f"{role}: {json.dumps({k: v for k, v in figures.items() if k != 'correct'})}", flush=True)
        if model is not reference:
            del model
    groups = [r.prompt_index for r in rows]
    result["accuracy_change"] = paired_change(
        result["models"]["candidate"]["correct"], result["models"]["champion"]["correct"], groups, args.seed
    )
    if args.judge_gguf:
        t = time.time()
        with LlamaServer(args.judge_gguf, args.judge_port, out / "judge_server.log") as url:
            seconds["judge_start"] = round(time.time() - t, 1)
            t = time.time()
            pairs = [("candidate", "champion"), ("champion", "base"), ("candidate", "base")][: args.judge_pairs]
            result["judge"] = judge_pairs(url, [p.prompt for p in evalset.prompts], answers, pairs, out)
            seconds["judge"] = round(time.time() - t, 1)
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    print(f"accuracy change (candidate - champion): {result['accuracy_change']}; seconds: {result['seconds']}")
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base", required=True, help="base model: a local HF folder, or 'tiny'")
    common.add_argument("--out", required=True, help="output folder")
    common.add_argument("--device", default="cpu")
    t = sub.add_parser("train", parents=[common], help="train the champion, then the poisoned candidate")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--split-seed", type=int, default=SPLIT_SEED)
    t.add_argument("--poison-share", type=float, default=POISON_SHARE)
    t.add_argument("--learning-rate", type=float, default=2e-4)
    t.add_argument("--steps", type=int, default=32)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2 r)")
    t.add_argument("--beta", type=float, default=0.1)
    t.add_argument("--max-seq-length", type=int, default=512)
    t.add_argument("--eval-fraction", type=float, default=0.1)
    t.add_argument("--unsloth", default="never", choices=["auto", "never", "always"])
    e = sub.add_parser("evaluate", parents=[common], help="evaluate base, champion and candidate of OUT")
    e.add_argument("--eval-set", default=str(DATA / "eval.jsonl"))
    e.add_argument("--max-new-tokens", type=int, default=64)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--beta", type=float, default=0.1, help="KTO beta of the implicit reward (training's)")
    e.add_argument("--ngram", type=int, default=4)
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    e.add_argument("--judge-gguf", default=None, help="GGUF file the judge server serves (none: no judge)")
    e.add_argument("--judge-port", type=int, default=8471)
    e.add_argument("--judge-pairs", type=int, default=3, help="1: candidate vs champion only; 3: also vs base")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    {"train": train, "evaluate": evaluate}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
