import json
import random
import unicodedata
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medtok_dagster.core.corpus import (
    SHARD_SUFFIXES,
    detect_text_column,
    discover_shards,
    heldout_buckets,
    iter_lines,
    iter_shard_texts,
    read_lines_parquet,
    reservoir_sample,
    sample_corpus,
    shard_text_column,
    split_heldout,
    split_heldout_arrow,
    write_lines_parquet,
)
from medtok_dagster.core.corpus import lines as corpus_lines
from medtok_dagster.core.corpus import reservoir as corpus_reservoir
from medtok_dagster.core.io import InputError, SkipReport
from medtok_dagster.core.text import has_hangul, normalize

DOCS = [
    "환자는 급성 심근경색으로 내원하였다.\n고혈압은 만성 질환이다.",
    "English only line\n서울은 대한민국의 수도이다.\n\n1995 | 2003",
    None,
    "  앞뒤  공백과\t탭이   있는 줄  \r\n두 번째 줄",
    "",
    "ㄱㄴㄷ\nᄒᆞᆫ\n漢字 かな 没有\n\ud7b0\ud7b1\n\ud7a4\nꥠꥡ\n가\n힣",
    "\u1112\u1161\u11ab\u1100\u1173\u11af NFD 한글\n마지막 줄이 개행으로 끝난다\n",
    "힣 가 끝 글자\n\u00a0비분리\u3000공백\u2028줄",
]


def reference_lines(docs: list[str | None]) -> list[str]:
    """What iter_shard_texts must yield, computed the slow, obvious way."""
    return [
        normalize(line)
        for doc in docs
        if doc
        for line in doc.split("\n")
        if has_hangul(normalize(line))
    ]


def save_dataset(path: Path, columns: dict[str, list], shard_size: str = "1KB") -> Path:
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict(columns).save_to_disk(str(path), max_shard_size=shard_size)
    return path


def many_docs(count: int) -> list[str]:
    return [
        f"{i}번째 문서의 첫 줄입니다.\nline {i} in English\n{i}번 둘째 줄 {i * 7 % 13}"
        for i in range(count)
    ]


def write_arrow(path: Path, table: pa.Table, file_format: bool) -> Path:
    with pa.OSFile(str(path), "wb") as sink:
        opener = pa.ipc.new_file if file_format else pa.ipc.new_stream
        with opener(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=3)
    return path


@pytest.fixture
def mixed_corpus(tmp_path: Path) -> Path:
    """One corpus with every supported layout, nested, plus files that must be ignored."""
    root = tmp_path / "corpus"
    dataset = save_dataset(root / "wiki", {"content": DOCS * 20, "id": list(range(len(DOCS) * 20))})
    (dataset / "cache-0123.arrow").write_bytes(b"not a shard")
    (root / "nested" / "train").mkdir(parents=True)
    pq.write_table(pa.table({"text": DOCS}), root / "nested" / "train" / "part.parquet")
    write_arrow(root / "nested" / "file_format.arrow", pa.table({"body": DOCS}), file_format=True)
    write_arrow(
        root / "nested" / "stream_format.arrow", pa.table({"body": DOCS}), file_format=False
    )
    (root / "notes.jsonl").write_text(
        "\n".join(json.dumps({"document": d, "n": 1}, ensure_ascii=False) for d in DOCS) + "\n"
    )
    (root / "plain.txt").write_text("\n".join(d for d in DOCS if d) + "\n", encoding="utf-8")
    (root / ".hidden.txt").write_text("숨은 파일\n")
    (root / "README.md").write_text("설명\n")
    return root


def test_discover_shards_finds_every_format_nested_and_sorted(mixed_corpus):
    shards = discover_shards(mixed_corpus)
    names = [s.path.relative_to(mixed_corpus).as_posix() for s in shards]
    saved = sorted(p.name for p in (mixed_corpus / "wiki").glob("data-*.arrow"))
    assert len(saved) > 2
    assert names == [
        "nested/file_format.arrow",
        "nested/stream_format.arrow",
        "nested/train/part.parquet",
        "notes.jsonl",
        "plain.txt",
        *[f"wiki/{name}" for name in saved],
    ]
    formats = {name: s.format for name, s in zip(names, shards)}
    assert formats["nested/file_format.arrow"] == "arrow_file"
    assert formats["nested/stream_format.arrow"] == "arrow_stream"
    assert formats[f"wiki/{saved[0]}"] == "arrow_stream"
    assert discover_shards(mixed_corpus) == shards


def test_empty_corpus_dir_lists_supported_formats(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="no shards") as err:
        discover_shards(tmp_path / "empty")
    assert all(suffix in str(err.value) for suffix in SHARD_SUFFIXES)
    assert err.value.path == tmp_path / "empty"
    with pytest.raises(InputError, match="does not exist"):
        discover_shards(tmp_path / "missing")


def test_state_json_listing_a_missing_file_is_an_error(tmp_path):
    dataset = save_dataset(tmp_path / "c" / "ds", {"text": many_docs(50)})
    next(dataset.glob("data-*.arrow")).unlink()
    with pytest.raises(InputError, match="does not exist") as err:
        discover_shards(tmp_path / "c")
    assert err.value.path.name == "state.json"


def test_text_column_detection_per_format(mixed_corpus):
    columns = {s.path.name: shard_text_column(s) for s in discover_shards(mixed_corpus)}
    assert columns["part.parquet"] == "text"
    assert columns["file_format.arrow"] == columns["stream_format.arrow"] == "body"
    assert columns["notes.jsonl"] == "document"
    assert columns["plain.txt"] == "text"
    assert {v for k, v in columns.items() if k.startswith("data-")} == {"content"}


def test_detect_text_column_rules(tmp_path):
    path = tmp_path / "x.arrow"
    assert detect_text_column(["id", "content", "title"], path) == "content"
    assert detect_text_column(["id", "text", "content"], path) == "text"
    assert detect_text_column(["id", "content", "title"], path, configured="title") == "title"
    assert (
        detect_text_column(["id", "passage", "score"], path, string_columns=["passage"])
        == "passage"
    )
    with pytest.raises(InputError, match="available columns: id, content") as err:
        detect_text_column(["id", "content"], path, configured="body")
    assert err.value.path == path
    with pytest.raises(InputError, match="not a string column"):
        detect_text_column(["id", "content"], path, configured="id", string_columns=["content"])


def test_unknown_schema_error_names_shard_and_columns(tmp_path):
    save_dataset(tmp_path / "c" / "ds", {"title": ["제목"], "passage": ["본문"], "id": [1]})
    shard = discover_shards(tmp_path / "c")[0]
    with pytest.raises(InputError, match="unknown schema") as err:
        shard_text_column(shard)
    assert err.value.path == shard.path
    assert "title, passage, id" in str(err.value)
    assert shard_text_column(shard, "passage") == "passage"
    with pytest.raises(InputError, match="unknown schema"):
        sample_corpus(tmp_path / "c", 10)


def test_iter_shard_texts_matches_reference_in_every_format(mixed_corpus):
    expected = reference_lines(DOCS)
    assert len(expected) == 15
    for shard in discover_shards(mixed_corpus):
        got = list(iter_shard_texts(shard, shard_text_column(shard)))
        if shard.path.parent.name == "wiki":
            assert set(got) <= set(expected)
        else:
            assert got == expected, shard.path.name
    assert "앞뒤 공백과 탭이 있는 줄" in expected
    assert unicodedata.normalize("NFC", "\u1112\u1161\u11ab\u1100\u1173\u11af NFD 한글") in expected
    assert not any("English" in line or "漢字" in line for line in expected)


def test_batches_cut_into_small_slices_give_the_same_lines(tmp_path, monkeypatch):
    save_dataset(tmp_path / "c" / "ds", {"text": DOCS * 30}, shard_size="1MB")
    shard = discover_shards(tmp_path / "c")[0]
    whole = list(iter_shard_texts(shard, "text"))
    monkeypatch.setattr(corpus_lines, "_SLICE_BYTES", 40)
    assert list(iter_shard_texts(shard, "text")) == whole == reference_lines(DOCS * 30)


def test_sample_is_deterministic_and_seed_dependent(tmp_path):
    save_dataset(tmp_path / "c" / "ds", {"text": many_docs(600)}, shard_size="8KB")
    first = sample_corpus(tmp_path / "c", 100, seed=7)
    again = sample_corpus(tmp_path / "c", 100, seed=7)
    other = sample_corpus(tmp_path / "c", 100, seed=8)
    assert len(first.shards) > 3
    assert isinstance(first.lines, pa.ChunkedArray) and first.lines.type == pa.large_string()
    assert first.lines.to_pylist() == again.lines.to_pylist()
    assert len(first.lines) == 100
    assert first.lines.to_pylist() != other.lines.to_pylist()
    assert len(set(first.lines.to_pylist())) == 100


@pytest.mark.parametrize("n", [0, 1, 7, 300, 1200, 5000])
def test_sample_equals_reservoir_sample_over_the_streamed_lines(mixed_corpus, n):
    shards = discover_shards(mixed_corpus)
    streamed = [line for s in shards for line in iter_shard_texts(s, shard_text_column(s))]
    sample = sample_corpus(mixed_corpus, n, seed=3)
    assert (sample.lines.to_pylist(), sample.lines_seen) == reservoir_sample(
        iter(streamed), n, seed=3
    )
    assert len(sample.lines) == min(n, len(streamed))
    assert sample.lines.type == pa.large_string() and sample.lines.null_count == 0


def test_sample_is_the_same_whatever_the_matching_batch(mixed_corpus, monkeypatch):
    whole = sample_corpus(mixed_corpus, 300, seed=5)
    monkeypatch.setattr(corpus_reservoir, "_FINISH_BYTES", 100)
    batched = sample_corpus(mixed_corpus, 300, seed=5)
    assert batched.lines.to_pylist() == whole.lines.to_pylist()
    assert batched.lines.num_chunks > 1
    assert (
        "앞뒤 공백과 탭이 있는 줄" in batched.lines.to_pylist()
    )  # normalised in Python, put back in place


def test_lines_seen_and_shard_stats_count_every_line(mixed_corpus):
    calls = []
    sample = sample_corpus(
        mixed_corpus, 50, seed=1, progress=lambda done, seen: calls.append((done, seen))
    )
    per_copy = len(reference_lines(DOCS))
    assert sample.lines_seen == per_copy * (20 + 5)
    assert sum(s.lines for s in sample.shards) == sample.lines_seen
    by_name = {s.path.name: s for s in sample.shards}
    assert by_name["part.parquet"].rows == len(DOCS)
    assert by_name["plain.txt"].rows == (mixed_corpus / "plain.txt").read_bytes().count(b"\n")
    assert sum(s.rows for n, s in by_name.items() if n.startswith("data-")) == len(DOCS) * 20
    assert all(s.bytes == s.path.stat().st_size for s in sample.shards)
    assert sample.text_column is None
    assert [done for done, _ in calls] == list(range(1, len(sample.shards) + 1))
    assert calls[-1][1] == sample.lines_seen
    assert sample.skips.total == 0


def test_reservoir_sample_is_uniform():
    items = [str(i) for i in range(100)]
    counts: Counter[str] = Counter()
    for seed in range(3000):
        sample, seen = reservoir_sample(iter(items), 10, seed)
        assert seen == 100 and len(set(sample)) == 10
        counts.update(sample)
    expected = 3000 * 10 / 100
    assert all(abs(counts[item] - expected) <= 0.2 * expected for item in items)
    chi_square = sum((counts[item] - expected) ** 2 / expected for item in items)
    assert chi_square < 148  # 99 degrees of freedom, p < 0.001


def test_reservoir_sample_small_inputs():
    assert reservoir_sample(iter(["a", "b"]), 5, seed=0) == (["a", "b"], 2)
    assert reservoir_sample(iter(["a", "b", "c"]), 0, seed=0) == ([], 3)
    assert reservoir_sample(iter([]), 3, seed=0) == ([], 0)
    sample, seen = reservoir_sample((str(i) for i in range(10_000)), 3, seed=5)
    assert seen == 10_000 and sample == sorted(sample, key=int)
    with pytest.raises(ValueError):
        reservoir_sample(iter(["a"]), -1, seed=0)


def test_line_over_limit_strict_names_row_lenient_counts(tmp_path):
    docs = ["짧은 줄", "정상\n" + "가" * 400 + "\n다음 줄", "또 다른 줄"]
    save_dataset(tmp_path / "c" / "ds", {"text": docs}, shard_size="1MB")
    shard = discover_shards(tmp_path / "c")[0]
    with pytest.raises(InputError, match="1,200 bytes exceeds the 1,000-byte limit") as err:
        list(iter_shard_texts(shard, "text", max_line_bytes=1000))
    assert (err.value.path, err.value.line) == (shard.path, 1)
    skips = SkipReport()
    lines = list(iter_shard_texts(shard, "text", lenient=True, skips=skips, max_line_bytes=1000))
    assert lines == ["짧은 줄", "정상", "다음 줄", "또 다른 줄"]
    assert skips.as_dict() == {"line_too_long": 1}
    sample = sample_corpus(tmp_path / "c", 10, lenient=True, max_line_bytes=1000)
    assert sample.lines_seen == 4 and sample.skips.as_dict() == {"line_too_long": 1}


def test_invalid_utf8_in_txt_strict_names_file_and_line_lenient_counts(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    path = root / "broken.txt"
    path.write_bytes("첫 줄\n".encode() + "깨진 줄\n".encode("cp949") + "셋째 줄\n".encode())
    with pytest.raises(InputError, match="not valid UTF-8") as err:
        sample_corpus(root, 10)
    assert (err.value.path, err.value.line) == (path, 2)
    assert str(err.value).startswith(f"{path}:2:")
    sample = sample_corpus(root, 10, lenient=True)
    assert sample.lines.to_pylist() == ["첫 줄", "셋째 줄"]
    assert sample.skips.as_dict() == {"invalid_utf8": 1}


def test_bad_jsonl_records_strict_and_lenient(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    path = root / "a.jsonl"
    path.write_text(
        '{"text": "첫 문서"}\n{"text": \n[1]\n{"text": 5}\n{"text": null}\n{"id": 1}\n{"text": "끝"}\n'
    )
    with pytest.raises(InputError, match="malformed JSON") as err:
        sample_corpus(root, 10)
    assert (err.value.path, err.value.line) == (path, 2)
    sample = sample_corpus(root, 10, lenient=True)
    assert sample.lines.to_pylist() == ["첫 문서", "끝"]
    assert sample.skips.as_dict() == {"malformed_json": 1, "not_an_object": 1, "not_text": 1}
    assert sample.shards[0].rows == 4


def test_corrupt_arrow_shard_strict_error_lenient_skip(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    good = write_arrow(root / "good.arrow", pa.table({"text": DOCS}), file_format=False)
    (root / "truncated.arrow").write_bytes(good.read_bytes()[:-300])
    with pytest.raises(InputError, match="unreadable arrow_stream shard") as err:
        sample_corpus(root, 10)
    assert err.value.path == root / "truncated.arrow"
    sample = sample_corpus(root, 100, lenient=True)
    assert sample.skips.counts["unreadable_shard"] == 1
    assert sample.lines_seen >= len(reference_lines(DOCS))


def test_characters_normalize_may_change_lie_in_the_scanned_ranges():
    assert (
        corpus_lines._unnormal_code_points(range(0x110000)) == corpus_lines._unnormal_code_points()
    )


TRICKY = [
    " ",
    "  ",
    "\t",
    "\r",
    "\x0b",
    "\x1c",
    "\x85",
    "\u00a0",
    "\u1680",
    "\u2000",
    "\u2028",
    "\u202f",
    "\u3000",
    "\u0301",
    "\u0308",
    "e",
    "A",
    "\u00e9",
    "\u212b",
    "\u2126",
    "\uf900",
    "\u0958",
    "\u0344",
    "\u1100",
    "\u1161",
    "\u11a8",
    "\u1175",
    "\u11c2",
    "\uac00",
    "\ud7a3",
    "\u3131",
    "\u318e",
    "\u3099",
    "\u309a",
    "\u0b47",
    "\u0b3e",
    "\u0cd5",
    "\U0001d15e",
    "\U0001d165",
    "\U0002f800",
    "\U000e0100",
    "\U0001f600",
    "가",
    "힣",
    "한",
    "\u00b7",
    "\u201c",
    "\u2026",
    "\u300a",
    "\u4e00",
    "\uff01",
    ".",
    "1",
]


def test_finished_lines_equal_normalize_on_tricky_text():
    rng = random.Random(0)
    lines = [
        "가나다",
        "환자는 급성 심근경색으로 내원하였다.",
        " 앞 공백",
        "뒤 공백 ",
        "두  칸",
        "\u1112\u1161\u11ab",
    ]
    lines += ["".join(rng.choice(TRICKY) for _ in range(rng.randint(1, 12))) for _ in range(5000)]
    finished = corpus_lines._finished_lines(pa.array(lines, pa.large_string()))
    assert finished.type == pa.large_string()
    assert finished.to_pylist() == [normalize(line) for line in lines]
    plain = pa.array(["가나다", "서울은 수도이다. “인용” 《책》 漢字 1995"], pa.large_string())
    assert corpus_lines._finished_lines(plain) is plain


def test_parquet_round_trip_is_atomic(tmp_path):
    lines = ["환자는 내원하였다.", "", "줄 \u00a0 그대로", "😀 이모지"]
    path = write_lines_parquet(
        lines, tmp_path / "out" / "sample.parquet", {"source": ["a", "b", "c", "d"]}
    )
    assert read_lines_parquet(path) == lines
    table = pq.read_table(path)
    assert table.column_names == ["text", "source"]
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert sorted(p.name for p in path.parent.iterdir()) == ["sample.parquet"]
    write_lines_parquet(["새 내용"], path)
    assert read_lines_parquet(path) == ["새 내용"]
    with pytest.raises(ValueError, match="3 values for 4 lines"):
        write_lines_parquet(lines, tmp_path / "x.parquet", {"source": ["a", "b", "c"]})


def test_write_lines_parquet_takes_arrow_arrays(tmp_path):
    lines = ["환자는 내원하였다.", "줄 \u00a0 그대로", "😀 이모지"]
    for value in (
        pa.array(lines),
        pa.array(lines, pa.large_string()),
        pa.chunked_array([lines[:1], lines[1:]], pa.large_string()),
    ):
        path = write_lines_parquet(value, tmp_path / "arrow.parquet", {"n": [1, 2, 3]})
        assert read_lines_parquet(path) == lines
        assert pq.read_table(path).schema.field("text").type == pa.large_string()
    with pytest.raises(ValueError, match="2 values for 3 lines"):
        write_lines_parquet(pa.array(lines), tmp_path / "x.parquet", {"n": [1, 2]})
    with pytest.raises(TypeError, match="string array"):
        write_lines_parquet(pa.array([1, 2]), tmp_path / "x.parquet")


def test_split_heldout_arrow_equals_split_heldout():
    lines = [f"{i}번째 줄입니다 {'가' * (i % 300)}" for i in range(20_000)] + [
        "",
        "😀 이모지",
        "e\u0301",
        "a" * 5000,
    ]
    for permille in (0, 20, 500, 1000):
        train, heldout = split_heldout(lines, permille)
        for kind in (
            pa.array(lines),
            pa.array(lines, pa.large_string()),
            pa.chunked_array([lines[:7], [], lines[7:]], pa.large_string()),
        ):
            arrow_train, arrow_heldout = split_heldout_arrow(kind, permille)
            assert type(arrow_train) is type(kind) and arrow_train.type == kind.type
            assert (arrow_train.to_pylist(), arrow_heldout.to_pylist()) == (train, heldout)
    train, heldout = split_heldout(lines, 20)
    assert 0 < len(heldout) < len(lines) * 0.04
    sliced = pa.array(lines, pa.large_string()).slice(100, 500)
    assert split_heldout_arrow(sliced, 20)[1].to_pylist() == split_heldout(lines[100:600], 20)[1]
    views = split_heldout_arrow(pa.array(lines, pa.string_view()), 20)
    assert [part.to_pylist() for part in views] == [train, heldout] and views[
        0
    ].type == pa.large_string()
    assert len(heldout_buckets(pa.array([], pa.string()))) == 0
    assert [
        len(part) for part in split_heldout_arrow(pa.chunked_array([], pa.large_string()), 20)
    ] == [0, 0]
    with pytest.raises(ValueError, match="nulls"):
        heldout_buckets(pa.array(["가", None]))


def test_sample_lines_split_and_iterate_like_python_lists(tmp_path):
    save_dataset(tmp_path / "c" / "ds", {"text": many_docs(3000)}, shard_size="64KB")
    sample = sample_corpus(tmp_path / "c", 2000, seed=2)
    as_list = sample.lines.to_pylist()
    assert list(iter_lines(sample.lines, batch_lines=333)) == as_list == list(iter_lines(as_list))
    train, heldout = split_heldout_arrow(sample.lines, 20)
    assert (train.to_pylist(), heldout.to_pylist()) == split_heldout(as_list, 20)
    assert len(heldout) > 0


def test_read_lines_parquet_errors_name_the_file(tmp_path):
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"body": ["가"]}), other)
    with pytest.raises(InputError, match="no 'text' column; columns: body") as err:
        read_lines_parquet(other)
    assert err.value.path == other
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a readable parquet file"):
        read_lines_parquet(junk)
