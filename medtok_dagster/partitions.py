"""How assets are partitioned: by tokenizer variant, LoRA profile and general corpus.

Shared by every asset module (so no asset module imports another) and by the demo.
"""

import dagster as dg

from medtok_dagster.core.training import PROFILES
from medtok_dagster.core.variants import VARIANTS

CORPORA_SOURCE = "korean_corpora"
"""The observed raw asset with one partition per general corpus directory."""

variant_partitions = dg.StaticPartitionsDefinition(list(VARIANTS))
profile_partitions = dg.StaticPartitionsDefinition(list(PROFILES))
model_partitions = dg.MultiPartitionsDefinition(
    {"variant": variant_partitions, "profile": profile_partitions}
)
BY_VARIANT = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="variant")
"""A variant × profile stage reads the variant's partition of a per-variant stage."""


def corpus_partitions(corpora: list[str]) -> dg.StaticPartitionsDefinition:
    """One partition per general corpus directory (shared by the raw asset and its sample)."""
    return dg.StaticPartitionsDefinition(corpora)
