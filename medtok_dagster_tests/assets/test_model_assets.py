"""The model end of the graph on tiny models with the real tokenizer: distilled rows, initialised and trained
adapters, the merged model users serve, and its evaluation against the base model.

Each test materializes real assets through Dagster; upstream tables (`tokenizer_variants`) come from a
stand-in asset with the same key, so only the stages under test run.
"""

import json
import re
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import AddedToken, Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtok_dagster import layout, partitions, readers
from medtok_dagster.assets import evaluation, model, training
from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import calibration, distill, lm_metrics
from medtok_dagster.core import training as core_training
from medtok_dagster.core.corpus import write_lines_parquet
from medtok_dagster.core.io import atomic_write_json
from medtok_dagster.resources import MEDICAL_CORPUS_PARQUET, build_resources

NEW = ["▁당뇨병", "▁혈당", "▁심근경색", "▁환자는", "▁췌장염"]
LINES = [
    "당뇨병 환자는 혈당 조절이 필요합니다.",
    "중환자실에서 심근경색 환자를 치료했다.",
    "급성 신우신염 환자는 발열이 있다.",
    "공복 혈당이 높으면 당뇨병을 의심한다.",
] * 12
PARTITION = {"variant": "ded_medical", "profile": "embedded"}
FAST = {
    "distilled_embeddings": {
        "config": {
            "max_tokens": 0,
            "contexts_per_token": 4,
            "context_before": 8,
            "context_after": 4,
            "epochs": 2.0,
            "batch_size": 4,
            "calibration_positions": 600,
            "calibration_block": 16,
        }
    },
    "trained_adapter": {
        "config": {
            "max_steps": 4,
            "save_steps": 2,
            "per_device_batch": 2,
            "grad_accum": 1,
            "max_seq_len": 32,
            "heldout_texts": 8,
        }
    },
    "model_evaluation": {
        "config": {
            "exam_questions": 6,
            "general_lines": 4,
            "control_texts": 3,
            "prefill_texts": 4,
            "prefill_repeats": 1,
        }
    },
}


def make_variant(paths, base_dir: Path, added: list[str]) -> pd.DataFrame:
    """A `ded_medical` tokenizer (base + ``added``) with token mapping and reviewed descriptions; returns its table."""
    target = layout.variant_dir(paths, "ded_medical")
    shutil.copytree(
        base_dir,
        target,
        ignore=shutil.ignore_patterns("*.safetensors", "tokenizer.json", "config.json"),
    )
    backend = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    base_len = backend.get_vocab_size(with_added_tokens=True)
    backend.add_tokens([AddedToken(token, normalized=True, special=False) for token in added])
    backend.save(str(target / "tokenizer.json"))
    (target / layout.TOKEN_MAPPING).write_text(json.dumps({"original_vocab_size": base_len}))
    table = pd.DataFrame(
        {
            "variant": "ded_medical",
            "token": added,
            "id": range(base_len, base_len + len(added)),
            "source": "ngram",
            "rank": range(len(added)),
        }
    )
    reviewed = layout.reviewed_descriptions(paths, "ded_medical")
    reviewed.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        reviewed,
        [
            {"token": t, "token_id": i, "description": "medical term", "method": "generic"}
            for t, i in zip(added, table["id"])
        ],
    )
    return table


def stand_in(table: pd.DataFrame) -> dg.AssetsDefinition:
    """`tokenizer_variants` as a fixed table, so downstream stages load it through the real IO manager."""

    @dg.asset(
        name="tokenizer_variants",
        partitions_def=partitions.variant_partitions,
        metadata={"partition_expr": "variant"},
    )
    def tokenizer_variants() -> pd.DataFrame:
        return table

    return tokenizer_variants


def with_image_soft_token(base_dir: Path, target: Path) -> Path:
    """The tiny MedGemma with MedGemma's tokenizer: `<image_soft_token>` makes the base 262,145 long."""
    shutil.copytree(base_dir, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.add_tokens(["<image_soft_token>"], special_tokens=True)
    tokenizer.save_pretrained(target)
    return target


GENERAL = ["오늘은 날씨가 맑고 따뜻하다.", "도서관에서 책을 빌려 읽었다."] * 6
GENERAL_HELD_OUT = ["주말에는 가족과 함께 산책을 했다.", "새 학기가 시작되어 학생들이 학교에 왔다."]


@pytest.fixture
def graph(data_dir, model_dir):
    """Data and model dirs holding what upstream assets would have left: corpora samples and a variant."""
    corpora = data_dir / "01_raw" / "00_korean"
    shutil.rmtree(corpora)
    (corpora / "tiny").mkdir(parents=True)
    write_lines_parquet(LINES, model_dir / MEDICAL_CORPUS_PARQUET)
    paths = build_resources(str(data_dir), str(model_dir))["paths"]
    write_lines_parquet(GENERAL, layout.general_sample_file(paths, "tiny"))
    write_lines_parquet(GENERAL_HELD_OUT, layout.general_sample_file(paths, "tiny", heldout=True))

    def build(base_dir: Path):
        resources = build_resources(str(data_dir), str(model_dir), str(base_dir))
        table = make_variant(resources["paths"], base_dir, NEW)
        return resources, table

    return build


def materialize(assets, resources, partition=None, config=None, selection=None):
    names = selection or [key.to_user_string() for a in assets for key in a.keys]
    ops = {name: value for name, value in (config or FAST).items() if name in names}
    return dg.materialize(
        assets,
        selection=selection,
        resources=resources,
        run_config={"ops": ops},
        partition_key=dg.MultiPartitionKey(partition) if isinstance(partition, dict) else partition,
    )


def test_distilled_rows_flow_into_the_initialised_model_and_say_what_fell_back(
    graph, tiny_gemma_dir, model_dir
):
    resources, table = graph(tiny_gemma_dir)
    variants = stand_in(table)
    materialize([variants], resources, "ded_medical")
    result = materialize(
        [variants, model.distilled_embeddings],
        resources,
        "ded_medical",
        selection=["distilled_embeddings"],
    )
    meta = result.asset_materializations_for_node("distilled_embeddings")[0].metadata
    assert meta["distilled_tokens"].value == 4 and meta["fallback_tokens"].value == 1
    assert "1 rows not distilled: subtoken_mean" == meta["fallback"].value
    distilled_dir = layout.distilled_dir(resources["paths"], "ded_medical")
    identity = core_base_model.identity(resources["base_model"].source())
    rows = distill.load_rows(distilled_dir, len(NEW), identity)
    assert rows.fallback == [int(table["id"].iloc[-1])], (
        "▁췌장염 never occurs in the training lines"
    )
    calibrated = json.loads((distilled_dir / layout.DISTILL_INFO).read_text())["calibration"]
    scored = calibrated["fit_positions"] + calibrated["validation_positions"]
    assert calibrated["blocks"] == 40 and 0.8 * 40 * 15 < scored <= 40 * 15, (
        "600 positions in blocks of 16 tokens; <bos> is never a target"
    )
    assert calibrated["validation_nll_realised"] <= calibrated["validation_nll_before"]
    offsets = load_file(str(distilled_dir / calibration.OFFSETS_FILE))["offsets"]
    assert offsets.shape == (len(NEW),) and "validation_nll_realised" in meta["calibration"].value
    init = materialize(
        [variants, model.initialized_model], resources, PARTITION, selection=["initialized_model"]
    )
    assert init.success
    info = json.loads(
        (
            layout.initialised_dir(resources["paths"], "embedded", "ded_medical")
            / core_training.INIT_INFO
        ).read_text()
    )
    assert info["strategy"] == "distill" and info["methods"] == {
        "distill": 4,
        "not distilled: subtoken_mean": 1,
    }
    assert info["calibration"] == calibrated
    extended, _, _ = model.build_initialized(
        resources["base_model"],
        resources["paths"],
        "ded_medical",
        model.new_tokens(resources["paths"], "ded_medical", table),
        "distill",
        None,
    )
    base_len = int(table["id"].min())
    assert torch.equal(
        extended.get_input_embeddings().weight[base_len : base_len + 5], rows.input_rows
    )
    ids_file = distilled_dir / distill.IDS_FILE
    saved = json.loads(ids_file.read_text())
    ids_file.write_text(json.dumps({**saved, "base_model": "local:another-base"}))
    with pytest.raises(distill.DistilledRowsError) as refused:
        model.build_initialized(
            resources["base_model"],
            resources["paths"],
            "ded_medical",
            model.new_tokens(resources["paths"], "ded_medical", table),
            "distill",
            None,
        )
    message = str(refused.value)
    assert str(ids_file) in message and "local:another-base" in message and identity in message
    assert "re-materialize distilled_embeddings" in message


def test_no_test_split_text_reaches_distillation(graph, tiny_gemma_dir, data_dir, monkeypatch):
    resources, table = graph(tiny_gemma_dir)
    test_file = data_dir / "01_raw" / "02_kor_med_test" / "test.jsonl"
    planted = "췌장염 환자의 혈당이 계속 오른다. 이 문장은 시험 문제에만 있다."
    record = {
        "subject": "doctor",
        "year": 2023,
        "question": planted,
        "A": "a",
        "B": "b",
        "C": "c",
        "D": "d",
        "E": "e",
        "answer": 1,
    }
    test_file.write_text(
        test_file.read_text(encoding="utf-8") + json.dumps(record, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    seen: list[list[str]] = []
    calibrated_on: list[list[int]] = []
    original, original_calibrate = distill.distill, calibration.calibrate
    monkeypatch.setattr(
        distill,
        "distill",
        lambda model_, tok, base, lines, *a, **k: (
            seen.append(list(lines)) or original(model_, tok, base, lines, *a, **k)
        ),
    )
    monkeypatch.setattr(
        calibration,
        "calibrate",
        lambda model_, blocks, *a, **k: (
            calibrated_on.append([i for b in blocks for i in b])
            or original_calibrate(model_, blocks, *a, **k)
        ),
    )
    variants = stand_in(table)
    materialize([variants], resources, "ded_medical")
    result = materialize(
        [variants, model.distilled_embeddings],
        resources,
        "ded_medical",
        selection=["distilled_embeddings"],
    )
    assert seen and seen[0] == LINES + GENERAL, "only the training corpora are distilled from"
    test_questions = {
        json.loads(line)["question"] for line in test_file.read_text(encoding="utf-8").splitlines()
    }
    assert not test_questions & set(seen[0])
    variant = AutoTokenizer.from_pretrained(layout.variant_dir(resources["paths"], "ded_medical"))
    calibration_text = variant.decode(calibrated_on[0])
    assert "당뇨병" in calibration_text, "calibration reads the training blocks"
    assert "시험 문제에만" not in calibration_text, "and never the test split"
    meta = result.asset_materializations_for_node("distilled_embeddings")[0].metadata
    assert 0.0 < meta["heldout_coverage"].value < 1.0, (
        "the planted 췌장염 occurs in held-out text but was never distilled"
    )


def train_and_merge(resources, table, partition):
    variants = stand_in(table)
    materialize([variants], resources, partition["variant"])
    config = {**FAST, "initialized_model": {"config": {"strategy": "subtoken_mean"}}}
    assets = [variants, model.initialized_model, training.trained_adapter, training.merged_model]
    return materialize(
        assets,
        resources,
        partition,
        config,
        selection=["initialized_model", "trained_adapter", "merged_model"],
    )


def test_merged_model_loads_with_plain_transformers_and_gives_base_plus_adapter_logits(
    graph, tiny_gemma_dir
):
    resources, table = graph(tiny_gemma_dir)
    result = train_and_merge(resources, table, PARTITION)
    paths = resources["paths"]
    merged_dir = layout.merged_dir(paths, "embedded", "ded_medical")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, trust_remote_code=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir, trust_remote_code=False)
    assert len(tokenizer) == int(table["id"].max()) + 1
    ids = tokenizer("그 당뇨병 환자는 혈당을 잰다", return_tensors="pt").input_ids
    assert (ids >= int(table["id"].min())).any(), "the sentence uses new tokens"
    base = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir)
    adapted = core_training.load_adapter(
        base,
        layout.trained_dir(paths, "embedded", "ded_medical"),
        len(tokenizer),
        table["id"].tolist(),
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )
    assert not [p for p in merged_dir.iterdir() if p.suffix in (".bin", ".pt", ".pkl")]
    meta = result.asset_materializations_for_node("merged_model")[0].metadata
    assert meta["architecture"].value == "Gemma3ForCausalLM" and meta["vocab_rows"].value == len(
        tokenizer
    )


def test_model_cards_load_snippets_run_as_written(graph, tiny_gemma_dir, capsys):
    resources, table = graph(tiny_gemma_dir)
    train_and_merge(resources, table, PARTITION)
    paths = resources["paths"]
    for card in (
        layout.merged_dir(paths, "embedded", "ded_medical") / "README.md",
        layout.trained_dir(paths, "embedded", "ded_medical") / "README.md",
    ):
        snippet = re.search(r"```python\n(.*?)```", card.read_text(encoding="utf-8"), re.S).group(1)
        assert "medtok" not in snippet, "loading needs no medtok code"
        exec(compile(snippet, str(card), "exec"), {})
    assert capsys.readouterr().out.strip()


def test_trained_adapter_reports_the_base_reference_beside_before_and_after(graph, tiny_gemma_dir):
    resources, table = graph(tiny_gemma_dir)
    result = train_and_merge(resources, table, PARTITION)
    meta = result.asset_materializations_for_node("trained_adapter")[0].metadata
    for text_type in ("exam_questions", "general_korean"):
        values = [
            meta[f"{text_type}_bits_per_char_{stage}"].value
            for stage in ("base", "initialised", "trained")
        ]
        assert all(v > 0 for v in values)
    assert "| exam_questions |" in meta["heldout_bits_per_char"].value
    assert isinstance(meta["beats_base_on_exam_text"].value, bool)
    questions = [q.question for q in readers.exam_questions(resources["paths"])][:8]
    plain = lm_metrics.score_texts(
        AutoModelForCausalLM.from_pretrained(tiny_gemma_dir),
        AutoTokenizer.from_pretrained(tiny_gemma_dir),
        questions,
    )
    assert meta["exam_questions_bits_per_char_base"].value == pytest.approx(
        plain.bits_per_char, abs=1e-3
    ), "the reference is the untouched base"


def test_image_text_model_trains_on_its_8bit_path_with_lora_in_the_language_model_only(
    graph, tiny_medgemma_dir, tmp_path
):
    base_dir = with_image_soft_token(tiny_medgemma_dir, tmp_path / "medgemma-tokenizer")
    resources, table = graph(base_dir)
    assert int(table["id"].min()) == 262145, (
        "new ids start after <image_soft_token>, as on MedGemma"
    )
    partition = {"variant": "ded_medical", "profile": "medgemma-4b"}
    result = train_and_merge(resources, table, partition)
    meta = result.asset_materializations_for_node("trained_adapter")[0].metadata
    assert meta["quantization"].value == "8bit" and meta["quantized_linear_modules"].value > 0
    assert meta["lora_modules"].value == 14 and meta["vision_lora_modules"].value == 0
    merged = layout.merged_dir(resources["paths"], "medgemma-4b", "ded_medical")
    reloaded = AutoModelForCausalLM.from_pretrained(merged)
    assert type(reloaded).__name__ == "Gemma3ForConditionalGeneration"
    assert reloaded.get_input_embeddings().weight.shape[0] == 262208, (
        "MedGemma's padded matrix is never shrunk"
    )


def test_model_evaluation_compares_every_stage_with_the_base_on_the_same_characters(
    graph, tiny_gemma_dir
):
    resources, table = graph(tiny_gemma_dir)
    train_and_merge(resources, table, PARTITION)
    variants = stand_in(table)
    result = materialize(
        [variants, evaluation.model_evaluation],
        resources,
        PARTITION,
        selection=["model_evaluation"],
    )
    checks = result.get_asset_check_evaluations()
    assert [c.check_name for c in checks] == ["not_worse_than_base"]
    check = checks[0]
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert re.search(
        r"exam bits/char: trained \d+\.\d{3} vs base \d+\.\d{3} \([+-]\d", check.description
    )
    meta = result.asset_materializations_for_node("model_evaluation")[0].metadata
    assert meta["dagster/row_count"].value == 3 * 4
    with duckdb.connect(
        str(Path(resources["paths"].model_dir) / "medtok.duckdb"), read_only=True
    ) as con:
        frame = con.execute("select * from stats.model_evaluation").df()
    assert set(frame["stage"]) == {"base", "initialized", "trained"}
    assert set(frame["text_type"]) == {"exam_questions", "general_korean", "english", "code"}
    chars = frame.groupby("text_type")["chars"].nunique()
    assert (chars == 1).all(), "every stage is scored on identical characters"
    exam = frame[frame["text_type"] == "exam_questions"]
    assert (exam["questions"] == 6).all() and (exam["chance"] == 0.2).all()
    assert (exam["accuracy_ci_low"] <= exam["accuracy"]).all() and (
        exam["accuracy"] <= exam["accuracy_ci_high"]
    ).all()
    base = frame[(frame.stage == "base") & (frame.text_type == "exam_questions")][
        "tokens_per_char"
    ].iloc[0]
    trained = frame[(frame.stage == "trained") & (frame.text_type == "exam_questions")][
        "tokens_per_char"
    ].iloc[0]
    assert trained <= base


def test_rows_need_more_windows_only_when_every_token_is_distilled():
    every = model.DistillAssetConfig(max_tokens=0).core()
    frequent = model.DistillAssetConfig(max_tokens=600).core()
    assert every.min_contexts == model.EVERY_TOKEN_MIN_CONTEXTS == 4
    assert frequent.min_contexts == 1, (
        "rows taught in passing are kept when only the top N are chosen"
    )
    assert model.DistillAssetConfig(max_tokens=0, min_contexts=2).core().min_contexts == 2
    assert not every.isolate and every.predict_fallback
