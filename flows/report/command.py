"""`stockpipe report`: the command, apart from the report's libraries (plotly, pandas).

Its `--help` loads none of them; `flows.report.html` is imported when it runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from flows.settings import load_settings


def report_command(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where to write the HTML.",
            show_default="STOCKPIPE_REPORT_PATH, ./reports/stockpipe.html",
        ),
    ] = None,
) -> None:
    """Write the HTML report: candlesticks, trend, volatility, correlations, data quality."""
    from flows.report.html import build_report

    settings = load_settings()
    started = time.perf_counter()
    path = build_report(settings, out_path=out)
    size_mb = path.stat().st_size / 1e6
    Console(highlight=False).print(
        f"report: {path} ({size_mb:.1f} MB, {time.perf_counter() - started:.1f}s) — "
        "open it in any browser, no network needed"
    )
