"""The behaviour gate: may the candidate replace the champion, judged from its EvalReport alone.

Rules (each limit is a quality_gates field of the same name):
- reward accuracy, with a champion: blocked when the candidate's accuracy is below the champion's by more than
  max_accuracy_drop (accuracy_change.diff < -max_accuracy_drop) AND the paired 95% interval of the change lies
  wholly below zero (accuracy_change.high < 0): the drop is beyond the allowance and not noise. Without a
  champion: blocked when the candidate's accuracy's upper bound is below 0.5, i.e. it learned the opposite of
  the labels;
- degeneration: blocked when the candidate's share of empty answers, answers cut at max_new_tokens, or repeated
  n-grams exceeds the champion's (the base's without one) by more than max_degeneration_increase; the same for the
  GGUF file's answers against the candidate's;
- judge: blocked when the win-rate's 95% upper bound is below min_win_rate;
- GGUF: blocked when the token agreement with the candidate is below min_gguf_agreement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kto_pipeline.reports import AnswerFigures, EvalReport

DEGENERATION = {
    "empty": "empty answers",
    "hit_limit": "answers cut at max_new_tokens",
    "repeated_ngrams": "repeated n-grams",
}


@dataclass(frozen=True)
class BehaviourLimits:
    max_accuracy_drop: float = 0.05
    """How far the candidate's reward accuracy may fall below the champion's (interval-aware, module docstring)."""
    max_degeneration_increase: float = 0.2
    """How much the share of empty, cut or repeating answers may rise above the champion's (or the base's)."""
    min_win_rate: float = 0.5
    """With a judge: blocked when the win-rate's 95% upper bound is below this."""
    min_gguf_agreement: float = 0.0
    """Lowest token agreement of the GGUF file's answers with the candidate's (0: reported only)."""

    def __post_init__(self) -> None:
        for name in ("max_accuracy_drop", "max_degeneration_increase", "min_win_rate", "min_gguf_agreement"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class Verdict:
    passed: bool
    problems: list[str]  # one sentence per broken rule
    description: str  # what kto train prints and the UI shows: numbers, thresholds, the prompts lost most
    metadata: dict[str, Any] = field(default_factory=dict)  # plain numbers for the check's metadata


def _degeneration(who: str, got: AnswerFigures, ref: str, base: AnswerFigures, limit: float) -> list[str]:
    return [
        f"{who}: {what} {getattr(got, k):.0%}, {ref} {getattr(base, k):.0%} (more than "
        f"quality_gates.max_degeneration_increase = {limit:.0%} above)"
        for k, what in DEGENERATION.items()
        if getattr(got, k) - getattr(base, k) > limit
    ]


def _short(text: str, width: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def behaviour_verdict(report: EvalReport, limits: BehaviourLimits = BehaviourLimits()) -> Verdict:
    """Whether the candidate may be released (the rules of the module docstring)."""
    problems, lines, meta = [], [], {}
    cand = report.models["candidate"]
    ref = "champion" if "champion" in report.models else "base"
    for role, m in report.models.items():
        a = m.answers
        acc = (
            f"reward accuracy {m.accuracy.accuracy:.3f} [{m.accuracy.low:.3f}, {m.accuracy.high:.3f}], "
            if m.accuracy
            else ""
        )
        lines.append(
            f"{role}: {acc}{a.empty:.0%} empty, {a.hit_limit:.0%} cut, {a.repeated_ngrams:.0%} repeated n-grams, "
            f"{a.mean_tokens:.1f} tokens"
        )
        meta.update({f"{role}_{k}": float(getattr(a, k)) for k in DEGENERATION})
        if m.accuracy:
            meta[f"{role}_reward_accuracy"] = float(m.accuracy.accuracy)
    c = report.accuracy_change
    if c is not None:
        meta.update(accuracy_change=c.diff, accuracy_change_low=c.low, accuracy_change_high=c.high)
        lines.append(
            f"change: {c.diff:+.3f} [{c.low:+.3f}, {c.high:+.3f}] (quality_gates.max_accuracy_drop = "
            f"{limits.max_accuracy_drop})"
        )
        if c.diff < -limits.max_accuracy_drop and c.high < 0:
            problems.append(
                f"reward accuracy fell {-c.diff:.3f} below the champion's, more than quality_gates.max_accuracy_drop "
                f"= {limits.max_accuracy_drop}, and the 95% interval [{c.low:+.3f}, {c.high:+.3f}] excludes no drop"
            )
    elif ref == "base" and cand.accuracy is not None and cand.accuracy.high < 0.5:
        problems.append(
            f"reward accuracy {cand.accuracy.accuracy:.3f} [{cand.accuracy.low:.3f}, {cand.accuracy.high:.3f}] is "
            "below chance: the model learned the opposite of the labels"
        )
    limit = limits.max_degeneration_increase
    problems += _degeneration("candidate", cand.answers, ref, report.models[ref].answers, limit)
    if report.judge is not None:
        j = report.judge
        meta.update(judge_win_rate=j.win_rate, judge_win_rate_high=j.high)
        lines.append(
            f"judge {j.model} at {j.endpoint}: win-rate {j.win_rate:.3f} [{j.low:.3f}, {j.high:.3f}] against the "
            f"{ref}, {j.ties} ties (quality_gates.min_win_rate = {limits.min_win_rate})"
        )
        if j.high < limits.min_win_rate:
            problems.append(
                f"judge win-rate {j.win_rate:.3f}: even its 95% upper bound {j.high:.3f} is below {limits.min_win_rate}"
            )
    if report.gguf is not None:
        g = report.gguf
        meta.update(gguf_token_agreement=g.token_agreement, gguf_exact_match=g.exact_match)
        lines.append(
            f"{g.type}: token agreement {g.token_agreement:.3f}, {g.exact_match:.0%} identical answers "
            f"(quality_gates.min_gguf_agreement = {limits.min_gguf_agreement})"
        )
        problems += _degeneration(g.type, g.answers, "candidate", cand.answers, limit)
        if g.token_agreement < limits.min_gguf_agreement:
            problems.append(
                f"{g.type} answers agree with the candidate's on {g.token_agreement:.3f} of tokens, below "
                f"quality_gates.min_gguf_agreement = {limits.min_gguf_agreement}"
            )
    head = "behaviour: passed" if not problems else "behaviour: FAILED: " + "; ".join(problems)
    text = [head, *lines]
    if report.lost:
        text.append(f"prompts where the candidate lost most against the {ref}:")
        for k, p in enumerate(report.lost, 1):
            text += [
                f"{k}. {_short(p.prompt)}",
                f"   candidate: {_short(p.candidate)}",
                f"   {ref}: {_short(p.champion)}",
            ]
    if problems:
        text.append("the release stays where it was.")
    return Verdict(not problems, problems, "\n".join(text), meta)
