"""`stockpipe transform`: dbt build and docs on the configured warehouse (contract 3).

dbt runs in this process through `dbtRunner`, on the project in the repo's `dbt/`
folder with the profiles beside it. The profiles read everything from the
environment, so `transform` exports stockpipe's settings (including values that
came from `.env`) for the duration of the run. Stale sources only warn: old or
paused history never fails a transform; a failing model or test does, naming it.
"""

from __future__ import annotations

import gc
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from flows.errors import StockpipeError
from flows.settings import Settings, load_settings

DBT_PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt"
_FAILED = {"error", "fail", "runtime error"}


@dataclass(frozen=True)
class TransformResult:
    """What one `stockpipe transform` did, and where dbt put its artifacts."""

    target: str
    target_path: Path
    build_seconds: float
    docs_seconds: float
    node_statuses: dict[str, str] = field(default_factory=dict)
    stale_sources: list[str] = field(default_factory=list)

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


def _failures(outcome: Any) -> list[str]:
    lines = []
    for result in getattr(outcome.result, "results", None) or []:
        if str(result.status) in _FAILED:
            message = " ".join(str(result.message or "").split())[:500]
            lines.append(f"{result.node.unique_id} ({result.status}): {message}")
    return lines


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
    """Where dbt writes its artifacts (STOCKPIPE_DBT_TARGET_PATH, default dbt/target)."""
    return (settings.dbt_target_path or DBT_PROJECT_DIR / "target").expanduser().resolve()


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


def transform(settings: Settings, *, select: str | None = None) -> TransformResult:
    """Check source freshness, `dbt build` (optionally only `select`), then `dbt docs generate`.

    Raises `StockpipeError` naming every failing model or test. Stale sources are
    reported in `TransformResult.stale_sources` and never fail the run.
    """
    target_path = dbt_target_path(settings)
    with dbt_session(settings, target_path) as common:
        return _build_and_document(settings, select, target_path, common)


def _build_and_document(
    settings: Settings, select: str | None, target_path: Path, common: list[str]
) -> TransformResult:
    """Freshness (warn only), build, docs: the body of `transform`."""
    freshness = invoke(["source", "freshness"], common)
    stale = [
        f"{r.node.unique_id}: {r.status}"
        for r in getattr(freshness.result, "results", None) or []
        if str(r.status) != "pass"
    ]

    started = time.perf_counter()
    build = invoke(["build", *(["--select", select] if select else [])], common)
    build_seconds = time.perf_counter() - started
    if not build.success:
        failures = _failures(build) or ["see the dbt log above"]
        hint = ""
        if any("bronze" in line and "does not exist" in line for line in failures):
            hint = " (no bronze.bars yet: run `stockpipe load` first)"
        raise StockpipeError(
            f"dbt build failed on target {settings.dbt_target}{hint}: " + "; ".join(failures)
        )
    statuses = {r.node.unique_id: str(r.status) for r in build.result.results}

    started = time.perf_counter()
    docs = invoke(["docs", "generate"], common)
    docs_seconds = time.perf_counter() - started
    if not docs.success:
        raise StockpipeError(f"dbt docs generate failed on target {settings.dbt_target}")

    return TransformResult(
        target=settings.dbt_target,
        target_path=target_path,
        build_seconds=build_seconds,
        docs_seconds=docs_seconds,
        node_statuses=statuses,
        stale_sources=stale,
    )


def transform_command(
    select: Annotated[
        str | None,
        typer.Option("--select", "-s", help="Only these dbt nodes, e.g. 'fct_bars_daily+'."),
    ] = None,
) -> None:
    """Build the silver and gold models (dbt build) and the dbt docs on the configured target."""
    settings = load_settings()
    result = transform(settings, select=select)
    console = Console()
    counts = ", ".join(f"{n} {status}" for status, n in sorted(result.status_counts.items()))
    console.print(
        f"dbt build on {result.target}: {counts} in {result.build_seconds:.1f}s; "
        f"docs in {result.docs_seconds:.1f}s"
    )
    for line in result.stale_sources:
        console.print(f"[yellow]stale source[/]: {line}")
    console.print(f"dbt docs: {result.docs_index}")
