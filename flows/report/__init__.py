"""The HTML report of the gold marts (`stockpipe report`, the stockpipe_publish DAG)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flows.settings import Settings


def unsupported(settings: Settings) -> str | None:
    """Why the report cannot be built on the configured warehouse, or None."""
    if settings.warehouse == "snowflake":
        return (
            "stockpipe report reads the DuckDB warehouse; STOCKPIPE_WAREHOUSE=snowflake "
            "is not supported by the report yet"
        )
    return None
