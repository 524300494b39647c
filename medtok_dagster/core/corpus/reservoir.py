"""Uniform seeded sampling of a corpus's Hangul lines (Algorithm L, schedule drawn ahead, sample held in Arrow)."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medtok_dagster.core.corpus.lines import (
    _HOLD_POOL,
    _copy_lines,
    _finished_arrays,
    _JoinBuffer,
    _LineBlock,
    _shard_blocks,
    _ShardCounts,
)
from medtok_dagster.core.corpus.shards import (
    DEFAULT_MAX_LINE_BYTES,
    ShardStats,
    discover_shards,
    shard_text_column,
)
from medtok_dagster.core.io import SkipReport

_FINISH_BYTES = 4 << 20
_PLAN_BLOCK = 1 << 14
_NEVER = float(2**62)
_COMPACT_FACTOR = 1.5


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
