import random
import unicodedata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medtok_dagster.core import vocab
from medtok_dagster.core.io import InputError
from medtok_dagster.core.text import WORD_BOUNDARY

IMPLEMENTATIONS = [vocab.count_hangul_ngrams, vocab.count_hangul_ngrams_python]
FIXTURE = ["당뇨병 환자", "당뇨병성 신증", "abc당뇨"]
# ngram, n, count, doc_freq, word_initial_count: "당뇨" after "abc" is not word-initial.
FIXTURE_EXPECTED = [
    ("당뇨", 2, 3, 3, 2),
    ("뇨병", 2, 2, 2, 0),
    ("당뇨병", 3, 2, 2, 2),
    ("뇨병성", 3, 1, 1, 0),
    ("당뇨병성", 4, 1, 1, 1),
    ("병성", 2, 1, 1, 0),
    ("신증", 2, 1, 1, 1),
    ("환자", 2, 1, 1, 1),
]


def expected_frame(rows: list[tuple[str, int, int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(vocab.NGRAM_COLUMNS)).astype({"ngram": object})


def write_parquet(path: Path, lines: list[str]) -> Path:
    pq.write_table(pa.table({"text": lines, "other": list(range(len(lines)))}), path)
    return path


@pytest.mark.parametrize("count", IMPLEMENTATIONS)
def test_fixture_counts_are_exact(count):
    pd.testing.assert_frame_equal(count(FIXTURE), expected_frame(FIXTURE_EXPECTED))


@pytest.mark.parametrize("count", IMPLEMENTATIONS)
def test_ngrams_never_span_spaces_or_other_scripts(count):
    grams = set(count(FIXTURE, min_n=2, max_n=8)["ngram"])
    assert {"병환", "뇨병환", "성신", "c당"}.isdisjoint(grams)
    assert all(len(gram) <= 4 for gram in grams)


@pytest.mark.parametrize("count", IMPLEMENTATIONS)
def test_repeats_within_a_line_count_once_for_doc_freq(count):
    frame = count(["환자 환자의 환자", "하하하"]).set_index("ngram")
    assert frame.loc["환자", ["count", "doc_freq", "word_initial_count"]].tolist() == [3, 1, 3]
    assert frame.loc["하하", ["count", "doc_freq", "word_initial_count"]].tolist() == [2, 1, 1]
    assert frame.loc["자의", ["count", "doc_freq", "word_initial_count"]].tolist() == [1, 1, 0]


@pytest.mark.parametrize("count", IMPLEMENTATIONS)
def test_nfd_text_and_unusual_whitespace(count):
    lines = [unicodedata.normalize("NFD", "당뇨 환자"), "x\u3000당뇨", "\t당뇨\u00a0환자"]
    frame = count(lines).set_index("ngram")
    assert frame.loc["당뇨", ["count", "doc_freq", "word_initial_count"]].tolist() == [3, 3, 3]
    assert frame.loc["환자", ["count", "doc_freq", "word_initial_count"]].tolist() == [2, 2, 2]


@pytest.mark.parametrize("count", IMPLEMENTATIONS)
def test_min_count_and_empty_input(count):
    assert count(FIXTURE, min_count=2)["ngram"].tolist() == ["당뇨", "뇨병", "당뇨병"]
    empty = count([])
    assert list(empty.columns) == list(vocab.NGRAM_COLUMNS) and empty.empty


def test_every_separator_of_str_split_is_below_u3001():
    # count_hangul_ngrams lists whitespace code points up to U+3000 only.
    assert not any(chr(cp).isspace() for cp in range(0x3001, 0x110000))


def test_rejects_bad_ranges():
    with pytest.raises(ValueError):
        vocab.count_hangul_ngrams(FIXTURE, min_n=3, max_n=2)
    with pytest.raises(ValueError):
        vocab.count_hangul_ngrams_python(FIXTURE, min_count=0)


def test_reads_parquet_files_and_numbers_lines_across_them(tmp_path: Path):
    first = write_parquet(tmp_path / "a.parquet", FIXTURE)
    second = write_parquet(tmp_path / "b.parquet", FIXTURE)
    pd.testing.assert_frame_equal(
        vocab.count_hangul_ngrams(first), expected_frame(FIXTURE_EXPECTED)
    )
    pd.testing.assert_frame_equal(
        vocab.count_hangul_ngrams(str(first)), expected_frame(FIXTURE_EXPECTED)
    )
    doubled = [(g, n, 2 * c, 2 * d, 2 * w) for g, n, c, d, w in FIXTURE_EXPECTED]
    pd.testing.assert_frame_equal(
        vocab.count_hangul_ngrams([first, second]), expected_frame(doubled)
    )


def test_parquet_without_text_column_is_located(tmp_path: Path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"body": ["당뇨"]}), path)
    with pytest.raises(InputError, match="no 'text' column"):
        vocab.count_hangul_ngrams(path)


def random_korean_lines(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    syllables = [chr(0xAC00 + i * 97) for i in range(60)]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 7))) for _ in range(150)]
    separators = [
        " ",
        " ",
        " ",
        "  ",
        "\t",
        "\u3000",
        "\u00a0",
        "\n",
        "",
        "-",
        "(",
        ")",
        ".",
        "abc",
        "12",
        "ㄱ",
    ]
    lines = []
    for _ in range(count):
        parts = [rng.choice(words) + rng.choice(separators) for _ in range(rng.randint(0, 12))]
        line = rng.choice(["", " ", "x"]) + "".join(parts)
        lines.append(unicodedata.normalize("NFD", line) if rng.random() < 0.1 else line)
    return lines


@pytest.mark.parametrize(("min_n", "max_n", "min_count"), [(2, 5, 1), (1, 3, 2), (3, 6, 1)])
def test_duckdb_matches_python_oracle(min_n: int, max_n: int, min_count: int):
    lines = random_korean_lines(400, seed=min_n * 10 + max_n)
    fast = vocab.count_hangul_ngrams(
        lines, min_n=min_n, max_n=max_n, min_count=min_count, threads=2
    )
    oracle = vocab.count_hangul_ngrams_python(lines, min_n=min_n, max_n=max_n, min_count=min_count)
    assert len(oracle) > 500
    pd.testing.assert_frame_equal(fast, oracle)


def test_duckdb_matches_python_oracle_on_very_long_lines():
    short = random_korean_lines(60, seed=7)
    lines = [" ".join(short * 20), "당뇨병 " * 700, *short]
    pd.testing.assert_frame_equal(
        vocab.count_hangul_ngrams(lines), vocab.count_hangul_ngrams_python(lines)
    )


BPE_LINES = ["당뇨병 환자 당뇨병 치료"] * 60 + [
    "당뇨병성 신증 환자의 치료",
    "고혈압 환자  당뇨병",
] * 10


@pytest.fixture(scope="module")
def bpe():
    return vocab.train_bpe(BPE_LINES, vocab_size=120, min_frequency=2)


def test_bpe_learns_word_initial_and_inner_pieces(bpe):
    pieces = bpe.get_vocab()
    assert f"{WORD_BOUNDARY}당뇨병" in pieces
    assert "병" in pieces and WORD_BOUNDARY in pieces
    assert bpe.encode("당뇨병 당뇨병").tokens == ["당뇨병", f"{WORD_BOUNDARY}당뇨병"]


@pytest.mark.parametrize(
    "line", ["당뇨병 환자 치료", " 당뇨병  환자", "고혈압 환자의 치료 ", "당뇨병성 신증"]
)
def test_bpe_decode_round_trips(bpe, line: str):
    assert bpe.decode(bpe.encode(line).ids) == line


def test_bpe_vocab_frame_flags_and_frequencies(bpe):
    frame = vocab.bpe_vocab_frame(bpe, BPE_LINES)
    assert list(frame.columns) == list(vocab.BPE_COLUMNS)
    assert frame["id"].tolist() == sorted(frame["id"]) and len(frame) == bpe.get_vocab_size()
    row = frame.set_index("token").loc[f"{WORD_BOUNDARY}당뇨병"]
    assert (row["word_initial"], row["surface"], row["length"], row["is_hangul"]) == (
        True,
        "당뇨병",
        3,
        True,
    )
    used = sum(
        encoding.tokens.count(f"{WORD_BOUNDARY}당뇨병") for encoding in bpe.encode_batch(BPE_LINES)
    )
    assert row["frequency"] == used > 0
    singles = frame[frame["length"] <= 1]
    assert "병" in set(singles["token"]) and WORD_BOUNDARY in set(singles["token"])
    assert vocab.bpe_vocab_frame(bpe, None)["frequency"].eq(0).all()


def test_save_and_load_bpe(tmp_path: Path, bpe):
    path = vocab.save_bpe(bpe, tmp_path / "vocab" / "bpe.json")
    loaded = vocab.load_bpe(path)
    assert loaded.get_vocab() == bpe.get_vocab()
    assert loaded.encode("당뇨병 환자").ids == bpe.encode("당뇨병 환자").ids
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError):
        vocab.load_bpe(broken)


def ngram_table(rows: list[tuple[str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(gram, len(gram), count, count, 0) for gram, count in rows],
        columns=list(vocab.NGRAM_COLUMNS),
    )


def bpe_table(rows: list[tuple[str, int]]) -> pd.DataFrame:
    surfaces = [token.removeprefix(WORD_BOUNDARY) for token, _ in rows]
    return pd.DataFrame(
        {
            "token": [token for token, _ in rows],
            "id": range(len(rows)),
            "word_initial": [token.startswith(WORD_BOUNDARY) for token, _ in rows],
            "surface": surfaces,
            "length": [len(surface) for surface in surfaces],
            "is_hangul": [
                bool(surface) and all("가" <= ch <= "힣" for ch in surface) for surface in surfaces
            ],
            "frequency": [frequency for _, frequency in rows],
        }
    )


NGRAMS = ngram_table(
    [
        ("당뇨", 50),
        ("혈압", 2),
        ("당뇨병", 40),
        ("고혈압성", 5),
        ("심근경색", 4),
        ("신부전증", 9),
        ("뇨병성신", 3),
    ]
)
BPE_VOCAB = bpe_table(
    [
        ("당", 90),
        ("▁당뇨병", 30),
        ("당뇨병", 5),
        ("▁환자", 20),
        ("환자", 1),
        ("abc", 99),
        ("▁치료", 2),
        ("▁", 400),
    ]
)


def test_medical_priority_rules():
    frame = vocab.select_medical_tokens(
        ["인슐린", "당뇨병", "인슐린"], NGRAMS, BPE_VOCAB, min_freq=3
    )
    assert list(frame.columns) == list(vocab.SELECTION_COLUMNS)
    assert frame["token"].tolist() == [
        "인슐린",
        "당뇨병",
        "환자",
        "신부전증",
        "고혈압성",
        "심근경색",
        "뇨병성신",
        "당뇨",
    ]
    assert frame["source"].tolist() == ["dictionary"] * 2 + ["bpe_medical"] + ["ngram"] * 5
    assert frame["priority"].tolist() == list(range(1, 9))
    assert frame.set_index("token")["frequency"].to_dict() == {
        "인슐린": 0,
        "당뇨병": 40,
        "환자": 21,
        "뇨병성신": 3,
        "신부전증": 9,
        "고혈압성": 5,
        "심근경색": 4,
        "당뇨": 50,
    }
    assert "혈압" not in set(frame["token"]) and "치료" not in set(frame["token"])


def test_medical_cap():
    frame = vocab.select_medical_tokens(
        ["인슐린", "당뇨병"], NGRAMS, BPE_VOCAB, max_tokens=3, min_freq=3
    )
    assert frame["token"].tolist() == ["인슐린", "당뇨병", "환자"]


def test_general_excludes_medical_and_keeps_budget():
    medical = vocab.select_medical_tokens(["당뇨병"], NGRAMS, BPE_VOCAB, max_tokens=2, min_freq=3)
    general = vocab.select_general_tokens(
        NGRAMS, BPE_VOCAB, set(medical["token"]), max_tokens=3, min_freq=4
    )
    assert set(medical["token"]) == {"당뇨병", "환자"}
    assert general["token"].tolist() == ["신부전증", "고혈압성", "심근경색"]
    assert general["source"].tolist() == ["ngram"] * 3
    assert general["priority"].tolist() == [1, 2, 3]
    everything = vocab.select_general_tokens(NGRAMS, BPE_VOCAB, set(), min_freq=4)
    assert everything["token"].tolist()[:2] == ["당뇨병", "환자"]
    assert everything["source"].tolist()[:2] == ["bpe_general", "bpe_general"]
