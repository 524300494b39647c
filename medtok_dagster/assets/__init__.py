"""The thin Dagster layer: one module per asset group, each asset a short read → core → report."""
