"""Line arrays on disk and the held-out split: parquet line files, batched iteration, the stable hash split."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medtok_dagster.core.corpus.lines import _BATCH_LINES, _data_buffer, _offsets
from medtok_dagster.core.corpus.shards import _is_string_type
from medtok_dagster.core.io import (
    InputError,
    atomic_write_bytes,
    require_nonempty_file,
)

ArrowLines = pa.Array | pa.ChunkedArray


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
