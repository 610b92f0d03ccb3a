"""`stockpipe load`: a thin Typer wrapper over `flows.warehouse.load`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from flows.settings import load_settings
from flows.warehouse.loader import load


def load_command(
    batch_files: Annotated[
        int | None,
        typer.Option(
            "--batch-files",
            min=1,
            help="Files per transaction [default: STOCKPIPE_LOAD_BATCH_FILES].",
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
) -> None:
    """Load new lake files into the warehouse (bronze.bars), each file exactly once."""
    settings = load_settings()
    summary = load(settings, batch_files=batch_files, progress=progress)
    target = (
        f"Snowflake {settings.snowflake_account}/{settings.snowflake_database}"
        if settings.warehouse == "snowflake"
        else f"DuckDB {settings.duckdb_path}"
    )
    out = Console(highlight=False)
    if summary.nothing_new:
        out.print(
            f"nothing new to load: all {summary.files_found} lake file(s) are in {target} already"
        )
        return
    out.print(
        f"loaded {summary.files_loaded} file(s), {summary.rows} row(s) in {summary.batches} "
        f"batch(es) into {target} in {summary.seconds:.1f}s "
        f"({summary.files_found} file(s) in the lake)"
    )
