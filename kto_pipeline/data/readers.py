"""Stream records out of one raw file, block by block, never the whole file in memory.

Each format yields `Batch`es of two kinds of rows:
  - `Part`: rows Arrow parsed in bulk (the fast path; validate.py checks them vectorized), with a
    `record_at(i)` that re-reads row i exactly in Python when a row looks bad, so reasons are precise;
  - `Item`: rows parsed one by one in Python (malformed lines, the rarer of mixed label types,
    ShareGPT turns and other odd shapes, JSON arrays, CSV with ragged rows).
Every row carries its line number: the physical line where it starts (JSONL, JSON array, CSV — the
header is line 1) or its 1-based row number (Parquet).

Formats: .jsonl/.ndjson, .json (a JSON array, or JSON Lines if it does not start with '['), .csv,
.tsv, .parquet; .gz/.bz2/.zst compressed text formats too. A file that cannot be read at all raises
`DataFileError` naming the file and why; row-level problems never raise.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

BLOCK_BYTES = 16 << 20  # text formats are read in blocks of this size (cut at a line end)
PARQUET_BATCH_ROWS = 65_536
EXACT_CSV_ROWS = 20_000
FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
CONVERSATION_KEYS = ("conversations", "messages")
_BOM = b"\xef\xbb\xbf"
_ROW_HINT = re.compile(r"in row (\d+)")
_FAST_SCHEMA = pa.schema([("prompt", pa.string()), ("completion", pa.string())])

Item = tuple[int, Any, "str | None", str]  # (line, record or None, error or None, raw text)


class DataFileError(Exception):
    """A file that cannot be read at all. str(self) names the file and why — shown to users as is."""


@dataclass
class Part:
    table: pa.Table
    lines: np.ndarray
    record_at: Callable[[int], tuple[Any, str | None, str]]  # row i -> (record, error, raw text)


@dataclass
class Batch:
    parts: list[Part] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)


class NeedExactCsv(Exception):
    """The Arrow CSV reader met a row it cannot place (ragged or blank): re-read with the csv module."""


def split_ext(path: Path) -> tuple[str, str | None]:
    """(format, compression) from the file name, e.g. data.jsonl.gz -> ("jsonl", "gzip")."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None or (compression and fmt == "parquet"):
        supported = ", ".join(sorted(FORMATS)) + " (text formats also as .gz/.bz2/.zst)"
        raise DataFileError(f"{path}: unsupported file type; supported: {supported}")
    return fmt, compression


def is_supported(path: Path) -> bool:
    if path.name.startswith((".", "~")) or not path.is_file():
        return False
    try:
        split_ext(path)
    except DataFileError:
        return False
    return True


def read_batches(path: Path, exact_csv: bool = False) -> Iterator[Batch]:
    """All rows of one file as Batches; raises DataFileError if the file cannot be read at all."""
    path = Path(path)
    fmt, compression = split_ext(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    if not path.is_file():
        raise DataFileError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise DataFileError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        return  # an empty file holds no records; the report shows 0 rows for it
    try:
        if fmt == "parquet":
            yield from _parquet(path)
        elif fmt in ("csv", "tsv"):
            delimiter = "\t" if fmt == "tsv" else ","
            yield from (
                _csv_exact(path, compression, delimiter) if exact_csv else _csv_arrow(path, compression, delimiter)
            )
        else:
            stream = _open(path, compression)
            with stream:
                first = _peek(path, compression)
                if fmt == "json" and first == b"[":
                    yield from _json_array(stream)
                else:
                    yield from _jsonl(stream)
    except (DataFileError, NeedExactCsv):
        raise
    except (OSError, EOFError, pa.ArrowException, ValueError) as e:
        what = {"parquet": "not a readable Parquet file"}.get(
            fmt, f"cannot read {fmt}" + (f" ({compression})" if compression else "")
        )
        raise DataFileError(f"{path}: {what}: {_short(e)}") from None


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _open(path: Path, compression: str | None):
    return pa.input_stream(str(path), compression=compression)


def _peek(path: Path, compression: str | None) -> bytes:
    """First non-blank byte after a BOM (b'' for a blank file)."""
    with _open(path, compression) as s:
        head = s.read(1 << 16).lstrip(b"\xef\xbb\xbf").lstrip()
    return head[:1]


# ---- JSON Lines -------------------------------------------------------------------------------


def _jsonl(stream) -> Iterator[Batch]:
    carry, line0, first = b"", 1, True
    state = {"fast": True}  # switched off for the rest of the file once rows prove non-flat
    while True:
        data = stream.read(BLOCK_BYTES)
        buf = carry + data if carry else data
        if first:
            buf, first = (buf[len(_BOM) :] if buf.startswith(_BOM) else buf), False
        if data:
            cut = buf.rfind(b"\n")
            if cut < 0:  # a line longer than the block: keep reading
                carry = buf
                continue
            block, carry = buf[: cut + 1], buf[cut + 1 :]
        else:
            block, carry = buf, b""  # last block; may end in a truncated line
        if block:
            batch, newlines = _jsonl_block(block, line0, state)
            yield batch
            line0 += newlines
        if not data:
            return


def _line_spans(block: bytes, line0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, line numbers) of the non-empty lines of a block; a CRLF's \\r is excluded."""
    arr = np.frombuffer(block, np.uint8)
    nl = np.flatnonzero(arr == 10)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [len(block)]))
    numbers = line0 + np.arange(len(starts), dtype=np.int64)
    nonempty = ends > starts
    cr = np.zeros(len(starts), dtype=bool)
    cr[nonempty] = arr[ends[nonempty] - 1] == 13
    ends = ends - cr
    keep = ends > starts
    return starts[keep], ends[keep], numbers[keep]


def parse_json_line(raw: bytes) -> tuple[Any, str | None, str]:
    """(record, error, text) for one line; error "" means a blank line (not a record)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return (
            None,
            f"not UTF-8: invalid byte 0x{raw[e.start]:02x} at column {e.start + 1}",
            raw.decode("utf-8", "replace"),
        )
    if not text.strip():
        return None, "", text
    try:
        return json.loads(text), None, text
    except json.JSONDecodeError as e:
        return None, f"malformed JSON: {e.msg} (column {e.colno})", text
    except RecursionError:
        return None, "malformed JSON: nested too deeply", text


def chat_column(t: pa.Table) -> str | None:
    """The chat column Arrow can take in bulk: one list of {role, content} string structs (not ShareGPT)."""
    keys = [k for k in CONVERSATION_KEYS if k in t.column_names]
    if len(keys) != 1:
        return None
    typ = t.schema.field(keys[0]).type
    if not pa.types.is_list(typ) or not pa.types.is_struct(typ.value_type):
        return None
    fields = {f.name: f.type for f in typ.value_type}
    if fields.get("role") != pa.string() or fields.get("content") != pa.string() or {"from", "value"} & set(fields):
        return None
    return keys[0]


def _is_flat(table: pa.Table) -> bool:
    """A shape validate.py checks in bulk: the seed's flat rows, or role/content chat lists."""
    names = set(table.column_names)
    if names.intersection(CONVERSATION_KEYS):
        return chat_column(table) is not None
    return "prompt" in names and "completion" in names


def _parse_flat(buf, exact_rows: bool = False) -> pa.Table | str:
    """Arrow's bulk JSON parse of whole lines: a table, or the error text (which names the bad row).

    Arrow's default 1 MiB internal blocks parse fastest (cache-friendly), but then an error's row
    number is relative to the internal block; exact_rows parses in one block so it is absolute.
    """
    seg = pa.py_buffer(buf)
    options = (
        pajson.ReadOptions(use_threads=False, block_size=max(len(seg) + 1, 1 << 16))
        if exact_rows
        else pajson.ReadOptions(use_threads=False)
    )  # the other core hashes the previous block meanwhile
    try:
        return pajson.read_json(
            pa.BufferReader(seg),
            read_options=options,
            parse_options=pajson.ParseOptions(explicit_schema=_FAST_SCHEMA, unexpected_field_behavior="infer"),
        )
    except pa.ArrowInvalid as e:
        return str(e)


def _is_utf8(buf: bytes) -> bool:
    """Arrow's (SIMD) UTF-8 check of a whole buffer: Arrow's JSON parser itself does not check."""
    offsets = pa.py_buffer(np.array([0, len(buf)], np.int32).tobytes())
    try:
        pa.Array.from_buffers(pa.binary(), 1, [None, offsets, pa.py_buffer(buf)]).cast(pa.string())
        return True
    except pa.ArrowInvalid:
        return False


def _non_utf8_lines(block: bytes, starts: np.ndarray) -> list[int]:
    """Indices (into starts) of the lines holding bytes that are not UTF-8."""
    bad, pos, view = [], 0, memoryview(block)
    while pos < len(block):
        try:
            codecs.utf_8_decode(view[pos:], "strict", True)
            break
        except UnicodeDecodeError as e:
            i = int(np.searchsorted(starts, pos + e.start, side="right") - 1)
            bad.append(i)
            pos = int(starts[i + 1]) if i + 1 < len(starts) else len(block)
    return bad


def _jsonl_block(block: bytes, line0: int, state: dict) -> tuple[Batch, int]:
    """(the block's rows, its number of newlines)."""
    arr = np.frombuffer(block, np.uint8)
    nl = np.flatnonzero(arr == 10)
    if state["fast"] and _is_utf8(block):
        gaps = np.diff(nl)
        empty = (
            (len(nl) and nl[0] == 0)
            or block.startswith(b"\r\n")
            or bool((gaps == 1).any())
            or bool(((gaps == 2) & (arr[nl[:-1] + 1] == 13)).any())
        )
        if not empty:
            # The common case: one bulk parse, one row per line; line i is the i-th line of the block.
            n = len(nl) + (0 if block.endswith(b"\n") else 1)
            table = _parse_flat(block)
            if isinstance(table, str) and "Column(/label) changed" in table:
                state["mixed_labels"] = True
            if isinstance(table, pa.Table) and _is_flat(table) and table.num_rows == n:
                starts = np.concatenate(([0], nl + 1))[:n]
                ends = np.concatenate((nl, [len(block)]))[:n]
                lines = line0 + np.arange(n, dtype=np.int64)
                return Batch(parts=[Part(table, lines, _LineReader(block, starts, ends))]), len(nl)
    return _jsonl_block_general(block, line0, state), len(nl)


_WINDOW_LINES = 4096  # bulk-parse windows on the careful path: an error costs at most one window
_STRING_LABEL = re.compile(rb'"label"\s*:\s*"')
_OTHER_LABEL = re.compile(rb'"label"\s*:\s*[^"\s]')


def _label_minority(block: bytes, starts: np.ndarray) -> np.ndarray:
    """Lines whose label is of the rarer kind (string vs not): a file mixing true and "yes" would make
    Arrow fail once per switch; the rarer kind goes to Python instead."""
    strings = np.fromiter((m.start() for m in _STRING_LABEL.finditer(block)), dtype=np.int64)
    if 2 * len(strings) > len(starts):
        strings = np.fromiter((m.start() for m in _OTHER_LABEL.finditer(block)), dtype=np.int64)
    return np.unique(np.searchsorted(starts, strings, side="right") - 1)


def _jsonl_block_general(block: bytes, line0: int, state: dict) -> Batch:
    return _Careful(block, line0, state).run()


class _Careful:
    """A block Arrow could not take in one go: set the obviously bad lines aside, parse the rest in
    windows, and split windows around the rows Arrow names in its errors.

    (A class rather than nested functions: recursive closures form reference cycles, which would keep
    every block alive until the garbage collector happens to run.)
    """

    def __init__(self, block: bytes, line0: int, state: dict) -> None:
        self.block, self.state = block, state
        self.starts, self.ends, self.numbers = _line_spans(block, line0)
        starts, ends = self.starts, self.ends
        arr = np.frombuffer(block, np.uint8)
        # A JSONL record is one line "{...}": anything else (truncated line, array, scalar, padding)
        # goes straight to Python, which gives the precise reason, instead of costing Arrow a failed parse.
        shaped = (arr[starts] == 0x7B) & (arr[ends - 1] == 0x7D) if len(starts) else np.zeros(0, bool)
        if state.get("mixed_labels"):
            shaped[_label_minority(block, starts)] = False
        if not _is_utf8(block):
            shaped[_non_utf8_lines(block, starts)] = False
        self.slow_rows: list[int] = np.flatnonzero(~shaped).tolist()
        # Blank the set-aside lines in a copy: Arrow skips blank lines, so windows run across them.
        self.blanked = bytearray(block)
        for i in self.slow_rows:
            self.blanked[starts[i] : ends[i]] = b" " * int(ends[i] - starts[i])
        self.keep = np.flatnonzero(shaped)  # window position p -> line index keep[p]
        self.taken: list[tuple[pa.Table, int, int]] = []

    def parse(self, lo: int, hi: int, exact: bool) -> pa.Table | str:
        with memoryview(self.blanked) as view:
            return _parse_flat(view[self.starts[self.keep[lo]] : self.ends[self.keep[hi - 1]]], exact_rows=exact)

    def to_python(self, lo: int, hi: int) -> None:
        self.slow_rows.extend(self.keep[lo:hi].tolist())

    def window(self, lo: int, hi: int, depth: int) -> None:
        # Parse [lo, hi) in bulk. Arrow names the row it choked on (an error costs the rows up to
        # it): bulk-parse the rows before it again, read the suspects in Python, carry on after them.
        # A row-count mismatch (two objects on one line) is bisected down to small slices. Past one
        # failure per 50 rows the bulk attempts cost more than they save: Python takes over.
        failures, budget = 0, max(16, (hi - lo) // 50)
        while lo < hi:
            if not self.state["fast"] or failures > budget or hi - lo <= 4:
                return self.to_python(lo, hi)
            result = self.parse(lo, hi, exact=True)
            if isinstance(result, str):
                failures += 1
                self.state["mixed_labels"] = self.state.get("mixed_labels") or "Column(/label) changed" in result
                m = _ROW_HINT.search(result)
                bad = min(lo + int(m.group(1)), hi) if m else lo
                if bad - 1 > lo:
                    self.clean(lo, bad - 1, depth + 1)
                self.to_python(max(lo, bad - 1), min(hi, bad + 1))
                lo = bad + 1
                continue
            if not _is_flat(result):
                self.state["fast"] = False  # chat-shaped file: Python reads it line by line from here on
                return self.to_python(lo, hi)
            if result.num_rows != hi - lo:
                if depth > 30:
                    return self.to_python(lo, hi)
                mid = (lo + hi) // 2
                self.window(lo, mid, depth + 1)
                self.window(mid, hi, depth + 1)
                return
            self.taken.append((result, lo, hi))
            return

    def clean(self, lo: int, hi: int, depth: int) -> None:
        """Rows Arrow got through before its error: they parse again, with the quick settings."""
        result = self.parse(lo, hi, exact=False)
        if isinstance(result, pa.Table) and _is_flat(result) and result.num_rows == hi - lo:
            self.taken.append((result, lo, hi))
        else:
            self.window(lo, hi, depth)

    def run(self) -> Batch:
        for lo in range(0, len(self.keep), _WINDOW_LINES):
            self.window(lo, min(len(self.keep), lo + _WINDOW_LINES), 0)
        batch = Batch()
        block, starts, ends, numbers = self.block, self.starts, self.ends, self.numbers
        # Few, large parts: tables whose label has the same type are concatenated (per-part costs add up).
        groups: dict[str, list[tuple[pa.Table, int, int]]] = {}
        for t, lo, hi in self.taken:
            kind = str(t.schema.field("label").type) if "label" in t.column_names else "-"
            groups.setdefault(kind, []).append((t, lo, hi))
        for members in groups.values():
            try:
                table = pa.concat_tables([t for t, _, _ in members], promote_options="permissive")
                rows = self.keep[np.concatenate([np.arange(lo, hi) for _, lo, hi in members])]
                merged = [(table.combine_chunks(), rows)]
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                merged = [(t, self.keep[lo:hi]) for t, lo, hi in members]
            for table, rows in merged:
                s, e = starts[rows], ends[rows]
                batch.parts.append(Part(table, numbers[rows], _LineReader(block, s, e)))
        for i in sorted(self.slow_rows):
            rec, err, text = parse_json_line(block[starts[i] : ends[i]])
            if err != "":
                batch.items.append((int(numbers[i]), rec, err, text))
        return batch


class _LineReader:
    """record_at for rows Arrow parsed: row i is block[starts[i]:ends[i]], read again exactly."""

    def __init__(self, block: bytes, starts: np.ndarray, ends: np.ndarray) -> None:
        self.block, self.starts, self.ends = block, starts, ends

    def __call__(self, i: int) -> tuple[Any, str | None, str]:
        return parse_json_line(self.block[self.starts[i] : self.ends[i]].rstrip(b"\r"))


# ---- JSON array ---------------------------------------------------------------------------------


def _json_array(stream) -> Iterator[Batch]:
    """Elements of a top-level JSON array, decoded incrementally (raw_decode over a sliding buffer)."""
    decoder = json.JSONDecoder()
    text_in = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape")
    buf, pos, line, eof = "", 0, 1, False

    def fill() -> bool:
        nonlocal buf, pos, eof
        chunk = "" if eof else text_in.read(1 << 20)
        if not chunk:
            eof = True
            return False
        buf, pos = buf[pos:] + chunk, 0
        return True

    def next_char() -> str:
        """Skip whitespace (counting lines); the next character, or '' at the end of the file."""
        nonlocal pos, line
        while True:
            start = pos
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            line += buf.count("\n", start, pos)
            if pos < len(buf):
                return buf[pos]
            if not fill():
                return ""

    def decode() -> tuple[Any, int] | str:
        """The value at pos and its end, or an error message."""
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                if fill():
                    continue  # maybe just cut by the chunk boundary: retry with more text
                return f"{e.msg}"
            if end < len(buf) or not fill():  # a number may continue in the next chunk
                return value, end

    items: list[Item] = []
    next_char()
    pos += 1  # the opening '[' (checked by the caller)
    ch = next_char()
    while ch and ch != "]":
        start_line, result = line, decode()
        if isinstance(result, str):
            items.append(
                (
                    start_line,
                    None,
                    f"malformed JSON: {result}; the rest of the array could not be read",
                    buf[pos : pos + 1000],
                )
            )
            break
        value, end = result
        raw = buf[pos:end]
        try:
            raw.encode("utf-8")
            items.append((start_line, value, None, raw))
        except UnicodeEncodeError:
            items.append(
                (
                    start_line,
                    None,
                    "not UTF-8: the element holds bytes that are not UTF-8",
                    raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                )
            )
        line += raw.count("\n")
        pos = end
        ch = next_char()
        if ch == ",":
            pos += 1
            ch = next_char()  # a trailing comma before ']' is tolerated
        elif ch and ch != "]":
            items.append(
                (
                    line,
                    None,
                    f"malformed JSON: expected ',' or ']' after an element, found {ch!r}; "
                    "the rest of the array could not be read",
                    buf[pos : pos + 1000],
                )
            )
            break
        if len(items) >= 10_000:
            yield Batch(items=items)
            items = []
    if not ch:
        items.append((line, None, "malformed JSON: the array is not closed (truncated file?)", ""))
    elif ch == "]":
        pos += 1
        if next_char():
            items.append((line, None, "malformed JSON: data after the closing ']'", buf[pos : pos + 1000]))
    if items:
        yield Batch(items=items)


# ---- CSV / TSV ----------------------------------------------------------------------------------


def _header(path: Path, compression: str | None, delimiter: str) -> list[str]:
    with io.TextIOWrapper(_open(path, compression), encoding="utf-8-sig", errors="replace", newline="") as f:
        row = next(csv.reader(f, delimiter=delimiter), None)
    if not row:
        return []
    return [h.strip() for h in row]


def _csv_arrow(path: Path, compression: str | None, delimiter: str) -> Iterator[Batch]:
    names = _header(path, compression, delimiter)
    if not names:
        return
    ragged: list[str] = []

    def invalid(row) -> str:
        ragged.append(row.text)
        return "skip"

    reader = pacsv.open_csv(
        _open(path, compression),
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, newlines_in_values=True, ignore_empty_lines=False, invalid_row_handler=invalid
        ),
        # Binary, not string: one bad byte must quarantine its row, not fail the whole file.
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.binary() for n in names}, strings_can_be_null=False, quoted_strings_can_be_null=False
        ),
    )
    line = 2  # the header is line 1
    with reader:
        for rb in reader:
            if ragged:
                raise NeedExactCsv(ragged[0])
            if rb.num_rows == 0:
                continue
            table = pa.Table.from_batches([rb])
            # A row starts one line after the previous row ended: 1 + the newlines inside its values.
            extra = np.zeros(rb.num_rows, dtype=np.int64)
            for col in table.columns:
                extra += np.asarray(pc.count_substring(col, "\n").to_numpy(zero_copy_only=False), dtype=np.int64)
            span = 1 + extra
            lines = line + np.concatenate(([0], np.cumsum(span)[:-1]))
            line = int(lines[-1] + span[-1])
            cols = table.column_names
            yield Batch(parts=[Part(table, lines, _csv_record_at(table, cols))])
        if ragged:
            raise NeedExactCsv(ragged[0])


def _csv_record_at(table: pa.Table, cols: list[str]):
    def record_at(i: int) -> tuple[Any, str | None, str]:
        values = [table.column(c)[i].as_py() for c in cols]
        return _csv_record(cols, [v.decode("utf-8", "surrogateescape") for v in values])

    return record_at


def _csv_record(cols: list[str], values: list[str]) -> tuple[Any, str | None, str]:
    record = dict(zip(cols, values))
    try:
        raw = json.dumps(record, ensure_ascii=False)
        raw.encode("utf-8")
    except UnicodeEncodeError:
        shown = {k: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for k, v in record.items()}
        return None, "not UTF-8: a field holds bytes that are not UTF-8", json.dumps(shown, ensure_ascii=False)
    return record, None, raw


def _csv_exact(path: Path, compression: str | None, delimiter: str) -> Iterator[Batch]:
    """The csv module, row by row: exact line numbers around ragged rows and blank lines."""
    csv.field_size_limit(sys.maxsize)
    with io.TextIOWrapper(_open(path, compression), encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            return
        cols = [h.strip() for h in header]
        items: list[Item] = []
        end = reader.line_num
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip() and len(cols) > 1):
                continue  # a blank line is not a record
            if len(row) != len(cols):
                raw = delimiter.join(row).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                items.append((start, None, f"wrong number of columns: expected {len(cols)}, got {len(row)}", raw))
            else:
                rec, err, raw = _csv_record(cols, row)
                items.append((start, rec, err, raw))
            if len(items) >= EXACT_CSV_ROWS:
                yield Batch(items=items)
                items = []
        if items:
            yield Batch(items=items)


# ---- Parquet ------------------------------------------------------------------------------------


def _parquet(path: Path) -> Iterator[Batch]:
    pf = pq.ParquetFile(path)
    row = 1
    for rb in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        table = pa.Table.from_batches([rb])
        lines = np.arange(row, row + table.num_rows, dtype=np.int64)
        row += table.num_rows
        if table.num_rows:
            yield Batch(parts=[Part(table, lines, _table_record_at(table))])


def _table_record_at(table: pa.Table):
    def record_at(i: int) -> tuple[Any, str | None, str]:
        record = table.slice(i, 1).to_pylist()[0]
        return record, None, json.dumps(record, ensure_ascii=False, default=str)

    return record_at
