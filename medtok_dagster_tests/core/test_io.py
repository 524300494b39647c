import json
from pathlib import Path

import pytest

from medtok_dagster.core.io import (
    InputError,
    atomic_dir,
    atomic_write_json,
    read_json,
    read_jsonl,
    remove_stale_temporaries,
    tree_fingerprint,
)


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def test_read_jsonl_reads_objects_with_line_numbers(tmp_path):
    path = write(tmp_path / "a.jsonl", b'{"q": "x"}\n\n{"q": "y"}\n')
    records, skips = read_jsonl(path, ["q"])
    assert [(r.line, r.data["q"]) for r in records] == [(1, "x"), (3, "y")]
    assert skips.total == 0


@pytest.mark.parametrize(
    ("payload", "line", "reason"),
    [
        (b'{"q": "x"}\n{"q": \n', 2, "malformed JSON"),
        (b'{"q": "x"}\n{"r": 1}\n', 2, "missing field(s): q"),
        (b'\xef\xbb\xbf{"q": "x"}\n', 1, "byte order mark"),
        ('{"q": "x"}\n{"q": "환자"}\n'.encode("cp949"), 2, "not valid UTF-8"),
        (b'{"q": "x"}\n[1, 2]\n', 2, "expected a JSON object"),
    ],
)
def test_read_jsonl_strict_names_file_and_line(tmp_path, payload, line, reason):
    path = write(tmp_path / "bad.jsonl", payload)
    with pytest.raises(InputError) as err:
        read_jsonl(path, ["q"])
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert reason in str(err.value)


def test_read_jsonl_lenient_counts_each_reason(tmp_path):
    lines = [
        b'\xef\xbb\xbf{"q": "a"}',
        b'{"q": ',
        b'{"r": 1}',
        '{"q": "환자"}'.encode("cp949"),
        b'{"q": "ok"}',
    ]
    path = write(tmp_path / "mixed.jsonl", b"\n".join(lines) + b"\n")
    records, skips = read_jsonl(path, ["q"], lenient=True)
    assert [r.data["q"] for r in records] == ["a", "ok"]
    assert skips.as_dict() == {
        "bom_stripped": 1,
        "invalid_utf8": 1,
        "malformed_json": 1,
        "missing_field": 1,
    }
    assert skips.examples[1] == f"{path}:2: malformed_json"


def test_empty_file_is_an_error_even_when_lenient(tmp_path):
    path = write(tmp_path / "empty.jsonl", b"")
    with pytest.raises(InputError, match="file is empty"):
        read_jsonl(path, ["q"], lenient=True)


def test_read_json_locates_syntax_errors(tmp_path):
    path = write(tmp_path / "d.json", b'[\n {"term": "a"},\n {"term": }\n]')
    with pytest.raises(InputError) as err:
        read_json(path)
    assert err.value.line == 3


def test_atomic_dir_keeps_previous_version_on_failure(tmp_path):
    final = tmp_path / "artifact"
    with atomic_dir(final) as staging:
        (staging / "v").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as staging:
            (staging / "v").write_text("2")
            raise RuntimeError("killed")
    assert (final / "v").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_atomic_dir_replaces_whole_directory(tmp_path):
    final = tmp_path / "artifact"
    with atomic_dir(final) as staging:
        (staging / "old").write_text("x")
    with atomic_dir(final) as staging:
        (staging / "new").write_text("y")
    assert sorted(p.name for p in final.iterdir()) == ["new"]


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".artifact.tmp-1234").mkdir()
    (tmp_path / ".file.json.tmp-99").write_text("partial")
    atomic_write_json(tmp_path / "file.json", {"a": 1})
    assert remove_stale_temporaries(tmp_path) == 2
    assert json.loads((tmp_path / "file.json").read_text()) == {"a": 1}


def test_fingerprint_changes_on_add_remove_and_touch(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.arrow").write_bytes(b"x" * 10)
    first = tree_fingerprint(corpus)
    assert (first.files, first.bytes) == (1, 10)
    assert tree_fingerprint(corpus) == first
    (corpus / "b.arrow").write_bytes(b"y")
    second = tree_fingerprint(corpus)
    assert second.version != first.version
    (corpus / "b.arrow").unlink()
    assert tree_fingerprint(corpus).version == first.version
    import os

    os.utime(corpus / "a.arrow", ns=(1, 1))
    assert tree_fingerprint(corpus).version != first.version
