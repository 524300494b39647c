"""Run configuration shared by several asset modules."""

import dagster as dg


class InputConfig(dg.Config):
    """How strictly raw files are read."""

    lenient: bool = False
    """Skip and count bad records instead of failing on the first one (file and line in metadata)."""
