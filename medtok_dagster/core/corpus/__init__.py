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

Modules: ``shards`` (discovery, formats, text columns, document readers), ``lines`` (the Arrow
line kernels), ``reservoir`` (the seeded sample), ``line_io`` (parquet line files and the held-out
split) and ``medical`` (the medical corpus builder). The names below are the public interface.
"""

from medtok_dagster.core.corpus.line_io import (
    ArrowLines,
    heldout_buckets,
    iter_lines,
    line_chars,
    read_lines_parquet,
    split_heldout,
    split_heldout_arrow,
    write_lines_parquet,
)
from medtok_dagster.core.corpus.lines import iter_shard_texts
from medtok_dagster.core.corpus.medical import build_medical_corpus
from medtok_dagster.core.corpus.reservoir import CorpusSample, reservoir_sample, sample_corpus
from medtok_dagster.core.corpus.shards import (
    DEFAULT_MAX_LINE_BYTES,
    SHARD_SUFFIXES,
    TEXT_COLUMN_CANDIDATES,
    TXT_COLUMN,
    Shard,
    ShardFormat,
    ShardStats,
    detect_text_column,
    discover_shards,
    shard_text_column,
)

__all__ = [
    "ArrowLines",
    "CorpusSample",
    "DEFAULT_MAX_LINE_BYTES",
    "SHARD_SUFFIXES",
    "Shard",
    "ShardFormat",
    "ShardStats",
    "TEXT_COLUMN_CANDIDATES",
    "TXT_COLUMN",
    "build_medical_corpus",
    "detect_text_column",
    "discover_shards",
    "heldout_buckets",
    "iter_lines",
    "iter_shard_texts",
    "line_chars",
    "read_lines_parquet",
    "reservoir_sample",
    "sample_corpus",
    "shard_text_column",
    "split_heldout",
    "split_heldout_arrow",
    "write_lines_parquet",
]
