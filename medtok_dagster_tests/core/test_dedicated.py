from pathlib import Path

import pytest

from medtok_dagster.core.dedicated import (
    combine_dedicated,
    is_special_char,
    load_user_tokens,
    scan_special_chars,
)
from medtok_dagster.core.io import InputError, JsonlRecord


def test_special_char_classes():
    assert all(is_special_char(c) for c in "≥℃μ→±↑·×")
    assert not any(is_special_char(c) for c in "a1%/ 가ㄱ\n")


def test_scan_counts_and_first_context():
    records = [
        JsonlRecord(
            1,
            {
                "question": "체온 38.5℃, EF ≥55%",
                "A": "≥",
                "B": "",
                "C": "x",
                "D": "y",
                "E": "z",
                "answer": 1,
            },
        ),
        JsonlRecord(
            2,
            {
                "question": "혈당 ≥126",
                "A": "a",
                "B": "b",
                "C": "c",
                "D": "d",
                "E": "e",
                "answer": 2,
            },
        ),
    ]
    report = scan_special_chars(records, "train.jsonl")
    assert report["total_unique"] == 2
    assert report["total_occurrences"] == 4
    first = report["characters"][0]
    assert (first["char"], first["count"], first["unicode"]) == ("≥", 3, "U+2265")
    assert first["example"] == {
        "line": 1,
        "field": "question",
        "context": "체온 38.5℃, EF ≥55%",
        "code": 8805,
        "unicode": "U+2265",
        "file": "train.jsonl",
    }


def test_user_tokens_keep_inner_spaces_and_count_blanks(tmp_path: Path):
    path = tmp_path / "tokens.txt"
    path.write_text("question:\n\n- 평가기준:\nquestion:\n", encoding="utf-8")
    tokens, skips = load_user_tokens(path)
    assert tokens == ["question:", "- 평가기준:"]
    assert skips.as_dict() == {"blank_line": 1, "duplicate": 1}


def test_user_tokens_only_blank_lines_is_an_error(tmp_path: Path):
    path = tmp_path / "tokens.txt"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="no tokens"):
        load_user_tokens(path)


def test_combine_dedicated_priority_and_overlap():
    frame = combine_dedicated([("≥", 10), ("℃", 2)], ["answer:"], ["폐렴", "answer:"], min_count=3)
    assert frame["token"].tolist() == ["answer:", "≥", "폐렴"]
    assert frame.set_index("token").loc["answer:", "also_in"] == "dictionary"
