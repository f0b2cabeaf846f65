"""One evaluation: the candidate, the champion (the current release) and the base on the pinned evaluation set.

`evaluate(job)` loads the base once and puts the adapters on it (PEFT adapter names, switched; the base is the
adapters disabled), so three models cost one; a full model folder (a merged release) is loaded on its own and
freed after its turn. Each model answers every prompt greedily (generate.py) and, on the labelled rows, gives
the log-probs its implicit reward needs (metrics.py); the base's (pi_ref) log-probs are computed once and serve
both policies. Then, when given: the candidate's GGUF file answers the same prompts in llama.cpp (in a child
process: a native crash becomes NativeCrash), and a judge compares candidate and champion answers.
Writes output_dir/model_eval.json (reports.EvalReport), generations.parquet, labelled.parquet, verdicts.parquet.

`python -m kto_pipeline.evaluation.run` is the Dagster Pipes entrypoint of the model_eval asset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kto_pipeline.evaluation import metrics
from kto_pipeline.evaluation.evalset import EvalSet, load_eval_set
from kto_pipeline.evaluation.generate import Generation, generate
from kto_pipeline.reports import (
    AccuracyFigures,
    AnswerFigures,
    Change,
    EvalReport,
    GGUFAgreement,
    JudgeFigures,
    LostPrompt,
    ModelFigures,
)

ROLES = ("base", "champion", "candidate")


@dataclass(frozen=True)
class ModelSpec:
    role: str
    """base, champion or candidate."""
    path: str
    """A PEFT adapter folder (trained on the job's base_model) or a full Hugging Face model folder."""


@dataclass(frozen=True)
class EvalSettings:
    max_new_tokens: int = 64
    """Most tokens of each greedy answer (fixed, so answers are comparable across models and runs)."""
    batch_size: int = 16
    """Prompts generated, and labelled rows scored, together."""
    reference_point: str = "kl"
    """Reward accuracy's reference point: kl (KTO's z0 = beta * KL) or zero (the sign of the reward)."""
    beta: float = 0.1
    """Scale of the reported rewards, beta * log(pi/pi_ref) (the accuracy does not depend on it)."""
    ngram: int = 4
    """Word n-gram length of the repeated n-grams figure."""
    table_rows: int = 8
    """Prompts shown in the side-by-side table."""
    seed: int = 0
    """Seed of the bootstrap intervals."""
    gguf_agreement_tokens: int = 32
    """Leading answer tokens compared between the GGUF file and the candidate."""

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "ngram", "gguf_agreement_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.table_rows < 0:
            raise ValueError(f"table_rows must be >= 0, got {self.table_rows}")
        if self.reference_point not in metrics.REFERENCE_POINTS:
            raise ValueError(f"reference_point must be one of {metrics.REFERENCE_POINTS}, got {self.reference_point!r}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


@dataclass(frozen=True)
class EvalJob:
    base_model: str
    """The training base: pi_ref of the rewards, and the model of role base (a folder or a Hub id)."""
    candidate: ModelSpec
    """The model being judged."""
    champion: ModelSpec | None
    """The current release; None for a first release (the candidate is then compared with the base)."""
    eval_set: str
    """The evaluation set file or folder (evalset.load_eval_set)."""
    output_dir: str
    """Where the report and the parquet files go."""
    settings: EvalSettings = dataclasses.field(default_factory=EvalSettings)
    """How answers are generated and scored."""
    gguf: str | None = None
    """The candidate's GGUF file (Q4_K_M): its answers against the candidate's, in llama.cpp."""
    judge: dict | None = None
    """evaluation.judge.JudgeConfig fields; the key is read from api_key_env, never passed."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalJob:
        """The job from dataclasses.asdict(job) (the Pipes extras)."""
        champion = data.get("champion")
        return cls(
            **{
                **data,
                "candidate": ModelSpec(**data["candidate"]),
                "champion": ModelSpec(**champion) if champion else None,
                "settings": EvalSettings(**data.get("settings", {})),
            }
        )


# ---- models -------------------------------------------------------------------------------------------


def _is_adapter(path: str) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _same_model(a: str | None, b: str) -> bool:
    if a is None:
        return False
    return os.path.realpath(a) == os.path.realpath(b) if Path(a).exists() and Path(b).exists() else a == b


def adapter_base(path: str) -> str | None:
    """The base an adapter folder was trained on (PEFT's adapter_config.json)."""
    return json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")


def _device_dtype():
    import torch

    if torch.cuda.is_available():  # 16-bit on a GPU, as training computes; a CPU is fast and exact only in fp32
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


def _load(path: str):
    from transformers import AutoModelForCausalLM

    device, dtype = _device_dtype()
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Models:
    """The base with the adapters on it, and `use(role)` giving the model of a role."""

    def __init__(self, base_model: str, specs: list[ModelSpec]):
        from peft import PeftModel

        self.specs = {s.role: s for s in specs}
        self.model = _load(base_model)
        for s in specs:
            if s.role != "base" and _is_adapter(s.path):
                if not isinstance(self.model, PeftModel):
                    self.model = PeftModel.from_pretrained(self.model, s.path, adapter_name=s.role)
                else:
                    self.model.load_adapter(s.path, adapter_name=s.role, is_trainable=False)
        self.model.eval()

    @contextlib.contextmanager
    def use(self, role: str) -> Iterator[Any]:
        spec = self.specs[role]
        if role != "base" and not _is_adapter(spec.path):  # a full model folder: its own weights, this turn only
            model = _load(spec.path)
            try:
                yield model
            finally:
                del model
                _free()
        elif role == "base":
            with self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else contextlib.nullcontext():
                yield self.model
        else:
            self.model.set_adapter(role)
            yield self.model


# ---- the evaluation -----------------------------------------------------------------------------------


def _figures(gens: list[Generation], n: int) -> AnswerFigures:
    return AnswerFigures(**dataclasses.asdict(metrics.degeneration(gens, n)))


def _accuracy(acc: metrics.RewardAccuracy) -> AccuracyFigures:
    names = {f.name for f in dataclasses.fields(AccuracyFigures)}
    return AccuracyFigures(**{k: v for k, v in dataclasses.asdict(acc).items() if k in names})


def token_agreement(tokenizer: Any, a: str, b: str, n: int) -> float:
    """Share of the first n tokens (of the longer answer, at most n) that are equal position by position."""
    x, y = (tokenizer(t, add_special_tokens=False)["input_ids"][:n] for t in (a, b))
    width = max(len(x), len(y))
    return 1.0 if width == 0 else sum(p == q for p, q in zip(x, y)) / width


def gguf_answers(path: str, prompts: list[list[dict[str, str]]], max_new_tokens: int) -> list[Generation]:
    """Greedy answers from a GGUF file, with the chat template in its metadata (run inside llama.isolated())."""
    from kto_pipeline.export import llama

    llm = llama.load(path, n_ctx=4096, verbose=False)
    try:
        out = []
        for turns in prompts:
            r = llm.create_chat_completion(messages=turns, temperature=0.0, max_tokens=max_new_tokens)
            c = r["choices"][0]
            out.append(
                Generation(c["message"]["content"] or "", c["finish_reason"] == "stop", r["usage"]["completion_tokens"])
            )
        return out
    finally:
        llm.close()


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.perf_counter() - t0, 3)


def evaluate(job: EvalJob, log: Callable[[str], None] = print) -> EvalReport:
    """Answers, reward accuracy, degeneration, GGUF agreement and judge of the job's models (module docstring)."""
    from transformers import AutoTokenizer

    s, out, clock = job.settings, Path(job.output_dir), _Clock()
    out.mkdir(parents=True, exist_ok=True)
    es = load_eval_set(job.eval_set)
    champion, skipped = job.champion, None
    if champion and _is_adapter(champion.path) and not _same_model(adapter_base(champion.path), job.base_model):
        skipped = f"trained on {adapter_base(champion.path)}, not {job.base_model}"
        log(f"champion {champion.path} not compared: {skipped}")
        champion = None
    specs = [ModelSpec("base", job.base_model), *([champion] if champion else []), job.candidate]
    rivals = [r.role for r in specs[1:]]  # the policies whose rewards are scored
    log(f"evaluating {', '.join(r.role for r in specs)} on {len(es.prompts)} prompts, {len(es.rows)} labelled rows")
    with clock("load"):
        tok = AutoTokenizer.from_pretrained(job.base_model)
        models = Models(job.base_model, specs)
    turns = [p.turns for p in es.prompts]
    answers: dict[str, list[Generation]] = {}
    logps: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
    for spec in specs:
        with models.use(spec.role) as model:
            with clock("generate"):
                answers[spec.role] = generate(
                    model, tok, turns, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size
                )
            with clock("score"):
                logps[spec.role] = _logps(model, tok, es, s) if es.rows else None
        log(f"{spec.role}: {len(turns)} answers")
    del models
    _free()
    accuracy = _score(es, logps, rivals, s) if es.rows else {}
    opponent = "champion" if champion else "base"
    files = {"generations": "generations.parquet"}
    gguf = None
    if job.gguf:
        with clock("gguf"):
            gguf, answers["gguf"] = _gguf(job.gguf, turns, answers["candidate"], tok, s)
        log(f"gguf: token agreement {gguf.token_agreement:.3f}, exact {gguf.exact_match:.0%}")
    _write_generations(out / files["generations"], es, answers)
    if accuracy:
        files["labelled"] = "labelled.parquet"
        _write_labelled(out / files["labelled"], es, accuracy)
    judge, verdicts = None, None
    if job.judge:
        with clock("judge"):
            judge, verdicts = _judge(job.judge, es, answers["candidate"], answers[opponent], s.seed)
        files["verdicts"] = "verdicts.parquet"
        verdicts.to_parquet(out / files["verdicts"], index=False)
    change = None
    if champion and accuracy:
        diff = np.array(accuracy["candidate"].correct) - np.array(accuracy["champion"].correct)
        low, high = metrics.bootstrap_interval(diff, np.array([r.prompt_index for r in es.rows]), seed=s.seed)
        change = Change(float(diff.mean()), low, high)
    report = EvalReport(
        base_model=job.base_model,
        candidate=job.candidate.path,
        champion=champion.path if champion else None,
        champion_skipped=skipped,
        eval_set=str(job.eval_set),
        eval_set_version=es.report["version"],
        prompts=len(es.prompts),
        labelled_rows=len(es.rows),
        settings=dataclasses.asdict(s),
        models={
            spec.role: ModelFigures(
                spec.role,
                spec.path,
                _figures(answers[spec.role], s.ngram),
                _accuracy(accuracy[spec.role]) if spec.role in accuracy else None,
            )
            for spec in specs
        },
        accuracy_change=change,
        gguf=gguf,
        judge=judge,
        lost=_lost(es, answers["candidate"], answers[opponent], accuracy, opponent, verdicts),
        files=files,
        seconds=clock.seconds,
    )
    report.write(out)
    return report


def _logps(model: Any, tok: Any, es: EvalSet, s: EvalSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(completion log-probs, completion tokens, log-probs of the KL pairs or None) of one model."""
    prompts = [es.prompts[r.prompt_index].turns for r in es.rows]
    completions = [r.completion for r in es.rows]
    logp, tokens = metrics.completion_logps(model, tok, prompts, completions, batch_size=s.batch_size)
    kl = None
    if s.reference_point == "kl" and len(completions) > 1:
        shifted = [completions[i - 1] for i in range(len(completions))]  # TRL's pairing, as score_labelled does
        kl = metrics.completion_logps(model, tok, prompts, shifted, batch_size=s.batch_size)[0]
    return logp, tokens, kl


def _score(es: EvalSet, logps: dict, rivals: list[str], s: EvalSettings) -> dict[str, metrics.RewardAccuracy]:
    """Each policy's reward accuracy against the base's log-probs (computed once, shared by both policies)."""
    ref, _, ref_kl = logps["base"]
    labels = np.array([r.label for r in es.rows])
    groups = np.array([r.prompt_index for r in es.rows])
    out = {}
    for role in rivals:
        pi, tokens, pi_kl = logps[role]
        kl = float(np.mean(pi_kl - ref_kl)) if pi_kl is not None else 0.0
        out[role] = metrics.reward_accuracy(
            pi - ref, labels, beta=s.beta, kl=kl, reference_point=s.reference_point,
            policy_logps=pi, tokens=tokens, groups=groups, seed=s.seed,
        )  # fmt: skip
    return out


def _gguf(path: str, turns: list, candidate: list[Generation], tok: Any, s: EvalSettings):
    from kto_pipeline.export import llama

    name = Path(path).name
    gens = llama.isolated(
        "kto_pipeline.evaluation.run:gguf_answers", path, turns, s.max_new_tokens,
        what=f"answering {len(turns)} evaluation prompts with {name}",
    )  # fmt: skip
    qtype = name.rsplit("-", 1)[-1].removesuffix(".gguf") if "-" in name else "unknown"
    agreement = GGUFAgreement(
        file=path,
        type=qtype,
        prompts=len(gens),
        exact_match=float(np.mean([g.text.strip() == c.text.strip() for g, c in zip(gens, candidate)])),
        token_agreement=float(
            np.mean([token_agreement(tok, c.text, g.text, s.gguf_agreement_tokens) for g, c in zip(gens, candidate)])
        ),
        answers=_figures(gens, s.ngram),
    )
    return agreement, gens


def _judge(config: dict, es: EvalSet, cand: list[Generation], opp: list[Generation], seed: int):
    from kto_pipeline.evaluation.judge import Judge, JudgeConfig

    cfg = JudgeConfig(**config)
    prompts = [p.prompt for p in es.prompts]
    wr = Judge(cfg).win_rate(prompts, [g.text for g in cand], [g.text for g in opp], seed=seed)
    rows = [
        {
            "prompt_index": v.prompt_index,
            "prompt": prompts[v.prompt_index],
            "candidate": cand[v.prompt_index].text,
            "champion": opp[v.prompt_index].text,
            "score": v.score,
            "winner": v.winner,
            "winner_candidate_first": v.winners[0],
            "winner_champion_first": v.winners[1],
            "reason_candidate_first": v.reasons[0],
            "reason_champion_first": v.reasons[1],
        }
        for v in wr.verdicts
    ]
    figures = JudgeFigures(cfg.base_url, cfg.model, len(prompts), wr.win_rate, wr.low, wr.high, wr.ties)
    return figures, pd.DataFrame(rows)


def _lost(es, cand, opp, accuracy, opponent, verdicts) -> list[LostPrompt]:
    """Up to 3 prompts the candidate lost most: by the judge's score when it ran, else by reward correctness."""
    if verdicts is not None:
        scores = {
            r.prompt_index: (r.score, f"{r.reason_candidate_first} / {r.reason_champion_first}")
            for r in verdicts.itertuples()
        }
        losing = {i: v for i, v in scores.items() if v[0] < 0.5}
    elif accuracy:
        diff = (
            pd.DataFrame(
                {
                    "p": [r.prompt_index for r in es.rows],
                    "c": accuracy["candidate"].correct,
                    # the base against itself: every reward 0, at the reference point, half right
                    "o": accuracy[opponent].correct if opponent in accuracy else [0.5] * len(es.rows),
                }
            )
            .groupby("p")
            .mean()
        )
        losing = {
            int(i): (
                float(r.c - r.o),
                f"reward correctness on its labelled rows: candidate {r.c:.2f}, {opponent} {r.o:.2f}",
            )
            for i, r in diff.iterrows()
            if r.c < r.o
        }
    else:
        return []
    worst = sorted(losing, key=lambda i: (losing[i][0], i))[:3]
    return [LostPrompt(es.prompts[i].prompt, cand[i].text, opp[i].text, *losing[i]) for i in worst]


def _write_generations(path: Path, es: EvalSet, answers: dict[str, list[Generation]]) -> None:
    rows = [
        {
            "prompt_index": i,
            "prompt": es.prompts[i].prompt,
            "role": role,
            "answer": g.text,
            "stopped": g.stopped,
            "tokens": g.tokens,
        }
        for role, gens in answers.items()
        for i, g in enumerate(gens)
    ]
    pd.DataFrame(rows).to_parquet(path, index=False)


def _write_labelled(path: Path, es: EvalSet, accuracy: dict[str, metrics.RewardAccuracy]) -> None:
    frame = pd.DataFrame(
        {
            "prompt_index": [r.prompt_index for r in es.rows],
            "completion": [r.completion for r in es.rows],
            "label": [r.label for r in es.rows],
        }
    )
    for role, acc in accuracy.items():
        frame[f"reward_{role}"], frame[f"correct_{role}"] = acc.rewards, acc.correct
    frame.to_parquet(path, index=False)


# ---- presentation -------------------------------------------------------------------------------------


def _cell(text: str, width: int = 200) -> str:
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", "<br>") or " "


def side_by_side(output_dir: str | os.PathLike, rows: int) -> str:
    """The first `rows` prompts' answers as a markdown table: prompt | base | champion | candidate (| GGUF)."""
    out = Path(output_dir)
    report = EvalReport.read(out)
    frame = pd.read_parquet(out / report.files["generations"])
    names = {"base": "base", "champion": "champion", "candidate": "candidate"}
    if report.gguf is not None:
        names["gguf"] = f"candidate {report.gguf.type}"
    roles = [r for r in names if r in set(frame["role"])]
    table = frame.pivot(index="prompt_index", columns="role", values="answer").sort_index().head(rows)
    prompts = frame.drop_duplicates("prompt_index").set_index("prompt_index")["prompt"]
    lines = ["| prompt | " + " | ".join(names[r] for r in roles) + " |", "|" + " --- |" * (len(roles) + 1)]
    for i, answers in table.iterrows():
        lines.append(f"| {_cell(prompts[i])} | " + " | ".join(_cell(answers[r]) for r in roles) + " |")
    return "\n".join(lines)


def main() -> None:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        report = evaluate(EvalJob.from_dict(pipes.extras["job"]), log=pipes.log.info)
        figures = {"prompts": report.prompts, "labelled_rows": report.labelled_rows}
        for role, m in report.models.items():
            if m.accuracy is not None:
                figures[f"{role}_reward_accuracy"] = m.accuracy.accuracy
        if report.accuracy_change is not None:
            figures["accuracy_change"] = report.accuracy_change.diff
        if report.judge is not None:
            figures["judge_win_rate"] = report.judge.win_rate
        if report.gguf is not None:
            figures["gguf_token_agreement"] = report.gguf.token_agreement
        figures["seconds"] = float(sum(report.seconds.values()))
        pipes.report_asset_materialization(metadata=figures)


if __name__ == "__main__":
    main()
