"""Helpers that turn core results into Dagster metadata: markdown tables, inline plots, skip counts."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import dagster as dg
import pandas as pd

from medtok_dagster.core.io import SkipReport

PREVIEW_ROWS = 15


def md_table(frame: pd.DataFrame, rows: int = PREVIEW_ROWS) -> dg.MetadataValue:
    """A markdown preview of the first ``rows`` rows (strings escaped for pipes)."""
    head = frame.head(rows).copy()
    for column in head.columns:
        if head[column].dtype == object:
            head[column] = head[column].map(lambda v: str(v).replace("|", "\\|").replace("\n", " "))
    return dg.MetadataValue.md(head.to_markdown(index=False))


def md_counts(
    counts: dict[str, int], key: str = "reason", value: str = "count"
) -> dg.MetadataValue:
    """A two-column markdown table of counts."""
    return md_table(
        pd.DataFrame({key: list(counts), value: list(counts.values())}), rows=len(counts) or 1
    )


def skip_metadata(skips: SkipReport) -> dict[str, dg.MetadataValue]:
    """What a lenient read skipped: the total, counts by reason, and the first locations."""
    meta: dict[str, dg.MetadataValue] = {"skipped_records": dg.MetadataValue.int(skips.total)}
    if skips.total:
        meta["skipped_by_reason"] = md_counts(skips.as_dict())
        meta["skipped_examples"] = dg.MetadataValue.md(
            "\n".join(f"- `{e}`" for e in skips.examples)
        )
    return meta


def md_plot(
    draw: Callable[[object], None], width: float = 6.0, height: float = 3.5
) -> dg.MetadataValue:
    """Render a matplotlib drawing function into an inline PNG markdown image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(width, height))
    try:
        draw(axes)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
    finally:
        plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![plot](data:image/png;base64,{encoded})")
