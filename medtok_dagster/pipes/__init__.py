"""External processes launched through Dagster Pipes (they import core and dagster_pipes, never dagster)."""
