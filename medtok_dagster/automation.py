"""Automation: raw sources observed on a cron, cheap stages follow changes, expensive ones wait for their cron.

* Raw sources carry ``cron_tick_passed(MEDTOK_OBSERVE_CRON)`` (default hourly): the automation sensor
  observes them, and a new data version appears only when names, sizes or mtimes changed.
* Corpora, vocabularies, tokenizers, efficiency and descriptions are ``eager()``: they follow a
  changed upstream at once and never run for an unchanged one.
* The initialised model and the trained adapter wait for ``MEDTOK_MODEL_CRON`` (default 03:00 daily)
  and then run only if an upstream asset changed since they last ran, so a GPU is never spent on an
  unchanged graph.
"""

from __future__ import annotations

import os

import dagster as dg

CHEAP_GROUPS = ("dedicated", "corpora", "vocab", "tokenizers", "descriptions")
EXPENSIVE_GROUPS = ("model", "training", "evaluation")
MANUAL_ASSETS = ("llm_token_descriptions", "init_comparison")


def observe_condition() -> dg.AutomationCondition:
    """Observe on ``MEDTOK_OBSERVE_CRON`` (default: hourly)."""
    return dg.AutomationCondition.cron_tick_passed(
        os.environ.get("MEDTOK_OBSERVE_CRON", "0 * * * *")
    )


def expensive_condition() -> dg.AutomationCondition:
    """On a ``MEDTOK_MODEL_CRON`` tick (default 03:00 daily), run if any upstream changed since this asset last ran.

    ``on_cron`` is not used: it waits for every parent to update *after* the tick, which suits daily
    partitions, not a model that should retrain at night when yesterday's corpora changed.
    """
    cron = os.environ.get("MEDTOK_MODEL_CRON", "0 3 * * *")
    changed_since_last_run = dg.AutomationCondition.any_deps_updated().since(
        dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()
    )
    return (
        dg.AutomationCondition.cron_tick_passed(cron)
        & changed_since_last_run
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"on {cron} if upstream changed")


def with_automation(spec: dg.AssetSpec) -> dg.AssetSpec:
    """Attach the group's automation condition to one asset spec (raw specs keep their own)."""
    if spec.key.to_user_string() in MANUAL_ASSETS or spec.group_name not in (
        *CHEAP_GROUPS,
        *EXPENSIVE_GROUPS,
    ):
        return spec
    condition = (
        dg.AutomationCondition.eager() if spec.group_name in CHEAP_GROUPS else expensive_condition()
    )
    return spec.replace_attributes(automation_condition=condition)


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates every condition; running as soon as the daemon starts.

    It evaluates every ``MEDTOK_AUTOMATION_INTERVAL_S`` seconds (default 30): the crons above decide
    when anything runs, this only bounds how late after a tick it is noticed.
    """
    return dg.AutomationConditionSensorDefinition(
        "medtok_automation",
        target=dg.AssetSelection.all(include_sources=True),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=int(os.environ.get("MEDTOK_AUTOMATION_INTERVAL_S", "30")),
    )
