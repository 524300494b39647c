"""Automation: observe raw sources on a cron so downstream stages can follow real changes."""

from __future__ import annotations

import os

import dagster as dg

OBSERVE_CRON = os.environ.get("MEDTOK_OBSERVE_CRON", "0 * * * *")


def observation_schedule(raw_sources: dg.AssetsDefinition) -> dg.ScheduleDefinition:
    """Observe every raw input on ``MEDTOK_OBSERVE_CRON`` (default hourly); running by default."""
    job = dg.define_asset_job("observe_raw_sources_job", selection=dg.AssetSelection.assets(raw_sources))
    return dg.ScheduleDefinition(
        name="observe_raw_sources_schedule",
        job=job,
        cron_schedule=OBSERVE_CRON,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
