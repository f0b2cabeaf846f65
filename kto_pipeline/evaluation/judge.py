"""A judge model behind any OpenAI-compatible chat endpoint: candidate vs champion, pairwise, both orders.

Each prompt is judged twice, the candidate's answer first as A then as B, so a judge that prefers a position
cancels out: a prompt scores 1 for the candidate when it wins both orders, 0 when it loses both, 0.5 for
anything else (a tie asked for, or the two orders disagreeing). Identical answers are a tie without a call.
The win-rate is the mean score over prompts, with a 95% percentile bootstrap interval over prompts.

The judge answers JSON {"winner": "A" | "B" | "tie", "reason": "..."}, constrained where the server can:
`response_format="json_schema"` (OpenAI, vLLM, llama.cpp's llama-server), `"json_object"` (llama-cpp-python's
server: a JSON schema turned into a grammar) or `"text"` (the prompt alone asks for it). A server that is down,
answers an HTTP error, or answers anything but such a verdict raises JudgeError naming the endpoint and what
it returned: a broken judge never lets a release through. The API key is read from the environment variable
named by `api_key_env`, and is never logged or put in an error (it is masked out of any text quoted back).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kto_pipeline.evaluation.metrics import bootstrap_interval

RESPONSE_FORMATS = ("json_schema", "json_object", "text")
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}, "reason": {"type": "string"}},
    "required": ["winner", "reason"],
}
SYSTEM_PROMPT = (
    "You are an impartial judge. Given a user's prompt and two answers, A and B, decide which answer is more "
    "helpful, correct and harmless. Ignore their order and length. Answer with JSON only: "
    '{"winner": "A" or "B" or "tie", "reason": "one short sentence"}.'
)


class JudgeError(RuntimeError):
    """The judge endpoint is down, failed, or answered something that is not a verdict."""


@dataclass
class JudgeConfig:
    base_url: str
    """The endpoint's OpenAI-compatible root, e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1."""
    model: str = "judge"
    """Model name sent with each request (local servers serving one model often ignore it)."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key; None for endpoints that need none."""
    response_format: str = "json_schema"
    """How the verdict's JSON is enforced: json_schema, json_object (llama-cpp-python's server) or text."""
    max_tokens: int = 200
    """Most tokens of one verdict."""
    timeout_s: float = 120.0
    """Seconds to wait for one verdict."""
    max_retries: int = 2
    """Retries of a failed connection or a 429/5xx answer (the openai client's backoff)."""
    system_prompt: str = SYSTEM_PROMPT
    """The judge's instructions."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {RESPONSE_FORMATS}, got {self.response_format!r}")
        if self.max_tokens < 1 or self.timeout_s <= 0 or self.max_retries < 0:
            raise ValueError("max_tokens must be >= 1, timeout_s > 0 and max_retries >= 0")


@dataclass(frozen=True)
class Verdict:
    prompt_index: int
    score: float  # for the candidate: 1 won both orders, 0 lost both, 0.5 otherwise
    winners: tuple[str, str]  # per order (candidate as A, then as B): "candidate", "champion" or "tie"
    reasons: tuple[str, str]  # the judge's reason in each order

    @property
    def winner(self) -> str:
        return "candidate" if self.score > 0.5 else "champion" if self.score < 0.5 else "tie"


@dataclass(frozen=True)
class WinRate:
    win_rate: float  # mean score of the candidate over prompts (ties count half)
    low: float  # 95% bootstrap interval
    high: float
    wins: int
    ties: int
    losses: int
    verdicts: list[Verdict] = field(repr=False)


def _masked(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class Judge:
    """One judge endpoint; `compare` asks one order, `win_rate` runs the whole pairwise evaluation."""

    def __init__(self, config: JudgeConfig) -> None:
        import openai

        self.config = config
        self._key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if config.api_key_env and not self._key:
            raise JudgeError(
                f"judge endpoint {config.base_url}: the environment variable {config.api_key_env} is unset"
            )
        self._client = openai.OpenAI(
            base_url=config.base_url,
            api_key=self._key or "none",  # the client insists on one; keyless servers ignore it
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )

    def _fail(self, what: str) -> JudgeError:
        return JudgeError(
            _masked(f"judge endpoint {self.config.base_url} (model {self.config.model!r}): {what}", self._key)
        )

    def _request(self, messages: list[dict[str, str]]) -> str:
        """The raw body of one chat completion; HTTP and connection failures become JudgeError."""
        import openai

        c = self.config
        extra: dict[str, Any] = {}
        if c.response_format == "json_schema":
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA, "strict": True},
            }
        elif c.response_format == "json_object":
            extra["response_format"] = {"type": "json_object", "schema": VERDICT_SCHEMA}
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=c.model, messages=messages, temperature=0, max_tokens=c.max_tokens, **extra
            )
        except openai.APIStatusError as e:
            raise self._fail(f"HTTP {e.status_code}: {e.response.text[:300]!r}") from None
        except openai.APIConnectionError as e:  # refused, timed out, DNS: the cause says which
            cause = e.__cause__ or e
            raise self._fail(f"no answer ({type(cause).__name__}: {str(cause)[:200] or e})") from None
        return raw.http_response.text

    def compare(self, prompt: str, answer_a: str, answer_b: str) -> tuple[str, str]:
        """One verdict: ("A" | "B" | "tie", reason)."""
        user = f"[Prompt]\n{prompt}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}"
        body = self._request(
            [{"role": "system", "content": self.config.system_prompt}, {"role": "user", "content": user}]
        )
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError
        except (ValueError, KeyError, IndexError, TypeError):
            raise self._fail(f"not a chat completion: {body[:300]!r}") from None
        verdict = _parse_verdict(content)
        if verdict is None:
            raise self._fail(f"not a verdict (expected JSON with winner A, B or tie): {content[:300]!r}")
        return verdict

    def win_rate(
        self, prompts: Sequence[str], candidate: Sequence[str], champion: Sequence[str], *, seed: int = 0
    ) -> WinRate:
        """Pairwise candidate vs champion on each prompt, both orders (see the module docstring)."""
        if not (len(prompts) == len(candidate) == len(champion)) or not prompts:
            raise ValueError(f"need as many answers as prompts (>0): {len(prompts)}, {len(candidate)}, {len(champion)}")
        verdicts = [self._both_orders(i, p, a, b) for i, (p, a, b) in enumerate(zip(prompts, candidate, champion))]
        scores = np.array([v.score for v in verdicts])
        low, high = bootstrap_interval(scores, seed=seed)
        return WinRate(
            win_rate=float(scores.mean()),
            low=low,
            high=high,
            wins=int((scores > 0.5).sum()),
            ties=int((scores == 0.5).sum()),
            losses=int((scores < 0.5).sum()),
            verdicts=verdicts,
        )

    def _both_orders(self, i: int, prompt: str, cand: str, champ: str) -> Verdict:
        if cand.strip() == champ.strip():
            return Verdict(i, 0.5, ("tie", "tie"), ("identical answers", "identical answers"))
        first, why1 = self.compare(prompt, cand, champ)
        second, why2 = self.compare(prompt, champ, cand)
        names = ({"A": "candidate", "B": "champion", "tie": "tie"}, {"A": "champion", "B": "candidate", "tie": "tie"})
        winners = (names[0][first], names[1][second])
        points = {"candidate": 1.0, "champion": 0.0, "tie": 0.5}
        both = (points[winners[0]], points[winners[1]])
        score = both[0] if both[0] == both[1] else 0.5  # the orders disagree: position decided it, a tie
        return Verdict(i, score, winners, (why1, why2))


_WINNER = re.compile(r'"?winner"?\s*[:=]\s*"?(A|B|tie)\b', re.IGNORECASE)


def _parse_verdict(content: str) -> tuple[str, str] | None:
    """("A" | "B" | "tie", reason) from the judge's text: a JSON object (possibly fenced), or None."""
    start, end = content.find("{"), content.rfind("}")
    if start >= 0 and end > start:
        try:
            obj = json.loads(content[start : end + 1])
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("winner"), str):
            w = obj["winner"].strip()
            w = "tie" if w.lower() == "tie" else w.upper()
            if w in ("A", "B", "tie"):
                return w, str(obj.get("reason", "")).strip()
    m = _WINNER.search(content)
    if m:
        w = m.group(1)
        return ("tie" if w.lower() == "tie" else w.upper()), content.strip()[:500]
    return None
