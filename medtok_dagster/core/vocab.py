"""Candidate vocabularies: Hangul n-gram statistics, a Gemma-compatible BPE, and the tier selections.

Gemma 3 normalises " " to ``▁`` and does no other pre-tokenisation, so a word-initial piece is
``▁당뇨병`` while the same letters inside a word are ``당뇨병``. The prototype only ever learned bare
forms, so every word-initial match still paid for a separate ``▁``. Everything here therefore keeps
track of word starts: n-grams count how often they open a word, and the BPE is trained on text cut
exactly where Gemma would see a ``▁``.

N-gram counting is the hot path (corpus samples of hundreds of megabytes), so it runs as DuckDB
SQL over Arrow batches; :func:`count_hangul_ngrams_python` is the readable definition it is tested
and benchmarked against.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from medtok_dagster.core.io import InputError, atomic_write_text, require_nonempty_file
from medtok_dagster.core.text import (
    HANGUL_SYLLABLES,
    WORD_BOUNDARY,
    hangul_runs,
    is_pure_hangul,
    normalize,
)

NGRAM_COLUMNS = ("ngram", "n", "count", "doc_freq", "word_initial_count")
BPE_COLUMNS = ("token", "id", "word_initial", "surface", "length", "is_hangul", "frequency")
SELECTION_COLUMNS = ("token", "source", "priority", "frequency")
TEXT_COLUMN = "text"

# str.isspace() is false above U+3000, so these are all the separators that normalize() (str.split)
# turns into the single space Gemma sees as ▁.
_WHITESPACE_CODES = ", ".join(str(cp) for cp in range(0x3001) if chr(cp).isspace())
_FIRST_SYLLABLE, _LAST_SYLLABLE = ord(HANGUL_SYLLABLES[0]), ord(HANGUL_SYLLABLES[-1])
# Conjoining jamo (not the compatibility jamo of text.HANGUL_JAMO): the only characters NFC composes
# into Hangul syllables.
_CONJOINING_JAMO = "\u1100-\u11ff\ua960-\ua97f\ud7b0-\ud7ff"
# Rows per Arrow batch handed to DuckDB: much smaller batches cost per-batch overhead, one batch for
# a whole sample (corpus samples are a single parquet row group) would leave threads idle.
_BATCH_ROWS = 65536
_ENCODE_BATCH_LINES = 10_000
# Above this many n-gram ids in one line, a hash (list_distinct) beats the quadratic first-position scan.
_SCAN_DEDUP_MAX_IDS = 1024

NgramSource = str | os.PathLike[str] | Sequence[os.PathLike[str]] | Iterable[str]


def _check_ngram_range(min_n: int, max_n: int, min_count: int) -> None:
    """Reject parameters that would silently return nothing, the same way in both implementations."""
    if not 1 <= min_n <= max_n:
        raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")


def _ngram_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One schema for both implementations, so the oracle comparison is a plain frame equality."""
    return frame.astype(
        {
            "ngram": object,
            "n": "int64",
            "count": "int64",
            "doc_freq": "int64",
            "word_initial_count": "int64",
        }
    )[list(NGRAM_COLUMNS)]


def count_hangul_ngrams_python(
    lines: Iterable[str], min_n: int = 2, max_n: int = 5, min_count: int = 1
) -> pd.DataFrame:
    """Hangul n-gram statistics with a plain ``Counter`` loop: the correctness oracle and benchmark baseline.

    This is the definition :func:`count_hangul_ngrams` must reproduce exactly, written for reading
    rather than speed; the tests compare the two and ``bench/bench_ngrams.py`` times them. Each line
    goes through :func:`normalize`; n-grams are cut from maximal Hangul-syllable runs only; a run is
    word-initial when it opens a space-separated word, and then its first n-gram of every length
    counts towards ``word_initial_count``.
    """
    _check_ngram_range(min_n, max_n, min_count)
    counts: Counter[str] = Counter()
    docs: Counter[str] = Counter()
    initial: Counter[str] = Counter()
    for line in lines:
        seen: set[str] = set()
        for word in normalize(line).split(" "):
            for position, run in enumerate(hangul_runs(word)):
                opens_word = position == 0 and word.startswith(run)
                for n in range(min_n, min(max_n, len(run)) + 1):
                    grams = [run[start : start + n] for start in range(len(run) - n + 1)]
                    counts.update(grams)
                    seen.update(grams)
                    if opens_word:
                        initial[grams[0]] += 1
        docs.update(seen)
    rows = [
        (gram, len(gram), count, docs[gram], initial[gram])
        for gram, count in counts.items()
        if count >= min_count
    ]
    rows.sort(key=lambda row: (-row[2], row[0]))
    return _ngram_frame(pd.DataFrame(rows, columns=list(NGRAM_COLUMNS)))


def _is_parquet_source(source: NgramSource) -> bool:
    """Paths are parquet files; a bare ``str`` is a path too, since iterating it would yield characters."""
    if isinstance(source, (str, os.PathLike)):
        return True
    return (
        isinstance(source, Sequence)
        and len(source) > 0
        and all(isinstance(item, os.PathLike) for item in source)
    )


def _parquet_batches(paths: Sequence[Path]) -> Iterator[pa.RecordBatch]:
    """The ``text`` column of each file in small batches, numbered with a ``line_id`` unique across files."""
    first_id = 0
    for path in paths:
        require_nonempty_file(path)
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(path, None, f"not a readable parquet file ({exc})") from exc
        if TEXT_COLUMN not in parquet.schema_arrow.names:
            raise InputError(
                path,
                None,
                f"no {TEXT_COLUMN!r} column; columns: {', '.join(parquet.schema_arrow.names)}",
            )
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=[TEXT_COLUMN]):
            yield _numbered_batch(batch.column(0), first_id)
            first_id += batch.num_rows


def _numbered_batch(texts: pa.Array, first_id: int) -> pa.RecordBatch:
    """``(line_id, text)``: document frequency is per line, so every line needs an id of its own."""
    ids = pa.array(np.arange(first_id, first_id + len(texts), dtype=np.int64))
    return pa.record_batch([ids, texts.cast(pa.large_string())], names=["line_id", TEXT_COLUMN])


def _lines_table(source: NgramSource) -> pa.Table:
    """The corpus as an Arrow table of ``(line_id, text)`` batches, from parquet path(s) or in-memory lines."""
    schema = pa.schema([("line_id", pa.int64()), (TEXT_COLUMN, pa.large_string())])
    if _is_parquet_source(source):
        paths = (
            [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
        )
        return pa.Table.from_batches(list(_parquet_batches(paths)), schema=schema)
    texts = pa.array(list(source), pa.large_string())
    batches = [
        _numbered_batch(texts.slice(start, _BATCH_ROWS), start)
        for start in range(0, len(texts), _BATCH_ROWS)
    ]
    return pa.Table.from_batches(batches, schema=schema)


@contextlib.contextmanager
def _duckdb_session(threads: int) -> Iterator[duckdb.DuckDBPyConnection]:
    """A private in-memory DuckDB whose spill files go to a temporary directory, never the project's database."""
    with tempfile.TemporaryDirectory(prefix="medtok-ngrams-") as spill:
        con = duckdb.connect(":memory:", config={"threads": threads, "temp_directory": spill})
        try:
            con.execute("SET enable_progress_bar = false")
            con.execute("SET preserve_insertion_order = false")
            yield con
        finally:
            con.close()


def _create_run_matches(con: duckdb.DuckDBPyConnection, min_n: int) -> None:
    """``run_matches``: one row per Hangul run of every line, matched together with the character before it.

    Keeping that character tells, later and once per distinct match, whether the run opens a
    word, so the per-occurrence work is the regex alone. Runs shorter than ``min_n`` hold no
    n-gram and are not extracted. NFC is applied only to lines with conjoining jamo, the only
    characters NFC turns into, or merges with, a Hangul syllable; on the other lines it could
    change nothing that decides a run or whether it opens a word.
    """
    text = f"CASE WHEN regexp_matches(text, '[{_CONJOINING_JAMO}]') THEN nfc_normalize(text) ELSE text END"
    pattern = f"[^{HANGUL_SYLLABLES}]?[{HANGUL_SYLLABLES}]{{{min_n},}}"
    con.execute(
        f"CREATE TEMP TABLE run_matches AS SELECT line_id, unnest(regexp_extract_all({text}, '{pattern}')) AS match FROM corpus_lines"
    )


def _create_runs(con: duckdb.DuckDBPyConnection) -> None:
    """``matches`` (distinct match → run, opens a word?) and ``runs`` (distinct runs with totals).

    A match starts with a syllable only at the start of a line (the regex takes the character
    before a run whenever there is one), so it opens a word when it starts with a syllable or
    with whitespace, and anything else means mid-word. Korean words repeat heavily, so n-grams
    are cut from the distinct runs, never from lines.
    """
    con.execute(f"""
        CREATE TEMP TABLE matches AS
        SELECT match, CASE WHEN lead_is_syllable THEN match ELSE substring(match, 2) END AS run,
               lead_is_syllable OR lead IN ({_WHITESPACE_CODES}) AS opens_word, occurrences
        FROM (SELECT match, unicode(match) AS lead, lead BETWEEN {_FIRST_SYLLABLE} AND {_LAST_SYLLABLE} AS lead_is_syllable,
                     count(*) AS occurrences
              FROM run_matches GROUP BY match)
    """)
    con.execute("""
        CREATE TEMP TABLE runs AS
        SELECT run, length(run) AS run_length, sum(occurrences) AS occurrences,
               coalesce(sum(occurrences) FILTER (WHERE opens_word), 0) AS word_initial
        FROM matches GROUP BY run
    """)


def _create_run_ngrams(con: duckdb.DuckDBPyConnection, min_n: int, max_n: int) -> None:
    """``run_ngrams``: every (start, length) n-gram of every distinct run, carrying the run's totals."""
    con.execute(f"""
        CREATE TEMP TABLE run_ngrams AS
        SELECT run, occurrences, word_initial, start, n, substring(run, start, n) AS ngram
        FROM (SELECT *, unnest(range(1, run_length - {min_n} + 2)) AS start FROM runs)
        CROSS JOIN (SELECT unnest(range({min_n}, {max_n} + 1)) AS n) AS lengths
        WHERE start + n - 1 <= run_length
    """)


def _create_ngrams(con: duckdb.DuckDBPyConnection, min_count: int) -> None:
    """``ngrams``: count and word-initial count per n-gram (those below ``min_count`` go before any per-line work)."""
    con.execute(f"""
        CREATE TEMP TABLE ngrams AS
        SELECT row_number() OVER ()::INTEGER AS ngram_id, ngram, any_value(n) AS n, sum(occurrences)::BIGINT AS count,
               coalesce(sum(word_initial) FILTER (WHERE start = 1), 0)::BIGINT AS word_initial_count
        FROM run_ngrams GROUP BY ngram HAVING sum(occurrences) >= {min_count}
    """)


def _create_line_ngram_ids(con: duckdb.DuckDBPyConnection) -> None:
    """``line_ngram_ids``: per line, the integer ids of the n-grams of all its runs, duplicates included.

    Document frequency needs each line's n-gram set. Building it from per-match id lists keeps
    the per-line work on integers, and substrings are only ever cut from the distinct runs.
    """
    con.execute("""
        CREATE TEMP TABLE match_ngram_ids AS
        SELECT match, ids
        FROM matches
        JOIN (SELECT run, list(DISTINCT ngram_id) AS ids FROM run_ngrams JOIN ngrams USING (ngram) GROUP BY run) USING (run)
    """)
    con.execute("""
        CREATE TEMP TABLE line_ngram_ids AS
        SELECT flatten(list(ids)) AS ids FROM run_matches JOIN match_ngram_ids USING (match) GROUP BY line_id
    """)


def _create_doc_freq(con: duckdb.DuckDBPyConnection) -> None:
    """``doc_freq``: lines containing each n-gram, counting an id only where it first appears in its line's list.

    The first-appearance test (``list_position(ids, id) = index``) scans the line's short list and
    needs no hash table, which makes it several times cheaper than ``DISTINCT (line_id, ngram_id)``
    over tens of millions of pairs. It is quadratic in the list length, so the rare lines with
    longer lists are deduplicated with ``list_distinct`` instead.
    """
    con.execute(f"""
        CREATE TEMP TABLE doc_freq AS
        SELECT ngram_id, count(*) AS doc_freq
        FROM (
            SELECT ngram_id
            FROM (SELECT ids, unnest(ids) AS ngram_id, generate_subscripts(ids, 1) AS position
                  FROM line_ngram_ids WHERE len(ids) <= {_SCAN_DEDUP_MAX_IDS})
            WHERE list_position(ids, ngram_id) = position
            UNION ALL
            SELECT unnest(list_distinct(ids)) AS ngram_id FROM line_ngram_ids WHERE len(ids) > {_SCAN_DEDUP_MAX_IDS}
        )
        GROUP BY ngram_id
    """)


def count_hangul_ngrams(
    source: NgramSource,
    min_n: int = 2,
    max_n: int = 5,
    min_count: int = 1,
    threads: int | None = None,
) -> pd.DataFrame:
    """Count Hangul n-grams with DuckDB: exactly the result of :func:`count_hangul_ngrams_python`, much faster.

    ``source`` is a parquet file with a ``text`` column (a ``str`` or ``Path``), a sequence of such
    ``Path``s, or an iterable of lines. Returns ``ngram, n, count, doc_freq, word_initial_count``
    for n-grams with ``count >= min_count``, ordered by count (descending) then n-gram: ``count``
    is every occurrence, ``doc_freq`` the number of lines containing it, ``word_initial_count`` the
    occurrences at the start of a run that opens a word (start of line or after whitespace), i.e.
    the ones Gemma sees as ``▁``-prefixed. N-grams never span a non-Hangul character.

    Parquet is read by pyarrow in batches (corpus samples are a single row group, which DuckDB
    would scan on one thread) and handed to a private in-memory DuckDB with ``threads`` workers
    (default: every core); the project's database is never touched. The work per line is one regex
    pass and integer list operations; n-grams are cut from the distinct runs only.
    ``bench/bench_ngrams.py`` measures the speed-up against the oracle: 14.5× on 100 MB with both
    cores of a 2-core machine free, about 8× when another process holds one of them.
    """
    _check_ngram_range(min_n, max_n, min_count)
    lines = _lines_table(source)
    with _duckdb_session(threads or os.cpu_count() or 1) as con:
        con.register("corpus_lines", lines)
        _create_run_matches(con, min_n)
        _create_runs(con)
        _create_run_ngrams(con, min_n, max_n)
        _create_ngrams(con, min_count)
        _create_line_ngram_ids(con)
        _create_doc_freq(con)
        frame = con.sql("""
            SELECT ngram, n, count, doc_freq, word_initial_count
            FROM ngrams JOIN doc_freq USING (ngram_id)
            ORDER BY count DESC, ngram
        """).df()
    return _ngram_frame(frame)


def train_bpe(
    lines: Iterable[str],
    vocab_size: int,
    min_frequency: int,
    limit_alphabet: int | None = None,
    special_tokens: Sequence[str] = (),
) -> Tokenizer:
    """Train a BPE that sees text the way Gemma 3 does, so its pieces can be added to Gemma as they are.

    The normaliser is Gemma's (NFC, then " " → ``▁``) and the pre-tokeniser only cuts before each
    ``▁``, which stays on the word it opens: ``▁당뇨병`` is learnable at word starts and ``병`` or
    ``뇨병`` inside words. No ``▁`` is prepended to a line, as Gemma prepends none. The alphabet is
    what the lines contain plus ``▁`` (seeding all 11,172 syllables would spend the vocabulary on
    letters); ``limit_alphabet`` drops the rarest characters of noisy corpora. The decoder turns
    ``▁`` back into spaces, so ``decode(encode(x)) == x`` for text made of alphabet characters.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(" ", WORD_BOUNDARY)]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=WORD_BOUNDARY, prepend_scheme="never", split=True
    )
    tokenizer.decoder = decoders.Metaspace(
        replacement=WORD_BOUNDARY, prepend_scheme="never", split=True
    )
    options: dict[str, object] = (
        {"limit_alphabet": limit_alphabet} if limit_alphabet is not None else {}
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=list(special_tokens),
        initial_alphabet=[WORD_BOUNDARY],
        **options,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return tokenizer


def _piece_frequencies(tokenizer: Tokenizer, lines: Sequence[str], size: int) -> np.ndarray:
    """How often each id occurs when ``lines`` are encoded, in bounded batches to cap memory."""
    totals = np.zeros(size, dtype=np.int64)
    for start in range(0, len(lines), _ENCODE_BATCH_LINES):
        encodings = tokenizer.encode_batch(
            list(lines[start : start + _ENCODE_BATCH_LINES]), add_special_tokens=False
        )
        ids = [token_id for encoding in encodings for token_id in encoding.ids]
        totals += np.bincount(np.asarray(ids, dtype=np.int64), minlength=size)[:size]
    return totals


def bpe_vocab_frame(
    tokenizer: Tokenizer, lines_sample_for_freq: Sequence[str] | None
) -> pd.DataFrame:
    """The BPE vocabulary as a table: ``token, id, word_initial, surface, length, is_hangul, frequency``.

    ``surface`` is the token without its leading ``▁``; single characters (the alphabet) and special
    tokens stay in the table, recognisable by ``length <= 1``. ``frequency`` counts the piece when
    ``lines_sample_for_freq`` is encoded with this BPE, which is how often it would actually be used
    (merge counts during training overstate pieces that later merge further); it is 0 without lines.
    """
    vocab = sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
    size = max((token_id for _, token_id in vocab), default=-1) + 1
    frequencies = (
        _piece_frequencies(tokenizer, lines_sample_for_freq, size)
        if lines_sample_for_freq
        else np.zeros(size, dtype=np.int64)
    )
    tokens = [token for token, _ in vocab]
    surfaces = [token.removeprefix(WORD_BOUNDARY) for token in tokens]
    return pd.DataFrame(
        {
            "token": pd.Series(tokens, dtype=object),
            "id": pd.Series([token_id for _, token_id in vocab], dtype="int64"),
            "word_initial": pd.Series(
                [token.startswith(WORD_BOUNDARY) for token in tokens], dtype=bool
            ),
            "surface": pd.Series(surfaces, dtype=object),
            "length": pd.Series([len(surface) for surface in surfaces], dtype="int64"),
            "is_hangul": pd.Series([is_pure_hangul(surface) for surface in surfaces], dtype=bool),
            "frequency": pd.Series(frequencies[[token_id for _, token_id in vocab]], dtype="int64"),
        },
        columns=list(BPE_COLUMNS),
    )


def save_bpe(tokenizer: Tokenizer, path: Path) -> Path:
    """Write the tokenizer JSON atomically, so a killed run never leaves a truncated file behind."""
    return atomic_write_text(Path(path), tokenizer.to_str())


def load_bpe(path: Path) -> Tokenizer:
    """Read a tokenizer written by :func:`save_bpe`, reporting a broken file as a located :class:`InputError`."""
    path = Path(path)
    require_nonempty_file(path)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
        raise InputError(path, None, f"not a tokenizers JSON file ({exc})") from exc


def _bpe_candidates(bpe_vocab: pd.DataFrame, min_freq: int) -> pd.DataFrame:
    """BPE surfaces worth a token: pure Hangul, 2+ syllables, used ``min_freq``+ times (``▁``/bare forms summed)."""
    pieces = bpe_vocab[bpe_vocab["is_hangul"] & (bpe_vocab["length"] >= 2)]
    surfaces = (
        pieces.groupby("surface", as_index=False)["frequency"]
        .sum()
        .rename(columns={"surface": "token"})
    )
    surfaces = surfaces[surfaces["frequency"] >= min_freq]
    return surfaces.sort_values(["frequency", "token"], ascending=[False, True], ignore_index=True)


def _ngram_candidates(ngrams: pd.DataFrame, min_freq: int) -> pd.DataFrame:
    """N-grams with ``count >= min_freq``, longer first (5, 4, 3, 2), then by count."""
    kept = ngrams[ngrams["count"] >= min_freq]
    kept = kept.sort_values(
        ["n", "count", "ngram"], ascending=[False, False, True], ignore_index=True
    )
    return kept.rename(columns={"ngram": "token", "count": "frequency"})[["token", "frequency"]]


def _prioritised(
    parts: Sequence[tuple[str, pd.DataFrame]], exclude: set[str], max_tokens: int
) -> pd.DataFrame:
    """Concatenate ``(source, frame)`` in priority order, keep each token's first appearance, cap, rank from 1."""
    merged = pd.concat(
        [frame[["token", "frequency"]].assign(source=source) for source, frame in parts],
        ignore_index=True,
    )
    merged = merged.drop_duplicates("token", keep="first")
    merged = merged[~merged["token"].isin(exclude)].head(max_tokens).reset_index(drop=True)
    merged["priority"] = np.arange(1, len(merged) + 1, dtype=np.int64)
    return merged.astype({"token": object, "source": object, "frequency": "int64"})[
        list(SELECTION_COLUMNS)
    ]


def _surface_frequencies(ngrams: pd.DataFrame, bpe_vocab: pd.DataFrame) -> dict[str, int]:
    """Best available corpus frequency of a surface: its n-gram count, else its BPE piece frequency."""
    frequencies = bpe_vocab.groupby("surface")["frequency"].sum().to_dict()
    frequencies.update(zip(ngrams["ngram"], ngrams["count"]))
    return {surface: int(count) for surface, count in frequencies.items()}


def select_medical_tokens(
    dictionary_terms: list[str],
    ngrams: pd.DataFrame,
    bpe_vocab: pd.DataFrame,
    max_tokens: int = 10_000,
    min_freq: int = 3,
) -> pd.DataFrame:
    """Tier 2 by the prototype's priority: dictionary terms, then BPE pieces, then n-grams longer first.

    Dictionary terms are curated, so they enter regardless of frequency (in the given order);
    BPE surfaces and n-grams need ``min_freq``. Each token keeps its first, highest-priority
    source. Returns ``token`` (surface, no ``▁``), ``source`` (dictionary | bpe_medical | ngram),
    ``priority`` (1 = first) and ``frequency``, at most ``max_tokens`` rows.
    """
    frequencies = _surface_frequencies(ngrams, bpe_vocab)
    terms = list(dict.fromkeys(term for term in (normalize(t) for t in dictionary_terms) if term))
    dictionary = pd.DataFrame(
        {"token": terms, "frequency": [frequencies.get(term, 0) for term in terms]}
    )
    parts = [
        ("dictionary", dictionary),
        ("bpe_medical", _bpe_candidates(bpe_vocab, min_freq)),
        ("ngram", _ngram_candidates(ngrams, min_freq)),
    ]
    return _prioritised(parts, set(), max_tokens)


def select_general_tokens(
    ngrams: pd.DataFrame,
    bpe_vocab: pd.DataFrame,
    exclude: set[str],
    max_tokens: int = 20_000,
    min_freq: int = 10,
) -> pd.DataFrame:
    """Tier 3: general-Korean BPE pieces, then n-grams longer first, minus everything in ``exclude`` (Tier 2).

    Same columns as :func:`select_medical_tokens`, with ``source`` bpe_general | ngram; excluded
    tokens do not use up the ``max_tokens`` budget.
    """
    parts = [
        ("bpe_general", _bpe_candidates(bpe_vocab, min_freq)),
        ("ngram", _ngram_candidates(ngrams, min_freq)),
    ]
    return _prioritised(parts, exclude, max_tokens)
