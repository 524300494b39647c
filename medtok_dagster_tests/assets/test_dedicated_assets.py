"""Tier-1 assets materialized for real against a copy of the sample data and a temp DuckDB."""

import json

import dagster as dg
import duckdb
import pytest

from medtok_dagster import checks
from medtok_dagster.assets import dedicated
from medtok_dagster.resources import DUCKDB_FILE, DUCKDB_SCHEMA, build_resources

TIER1 = dg.load_assets_from_modules([dedicated])


def materialize(data_dir, model_dir, run_config=None, raise_on_error=True):
    return dg.materialize(
        [*TIER1, *checks.build_checks()],
        resources=build_resources(str(data_dir), str(model_dir)),
        run_config=run_config,
        raise_on_error=raise_on_error,
        selection=dg.AssetSelection.assets(*TIER1) | dg.AssetSelection.checks_for_assets(*TIER1),
    )


def table(model_dir, name):
    with duckdb.connect(str(model_dir / DUCKDB_FILE), read_only=True) as con:
        return con.execute(f"select * from {DUCKDB_SCHEMA}.{name}").df()


def test_tier1_materializes_with_files_tables_and_passing_checks(data_dir, model_dir):
    result = materialize(data_dir, model_dir)
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    report = json.loads(
        (data_dir / "tokenizer" / "special_chars_report.json").read_text(encoding="utf-8")
    )
    chars = {c["char"]: c for c in report["characters"]}
    assert {"≥", "℃", "μ", "→", "±"} <= set(chars)
    assert chars["≥"]["example"]["file"] == "train.jsonl"
    assert report["total_occurrences"] == sum(c["count"] for c in report["characters"])
    kept = (data_dir / "tokenizer" / "dictionary_terms.txt").read_text(encoding="utf-8").split()
    raw = (
        (data_dir / "tokenizer" / "dictionary_terms.txt.backup")
        .read_text(encoding="utf-8")
        .splitlines()
    )
    assert 0 < len(kept) < len(raw)
    assert "골수강" in kept and "뇌척수막염" in kept
    terms = table(model_dir, "dictionary_terms")
    assert terms.loc[~terms["kept"], "reason"].notna().all()
    tokens = table(model_dir, "dedicated_tokens")
    assert tokens["token"].is_unique
    assert set(tokens["source"]) == {"user", "special_char", "notation", "dictionary"}
    assert {"mg/dL", "mEq/L", "회/분"} <= set(tokens.loc[tokens["source"] == "notation", "token"])
    assert len(table(model_dir, "user_added_tokens")) == 17


def test_min_count_config_changes_special_chars(data_dir, model_dir):
    config = {"ops": {"dedicated_tokens": {"config": {"min_count": 1000000}}}}
    materialize(data_dir, model_dir, run_config=config)
    assert "special_char" not in set(table(model_dir, "dedicated_tokens")["source"])


def test_malformed_train_line_fails_naming_file_and_line_and_writes_nothing(data_dir, model_dir):
    train = data_dir / "01_raw" / "02_kor_med_test" / "train.jsonl"
    lines = train.read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4][:-3]
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(Exception, match=rf"{train}:5: malformed JSON"):
        materialize(data_dir, model_dir)
    assert not (data_dir / "tokenizer" / "special_chars_report.json").exists()


def test_lenient_mode_counts_skips_in_metadata(data_dir, model_dir):
    train = data_dir / "01_raw" / "02_kor_med_test" / "train.jsonl"
    with train.open("ab") as handle:
        handle.write(b'{"question": "broken"\n' + '{"question": "환자"}\n'.encode("cp949"))
    lenient = {"config": {"lenient": True}}
    result = materialize(
        data_dir,
        model_dir,
        run_config={"ops": {"special_chars_report": lenient, "medical_notation": lenient}},
    )
    meta = result.asset_materializations_for_node("special_chars_report")[0].metadata
    assert meta["skipped_records"].value == 2


def test_planted_test_leak_fails_blocking_check(data_dir, model_dir):
    test_line = (
        (data_dir / "01_raw" / "02_kor_med_test" / "test.jsonl")
        .read_text(encoding="utf-8")
        .splitlines()[0]
    )
    with (data_dir / "01_raw" / "02_kor_med_test" / "train.jsonl").open(
        "a", encoding="utf-8"
    ) as handle:
        handle.write(test_line + "\n")
    result = materialize(data_dir, model_dir, raise_on_error=False)
    leak = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "no_test_leak_in_tier1"
    ][0]
    assert not leak.passed
    assert leak.metadata["leaked_questions"].value == 1
    assert "test.jsonl:1" in leak.metadata["leaks"].value
