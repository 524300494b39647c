"""Kiwi analysis of real new-token shapes: stem, tail, verbs, and the model shipped in the wheel."""

import subprocess
import sys

import pytest

from medtok_dagster.core.morphology import analyse, split_token


@pytest.mark.parametrize(
    ("text", "stem", "tail"),
    [
        ("환자가", "환자", [("가", "JKS")]),
        ("정상이었다.", "정상", [("이", "VCP"), ("었", "EP"), ("다", "EF"), (".", "SF")]),
        ("차단되는", "차단", [("되", "XSV"), ("는", "ETM")]),
        ("피하조직에", "피하조직", [("에", "JKB")]),
        ("었고,", "", [("었", "EP"), ("고", "EC"), (",", "SP")]),
        ("당뇨병", "당뇨병", []),
    ],
)
def test_split_token_separates_the_stem_from_particles_and_endings(text, stem, tail):
    analysis = split_token(text)
    assert analysis.stem_text == stem
    assert [(m.form, m.tag) for m in analysis.tail] == tail


def test_verbs_keep_their_base_form_and_a_leading_auxiliary_is_the_main_verb():
    helped = split_token("도와")
    assert analysis_forms(helped.stem) == [("돕", "VV")] and helped.is_verb
    came = split_token("왔다.")
    assert analysis_forms(came.stem) == [("오", "VV")] and came.is_verb


def test_known_words_and_pieces_are_told_apart():
    assert split_token("혈당").is_known_word
    assert not split_token("푸로세").is_known_word
    assert analyse("푸로세")[0].oov


def analysis_forms(morphs):
    return [(m.form, m.tag) for m in morphs]


def test_the_analyser_loads_without_any_network():
    """kiwipiepy-model ships the model: loading it must not reach for a download."""
    code = (
        "import socket\n"
        "socket.socket.connect = lambda *a, **k: (_ for _ in ()).throw(OSError('network used'))\n"
        "from kiwipiepy import Kiwi\nprint(Kiwi().analyze('혈당', top_n=1)[0][0][0].form)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "혈당"
