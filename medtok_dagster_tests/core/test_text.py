from medtok_dagster.core.text import (
    find_leaks,
    hangul_runs,
    is_pure_hangul,
    normalize,
    shingle_key,
    shingles,
)


def test_normalize_composes_and_collapses_whitespace():
    decomposed = "\u1112\u1161\u11ab  \t국"
    assert normalize(decomposed) == "한 국"


def test_hangul_helpers():
    assert hangul_runs("HbA1c 당뇨병(diabetes)에서") == ["당뇨병", "에서"]
    assert is_pure_hangul("심근경색")
    assert not is_pure_hangul("B형간염")


def test_shingles_ignore_spacing_and_punctuation():
    assert shingle_key("다음 중, 옳은 것은?") == "다음중옳은것은"
    assert shingles("가나다라마바사아자", 8) == {"가나다라마바사아", "나다라마바사아자"}


def test_find_leaks_flags_copied_question_only():
    held_out = {
        "t1": "58세 남자가 3시간 전부터 시작된 가슴 통증으로 응급실에 왔다.",
        "t2": "소아의 열성 경련에서 가장 흔한 원인은?",
    }
    training = [
        "전혀 다른 문장입니다.",
        "58세 남자가 3시간 전부터 시작된 가슴통증으로 응급실에 왔다. 혈압은 정상이다.",
    ]
    leaks, scanned = find_leaks(held_out, training)
    assert scanned == 2
    assert [leak.question_id for leak in leaks] == ["t1"]
    assert leaks[0].overlap == 1.0
