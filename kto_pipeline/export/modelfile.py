"""Ollama Modelfile next to the GGUF files: FROM, chat template as a Go template, stop tokens, parameters.

Ollama templates are Go text/template, not Jinja, and there is no general translation. The chat formats
the presets use are recognised by their markers and written as the Go template Ollama itself uses for
that format (rendering `.Messages`, then the assistant header, like `apply_chat_template(...,
add_generation_prompt=True)`). An unrecognised template gets no TEMPLATE line: Ollama then falls back
to the `tokenizer.chat_template` stored in the GGUF, and the result says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# family -> (marker in the Jinja template, Go template, stop strings)
CHAT_FORMATS: dict[str, tuple[str, str, list[str]]] = {
    "chatml": (
        "<|im_start|>",
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        ["<|im_start|>", "<|im_end|>"],
    ),
    "llama3": (
        "<|start_header_id|>",
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "gemma": (
        "<start_of_turn>",
        '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
        "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
        ["<start_of_turn>", "<end_of_turn>"],
    ),
    "mistral": (  # system turns are not part of this format; Ollama's SYSTEM is ignored by it
        "[INST]",
        '{{- range .Messages }}{{ if eq .Role "user" }}[INST] {{ .Content }} [/INST]'
        '{{ else if eq .Role "assistant" }} {{ .Content }}</s>{{ end }}{{ end }}',
        ["[INST]", "[/INST]"],
    ),
}

DEFAULT_PARAMETERS = {"temperature": 0.7, "top_p": 0.9}


def chat_format(jinja_template: str | None) -> str | None:
    """The known chat format a Jinja template uses, or None."""
    if not jinja_template:
        return None
    for family, (marker, _, _) in CHAT_FORMATS.items():
        if marker in jinja_template:
            return family
    return None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _jinja_template(model_dir: Path) -> str | None:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    return _read_json(model_dir / "tokenizer_config.json").get("chat_template")


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def modelfile_text(
    gguf_file: str, model_dir: str | os.PathLike, system: str | None = None, parameters: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """The Modelfile for `gguf_file` (a path relative to the Modelfile) and a summary of its choices."""
    model_dir = Path(model_dir)
    tok_cfg = _read_json(model_dir / "tokenizer_config.json")
    gen_cfg = _read_json(model_dir / "generation_config.json")
    config = _read_json(model_dir / "config.json")
    family = chat_format(_jinja_template(model_dir))

    stops = list(CHAT_FORMATS[family][2]) if family else []
    eos = _token_text(tok_cfg.get("eos_token"))
    if eos and eos not in stops:
        stops.append(eos)

    params: dict[str, Any] = dict(DEFAULT_PARAMETERS)
    # the model's own sampling defaults win over ours; Ollama calls repetition_penalty repeat_penalty
    for hf, ollama in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("repetition_penalty", "repeat_penalty"),
    ):
        if gen_cfg.get(hf) is not None:
            params[ollama] = gen_cfg[hf]
    if config.get("max_position_embeddings"):
        params["num_ctx"] = min(int(config["max_position_embeddings"]), 4096)
    params.update(parameters or {})

    lines = [
        "# Ollama Modelfile written by kto_pipeline. Use: ollama create <name> -f Modelfile",
        f"FROM ./{gguf_file}",
        "",
    ]
    if family:
        lines += [
            f"# chat format: {family} (translated from the model's Jinja chat template)",
            f'TEMPLATE """{CHAT_FORMATS[family][1]}"""',
            "",
        ]
    else:
        lines += ["# chat template not recognised: Ollama uses the tokenizer.chat_template stored in the GGUF", ""]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops]
    lines += [f"PARAMETER {k} {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n", {"chat_format": family, "stop": stops, "parameters": params}


def write_modelfile(
    out_dir: str | os.PathLike,
    gguf_file: str,
    model_dir: str | os.PathLike,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `{out_dir}/Modelfile` pointing at `gguf_file` (a name inside out_dir); return its summary."""
    text, summary = modelfile_text(gguf_file, model_dir, system, parameters)
    path = Path(out_dir) / "Modelfile"
    path.write_text(text)
    return {"path": str(path), "from": gguf_file, **summary}
