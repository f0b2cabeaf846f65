"""evaluate() on the tiny model with two real LoRA adapters (one pushed towards the labels, one against them): the
report agrees with its parquet files, pi_ref is scored once, and the GGUF, judge and `kto eval` paths run for real."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kto_pipeline.evaluation import metrics
from kto_pipeline.evaluation import run as R
from kto_pipeline.evaluation.gate import BehaviourLimits, behaviour_verdict
from kto_pipeline.evaluation.judge import JudgeError
from kto_pipeline.reports import EvalReport
from kto_pipeline_tests.procs import free_ports

torch = pytest.importorskip("torch")

ROWS = [
    ("What is the capital of France?", "The capital of France is Paris.", True),
    ("What is the capital of France?", "Berlin.", False),
    ("Hi", "Hello! How can I help?", True),
    ("Hi", "Go away.", False),
    ("What does a list hold?", "A list holds items in order.", True),
    ("What does a list hold?", "Nothing at all, ever.", False),
    ("Why do plants need light?", "Photosynthesis turns light, water and carbon dioxide into sugar.", True),
    ("Why do plants need light?", "I don't know. Please ask someone else.", False),
]
SETTINGS = R.EvalSettings(max_new_tokens=8, batch_size=4)


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("evalset") / "eval.jsonl"
    lines = [{"prompt": p, "completion": c, "label": lab} for p, c, lab in ROWS] + [{"prompt": "Say | hi\nplease"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def _adapter(base: Path, out: Path, towards_labels: bool) -> Path:
    """A LoRA adapter trained a few steps to raise (or lower) the log-prob of the desirable completions."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]),
    )
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rows = [([{"role": "user", "content": p}], c, lab == towards_labels) for p, c, lab in ROWS]
    for _ in range(15):
        loss = 0
        for prompt, completion, up in rows:
            p, c = metrics.tokenize_row(tok, prompt, completion)
            logits = model(input_ids=torch.tensor([p + c])).logits[0].log_softmax(-1)
            logp = logits[len(p) - 1 : -1].gather(1, torch.tensor(c)[:, None]).sum()
            loss = loss + (-logp if up else logp) / len(rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return _adapter(tiny_model_dir, root / "good", True), _adapter(tiny_model_dir, root / "bad", False)


def _job(tiny, good, bad, eval_set, out, **kw) -> R.EvalJob:
    return R.EvalJob(
        base_model=str(tiny),
        candidate=R.ModelSpec("candidate", str(good)),
        champion=R.ModelSpec("champion", str(bad)) if bad else None,
        eval_set=str(eval_set),
        output_dir=str(out),
        settings=SETTINGS,
        **kw,
    )


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, adapters, eval_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    calls = []
    real = metrics.completion_logps

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(metrics, "completion_logps", counting)
    try:
        report = R.evaluate(_job(tiny_model_dir, *adapters, eval_set, out), log=lambda s: None)
    finally:
        mp.undo()
    return report, out, calls


def test_report_agrees_with_its_files(evaluated):
    report, out, _ = evaluated
    assert EvalReport.read(out) == report
    assert report.prompts == 5 and report.labelled_rows == 8 and set(report.models) == {"base", "champion", "candidate"}
    gens = pd.read_parquet(out / report.files["generations"])
    assert list(gens.columns) == ["prompt_index", "prompt", "role", "answer", "stopped", "tokens"]
    assert len(gens) == 15 and (gens.groupby("role").size() == 5).all()
    labelled = pd.read_parquet(out / report.files["labelled"])
    for role in ("candidate", "champion"):
        acc = report.models[role].accuracy
        assert acc.accuracy == pytest.approx(labelled[f"correct_{role}"].mean())
        assert acc.low <= acc.accuracy <= acc.high and acc.rows == 8
        g = gens[gens.role == role]
        assert report.models[role].answers.mean_tokens == pytest.approx(g.tokens.mean())
        assert report.models[role].answers.hit_limit == pytest.approx((~g.stopped).mean())
    assert report.models["base"].accuracy is None
    # one adapter learned the labels, the other their opposite
    assert report.models["candidate"].accuracy.accuracy == 1.0 and report.models["champion"].accuracy.accuracy == 0.0
    change = labelled.correct_candidate - labelled.correct_champion
    assert report.accuracy_change.diff == pytest.approx(change.mean()) and report.accuracy_change.low > 0
    assert report.lost == []  # the candidate lost on no prompt
    assert set(report.seconds) == {"load", "generate", "score"}


def test_reference_scored_once_and_as_score_labelled(evaluated, tiny_model_dir, adapters, eval_set):
    report, _, calls = evaluated
    # base (rows + KL pairs) once, then each policy: 6 passes, not 8 (pi_ref is not scored again per policy)
    assert len(calls) == 6
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    policy = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), str(adapters[1])
    ).eval()
    prompts = [[{"role": "user", "content": p}] for p, _, _ in ROWS]
    groups = [p for p, _, _ in ROWS]
    want = metrics.score_labelled(
        policy, base, tok, prompts, [c for _, c, _ in ROWS], [x for *_, x in ROWS], beta=0.1, groups=groups
    )
    got = report.models["champion"].accuracy
    assert (got.accuracy, got.low, got.high) == (want.accuracy, want.low, want.high)
    assert got.kl == pytest.approx(want.kl) and got.reward_margin == pytest.approx(want.reward_margin)


def test_a_worse_candidate_fails_the_gate_and_names_the_prompts(tiny_model_dir, adapters, eval_set, tmp_path):
    good, bad = adapters
    report = R.evaluate(_job(tiny_model_dir, bad, good, eval_set, tmp_path), log=lambda s: None)
    assert report.accuracy_change.diff == -1.0 and len(report.lost) == 3
    assert report.lost[0].score == -1.0 and report.lost[0].prompt == "What is the capital of France?"
    verdict = behaviour_verdict(report, BehaviourLimits())
    assert not verdict.passed and "quality_gates.max_accuracy_drop" in verdict.description
    table = R.side_by_side(tmp_path, 8)
    assert table.splitlines()[0] == "| prompt | base | champion | candidate |"
    assert "Say \\| hi<br>please" in table and len(table.splitlines()) == 7


def test_first_release_is_compared_with_the_base(tiny_model_dir, adapters, eval_set, tmp_path):
    report = R.evaluate(_job(tiny_model_dir, adapters[0], None, eval_set, tmp_path), log=lambda s: None)
    assert set(report.models) == {"base", "candidate"} and report.accuracy_change is None
    assert behaviour_verdict(report, BehaviourLimits()).passed


def test_settings_fail_naming_the_field():
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        R.EvalSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="reference_point"):
        R.EvalSettings(reference_point="mean")
    job = R.EvalJob("b", R.ModelSpec("candidate", "c"), None, "e", "o", R.EvalSettings(seed=3), judge={"base_url": "x"})
    import dataclasses

    assert R.EvalJob.from_dict(json.loads(json.dumps(dataclasses.asdict(job)))) == job


def test_judge_path_and_a_judge_that_is_down(tiny_model_dir, adapters, eval_set, tmp_path):
    import sys

    from kto_pipeline_tests.test_evaluation_judge import _serve, _stop

    (port,) = free_ports(1)
    proc = _serve([sys.executable, "-m", "kto_pipeline_tests.judge_server", str(port)], port, "/")
    try:
        url = f"http://127.0.0.1:{port}/v1"
        judge = {"base_url": url, "model": "first", "api_key_env": None, "response_format": "text", "max_retries": 0}
        report = R.evaluate(_job(tiny_model_dir, *adapters, eval_set, tmp_path, judge=judge), log=lambda s: None)
    finally:
        _stop(proc)
    j = report.judge
    assert (j.endpoint, j.model, j.prompts) == (url, "first", 5)
    verdicts = pd.read_parquet(tmp_path / report.files["verdicts"])
    assert len(verdicts) == 5 and j.win_rate == pytest.approx(verdicts.score.mean())
    different = verdicts[verdicts.candidate.str.strip() != verdicts.champion.str.strip()]
    assert (different.reason_candidate_first == "A comes first").all()  # the judge's reasons, per prompt
    assert j.ties == 5  # a judge that always picks the first answer decides nothing
    (port,) = free_ports(1)
    down = {**judge, "base_url": f"http://127.0.0.1:{port}/v1"}
    with pytest.raises(JudgeError, match=rf"judge endpoint http://127.0.0.1:{port}/v1 .*no answer"):
        R.evaluate(_job(tiny_model_dir, *adapters, eval_set, tmp_path / "down", judge=down), log=lambda s: None)


@pytest.mark.slow
def test_gguf_answers_agree_with_the_candidate(tiny_model_dir, adapters, eval_set, tmp_path):
    from kto_pipeline.export import gguf as G
    from kto_pipeline.export.merge import merge_adapter

    merge_adapter(str(tiny_model_dir), adapters[0], tmp_path / "merged")
    f16 = G.convert_to_gguf(tmp_path / "merged", tmp_path / "gguf")
    q4 = G.quantize(f16, tmp_path / "gguf" / "model-Q4_K_M.gguf", "Q4_K_M")
    report = R.evaluate(_job(tiny_model_dir, *adapters, eval_set, tmp_path / "e", gguf=str(q4)), log=lambda s: None)
    g = report.gguf
    assert (g.type, g.prompts, g.file) == ("Q4_K_M", 5, str(q4)) and "gguf" in report.seconds
    gens = pd.read_parquet(tmp_path / "e" / "generations.parquet")
    cand, ours = (gens[gens.role == r].set_index("prompt_index").answer for r in ("candidate", "gguf"))
    assert g.exact_match == pytest.approx((cand.str.strip() == ours.str.strip()).mean())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    agree = [R.token_agreement(tok, cand[i], ours[i], 32) for i in cand.index]
    assert g.token_agreement == pytest.approx(np.mean(agree)) and g.token_agreement > 0.3
    assert g.answers.answers == 5
    assert "candidate Q4_K_M" in R.side_by_side(tmp_path / "e", 3).splitlines()[0]


def test_kto_eval_on_two_adapter_folders(tiny_model_dir, adapters, eval_set, tmp_path, capsys, monkeypatch):
    from kto_pipeline.cli import main

    monkeypatch.setenv("KTO_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    good, bad = (shutil.copytree(a, tmp_path / a.name) for a in adapters)
    common = ["--eval-set", str(eval_set), "--max-new-tokens", "8", "--output-dir"]
    # the tiny model's answers are noise: only the accuracy rule is asked here
    common = ["--max-degeneration-increase", "1", *common]
    assert main(["eval", str(good), "--against", str(bad), *common, str(tmp_path / "1")]) == 0
    out = capsys.readouterr().out
    assert "candidate" in out and "1.000 [1.000, 1.000]" in out and "behaviour: passed" in out
    assert "| prompt | base | champion | candidate |" in out
    assert main(["eval", str(bad), "--against", str(good), *common, str(tmp_path / "2")]) == 1
    out = capsys.readouterr().out
    assert "behaviour: FAILED" in out and "the release stays where it was" in out
