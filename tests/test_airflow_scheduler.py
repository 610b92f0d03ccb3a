"""The DAGs under a real Airflow 3 scheduler, as an operator runs them.

`airflow standalone` (scheduler, dag-processor, triggerer, api-server) in a temp
AIRFLOW_HOME with LocalExecutor and parallelism 8, metadata in a private
PostgreSQL 15 cluster started for the test (SQLite only when no PostgreSQL server
or psycopg2 is available here: the reason is printed and warned). stockpipe_load
and stockpipe_backfill are triggered together on a lake of five sessions: both runs
must succeed with no failed task and no retry (no "Could not set lock on file"
between parallel DuckDB tasks: they share the one-slot pool `stockpipe_duckdb`),
and the marts must equal those of a plain `stockpipe load` + `stockpipe transform`
of the same lake into another warehouse.

Nobody runs infra/airflow/pools.sh here (tests/test_dags.py does): the stockpipe
plugin (flows/transform/airflow_plugin.py) must create the pool when the scheduler
starts, and, the pool deleted while the scheduler runs, again when the first of the
two runs starts, before any of their tasks waits on it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import load_helpers
import pytest
from test_report import parse

from flows.settings import load_settings
from flows.transform import orchestration

pytestmark = [pytest.mark.slow, pytest.mark.airflow, pytest.mark.system]  # PostgreSQL

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SYMBOLS = ["AAA", "BBB"]
# Five NYSE sessions (Mon 18 - Fri 22 Nov 2024), 14:30-21:00 UTC.
DAYS = [datetime(2024, 11, day, 14, 30, tzinfo=UTC) for day in (18, 19, 20, 21, 22)]
SESSION_MINUTES = 390
BATCH_FILES = 3  # 10 files: four mapped load tasks per DAG
DAG_IDS = ("stockpipe_load", "stockpipe_backfill")
PUBLISH = "stockpipe_publish"  # not triggered: the marts' Asset events start it
DEADLINE_DAGS_VISIBLE = 600.0
DEADLINE_RUNS = 1800.0
TERMINAL = {"success", "failed"}
POOL = orchestration.DUCKDB_POOL
# the one file of Airflow's plugins folder that makes the plugin reachable without
# re-installing the package (an installed stockpipe brings it through its entry point)
PLUGIN_SHIM = "from flows.transform.airflow_plugin import StockpipePlugin  # noqa: F401\n"
# tasks that open the DuckDB warehouse, hence run in the one-slot pool
WAREHOUSE_TASKS = (
    "find_new_files",
    "find_missing_files",
    "load_batch",
    "source_freshness",
    "generate_docs",
    "build_report",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{command}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


# ------------------------------------------------------------------ PostgreSQL


def _postgres_bin() -> Path | None:
    for version in ("15", "16", "17", "14"):
        folder = Path(f"/usr/lib/postgresql/{version}/bin")
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the `postgres` user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str | None]:
    """A private PostgreSQL cluster on a free loopback port; yields its SQLAlchemy URL.

    Yields None (and warns why) when there is no server binary or no psycopg2, so
    the test falls back to SQLite instead of failing on the machine's set-up.
    """
    bin_dir = _postgres_bin()
    reason = None
    if bin_dir is None:
        reason = "no PostgreSQL server (initdb/pg_ctl) installed"
    else:
        # Airflow's PostgreSQL drivers: psycopg2 (sync) and asyncpg (its async engine)
        missing = [m for m in ("psycopg2", "asyncpg") if importlib.util.find_spec(m) is None]
        if missing:
            reason = f"{' and '.join(missing)} not installed in the venv (apache-airflow[postgres])"
    if reason is None and os.geteuid() == 0 and shutil.which("runuser") is None:
        reason = "running as root without runuser to start PostgreSQL as another user"
    if reason is not None:
        warnings.warn(f"Airflow metadata on SQLite: {reason}", stacklevel=2)
        yield None
        return

    # outside pytest's tmp tree, whose root-only folders the postgres user cannot enter
    root = Path(tempfile.mkdtemp(prefix="stockpipe-pg-"))
    data, sockets, port = root / "data", root / "sock", free_port()
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
    started = False
    try:
        run(
            _as_postgres_user(
                [str(bin_dir / "initdb"), "-D", str(data), "-U", "airflow", "--auth=trust"]
                + ["-E", "UTF8", "--no-sync"]
            ),
            dict(os.environ),
            root,
        )
        options = (
            f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=200"
            " -c fsync=off"
        )
        run(
            _as_postgres_user(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "postgres.log")]
                + ["-o", options, "-w", "-t", "120", "start"]
            ),
            dict(os.environ),
            root,
        )
        started = True
        run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "airflow"]
            + ["airflow"],
            dict(os.environ),
            root,
        )
        yield f"postgresql+psycopg2://airflow@127.0.0.1:{port}/airflow"
    finally:
        if started:
            subprocess.run(
                _as_postgres_user(
                    [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
                ),
                cwd=root,
                capture_output=True,
                timeout=120,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ Airflow


@dataclass
class Scheduler:
    env: dict[str, str]
    home: Path
    process: subprocess.Popen
    log: Path

    def engine(self):  # noqa: ANN201 (sqlalchemy is Airflow's, imported lazily)
        from sqlalchemy import create_engine

        return create_engine(self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])

    def query(self, sql: str, **params: object) -> list[tuple]:
        from sqlalchemy import text

        engine = self.engine()
        try:
            with engine.connect() as con:
                return [tuple(row) for row in con.execute(text(sql), params)]
        finally:
            engine.dispose()

    def airflow(self, *args: str, timeout: float = 300) -> str:
        return run([str(VENV_BIN / "airflow"), *args], self.env, self.home, timeout)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""


@contextlib.contextmanager
def airflow_standalone(env: dict[str, str], home: Path) -> Iterator[Scheduler]:
    """`airflow standalone` in its own process group; the whole group is ended afterwards."""
    log = home / "standalone.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(VENV_BIN / "airflow"), "standalone"],
            env=env,
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield Scheduler(env=env, home=home, process=process, log=log)
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group of `process`, then SIGKILL what is left after a grace time."""
    for sig, grace in ((signal.SIGTERM, 60.0), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.5)
        if process.poll() is not None:
            # the group may outlive its leader for a moment (task supervisors, gunicorn)
            time.sleep(2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)


def write_sessions(lake: Path) -> int:
    return load_helpers.write_sessions(str(lake), DAYS, SYMBOLS, SESSION_MINUTES)


# the contract-3 columns (the models may add build-time columns, which differ by design)
MART_COLUMNS = {
    "fct_bars_daily": "symbol, trade_date, open, high, low, close, volume, vwap, bar_count",
    "mart_trend_daily": "symbol, trade_date, close, sma_20, sma_50, ema_12, ema_26, macd,"
    " macd_signal, macd_hist, rsi_14, bb_middle_20, bb_upper_20, bb_lower_20, trend_regime",
}


def marts(warehouse: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return {
            table: con.execute(
                f"select {columns} from gold.{table} order by symbol, trade_date"
            ).fetchall()
            for table, columns in MART_COLUMNS.items()
        }


def assert_rows_equal(got: list[tuple], want: list[tuple], table: str) -> None:
    assert len(got) == len(want), (table, len(got), len(want))
    for row, expected in zip(got, want, strict=True):
        assert len(row) == len(expected), table
        for value, other in zip(row, expected, strict=True):
            if isinstance(value, float) and isinstance(other, float):
                assert value == pytest.approx(other, rel=1e-9, abs=1e-12), (table, row, expected)
            else:
                assert value == other, (table, row, expected)


def wait_for(what: str, check, deadline: float, scheduler: Scheduler, every: float = 5.0):  # noqa: ANN001, ANN201
    """Poll `check()` until it returns a truthy value; fail with the Airflow log at the deadline."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result:
            return result
        assert scheduler.process.poll() is None, f"airflow standalone exited:\n{scheduler.tail()}"
        assert time.monotonic() < end, f"timed out waiting for {what}:\n{scheduler.tail()}"
        time.sleep(every)


# ------------------------------------------------------------------ the test


def test_load_and_backfill_together_under_a_real_scheduler_never_retry(tmp_path: Path) -> None:
    started = time.monotonic()
    lake, warehouse, reference = tmp_path / "lake", tmp_path / "wh.duckdb", tmp_path / "ref.duckdb"
    rows = write_sessions(lake)
    home = tmp_path / "airflow_home"
    (home / "plugins").mkdir(parents=True)
    (home / "plugins" / "stockpipe_plugin.py").write_text(PLUGIN_SHIM)
    settings_env = {
        "STOCKPIPE_LAKE_URL": str(lake),
        "STOCKPIPE_WAREHOUSE": f"duckdb:///{warehouse}",
        "STOCKPIPE_DBT_TARGET_PATH": str(tmp_path / "dbt_target"),
        "STOCKPIPE_LOAD_BATCH_FILES": str(BATCH_FILES),
        "STOCKPIPE_LOAD_INTERVAL": "1h",  # the one scheduled run is the one at unpause
        "STOCKPIPE_TASK_RETRIES": "2",  # a lock conflict would show as a retry
        "STOCKPIPE_RETRY_DELAY": "1s",
        "STOCKPIPE_REPORT_PATH": str(tmp_path / "reports" / "stockpipe.html"),
    }
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STOCKPIPE_", "AIRFLOW", "SNOWFLAKE_"))
    }
    base_env.update(settings_env)
    base_env["PYTHONPATH"] = str(REPO)
    # `airflow` and `dbt` of this venv first (standalone and pools.sh call `airflow`)
    base_env["PATH"] = f"{VENV_BIN}{os.pathsep}{base_env.get('PATH', '')}"
    # the dbt manifest, built ahead as `make install` does: the DAG files never run dbt,
    # so Airflow's own DAG-import time limits apply
    orchestration.build_manifest(load_settings(dbt_target_path=tmp_path / "dbt_target"))

    with postgres_cluster() as postgres_url:
        port = free_port()
        env = {
            **base_env,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres_url
            or f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
            "AIRFLOW__COSMOS__CACHE_DIR": str(home / "cosmos"),
        }
        migrate = subprocess.run(
            [str(VENV_BIN / "airflow"), "db", "migrate"],
            env=env,
            cwd=home,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]

        with airflow_standalone(env, home) as scheduler:
            pool_query = "select slots, description from slot_pool where pool = :pool"
            created_at_start = wait_for(
                "the scheduler to create the pool",
                lambda: scheduler.query(pool_query, pool=POOL),
                DEADLINE_DAGS_VISIBLE,
                scheduler,
            )
            wait_for(
                "the three DAGs to be parsed",
                lambda: (
                    len(
                        scheduler.query(
                            "select distinct dag_id from serialized_dag"
                            " where dag_id in (:a, :b, :c)",
                            a=DAG_IDS[0],
                            b=DAG_IDS[1],
                            c=PUBLISH,
                        )
                    )
                    == 3
                ),
                DEADLINE_DAGS_VISIBLE,
                scheduler,
            )
            visible_after = time.monotonic() - started
            # deleted while the scheduler runs: the first run's start must bring it back
            scheduler.airflow("pools", "delete", POOL)
            assert scheduler.query(pool_query, pool=POOL) == []

            # both triggered at the same moment, then unpaused (which adds the load
            # DAG's scheduled run, queued behind the manual one: max_active_runs=1)
            conf = {"start_date": "2024-11-18", "end_date": "2024-11-22", "full_refresh": False}
            triggers = [
                subprocess.Popen(
                    [str(VENV_BIN / "airflow"), "dags", "trigger", dag_id, *extra],
                    env=env,
                    cwd=home,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for dag_id, extra in (
                    ("stockpipe_load", []),
                    ("stockpipe_backfill", ["--conf", json.dumps(conf)]),
                )
            ]
            for trigger in triggers:
                output, _ = trigger.communicate(timeout=300)
                assert trigger.returncode == 0, output[-3000:]
            unpause = [
                subprocess.Popen(
                    [str(VENV_BIN / "airflow"), "dags", "unpause", dag_id],
                    env=env,
                    cwd=home,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for dag_id in (*DAG_IDS, PUBLISH)
            ]
            for process in unpause:
                output, _ = process.communicate(timeout=300)
                assert process.returncode == 0, output[-3000:]

            def finished() -> list[tuple] | None:
                """Both manual runs done, then a publish run that started after both
                announced the marts (publish_marts ended), and nothing still running."""
                runs = scheduler.query(
                    "select dag_id, run_id, run_type, state, start_date from dag_run"
                    " order by dag_id, run_id"
                )
                manual = {d for d, _, kind, *_ in runs if str(kind) == "manual"}
                if manual != set(DAG_IDS) or not all(str(r[3]) in TERMINAL for r in runs):
                    return None
                announced = scheduler.query(
                    "select max(ti.end_date) from task_instance ti join dag_run r"
                    " on r.dag_id = ti.dag_id and r.run_id = ti.run_id"
                    " where ti.task_id = 'publish_marts' and r.run_type = 'manual'"
                )[0][0]
                after = [r for r in runs if r[0] == PUBLISH and r[4] and r[4] >= announced]
                return [r[:4] for r in runs] if after else None

            runs = wait_for(
                "both runs and the publish run after them to finish",
                finished,
                DEADLINE_RUNS,
                scheduler,
                every=10,
            )
            tis = scheduler.query(
                "select dag_id, run_id, task_id, map_index, state, try_number, pool,"
                " start_date, end_date from task_instance"
            )
            history = scheduler.query(
                "select dag_id, run_id, task_id, map_index, try_number, state"
                " from task_instance_history"
            )
            pool_after = scheduler.query(pool_query, pool=POOL)
            log = scheduler.log.read_text(errors="replace")
        runs_seconds = time.monotonic() - started - visible_after

    # reference: the same lake, loaded and transformed directly into another warehouse
    reference_env = {
        **base_env,
        "STOCKPIPE_WAREHOUSE": f"duckdb:///{reference}",
        "STOCKPIPE_DBT_TARGET_PATH": str(tmp_path / "ref_dbt_target"),
    }
    run([str(VENV_BIN / "stockpipe"), "load"], reference_env, tmp_path, timeout=600)
    run([str(VENV_BIN / "stockpipe"), "transform"], reference_env, tmp_path, timeout=900)

    summary = {
        "metadata": "postgresql" if postgres_url else "sqlite",
        "runs": [(d, kind, str(s)) for d, _, kind, s in runs],
        "task_instances": len(tis),
        "by_state": {
            state: sum(1 for t in tis if str(t[4]) == state) for state in {str(t[4]) for t in tis}
        },
        "seconds_to_dags_visible": round(visible_after),
        "seconds_for_runs": round(runs_seconds),
    }
    print("scheduler run:", json.dumps(summary))

    assert all(str(state) == "success" for *_, state in runs), runs
    # the plugin made the pool at the scheduler's start and at the first run's start
    assert created_at_start == pool_after == [orchestration.POOLS[POOL]]
    created = [line for line in log.splitlines() if "created the missing Airflow pool" in line]
    assert any("scheduler start" in line for line in created), created
    by_runs = [line for line in created if "(run " in line]
    assert len(by_runs) == 1, created
    assert any(f"run {run_id} of {dag})" in by_runs[0] for dag, run_id, *_ in runs), by_runs
    assert all(orchestration.pool_command(POOL) in line for line in created), created
    assert {str(kind) for d, _, kind, _ in runs if d == "stockpipe_backfill"} == {"manual"}
    assert {str(kind) for d, _, kind, _ in runs if d == PUBLISH} == {"asset_triggered"}
    failed = [t[:6] for t in tis if str(t[4]) not in ("success", "skipped")]
    assert failed == [], failed
    retried = [t[:6] for t in tis if (t[5] or 0) > 1]
    assert retried == [], retried
    assert history == [], history  # no earlier try of any task instance
    assert all(t[5] == 1 for t in tis if str(t[4]) == "success")

    # every task that opens DuckDB ran in the one-slot pool, and no two of them overlapped
    pooled = [t for t in tis if t[2] in WAREHOUSE_TASKS or str(t[2]).startswith("dbt_build.")]
    assert pooled and {t[6] for t in pooled} == {POOL}, {(t[2], t[6]) for t in pooled}
    # (skipped tasks get a start and end from the scheduler without running)
    spans = sorted((t[7], t[8], t[:4]) for t in pooled if str(t[4]) == "success")
    for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"{first} and {second} held the DuckDB file at the same time"
    loads = [t for t in tis if t[2] == "load_batch" and str(t[4]) == "success"]
    assert len(loads) >= 4  # 10 files in batches of 3, in at least one of the DAGs

    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("select count(*) from bronze.bars").fetchone() == (rows,)
        assert con.execute("select count(*) from bronze.load_manifest").fetchone() == (10,)
    got, want = marts(warehouse), marts(reference)
    assert len(want["fct_bars_daily"]) == len(SYMBOLS) * len(DAYS)
    for table in want:
        assert_rows_equal(got[table], want[table], table)
    # and the publish run after them documented the marts and wrote the report
    catalog = json.loads((tmp_path / "dbt_target" / "catalog.json").read_text())["nodes"]
    assert {k.rsplit(".", 1)[1] for k in catalog} >= set(want)
    report = (tmp_path / "reports" / "stockpipe.html").read_text()
    assert parse(report).sections == sorted(SYMBOLS)
