"""`stockpipe load`: a thin Typer wrapper over `flows.warehouse.load` (imported when it runs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console

from flows.settings import load_settings


def load_command(
    batch_files: Annotated[
        int | None,
        typer.Option(
            "--batch-files",
            min=1,
            help="Files per transaction [default: STOCKPIPE_LOAD_BATCH_FILES].",
        ),
    ] = None,
    max_batches: Annotated[
        int | None,
        typer.Option(
            "--max-batches",
            min=1,
            help="Batches committed by this run, the rest next run [default: STOCKPIPE_LOAD_MAX_BATCHES].",
        ),
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            "--since",
            formats=["%Y-%m-%d"],
            help="List the date= partitions from this date on (a backfill of old dates) "
            "instead of from the high-water mark.",
        ),
    ] = None,
    full_scan: Annotated[
        bool, typer.Option("--full-scan", help="List every date= partition of the lake.")
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
) -> None:
    """Load new lake files into the warehouse (bronze.bars), each file exactly once."""
    settings = load_settings()
    from flows.warehouse.loader import load

    summary = load(
        settings,
        batch_files=batch_files,
        max_batches=max_batches,
        since=since.date() if since else None,
        full_scan=full_scan,
        progress=progress,
    )
    target = (
        f"Snowflake {settings.snowflake_account}/{settings.snowflake_database}"
        if settings.warehouse == "snowflake"
        else f"DuckDB {settings.duckdb_path}"
    )
    out = Console(highlight=False)
    if summary.nothing_new:
        out.print(
            f"nothing new to load: all {summary.files_found} file(s) of the partitions listed "
            f"are in {target} already"
        )
    else:
        linked = (
            f", {summary.files_linked} more found in older partitions by their links"
            if summary.files_linked
            else ""
        )
        out.print(
            f"loaded {summary.files_loaded} file(s), {summary.rows} row(s) in {summary.batches} "
            f"batch(es) into {target} in {summary.seconds:.1f}s "
            f"({summary.files_found} file(s) in the partitions listed{linked})"
        )
    if summary.files_left:
        out.print(f"{summary.files_left} new file(s) left for the next run (--max-batches)")
    for gap in summary.gaps:
        out.print(f"offset gap: {gap}", markup=False)
    if summary.gaps:
        out.print(
            f"{len(summary.gaps)} file(s) named by their partition's chain are not in the lake: "
            "see 'Offset gaps' in docs/operations.md",
            markup=False,
        )
