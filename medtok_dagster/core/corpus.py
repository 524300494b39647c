"""Streaming, bounded-memory reading and sampling of general Korean corpora.

Users bring 3–25 GB of c4 Korean, Namu wiki or Korean Wikipedia, mostly as ``datasets`` arrow
shards, sometimes as parquet, jsonl or txt. Nothing here loads a shard whole: arrow is read batch
by batch, parquet by row batches, jsonl and txt line by line, and a batch is cut into slices of at
most a few megabytes before any temporary is made. Memory is the sample plus a few slices, whatever
the corpus or shard size.

The hot path stays in Arrow and NumPy, because a Python loop over every line would be several
times slower than reading the corpus. Documents are cut into lines by zero-copy offsets, Hangul is
found on the UTF-8 bytes, and Algorithm L draws its schedule of replacements ahead of the data, so
only lines that enter the reservoir are copied out of a batch. The sample itself stays in Arrow:
normalisation decodes only the few lines it would change, and the held-out split hashes the UTF-8
bytes where they lie, so neither sampling nor the split makes a Python string per sampled line.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medtok_dagster.core.io import (
    InputError,
    SkipReport,
    atomic_write_bytes,
    iter_text_lines,
    read_json,
    require_nonempty_file,
)
from medtok_dagster.core.text import (
    HANGUL_JAMO,
    HANGUL_SYLLABLES,
    has_hangul,
    mcq_texts,
    normalize,
    split_sentences,
)

ShardFormat = Literal["arrow_stream", "arrow_file", "parquet", "jsonl", "txt"]

SHARD_SUFFIXES = (".arrow", ".parquet", ".jsonl", ".txt")
TEXT_COLUMN_CANDIDATES = (
    "text",
    "content",
    "document",
    "body",
    "article",
    "sentence",
    "raw_text",
    "contents",
)
TXT_COLUMN = "text"
DEFAULT_MAX_LINE_BYTES = 1 << 20

_ARROW_FILE_MAGIC = b"ARROW1"
_DATASET_STATE = "state.json"
_SLICE_BYTES = 4 << 20
_PARQUET_BATCH_ROWS = 2048
_PY_BATCH_DOCS = 8192
_MAX_JSONL_RECORD_BYTES = 256 << 20
_NEWLINE = 0x0A
# UTF-8 lead bytes of U+B000–U+CFFF: every character they start is a Hangul syllable, and almost
# every Korean line contains one, so a one-byte test settles nearly all lines without decoding.
_SURE_HANGUL_LEAD = 0xEB
_SURE_HANGUL_LEADS = 2
# Code point ranges of text.HANGUL_RE, all three bytes long in UTF-8.
_HANGUL_RANGES = [
    (ord(spec[i]), ord(spec[i + 2]))
    for spec in (HANGUL_SYLLABLES, HANGUL_JAMO)
    for i in range(0, len(spec), 3)
]
# Where characters that normalize() may change can lie: the first two planes, the supplementary
# compatibility ideographs and plane 14 (tags, variation selectors). The rest of Unicode is unified
# ideographs, private use or unassigned; the tests check the whole range against this list.
_NORMALIZATION_SCAN = (range(0x20000), range(0x2F800, 0x2FA20), range(0xE0000, 0xE1000))
# Hangul vowel and trailing jamo compose with what precedes them by rule, not by a decomposition table.
_COMPOSING_JAMO = (range(0x1161, 0x1176), range(0x11A8, 0x11C3))
_BATCH_LINES = 1 << 16
_FINISH_BYTES = 4 << 20
_PLAN_BLOCK = 1 << 14
_NEVER = float(2**62)
_COMPACT_FACTOR = 1.5
# Held sample lines live for the whole scan; Arrow's default mimalloc pool was measured to keep about
# twice their size resident (and to be 3x slower) when compacting them, the system pool not.
_HOLD_POOL = pa.system_memory_pool()
_JSONL_PROBLEMS = {
    "malformed_json": "malformed JSON",
    "not_an_object": "expected a JSON object",
    "not_text": "field {column!r} is not a string",
}


@dataclass(frozen=True)
class Shard:
    """One file of a corpus, with its format decided once, at discovery."""

    path: Path
    format: ShardFormat
    bytes: int


@dataclass(frozen=True)
class ShardStats:
    """What one shard contributed: records read, Hangul lines kept, file size, text column used."""

    path: Path
    rows: int
    lines: int
    bytes: int
    column: str


ArrowLines = pa.Array | pa.ChunkedArray


@dataclass
class CorpusSample:
    """A uniform sample of a corpus's Hangul lines, and what reading the corpus found.

    ``lines`` is a ``large_string`` chunked array of normalised lines in arrival order, never null;
    ``lines.to_pylist()`` gives Python strings, :func:`iter_lines` yields them a batch at a time,
    :func:`split_heldout_arrow` and :func:`write_lines_parquet` take it as it is. ``text_column`` is
    the column every shard was read from, or ``None`` when shards differ (the per-shard column is in
    ``shards``).
    """

    lines: pa.ChunkedArray
    lines_seen: int
    shards: list[ShardStats]
    skips: SkipReport
    text_column: str | None


def discover_shards(corpus_dir: Path) -> list[Shard]:
    """Every shard under ``corpus_dir``, nested directories included, in sorted path order.

    A ``datasets.save_to_disk`` directory contributes exactly the files its ``state.json`` lists,
    so ``cache-*.arrow`` files that ``Dataset.map`` leaves beside them are never read twice.
    Hidden files and directories (temporaries of interrupted writers) are ignored.
    """
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise InputError(corpus_dir, None, "corpus directory does not exist or is not a directory")
    files = sorted(_shard_files(corpus_dir), key=lambda p: p.relative_to(corpus_dir).as_posix())
    if not files:
        raise InputError(
            corpus_dir,
            None,
            f"no shards found; supported: {', '.join(SHARD_SUFFIXES)} files "
            "or a datasets.save_to_disk directory (data-*.arrow with state.json), possibly in subdirectories",
        )
    return [Shard(path, _shard_format(path), path.stat().st_size) for path in files]


def _shard_files(directory: Path) -> Iterator[Path]:
    if (directory / _DATASET_STATE).is_file():
        yield from _saved_dataset_files(directory)
        return
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _shard_files(entry)
        elif entry.suffix in SHARD_SUFFIXES:
            yield entry


def _saved_dataset_files(directory: Path) -> list[Path]:
    """The data files a ``save_to_disk`` directory's ``state.json`` lists, each checked to exist."""
    state_path = directory / _DATASET_STATE
    state = read_json(state_path)
    entries = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and "filename" in e for e in entries
    ):
        raise InputError(
            state_path, None, "not a datasets state.json (no _data_files list of filenames)"
        )
    files = [directory / entry["filename"] for entry in entries]
    for path in files:
        if not path.is_file():
            raise InputError(state_path, None, f"lists {path.name}, which does not exist")
    return files


def _shard_format(path: Path) -> ShardFormat:
    """Arrow shards come in both IPC flavours: ``save_to_disk`` writes streams, other tools files."""
    if path.suffix == ".arrow":
        with path.open("rb") as handle:
            return (
                "arrow_file"
                if handle.read(len(_ARROW_FILE_MAGIC)) == _ARROW_FILE_MAGIC
                else "arrow_stream"
            )
    return {".parquet": "parquet", ".jsonl": "jsonl", ".txt": "txt"}[path.suffix]


def detect_text_column(
    schema_names: Sequence[str],
    path: Path,
    configured: str | None = None,
    string_columns: Sequence[str] | None = None,
) -> str:
    """The column holding the documents: the configured one, a well-known name, or the only string column.

    ``string_columns`` (the string-typed subset of ``schema_names``) is given when the types are
    known; without it every column counts as a possible text column.
    """
    names = list(schema_names)
    texts = (
        names if string_columns is None else [name for name in names if name in set(string_columns)]
    )
    available = ", ".join(names) or "(none)"
    if configured is not None:
        if configured not in names:
            raise InputError(
                path, None, f"text column {configured!r} not found; available columns: {available}"
            )
        if configured not in texts:
            raise InputError(
                path,
                None,
                f"text column {configured!r} is not a string column; available columns: {available}",
            )
        return configured
    for candidate in TEXT_COLUMN_CANDIDATES:
        if candidate in texts:
            return candidate
    if len(texts) == 1:
        return texts[0]
    raise InputError(
        path,
        None,
        f"unknown schema: cannot tell which column holds the text; available columns: {available}; "
        "set the text column explicitly",
    )


def shard_text_column(shard: Shard, configured: str | None = None) -> str:
    """:func:`detect_text_column` on a shard's own schema (read from its header, not its data)."""
    names, strings = _shard_schema(shard)
    return detect_text_column(names, shard.path, configured, strings)


def _shard_schema(shard: Shard) -> tuple[list[str], list[str]]:
    if shard.format == "txt":
        return [TXT_COLUMN], [TXT_COLUMN]
    if shard.format == "jsonl":
        return _jsonl_schema(shard.path)
    try:
        schema = pq.read_schema(shard.path) if shard.format == "parquet" else _arrow_schema(shard)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(shard.path, None, f"unreadable {shard.format} shard ({exc})") from exc
    return schema.names, [f.name for f in schema if _is_string_type(f.type)]


def _arrow_schema(shard: Shard) -> pa.Schema:
    with pa.OSFile(str(shard.path)) as source:
        opener = pa.ipc.open_file if shard.format == "arrow_file" else pa.ipc.open_stream
        return opener(source).schema


def _jsonl_schema(path: Path) -> tuple[list[str], list[str]]:
    """Columns of the first JSON object; bad lines before it are reported later, while streaming."""
    for _, text in iter_text_lines(path, True, SkipReport(), _MAX_JSONL_RECORD_BYTES):
        try:
            record = json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            return list(record), [key for key, value in record.items() if isinstance(value, str)]
    raise InputError(path, None, "no JSON object to read the columns from")


def _is_string_type(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


@dataclass(frozen=True)
class _Docs:
    """A batch of documents and where each came from, so errors can name the row or line."""

    texts: pa.Array
    first_row: int
    line_numbers: np.ndarray | None = None

    def location(self, index: int) -> int:
        """Row index (arrow, parquet) or 1-based file line (jsonl, txt) of document ``index``."""
        return (
            int(self.line_numbers[index])
            if self.line_numbers is not None
            else self.first_row + index
        )

    def sliced(self, start: int, stop: int) -> _Docs:
        numbers = self.line_numbers[start:stop] if self.line_numbers is not None else None
        return _Docs(self.texts.slice(start, stop - start), self.first_row + start, numbers)


@dataclass(frozen=True)
class _LineBlock:
    """The lines of a slice of documents, as byte ranges of its data buffer, and the ones to keep.

    Line ``i`` is ``data[bounds[i]:bounds[i + 1]]``, its newline included: nothing is copied.
    """

    data: np.ndarray
    bounds: np.ndarray
    keep: np.ndarray


class _Scratch:
    """Work arrays reused from slice to slice for the per-byte tests.

    A fresh multi-megabyte temporary per test costs its page faults every time, which was measured
    to double the time of the tests. Sizes beyond two slices (one huge document) are not kept.
    """

    def __init__(self) -> None:
        self._codes = np.empty(0, dtype=np.uint8)
        self._flags = np.empty(0, dtype=bool)

    def arrays(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """A byte array and a boolean array of ``size`` items, contents undefined."""
        if size > len(self._codes):
            if size > 2 * _SLICE_BYTES:
                return np.empty(size, dtype=np.uint8), np.empty(size, dtype=bool)
            self._codes, self._flags = np.empty(size, dtype=np.uint8), np.empty(size, dtype=bool)
        return self._codes[:size], self._flags[:size]


@dataclass
class _ShardCounts:
    rows: int = 0
    lines: int = 0


def iter_shard_texts(
    shard: Shard,
    column: str,
    lenient: bool = False,
    skips: SkipReport | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[str]:
    """Yield the shard's lines that contain Hangul, normalised, streaming batch by batch.

    Documents are split on newlines; null documents are skipped silently. A line longer than
    ``max_line_bytes`` is an error (strict) or a counted ``line_too_long`` skip (lenient): one
    megabyte without a newline is a broken export, not prose.
    """
    skips = skips if skips is not None else SkipReport()
    for block in _shard_blocks(shard, column, lenient, skips, max_line_bytes, _ShardCounts()):
        yield from _finished_lines(_copy_lines(block, np.arange(len(block.keep)))).to_pylist()


def _shard_blocks(
    shard: Shard,
    column: str,
    lenient: bool,
    skips: SkipReport,
    max_line_bytes: int,
    counts: _ShardCounts,
) -> Iterator[_LineBlock]:
    if shard.bytes == 0:
        if not lenient:
            raise InputError(shard.path, None, "shard is empty")
        skips.add("empty_shard", shard.path, None)
        return
    scratch = _Scratch()
    for docs in _shard_docs(shard, column, lenient, skips, max_line_bytes):
        counts.rows += len(docs.texts)
        for piece in _bounded_slices(docs):
            block = _line_block(piece, shard.path, lenient, skips, max_line_bytes, scratch)
            counts.lines += len(block.keep)
            yield block


def _shard_docs(
    shard: Shard, column: str, lenient: bool, skips: SkipReport, max_line_bytes: int
) -> Iterator[_Docs]:
    if shard.format == "txt":
        return _located_docs(iter_text_lines(shard.path, lenient, skips, max_line_bytes))
    if shard.format == "jsonl":
        return _located_docs(_jsonl_texts(shard.path, column, lenient, skips))
    reader = _parquet_docs if shard.format == "parquet" else _arrow_docs
    return _guarded(reader(shard, column), shard, lenient, skips)


def _arrow_docs(shard: Shard, column: str) -> Iterator[_Docs]:
    """Record batches read into memory one at a time.

    Plain reads, not a memory map: mapped pages stay resident once touched, so a mapped 5 GB shard
    grows the process by 5 GB. Reading was measured as fast as mapping, and memory stays at a batch.
    """
    with pa.OSFile(str(shard.path)) as source:
        if shard.format == "arrow_file":
            reader = pa.ipc.open_file(source)
            batches: Iterable[pa.RecordBatch] = (
                reader.get_batch(i) for i in range(reader.num_record_batches)
            )
        else:
            batches = pa.ipc.open_stream(source)
        row = 0
        for batch in batches:
            yield _Docs(batch.column(column), row)
            row += batch.num_rows


def _parquet_docs(shard: Shard, column: str) -> Iterator[_Docs]:
    row = 0
    for batch in pq.ParquetFile(shard.path).iter_batches(
        batch_size=_PARQUET_BATCH_ROWS, columns=[column]
    ):
        yield _Docs(batch.column(0), row)
        row += batch.num_rows


def _guarded(
    docs: Iterator[_Docs], shard: Shard, lenient: bool, skips: SkipReport
) -> Iterator[_Docs]:
    """A truncated or corrupt arrow/parquet shard: located error (strict) or the rest skipped (lenient)."""
    row = 0
    try:
        for batch in docs:
            row = batch.first_row + len(batch.texts)
            yield batch
    except (pa.ArrowException, OSError) as exc:
        if not lenient:
            raise InputError(
                shard.path, row, f"unreadable {shard.format} shard after row {row} ({exc})"
            ) from exc
        skips.add("unreadable_shard", shard.path, row)


def _jsonl_texts(
    path: Path, column: str, lenient: bool, skips: SkipReport
) -> Iterator[tuple[int, str]]:
    """``(line, text)`` per JSONL record; a null or missing text reads as empty, like a null arrow value."""
    for line_no, raw in iter_text_lines(path, lenient, skips, _MAX_JSONL_RECORD_BYTES):
        if not raw.strip():
            continue
        text, problem = _jsonl_field(raw, column)
        if problem is None:
            yield line_no, text
        elif not lenient:
            raise InputError(path, line_no, _JSONL_PROBLEMS[problem].format(column=column))
        else:
            skips.add(problem, path, line_no)


def _jsonl_field(raw: str, column: str) -> tuple[str, str | None]:
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        return "", "malformed_json"
    if not isinstance(record, dict):
        return "", "not_an_object"
    value = record.get(column)
    if value is None:
        return "", None
    return (value, None) if isinstance(value, str) else ("", "not_text")


def _located_docs(pairs: Iterable[tuple[int, str]]) -> Iterator[_Docs]:
    """Batch ``(line, text)`` pairs from Python readers into Arrow documents that remember their lines."""
    iterator = iter(pairs)
    while batch := list(islice(iterator, _PY_BATCH_DOCS)):
        numbers, texts = zip(*batch)
        yield _Docs(pa.array(texts, pa.large_string()), 0, np.array(numbers, dtype=np.int64))


def _bounded_slices(docs: _Docs) -> Iterator[_Docs]:
    """Cut a batch into slices of about ``_SLICE_BYTES`` so per-slice temporaries stay small.

    Writers choose batch sizes freely (one batch per file is legal), so memory must not follow them.
    """
    texts = _plain_strings(docs.texts)
    docs = _Docs(texts, docs.first_row, docs.line_numbers)
    offsets = _offsets(texts)
    start = 0
    while start < len(texts):
        limit = int(offsets[start]) + _SLICE_BYTES
        stop = max(start + 1, int(np.searchsorted(offsets, limit, side="right")) - 1)
        yield docs.sliced(start, stop)
        start = stop


def _plain_strings(texts: pa.Array) -> pa.Array:
    """Nulls as empty documents (keeps row numbers) and string views as offset-based strings."""
    if pa.types.is_string_view(texts.type):
        texts = texts.cast(pa.large_string())
    return pc.fill_null(texts, "") if texts.null_count else texts


def _offsets(texts: pa.Array) -> np.ndarray:
    dtype = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    return np.frombuffer(texts.buffers()[1], dtype=dtype)[
        texts.offset : texts.offset + len(texts) + 1
    ]


def _data_buffer(texts: pa.Array) -> pa.Buffer:
    return texts.buffers()[2] or pa.py_buffer(b"")


def _line_block(
    docs: _Docs,
    path: Path,
    lenient: bool,
    skips: SkipReport,
    max_line_bytes: int,
    scratch: _Scratch | None = None,
) -> _LineBlock:
    """Split documents into lines without copying text, and choose the lines that hold Hangul.

    The line bounds are the document offsets plus one boundary after every newline, so a document
    ending in a newline gets an empty last line, exactly as ``str.split("\\n")`` would give.
    """
    offsets = _offsets(docs.texts)
    data = np.frombuffer(_data_buffer(docs.texts), dtype=np.uint8)
    begin, end = int(offsets[0]), int(offsets[-1])
    body = data[begin:end]
    codes, flags = (scratch or _Scratch()).arrays(len(body))
    after_newlines = np.flatnonzero(np.equal(body, _NEWLINE, out=flags)) + (begin + 1)
    bounds = np.sort(np.concatenate((offsets.astype(np.int64), after_newlines)), kind="stable")
    keep = _hangul_mask(bounds - begin, body, codes, flags)
    long_lines, sizes = _too_long_lines(bounds, data, max_line_bytes)
    if long_lines.size:
        documents = np.searchsorted(offsets, bounds[long_lines], side="right") - 1
        locations = [docs.location(document) for document in documents.tolist()]
        _reject_long_lines(locations, sizes.tolist(), path, lenient, skips, max_line_bytes)
        keep[long_lines] = False
    return _LineBlock(data, bounds, np.flatnonzero(keep))


def _hangul_mask(
    starts: np.ndarray, body: np.ndarray, codes: np.ndarray, flags: np.ndarray
) -> np.ndarray:
    """Whether each line ``body[starts[i]:starts[i + 1]]`` contains Hangul, mostly by a one-byte test.

    ``codes`` and ``flags`` are work arrays of ``len(body)`` items.
    """
    lengths = np.diff(starts)
    nonempty = lengths > 0
    found = np.zeros(len(lengths), dtype=bool)
    if nonempty.any():
        sure = np.less(
            np.subtract(body, np.uint8(_SURE_HANGUL_LEAD), out=codes), _SURE_HANGUL_LEADS, out=flags
        )
        found[nonempty] = np.logical_or.reduceat(sure, starts[:-1][nonempty])
    unsure = np.flatnonzero(nonempty & ~found)
    if unsure.size:
        found[unsure] = _contains_hangul(body, starts[unsure], lengths[unsure])
    return found


def _contains_hangul(body: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Exact test for ``text.HANGUL_RE`` on some lines: decode the code point of every three-byte character.

    The lines are few, so their bytes are gathered by index; an Arrow ``take`` was measured slower.
    """
    ends = np.cumsum(lengths)
    picked = body[np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1])]
    leads = np.flatnonzero((picked >= 0xE0) & (picked < 0xF0))
    leads = leads[leads + 2 < len(picked)]
    code = (
        (picked[leads].astype(np.int32) & 0x0F) << 12
        | (picked[leads + 1].astype(np.int32) & 0x3F) << 6
        | (picked[leads + 2].astype(np.int32) & 0x3F)
    )
    hangul = np.zeros(len(code), dtype=bool)
    for low, high in _HANGUL_RANGES:
        hangul |= (code >= low) & (code <= high)
    found = np.zeros(len(lengths), dtype=bool)
    found[np.searchsorted(ends, leads[hangul], side="right")] = True
    return found


def _too_long_lines(
    bounds: np.ndarray, data: np.ndarray, max_line_bytes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and byte sizes of the lines over the limit, not counting their newline."""
    lengths = np.diff(bounds)
    candidates = np.flatnonzero(lengths > max_line_bytes)
    sizes = lengths[candidates] - (data[bounds[candidates + 1] - 1] == _NEWLINE)
    over = sizes > max_line_bytes
    return candidates[over], sizes[over]


def _reject_long_lines(
    locations: list[int],
    sizes: list[int],
    path: Path,
    lenient: bool,
    skips: SkipReport,
    max_line_bytes: int,
) -> None:
    for where, size in zip(locations, sizes):
        if not lenient:
            raise InputError(
                path, where, f"line of {size:,} bytes exceeds the {max_line_bytes:,}-byte limit"
            )
        skips.add("line_too_long", path, where)


def _copy_lines(block: _LineBlock, which: np.ndarray) -> pa.Array:
    """Copy some kept lines of a block (ascending positions in ``block.keep``) into a compact array,
    without their newline.

    The block is seen, without copying, as a string array whose even items are its kept lines and
    whose odd items are what lies between them (a newline, dropped lines), so Arrow's ``take`` of
    even items copies exactly the chosen text. A byte mask over the block was measured 2.5 to 5
    times slower, a sparse choice costing as much as a full one.
    """
    if not len(block.keep):
        return pa.array([], pa.large_string())
    starts, ends = block.bounds[block.keep], block.bounds[block.keep + 1]
    ends -= block.data[ends - 1] == _NEWLINE
    pieces = np.empty(2 * len(starts), dtype=np.int64)
    pieces[0::2] = starts
    pieces[1::2] = ends
    halves = pa.Array.from_buffers(
        pa.large_string(), len(pieces) - 1, [None, pa.py_buffer(pieces), pa.py_buffer(block.data)]
    )
    return pc.take(halves, 2 * np.asarray(which, dtype=np.int64), memory_pool=_HOLD_POOL)


def _finished_lines(lines: pa.Array) -> pa.Array:
    """``normalize`` of every line, in Arrow: only the lines it would change become Python strings.

    One RE2 pass over the UTF-8 data (:func:`_unnormal_pattern`) finds the lines that may not be
    their own normal form, typically a few per cent: doubled or unusual spaces, decomposed or
    combining characters. Those are normalised in Python and put back in place; every other line is
    passed through untouched. Arrow's own ``utf8_normalize`` was measured ten times slower than the
    scan, and its Unicode version need not be Python's.
    """
    return _finished_arrays([lines], _JoinBuffer())[0]


def _finished_arrays(arrays: list[pa.Array], joined: _JoinBuffer) -> list[pa.Array]:
    """:func:`_finished_lines` of several arrays, matched as one.

    Arrow compiles the pattern, and RE2 rebuilds its automaton, for every array matched: a 357 MB
    sample in 588 chunks took 0.92 s against 0.67 s as one array. So the arrays' bytes are copied
    side by side into a reused buffer (no fresh memory, unlike a concatenation) and matched once.
    """
    view, firsts = joined.join(arrays)
    if len(view) == 0:
        return arrays
    suspect = pc.match_substring_regex(view, _unnormal_pattern())
    if not suspect.true_count:
        return arrays
    flags = suspect.to_numpy(zero_copy_only=False)
    return [
        _normalized_where(lines, flags[first : first + len(lines)])
        for lines, first in zip(arrays, firsts)
    ]


def _normalized_where(lines: pa.Array, flags: np.ndarray) -> pa.Array:
    """``lines`` with the flagged ones replaced by their ``normalize``."""
    where = np.flatnonzero(flags)
    if not where.size:
        return lines
    fixed = pa.array([normalize(text) for text in lines.take(where).to_pylist()], lines.type)
    return pc.replace_with_mask(lines, pa.array(flags), fixed, memory_pool=_HOLD_POOL)


class _JoinBuffer:
    """A byte buffer reused to lay ``large_string`` arrays side by side as one array."""

    def __init__(self) -> None:
        self._data = np.empty(0, dtype=np.uint8)

    def join(self, arrays: list[pa.Array]) -> tuple[pa.Array, list[int]]:
        """One array viewing the buffer (valid until the next call), and where each input starts in it."""
        if len(arrays) == 1:
            return arrays[0], [0]
        spans = [
            (_offsets(lines), np.frombuffer(_data_buffer(lines), dtype=np.uint8))
            for lines in arrays
        ]
        total = sum(int(offsets[-1] - offsets[0]) for offsets, _ in spans)
        if total > len(self._data):
            self._data = np.empty(max(total, 2 * len(self._data)), dtype=np.uint8)
        offsets_out = [np.zeros(1, dtype=np.int64)]
        firsts, line, position = [], 0, 0
        for offsets, data in spans:
            size = int(offsets[-1] - offsets[0])
            self._data[position : position + size] = data[offsets[0] : offsets[-1]]
            offsets_out.append(offsets[1:] - offsets[0] + position)
            firsts.append(line)
            line += len(offsets) - 1
            position += size
        bounds = np.concatenate(offsets_out).astype(np.int64, copy=False)
        view = pa.Array.from_buffers(
            pa.large_string(),
            line,
            [None, pa.py_buffer(bounds), pa.py_buffer(self._data[:position])],
        )
        return view, firsts


@functools.cache
def _unnormal_pattern() -> str:
    """An RE2 pattern found in every line that ``normalize`` would change (and in a few it would not).

    ``normalize`` keeps a line that is in NFC and whose whitespace is single inner spaces. The
    Unicode quick check says a text is in NFC when none of its characters has NFC_Quick_Check No or
    Maybe or a non-zero canonical class, so the pattern is the spacing cases plus a class of those
    characters and the other whitespace, taken from Python's own ``unicodedata``.
    """
    ranges: list[list[int]] = []
    for cp in sorted(_unnormal_code_points()):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    members = "".join(
        f"\\x{{{low:x}}}" + (f"-\\x{{{high:x}}}" if high > low else "") for low, high in ranges
    )
    return f"^ | $|  |[{members}]"


def _unnormal_code_points(code_points: Iterable[int] | None = None) -> set[int]:
    """Characters that rule a line out of the quick path: whitespace other than the space, characters
    with a non-zero canonical class or NFC_Quick_Check No (NFC changes them), and NFC_Quick_Check
    Maybe (second of a canonical pair, or a composing jamo: they may join what precedes them)."""
    found = set(chain(*_COMPOSING_JAMO))
    for cp in chain(*_NORMALIZATION_SCAN) if code_points is None else code_points:
        char = chr(cp)
        if (char.isspace() and char != " ") or unicodedata.combining(char):
            found.add(cp)
            continue
        decomposition = unicodedata.decomposition(char)
        if decomposition and not decomposition.startswith("<"):
            parts = decomposition.split()
            if unicodedata.normalize("NFC", char) != char:
                found.add(cp)
            if len(parts) == 2:
                found.add(int(parts[1], 16))
    return found


class _ReplacementPlan:
    """Algorithm L's schedule, ``(item index, reservoir slot)`` for each replacement, drawn ahead.

    Algorithm L's random choices never depend on the items, so the schedule is computed in NumPy
    blocks from ``random.Random(seed)``'s bits. Python does almost no work per replacement, and a
    seed gives the same sample whether items arrive one by one or in Arrow blocks.
    """

    def __init__(self, n: int, seed: int) -> None:
        self._n = n
        self._rng = random.Random(seed)
        self._block = min(_PLAN_BLOCK, max(n, 16))
        self._log_w = math.log(self._uniforms(1)[0]) / n
        self._last = float(n - 1)
        self._indices = np.empty(0, dtype=np.int64)
        self._slots = np.empty(0, dtype=np.int64)
        self._next = 0

    def _uniforms(self, count: int) -> np.ndarray:
        """Floats in (0, 1] with 53 random bits each; 0 is excluded because its log is -inf."""
        words = np.frombuffer(
            self._rng.getrandbits(64 * count).to_bytes(8 * count, "little"), dtype="<u8"
        )
        return ((words >> np.uint64(11)) + 1) * 2.0**-53

    def _slots_below_n(self, count: int) -> np.ndarray:
        """Exactly uniform slots in ``[0, n)``: rejection sampling on ``(n - 1).bit_length()`` bits."""
        mask = np.uint64((1 << (self._n - 1).bit_length()) - 1)
        accepted: list[np.ndarray] = []
        while sum(len(part) for part in accepted) < count:
            words = np.frombuffer(
                self._rng.getrandbits(64 * count).to_bytes(8 * count, "little"), dtype="<u8"
            )
            masked = words & mask
            accepted.append(masked[masked < self._n])
        return np.concatenate(accepted)[:count].astype(np.int64)

    def _draw(self) -> None:
        """The next block: skip lengths from W before each replacement, W shrinking after each."""
        skip_draws = self._uniforms(self._block)
        steps = np.log(self._uniforms(self._block)) / self._n
        log_w = self._log_w + np.concatenate(([0.0], np.cumsum(steps[:-1])))
        with np.errstate(divide="ignore"):
            skips = np.floor(np.log(skip_draws) / np.log1p(-np.exp(log_w))) + 1
        indices = np.minimum(self._last + np.cumsum(skips), _NEVER)
        self._log_w = float(log_w[-1] + steps[-1])
        self._last = float(indices[-1])
        self._indices = indices.astype(np.int64)
        self._slots = self._slots_below_n(self._block)
        self._next = 0

    def until(self, end: int) -> tuple[np.ndarray, np.ndarray]:
        """All not yet returned replacements whose item index is below ``end``."""
        indices, slots = [], []
        while True:
            if self._next == len(self._indices):
                self._draw()
            stop = self._next + int(np.searchsorted(self._indices[self._next :], end))
            indices.append(self._indices[self._next : stop])
            slots.append(self._slots[self._next : stop])
            self._next = stop
            if stop < len(self._indices):
                return np.concatenate(indices), np.concatenate(slots)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        while True:
            if self._next == len(self._indices):
                self._draw()
            pairs = zip(self._indices[self._next :].tolist(), self._slots[self._next :].tolist())
            for pair in pairs:
                self._next += 1
                yield pair


def reservoir_sample(items: Iterable[str], n: int, seed: int) -> tuple[list[str], int]:
    """A uniform sample of ``n`` items (all of them if fewer), in arrival order, and the number of items seen.

    Algorithm L: after the first ``n`` items it jumps straight to the next item that enters the
    reservoir, so the skipped items are only counted (in C, by ``islice``), never inspected.
    """
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    numbered = enumerate(items)
    sample = [item for _, item in islice(numbered, n)]
    if n == 0:
        tail = deque(numbered, maxlen=1)
        return sample, tail[0][0] + 1 if tail else 0
    if len(sample) < n:
        return sample, len(sample)
    arrival = list(range(n))
    seen = n
    for index, slot in _ReplacementPlan(n, seed):
        last = deque(islice(numbered, index - seen + 1), maxlen=1)
        seen = last[0][0] + 1 if last else seen
        if seen != index + 1:
            break
        sample[slot] = last[0][1]
        arrival[slot] = index
    return [sample[slot] for slot in np.argsort(arrival).tolist()], seen


class _BlockReservoir:
    """Algorithm L over Arrow line blocks, holding chosen lines in Arrow until the end.

    Only the lines the plan selects are copied out of a block, and they stay UTF-8 in Arrow rather
    than becoming Python strings, since most are replaced later. When overwritten lines make up a
    third of what is held, the live ones are copied into fresh chunks, so memory stays within
    ``_COMPACT_FACTOR`` times the sample.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seen = 0
        self._plan = _ReplacementPlan(n, seed) if n else None
        self._chunks: list[pa.Array] = []
        self._held = 0
        self._chunk_of = np.full(n, -1, dtype=np.int64)
        self._position_of = np.zeros(n, dtype=np.int64)

    def offer(self, block: _LineBlock) -> None:
        """Count the block's kept lines and copy out the ones that enter the reservoir."""
        start = self.seen
        self.seen += len(block.keep)
        if self._plan is None:
            return
        filled = np.arange(start, min(self.seen, self.n), dtype=np.int64)
        replaced, slots = self._plan.until(self.seen)
        chosen = np.concatenate((filled, replaced))
        if chosen.size:
            self._hold(_copy_lines(block, chosen - start), filled, slots)

    def _hold(self, taken: pa.Array, filled: np.ndarray, replaced_slots: np.ndarray) -> None:
        """Point each slot at its line in ``taken`` (filled slots first, then replacements); for a
        slot chosen twice the later line wins. Filled slots are distinct and come before every
        replacement, so only the replacements, usually few, need checking for repeats."""
        chunk = len(self._chunks)
        self._chunk_of[filled] = chunk
        self._position_of[filled] = np.arange(len(filled))
        if len(replaced_slots):
            reversed_first = np.unique(replaced_slots[::-1], return_index=True)[1]
            last = len(replaced_slots) - 1 - reversed_first
            self._chunk_of[replaced_slots[last]] = chunk
            self._position_of[replaced_slots[last]] = len(filled) + last
        self._chunks.append(taken)
        self._held += len(taken)
        if self._held > _COMPACT_FACTOR * self.n:
            self._compact()

    def _live_groups(self) -> list[np.ndarray]:
        """Slots of live lines grouped by chunk, in arrival order (chunk, then position in it).

        Arrival order is the order of held lines, so each live slot is written at its line's place
        among all held lines and the empty places are dropped: linear, where a sort was not.
        """
        firsts = np.zeros(len(self._chunks) + 1, dtype=np.int64)
        np.cumsum([len(chunk) for chunk in self._chunks], out=firsts[1:])
        live = np.flatnonzero(self._chunk_of >= 0)
        places = np.full(firsts[-1], -1, dtype=np.int64)
        places[firsts[self._chunk_of[live]] + self._position_of[live]] = live
        order = places[places >= 0]
        return (
            np.split(order, np.flatnonzero(np.diff(self._chunk_of[order])) + 1)
            if order.size
            else []
        )

    def _compact(self) -> None:
        """Copy the live lines into new chunks, dropping each old chunk as soon as it is copied.

        Copying chunk by chunk keeps the peak at what is held plus one chunk; building all new
        chunks before dropping the old ones was measured to add the whole sample again.
        """
        groups = self._live_groups()
        old = dict(enumerate(self._chunks))
        self._chunks = []
        for group in groups:
            chunk = old.pop(int(self._chunk_of[group[0]]))
            self._chunks.append(pc.take(chunk, self._position_of[group], memory_pool=_HOLD_POOL))
            self._chunk_of[group] = len(self._chunks) - 1
            self._position_of[group] = np.arange(len(group))
        self._held = sum(len(chunk) for chunk in self._chunks)

    def lines(self) -> pa.ChunkedArray:
        """The sample in arrival order, normalised, still in Arrow: one chunk per group of live lines.

        Each held chunk is dropped as soon as its live lines are taken out, so the peak stays at
        what is held plus one chunk. The chunks are not concatenated into a new array: that copy
        into fresh memory was measured to cost more than it saves; they are only matched together
        (see :func:`_finished_arrays`), ``_FINISH_BYTES`` at a time.
        """
        groups = self._live_groups()
        held = dict(enumerate(self._chunks))
        self._chunks = []
        result: list[pa.Array] = []
        pending: list[pa.Array] = []
        pending_bytes = 0
        joined = _JoinBuffer()
        for number, group in enumerate(groups, start=1):
            chunk = held.pop(int(self._chunk_of[group[0]]))
            if len(group) < len(chunk):
                chunk = pc.take(chunk, self._position_of[group], memory_pool=_HOLD_POOL)
            pending.append(chunk)
            pending_bytes += chunk.nbytes
            if pending_bytes >= _FINISH_BYTES or number == len(groups):
                result.extend(_finished_arrays(pending, joined))
                pending, pending_bytes = [], 0
        return pa.chunked_array(result, pa.large_string())


def sample_corpus(
    corpus_dir: Path,
    n_lines: int,
    seed: int = 0,
    text_column: str | None = None,
    lenient: bool = False,
    progress: Callable[[int, int], None] | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> CorpusSample:
    """A uniform sample of ``n_lines`` Hangul lines from every shard under ``corpus_dir``, streaming.

    Equal to :func:`reservoir_sample` over the shards' :func:`iter_shard_texts` in discovery order.
    Text columns are resolved for every shard before any is read, so a schema problem in the last
    shard fails in seconds rather than after an hour of reading; schema problems fail even in
    lenient mode, because a wrong column would silently drop a whole corpus. ``progress`` receives
    ``(shards_done, lines_seen)`` after each shard.
    """
    if n_lines < 0:
        raise ValueError(f"n_lines must be >= 0, got {n_lines}")
    shards = discover_shards(Path(corpus_dir))
    columns = [shard_text_column(shard, text_column) for shard in shards]
    skips = SkipReport()
    reservoir = _BlockReservoir(n_lines, seed)
    stats: list[ShardStats] = []
    for done, (shard, column) in enumerate(zip(shards, columns), start=1):
        counts = _ShardCounts()
        for block in _shard_blocks(shard, column, lenient, skips, max_line_bytes, counts):
            reservoir.offer(block)
        stats.append(ShardStats(shard.path, counts.rows, counts.lines, shard.bytes, column))
        if progress is not None:
            progress(done, reservoir.seen)
    common_column = columns[0] if len(set(columns)) == 1 else None
    return CorpusSample(reservoir.lines(), reservoir.seen, stats, skips, common_column)


def write_lines_parquet(
    lines: Sequence[str] | ArrowLines,
    path: Path,
    extra_columns: Mapping[str, Sequence[Any]] | None = None,
) -> Path:
    """Write lines as a zstd parquet file with a ``text`` column (plus aligned extra columns), atomically.

    ``lines`` is a sequence of Python strings or an Arrow string array (chunked or not, e.g.
    :attr:`CorpusSample.lines`), written without conversion.
    """
    columns: dict[str, Any] = {"text": _large_strings(lines)}
    for name, values in (extra_columns or {}).items():
        if name in columns:
            raise ValueError(f"extra column {name!r} clashes with the text column")
        if len(values) != len(lines):
            raise ValueError(
                f"extra column {name!r} has {len(values)} values for {len(lines)} lines"
            )
        columns[name] = values
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink, compression="zstd")
    return atomic_write_bytes(Path(path), sink.getvalue().to_pybytes())


def _large_strings(lines: Sequence[str] | ArrowLines) -> ArrowLines:
    if isinstance(lines, (pa.Array, pa.ChunkedArray)):
        if not _is_string_type(lines.type):
            raise TypeError(f"expected an Arrow string array, got {lines.type}")
        return lines if pa.types.is_large_string(lines.type) else lines.cast(pa.large_string())
    return pa.array(lines, pa.large_string())


def iter_lines(lines: Sequence[str] | ArrowLines, batch_lines: int = _BATCH_LINES) -> Iterator[str]:
    """The lines as Python strings, converted ``batch_lines`` at a time, for consumers that need ``str``."""
    if not isinstance(lines, (pa.Array, pa.ChunkedArray)):
        yield from lines
        return
    for start in range(0, len(lines), batch_lines):
        yield from lines.slice(start, batch_lines).to_pylist()


def line_chars(lines: Sequence[str] | ArrowLines) -> int:
    """Characters (code points) in all lines together, counted in Arrow for Arrow arrays."""
    if isinstance(lines, (pa.Array, pa.ChunkedArray)):
        return int(pc.sum(pc.utf8_length(lines)).as_py() or 0)
    return sum(len(line) for line in lines)


def heldout_buckets(lines: ArrowLines) -> np.ndarray:
    """:func:`split_heldout`'s bucket (0–999) of every line of an Arrow string array, from its UTF-8 bytes.

    The hash is blake2b, as in :func:`split_heldout`, so the buckets agree line for line. Neither
    NumPy nor Arrow has a vectorised blake2b, so hashlib is called once per line, by ``map`` in C,
    on zero-copy slices of the data buffer; no Python string is made. The bucket arithmetic is
    vectorised.
    """
    chunks = lines.chunks if isinstance(lines, pa.ChunkedArray) else [lines]
    digests: list[bytes] = []
    hasher = functools.partial(hashlib.blake2b, digest_size=4)
    for chunk in chunks:
        if not _is_string_type(chunk.type):
            raise TypeError(f"expected an Arrow string array, got {chunk.type}")
        if chunk.null_count:
            raise ValueError("lines must not contain nulls")
        if pa.types.is_string_view(chunk.type):
            chunk = chunk.cast(pa.large_string())
        data = memoryview(_data_buffer(chunk))
        offsets = _offsets(chunk)
        for start in range(0, len(chunk), _BATCH_LINES):
            bounds = offsets[start : start + _BATCH_LINES + 1].tolist()
            pieces = map(data.__getitem__, map(slice, bounds[:-1], bounds[1:]))
            digests.append(b"".join(map(hashlib.blake2b.digest, map(hasher, pieces))))
    return (np.frombuffer(b"".join(digests), dtype=">u4") % 1000).astype(np.int16)


def split_heldout_arrow(lines: ArrowLines, permille: int) -> tuple[ArrowLines, ArrowLines]:
    """:func:`split_heldout` for an Arrow string array: the same ``(train, held-out)`` split, in Arrow.

    Each part keeps the input's order and kind (array or chunked array) and its type, except that
    string views come back as ``large_string`` (Arrow cannot filter views); see :func:`heldout_buckets`.
    """
    if pa.types.is_string_view(lines.type):
        lines = lines.cast(pa.large_string())
    heldout = heldout_buckets(lines) < permille
    return pc.filter(lines, ~heldout), pc.filter(lines, heldout)


def read_lines_parquet(path: Path) -> list[str]:
    """The ``text`` column of a file written by :func:`write_lines_parquet`."""
    path = Path(path)
    require_nonempty_file(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(path, None, f"not a readable parquet file ({exc})") from exc
    if "text" not in parquet.schema_arrow.names:
        raise InputError(
            path, None, f"no 'text' column; columns: {', '.join(parquet.schema_arrow.names)}"
        )
    return parquet.read(columns=["text"]).column("text").to_pylist()


def build_medical_corpus(
    records: Sequence[Mapping[str, Any]], dictionary_entries: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """``(source, sentence)`` rows of Korean medical text: train questions, options, dictionary definitions.

    Sentences are NFC-normalised and deduplicated (first occurrence wins); rows without Hangul are
    dropped because they cannot teach Korean pieces. Only the train split is ever passed in.
    """
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []

    def add(source: str, text: str) -> None:
        for sentence in split_sentences(text):
            if sentence not in seen and has_hangul(sentence):
                seen.add(sentence)
                rows.append((source, sentence))

    for record in records:
        for field_name, text in mcq_texts(record):
            add("mcq_question" if field_name == "question" else "mcq_option", text)
    for term, definition in dictionary_entries:
        add("dictionary_definition", definition)
        add("dictionary_term", term)
    return rows


def split_heldout(lines: Sequence[str], permille: int) -> tuple[list[str], list[str]]:
    """Split lines into (train, held-out) by a stable hash, so the split never depends on order or seed."""
    train, heldout = [], []
    for line in lines:
        bucket = (
            int.from_bytes(hashlib.blake2b(line.encode("utf-8"), digest_size=4).digest(), "big")
            % 1000
        )
        (heldout if bucket < permille else train).append(line)
    return train, heldout
