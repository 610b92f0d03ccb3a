"""`stockpipe load`: new lake files into the warehouse (DuckDB or Snowflake), exactly once.

summary = load(settings)                      # everything new, in bounded batches
for batch in chunks(pending_files(settings)): # or, as the Airflow DAG does it
    load_files(settings, batch)
"""

from flows.warehouse.base import LakeFile, LoadError, LoadResult, Warehouse
from flows.warehouse.loader import (
    LoadSummary,
    list_lake_files,
    load,
    load_files,
    open_warehouse,
    pending_files,
)

__all__ = [
    "LakeFile",
    "LoadError",
    "LoadResult",
    "LoadSummary",
    "Warehouse",
    "list_lake_files",
    "load",
    "load_files",
    "open_warehouse",
    "pending_files",
]
