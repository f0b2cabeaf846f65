"""kto_pipeline.data without Dagster: every input format, every quarantine reason, the split, the hashes."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kto_pipeline.data import (
    BadRow,
    DataFileError,
    build_kto_dataset,
    coerce_label,
    label_balance,
    normalize,
    readers,
    validate_file,
)
from kto_pipeline.data import validate as validate_module
from kto_pipeline.data.readers import parse_json_line
from kto_pipeline.data.validate import read_rows


def jl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records)


def rows_of(out: Path) -> pd.DataFrame:
    return read_rows(out).to_pandas()


def bad_of(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "quarantine.parquet")


def check_invariant(report: dict) -> None:
    assert report["records_in"] == report["valid"] + report["quarantined"] + report.get("duplicates_dropped", 0)


def build(tmp_path: Path, files: list[Path], **kw) -> tuple[dict, Path]:
    out = tmp_path / f"ds{random.random()}"
    report = build_kto_dataset(files, out, **kw)
    check_invariant(report)
    return report, out


# ---- labels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("true", True),
        ("FALSE", False),
        (" Yes ", True),
        ("no", False),
        ("NO", False),
        ("1", True),
        ("0", False),
        ("👍", True),
        ("👎", False),
    ],
)
def test_label_coercion_accepts(value, expected):
    assert coerce_label(value) is expected


@pytest.mark.parametrize("value", [2, -1, 1.0, 0.0, "y", "maybe", "", None, [], {}, "thumbs up"])
def test_label_coercion_rejects(value):
    with pytest.raises(BadRow, match="^bad label"):
        coerce_label(value)


@pytest.mark.parametrize("first", [True, "yes", 1])
def test_labels_agree_between_bulk_and_row_paths(tmp_path, first):
    """Arrow's vectorized coercion and normalize() give the same labels, whatever type comes first."""
    labels = [first, True, False, 1, 0, "true", "False", " YES ", "no", "👍", "👎", "1", "0"] * 3
    src = tmp_path / "labels.jsonl"
    src.write_text(jl(*[{"prompt": f"p{i}", "completion": f"c{i}", "label": v} for i, v in enumerate(labels)]))
    report = validate_file(src, tmp_path / "out")
    assert report["valid"] == len(labels) and report["quarantined"] == 0
    got = rows_of(tmp_path / "out").sort_values("line")
    assert got.label.tolist() == [coerce_label(v) for v in labels]
    assert got.line.tolist() == list(range(1, len(labels) + 1))


# ---- record shapes ---------------------------------------------------------------------------------


def test_conversations_last_assistant_turn_is_the_completion_and_system_is_kept():
    row = normalize(
        {
            "conversations": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."},
            ],
            "label": "yes",
        }
    )
    assert row["completion"] == "Paris." and row["label"] is True
    turns = json.loads(row["messages"])
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert turns[0]["content"] == "Be brief." and "Capital of France?" in row["prompt"]


def test_messages_key_and_sharegpt_turns():
    a = normalize({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": 0})
    b = normalize({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "label": 0})
    assert a == b and a["label"] is False and json.loads(a["messages"]) == [{"role": "user", "content": "q"}]


def test_trl_conversational_prompt_completion_lists():
    row = normalize(
        {
            "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
            "completion": [{"role": "assistant", "content": "A"}],
            "label": True,
        }
    )
    assert row["completion"] == "A" and json.loads(row["messages"])[0] == {"role": "system", "content": "S"}


@pytest.mark.parametrize(
    "record,category",
    [
        ({"conversations": [{"role": "user", "content": "q"}], "label": 1}, "bad conversation"),
        (
            {
                "conversations": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "more?"},
                ],
                "label": 1,
            },
            "bad conversation",
        ),
        ({"conversations": [{"role": "assistant", "content": "a"}], "label": 1}, "empty field"),
        (
            {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}], "label": 1},
            "empty field",
        ),
        ({"conversations": "not a list", "label": 1}, "malformed JSON"),
        ({"conversations": [["user", "q"]], "label": 1}, "wrong type"),
        (
            {
                "prompt": [{"role": "user", "content": "q"}],
                "completion": [{"role": "user", "content": "a"}],
                "label": 1,
            },
            "bad conversation",
        ),
        ({"prompt": "q", "completion": 5, "label": 1}, "wrong type"),
        ({"prompt": None, "completion": "a", "label": 1}, "wrong type"),
        ({"completion": "a", "label": 1}, "missing field"),
        ({"prompt": "q", "completion": "a"}, "missing field"),
        ({"prompt": " \t\n", "completion": "a", "label": 1}, "empty field"),
        ({"prompt": "q\ud800", "completion": "a", "label": 1}, "not UTF-8"),
        (["q", "a", True], "not an object"),
    ],
)
def test_bad_records_get_a_reason(record, category):
    with pytest.raises(BadRow) as e:
        normalize(record)
    assert str(e.value).split(":")[0] == category


# ---- every reason, end to end, with file and line --------------------------------------------------

DIRTY = [
    ({"prompt": "ok1", "completion": "fine", "label": True}, None),
    ('{"prompt": "broken", "completion": ', "malformed JSON"),
    ('["an", "array"]', "not an object"),
    ({"completion": "no prompt", "label": True}, "missing field"),
    ({"prompt": "ok2", "completion": "   ", "label": False}, "empty field"),
    ({"prompt": "ok3", "completion": "x", "label": "maybe"}, "bad label"),
    ({"prompt": 42, "completion": "x", "label": True}, "wrong type"),
    ({"prompt": "ok4", "completion": "dup", "label": True}, None),
    ({"prompt": "ok4", "completion": "dup", "label": True}, "duplicate"),
    ({"prompt": "ok5", "completion": "contested", "label": True}, "conflicting duplicate"),
    ({"prompt": "ok5", "completion": "contested", "label": False}, "conflicting duplicate"),
    ({"prompt": "ok6", "completion": "x" * 300, "label": False}, "too long"),
    ({"prompt": "ok7", "completion": "fine", "label": False}, None),
]


def write_dirty(path: Path) -> None:
    with open(path, "wb") as f:
        for rec, _ in DIRTY:
            f.write((rec if isinstance(rec, str) else json.dumps(rec)).encode() + b"\n")
        f.write(b'{"prompt": "bytes \xff\xfe", "completion": "x", "label": true}\n')  # not UTF-8, line 14


def test_every_reason_is_quarantined_with_file_and_line(tmp_path):
    src = tmp_path / "dirty.jsonl"
    write_dirty(src)
    report, out = build(tmp_path, [src], max_chars=200, eval_fraction=0.0)
    bad = pd.read_parquet(out / "quarantine.parquet")
    got = {(int(r.line), r.reason.split(":")[0]) for r in bad.itertuples()}
    expected = {(i + 1, why) for i, (_, why) in enumerate(DIRTY) if why not in (None, "duplicate")}
    assert got == expected | {(14, "not UTF-8")}
    assert set(bad.source) == {str(src.resolve())} or set(bad.source) == {str(src)}
    assert report["reasons"] == {
        "bad label": 1,
        "conflicting duplicate": 2,
        "empty field": 1,
        "malformed JSON": 1,
        "missing field": 1,
        "not UTF-8": 1,
        "not an object": 1,
        "too long": 1,
        "wrong type": 1,
    }
    assert (report["records_in"], report["valid"], report["duplicates_dropped"]) == (14, 3, 1)
    assert {s["reason"].split(":")[0] for s in report["samples"]} == set(report["reasons"])
    raw = bad.set_index("line").raw
    assert raw[2] == '{"prompt": "broken", "completion": '  # the line as it was, not a re-serialization
    train = pd.read_parquet(out / "train.parquet")
    assert sorted(train.prompt) == ["ok1", "ok4", "ok7"] and train[train.prompt == "ok4"].line.tolist() == [8]


def test_file_hygiene_bom_crlf_blank_lines_truncated_tail(tmp_path):
    src = tmp_path / "messy.jsonl"
    body = (
        '\ufeff{"prompt": "a", "completion": "x", "label": true}\r\n\r\n'
        '   \r\n{"prompt": "b", "completion": "y", "label": false}\r\n\n\n'
        '{"prompt": "c", "completion": "z", "label": 1}\r\n{"prompt": "d", "compl'
    )
    src.write_bytes(body.encode("utf-8"))
    report = validate_file(src, tmp_path / "out")
    assert (report["records_in"], report["valid"], report["quarantined"]) == (4, 3, 1)
    assert sorted(rows_of(tmp_path / "out").line) == [1, 4, 7]
    bad = bad_of(tmp_path / "out")
    assert bad.line.tolist() == [8] and bad.reason[0].startswith("malformed JSON")
    assert rows_of(tmp_path / "out").prompt.tolist() == ["a", "b", "c"]  # no BOM, no \r


def test_empty_and_blank_files_hold_no_rows(tmp_path):
    for name, text in [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n \n\r\n"),
        ("empty.csv", ""),
        ("empty.json", "[]"),
        ("header.csv", "prompt,completion,label\n"),
    ]:
        (tmp_path / name).write_text(text)
        report = validate_file(tmp_path / name, tmp_path / f"out_{name}")
        assert (report["records_in"], report["valid"]) == (0, 0), name


# ---- the other formats -----------------------------------------------------------------------------


def test_json_array_file_streams_elements_with_their_lines(tmp_path):
    src = tmp_path / "array.json"
    src.write_text(
        '[\n  {"prompt": "a",\n   "completion": "x", "label": "yes"},\n'
        '  {"prompt": "b", "completion": "y", "label": "no"},\n  7,\n'
        '  {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}],'
        ' "label": true}\n]\n',
        encoding="utf-8-sig",
    )
    report = validate_file(src, tmp_path / "out")
    assert (report["valid"], report["quarantined"]) == (3, 1)
    assert sorted(rows_of(tmp_path / "out").line) == [2, 4, 6]
    assert bad_of(tmp_path / "out").line.tolist() == [5]


def test_truncated_json_array_keeps_what_it_could_read(tmp_path):
    src = tmp_path / "cut.json"
    src.write_text('[{"prompt": "a", "completion": "x", "label": 1},\n {"prompt": "b", "comp')
    report = validate_file(src, tmp_path / "out")
    assert (report["valid"], report["quarantined"]) == (1, 1)
    assert bad_of(tmp_path / "out").reason[0].startswith("malformed JSON")


def test_json_file_of_lines_is_read_as_jsonl(tmp_path):
    src = tmp_path / "lines.json"
    src.write_text(
        jl({"prompt": "a", "completion": "x", "label": True}, {"prompt": "b", "completion": "y", "label": 0})
    )
    assert validate_file(src, tmp_path / "out")["valid"] == 2


def test_csv_quoted_multiline_fields_keep_line_numbers(tmp_path):
    src = tmp_path / "feedback.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "completion", "label", "user"])
        w.writerow(["Explain lists,\nbriefly.", "A list holds\nitems\nin order.", "yes", "u1"])
        w.writerow(["Say hi", 'He said "hi".', "👎", "u2"])
        w.writerow(["q3", "", "true", "u3"])
    report = validate_file(src, tmp_path / "out")
    assert (report["valid"], report["quarantined"]) == (2, 1)
    rows = rows_of(tmp_path / "out").sort_values("line")
    assert rows.line.tolist() == [2, 6] and rows.completion.iloc[0] == "A list holds\nitems\nin order."
    assert rows.label.tolist() == [True, False]
    bad = bad_of(tmp_path / "out")
    assert bad.line.tolist() == [7] and bad.reason[0].startswith("empty field")
    assert json.loads(bad.raw[0])["user"] == "u3"


def test_csv_ragged_rows_blank_lines_and_bad_bytes(tmp_path):
    src = tmp_path / "ragged.csv"
    src.write_bytes(
        b'\xef\xbb\xbfprompt,completion,label\r\n"multi\r\nline",a,1\r\n\r\nonly,two\r\nq\xff,b,0\r\nq4,"c, d",no\r\n'
    )
    report = validate_file(src, tmp_path / "out")
    assert (report["records_in"], report["valid"], report["quarantined"]) == (4, 2, 2)
    assert sorted(rows_of(tmp_path / "out").line) == [2, 7]
    bad = bad_of(tmp_path / "out").sort_values("line")
    assert bad.line.tolist() == [5, 6]
    assert bad.reason.iloc[0] == "wrong number of columns: expected 3, got 2"
    assert bad.reason.iloc[1].startswith("not UTF-8")


def test_tsv_and_compressed_files(tmp_path):
    (tmp_path / "a.tsv").write_text("prompt\tcompletion\tlabel\nq\ta\t1\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(jl({"prompt": "q", "completion": "b", "label": True}))
    with bz2.open(tmp_path / "c.csv.bz2", "wt") as f:
        f.write("prompt,completion,label\nq,c,0\n")
    for name in ("a.tsv", "b.jsonl.gz", "c.csv.bz2"):
        assert validate_file(tmp_path / name, tmp_path / f"out_{name}")["valid"] == 1, name


def test_parquet_with_flat_and_chat_columns(tmp_path):
    flat = tmp_path / "flat.parquet"
    pq.write_table(
        pa.table({"prompt": ["a", "b", ""], "completion": ["x", "y", "z"], "label": [True, False, True]}), flat
    )
    report = validate_file(flat, tmp_path / "o1")
    assert (report["valid"], report["quarantined"]) == (2, 1) and bad_of(tmp_path / "o1").line.tolist() == [3]
    chat = tmp_path / "chat.parquet"
    pq.write_table(
        pa.table(
            {
                "messages": [
                    [
                        {"role": "system", "content": "S"},
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"},
                    ]
                ],
                "label": ["yes"],
            }
        ),
        chat,
    )
    rows = (validate_file(chat, tmp_path / "o2"), rows_of(tmp_path / "o2"))[1]
    assert rows.completion[0] == "a" and json.loads(rows.messages[0])[0]["role"] == "system"


def test_block_boundaries_and_fallbacks_match_a_line_by_line_reference(tmp_path, monkeypatch):
    """Tiny blocks force every code path (bulk parse, windows, label screening, line-by-line); the
    result must equal the obvious reference: parse_json_line + normalize on each line."""
    rng = random.Random(7)
    lines = []
    for i in range(3000):
        r = rng.random()
        rec = {"prompt": f"p{i % 700}", "completion": f"c{i}", "label": rng.choice([True, False])}
        if r < 0.03:
            lines.append(json.dumps(rec)[: rng.randint(3, 20)])
        elif r < 0.06:
            lines.append(json.dumps({**rec, "label": rng.choice(["yes", "no", "maybe", 1, 2])}))
        elif r < 0.08:
            lines.append(json.dumps({**rec, "completion": rng.choice(["", " ", None])}))
        elif r < 0.09:
            lines.append("")
        elif r < 0.10:
            lines.append(json.dumps(rec) + " " + json.dumps(rec))
        elif r < 0.11:
            lines.append("   ")
        else:
            lines.append(json.dumps(rec))
    src = tmp_path / "mix.jsonl"
    src.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(readers, "BLOCK_BYTES", 4096)
    report = validate_file(src, tmp_path / "out")
    check_invariant(report)

    want_good, want_bad = reference(lines)
    got = read_rows(tmp_path / "out").to_pylist()
    assert {r["line"]: {k: r[k] for k in ("prompt", "completion", "label", "messages")} for r in got} == want_good
    assert dict(zip(bad_of(tmp_path / "out").line.astype(int), bad_of(tmp_path / "out").reason)) == want_bad


def reference(lines: list[str]) -> tuple[dict, dict]:
    """The obvious line-by-line result: parse_json_line + normalize."""
    good, bad = {}, {}
    for n, line in enumerate(lines, start=1):
        rec, err, _ = parse_json_line(line.encode())
        if err == "":
            continue
        if err is None:
            try:
                good[n] = normalize(rec)
                continue
            except BadRow as e:
                err = str(e)
        bad[n] = err
    return good, bad


def test_chat_rows_checked_in_bulk_match_normalize_exactly(tmp_path, monkeypatch):
    """Chat rows go through Arrow's vectorized path; their prompt text and messages JSON (which the
    row hash covers) must be byte-identical to normalize's, escapes and all."""
    rng = random.Random(3)
    tricky = [
        'say "hi"',
        "back\\slash",
        "two\nlines",
        "tab\there",
        "bell\x07",
        "form\x0cfeed",
        "bs\x08",
        "émoji 👍 ünïcode",
        "",
        "  ",
        "cr\r\nlf",
        "\x1f unit sep",
        "plain",
    ]
    lines = []
    for i in range(1500):
        turns = [
            {"role": "user", "content": f"{rng.choice(tricky)} q{i}"},
            {"role": "assistant", "content": rng.choice(tricky)},
        ]
        if rng.random() < 0.5:
            turns.insert(0, {"role": "system", "content": rng.choice(tricky)})
        r = rng.random()
        if r < 0.05:
            turns.append({"role": "user", "content": "trailing"})
        elif r < 0.08:
            turns[0]["role"] = rng.choice(["", " ", None])
        elif r < 0.10:
            turns = turns[-1:]
        elif r < 0.12:
            turns = None
        elif r < 0.13:
            turns[-1] = None
        lines.append(json.dumps({"messages": turns, "label": rng.choice(["yes", "no", "No", "maybe"])}))
    src = tmp_path / "chat.jsonl"
    src.write_text("\n".join(lines) + "\n")
    calls = []
    monkeypatch.setattr(validate_module, "normalize", lambda rec: calls.append(1) or normalize(rec))
    report = validate_file(src, tmp_path / "out")
    check_invariant(report)
    want_good, want_bad = reference(lines)
    # Python saw exactly the bad rows and the good ones with rare control characters (\\u00XX escapes).
    rare = sum(
        1
        for r in want_good.values()
        if "\\u00" in r["messages"] or "\x07" in r["completion"] or "\x1f" in r["completion"]
    )
    assert len(calls) == len(want_bad) + rare
    got = read_rows(tmp_path / "out").to_pylist()
    assert {r["line"]: {k: r[k] for k in ("prompt", "completion", "label", "messages")} for r in got} == want_good
    assert dict(zip(bad_of(tmp_path / "out").line.astype(int), bad_of(tmp_path / "out").reason)) == want_bad
    assert len(want_good) > 700 and len(want_bad) > 300


# ---- unreadable files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,content,why",
    [
        ("missing.jsonl", None, "no such file"),
        ("notes.txt", b"hello", "unsupported file type"),
        ("broken.parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
        ("broken.jsonl.gz", b"\x1f\x8b\x08\x00garbage", "cannot read jsonl (gzip)"),
    ],
)
def test_unreadable_file_fails_with_one_clear_line(tmp_path, name, content, why):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataFileError) as e:
        validate_file(path, tmp_path / "out")
    message = str(e.value)
    assert message.startswith(str(path)) and why in message and "\n" not in message
    # no library exception chained to it: users see this one line, not a traceback from inside pyarrow
    assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)


def test_a_directory_is_not_a_file(tmp_path):
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(DataFileError, match="not a regular file"):
        validate_file(tmp_path / "d.jsonl", tmp_path / "out")


# ---- the dataset: duplicates, split, hashes -----------------------------------------------------------


def grouped_data(path: Path, n_prompts: int = 200, seed: int = 0) -> None:
    rng = random.Random(seed)
    recs = []
    for p in range(n_prompts):
        for c in range(rng.randint(1, 4)):
            recs.append({"prompt": f"prompt {p}", "completion": f"answer {p}.{c}", "label": rng.random() < 0.7})
    path.write_text(jl(*recs))


def test_split_is_grouped_by_prompt_stratified_and_deterministic(tmp_path):
    src = tmp_path / "g.jsonl"
    grouped_data(src)
    r1, out1 = build(tmp_path, [src], eval_fraction=0.2, seed=3)
    r2, out2 = build(tmp_path, [src], eval_fraction=0.2, seed=3)
    train, ev = pd.read_parquet(out1 / "train.parquet"), pd.read_parquet(out1 / "eval.parquet")
    assert not set(train.prompt) & set(ev.prompt)  # a prompt never sits on both sides
    for label, n_train, n_eval in (
        (True, r1["train_desirable"], r1["eval_desirable"]),
        (False, r1["train_undesirable"], r1["eval_undesirable"]),
    ):
        assert abs(n_eval / (n_train + n_eval) - 0.2) < 0.05, label  # stratified by label
    assert set(ev.split) == {"eval"} and set(train.split) == {"train"}
    assert pd.read_parquet(out2 / "eval.parquet").row_id.tolist() == ev.row_id.tolist()
    assert r1["data_version"] == r2["data_version"]
    r3, out3 = build(tmp_path, [src], eval_fraction=0.2, seed=4)
    assert set(pd.read_parquet(out3 / "eval.parquet").row_id) != set(ev.row_id)
    assert r3["data_version"] != r1["data_version"]


def test_row_ids_and_data_version_follow_content_not_order(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(jl(*[{"prompt": f"q{i}", "completion": "x", "label": i % 2 == 0} for i in range(20)]))
    b.write_text(jl(*[{"prompt": f"r{i}", "completion": "y", "label": i % 3 == 0} for i in range(20)]))
    r_ab, out_ab = build(tmp_path, [a, b])
    r_ba, out_ba = build(tmp_path, [b, a])
    assert r_ab["data_version"] == r_ba["data_version"]
    ids = pd.concat([pd.read_parquet(out_ab / f) for f in ("train.parquet", "eval.parquet")])
    assert ids.row_id.is_unique and ids.row_id.str.fullmatch("[0-9a-f]{32}").all()
    c = tmp_path / "c.jsonl"  # the same content under another name: the same row ids
    c.write_text(a.read_text())
    _, out_c = build(tmp_path, [c])
    assert set(pd.concat([pd.read_parquet(out_c / f) for f in ("train.parquet", "eval.parquet")]).row_id) <= set(
        ids.row_id
    )
    flipped = tmp_path / "flipped.jsonl"
    flipped.write_text(a.read_text().replace('"label": true', '"label": false', 1))
    assert build(tmp_path, [flipped, b])[0]["data_version"] != r_ab["data_version"]


def test_sample_data_validates_cleanly(tmp_path):
    raw = Path(__file__).resolve().parent.parent / "data" / "raw"
    report, out = build(tmp_path, sorted(raw.glob("*.jsonl")), eval_fraction=0.2)
    assert report["quarantined"] == 0 and report["valid"] == report["records_in"]
    assert report["eval_desirable"] > 0 and report["eval_undesirable"] > 0
    assert set(pd.read_parquet(out / "train.parquet").columns) >= {
        "prompt",
        "completion",
        "label",
        "messages",
        "source",
        "line",
        "row_id",
        "split",
    }


# ---- label balance ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_d,n_u", [(10, 90), (50, 50), (60, 40), (90, 10), (1, 1000), (1000, 1)])
def test_label_balance_weights_land_in_the_papers_band(n_d, n_u):
    b = label_balance(n_d, n_u)
    ratio = b["desirable_weight"] * n_d / (b["undesirable_weight"] * n_u)
    assert 1 <= ratio <= 4 / 3 + 1e-3
    assert min(b["desirable_weight"], b["undesirable_weight"]) == 1.0
    assert b["desirable_share"] == pytest.approx(n_d / (n_d + n_u))


def test_label_balance_one_class():
    assert label_balance(0, 10) == {"desirable_share": 0.0, "desirable_weight": 1.0, "undesirable_weight": 1.0}


def test_report_recommends_weights_from_the_train_rows(tmp_path):
    src = tmp_path / "skew.jsonl"
    src.write_text(jl(*[{"prompt": f"q{i}", "completion": "a", "label": i % 5 == 0} for i in range(100)]))
    report, _ = build(tmp_path, [src], eval_fraction=0.2)
    w = report["recommended_weights"]
    assert w == label_balance(report["train_desirable"], report["train_undesirable"])
    assert w["desirable_weight"] > 1 and w["undesirable_weight"] == 1.0


# ---- Hugging Face datasets -----------------------------------------------------------------------------


def test_hf_dataset_from_a_local_folder_and_file(tmp_path, monkeypatch):
    from kto_pipeline.data.hf import snapshot

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        jl({"prompt": "q", "completion": "a", "label": "yes"}, {"prompt": "q2", "completion": "b", "label": "no"})
    )
    (folder / "other.jsonl").write_text(jl({"prompt": "z", "completion": "z", "label": 1}))
    path, label = snapshot(str(folder), tmp_path / "snap", data_file="train.jsonl")
    assert label == f"hf://{folder}/train.jsonl"
    report = validate_file(path, tmp_path / "out", source=label)
    assert report["valid"] == 2 and set(rows_of(tmp_path / "out").source) == {label}


def test_hf_dataset_that_cannot_be_reached_says_so(tmp_path):
    # In a fresh process: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    code = (
        "import sys\nfrom kto_pipeline.data import DataFileError\nfrom kto_pipeline.data.hf import snapshot\n"
        "for name, file in (('someone/not-cached-anywhere', None), (sys.argv[1], 'nope.jsonl')):\n"
        "    try:\n        snapshot(name, __import__('pathlib').Path(sys.argv[1]), data_file=file)\n"
        "    except DataFileError as e:\n        print(e)\n"
    )
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    first, second = out.stdout.strip().splitlines()
    assert first.startswith("Hugging Face dataset hf://someone/not-cached-anywhere: could not be loaded")
    assert "offline" in first
    assert second.startswith(f"Hugging Face dataset hf://{tmp_path}/nope.jsonl: could not be loaded")


# ---- bad input that gets a hint -------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, reason",
    [
        (
            {"Prompt": "q", "completion": "a", "label": True},
            "missing field: prompt (found 'Prompt': field names are lower case)",
        ),
        (
            {"prompt": "q", "completion": "a", "Label": True},
            "missing field: label (found 'Label': field names are lower case)",
        ),
        (
            {"prompt": "q", "response": "a", "label": True},
            "missing field: completion (found 'response': rename it to completion)",
        ),
        (
            {"prompt": "q", "output": "a", "label": True},
            "missing field: completion (found 'output': rename it to completion)",
        ),
        (
            {"prompt": "q", "chosen": "a", "rejected": "b", "label": True},
            "found 'chosen'/'rejected': a paired preference row",
        ),
        (
            {"prompt": "q", "text": "a", "label": True},
            "missing field: completion (the record has: 'prompt', 'text', 'label')",
        ),
    ],
)
def test_missing_field_names_what_was_found(record, reason):
    with pytest.raises(BadRow) as e:
        normalize(record)
    assert reason in str(e.value)


def test_a_chat_role_outside_system_user_assistant_tool_is_quarantined(tmp_path):
    f = tmp_path / "chat.jsonl"
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    bot = [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]
    odd = [{"role": "narrator", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    f.write_text(jl(*({"messages": m, "label": i % 2 == 0} for i, m in enumerate([good, bot, odd, good]))))
    report = validate_file(f, tmp_path / "out")
    assert (report["valid"], report["quarantined"]) == (2, 2)  # the bulk (Arrow) path agrees with normalize
    reasons = sorted(bad_of(tmp_path / "out").reason)
    assert reasons[0].startswith(
        "bad conversation: messages[0].role is 'narrator', expected one of system/user/assistant/tool"
    )
    assert reasons[1].startswith("bad conversation: messages[1].role is 'bot'")


@pytest.mark.parametrize("content, what", [("", "an empty file"), ("prompt,completion,label\n", "only a header")])
def test_a_file_without_records_is_an_error_that_says_so(tmp_path, content, what):
    from kto_pipeline.data import ingest_file

    f = tmp_path / "feedback.csv"
    f.write_text(content)
    with pytest.raises(DataFileError, match=f"feedback.csv: no records in it \\({what}"):
        ingest_file(f, tmp_path / "cache")
    with pytest.raises(DataFileError, match="no records"):  # the cached validation says so too
        ingest_file(f, tmp_path / "cache")
