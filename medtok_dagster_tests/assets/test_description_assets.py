"""`token_descriptions` on a saved variant: gold-set metadata, LLM output combined by the rule."""

import dagster as dg

from medtok_dagster import layout
from medtok_dagster.assets import descriptions
from medtok_dagster.core import gold
from medtok_dagster.core import tokenizer_build as tb
from medtok_dagster.core.io import atomic_write_json, read_json
from medtok_dagster.resources import build_resources

NEW_TOKENS = ["question:", "▁심근경색", "▁환자가", "▁쀍뛻"]


def build_variant(data_dir, model_dir, gemma_tokenizer, extra=()) -> dict[str, int]:
    variant = layout.variant_dir(
        build_resources(str(data_dir), str(model_dir))["paths"], "dedicated"
    )
    variant.mkdir(parents=True)
    new = list(dict.fromkeys([*NEW_TOKENS, *extra]))
    tokenizer = tb.build_extended_tokenizer(
        gemma_tokenizer, "added_tokens", new, tb.Selection(), [], variant
    )
    mapping = tb.token_mapping(len(gemma_tokenizer), tokenizer, "added_tokens")
    atomic_write_json(variant / layout.TOKEN_MAPPING, mapping)
    return tb.new_token_ids(tokenizer, len(gemma_tokenizer))


def materialize(data_dir, model_dir) -> tuple[dg.ExecuteInProcessResult, dict[str, dict]]:
    result = dg.materialize(
        [descriptions.token_descriptions],
        partition_key="dedicated",
        resources=build_resources(str(data_dir), str(model_dir)),
    )
    paths = build_resources(str(data_dir), str(model_dir))["paths"]
    return result, {
        row["token"]: row for row in read_json(layout.reviewed_descriptions(paths, "dedicated"))
    }


def test_descriptions_carry_gold_set_figures_per_method(data_dir, model_dir, gemma_tokenizer):
    build_variant(data_dir, model_dir, gemma_tokenizer)
    result, reviewed = materialize(data_dir, model_dir)
    assert {t: (r["method"], r["description"]) for t, r in reviewed.items()} == {
        "question:": ("exact", "prompt section marker for question"),
        "▁심근경색": ("exact", "myocardial infarction"),
        "▁환자가": ("morpheme", "patient + subject particle"),
        "▁쀍뛻": ("generic", "Korean word piece"),
    }
    metadata = result.asset_materializations_for_node("token_descriptions")[0].metadata
    figures = metadata["gold_rule_based"].value
    assert figures["tokens"] >= 300 and figures["correct"] >= 0.85 and figures["wrong"] <= 0.03
    assert "rule_based/morpheme" in metadata["gold_by_method"].value
    assert "bpe_piece" in metadata["gold_rule_based_by_category"].value
    assert metadata["generic_share"].value == 0.25 and metadata["llm_descriptions_used"].value == 0


def with_llm_output(data_dir, model_dir, gemma_tokenizer, gold_description) -> dict[str, int]:
    """A variant holding the gold tokens too, and LLM output for all of its new tokens."""
    tokens = gold.read_gold(data_dir / descriptions.GOLD_SET)
    ids = build_variant(data_dir, model_dir, gemma_tokenizer, [g.token for g in tokens])
    described = {g.token: gold_description(g) for g in tokens}
    paths = build_resources(str(data_dir), str(model_dir))["paths"]
    rows = [
        {
            "token": t,
            "token_id": i,
            "description": described.get(t, f"llm text {i}"),
            "method": "llm",
        }
        for t, i in ids.items()
    ]
    atomic_write_json(descriptions.llm_path(paths, "dedicated"), rows)
    return ids


def test_trusted_llm_descriptions_replace_only_generic_ones(data_dir, model_dir, gemma_tokenizer):
    ids = with_llm_output(
        data_dir, model_dir, gemma_tokenizer, lambda g: g.gloss.replace("(", "").replace(")", "")
    )
    result, reviewed = materialize(data_dir, model_dir)
    assert reviewed["▁쀍뛻"] == {
        "token": "▁쀍뛻",
        "token_id": ids["▁쀍뛻"],
        "description": f"llm text {ids['▁쀍뛻']}",
        "method": "llm",
    }
    assert [reviewed[t]["method"] for t in NEW_TOKENS[:3]] == ["exact", "exact", "morpheme"]
    assert reviewed["혈당"]["method"] == "exact" and reviewed["한의"]["method"] == "llm"
    metadata = result.asset_materializations_for_node("token_descriptions")[0].metadata
    assert metadata["llm_trusted"].value is True
    assert "combined" in metadata["gold_by_method"].value


def test_an_llm_worse_than_the_rules_on_the_gold_set_is_not_used(
    data_dir, model_dir, gemma_tokenizer
):
    with_llm_output(data_dir, model_dir, gemma_tokenizer, lambda g: "a banana")
    result, reviewed = materialize(data_dir, model_dir)
    assert reviewed["▁쀍뛻"]["method"] == "generic"
    metadata = result.asset_materializations_for_node("token_descriptions")[0].metadata
    assert metadata["llm_trusted"].value is False and metadata["llm_descriptions_used"].value == 0
