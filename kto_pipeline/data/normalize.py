"""Turn one raw record into a canonical (prompt, completion, label) row, or a reason it is bad."""

from __future__ import annotations

import json
from typing import Any

_TRUE = {"true", "1", "yes", "y", "👍"}
_FALSE = {"false", "0", "no", "n", "👎"}


class BadRow(ValueError):
    """A record that cannot become a KTO row; str(self) is the quarantine reason."""


def coerce_label(value: Any) -> bool:
    """true/false, 1/0, "true"/"false", "yes"/"no" (any case), 👍/👎 -> bool; anything else is bad."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise BadRow(f"bad label: {value!r} is not one of true/false, 1/0, yes/no, 👍/👎")


def _text(record: dict, key: str) -> str:
    if key not in record:
        raise BadRow(f"missing field: {key}")
    value = record[key]
    if not isinstance(value, str):
        raise BadRow(f"wrong type: {key} is {type(value).__name__}, expected string")
    if not value.strip():
        raise BadRow(f"empty field: {key}")
    return value


def _from_messages(messages: Any, key: str) -> tuple[str, str, list[dict]]:
    """Chat list -> (prompt rendered as plain turns, last assistant turn, the prompt turns)."""
    if not isinstance(messages, list) or not messages:
        raise BadRow(f"wrong type: {key} must be a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRow(f"wrong type: {key}[{i}] must be an object with string role and content")
    if messages[-1]["role"] != "assistant":
        raise BadRow(f"missing field: {key} must end with an assistant message (the completion)")
    completion = messages[-1]["content"]
    if not completion.strip():
        raise BadRow(f"empty field: {key}[-1].content")
    prompt = "\n".join(f"{m['role']}: {m['content']}" for m in messages[:-1])
    if not prompt.strip():
        raise BadRow(f"empty field: {key} has no prompt turns before the completion")
    turns = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
    return prompt, completion, turns


def normalize(record: Any) -> dict[str, Any]:
    """Canonical row {prompt, completion, label, messages} from either seed format.

    `messages` keeps the prompt's chat turns (JSON) for conversational data, so training applies the
    model's chat template to the real turns; plain prompts get None and become one user turn.
    """
    if not isinstance(record, dict):
        raise BadRow(f"not an object: got {type(record).__name__}")
    if "label" not in record:
        raise BadRow("missing field: label")
    label = coerce_label(record["label"])
    for key in ("conversations", "messages"):
        if key in record:
            prompt, completion, turns = _from_messages(record[key], key)
            messages = json.dumps(turns, ensure_ascii=False)
            break
    else:
        prompt, completion, messages = _text(record, "prompt"), _text(record, "completion"), None
    return {"prompt": prompt, "completion": completion, "label": label, "messages": messages}
