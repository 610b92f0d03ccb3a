"""`stockpipe load`: new lake files into the warehouse (DuckDB or Snowflake), exactly once.

summary = load(settings)                      # what is new, in bounded batches
for batch in chunks(pending_files(settings)): # or, as the Airflow DAG does it
    load_files(settings, batch)

The names below are imported on first use, so `stockpipe load --help` (which
imports `flows.warehouse.command`) loads no Arrow, DuckDB or Snowflake code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ContentConflict": "base",
    "LakeFile": "base",
    "LoadError": "base",
    "LoadResult": "base",
    "Warehouse": "base",
    "LoadSummary": "loader",
    "list_new_candidates": "loader",
    "load": "loader",
    "load_files": "loader",
    "open_warehouse": "loader",
    "pending_files": "loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
