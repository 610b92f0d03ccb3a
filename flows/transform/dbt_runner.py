"""`stockpipe transform`: dbt build and docs on the configured warehouse (contract 3).

dbt runs in this process through `dbtRunner`, on the project in the repo's `dbt/`
folder with the profiles beside it. The profiles read everything from the
environment, so `transform` exports stockpipe's settings (including values that
came from `.env`) for the duration of the run. Stale sources only warn: old or
paused history never fails a transform; a failing model or test does, naming it.

Freshness is measured on event time (the newest bar's `window_end`) and counts
only trading time: the NYSE sessions of the calendar seed for plain tickers, the
wall clock for 24/7 `X:Y` crypto pairs. A weekend, a holiday or a night is never
"stale"; a feed silent for more than the source's `warn_after` of trading time is.
(`dbt source freshness` alone can only compare a timestamp with now.)
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import datetime as dt
import functools
import gc
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from flows.assets import BUNDLED_DIR, asset_dir
from flows.errors import StockpipeError
from flows.settings import Settings, load_settings

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = asset_dir("dbt")
_FAILED = {"error", "fail", "runtime error"}


@dataclass(frozen=True)
class NodeResult:
    """One dbt node `dbt build` ran: a model, seed, snapshot or test."""

    unique_id: str
    resource_type: str
    status: str  # success, pass, no-op, error, fail, warn, skipped, ...
    execution_time_s: float
    failures: int | None  # a test's failing rows
    message: str | None


@dataclass(frozen=True)
class TransformResult:
    """What one `stockpipe transform` did, and where dbt put its artifacts."""

    target: str
    target_path: Path
    build_seconds: float
    docs_seconds: float | None  # None when the build failed (docs are not generated then)
    node_statuses: dict[str, str] = field(default_factory=dict)
    stale_sources: list[str] = field(default_factory=list)
    freshness: list[SourceFreshness] = field(default_factory=list)
    select: str | None = None
    nodes: list[NodeResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # failing nodes, one line each

    @property
    def ok(self) -> bool:
        return not self.failures and self.docs_seconds is not None

    @property
    def status_counts(self) -> Counter[str]:
        return Counter(self.node_statuses.values())

    @property
    def docs_index(self) -> Path:
        """The dbt docs site (open it with `dbt docs serve`, or as a static file)."""
        return self.target_path / "index.html"


def dbt_environment(settings: Settings) -> dict[str, str]:
    """The variables `dbt/profiles.yml` reads, from the settings (secrets stay in memory)."""
    env = {
        "STOCKPIPE_DBT_TARGET": settings.dbt_target,
        "STOCKPIPE_BAR_SECONDS": str(settings.bar_seconds),
        # dbt colours its log whatever it writes to: only on a terminal (or when asked)
        "DBT_USE_COLORS": os.environ.get("DBT_USE_COLORS")
        or ("true" if sys.stdout.isatty() and sys.stderr.isatty() else "false"),
    }
    if settings.dbt_target == "duckdb":
        path = settings.duckdb_path.expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        env["STOCKPIPE_DUCKDB_PATH"] = str(path)
    optional: dict[str, Any] = {
        "SNOWFLAKE_ACCOUNT": settings.snowflake_account,
        "SNOWFLAKE_USER": settings.snowflake_user,
        "SNOWFLAKE_PASSWORD": settings.snowflake_password,
        "SNOWFLAKE_PRIVATE_KEY_PATH": settings.snowflake_private_key_path,
        "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": settings.snowflake_private_key_passphrase,
        "SNOWFLAKE_ROLE": settings.snowflake_role,
        # dbt's own role (infra/snowflake/setup.sql's transformer), not the loader's;
        # unset, it falls back to SNOWFLAKE_ROLE as dbt/profiles.yml does.
        "SNOWFLAKE_TRANSFORM_ROLE": settings.snowflake_transform_role or settings.snowflake_role,
        "SNOWFLAKE_WAREHOUSE": settings.snowflake_warehouse,
        "SNOWFLAKE_DATABASE": settings.snowflake_database,
        "SNOWFLAKE_HOST": settings.snowflake_host,
        "SNOWFLAKE_PORT": settings.snowflake_port,
        "SNOWFLAKE_PROTOCOL": settings.snowflake_protocol,
    }
    for name, value in optional.items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[name] = str(value)
    return env


@contextmanager
def _exported(env: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def invoke(command: list[str], common: list[str]) -> Any:
    """Run one dbt command; raise `StockpipeError` if dbt itself could not run."""
    from dbt.cli.main import dbtRunner

    outcome = dbtRunner().invoke([*command, *common])
    if outcome.exception is not None:
        raise StockpipeError(
            f"dbt {' '.join(command)} could not run: {outcome.exception} "
            f"(project {DBT_PROJECT_DIR})"
        ) from outcome.exception
    return outcome


class TransformFailed(StockpipeError):
    """dbt build failed: the message names every failing node; `result` holds them all."""

    def __init__(self, message: str, result: TransformResult):
        super().__init__(message)
        self.result = result


# A selection criterion that matches nothing is an error, not "Nothing to do".
_STRICT_SELECTION = ["--warn-error-options", '{"error": ["NoNodesForSelectionCriteria"]}']
_NO_MATCH = re.compile(r"The selection criterion '(.*?)' does not match any enabled nodes")


def _nodes(outcome: Any) -> list[NodeResult]:
    nodes = []
    for r in getattr(outcome.result, "results", None) or []:
        message = " ".join(str(r.message).split())[:500] if r.message is not None else None
        nodes.append(
            NodeResult(
                unique_id=r.node.unique_id,
                resource_type=str(getattr(r.node.resource_type, "value", r.node.resource_type)),
                status=str(r.status),
                execution_time_s=round(float(r.execution_time or 0.0), 3),
                failures=None if r.failures is None else int(r.failures),
                message=message,
            )
        )
    return nodes


def _failures(outcome: Any) -> list[str]:
    lines = []
    for result in getattr(outcome.result, "results", None) or []:
        if str(result.status) in _FAILED:
            message = " ".join(str(result.message or "").split())[:500]
            lines.append(f"{result.node.unique_id} ({result.status}): {message}")
    return lines


# ------------------------------------------------------------------ freshness

BARS_SOURCE = "source.stockpipe.bronze.bars"
XNYS = "XNYS"
ALWAYS_OPEN = "24/7"
DEFAULT_STALE_AFTER = dt.timedelta(minutes=30)
_PERIODS = {"minute": "minutes", "hour": "hours", "day": "days"}
# newest event time per calendar, read through dbt so it runs the same on either target
_NEWEST_BARS_SQL = """
select
    case when symbol like '%:%' then '24/7' else 'XNYS' end as calendar_code,
    max(window_end) as newest_window_end
from {{ source('bronze', 'bars') }}
group by 1
"""


@dataclass(frozen=True)
class SourceFreshness:
    """How far behind one calendar's bars of a source are, in trading time."""

    source: str  # dbt unique id, e.g. source.stockpipe.bronze.bars
    calendar: str  # XNYS (plain tickers) or 24/7 (X:Y crypto pairs)
    newest_window_end: dt.datetime  # event time of the newest bar (UTC)
    checked_at: dt.datetime  # the wall clock, when checked (UTC)
    trading_lag: dt.timedelta  # trading time between the two
    stale_after: dt.timedelta

    @property
    def stale(self) -> bool:
        return self.trading_lag > self.stale_after

    @property
    def key(self) -> str:
        """What the alert state is kept under: the source and its calendar."""
        return f"{self.source}[{self.calendar}]"

    def describe(self) -> str:
        state = "stale" if self.stale else "fresh"
        return (
            f"{self.source} ({self.calendar}) is {state}: newest bar ends "
            f"{self.newest_window_end:%Y-%m-%d %H:%M} UTC, "
            f"{_duration(self.trading_lag)} of trading time ago "
            f"(stale after {_duration(self.stale_after)})"
        )


def _duration(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    days, minutes = divmod(minutes, 1440)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m"]
    return " ".join(p for p in parts if p and (p != "0m" or not (days or hours)))


def _as_utc(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:  # a timestamp without zone is UTC in bronze
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


@functools.lru_cache(maxsize=4)
def nyse_sessions(
    seed: Path = DBT_PROJECT_DIR / "seeds" / "xnys_calendar.csv",
) -> tuple[list[dt.datetime], list[dt.datetime], dt.datetime]:
    """Regular NYSE sessions from the calendar seed: opens, closes (UTC, ascending), and
    the end of the seed's last day (after it, every minute counts: never silently fresh)."""
    opens, closes, last_day = [], [], None
    with seed.open(newline="") as fh:
        for row in csv.DictReader(fh):
            last_day = row["calendar_date"]
            if row["is_trading_day"] == "true":
                opens.append(_as_utc(row["market_open_utc"]))
                closes.append(_as_utc(row["market_close_utc"]))
    if last_day is None:
        raise StockpipeError(
            f"the calendar seed {seed} is empty: run python -m flows.transform.calendars"
        )
    end = dt.datetime.combine(dt.date.fromisoformat(last_day), dt.time(0), dt.UTC)
    return opens, closes, end + dt.timedelta(days=1)


def trading_time_between(calendar: str, start: dt.datetime, end: dt.datetime) -> dt.timedelta:
    """Trading time in [start, end): all of it for 24/7, NYSE regular sessions for XNYS."""
    start, end = _as_utc(start), _as_utc(end)
    if end <= start:
        return dt.timedelta(0)
    if calendar != XNYS:
        return end - start
    opens, closes, calendar_end = nyse_sessions()
    total = dt.timedelta(0)
    i = bisect.bisect_right(closes, start)  # the first session closing after `start`
    while i < len(opens) and opens[i] < end:
        total += min(closes[i], end) - max(opens[i], start)
        i += 1
    if end > calendar_end:
        total += end - max(start, calendar_end)
    return total


def stale_after(
    sources_yml: Path = DBT_PROJECT_DIR / "models" / "staging" / "_sources.yml",
) -> dt.timedelta:
    """bronze.bars' `warn_after` from _sources.yml, read as trading time."""
    import yaml

    try:
        config = yaml.safe_load(sources_yml.read_text())
        (bronze,) = [s for s in config["sources"] if s["name"] == "bronze"]
        (bars,) = [t for t in bronze["tables"] if t["name"] == "bars"]
        warn_after = bars["config"]["freshness"]["warn_after"]
        return dt.timedelta(**{_PERIODS[warn_after["period"]]: int(warn_after["count"])})
    except Exception as exc:  # a config we cannot read must not stop the transform
        log.warning(
            "no freshness warn_after in %s (%s): using %s", sources_yml, exc, DEFAULT_STALE_AFTER
        )
        return DEFAULT_STALE_AFTER


def assess_freshness(
    newest: Mapping[str, dt.datetime], now: dt.datetime, limit: dt.timedelta
) -> list[SourceFreshness]:
    """Freshness of bronze.bars per calendar, from each calendar's newest `window_end`."""
    now = _as_utc(now)
    return [
        SourceFreshness(
            source=BARS_SOURCE,
            calendar=calendar,
            newest_window_end=_as_utc(newest_end),
            checked_at=now,
            trading_lag=trading_time_between(calendar, newest_end, now),
            stale_after=limit,
        )
        for calendar, newest_end in sorted(newest.items())
        if newest_end is not None
    ]


def newest_bars(common: list[str]) -> dict[str, dt.datetime]:
    """The newest bar's `window_end` per calendar in bronze.bars (`dbt show`, either target)."""
    outcome = invoke(["show", "--inline", _NEWEST_BARS_SQL, "--limit", "10"], common)
    if not outcome.success:
        raise StockpipeError("; ".join(_failures(outcome)) or "dbt show failed")
    (result,) = outcome.result.results
    table = result.agate_table
    return {str(row[0]): row[1] for row in table.rows if row[1] is not None}


def check_freshness(
    settings: Settings, common: list[str], *, now: dt.datetime | None = None
) -> list[SourceFreshness]:
    """Session-aware freshness of the sources, inside a `dbt_session`. Never raises:
    a check that cannot run (no bronze.bars yet, say) is logged and returns nothing."""
    try:
        newest = newest_bars(common)
    except Exception as exc:
        log.warning("could not check source freshness on %s: %s", settings.dbt_target, exc)
        return []
    results = assess_freshness(newest, now or dt.datetime.now(dt.UTC), stale_after())
    for result in results:
        (log.warning if result.stale else log.info)("%s", result.describe())
    return results


def stale_lines(results: list[SourceFreshness]) -> list[str]:
    """`unique_id: warn` once per stale source (what `dbt source freshness` would say)."""
    return sorted({f"{r.source}: warn" for r in results if r.stale})


def release_duckdb() -> None:
    """Close the DuckDB database dbt-duckdb keeps open for the life of the process.

    Without this, the warehouse file stays locked and later connections from this
    process with other options (the loader, the report, read-only readers) fail.
    """
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    with DuckDBConnectionManager._LOCK:
        env = DuckDBConnectionManager._ENV
        DuckDBConnectionManager._ENV = None
        if env is not None:
            env.close()
    gc.collect()


def dbt_target_path(settings: Settings) -> Path:
    """Where dbt writes its artifacts: STOCKPIPE_DBT_TARGET_PATH, by default `dbt/target` in a
    checkout and `data/dbt-target` (under the working directory) for an installed wheel,
    whose dbt project sits read-only inside the package."""
    default = (
        Path("data", "dbt-target")
        if DBT_PROJECT_DIR.is_relative_to(BUNDLED_DIR)
        else DBT_PROJECT_DIR / "target"
    )
    return (settings.dbt_target_path or default).expanduser().resolve()


@contextmanager
def dbt_session(settings: Settings, target_path: Path) -> Iterator[list[str]]:
    """The profile's variables exported, and the arguments every dbt command takes.

    On DuckDB, the database dbt-duckdb keeps open is released afterwards.
    """
    common = [
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
        "--target",
        settings.dbt_target,
        "--target-path",
        str(target_path),
        "--log-path",
        str(target_path / "logs"),
    ]
    with _exported(dbt_environment(settings)):
        try:
            yield common
        finally:
            if settings.dbt_target == "duckdb":
                release_duckdb()


def transform(
    settings: Settings, *, select: str | None = None, docs: bool = True
) -> TransformResult:
    """Check source freshness, `dbt build` (optionally only `select`), then `dbt docs generate`
    (unless `docs` is false: `docs_seconds` is then None).

    Raises `StockpipeError` naming every failing model or test. Stale sources are
    reported in `TransformResult.stale_sources` and never fail the run.
    """
    if settings.bar_seconds != 60:
        # Staging selects the configured bar size, but silver is a 1-minute grid (gap
        # filling, sessions, every mart above it): other sizes would build wrong marts.
        raise StockpipeError(
            f"STOCKPIPE_BAR_SECONDS={settings.bar_seconds}: the dbt marts are built on "
            "1-minute bars (silver.fct_bars_1m); stream other bar sizes for your own use, "
            "but transform a lake of 60-second bars"
        )
    target_path = dbt_target_path(settings)
    with dbt_session(settings, target_path) as common:
        return _build_and_document(settings, select, target_path, common, docs)


def _build_and_document(
    settings: Settings, select: str | None, target_path: Path, common: list[str], docs: bool
) -> TransformResult:
    """Freshness (warn only), build, docs: the body of `transform`."""
    freshness = check_freshness(settings, common)
    stale = stale_lines(freshness)

    started = time.perf_counter()
    selection = ["--select", select, *_STRICT_SELECTION] if select else []
    try:
        build = invoke(["build", *selection], common)
    except StockpipeError as exc:
        unmatched = _NO_MATCH.search(" ".join(str(exc.__cause__).split())) if select else None
        if unmatched:
            raise StockpipeError(
                f"--select {select!r}: {unmatched[1]!r} matches no model, seed, snapshot, test "
                f"or source of the dbt project {DBT_PROJECT_DIR} "
                "(`dbt ls` there lists them)"
            ) from None
        raise
    build_seconds = time.perf_counter() - started
    nodes = _nodes(build)
    if select and not nodes:  # e.g. only a source: nothing dbt builds
        raise StockpipeError(
            f"--select {select!r} selects no model, seed, snapshot or test to build"
        )
    result = TransformResult(
        target=settings.dbt_target,
        target_path=target_path,
        build_seconds=build_seconds,
        docs_seconds=None,
        node_statuses={n.unique_id: n.status for n in nodes},
        stale_sources=stale,
        freshness=freshness,
        select=select,
        nodes=nodes,
    )
    if not build.success:
        failures = _failures(build) or ["see the dbt log above"]
        hint = ""
        if any("bronze" in line and "does not exist" in line for line in failures):
            hint = " (no bronze.bars yet: run `stockpipe load` first)"
        raise TransformFailed(
            f"dbt build failed on target {settings.dbt_target}{hint}: " + "; ".join(failures),
            replace(result, failures=failures),
        )

    if not docs:
        return result
    return replace(result, docs_seconds=_generate_docs(settings, common))


def result_document(result: TransformResult) -> dict[str, Any]:
    """What `stockpipe transform --json` prints."""
    return {
        "target": result.target,
        "select": result.select,
        "ok": result.ok,
        "build_seconds": round(result.build_seconds, 3),
        "docs_seconds": None if result.docs_seconds is None else round(result.docs_seconds, 3),
        "status_counts": dict(sorted(result.status_counts.items())),
        "nodes": [asdict(n) for n in result.nodes],
        "failures": result.failures,
        "stale_sources": result.stale_sources,
        "freshness": [
            {
                "source": f.source,
                "calendar": f.calendar,
                "newest_window_end": f.newest_window_end.isoformat(),
                "checked_at": f.checked_at.isoformat(),
                "trading_lag_s": f.trading_lag.total_seconds(),
                "stale_after_s": f.stale_after.total_seconds(),
                "stale": f.stale,
            }
            for f in result.freshness
        ],
        "target_path": str(result.target_path),
        "docs_index": str(result.docs_index) if result.docs_seconds is not None else None,
    }


def _generate_docs(settings: Settings, common: list[str]) -> float:
    """`dbt docs generate` (catalog.json and index.html beside the manifest); its seconds."""
    started = time.perf_counter()
    docs = invoke(["docs", "generate"], common)
    if not docs.success:
        raise StockpipeError(f"dbt docs generate failed on target {settings.dbt_target}")
    return time.perf_counter() - started


def generate_docs(settings: Settings) -> Path:
    """The dbt docs of the warehouse as it stands, into the target path; returns that path."""
    target_path = dbt_target_path(settings)
    with dbt_session(settings, target_path) as common:
        _generate_docs(settings, common)
    return target_path


def transform_command(
    select: Annotated[
        str | None,
        typer.Option(
            "--select",
            "-s",
            help="Only these dbt nodes, e.g. 'fct_bars_daily+'; a name that matches "
            "nothing is an error.",
            show_default="every node",
        ),
    ] = None,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object (every node with its status and time, failures, "
            "freshness) instead; dbt's own output goes to stderr.",
        ),
    ] = False,
    docs: Annotated[
        bool,
        typer.Option(
            "--docs/--no-docs",
            help="Generate the dbt docs (lineage, catalog) after a build that succeeded.",
        ),
    ] = True,
) -> None:
    """Build the silver and gold models (dbt build) and the dbt docs on the configured target."""
    from flows.transform.metrics import record_transform

    settings = load_settings()
    with contextlib.redirect_stdout(sys.stderr) if json_output else contextlib.nullcontext():
        try:  # dbt logs to stdout: keep it for the JSON document
            result = transform(settings, select=select, docs=docs)
        except TransformFailed as exc:
            record_transform(settings, exc.result, failed=True)
            if not json_output:
                raise
            failed: TransformFailed | None = exc
        except BaseException:
            record_transform(settings, None, failed=True)
            raise
        else:
            record_transform(settings, result)
            failed = None
    if json_output:
        document = result_document(failed.result if failed else result)
        typer.echo(json.dumps(document, indent=2))
        if failed:
            raise failed
        return
    console = Console()
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.status_counts.items()))
    built = f"dbt build on {result.target}: {counts} in {result.build_seconds:.1f}s"
    docs_took = "" if result.docs_seconds is None else f"; docs in {result.docs_seconds:.1f}s"
    console.print(built + docs_took)
    for line in result.freshness:
        if line.stale:
            console.print(f"[yellow]stale source[/]: {line.describe()}")
    if result.docs_seconds is not None:
        console.print(f"dbt docs: {result.docs_index}")
