"""The one command line of stockpipe (contract 4): thin wrappers over library functions.

Every command reads the same settings (environment and optional `.env`); a bad
setting or a missing service ends the command with one clear message.

Commands are imported only when they run (or show their own `--help`), so
`stockpipe --help` loads no stage's libraries, and a command whose extra is
not installed says which extra to install instead of failing on an import.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from flows.errors import StockpipeError


@dataclass(frozen=True)
class Entry:
    """Where a command lives, its one-line help, and the extras it needs."""

    target: str  # "module:attribute": a Typer command function, or a Typer app (a group)
    help: str
    extras: tuple[str, ...] = ()


COMMANDS: dict[str, Entry] = {
    "demo": Entry(
        "flows.tooling.demo:demo_command",
        "The whole pipeline on embedded defaults, with progress; ends with the report.",
        ("stream", "warehouse", "airflow", "report"),
    ),
    "kafka": Entry("flows.tooling.kafka:kafka_app", "The local Apache Kafka broker."),
    "produce": Entry("flows.ingest.command:produce_command", "Ticks into Kafka."),
    "backfill-outages": Entry(
        "flows.ingest.backfill:backfill_command",
        "Fetch again through Finnhub's REST API what the outage ledger lists as missing.",
    ),
    "stream": Entry(
        "flows.stream.run:stream_command", "The Bytewax dataflow, with recovery.", ("stream",)
    ),
    "load": Entry(
        "flows.warehouse.command:load_command",
        "New lake files into the warehouse, exactly once.",
        ("warehouse",),
    ),
    "transform": Entry(
        "flows.transform.dbt_runner:transform_command",
        "dbt build (and docs) on the configured target.",
        ("warehouse",),
    ),
    "load-outages": Entry(
        "flows.warehouse.outages:load_outages_command",
        "The outage ledger into the warehouse (bronze.outages).",
        ("warehouse",),
    ),
    "fetch-splits": Entry(
        "flows.warehouse.splits:fetch_splits_command",
        "Stock splits from Finnhub's REST API into the warehouse (bronze.splits).",
        ("warehouse",),
    ),
    "report": Entry("flows.report.command:report_command", "The HTML report.", ("report",)),
    "status": Entry(
        "flows.ops.status:status_command",
        "Where every part stands.",
        ("stream", "warehouse"),
    ),
    "dlq": Entry(
        "flows.ops.dlq:dlq_command",
        "The dead-letter topic by reason, with samples and their source offsets.",
    ),
    "bench": Entry("flows.tooling.bench:bench_command", "The stream benchmark.", ("bench",)),
    "chaos": Entry(
        "flows.tooling.chaos:chaos_command",
        "The fault campaign: kills, broker restarts and store outages.",
        ("bench",),
    ),
}

# Third-party modules that come with exactly one extra: a command that fails to import
# one names that extra (a Snowflake load without [snowflake] says so, not [warehouse]).
# A module several extras bring (duckdb, pyarrow) names the command's own extras.
MODULE_EXTRAS: dict[str, str] = {
    "bytewax": "stream",
    "msgspec": "stream",
    "xxhash": "stream",
    "dbt": "warehouse",
    "yaml": "warehouse",
    "snowflake": "snowflake",
    "cryptography": "snowflake",
    "airflow": "airflow",
    "cosmos": "airflow",
    "plotly": "report",
    "pandas": "report",
    "numpy": "report",
    "jinja2": "report",
    "markupsafe": "report",
    "exchange_calendars": "report",
    "quixstreams": "bench",
    "polars": "bench",
    "moto": "bench",
    "boto3": "bench",
}


# Extras that bring others with them (pyproject.toml: bench = stockpipe[stream], ...).
INCLUDES: dict[str, tuple[str, ...]] = {
    "bench": ("stream",),
    "snowflake": ("warehouse",),
    "airflow": ("warehouse",),
}


class MissingExtra(StockpipeError):
    """A command needs a library of an extra that is not installed."""

    def __init__(self, command: str, module: str, extras: tuple[str, ...]):
        names = ",".join(extras)
        super().__init__(
            f"stockpipe {command} needs the [{names}] extra (the module {module!r} is not "
            f"installed): pip install 'stockpipe[{names}]'"
        )


def missing_extra(command: str, exc: ModuleNotFoundError) -> MissingExtra | None:
    """The extra behind a failed import, or None when the module is not one of ours."""
    module = (exc.name or "").split(".")[0]
    if module in MODULE_EXTRAS:
        return MissingExtra(command, module, (MODULE_EXTRAS[module],))
    if module and module != "flows" and COMMANDS.get(command, Entry("", "")).extras:
        return MissingExtra(command, module, COMMANDS[command].extras)
    return None


def check_extras(command: str) -> None:
    """Stop before any work when a library of the command's extras is not installed."""
    extras = COMMANDS[command].extras
    for extra in {*extras, *(e for x in extras for e in INCLUDES.get(x, ()))}:
        for module in (m for m, e in MODULE_EXTRAS.items() if e == extra):
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise MissingExtra(command, module, COMMANDS[command].extras)


def _checked(name: str, callback: Any) -> Any:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        check_extras(name)
        return callback(*args, **kwargs)

    return run


def _load(name: str) -> Any:
    entry = COMMANDS[name]
    module, _, attribute = entry.target.partition(":")
    try:
        target: Any = getattr(importlib.import_module(module), attribute)
    except ModuleNotFoundError as exc:
        raise missing_extra(name, exc) or exc from None
    if isinstance(target, typer.Typer):
        command = typer.main.get_command(target)
    else:
        single = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
        single.command(name, help=entry.help if not target.__doc__ else None)(target)
        command = typer.main.get_command(single)
    command.name = name
    if command.callback is not None and entry.extras:  # runs after --help has been handled
        command.callback = _checked(name, command.callback)
    return command


class LazyGroup(TyperGroup):
    """A group that imports a command only when it runs or shows its own help."""

    _listing = False  # while the group's own help lists its commands

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if self._listing:  # the listing needs only the one-line help
            return TyperCommand(name=cmd_name, help=COMMANDS[cmd_name].help)
        return _load(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            raise missing_extra(ctx.invoked_subcommand or "", exc) or exc from None


_typer_app = typer.Typer(
    cls=LazyGroup,
    name="stockpipe",
    help="Real-time stock ticks -> Kafka -> Bytewax OHLCV bars -> Parquet lake -> warehouse -> dbt marts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"stockpipe {version('stockpipe')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("stockpipe (not installed)")
        raise typer.Exit(0)


@_typer_app.callback()
def _root(
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            "--log-level",
            help="DEBUG, INFO, WARNING or ERROR (the processes a command starts inherit it). "
            "STOCKPIPE_LOG_FORMAT=json logs one JSON object per line.",
            case_sensitive=False,
            show_default="STOCKPIPE_LOG_LEVEL, INFO",
        ),
    ] = None,
    _show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    if log_level is not None:
        os.environ["STOCKPIPE_LOG_LEVEL"] = log_level.value


app = typer.main.get_command(_typer_app)


def main() -> None:
    """Console-script entry point: user errors become one line on stderr."""
    try:
        app.main(prog_name="stockpipe")
    except MissingExtra as exc:
        print(f"stockpipe: {exc}", file=sys.stderr)
        sys.exit(1)
    except StockpipeError as exc:
        _error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("stockpipe: interrupted", file=sys.stderr)
        sys.exit(130)


def _error(exc: StockpipeError) -> None:
    from rich.console import Console
    from rich.markup import escape

    # The message is text, not markup ("[default: x]" would vanish), on one line however wide.
    Console(stderr=True).print(
        f"[bold red]stockpipe:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
    )


if __name__ == "__main__":
    main()
