"""Corpora → candidates → a tokenizer variant, materialized for real against a temp DuckDB."""

import dagster as dg
import duckdb
import pytest
from transformers import AutoTokenizer

from medtok_dagster.assets import corpora, dedicated, tokenizers, vocab
from medtok_dagster.assets.raw import build_corpora_source, observe_raw_files
from medtok_dagster.checks import build_checks
from medtok_dagster.resources import DUCKDB_FILE, DUCKDB_SCHEMA, PathsResource, build_resources
from medtok_dagster_tests.conftest import copy_sample_data, empty_model_dir

UNPARTITIONED = [
    "special_chars_report",
    "medical_notation",
    "user_added_tokens",
    "dictionary_terms_raw",
    "dictionary_terms",
    "dedicated_tokens",
    "medical_corpus",
    "bpe_medical",
    "bpe_general",
    "ngram_candidates",
    "medical_tokens",
    "general_tokens",
    "candidate_tokens",
]


def graph(data_dir, model_dir):
    names = list(
        PathsResource(data_dir=str(data_dir), model_dir=str(model_dir)).general_corpus_dirs()
    )
    assets = [
        observe_raw_files,
        build_corpora_source(names),
        corpora.build_general_corpus_sample(names),
        *dg.load_assets_from_modules([dedicated, corpora, vocab, tokenizers]),
        *build_checks(),
    ]
    return assets, names


def table(model_dir, name):
    with duckdb.connect(str(model_dir / DUCKDB_FILE), read_only=True) as con:
        return con.execute(f"select * from {DUCKDB_SCHEMA}.{name}").df()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    return copy_sample_data(root / "data"), empty_model_dir(root / "model")


@pytest.fixture(scope="module")
def model_dir(dirs):
    return dirs[1]


@pytest.fixture(scope="module")
def candidates_ready(dirs, gemma_dir):
    data_dir, model_dir = dirs
    assets, names = graph(data_dir, model_dir)
    resources = build_resources(str(data_dir), str(model_dir), str(gemma_dir))
    for name in names:
        result = dg.materialize(
            assets,
            selection=["general_corpus_sample"],
            partition_key=name,
            resources=resources,
            run_config={"ops": {"general_corpus_sample": {"config": {"n_lines": 3000}}}},
        )
        assert all(e.passed for e in result.get_asset_check_evaluations())
    result = dg.materialize(
        assets,
        selection=dg.AssetSelection.assets(*UNPARTITIONED)
        | dg.AssetSelection.checks_for_assets(*UNPARTITIONED),
        resources=resources,
        run_config={"ops": {"bpe_general": {"config": {"vocab_size": 4000}}}},
    )
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    return assets, resources


def test_candidate_tables_have_values(candidates_ready, model_dir):
    samples = table(model_dir, "general_corpus_sample")
    assert set(samples["corpus"]) == {
        "debian_docs",
        "gimp_help",
        "kolaw_kobill",
        "libreoffice_help",
    }
    assert (samples["sampled"] + samples["heldout"] <= 3000).all() and (
        samples["heldout"] > 0
    ).all()
    assert dict(zip(samples["corpus"], samples["text_column"]))["debian_docs"] == "content"
    ngrams = table(model_dir, "ngram_candidates")
    assert ngrams["n"].between(2, 5).all() and (ngrams["count"] >= 2).all()
    medical = table(model_dir, "medical_tokens")
    assert medical["source"].iloc[0] == "dictionary"
    general = table(model_dir, "general_tokens")
    assert not set(general["token"]) & set(medical["token"])
    scored = table(model_dir, "candidate_tokens")
    assert scored["token"].is_unique
    assert (scored["estimated_saved"] > 0).mean() > 0.5
    assert (scored["saved_bare"] < 0).any(), (
        "a bare form that splits words against their grain costs tokens"
    )
    assert (scored["saved_word_initial"] > scored["saved_bare"]).sum() > 0.3 * len(scored)
    bpe = table(model_dir, "bpe_medical")
    assert (
        bpe["word_initial"].any()
        and (bpe.loc[bpe["word_initial"], "token"].str.startswith("▁")).all()
    )


@pytest.mark.parametrize("strategy", ["added_tokens", "bpe_merge"])
def test_variant_encodes_selected_tokens_in_context(
    candidates_ready, model_dir, gemma_tokenizer, strategy
):
    assets, resources = candidates_ready
    config = {
        "ops": {
            "tokenizer_variants": {
                "config": {
                    "strategy": strategy,
                    "budgets": {"dedicated": 800, "ded_medical": 2500, "ded_med_normal": 3000},
                }
            }
        }
    }
    result = dg.materialize(
        assets,
        selection=["tokenizer_variants"],
        partition_key="ded_medical",
        resources=resources,
        run_config=config,
    )
    meta = result.asset_materializations_for_node("tokenizer_variants")[0].metadata
    assert meta["tokens_added"].value <= 2500 and meta["first_new_id"].value == 262144
    variant = AutoTokenizer.from_pretrained(model_dir / "tokenizer" / "medgemma_ded_medical")
    new = table(model_dir, "tokenizer_variants")
    assert not set(new["token"]) & set(gemma_tokenizer.get_vocab())
    word_initial = new[new["kind"] == "word_initial"].sort_values("rank").head(20)
    for token in word_initial["token"]:
        assert token in variant.tokenize(f"다음 {token[1:]} 소견")
    line = "중환자실에서 심근경색 환자의 혈압 90/60 mmHg, 체온 38.5℃ ≥ question: def f(x): return x"
    assert variant.decode(variant.encode(line, add_special_tokens=False)) == line
    assert len(variant.encode(line)) < len(gemma_tokenizer.encode(line))
