"""The one command line of stockpipe (contract 4): thin wrappers over library functions.

Every command reads the same settings (environment and optional `.env`); a bad
setting or a missing service ends the command with one clear message.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from flows.errors import StockpipeError
from flows.ingest.command import produce_command
from flows.ops.status import status_command
from flows.report.html import report_command
from flows.stream.run import stream_command
from flows.tooling.bench import bench_command
from flows.tooling.chaos import chaos_command
from flows.tooling.demo import demo_command
from flows.tooling.kafka import kafka_app
from flows.transform.dbt_runner import transform_command
from flows.warehouse.command import load_command

app = typer.Typer(
    name="stockpipe",
    help="Real-time stock ticks -> Kafka -> Bytewax OHLCV bars -> Parquet lake -> warehouse -> dbt marts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("demo")(demo_command)
app.add_typer(kafka_app, name="kafka")
app.command("produce")(produce_command)
app.command("stream")(stream_command)
app.command("load")(load_command)
app.command("transform")(transform_command)
app.command("bench")(bench_command)
app.command("report")(report_command)
app.command("status")(status_command)
app.command("chaos")(chaos_command)

err = Console(stderr=True)


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except StockpipeError as exc:
        err.print(f"[bold red]stockpipe:[/] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("stockpipe: interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
