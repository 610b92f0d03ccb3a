"""`stockpipe load`: a thin Typer wrapper over `flows.warehouse.load` (imported when it runs)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from flows.settings import Settings, load_settings

if TYPE_CHECKING:
    from flows.warehouse.loader import LoadSummary


def summary_document(settings: Settings, summary: LoadSummary) -> dict[str, Any]:
    """What `stockpipe load --json` prints: the run's counts, batches and offset gaps."""
    return {
        "warehouse": settings.warehouse,
        "lake": settings.lake_url,
        "nothing_new": summary.nothing_new,
        "files_found": summary.files_found,
        "files_new": summary.files_new,
        "files_loaded": summary.files_loaded,
        "files_unchanged": summary.files_unchanged,
        "files_linked": summary.files_linked,
        "files_left": summary.files_left,
        "rows": summary.rows,
        "seconds": round(summary.seconds, 3),
        "batches": [{**asdict(b), "seconds": round(b.seconds, 3)} for b in summary.loaded],
        "offset_gaps": [
            {k: v for k, v in asdict(g).items() if k != "description"} | {"detail": str(g)}
            for g in summary.gaps
        ],
        "conflicts": [],
    }


def load_command(
    batch_files: Annotated[
        int | None,
        typer.Option(
            "--batch-files",
            min=1,
            help="Files per transaction.",
            show_default="STOCKPIPE_LOAD_BATCH_FILES, 200",
        ),
    ] = None,
    max_batches: Annotated[
        int | None,
        typer.Option(
            "--max-batches",
            min=1,
            help="Batches committed by this run, the rest next run.",
            show_default="STOCKPIPE_LOAD_MAX_BATCHES, 50",
        ),
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            "--since",
            formats=["%Y-%m-%d"],
            help="List the date= partitions from this date on (a backfill of old dates) "
            "instead of from the high-water mark.",
            show_default="the high-water mark",
        ),
    ] = None,
    full_scan: Annotated[
        bool, typer.Option("--full-scan", help="List every date= partition of the lake.")
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar (on stderr).")
    ] = True,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object (files, rows, batches, offset gaps) instead; "
            "no progress bar.",
        ),
    ] = False,
) -> None:
    """Load new lake files into the warehouse (bronze.bars), each file exactly once."""
    settings = load_settings()
    from flows.warehouse import ContentConflict
    from flows.warehouse.loader import load
    from flows.warehouse.metrics import record_load

    started = time.monotonic()
    try:
        summary = load(
            settings,
            batch_files=batch_files,
            max_batches=max_batches,
            since=since.date() if since else None,
            full_scan=full_scan,
            progress=progress and not json_output,
        )
    except ContentConflict as exc:
        record_load(
            settings,
            exc.summary,
            failed=True,
            seconds=time.monotonic() - started,
            conflicts=exc.count,
        )
        if json_output and exc.summary is not None:  # the rest loaded: say what, then fail
            doc = summary_document(settings, exc.summary)
            doc["conflicts"] = [str(exc)]
            typer.echo(json.dumps(doc, indent=2))
        raise
    except BaseException:
        record_load(settings, None, failed=True, seconds=time.monotonic() - started)
        raise
    record_load(settings, summary)
    if json_output:
        typer.echo(json.dumps(summary_document(settings, summary), indent=2))
        return
    target = (
        f"Snowflake {settings.snowflake_account}/{settings.snowflake_database}"
        if settings.warehouse == "snowflake"
        else f"DuckDB {settings.duckdb_path}"
    )
    out = Console(highlight=False)
    if summary.nothing_new:
        out.print(
            f"nothing new to load: all {summary.files_found} file(s) of the partitions listed "
            f"are in {target} already",
            markup=False,
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
            f"({summary.files_found} file(s) in the partitions listed{linked})",
            markup=False,
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
