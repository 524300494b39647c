"""The one Definitions object: assets, checks, resources and automation, built from MEDTOK_* settings."""

from __future__ import annotations

from typing import Any

import dagster as dg

from medtok_dagster import automation, checks
from medtok_dagster.assets import (
    corpora,
    dedicated,
    descriptions,
    evaluation,
    model,
    tokenizers,
    training,
    vocab,
)
from medtok_dagster.assets.raw import build_corpora_source, observe_raw_files
from medtok_dagster.resources import PathsResource, build_resources, settings_from_env

OPTIONAL_ASSETS = {"llm_token_descriptions"}
"""Assets that `make demo` leaves out: they are opt-in (the LLM describer needs a real LM to be useful)."""


def fixed_at_launch(resources: dict[str, Any]) -> dict[str, dg.ResourceDefinition]:
    """The resources with an empty config schema, so that no run config can re-point them.

    Dagster lets a run config (the Launchpad's ``resources:`` section) override every field of a
    configured resource: for these that would be another data or model directory, base model or
    DuckDB file than the operator chose with ``MEDTOK_*``, which would void the guarantee that
    user-supplied paths stay inside those directories. Such a run config is refused with Dagster's
    "unexpected config entry" error before the run starts.
    """
    return {key: _fixed(resource) for key, resource in resources.items()}


def _fixed(resource: Any) -> dg.ResourceDefinition:
    """One resource exactly as built; an IO manager factory keeps its resolved settings (its client reads them)."""
    if isinstance(resource, dg.ConfigurableIOManagerFactory):
        settings = resource._convert_to_config_dictionary()
        return resource.get_resource_definition().configured(lambda _: settings, config_schema={})
    return dg.ResourceDefinition(
        resource_fn=lambda _: resource, config_schema={}, description=type(resource).__doc__
    )


def build_definitions(data_dir: str, model_dir: str, base_model: str) -> dg.Definitions:
    """Definitions for one data directory; corpus assets are discovered from its general corpora."""
    corpus_names = list(PathsResource(data_dir=data_dir, model_dir=model_dir).general_corpus_dirs())
    stages = [
        *dg.load_assets_from_modules(
            [dedicated, corpora, vocab, tokenizers, descriptions, model, training, evaluation]
        ),
        corpora.build_general_corpus_sample(corpus_names),
    ]
    return dg.Definitions(
        assets=[
            observe_raw_files,
            build_corpora_source(corpus_names),
            *dg.map_asset_specs(automation.with_automation, stages),
        ],
        asset_checks=checks.build_checks(),
        sensors=[automation.automation_sensor()],
        resources=fixed_at_launch(build_resources(data_dir, model_dir, base_model)),
    )


defs = build_definitions(**settings_from_env())
