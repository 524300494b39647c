"""The one Definitions object: assets, checks, resources and automation, built from MEDTOK_* settings."""

from __future__ import annotations

import dagster as dg

from medtok_dagster import automation, checks
from medtok_dagster.assets import dedicated
from medtok_dagster.assets.raw import build_raw_sources
from medtok_dagster.resources import PathsResource, build_resources, settings_from_env


def build_definitions(data_dir: str, model_dir: str, base_model: str) -> dg.Definitions:
    """Definitions for one data directory; corpus assets are discovered from its general corpora."""
    corpora = list(PathsResource(data_dir=data_dir, model_dir=model_dir).general_corpus_dirs())
    raw_sources = build_raw_sources(corpora)
    return dg.Definitions(
        assets=[raw_sources, *dg.load_assets_from_modules([dedicated])],
        asset_checks=checks.CHECKS,
        schedules=[automation.observation_schedule(raw_sources)],
        resources=build_resources(data_dir, model_dir, base_model),
    )


defs = build_definitions(**settings_from_env())
