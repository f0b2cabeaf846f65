"""Validate one raw file: canonical rows to rows.arrow, bad rows (with reasons) to quarantine.parquet.

Flat rows that Arrow parsed in bulk are checked with vectorized compute kernels; any row they doubt,
and every row Arrow could not parse, goes through `normalize` in Python, which has the final word and
the precise reason. Output is streamed block by block (Parquet writers), so memory stays flat.

`ingest_file` puts the result in a content-addressed cache folder ({digest}-{source}-v{VERSION}), with
a byte-for-byte copy of the original, so a file is validated once however often it is used.
"""

from __future__ import annotations

import queue
import shutil
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from kto_pipeline.artifacts import build_once, hash_file
from kto_pipeline.data.normalize import (
    CONVERSATION_KEYS,
    FALSE_LABELS,
    ROLES,
    TRUE_LABELS,
    BadRow,
    normalize,
    reason_category,
)
from kto_pipeline.data.readers import Batch, DataFileError, NeedExactCsv, Part, chat_column, read_batches
from kto_pipeline.reports import FileReport

VERSION = 3  # bump when a rule or the cache format changes: older cached validations are then redone
SAMPLES_PER_REASON = 3

# rows.arrow of one validated file (internal: the dataset build turns row_key into a hex row_id).
# An Arrow IPC file, not Parquet: it is read back once, memory-mapped, with no decoding at all.
ROWS_FILE = "rows.arrow"
ROW_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("label", pa.bool_()),
        ("messages", pa.string()),  # the prompt's chat turns as JSON, or null for a plain prompt
        ("source", pa.dictionary(pa.int32(), pa.string())),  # one value per file: not repeated per row
        ("line", pa.int64()),
        ("row_key", pa.binary(16)),  # xxh3-128 of (prompt or its turns, completion): the row's content hash
        ("prompt_id", pa.int64()),  # xxh3-64 of the prompt (or its turns): the unit of the train/eval split
        ("chars", pa.int32()),  # length of the longer of prompt and completion, for the length limit
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [("source", pa.string()), ("line", pa.int64()), ("reason", pa.string()), ("raw", pa.string())]
)


def file_digest(path: Path) -> str:
    """xxh3-128 of the file's bytes (fast: the cache key, not a security boundary)."""
    return hash_file(path, xxhash.xxh3_128())


# ---- vectorized checks on a flat Arrow part ------------------------------------------------------


def _as_string(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array | None:
    if pa.types.is_string(col.type):
        return col
    if pa.types.is_large_string(col.type):
        return col.cast(pa.string())
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        try:  # validates UTF-8; a bad byte sends the part to the exact path
            return col.cast(pa.string())
        except pa.ArrowInvalid:
            return None
    return None


def _mask(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _nonblank(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return _mask(pc.and_(pc.greater(pc.utf8_length(col), 0), pc.invert(pc.utf8_is_space(col))))


def _labels(col: pa.ChunkedArray) -> tuple[np.ndarray, pa.ChunkedArray]:
    """(ok mask, bool values) under the same rules as normalize.coerce_label."""
    t = col.type
    if pa.types.is_boolean(t):
        return _mask(pc.is_valid(col)), pc.fill_null(col, False)
    if pa.types.is_integer(t):
        return _mask(pc.is_in(col, pa.array([0, 1], t))), pc.fill_null(pc.equal(col, 1), False)
    text = _as_string(col)
    if text is None:
        return np.zeros(len(col), dtype=bool), pa.chunked_array([pa.nulls(len(col), pa.bool_())])
    norm = pc.utf8_lower(pc.utf8_trim_whitespace(text))
    is_true = pc.is_in(norm, pa.array(sorted(TRUE_LABELS)))
    is_false = pc.is_in(norm, pa.array(sorted(FALSE_LABELS)))
    return _mask(pc.or_(is_true, is_false)), pc.fill_null(is_true, False)


_JSON_ESCAPES = [
    ("\\", "\\\\"),
    ('"', '\\"'),
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\t", "\\t"),
    ("\b", "\\b"),
    ("\f", "\\f"),
]
_OTHER_CONTROL = "[\\x00-\\x07\\x0b\\x0e-\\x1f]"  # json.dumps writes these as \\u00XX: left to Python


def _json_string(col: pa.Array) -> pa.Array:
    """'"' + col escaped as json.dumps(ensure_ascii=False) does + '"' (rows with rare control chars excluded)."""
    for raw, escaped in _JSON_ESCAPES:
        col = pc.replace_substring(col, raw, escaped)
    return pc.binary_join_element_wise('"', col, '"', "")


def _fast_chat(t: pa.Table, key: str, ok: np.ndarray) -> tuple[dict[str, pa.Array], np.ndarray]:
    """Vectorized normalize() for {"messages": [...], "label"} rows: the last turn is the assistant's
    completion, the turns before it the prompt, rendered and as JSON exactly as normalize writes them."""
    msgs = t.column(key).combine_chunks()
    n = len(msgs)
    sizes = pc.fill_null(pc.list_value_length(msgs), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    ok &= sizes >= 2
    turns = pc.list_flatten(msgs)  # only the turns of non-null lists, in row order
    parent = pc.list_parent_indices(msgs).to_numpy()
    roles, contents = pc.struct_field(turns, "role"), pc.struct_field(turns, "content")  # null turn -> null
    bad_turn = ~(_mask(pc.is_valid(roles)) & _mask(pc.is_valid(contents)) & _mask(pc.is_in(roles, pa.array(ROLES))))
    bad_turn |= _mask(pc.match_substring_regex(roles, _OTHER_CONTROL)) | _mask(
        pc.match_substring_regex(contents, _OTHER_CONTROL)
    )
    ok &= np.bincount(parent[bad_turn], minlength=n) == 0
    ends = np.cumsum(sizes)  # index (in turns) one past each row's last turn
    last = np.where(sizes > 0, ends - 1, 0)
    if len(turns):
        ok &= _mask(pc.equal(roles.take(pa.array(last)), "assistant")) & _nonblank(contents.take(pa.array(last)))
    is_last = np.zeros(len(turns), dtype=bool)
    is_last[last[sizes > 0]] = True
    prompt_text = ~is_last & _nonblank(contents) if len(turns) else np.zeros(0, bool)
    ok &= np.bincount(parent[prompt_text], minlength=n) > 0
    # The good rows' prompt turns, re-listed: a ListArray over the non-last turns of the good rows.
    keep_turn = ~is_last & ok[parent] if len(turns) else np.zeros(0, bool)
    idx = pa.array(np.flatnonzero(keep_turn))
    r, c = roles.take(idx), contents.take(idx)
    counts = np.where(ok, sizes - 1, 0)[ok]
    offsets = pa.array(np.concatenate(([0], np.cumsum(counts))).astype(np.int32))
    as_json = pc.binary_join_element_wise('{"role": ', _json_string(r), ', "content": ', _json_string(c), "}", "")
    messages = pc.binary_join_element_wise(
        "[", pc.binary_join(pa.ListArray.from_arrays(offsets, as_json), ", "), "]", ""
    )
    rendered = pc.binary_join(pa.ListArray.from_arrays(offsets, pc.binary_join_element_wise(r, c, ": ")), "\n")
    completion = contents.take(pa.array(last[ok]))
    return {"prompt": rendered, "completion": completion, "messages": messages}, ok


def _fast(part: Part) -> tuple[pa.Table | None, np.ndarray]:
    """(table of good rows, indices of doubtful rows) — or (None, all) when the part's shape is not one
    the vectorized checks know (then every row goes through normalize)."""
    t = part.table
    n = t.num_rows
    names = set(t.column_names)
    if "label" not in names:
        return None, np.arange(n)
    label_ok, label = _labels(t.column("label"))
    chat = chat_column(t)
    if chat is not None:
        if {"prompt", "completion"} & names and any(
            t.column(k).null_count < n for k in {"prompt", "completion"} & names
        ):
            return None, np.arange(n)  # chat and flat rows mixed: rare, left to normalize
        cols, ok = _fast_chat(t, chat, label_ok.copy())
    elif CONVERSATION_KEYS[0] in names or CONVERSATION_KEYS[1] in names or not {"prompt", "completion"} <= names:
        return None, np.arange(n)
    else:
        prompt, completion = _as_string(t.column("prompt")), _as_string(t.column("completion"))
        if prompt is None or completion is None:
            return None, np.arange(n)
        ok = label_ok & _nonblank(prompt) & _nonblank(completion)
        keep = pa.array(ok)
        cols = {
            "prompt": prompt.filter(keep),
            "completion": completion.filter(keep),
            "messages": pa.nulls(int(ok.sum()), pa.string()),
        }
    table = pa.table({**cols, "label": label.filter(pa.array(ok)), "line": part.lines[ok]})
    return table, np.flatnonzero(~ok)


# ---- row ids and assembly ------------------------------------------------------------------------


def _finish(prompt, completion, label, messages, lines, source: str) -> pa.Table:
    """Add source, row_key, prompt_id and chars: the canonical rows table."""
    n = len(prompt)
    key = prompt if messages.null_count == n else pc.coalesce(messages, prompt)
    # Hashing is the one per-row Python loop of the fast path; map() over bytes keeps it well under
    # a microsecond a row. prompt_id = xxh3-64(prompt or its turns);
    # row_key = xxh3-128(completion) seeded with prompt_id: the content hash of the (prompt, completion) pair.
    pid = list(map(xxhash.xxh3_64_intdigest, key.cast(pa.binary()).to_pylist()))
    digests = b"".join(map(xxhash.xxh3_128_digest, completion.cast(pa.binary()).to_pylist(), pid))
    chars = pc.max_element_wise(pc.utf8_length(prompt), pc.utf8_length(completion)).cast(pa.int32())
    return pa.table(
        {
            "prompt": prompt,
            "completion": completion,
            "label": label,
            "messages": messages,
            "source": pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array([source])),
            "line": pa.array(lines, pa.int64()),
            "row_key": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(digests)]),
            "prompt_id": pa.array(np.array(pid, dtype=np.uint64).view(np.int64)),
            "chars": chars,
        },
        schema=ROW_SCHEMA,
    )


# byte -> its two lowercase hex digits, as one little-endian uint16 ("a5" -> ord("a") | ord("5") << 8)
_HEX_PAIRS = np.array([ord(f"{b:02x}"[0]) | ord(f"{b:02x}"[1]) << 8 for b in range(256)], dtype="<u2")


def row_ids(row_key: pa.Array) -> pa.Array:
    """row_key (16 bytes) -> 32-char lowercase hex strings, vectorized (one table lookup per byte)."""
    n = len(row_key)
    raw = np.frombuffer(row_key.buffers()[1], np.uint8)[row_key.offset * 16 : (row_key.offset + n) * 16]
    text = _HEX_PAIRS[raw]  # 2 bytes of ASCII per input byte
    offsets = np.arange(0, 32 * n + 1, 32, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))


def prefetch(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate `items` in a background thread, `depth` ahead: Arrow parses the next block (without the
    GIL) while this thread hashes the current one. Exceptions surface here, in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((item, None))
            q.put((done, None))
        except BaseException as e:  # handed to the consumer, raised there
            q.put((done, e))

    t = threading.Thread(target=work, daemon=True, name="kto-prefetch")
    t.start()
    try:
        while True:
            item, error = q.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)


class IpcWriter:
    """rows.arrow: an Arrow IPC file, record batches appended as they come (a buffer copy each)."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)

    def write_table(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()
        self._sink.close()


class BackgroundWriter:
    """A table writer (Parquet by default, or `writer`) fed from a queue by one thread: encoding,
    compression and the copy to the page cache (GIL-free in Arrow) overlap with the caller's work.
    At most `depth` tables wait, so memory stays bounded."""

    def __init__(
        self, path: Path, schema: pa.Schema, depth: int = 2, writer: type | None = None, **options: Any
    ) -> None:
        self._writer = writer(path, schema) if writer else pq.ParquetWriter(path, schema, **options)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kto-writer")
        self._pending: list[Future] = []
        self._depth = depth

    def write_table(self, table: pa.Table) -> None:
        while len(self._pending) >= self._depth:
            self._pending.pop(0).result()  # a writer error surfaces here
        self._pending.append(self._pool.submit(self._writer.write_table, table))

    def write_batch(self, batch: pa.RecordBatch) -> None:
        self.write_table(pa.Table.from_batches([batch]))

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            for f in self._pending:
                f.result()
        finally:
            self._pool.shutdown(wait=True)
            self._writer.close()


def read_rows(folder: Path, columns: list[str] | None = None) -> pa.Table:
    """A validated folder's rows, memory-mapped: only the pages of the selected columns are read."""
    table = pa.ipc.open_file(pa.memory_map(str(Path(folder) / ROWS_FILE))).read_all()
    return table.select(columns) if columns else table


def iter_rows(folder: Path) -> Iterator[pa.RecordBatch]:
    """A validated folder's rows one written block at a time (read, not mapped: memory stays flat)."""
    with pa.OSFile(str(Path(folder) / ROWS_FILE)) as f:
        reader = pa.ipc.open_file(f)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


class _Tally:
    """Counts and samples for one file's report."""

    def __init__(self) -> None:
        self.records_in = self.valid = self.quarantined = self.n_desirable = 0
        self.reasons: Counter[str] = Counter()
        self.samples: list[dict[str, Any]] = []

    def bad(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            cat = reason_category(r["reason"])
            self.reasons[cat] += 1
            if self.reasons[cat] <= SAMPLES_PER_REASON:
                self.samples.append({**r, "raw": r["raw"][:500]})
        self.quarantined += len(rows)


def _process(batch: Batch, source: str, tally: _Tally) -> tuple[list[pa.Table], list[dict[str, Any]]]:
    tables: list[pa.Table] = []
    py_rows: list[tuple[int, dict[str, Any]]] = []
    bad: list[dict[str, Any]] = []

    def exact(line: int, record: Any, error: str | None, raw: str) -> None:
        if error is None:
            try:
                py_rows.append((line, normalize(record)))
                return
            except BadRow as e:
                error = str(e)
        bad.append({"source": source, "line": line, "reason": error, "raw": raw})

    for part in batch.parts:
        tally.records_in += part.table.num_rows
        good, doubtful = _fast(part)
        if good is not None and good.num_rows:
            tables.append(
                _finish(
                    good["prompt"], good["completion"], good["label"], good["messages"], good["line"].to_numpy(), source
                )
            )
        for i in doubtful.tolist():
            exact(int(part.lines[i]), *part.record_at(i))
    for line, record, error, raw in batch.items:
        tally.records_in += 1
        exact(line, record, error, raw)
    if py_rows:
        cols = {k: [r[k] for _, r in py_rows] for k in ("prompt", "completion", "label", "messages")}
        tables.append(
            _finish(
                pa.array(cols["prompt"], pa.string()),
                pa.array(cols["completion"], pa.string()),
                pa.array(cols["label"], pa.bool_()),
                pa.array(cols["messages"], pa.string()),
                [line for line, _ in py_rows],
                source,
            )
        )
    tally.bad(bad)
    for t in tables:
        tally.valid += t.num_rows
        tally.n_desirable += pc.sum(t["label"]).as_py() or 0
    return tables, bad


def validate_file(path: Path, out_dir: Path, *, source: str | None = None) -> dict[str, Any]:
    """Validate one file into out_dir/{rows,quarantine}.parquet + report.json; returns the report.

    Raises DataFileError when the file cannot be read at all; bad rows never raise.
    """
    path, out_dir = Path(path), Path(out_dir)
    source = source or str(path)
    try:
        return _validate(path, out_dir, source, exact_csv=False)
    except NeedExactCsv:
        # A ragged or blank CSV row: only the csv module can place it on its line; start over with it.
        return _validate(path, out_dir, source, exact_csv=True)


def _validate(path: Path, out_dir: Path, source: str, exact_csv: bool) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    tally = _Tally()
    with (
        BackgroundWriter(out_dir / ROWS_FILE, ROW_SCHEMA, writer=IpcWriter) as rows_out,
        pq.ParquetWriter(out_dir / "quarantine.parquet", QUARANTINE_SCHEMA) as bad_out,
    ):
        for batch in prefetch(read_batches(path, exact_csv=exact_csv)):
            tables, bad = _process(batch, source, tally)
            for t in tables:
                rows_out.write_table(t)
            if bad:
                bad_out.write_table(pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA))
    report = {
        "source": source,
        "validator": VERSION,
        "records_in": tally.records_in,
        "valid": tally.valid,
        "quarantined": tally.quarantined,
        "n_desirable": tally.n_desirable,
        "n_undesirable": tally.valid - tally.n_desirable,
        "reasons": dict(tally.reasons),
        "samples": tally.samples,
    }
    assert report["records_in"] == report["valid"] + report["quarantined"], report
    FileReport.of(report).write(out_dir)
    return report


# ---- the content-addressed cache -----------------------------------------------------------------


def validated_dir_name(digest: str, source: str) -> str:
    # the report's schema too: a folder is reused as long as it exists, so a new schema needs a new folder
    return f"{digest[:16]}-{xxhash.xxh3_64_hexdigest(source.encode())[:8]}-v{VERSION}r{FileReport.SCHEMA_VERSION}"


def ingest_file(
    path: Path, cache_root: Path, *, source: str | None = None, keep_original: bool = True
) -> tuple[Path, dict[str, Any]]:
    """Validate `path` into cache_root/<digest>-<source>-v<VERSION>/ unless already there.

    Returns (folder, report). The folder holds rows.arrow, quarantine.parquet, report.json and,
    with keep_original, a byte-for-byte copy of the file, so nothing is lost if the source goes away.
    Safe to call from concurrent runs: each builds in its own scratch folder, the first to finish wins.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    source = source or str(path.resolve())
    try:
        digest = file_digest(path)
    except OSError as e:
        raise DataFileError(f"{path}: cannot read file: {e.strerror}") from None
    folder = Path(cache_root) / validated_dir_name(digest, source)

    def build(tmp: Path) -> None:
        report = validate_file(path, tmp, source=source)
        report.update(digest=digest, size_bytes=path.stat().st_size, file=path.name)
        FileReport.of(report).write(tmp)
        if keep_original:
            shutil.copyfile(path, tmp / ("original" + "".join(path.suffixes)))

    build_once(folder, build, holder=f"validating {path}")
    report = FileReport.read(folder).to_dict()
    if report["records_in"] == 0:  # else it would add 0 rows without a word
        what = "an empty file" if report["size_bytes"] == 0 else "only a header or blank lines"
        raise DataFileError(f"{path}: no records in it ({what}): add rows or remove the file")
    return folder, report


def read_reports(folders: Iterable[Path]) -> list[FileReport]:
    return [FileReport.read(Path(f)) for f in folders]
