"""`stockpipe demo`: the whole pipeline on embedded defaults, in a few minutes.

Stages: the local Kafka broker; the Bytewax worker (`stockpipe stream`,
started first so it streams live); three months of simulated history, then a
full 6.5-hour regular session for the symbols, time-compressed, with
duplicates, out-of-order, late and malformed ticks injected (or live Finnhub
trades with `--source finnhub`); the `stockpipe_load` Airflow DAG in-process
(load, dbt build as a task group, source freshness); dbt docs; the report.

Everything lives under `data/demo/` and a fresh topic per run, so a second run
starts clean. Ctrl-C stops every process the demo started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from flows.assets import asset_dir
from flows.errors import StockpipeError
from flows.settings import Settings, load_settings, parse_duration

DEMO_TOPIC_PREFIX = "stockpipe.demo."
SESSION_SECONDS = 6.5 * 3600
console = Console()


@dataclass
class DemoPaths:
    root: Path

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def recovery(self) -> Path:
        return self.root / "recovery"

    @property
    def dbt_target(self) -> Path:
        return self.root / "dbt"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def report(self) -> Path:
        return self.root / "report.html"


def last_session(today: date | None = None) -> tuple[datetime, datetime]:
    """Open and close (UTC) of the last complete NYSE regular session before today."""
    import exchange_calendars as xcals

    cal = xcals.get_calendar("XNYS")
    today = today or datetime.now(UTC).date()
    sessions = cal.sessions_in_range(today - timedelta(days=14), today - timedelta(days=1))
    session = sessions[-1]
    return cal.session_open(session).to_pydatetime(), cal.session_close(session).to_pydatetime()


def demo_settings(base: Settings, paths: DemoPaths, topic: str) -> Settings:
    return base.model_copy(
        update={
            "topic": topic,
            "lake_url": str(paths.lake),
            "warehouse": f"duckdb:///{paths.warehouse}",
            "recovery_dir": paths.recovery,
            "dbt_target_path": paths.dbt_target,
            "report_path": paths.report,
            "flush_interval": 3.0,
            "epoch_interval": 2.0,
        }
    )


class Children:
    """Processes the demo started, so Ctrl-C (or a failure) stops every one of them."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, settings: Settings, *args: str, log: Path) -> subprocess.Popen:
        env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait(proc: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        raise StockpipeError(f"{what} did not finish in {timeout:.0f}s (log: {log})") from None
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise StockpipeError(f"{what} failed with exit code {code} (log: {log}):\n{tail}")


def _drop_old_demo_topics(settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_config())
    old = [t for t in admin.list_topics(timeout=10).topics if t.startswith(DEMO_TOPIC_PREFIX)]
    if old:
        for future in admin.delete_topics(old, operation_timeout=30).values():
            future.result(timeout=30)


def run_load_dag(settings: Settings, airflow_home: Path, log: Path) -> None:
    """The `stockpipe_load` DAG, in-process in a child Python (`dag.test()`, SQLite metadata)."""
    env = {
        **os.environ,
        **settings.to_env(),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(asset_dir("dags")),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    airflow_home.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        migrate = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        if migrate.returncode != 0:
            raise StockpipeError(f"airflow db migrate failed (log: {log})")
        run = subprocess.run(
            [sys.executable, "-m", "flows.transform.run_dag", "stockpipe_load"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if run.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise StockpipeError(f"the stockpipe_load DAG run failed (log: {log}):\n{tail}")


def run_demo(
    settings: Settings,
    *,
    source: str = "sim",
    history_days: int = 90,
    session_wall_seconds: float = 120.0,
    live_minutes: float = 10.0,
) -> DemoPaths:
    from flows.tooling import kafka as kafka_local

    paths = DemoPaths(Path("data", "demo").resolve())
    if paths.root.exists():
        shutil.rmtree(paths.root)
    paths.root.mkdir(parents=True)
    logs = paths.root / "logs"
    topic = f"{DEMO_TOPIC_PREFIX}{datetime.now(UTC):%Y%m%d%H%M%S}.{uuid.uuid4().hex[:6]}"
    cfg = demo_settings(settings, paths, topic)
    children = Children()
    started_broker = False
    t_start = time.monotonic()

    def stage(text: str) -> None:
        console.print(f"[bold cyan]▶[/] {text}  [dim](+{time.monotonic() - t_start:.0f}s)[/]")

    try:
        stage(f"Kafka at {cfg.kafka_bootstrap_servers}")
        with console.status("starting the local Apache Kafka broker…"):
            started_broker = kafka_local.start(cfg)
            _drop_old_demo_topics(cfg)
            from flows.ingest import ensure_topics

            ensure_topics(cfg)
        console.print("  broker " + ("started" if started_broker else "already running"))

        stage("Bytewax worker (stockpipe stream), streaming as ticks arrive")
        stream = children.start(cfg, "stream", "--exit-when-idle", "20", log=logs / "stream.log")

        session_open, _session_close = last_session()
        history_start = session_open - timedelta(days=history_days)
        if source == "finnhub":
            stage(f"{history_days} days of simulated history before today")
            with console.status("producing history as fast as possible…"):
                hist = children.start(
                    cfg,
                    "produce", "--source", "sim", "--seed", "7", "--intensity", "0.01",
                    "--start", history_start.isoformat(), "--as-fast-as-possible",
                    "--duration", f"{(session_open - history_start).total_seconds():.0f}s",
                    log=logs / "produce-history.log",
                )  # fmt: skip
                _wait(hist, "producing history", logs / "produce-history.log", 900)
            stage(f"live Finnhub trades for {live_minutes:g} minutes")
            live = children.start(
                cfg, "produce", "--source", "finnhub",
                log=logs / "produce-live.log",
            )  # fmt: skip
            time.sleep(live_minutes * 60)
            live.terminate()
            _wait(live, "the Finnhub producer", logs / "produce-live.log", 60)
        else:
            speed = SESSION_SECONDS / session_wall_seconds
            stage(
                f"{history_days} days of simulated history as fast as possible, then the "
                f"{session_open:%Y-%m-%d} session 09:30–16:00 ET {speed:.0f}× compressed, on one "
                "price path (with duplicates, out-of-order, late, too-late and bad ticks)"
            )
            with console.status("producing; the worker writes bars as it goes…"):
                live = children.start(
                    cfg,
                    "produce", "--source", "sim", "--seed", "42",
                    "--warmup-from", history_start.isoformat(), "--warmup-intensity", "0.01",
                    "--start", session_open.isoformat(), "--duration", f"{SESSION_SECONDS:.0f}s",
                    "--speed", f"{speed:.1f}",
                    "--duplicates", "0.01", "--out-of-order", "0.01", "--late", "0.002",
                    "--too-late", "0.0005", "--bad", "0.001",
                    log=logs / "produce.log",
                )  # fmt: skip
                _wait(live, "producing ticks", logs / "produce.log", 3600)

        with console.status("the worker emits the last open windows and flushes its files…"):
            _wait(stream, "the Bytewax worker", logs / "stream.log", 600)
        bar_files = sorted(paths.lake.rglob("*.parquet"))
        console.print(f"  {len(bar_files)} Parquet files in {paths.lake}")

        stage("Airflow: the stockpipe_load DAG in-process (load → dbt build → freshness)")
        with console.status("airflow db migrate, then dag.test()…"):
            run_load_dag(cfg, paths.airflow_home, logs / "airflow.log")

        stage("dbt build and dbt docs generate")
        from flows.transform.dbt_runner import transform

        with console.status("dbt…"):
            transform(cfg)

        stage("the report")
        from flows.report.html import build_report

        with console.status("charts…"):
            report = build_report(cfg)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping every process the demo started[/]")
        children.stop_all()
        if started_broker:
            kafka_local.stop(cfg)
        raise
    except BaseException:
        children.stop_all()
        raise

    console.print()
    console.print(f"[bold green]Done in {time.monotonic() - t_start:.0f}s.[/]")
    console.print(f"  report:     [bold]{report}[/]  (open it in a browser; it needs no network)")
    console.print(f"  dbt docs:   [bold]{paths.dbt_target / 'index.html'}[/]  or")
    console.print(
        f"              STOCKPIPE_DBT_TARGET_PATH={paths.dbt_target} .venv/bin/dbt docs serve "
        f"--project-dir dbt --profiles-dir dbt --target-path {paths.dbt_target}"
    )
    console.print(f"  warehouse:  {paths.warehouse}")
    console.print(
        '              .venv/bin/python -c "import duckdb; print(duckdb.connect('
        f"'{paths.warehouse}', read_only=True).sql('select * from gold.mart_trend_daily "
        "order by trade_date desc limit 8'))\""
    )
    console.print(f"  lake:       {paths.lake}    logs: {logs}")
    if started_broker:
        console.print("  the Kafka broker keeps running: `stockpipe kafka stop` stops it")
    return paths


class DemoSource(StrEnum):
    sim = "sim"
    finnhub = "finnhub"


def demo_command(
    source: Annotated[
        DemoSource | None,
        typer.Option(
            help="Where the ticks come from: the simulator or live Finnhub trades.",
            show_default="finnhub when FINNHUB_API_KEY is set, else sim",
        ),
    ] = None,
    history_days: Annotated[int, typer.Option(min=30, max=730, help="Days of history.")] = 90,
    session: Annotated[
        str,
        typer.Option(
            "--session",
            "--session-seconds",
            help="Wall-clock time to play the 6.5-hour session in (a duration, at least 10s).",
        ),
    ] = "2m",
    live_minutes: Annotated[
        float, typer.Option(min=1, help="With --source finnhub: minutes of live trades.")
    ] = 10.0,
) -> None:
    """The whole pipeline on embedded defaults, with progress; ends with where everything is."""
    settings = load_settings()
    chosen = source.value if source else ("finnhub" if settings.finnhub_api_key else "sim")
    try:
        session_seconds = parse_duration(session)
    except ValueError as exc:
        raise StockpipeError(f"--session: {exc}") from None
    if session_seconds < 10:
        raise StockpipeError(f"--session must be at least 10s, got {session!r}")
    run_demo(
        settings,
        source=chosen,
        history_days=history_days,
        session_wall_seconds=session_seconds,
        live_minutes=live_minutes,
    )
