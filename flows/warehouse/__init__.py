"""`stockpipe load`: new lake files into the warehouse (DuckDB or Snowflake), exactly once.

summary = load(settings)                      # what is new, in bounded batches
for batch in chunks(pending_files(settings)): # or, as the Airflow DAG does it
    load_files(settings, batch)
"""

from flows.warehouse.base import ContentConflict, LakeFile, LoadError, LoadResult, Warehouse
from flows.warehouse.loader import (
    LoadSummary,
    list_new_candidates,
    load,
    load_files,
    open_warehouse,
    pending_files,
)

__all__ = [
    "ContentConflict",
    "LakeFile",
    "LoadError",
    "LoadResult",
    "LoadSummary",
    "Warehouse",
    "list_new_candidates",
    "load",
    "load_files",
    "open_warehouse",
    "pending_files",
]
