"""The stockpipe Airflow plugin creates the pools the DAGs need (flows/transform/airflow_plugin.py).

- The package's `airflow.plugins` entry point names the plugin, and Airflow's own
  plugin loader finds it through a distribution's metadata and registers its listener.
- The listener's hooks, called in a subprocess on a scratch SQLite metadata database
  (`airflow db migrate`): a task process's `on_starting` does nothing, the scheduler's
  creates the missing pool and leaves an existing one with other slots as it is, a
  started run of a DAG with a task in the pool recreates it and one of a DAG without
  does nothing.
- `airflow scheduler --num-runs 1` with the plugin in the plugins folder creates the
  pool (the real scheduler command, which builds its Job before `job_type` is set).
- Under `airflow standalone`, pools.sh not run: tests/test_airflow_scheduler.py, whose
  scheduler creates the pool at start, and, the pool deleted while it runs, again
  when the first of its runs starts.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from test_airflow_scheduler import (
    PLUGIN_SHIM,
    REPO,
    VENV_BIN,
    run,
)

from flows.transform import orchestration

POOL = orchestration.DUCKDB_POOL
SLOTS, DESCRIPTION = orchestration.POOLS[POOL]


def base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STOCKPIPE_", "AIRFLOW", "SNOWFLAKE_"))
    }
    env["PYTHONPATH"] = str(REPO)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def airflow_env(home: Path, db_url: str, plugins: Path) -> dict[str, str]:
    return {
        **base_env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
    }


def pool_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(
            "select pool, slots, description from slot_pool where pool = ?", (POOL,)
        ).fetchall()


# ------------------------------------------------------------------ the entry point


def test_the_entry_point_names_the_plugin_and_airflow_loads_it_from_distribution_metadata(
    tmp_path: Path,
) -> None:
    from airflow.plugins_manager import AirflowPlugin

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    points = project["project"]["entry-points"]["airflow.plugins"]
    assert points == {"stockpipe": "flows.transform.airflow_plugin:StockpipePlugin"}
    plugin = EntryPoint("stockpipe", points["stockpipe"], "airflow.plugins").load()
    assert issubclass(plugin, AirflowPlugin) and plugin.name == "stockpipe"
    assert [m.__name__ for m in plugin.listeners] == ["flows.transform.airflow_plugin"]

    # what `pip install` writes for that table, found by Airflow's own loader (an
    # empty plugins folder, so only entry points can bring it)
    dist = tmp_path / "site" / "stockpipe_entry_point_check-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: stockpipe-entry-point-check\nVersion: 0.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[airflow.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
    )
    (tmp_path / "plugins").mkdir()
    env = airflow_env(tmp_path, f"sqlite:///{tmp_path / 'unused.db'}", tmp_path / "plugins")
    env["PYTHONPATH"] = f"{tmp_path / 'site'}{os.pathsep}{REPO}"
    script = textwrap.dedent(
        """
        import json
        from airflow import plugins_manager
        from airflow.listeners.listener import get_listener_manager

        plugins, errors = plugins_manager._get_plugins()
        found = [p for p in plugins if p.name == "stockpipe"]
        hooks = get_listener_manager().pm.get_plugins()
        print(json.dumps({
            "classes": [type(p).__module__ + "." + type(p).__qualname__ for p in found],
            "sources": [type(p.source).__name__ for p in found],
            "errors": {k: v for k, v in errors.items() if "already registered" not in v},
            "listeners": sorted(getattr(h, "__name__", "") for h in hooks),
        }))
        """
    )
    out = run([sys.executable, "-c", script], env, tmp_path)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["classes"] == ["flows.transform.airflow_plugin.StockpipePlugin"]
    assert got["sources"] == ["EntryPointSource"]
    assert got["errors"] == {}
    assert "flows.transform.airflow_plugin" in got["listeners"]


# ------------------------------------------------------------------ the hooks, one by one


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch AIRFLOW_HOME's SQLite metadata after `airflow db migrate` (copied per test)."""
    home = tmp_path_factory.mktemp("migrated")
    (home / "plugins").mkdir()
    env = airflow_env(home, f"sqlite:///{home / 'airflow.db'}", home / "plugins")
    run([str(VENV_BIN / "airflow"), "db", "migrate"], env, home, timeout=600)
    assert pool_rows(home / "airflow.db") == []  # Airflow itself creates only default_pool
    return home / "airflow.db"


@pytest.fixture
def scratch(tmp_path: Path, migrated: Path) -> tuple[dict[str, str], Path]:
    """The env of a fresh copy of the migrated database, and that database's path."""
    db = tmp_path / "airflow.db"
    shutil.copyfile(migrated, db)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "dags").mkdir()
    return airflow_env(tmp_path, f"sqlite:///{db}", tmp_path / "plugins"), db


HOOK_SCRIPT = textwrap.dedent(
    """
    import sys
    from datetime import datetime

    from flows.transform import airflow_plugin

    case = sys.argv[1]
    if case in ("task", "blocked-task"):
        from airflow.sdk.execution_time.task_runner import TaskRunnerMarker

        if case == "blocked-task":  # what the supervisor does to a task process
            from airflow.sdk.execution_time.supervisor import block_orm_access

            block_orm_access()

        airflow_plugin.on_starting(component=TaskRunnerMarker())
        print("jobs imported:", "airflow.jobs.job" in sys.modules)
    elif case in ("SchedulerJob", "TriggererJob", "DagProcessorJob"):
        from airflow.jobs.job import Job

        job = Job()
        job.job_type = case  # as the JobRunner stamps it
        airflow_plugin.on_starting(component=job)
    elif case.startswith("run:"):
        from airflow.models.dagrun import DagRun
        from airflow.sdk import DAG, task
        from airflow.serialization.serialized_objects import DagSerialization

        pool = case.removeprefix("run:") or None
        with DAG("pooled", schedule=None, start_date=datetime(2024, 1, 1)) as dag:
            @task(pool=pool)
            def files():
                return [[1]]

            @task(pool=pool)
            def load(batch):
                return batch

            load.expand(batch=files())
        run = DagRun(dag_id="pooled", run_id="manual__check", run_type="manual")
        run.dag = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        airflow_plugin.on_dag_run_running(dag_run=run, msg="started")
    print("done")
    """
)


def call_hook(env: dict[str, str], case: str, cwd: Path) -> str:
    return run([sys.executable, "-c", HOOK_SCRIPT, case], env, cwd)


def said(out: str) -> list[str]:
    """The lines the plugin logged (Airflow's structlog renders them `… [warning  ] stockpipe (…`)."""
    return [line for line in out.splitlines() if "stockpipe (" in line]


def warnings_of(out: str) -> list[str]:
    return [line for line in said(out) if "[warning" in line or line.startswith("WARNING")]


@pytest.mark.airflow
def test_a_task_process_starting_touches_nothing(scratch) -> None:
    env, db = scratch
    out = call_hook(env, "task", db.parent)
    assert "jobs imported: False" in out and "done" in out
    assert said(out) == []
    assert pool_rows(db) == []
    # as a real task process has it: the ORM blocked by the supervisor, nothing fails
    out = call_hook(env, "blocked-task", db.parent)
    assert "done" in out and said(out) == [] and "Traceback" not in out
    assert pool_rows(db) == []


@pytest.mark.airflow
def test_the_scheduler_starting_creates_the_missing_pool_and_only_the_scheduler(scratch) -> None:
    env, db = scratch
    for other in ("TriggererJob", "DagProcessorJob"):
        out = call_hook(env, other, db.parent)
        assert "done" in out and said(out) == []
        assert pool_rows(db) == []
    out = call_hook(env, "SchedulerJob", db.parent)
    assert pool_rows(db) == [(POOL, SLOTS, DESCRIPTION)]
    warning = warnings_of(out)
    assert len(warning) == 1, out
    assert POOL in warning[0] and orchestration.pool_command(POOL) in warning[0]
    # a second start finds it and says nothing
    out = call_hook(env, "SchedulerJob", db.parent)
    assert said(out) == [] and pool_rows(db) == [(POOL, SLOTS, DESCRIPTION)]


@pytest.mark.airflow
def test_the_scheduler_starting_leaves_an_existing_pool_as_it_is(scratch) -> None:
    env, db = scratch
    run([str(VENV_BIN / "airflow"), "pools", "set", POOL, "3", "mine"], env, db.parent)
    out = call_hook(env, "SchedulerJob", db.parent)
    assert "done" in out and said(out) == []
    assert pool_rows(db) == [(POOL, 3, "mine")]


@pytest.mark.airflow
def test_a_started_run_recreates_the_pool_its_dag_needs(scratch) -> None:
    env, db = scratch
    out = call_hook(env, "run:", db.parent)  # a DAG in the default pool: no query, no pool
    assert "done" in out and said(out) == [] and pool_rows(db) == []
    out = call_hook(env, f"run:{POOL}", db.parent)
    assert pool_rows(db) == [(POOL, SLOTS, DESCRIPTION)]
    warning = warnings_of(out)
    assert len(warning) == 1 and "run manual__check of pooled" in warning[0], out
    assert orchestration.pool_command(POOL) in warning[0]


@pytest.mark.airflow
@pytest.mark.slow
def test_the_scheduler_command_creates_the_pool_from_the_plugins_folder(scratch) -> None:
    env, db = scratch
    (Path(env["AIRFLOW__CORE__PLUGINS_FOLDER"]) / "stockpipe_plugin.py").write_text(PLUGIN_SHIM)
    done = subprocess.run(
        [str(VENV_BIN / "airflow"), "scheduler", "--num-runs", "1", "--skip-serve-logs"],
        env={**env, "AIRFLOW__CORE__EXECUTOR": "LocalExecutor"},
        cwd=db.parent,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert pool_rows(db) == [(POOL, SLOTS, DESCRIPTION)], output[-4000:]
    warning = [line for line in output.splitlines() if "created the missing Airflow pool" in line]
    assert len(warning) == 1 and "scheduler start" in warning[0], output[-4000:]
    assert orchestration.pool_command(POOL) in warning[0]


# ------------------------------------------------------------------ the real scheduler
