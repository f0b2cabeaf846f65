"""One raw record -> a canonical (prompt, completion, label, messages) row, or the reason it is bad.

This is the reference implementation of every rule; `validate.py` has a vectorized fast path for the
common flat shape, and sends every row it doubts back through `normalize` so both agree on reasons.

Accepted record shapes (all need `label`):
  {"prompt": str, "completion": str}                                  the seed's format
  {"conversations" | "messages": [{"role", "content"}, ...]}          last assistant turn = completion,
                                                                      every turn before it = prompt
  {"prompt": [messages], "completion": [one assistant message]}       TRL's conversational format
ShareGPT turns ({"from": "human"|"gpt"|"system", "value"}) are read as role/content. A message list may
arrive as a JSON string (CSV cells).

Reasons start with a fixed category (text before the first ':'): the report counts by category.
"""

from __future__ import annotations

import json
from typing import Any

TRUE_LABELS = frozenset({"true", "1", "yes", "👍", "👍\ufe0f"})
FALSE_LABELS = frozenset({"false", "0", "no", "👎", "👎\ufe0f"})
CONVERSATION_KEYS = ("conversations", "messages")
ROLES = ("system", "user", "assistant", "tool")  # what chat templates know; anything else is quarantined
# Field names people use for ours: named in the "missing field" reason, so the fix is obvious.
SYNONYMS = {
    "prompt": ("input", "question", "instruction", "query"),
    "completion": ("response", "output", "answer", "chosen", "rejected"),
    "label": ("rating", "feedback", "thumbs_up"),
}
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
}

# Every category a reason can start with (validate.py and dataset.py add the row-level ones they own).
REASONS = (
    "malformed JSON",
    "not UTF-8",
    "not an object",
    "missing field",
    "wrong type",
    "empty field",
    "bad label",
    "bad conversation",
    "wrong number of columns",
    "too long",
    "conflicting duplicate",
)


_ENCODER = json.JSONEncoder(ensure_ascii=False)  # == json.dumps(turns, ensure_ascii=False), less overhead


class BadRow(ValueError):
    """A record that cannot become a KTO row; str(self) is the quarantine reason."""


def reason_category(reason: str) -> str:
    return reason.split(":", 1)[0]


def coerce_label(value: Any) -> bool:
    """true/false, 1/0, "true"/"false", "1"/"0", "yes"/"no" (any case), 👍/👎 -> bool; anything else is bad.

    Deliberately strict: 1.0, "y", "thumbs up" and null are bad labels, not guesses.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in TRUE_LABELS:
            return True
        if v in FALSE_LABELS:
            return False
    raise BadRow(f"bad label: {value!r} is not one of true/false, 1/0, yes/no, 👍/👎")


def _check_utf8(value: str, where: str) -> None:
    # Lone surrogates come from "\ud800"-style JSON escapes or undecodable bytes (surrogateescape):
    # they cannot be written as UTF-8, so the row is rejected here rather than crashing the writer.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRow(f"not UTF-8: {where} holds an unencodable character (lone surrogate or bad byte)") from None


def missing(record: dict, key: str) -> BadRow:
    """ "missing field: key", with what the record has instead when it looks like the same thing."""
    names = [k for k in record if isinstance(k, str)]
    wanted = (key, *CONVERSATION_KEYS) if key == "prompt" else (key,)
    same = [k for k in names if k.lower() in wanted and k not in wanted]
    if same:
        return BadRow(f"missing field: {key} (found {same[0]!r}: field names are lower case)")
    if key == "completion" and {"chosen", "rejected"} & {k.lower() for k in names}:
        return BadRow(
            "missing field: completion (found 'chosen'/'rejected': a paired preference row; KTO takes one "
            "completion and a label per row: make each pair a desirable and an undesirable row)"
        )
    synonym = next((k for k in names if k.lower() in SYNONYMS.get(key, ())), None)
    if synonym:
        return BadRow(f"missing field: {key} (found {synonym!r}: rename it to {key})")
    return BadRow(f"missing field: {key} (the record has: {', '.join(map(repr, names[:8])) or 'no fields'})")


def _text(record: dict, key: str) -> str:
    if key not in record:
        raise missing(record, key)
    value = record[key]
    if not isinstance(value, str):
        raise BadRow(f"wrong type: {key} is {_type(value)}, expected string")
    _check_utf8(value, key)
    if not value.strip():
        raise BadRow(f"empty field: {key} is empty or whitespace")
    return value


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _messages(value: Any, key: str) -> list[dict[str, str]]:
    """Validate a chat list into [{"role", "content"}] (ShareGPT from/value accepted)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise BadRow(f"malformed JSON: {key} is a string but not a JSON message list ({e.msg})") from None
    if not isinstance(value, list):
        raise BadRow(f"wrong type: {key} is {_type(value)}, expected a list of messages")
    if not value:
        raise BadRow(f"empty field: {key} is an empty list")
    turns = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise BadRow(f"wrong type: {key}[{i}] is {_type(m)}, expected an object with role and content")
        if "role" in m or "content" in m:
            role, content = m.get("role"), m.get("content")
        else:  # ShareGPT
            role, content = _SHAREGPT_ROLES.get(m.get("from"), m.get("from")), m.get("value")
        if not isinstance(role, str) or not role.strip():
            raise BadRow(f"wrong type: {key}[{i}].role is {_type(role)}, expected a non-empty string")
        if role not in ROLES:
            raise BadRow(f"bad conversation: {key}[{i}].role is {role!r}, expected one of {'/'.join(ROLES)}")
        if not isinstance(content, str):
            raise BadRow(f"wrong type: {key}[{i}].content is {_type(content)}, expected string")
        _check_utf8(content, f"{key}[{i}].content")
        turns.append({"role": role, "content": content})
    return turns


def render_prompt(turns: list[dict[str, str]]) -> str:
    """Plain-text view of prompt turns (the `prompt` column); training uses the turns themselves."""
    return "\n".join(f"{t['role']}: {t['content']}" for t in turns)


def _from_conversation(record: dict, key: str) -> tuple[str, str, list[dict]]:
    turns = _messages(record[key], key)
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last is None:
        raise BadRow(f"bad conversation: {key} has no assistant turn to use as the completion")
    if last != len(turns) - 1:
        raise BadRow(
            f"bad conversation: {key} continues after its last assistant turn "
            f"({turns[-1]['role']} turn at the end): the completion must come last"
        )
    completion = turns[last]["content"]
    if not completion.strip():
        raise BadRow(f"empty field: {key}[{last}].content (the completion) is empty or whitespace")
    prompt_turns = turns[:last]
    if not any(t["content"].strip() for t in prompt_turns):
        raise BadRow(f"empty field: {key} has no non-empty turn before the completion")
    return render_prompt(prompt_turns), completion, prompt_turns


def _from_trl_conversational(record: dict) -> tuple[str, str, list[dict] | None]:
    """TRL's conversational prompt/completion: either side may be a message list."""
    if "prompt" not in record:
        raise missing(record, "prompt")
    prompt, turns = record["prompt"], None
    if isinstance(prompt, (list, tuple)):
        turns = _messages(list(prompt), "prompt")
        if not any(t["content"].strip() for t in turns):
            raise BadRow("empty field: prompt has no non-empty message")
        prompt = render_prompt(turns)
    else:
        prompt = _text(record, "prompt")
    completion = record.get("completion")
    if isinstance(completion, (list, tuple)):
        msgs = _messages(list(completion), "completion")
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise BadRow(
                f"bad conversation: completion must be exactly one assistant message, got {[m['role'] for m in msgs]}"
            )
        completion = msgs[0]["content"]
        if not completion.strip():
            raise BadRow("empty field: completion[0].content is empty or whitespace")
    else:
        completion = _text(record, "completion")
    return prompt, completion, turns


def normalize(record: Any) -> dict[str, Any]:
    """Canonical row {prompt, completion, label, messages}.

    `messages` is the prompt's chat turns as JSON (system turn kept) for conversational data, so
    training applies the model's chat template to the real turns; plain prompts get None and become
    one user turn at training time.
    """
    if not isinstance(record, dict):
        raise BadRow(f"not an object: got {_type(record)}")
    if "label" not in record:
        raise missing(record, "label")
    label = coerce_label(record["label"])
    key = next((k for k in CONVERSATION_KEYS if record.get(k) is not None), None)
    if key is not None:
        prompt, completion, turns = _from_conversation(record, key)
    elif isinstance(record.get("prompt"), (list, tuple)) or isinstance(record.get("completion"), (list, tuple)):
        prompt, completion, turns = _from_trl_conversational(record)
    else:
        prompt, completion, turns = _text(record, "prompt"), _text(record, "completion"), None
    messages = _ENCODER.encode(turns) if turns is not None else None
    return {"prompt": prompt, "completion": completion, "label": label, "messages": messages}


def normalize_prompt(record: Any) -> dict[str, Any]:
    """A prompt without a completion or label (an evaluation prompt) -> {prompt, messages}.

    The same shapes and message rules as `normalize`: `prompt` as text or a message list, or a
    `conversations`/`messages` list; a conversation must end before the assistant's turn.
    """
    if not isinstance(record, dict):
        raise BadRow(f"not an object: got {_type(record)}")
    key = next((k for k in CONVERSATION_KEYS if record.get(k) is not None), None)
    value = record[key] if key else record.get("prompt")
    if key is None and not isinstance(value, (list, tuple)):
        return {"prompt": _text(record, "prompt"), "messages": None}
    name = key or "prompt"
    turns = _messages(list(value) if isinstance(value, tuple) else value, name)
    if turns[-1]["role"] == "assistant":
        raise BadRow(
            f"missing field: label ({name} ends with an assistant turn: label it, or end the prompt before that turn)"
        )
    if not any(t["content"].strip() for t in turns):
        raise BadRow(f"empty field: {name} has no non-empty message")
    return {"prompt": render_prompt(turns), "messages": _ENCODER.encode(turns)}
