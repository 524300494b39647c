"""Arrow line kernels: documents cut into Hangul lines by zero-copy offsets, normalised without a Python string per line."""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medtok_dagster.core.corpus.shards import DEFAULT_MAX_LINE_BYTES, Shard, _Docs, _shard_docs
from medtok_dagster.core.io import (
    InputError,
    SkipReport,
)
from medtok_dagster.core.text import (
    HANGUL_JAMO,
    HANGUL_SYLLABLES,
    normalize,
)

_SLICE_BYTES = 4 << 20
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


# Held sample lines live for the whole scan; Arrow's default mimalloc pool was measured to keep about
# twice their size resident (and to be 3x slower) when compacting them, the system pool not.
_HOLD_POOL = pa.system_memory_pool()


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
