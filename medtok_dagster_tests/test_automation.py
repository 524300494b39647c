"""Declarative automation: what a changed, an unchanged or a new corpus file sets in motion."""

import datetime

import dagster as dg
import pytest

from medtok_dagster.definitions import build_definitions

START = datetime.datetime(2026, 11, 24, 10, 5, tzinfo=datetime.UTC)
CHEAP_DOWNSTREAM_OF_A_CORPUS = {
    "bpe_general",
    "ngram_candidates",
    "medical_tokens",
    "general_tokens",
    "candidate_tokens",
    "tokenizer_efficiency",
    *(
        f"{asset}[{v}]"
        for asset in ("tokenizer_variants", "token_descriptions", "description_validation")
        for v in ("dedicated", "ded_medical", "ded_med_normal")
    ),
}


class Simulation:
    """Evaluates automation tick by tick and 'materializes' whatever is requested (runless events)."""

    def __init__(self, defs: dg.Definitions):
        self.defs = defs
        self.graph = defs.resolve_asset_graph()
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor = None
        self.now = START
        for key in self.graph.toposorted_asset_keys:
            node = self.graph.get(key)
            for partition in self.partitions(key):
                if node.is_materializable:
                    self.instance.report_runless_asset_event(
                        dg.AssetMaterialization(key, partition=partition)
                    )
                else:
                    self.observe(key.to_user_string(), partition, "v1")
        self.tick()

    def partitions(self, key):
        definition = self.graph.get(key).partitions_def
        return [None] if definition is None else definition.get_partition_keys()

    def observe(self, key: str, partition, version: str) -> None:
        self.instance.report_runless_asset_event(
            dg.AssetObservation(key, partition=partition, tags={"dagster/data_version": version})
        )

    def tick(self, minutes: int = 1) -> set[str]:
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.cursor, evaluation_time=self.now
        )
        self.cursor = result.cursor
        self.now += datetime.timedelta(minutes=minutes)
        requested = set()
        for evaluation in result.results:
            key = evaluation.key
            if not isinstance(key, dg.AssetKey) or not self.graph.get(key).is_materializable:
                continue
            for partition in (
                evaluation.true_subset.expensively_compute_partition_keys()
                if self.graph.get(key).partitions_def
                else [None]
            ):
                if evaluation.true_subset.size:
                    requested.add(key.to_user_string() + (f"[{partition}]" if partition else ""))
                    self.instance.report_runless_asset_event(
                        dg.AssetMaterialization(key, partition=partition)
                    )
        return requested

    def settle(self, max_ticks: int = 12) -> set[str]:
        """Tick until nothing more is requested; everything requested on the way."""
        seen: set[str] = set()
        for _ in range(max_ticks):
            requested = self.tick()
            if not requested:
                return seen
            seen |= requested
        raise AssertionError(f"automation did not settle: {seen}")


@pytest.fixture
def simulation(data_dir, model_dir):
    return Simulation(build_definitions(str(data_dir), str(model_dir), "embedded:gemma3-270m"))


def test_unchanged_sources_request_nothing(simulation):
    simulation.observe("korean_corpora", "gimp_help", "v1")
    simulation.observe("mcq_train", None, "v1")
    assert simulation.settle() == set()


def test_changed_corpus_requests_exactly_its_downstream(simulation):
    simulation.observe("korean_corpora", "gimp_help", "v2")
    assert simulation.settle() == {
        "general_corpus_sample[gimp_help]",
        *CHEAP_DOWNSTREAM_OF_A_CORPUS,
    }


def test_changed_train_split_reruns_tier1_and_medical_stages(simulation):
    simulation.observe("mcq_train", None, "v2")
    requested = simulation.settle()
    assert {
        "special_chars_report",
        "medical_corpus",
        "bpe_medical",
        "dedicated_tokens",
        "tokenizer_variants[ded_medical]",
    } <= requested
    assert not any(
        name.startswith(("general_corpus_sample", "user_added_tokens", "dictionary_terms"))
        for name in requested
    )


def test_expensive_stages_wait_for_their_cron(simulation):
    simulation.observe("korean_corpora", "gimp_help", "v2")
    requested = simulation.settle()
    assert not any(
        name.startswith(
            ("initialized_model", "trained_adapter", "init_comparison", "llm_token_descriptions")
        )
        for name in requested
    )
    simulation.now = START.replace(hour=3) + datetime.timedelta(days=1, minutes=1)
    after_cron = simulation.settle()
    assert any(name.startswith("initialized_model") for name in after_cron)
    assert any(name.startswith("trained_adapter") for name in after_cron)
    simulation.now += datetime.timedelta(days=1)
    assert simulation.settle() == set()
