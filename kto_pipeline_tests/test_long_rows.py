"""Rows longer than max_seq_length: fitted before TRL, counted on TRL's own tokenized data, checked; KL health."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from kto_pipeline.config import get_config
from kto_pipeline.training.long_rows import fit_row, trl_lengths

MAX_LEN = 128
# Four kinds of rows, by construction (line i of the file has kind KINDS[i % 4]); with the tiny tokenizer:
#   short     ~53 tokens in all: kept whole
#   long      a 13-turn chat, ~520 prompt tokens: TRL alone drops it ("Dropping fully truncated examples")
#   medium    prompt ~100 < 128, completion ~43: TRL alone cuts the end of the completion
#   hopeless  completion ~160 > 128 on its own: TRL alone cuts its completion; no prompt cut can save it
KINDS = ("short", "long", "medium", "hopeless")
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def _u(text: str) -> dict:
    return {"role": "user", "content": text}


def _a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def long_chat(i: int) -> list[dict]:
    turns = [SYSTEM]
    for t in range(6):
        turns += [
            _u(f"Turn {t} of chat {i}: tell me about Paris and Berlin."),
            _a("Paris is the capital of France. Berlin is the capital of Germany."),
        ]
    return turns + [_u(f"Last question of chat {i}: what is Python?")]


def row(i: int) -> dict:
    kind = KINDS[i % 4]
    if kind == "short":
        prompt, answer = [_u(f"Question {i}: what is the capital of France?")], "The capital of France is Paris."
    elif kind == "long":
        prompt, answer = long_chat(i), "Python is a programming language."
    elif kind == "medium":
        prompt = [
            _u(f"Chat {i}: tell me about Paris and Berlin and Rome, the capitals."),
            _a("Paris, Berlin and Rome are capitals."),
            _u(f"And what is machine learning, in chat {i}?"),
        ]
        answer = "Machine learning is a field of study that gives computers the ability to learn from data."
    else:
        prompt = [_u(f"Question {i}: tell me everything.")]
        answer = "Machine learning is a field of study that gives computers the ability to learn from data. " * 4
    return {"conversations": prompt + [_a(answer)], "label": (i // 4) % 2 == 0}


@pytest.fixture(scope="module")
def long_data(tmp_path_factory) -> Path:
    """40 multi-turn rows through the real data layer (train/eval parquet, quarantine)."""
    from kto_pipeline.data.dataset import build_kto_dataset

    src = tmp_path_factory.mktemp("raw") / "long_chats.jsonl"
    src.write_text("".join(json.dumps(row(i)) + "\n" for i in range(40)))
    out = tmp_path_factory.mktemp("kto_dataset")
    build_kto_dataset([src], out, eval_fraction=0.25)
    return out


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def kinds(dataset_dir: Path, split: str) -> list[str]:
    return [KINDS[(line - 1) % 4] for line in pd.read_parquet(dataset_dir / f"{split}.parquet").line]


def config(**model):
    return get_config(
        "tiny", {"model": {"max_seq_length": MAX_LEN, **model}, "training": {"group_by_length": False}}
    )  # keep file order: rows compared by index


# ------------------------------------------------------------------------------------------------ one row


def test_left_cut_keeps_the_last_turns_and_the_whole_completion(tokenizer):
    prompt, completion = long_chat(7), [_a("Python is a programming language.")]
    p, c = trl_lengths(tokenizer, prompt, completion)
    assert p >= MAX_LEN  # TRL alone would drop this row
    fit = fit_row(tokenizer, prompt, completion, MAX_LEN, "cut_prompt")
    assert fit.status == "prompt_cut" and fit.tokens == p + c
    kept = fit.prompt
    assert kept[0] == SYSTEM and kept[1:] == prompt[-(len(kept) - 1) :]  # the system message and the latest turns
    assert kept[-1]["content"] == "Last question of chat 7: what is Python?" and kept[1]["role"] == "user"
    assert fit.turns_removed == len(prompt) - len(kept) > 0
    assert trl_lengths(tokenizer, kept, completion) == (fit.prompt_tokens, c)  # the whole completion
    assert fit.prompt_tokens + c <= MAX_LEN
    one_more = [SYSTEM] + prompt[-(len(kept) + 1) :]  # the next older user turn as well: would not fit
    assert sum(trl_lengths(tokenizer, one_more, completion)) > MAX_LEN

    # A latest turn too long on its own loses the start of its text, word by word; its end stays.
    words = [_u("filler " * 100 + "so what is the capital of Italy?")]
    fit = fit_row(tokenizer, words, [_a("Rome.")], 40, "cut_prompt")
    text = fit.prompt[0]["content"]
    assert fit.status == "prompt_cut" and text.endswith("so what is the capital of Italy?")
    assert text.startswith("filler") or text.startswith("so")  # cut before a word, not inside one
    assert sum(trl_lengths(tokenizer, fit.prompt, [_a("Rome.")])) <= 40

    # drop: the row is left out, counted, with its sizes
    fit = fit_row(tokenizer, prompt, completion, MAX_LEN, "drop")
    assert fit.status == "dropped" and fit.tokens == p + c and "long_rows=drop" in fit.reason


def test_a_completion_that_cannot_fit_is_dropped_not_cut(tokenizer):
    r = row(3)  # hopeless
    prompt, completion = r["conversations"][:-1], r["conversations"][-1:]
    fit = fit_row(tokenizer, prompt, completion, MAX_LEN, "cut_prompt")
    assert fit.status == "dropped" and fit.completion_tokens > MAX_LEN
    assert "completion does not fit" in fit.reason and f"max_seq_length={MAX_LEN}" in fit.reason


def test_bad_policy_fails_fast_naming_the_field():
    import argparse

    from kto_pipeline.cli.train import add_parser, overrides

    with pytest.raises(ValueError, match=r"model\.long_rows must be one of \['cut_prompt', 'drop'\], not 'keep'"):
        get_config("tiny", {"model": {"long_rows": "keep"}})
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="cmd"))
    assert overrides(p.parse_args(["train", "--long-rows", "drop"])) == {"model": {"long_rows": "drop"}}


def test_a_trainer_that_tokenized_differently_stops_the_run():
    from datasets import Dataset

    from kto_pipeline.training.long_rows import check_trained

    ds = Dataset.from_dict({"prompt_ids": [[1] * 100, [1] * 10], "completion_ids": [[2] * 40, [2] * 5]})
    assert check_trained("train", ds, 2, 140) == 2
    with pytest.raises(
        RuntimeError,
        match=r"train: TRL kept 2 rows \(1 longer than max_seq_length=128\) where the "
        r"long-row accounting expected 2",
    ):
        check_trained("train", ds, 2, 128)
    with pytest.raises(RuntimeError, match="expected 3"):
        check_trained("train", ds, 3, 140)


# ------------------------------------------------------------------------------------------- the trainer


def test_counts_match_what_trl_trains_on(long_data, cache, tmp_path):
    """The accounting against TRL's own tokenized datasets: those of the trainer we build, and those TRL builds
    alone from the same rows (which show what it would have dropped or cut without a word)."""
    from trl import KTOTrainer

    from kto_pipeline.training.model import load_for_training
    from kto_pipeline.training.trainer import build_trainer, kto_args, load_split

    cfg = config()
    trainer, info = build_trainer(cfg, load_for_training(cfg, cache), long_data, tmp_path / "fitted", [])
    loaded = load_for_training(cfg, cache)
    alone = KTOTrainer(
        model=loaded.model,
        args=kto_args(cfg, tmp_path / "alone", (1.0, 1.0), has_eval=True),
        train_dataset=load_split(long_data, "train", True),
        eval_dataset=load_split(long_data, "eval", True),
        processing_class=loaded.tokenizer,
        peft_config=loaded.peft_config,
    )
    measured = {}
    for split in ("train", "eval"):
        ks = kinds(long_data, split)
        n = Counter(ks)
        s = info["long_rows"]["splits"][split]
        assert (s["rows"], s["whole"], s["prompt_cut"], s["dropped"]) == (
            len(ks),
            n["short"],
            n["long"] + n["medium"],
            n["hopeless"],
        )
        assert s["turns_removed"] > 0 and sum(b["rows"] for b in s["histogram"]) == len(ks)
        measured[split] = (s["rows"], s["whole"], s["prompt_cut"], s["dropped"])

        ours = getattr(trainer, f"{split}_dataset")  # TRL's tokenized rows: what it trains on
        assert len(ours) == s["whole"] + s["prompt_cut"] == info[f"{split}_rows"]
        assert all(len(p) + len(c) <= MAX_LEN for p, c in zip(ours["prompt_ids"], ours["completion_ids"]))

        theirs = getattr(alone, f"{split}_dataset")
        our_idx = [i for i, k in enumerate(ks) if k != "hopeless"]
        their_idx = [i for i, k in enumerate(ks) if k != "long"]  # TRL alone dropped exactly the long chats...
        assert len(theirs) == len(their_idx)
        cut_by_trl = [
            i for i, p, c in zip(their_idx, theirs["prompt_ids"], theirs["completion_ids"]) if len(p) + len(c) > MAX_LEN
        ]
        assert cut_by_trl == [i for i in their_idx if ks[i] in ("medium", "hopeless")]  # ...and cut these
        ours_by_row = dict(zip(our_idx, ours))
        theirs_by_row = dict(zip(their_idx, theirs))
        for i in our_idx:
            mine = ours_by_row[i]
            if ks[i] != "long":  # the whole completion, token for token
                assert mine["completion_ids"] == theirs_by_row[i]["completion_ids"]
            if ks[i] == "short":
                assert mine["prompt_ids"] == theirs_by_row[i]["prompt_ids"]
            else:
                prompt = trainer.processing_class.decode(mine["prompt_ids"])
                assert "Turn 0" not in prompt and "Chat " not in prompt  # the oldest turns went...
                assert "Last question of chat" in prompt or "what is machine learning" in prompt  # ...the last stayed
    dropped = {d["row_id"] for d in info["dropped_rows"]}
    expected = {
        r
        for split in ("train", "eval")
        for r, k in zip(pd.read_parquet(long_data / f"{split}.parquet").row_id, kinds(long_data, split))
        if k == "hopeless"
    }
    assert dropped == expected and len(dropped) == 10
    print("measured (rows, whole, prompt_cut, dropped):", measured)


def test_dry_run_counts_with_the_models_own_tokenizer(long_data, cache):
    from kto_pipeline.cli.train import long_rows_text

    text = long_rows_text(config(), long_data, cache)
    n = Counter(kinds(long_data, "train"))
    assert f"max_seq_length={MAX_LEN}, long_rows=cut_prompt" in text
    assert (
        f"train {sum(n.values())} rows: {n['short']} whole, {n['long'] + n['medium']} prompt cut" in text
        and f"{n['hopeless']} dropped" in text
    )
    assert "would drop 10 rows: " in text
    assert "unavailable" in long_rows_text(config(), None, cache)
    assert "unavailable" in long_rows_text(
        get_config("tiny", {"model": {"model_name": str(cache / "nowhere")}}), long_data, cache
    )


# ----------------------------------------------------------------------------------- KL health, checks


def test_kl_zero_share_leaves_out_step_one():
    from kto_pipeline.training.run import kl_health

    history = [
        {"step": 1, "loss": 0.5, "kl": 0.0},
        {"step": 2, "loss": 0.5, "kl": 0.0},
        {"step": 3, "loss": 0.4, "kl": 0.02},
        {"step": 3, "eval_loss": 0.4},
        {"step": 4, "loss": 0.4, "kl": 0.0},
    ]
    assert kl_health(history) == {"kl_logged_steps": 3, "kl_zero_steps": 2, "kl_zero_share": 2 / 3}
    assert kl_health([{"step": 1, "loss": 0.5, "kl": 0.0}])["kl_zero_share"] is None


def test_same_completion_share_follows_trls_kl_pairs():
    from kto_pipeline.training.trainer import same_completion_share

    # TRL pairs row i with row i-1's completion within blocks of the micro-batch, wrapping around: [a a] pairs
    # a with a twice; [b c] pairs b-c and c-b; a last block of one row pairs it with itself.
    assert same_completion_share(["a", "a", "b", "c"], 2) == 0.5
    assert same_completion_share(["a", "a", "b", "c", "d"], 2) == 3 / 5
    assert same_completion_share(["a", "b", "a", "b"], 4) == 0.0


# A training's metrics.json with neutral values: each test sets the fields its check reads.
NEUTRAL_METRICS = {
    **dict.fromkeys(("resumed_from", "train_loss", "final_loss", "eval_loss", "champion", "peak_vram_gib")),
    **dict.fromkeys(("rewards_chosen", "rewards_rejected", "rewards_margins", "kl", "tokens_per_s")),
    **dict.fromkeys(("steps", "steps_this_run", "tokens", "train_rows", "eval_rows", "gradient_accumulation"), 0),
    **dict.fromkeys(("train_runtime_s", "wall_s", "started_at", "finished_at"), 0.0),
    **dict.fromkeys(("desirable_weight", "undesirable_weight"), 1.0),
    "backend": "transformers",
    "base_model": "tiny",
    "eval": {},
    "precomputed_reference": False,
    "chat_format": False,
    "history": [],
}


def _adapter(instance, folder: Path, metrics: dict) -> None:
    import dagster as dg

    from kto_pipeline.reports import TrainingMetrics

    folder.mkdir(parents=True, exist_ok=True)
    TrainingMetrics.of({**NEUTRAL_METRICS, **metrics}).write(folder)
    (folder / ".complete").write_text("")  # finished, as the artifact store leaves it
    instance.report_runless_asset_event(
        dg.AssetMaterialization("lora_adapter", metadata={"path": str(folder), "data_version": folder.name})
    )


def _checks(instance, **gates):
    import dagster as dg

    from kto_pipeline.defs.checks import kl_health, long_rows
    from kto_pipeline.defs.resources import QualityGates

    result = dg.materialize(
        [long_rows, kl_health],
        instance=instance,
        raise_on_error=False,
        selection=dg.AssetSelection.checks(long_rows, kl_health),
        resources={"quality_gates": QualityGates(**gates)},
    )
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.mark.slow
def test_training_reports_long_rows_and_the_check_fails_past_the_threshold(long_data, cache, tmp_path):
    import dagster as dg

    from kto_pipeline.defs.training import adapter_metadata
    from kto_pipeline.training.run import train

    out = tmp_path / "lora_adapter" / "v1"
    metrics = train(
        get_config("tiny", {"model": {"max_seq_length": MAX_LEN}, "training": {"max_steps": 2}}),
        long_data,
        out,
        cache,
        log=lambda line: None,
    )
    report = metrics["long_rows"]
    dropped = pd.read_parquet(report["dropped_rows_file"])
    assert Path(report["dropped_rows_file"]) == long_data / "dropped_at_training" / "v1.parquet"  # by the quarantine
    assert (
        len(dropped) == 10
        and set(dropped.split) <= {"train", "eval"}
        and dropped.reason.str.contains("completion does not fit").all()
    )
    train_split = report["splits"]["train"]
    assert metrics["train_rows"] == train_split["whole"] + train_split["prompt_cut"]
    meta = adapter_metadata(out, "v1")
    assert meta["train_rows_dropped"] == train_split["dropped"] and meta["train_rows"] == metrics["train_rows"]
    table = {r.data["split"]: r.data for r in meta["long_rows"].value.records}
    assert table["eval"]["prompt_cut"] == report["splits"]["eval"]["prompt_cut"]
    bins = [r.data for r in meta["token_lengths"].value.records]
    assert sum(b["train"] for b in bins) == train_split["rows"] and bins[-1]["tokens"] == f">{4 * MAX_LEN}"
    assert isinstance(meta["kl_logged_steps"], float) and "cut_prompt" in meta["long_rows_policy"]

    with dg.DagsterInstance.ephemeral() as instance:
        (out / ".complete").write_text("")  # finished, as the artifact store leaves it
        instance.report_runless_asset_event(
            dg.AssetMaterialization("lora_adapter", metadata={"path": str(out), "data_version": "v1"})
        )
        failed = _checks(instance)["long_rows"]
        assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
        # the advice: the length that keeps 95 % of every split whole (the long chats: ~520 tokens), 64-aligned
        need = max(s["tokens_needed"]["0.95"] for s in report["splits"].values())
        assert 512 < need <= 576 and "--max-seq-length 576 keeps 95% of the rows whole" in failed.description
        assert "max_seq_length=128 tokens. Raise model.max_seq_length" in failed.description
        assert "quality_gates.max_long_row_share=5.0%" in failed.description
        assert failed.metadata["train_rows_dropped"].value == train_split["dropped"]
        assert _checks(instance, max_long_row_share=1.0)["long_rows"].passed


@pytest.mark.slow
def test_kl_health_warns_with_the_advice_that_fits(tmp_path):
    import dagster as dg

    history = {"kl_logged_steps": 10, "kl_zero_steps": 8, "kl_zero_share": 0.8}
    long_rows = {
        "policy": "cut_prompt",
        "max_seq_length": 128,
        "chat_template": False,
        "tokenizer": "tiny",
        "trl_alone": "",
        "splits": {},
    }
    with dg.DagsterInstance.ephemeral() as instance:
        _adapter(
            instance,
            tmp_path / "a",
            {**history, "micro_batch": 2, "processes": 1, "kl_pairs_same_completion": 0.0, "long_rows": long_rows},
        )
        small = _checks(instance)["kl_health"]
        assert not small.passed and small.severity == dg.AssetCheckSeverity.WARN
        assert "0 on 8 of 10 logged steps" in small.description and "per-device batch too small" in small.description
        assert "--batch-size" in small.description and "data too uniform" not in small.description
        assert _checks(instance, kl_health_severity="ERROR")["kl_health"].severity == dg.AssetCheckSeverity.ERROR

        _adapter(
            instance,
            tmp_path / "b",
            {**history, "micro_batch": 8, "processes": 2, "kl_pairs_same_completion": 0.6, "long_rows": long_rows},
        )
        uniform = _checks(instance)["kl_health"]
        assert not uniform.passed and "data too uniform: 60% of the KL pairs" in uniform.description
        assert "per-device batch" not in uniform.description

        _adapter(
            instance,
            tmp_path / "c",
            {
                **history,
                "kl_zero_steps": 2,
                "kl_zero_share": 0.2,
                "micro_batch": 8,
                "processes": 1,
                "kl_pairs_same_completion": 0.0,
                "long_rows": long_rows,
            },
        )
        healthy = _checks(instance)["kl_health"]
        assert healthy.passed and healthy.metadata["kl_zero_share"].value == 0.2


@pytest.mark.slow
def test_kto_train_dry_run_prints_the_accounting(project, tmp_path):
    """`kto train --dry-run` as a user runs it: validates the file (Dagster), then counts with the tokenizer."""
    import subprocess
    import sys

    src = tmp_path / "long_chats.jsonl"
    src.write_text("".join(json.dumps(row(i)) + "\n" for i in range(40)))
    kto = [sys.executable, "-c", "import sys; from kto_pipeline.cli import main; sys.exit(main())"]  # the script
    out = subprocess.run(
        [*kto, "train", "--dry-run", "--local-file", str(src), "--max-seq-length", str(MAX_LEN)],
        cwd=project.root,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = Path(project.latest("kto_dataset")["path"])
    n = Counter(kinds(data, "eval"))
    assert f"Long rows (max_seq_length={MAX_LEN}, long_rows=cut_prompt" in out.stdout
    assert (
        f"eval  {sum(n.values())} rows: {n['short']} whole, {n['long'] + n['medium']} prompt cut" in out.stdout
        and "would drop 10 rows: " in out.stdout
    )
    assert not (data / "dropped_at_training").exists()  # a dry run writes nothing
