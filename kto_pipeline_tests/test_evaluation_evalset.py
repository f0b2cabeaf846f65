"""The pinned evaluation set: loading with training's validation, exclusion from training, freezing."""

from __future__ import annotations

import json
import threading

import pandas as pd
import pytest

from kto_pipeline.data.readers import DataFileError
from kto_pipeline.evaluation.evalset import exclude_eval_prompts, freeze_eval_split, load_eval_set, prompt_key


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_prompts_labelled_rows_and_quarantine_with_file_and_line(tmp_path):
    f = _jsonl(
        tmp_path / "eval.jsonl",
        [
            {"prompt": "What is KTO?"},  # prompt only
            {"prompt": "What is KTO?", "completion": "A way to align a model.", "label": True},
            {"prompt": "What is KTO?", "completion": "A fruit.", "label": "👎"},
            {"messages": [{"role": "user", "content": "Hi there"}]},  # a conversation before the answer
            '{"prompt": "broken',  # line 5: malformed JSON
            {"prompt": "Is this fine?", "completion": "Yes.", "label": "maybe"},  # line 6: bad label
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},  # no label
            {"prompt": "What is KTO?", "completion": "A way to align a model.", "label": True},  # duplicate
            {"prompt": "Capital?", "completion": "Paris", "label": True},
            {"prompt": "Capital?", "completion": "Paris", "label": False},  # conflict: both quarantined
        ],
    )
    es = load_eval_set(f)
    assert [p.prompt for p in es.prompts] == ["What is KTO?", "user: Hi there", "Capital?"]
    assert es.prompts[1].turns == [{"role": "user", "content": "Hi there"}]
    assert es.prompts[0].turns == [{"role": "user", "content": "What is KTO?"}]
    assert [(r.prompt_index, r.completion, r.label, r.line) for r in es.rows] == [
        (0, "A way to align a model.", True, 2),
        (0, "A fruit.", False, 3),
    ]
    q = es.quarantine.to_pylist()
    by_line = {r["line"]: r["reason"] for r in q}
    assert set(by_line) == {5, 6, 7, 9, 10}
    assert all(r["source"] == str(f) for r in q)
    assert by_line[5].startswith("malformed JSON")
    assert by_line[6].startswith("bad label: 'maybe'")
    assert by_line[7].startswith("missing field: label")
    assert by_line[9].startswith("conflicting duplicate") and by_line[10].startswith("conflicting duplicate")
    rep = es.report
    assert (rep["records_in"], rep["prompts"], rep["labelled_rows"], rep["quarantined"], rep["duplicates_dropped"]) == (
        10,
        3,
        2,
        5,
        1,
    )
    assert rep["reasons"] == {"bad label": 1, "conflicting duplicate": 2, "malformed JSON": 1, "missing field": 1}


def test_folder_of_files_in_several_formats(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"prompt": "One?"}])
    (tmp_path / "b.csv").write_text("prompt,completion,label\nTwo?,Yes,true\nThree?,,false\n")
    pd.DataFrame({"prompt": ["Four?"], "completion": ["No"], "label": [False]}).to_parquet(tmp_path / "c.parquet")
    es = load_eval_set(tmp_path)
    assert [p.prompt for p in es.prompts] == ["One?", "Two?", "Four?"]
    (bad,) = es.quarantine.to_pylist()
    assert bad["source"].endswith("b.csv") and bad["line"] == 3 and bad["reason"].startswith("empty field")


def test_unreadable_or_empty_sets_fail_clearly(tmp_path):
    with pytest.raises(DataFileError, match="no such file"):
        load_eval_set(tmp_path / "missing.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match="no data files"):
        load_eval_set(tmp_path / "empty")
    bad = _jsonl(tmp_path / "bad.jsonl", ['{"prompt": ""}'])
    with pytest.raises(DataFileError, match="no valid evaluation prompt"):
        load_eval_set(bad)


def test_matching_rule_ignores_case_spacing_and_system_turns():
    plain = prompt_key("What is  KTO?", None)
    assert prompt_key("what is kto?\n", None) == plain
    turns = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "WHAT is KTO?"}]
    assert prompt_key("ignored", json.dumps(turns)) == plain
    assert prompt_key("What is DPO?", None) != plain
    assert prompt_key("x", [{"role": "assistant", "content": "What is KTO?"}]) != plain  # the role counts


def test_exclusion_from_a_training_frame(tmp_path):
    es = load_eval_set(_jsonl(tmp_path / "e.jsonl", [{"prompt": "What is KTO?"}, {"prompt": "Hello"}]))
    train = pd.DataFrame(
        {
            "prompt": ["what is KTO?", "Other", "user: Hello", "Hello again"],
            "completion": ["a", "b", "c", "d"],
            "label": [True, False, True, True],
            "messages": [None, None, json.dumps([{"role": "user", "content": "hello"}]), None],
        }
    )
    kept, removed = exclude_eval_prompts(train, es.keys)
    assert removed == 2
    assert kept.completion.tolist() == ["b", "d"]
    assert exclude_eval_prompts(train, set()) == (train, 0)


def test_freeze_round_trip_never_overwrites(tmp_path, kto_data):
    dest = tmp_path / "eval" / "frozen.jsonl"
    path, created = freeze_eval_split(kto_data / "eval.parquet", dest)
    assert created and path == dest
    split = pd.read_parquet(kto_data / "eval.parquet")
    es = load_eval_set(dest)
    assert len(es.rows) == len(split) and es.quarantine.num_rows == 0
    assert sorted((es.prompts[r.prompt_index].prompt, r.completion, r.label) for r in es.rows) == sorted(
        zip(split.prompt, split.completion, split.label)
    )
    # every eval-split row is caught by the exclusion; the train rows caught ask an eval question under
    # another system prompt (the split groups exact prompts only), and the rows kept ask none of them
    assert exclude_eval_prompts(split, es.keys)[1] == len(split)
    train = pd.read_parquet(kto_data / "train.parquet")
    kept, removed = exclude_eval_prompts(train, es.keys)
    asked = {p.turns[-1]["content"] for p in es.prompts}

    def last(df):
        return {json.loads(m)[-1]["content"] if isinstance(m, str) else p for p, m in zip(df.prompt, df.messages)}

    assert removed == len(train) - len(kept) > 0
    assert last(train.drop(kept.index)) <= asked and not last(kept) & asked
    before = dest.read_bytes()
    other = tmp_path / "other.parquet"
    split.head(1).to_parquet(other)
    assert freeze_eval_split(other, dest) == (dest, False)
    assert dest.read_bytes() == before
    assert [p.name for p in dest.parent.iterdir()] == ["frozen.jsonl"]  # no temporary left behind


def test_concurrent_freezes_write_one_complete_file(tmp_path, kto_data):
    dest = tmp_path / "frozen.jsonl"
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(freeze_eval_split(kto_data / "eval.parquet", dest)[1]))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 1 and len(results) == 4
    assert load_eval_set(dest).report["labelled_rows"] == len(pd.read_parquet(kto_data / "eval.parquet"))


def test_freezing_an_empty_split_fails(tmp_path, kto_data):
    empty = tmp_path / "eval.parquet"
    pd.read_parquet(kto_data / "eval.parquet").head(0).to_parquet(empty)
    with pytest.raises(ValueError, match="eval split is empty"):
        freeze_eval_split(empty, tmp_path / "frozen.jsonl")
