"""The Airflow DAGs, on real Airflow 3 (SQLite metadata), cosmos, dbt and DuckDB.

Airflow reads its configuration when it is first imported, so everything that
touches Airflow runs in subprocesses of this module's environment: one
`airflow db migrate` per module, then one process per `dag.test()` run (as a
worker would, and so no DuckDB handle or Airflow state leaks between runs).
Alerts go to a tiny HTTP server on 127.0.0.1 that records every JSON POST.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import fsspec
import load_helpers
import pytest
from helpers import recording_webhook
from load_helpers import bar_rows, bars_table, write_bars
from prometheus_client.parser import text_string_to_metric_families

from flows.errors import StockpipeError
from flows.settings import load_settings
from flows.transform import orchestration

pytestmark = [pytest.mark.slow, pytest.mark.airflow, pytest.mark.dbt]

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SYMBOLS = ["AAA", "BBB"]
# Three NYSE sessions (Mon-Wed before Thanksgiving 2024): 14:30-21:00 UTC.
DAYS = [datetime(2024, 11, day, 14, 30, tzinfo=UTC) for day in (25, 26, 27)]
SESSION_MINUTES = 390
HEAVY_MODULES = ("duckdb", "pyarrow", "dbt", "polars")

LOAD_TASKS = {
    "find_new_files",
    "load_batch",
    "load_outages",
    "check_changes",
    "source_freshness",
    "publish_marts",
}
BACKFILL_TASKS = {
    "check_range",
    "backfill_outages",
    "load_outages",
    "fetch_splits",
    "find_missing_files",
    "load_batch",
    "publish_marts",
}
DBT_TASKS = {
    "dbt_build.xnys_calendar_seed_build",
    "dbt_build.stg_exchange_sessions_model_build",
    "dbt_build.stg_bronze__bars_model_build",
    "dbt_build.stg_outages_model_build",
    "dbt_build.fct_bars_1m_model_build",
    "dbt_build.fct_bars_daily_model_build",
    "dbt_build.mart_trend_daily_model_build",
    "dbt_build.mart_volatility_daily_model_build",
    "dbt_build.mart_intraday_hourly_model_build",
    "dbt_build.mart_correlation_daily_model_build",
    "dbt_build.splits_seed_build",
    "dbt_build.stg_splits_model_build",
    "dbt_build.fct_bars_daily_adjusted_model_build",
    "dbt_build.mart_trend_daily_adjusted_model_build",
    "dbt_build.mart_volatility_daily_adjusted_model_build",
}

# Run inside a fresh interpreter: one dag.test() of argv[1] with run conf argv[2],
# the run's state and task states written as JSON to argv[3]. The manifest is built
# first when it is not current (as run_dag does): others may edit dbt/ meanwhile.
DAG_TEST = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    from flows.settings import load_settings
    from flows.transform.orchestration import build_manifest

    build_manifest(load_settings())
    bag = DagBag()
    assert not bag.import_errors, bag.import_errors
    run = bag.dags[sys.argv[1]].test(run_conf=json.loads(sys.argv[2]))
    tasks = {}
    for ti in run.get_task_instances():
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        tasks[key] = {"state": str(ti.state), "try_number": ti.try_number}
    with open(sys.argv[3], "w") as out:
        json.dump({"state": str(run.state), "tasks": tasks}, out)
    """
)

# Parse dags/ in a fresh interpreter: which heavy modules got imported, then the
# structure of every DAG, as JSON on the last line of stdout.
PARSE_AND_DESCRIBE = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag()
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[1].split(","))
    dags = {}
    for dag_id, dag in bag.dags.items():
        load = dag.task_dict.get("load_batch") or dag.tasks[0]
        publish = dag.task_dict.get("publish_marts")
        condition = getattr(dag.timetable, "asset_condition", None)
        dags[dag_id] = {
            "timetable": type(dag.timetable).__name__,
            "interval": str(getattr(dag.timetable, "delta", None)),
            "max_active_runs": dag.max_active_runs,
            "catchup": dag.catchup,
            "params": sorted(dag.params),
            "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
            "mapped": [t.task_id for t in dag.tasks if getattr(t, "is_mapped", False)],
            "retries": load.retries,
            "backoff": load.retry_exponential_backoff,
            "max_retry_delay": load.max_retry_delay.total_seconds(),
            "task_callback": bool(load.on_failure_callback),
            "dag_callback": bool(dag.on_failure_callback),
            "outlets": [a.uri for a in publish.outlets] if publish else [],
            "scheduled_on": [a.uri for a in condition.objects] if condition else [],
            "pools": {t.task_id: t.pool for t in dag.tasks},
            # the failure callbacks of the dbt nodes' tasks, by name
            "dbt_callbacks": sorted({
                getattr(cb, "__name__", repr(cb))
                for t in dag.tasks if t.task_id.startswith("dbt_build.")
                for cb in (t.on_failure_callback if isinstance(t.on_failure_callback, list)
                           else [t.on_failure_callback])
            }),
        }
    print(json.dumps({"errors": bag.import_errors, "heavy": heavy, "dags": dags}))
    """
)


# Parse dags/ in a fresh interpreter under an audit hook (after Airflow itself is
# imported, as in the DAG processor): every process the DAG files start, and every
# write under the folders of argv[1] (comma-separated), as JSON on the last line.
AUDITED_PARSE = textwrap.dedent(
    """
    import json, os, sys
    from airflow.dag_processing.dagbag import DagBag

    roots = [os.path.realpath(p) for p in sys.argv[1].split(",")]
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    SPAWN = {"subprocess.Popen", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
             "os.fork", "os.forkpty", "pty.spawn"}
    CHANGE = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.utime", "os.truncate",
              "os.symlink", "os.link", "os.chmod", "shutil.copyfile", "shutil.rmtree"}
    spawned, written = [], []

    def under(path):
        try:
            path = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return any(path == r or path.startswith(r + os.sep) for r in roots)

    def hook(event, args):
        if event in SPAWN:
            spawned.append(f"{event} {args!r}"[:300])
        elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = args
            if under(path) and ((mode and set(mode) & set("wax+")) or flags & WRITE):
                written.append(f"open {path} {mode} {flags}")
        elif event in CHANGE and args and isinstance(args[0], (str, bytes, os.PathLike)):
            if under(args[0]):
                written.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    bag = DagBag()
    print(json.dumps({"errors": bag.import_errors, "dags": sorted(bag.dags),
                      "spawned": spawned, "written": written}))
    """
)


def python(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """This interpreter on `args`, which must exit 0."""
    done = subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def audited_parse(env: dict[str, str], cwd: Path, *watched: Path) -> dict:
    done = python(env, cwd, "-c", AUDITED_PARSE, ",".join(str(p) for p in watched))
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP endpoint on a free port; yields its URL and the list of POSTs it got."""
    with recording_webhook("/alerts") as hook:
        yield hook


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An AIRFLOW_HOME with a migrated SQLite database, and the DAG folder of this repo."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__COSMOS__CACHE_DIR": str(home / "cosmos"),
        "PYTHONPATH": str(REPO),
        # `airflow` of this venv first (pools.sh calls it)
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for command in (
        [str(VENV_BIN / "airflow"), "db", "migrate"],
        ["bash", str(REPO / "infra" / "airflow" / "pools.sh")],
    ):
        done = subprocess.run(
            command, env=env, cwd=home, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # dbt parse once for the module (as `make install` does); each test starts from a copy
    orchestration.build_manifest(load_settings(dbt_target_path=home / "dbt_target"))
    env["STOCKPIPE_DBT_TARGET_PATH"] = str(home / "dbt_target")
    return env


@dataclass
class Pipeline:
    """Where one test's lake, warehouse and dbt artifacts live, and how to run a DAG on them."""

    env: dict[str, str]
    workdir: Path
    lake: Path
    warehouse: Path
    started: datetime

    def run_dag(self, dag_id: str, conf: dict | None = None) -> dict:
        out = self.workdir / f"run-{dag_id}-{len(list(self.workdir.glob('run-*')))}.json"
        done = subprocess.run(
            [sys.executable, "-c", DAG_TEST, dag_id, json.dumps(conf or {}), str(out)],
            env=self.env,
            cwd=self.workdir,  # no stray .env file of the developer's checkout
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0 and out.exists(), done.stdout[-5000:] + done.stderr[-5000:]
        return json.loads(out.read_text())

    def gold_mart_events(self) -> list[dict]:
        """The extras of the Asset events of stockpipe://gold/marts this test's runs emitted."""
        with closing(sqlite3.connect(self.env["AIRFLOW_HOME"] + "/airflow.db")) as con:
            rows = con.execute(
                "select e.extra from asset_event e join asset a on a.id = e.asset_id"
                " where a.uri = ? and e.timestamp >= ? order by e.timestamp",
                ("stockpipe://gold/marts", self.started.strftime("%Y-%m-%d %H:%M:%S.%f")),
            ).fetchall()
        return [json.loads(extra) for (extra,) in rows]

    def query(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            return con.execute(sql).fetchall()

    def gauges(self, name: str) -> dict[tuple[str, frozenset], float]:
        """The samples of a textfile the runs wrote (load.prom, transform.prom)."""
        path = self.workdir / "metrics" / name
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(path.read_text())
            for s in family.samples
        }


@pytest.fixture
def pipeline(
    tmp_path: Path,
    airflow_env: dict[str, str],
    webhook: tuple[str, list[dict]],
    monkeypatch: pytest.MonkeyPatch,
) -> Pipeline:
    url, received = webhook
    received.clear()
    settings_env = {
        "STOCKPIPE_LAKE_URL": str(tmp_path / "lake"),
        "STOCKPIPE_WAREHOUSE": f"duckdb:///{tmp_path / 'wh.duckdb'}",
        "STOCKPIPE_DBT_TARGET_PATH": str(tmp_path / "dbt_target"),
        "STOCKPIPE_ALERT_WEBHOOK": url,
        "STOCKPIPE_LOAD_BATCH_FILES": "4",  # 6 files: two mapped load tasks
        "STOCKPIPE_TASK_RETRIES": "1",
        "STOCKPIPE_RETRY_DELAY": "1s",
        "STOCKPIPE_REPORT_PATH": str(tmp_path / "reports" / "stockpipe.html"),
        "STOCKPIPE_METRICS_DIR": str(tmp_path / "metrics"),
        "STOCKPIPE_OUTAGE_LOG": str(tmp_path / "outages.jsonl"),
    }
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)
    manifest = orchestration.manifest_path(load_settings())
    manifest.parent.mkdir(parents=True)
    shutil.copy2(
        orchestration.manifest_path(
            load_settings(dbt_target_path=airflow_env["STOCKPIPE_DBT_TARGET_PATH"])
        ),
        manifest,
    )
    return Pipeline(
        env={**airflow_env, **settings_env},
        workdir=tmp_path,
        lake=tmp_path / "lake",
        warehouse=tmp_path / "wh.duckdb",
        started=datetime.now(UTC),
    )


def write_sessions(lake: Path, days: list[datetime] = DAYS) -> int:
    return load_helpers.write_sessions(str(lake), days, SYMBOLS, SESSION_MINUTES)


# ------------------------------------------------------------------ tests


def test_dag_folder_parses_without_heavy_imports_into_the_designed_dags(
    airflow_env: dict[str, str],
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PARSE_AND_DESCRIBE, ",".join(HEAVY_MODULES)],
        env=airflow_env,
        cwd=airflow_env["AIRFLOW_HOME"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    assert parsed["errors"] == {}
    assert parsed["heavy"] == []  # no duckdb, pyarrow, dbt or polars while parsing
    dags = parsed["dags"]
    assert set(dags["stockpipe_load"]["upstream"]) == LOAD_TASKS | DBT_TASKS
    assert set(dags["stockpipe_backfill"]["upstream"]) == BACKFILL_TASKS | DBT_TASKS

    load = dags["stockpipe_load"]
    assert load["max_active_runs"] == 1 and load["catchup"] is False
    # STOCKPIPE_LOAD_INTERVAL, 5 minutes by default
    assert load["timetable"] == "DeltaTriggerTimetable", load["timetable"]
    assert load["interval"] == "0:05:00"
    assert load["mapped"] == ["load_batch"]
    # retry_exponential_backoff=True: Airflow 3.3 stores it as the multiplier 2.0
    assert load["backoff"] == 2.0 and load["retries"] >= 1 and load["max_retry_delay"] == 600
    assert load["task_callback"] and load["dag_callback"]
    # a failed dbt node alerts and marks the transform failed in transform.prom
    assert (
        load["dbt_callbacks"] == dags["stockpipe_backfill"]["dbt_callbacks"] == ["on_dbt_failure"]
    )
    assert load["outlets"] == ["stockpipe://gold/marts"]
    up = load["upstream"]
    assert up["find_new_files"] == []
    assert up["load_batch"] == ["find_new_files"]
    assert up["load_outages"] == []
    assert up["check_changes"] == ["find_new_files", "load_batch", "load_outages"]
    assert up["dbt_build.stg_bronze__bars_model_build"] == ["check_changes"]
    assert up["dbt_build.stg_outages_model_build"] == ["check_changes"]
    assert up["dbt_build.fct_bars_1m_model_build"] == [
        "dbt_build.stg_bronze__bars_model_build",
        "dbt_build.stg_exchange_sessions_model_build",
        "dbt_build.stg_outages_model_build",
    ]
    assert up["dbt_build.mart_trend_daily_model_build"] == ["dbt_build.fct_bars_daily_model_build"]
    assert "dbt_build.mart_trend_daily_model_build" in up["source_freshness"]
    assert up["publish_marts"] == ["find_new_files", "load_outages", "source_freshness"]

    backfill = dags["stockpipe_backfill"]
    assert backfill["timetable"] == "NullTimetable" and backfill["max_active_runs"] == 1
    assert backfill["params"] == ["end_date", "full_refresh", "start_date"]
    assert backfill["mapped"] == ["load_batch"]
    assert sorted(backfill["upstream"]["find_missing_files"]) == ["backfill_outages", "check_range"]
    assert backfill["upstream"]["load_outages"] == ["backfill_outages"]
    assert backfill["upstream"]["fetch_splits"] == ["check_range"]
    assert {"load_batch", "load_outages", "fetch_splits"} <= set(
        backfill["upstream"]["dbt_build.stg_bronze__bars_model_build"]
    )
    # On DuckDB every task that opens the warehouse runs in the one-slot pool.
    for dag in (load, backfill):
        pools = dag["pools"]
        opens = (
            "find_",
            "load_batch",
            "load_outages",
            "fetch_splits",
            "dbt_build.",
            "source_freshness",
        )
        warehouse = {t for t in pools if t.startswith(opens)}
        assert warehouse == {t for t, pool in pools.items() if pool == "stockpipe_duckdb"}
        assert {"load_batch", "dbt_build.fct_bars_1m_model_build"} <= warehouse
    assert "check_range" in backfill["upstream"]["publish_marts"]
    assert backfill["outlets"] == ["stockpipe://gold/marts"]

    # the docs and the report follow every change of the marts the other two announce
    publish = dags["stockpipe_publish"]
    assert publish["timetable"] == "AssetTriggeredTimetable"
    assert publish["scheduled_on"] == load["outlets"] == ["stockpipe://gold/marts"]
    assert publish["upstream"] == {"generate_docs": [], "build_report": ["generate_docs"]}
    assert publish["pools"] == {
        "generate_docs": "stockpipe_duckdb",
        "build_report": "stockpipe_duckdb",
    }
    assert publish["max_active_runs"] == 1 and publish["catchup"] is False
    assert publish["task_callback"] and publish["dag_callback"]


def test_dag_files_parse_without_a_process_or_a_write_and_name_the_manifest_command(
    airflow_env: dict[str, str], tmp_path: Path
) -> None:
    """The DAG processor imports the files again and again: they must never run dbt (a
    subprocess) nor write, however the manifest stands; a missing or stale one is an
    import error that says how to build it."""
    watched = (REPO / "dbt", tmp_path)  # the project (dbt/target inside it), the target path
    fresh = audited_parse(airflow_env, tmp_path, *watched)
    assert fresh["errors"] == {}
    assert fresh["dags"] == ["stockpipe_backfill", "stockpipe_load", "stockpipe_publish"]
    assert fresh["spawned"] == [] and fresh["written"] == []

    for dbt_target in ("duckdb", "snowflake"):
        # no manifest at all in this target path (for snowflake: none in the shared one)
        env = {
            **airflow_env,
            "STOCKPIPE_DBT_TARGET_PATH": str(tmp_path / "nothing-built"),
            "STOCKPIPE_DBT_TARGET": dbt_target,
        }
        if dbt_target == "snowflake":
            env.update(
                STOCKPIPE_DBT_TARGET_PATH=airflow_env["STOCKPIPE_DBT_TARGET_PATH"],
                STOCKPIPE_WAREHOUSE="snowflake",
            )
        missing = audited_parse(env, tmp_path, *watched, Path(env["STOCKPIPE_DBT_TARGET_PATH"]))
        assert missing["spawned"] == [] and missing["written"] == [], dbt_target
        assert missing["dags"] == ["stockpipe_publish"]  # it needs no manifest to parse
        assert set(missing["errors"]) == {
            str(REPO / "dags" / "stockpipe_load.py"),
            str(REPO / "dags" / "stockpipe_backfill.py"),
        }
        for error in missing["errors"].values():
            assert f"ManifestError: no dbt manifest for the {dbt_target} target" in error
            assert "`python -m flows.transform.orchestration manifest`" in error
            assert "`make install` runs it" in error

    # stale: the manifest of another version of the project (as after editing a model)
    built = orchestration.manifest_path(
        load_settings(dbt_target_path=airflow_env["STOCKPIPE_DBT_TARGET_PATH"])
    )
    old = tmp_path / "old-target" / "airflow" / "manifest.duckdb.0123456789abcdef.json"
    old.parent.mkdir(parents=True)
    shutil.copy2(built, old)
    env = {**airflow_env, "STOCKPIPE_DBT_TARGET_PATH": str(tmp_path / "old-target")}
    stale = audited_parse(env, tmp_path, *watched)
    assert stale["spawned"] == [] and stale["written"] == []
    assert stale["dags"] == ["stockpipe_publish"]
    (error, _) = stale["errors"].values()
    assert f"the dbt manifest in {old.parent} ({old.name}) is stale" in error
    assert "`python -m flows.transform.orchestration manifest`" in error

    # the command the message names builds what the DAGs look for, and keeps only it
    done = python(env, tmp_path, "-m", "flows.transform.orchestration", "manifest")
    assert done.stdout.split() == [str(old.parent / built.name)]
    assert sorted(p.name for p in old.parent.iterdir()) == [built.name]
    rebuilt = audited_parse(env, tmp_path, *watched)
    assert rebuilt["errors"] == {} and rebuilt["spawned"] == [] and rebuilt["written"] == []
    assert json.loads((old.parent / built.name).read_text())["metadata"]["project_name"] == (
        "stockpipe"
    )


def test_load_dag_loads_new_files_builds_the_marts_then_is_a_no_op(
    pipeline: Pipeline, webhook: tuple[str, list[dict]]
) -> None:
    rows = write_sessions(pipeline.lake)

    before = datetime.now(UTC).timestamp()
    first = pipeline.run_dag("stockpipe_load")
    after = datetime.now(UTC).timestamp()
    assert first["state"] == "success", first["tasks"]
    assert {k for k in first["tasks"] if k.startswith("load_batch")} == {
        "load_batch[0]",
        "load_batch[1]",
    }
    assert all(t["state"] == "success" for t in first["tasks"].values()), first["tasks"]
    assert pipeline.query("select count(*) from bronze.bars") == [(rows,)]
    assert pipeline.query("select count(*) from bronze.load_manifest") == [(6,)]
    assert pipeline.query("select count(*) from silver.fct_bars_1m") == [(rows,)]
    daily = pipeline.query(
        "select symbol, trade_date, bar_count from gold.fct_bars_daily order by 1, 2"
    )
    assert [(s, str(d)) for s, d, _ in daily] == [
        (symbol, f"2024-11-{day}") for symbol in SYMBOLS for day in (25, 26, 27)
    ]
    assert {count for *_, count in daily} == {SESSION_MINUTES}
    for mart in ("mart_trend_daily", "mart_volatility_daily", "mart_intraday_hourly"):
        assert pipeline.query(f"select count(*) from gold.{mart}")[0][0] > 0, mart
    manifest = pipeline.query("select path, loaded_at from bronze.load_manifest order by 1")
    assert pipeline.gold_mart_events() == [{"files_loaded": 6}]
    # the gauges of the last load batch (the last to commit) and of the run's transform
    load = pipeline.gauges("load.prom")
    batches = pipeline.query(
        "select load_seq, count(*), sum(row_count) from bronze.load_manifest"
        " group by load_seq order by load_seq"
    )
    assert sorted(files for _, files, _ in batches) == [2, 4]  # 6 files of 4 a batch
    _, last_files, last_rows = batches[-1]  # either may commit last: its gauges stand
    assert load[("stockpipe_load_files", frozenset({("outcome", "loaded")}))] == last_files
    assert load[("stockpipe_load_rows", frozenset())] == last_rows
    assert load[("stockpipe_load_failed", frozenset())] == 0
    loaded_at = load[("stockpipe_load_last_success_timestamp_seconds", frozenset())]
    assert before <= loaded_at <= after
    transform = pipeline.gauges("transform.prom")
    built_at = transform[("stockpipe_transform_last_success_timestamp_seconds", frozenset())]
    assert loaded_at < built_at <= after
    assert transform[("stockpipe_transform_failed", frozenset())] == 0
    (newest,) = pipeline.query("select max(window_end) from bronze.bars")[0]
    newest_key = (
        "stockpipe_transform_source_newest_window_end_timestamp_seconds",
        frozenset({("source", "source.stockpipe.bronze.bars"), ("calendar", "XNYS")}),
    )
    assert transform[newest_key] == newest.timestamp()
    assert transform[("stockpipe_transform_stale_sources", frozenset())] == 1  # 2024's bars
    # the DAG's dbt nodes are tasks of their own: no counts are made up for them
    assert not [k for k in transform if k[0] == "stockpipe_transform_nodes"]

    second = pipeline.run_dag("stockpipe_load")
    assert second["state"] == "success", second["tasks"]
    assert second["tasks"]["find_new_files"]["state"] == "success"
    assert second["tasks"]["load_batch"]["state"] == "skipped"  # mapped over no batches
    assert second["tasks"]["check_changes"]["state"] == "skipped"  # and no outage changed
    assert second["tasks"]["dbt_build.fct_bars_1m_model_build"]["state"] == "skipped"
    assert second["tasks"]["source_freshness"]["state"] == "success"
    assert second["tasks"]["publish_marts"]["state"] == "skipped"  # no asset event
    assert pipeline.query("select path, loaded_at from bronze.load_manifest order by 1") == manifest
    assert pipeline.query("select count(*) from bronze.bars") == [(rows,)]
    assert pipeline.gold_mart_events() == [{"files_loaded": 6}]
    # nothing new: the lake checked is a load that succeeded, the marts are current
    load = pipeline.gauges("load.prom")
    assert load[("stockpipe_load_last_success_timestamp_seconds", frozenset())] > built_at
    assert load[("stockpipe_load_failed", frozenset())] == 0
    transform = pipeline.gauges("transform.prom")
    rebuilt_at = transform[("stockpipe_transform_last_success_timestamp_seconds", frozenset())]
    assert rebuilt_at > load[("stockpipe_load_last_success_timestamp_seconds", frozenset())]
    assert transform[newest_key] == newest.timestamp()

    # an outage in the ledger and no new lake file: bronze.outages changes, so dbt runs
    # (silver reconciles its no-data minutes) and the marts are announced
    from flows.ingest.ledger import Outage, append_outage

    start = int(DAYS[2].timestamp() * 1000) + 60 * 60_000
    append_outage(
        Path(pipeline.env["STOCKPIPE_OUTAGE_LOG"]),
        Outage(start, ["AAA"], "stall", end_ms=start + 10 * 60_000, source="finnhub-ws"),
    )
    third = pipeline.run_dag("stockpipe_load")
    assert third["state"] == "success", third["tasks"]
    assert third["tasks"]["load_batch"]["state"] == "skipped"
    assert third["tasks"]["check_changes"]["state"] == "success"
    assert third["tasks"]["dbt_build.fct_bars_1m_model_build"]["state"] == "success"
    assert pipeline.query("select symbol, repaired from bronze.outages") == [("AAA", False)]
    assert pipeline.gold_mart_events() == [
        {"files_loaded": 6},
        {"files_loaded": 0, "outages_changed": 1},
    ]
    _, received = webhook
    assert not [m for m in received if m["json"]["event"] == "stockpipe.failure"]


def test_publish_dag_documents_the_marts_and_writes_the_report(pipeline: Pipeline) -> None:
    """What follows the load's Asset event: dbt docs of the marts as built, and the report."""
    from test_report import parse

    write_sessions(pipeline.lake)
    assert pipeline.run_dag("stockpipe_load")["state"] == "success"

    run = pipeline.run_dag("stockpipe_publish")
    assert run["state"] == "success", run["tasks"]
    assert {k: t["state"] for k, t in run["tasks"].items()} == {
        "generate_docs": "success",
        "build_report": "success",
    }
    target = Path(pipeline.env["STOCKPIPE_DBT_TARGET_PATH"])
    assert "<html" in (target / "index.html").read_text().lower()
    catalog = json.loads((target / "catalog.json").read_text())["nodes"]
    for mart in ("mart_trend_daily", "mart_volatility_daily", "fct_bars_1m"):
        node = catalog[next(k for k in catalog if k.endswith(f".{mart}"))]
        schema = node["metadata"]["schema"]
        columns = pipeline.query(
            "select column_name from information_schema.columns"
            f" where table_schema = '{schema}' and table_name = '{mart}'"
        )
        assert {c.lower() for c in node["columns"]} == {c for (c,) in columns}, mart
    html = Path(pipeline.env["STOCKPIPE_REPORT_PATH"]).read_text()
    assert parse(html).sections == sorted(SYMBOLS)
    last_day = pipeline.query("select max(trade_date)::varchar from gold.mart_trend_daily")
    assert last_day == [("2024-11-27",)] and "2024-11-27" in html


def test_failing_load_fails_the_run_and_alerts_the_webhook(
    pipeline: Pipeline, webhook: tuple[str, list[dict]]
) -> None:
    fs = fsspec.filesystem("file")
    rows = bar_rows(10, symbol="AAA", start=DAYS[0])
    broken = bars_table(rows).drop_columns(["close"])  # a contract-2 column is missing
    write_bars(fs, str(pipeline.lake), rows, name="no-close", table=broken)

    run = pipeline.run_dag("stockpipe_load")

    assert run["state"] == "failed"
    assert run["tasks"]["load_batch[0]"] == {"state": "failed", "try_number": 2}  # one retry
    assert run["tasks"]["dbt_build.stg_bronze__bars_model_build"]["state"] == "upstream_failed"
    load = pipeline.gauges("load.prom")
    assert load[("stockpipe_load_failed", frozenset())] == 1
    # never succeeded: no last success to keep, and no transform ran
    assert ("stockpipe_load_last_success_timestamp_seconds", frozenset()) not in load
    assert not (pipeline.workdir / "metrics" / "transform.prom").exists()
    _, received = webhook
    failures = [m for m in received if m["json"]["event"] == "stockpipe.failure"]
    assert failures, received
    assert all(m["content_type"] == "application/json" for m in failures)
    assert {m["json"]["level"] for m in failures} == {"task", "dag"}
    task_alert = next(m["json"] for m in failures if m["json"]["level"] == "task")
    assert task_alert["dag_id"] == "stockpipe_load"
    assert task_alert["try_number"] == 2
    assert task_alert["run_id"]
    assert "close" in task_alert["exception"] and "LoadError" in task_alert["exception"]
    assert "/dags/stockpipe_load/runs/" in task_alert["log_url"]
    dag_alert = next(m["json"] for m in failures if m["json"]["level"] == "dag")
    assert (dag_alert["dag_id"], dag_alert["run_id"]) == ("stockpipe_load", task_alert["run_id"])


def test_backfill_loads_only_the_range_and_rebuilds_the_marts(pipeline: Pipeline) -> None:
    write_sessions(pipeline.lake, DAYS[:1])
    in_range = write_sessions(pipeline.lake, DAYS[1:2])
    assert in_range

    run = pipeline.run_dag(
        "stockpipe_backfill",
        {"start_date": "2024-11-26", "end_date": "2024-11-26", "full_refresh": True},
    )

    assert run["state"] == "success", run["tasks"]
    loaded_days = pipeline.query(
        "select distinct window_start::date::varchar from bronze.bars order by 1"
    )
    assert loaded_days == [("2024-11-26",)]
    assert pipeline.query("select count(*) from bronze.bars") == [(in_range,)]
    assert pipeline.gold_mart_events() == [
        {"backfill": ["2024-11-26", "2024-11-26"], "full_refresh": True}
    ]
    assert pipeline.query(
        "select symbol, trade_date::varchar from gold.fct_bars_daily order by 1"
    ) == [(symbol, "2024-11-26") for symbol in SYMBOLS]


def test_backfill_repairs_the_ledger_into_kafka_and_bronze_outages_and_fetches_splits(
    pipeline: Pipeline, kafka_bootstrap: str, new_topic
) -> None:
    """A non-empty ledger, a loopback Finnhub (FINNHUB_REST_URL) and the session broker:
    the run's backfill_outages sends the trades to Kafka, load_outages shows them repaired,
    fetch_splits fills bronze.splits (the crypto pair never asked)."""
    from fakes.finnhub_server import FakeFinnhubREST
    from test_backfill_outages import TRADES, ledger_with_two_outages, serving, ticks_in

    from flows.ingest.ledger import read_ledger

    write_sessions(pipeline.lake, DAYS[1:2])
    topic = new_topic("dag-backfill")
    ledger = pipeline.workdir / "outages.jsonl"
    ledger_with_two_outages(ledger)  # 2024-11-26: COIN and MARA, then MSTR
    server = FakeFinnhubREST(
        {},
        token="k",
        trades=TRADES,
        splits={"AAA": [("2024-11-26", 1.0, 2.0)]},
        faults=[(429, {"Retry-After": "0.2"})],
    )
    env = {
        **pipeline.env,
        "FINNHUB_API_KEY": "k",
        "FINNHUB_REST_URL": "",  # set below, once the server listens
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STOCKPIPE_TOPIC": topic,
        "STOCKPIPE_OUTAGE_LOG": str(ledger),
        "STOCKPIPE_FINNHUB_CALLS_PER_MINUTE": "6000",
        "STOCKPIPE_SYMBOLS": "AAA,BBB,BINANCE:BTCUSDT",
    }
    with serving(server):
        env["FINNHUB_REST_URL"] = server.base_url
        run = replace(pipeline, env=env).run_dag(
            "stockpipe_backfill", {"start_date": "2024-11-26", "end_date": "2024-11-26"}
        )
    assert run["state"] == "success", run["tasks"]
    for task in ("backfill_outages", "load_outages", "fetch_splits", "load_batch[0]"):
        assert run["tasks"][task]["state"] == "success", (task, run["tasks"])

    got = ticks_in(kafka_bootstrap, topic)
    assert sorted(t["symbol"] for t in got) == ["COIN", "COIN", "COIN", "MARA", "MSTR"]
    assert {t["source"] for t in got} == {"finnhub-tick"}
    state = read_ledger(ledger)
    ids = [e["id"] for e in state.entries]
    assert pipeline.query(
        "select outage_id, symbol, repaired, repaired_via, repaired_at is not null,"
        " end_ts is not null from bronze.outages order by start_ts, symbol"
    ) == [
        (ids[0], "COIN", True, "trades", True, True),
        (ids[0], "MARA", True, "trades", True, True),
        (ids[1], "MSTR", True, "trades", True, True),
    ]
    assert pipeline.query(
        "select symbol, ex_date::varchar, split_from, split_to, source from bronze.splits"
    ) == [("AAA", "2024-11-26", 1.0, 2.0, "finnhub")]
    split_calls = [q["symbol"] for p, q, s in server.requests if p.endswith("/split") and s == 200]
    assert split_calls == ["AAA", "BBB"]


@pytest.mark.parametrize(
    ("start", "end", "problem"),
    [
        ("2024-11-27", "2024-11-25", "after end_date"),
        ("2024-13-01", "2024-12-01", "start_date='2024-13-01' is not a date"),
        ("2024-11-25", "", "end_date='' is not a date"),
        ("2020-01-01", "2024-01-01", "more than 366 days"),
    ],
)
def test_backfill_range_is_checked_before_anything_runs(start: str, end: str, problem: str) -> None:
    with pytest.raises(StockpipeError, match=re.escape(problem)):
        orchestration.parse_date_range(start, end)
    assert orchestration.parse_date_range(" 2024-11-25", "2024-11-25") == (
        date(2024, 11, 25),
        date(2024, 11, 25),
    )


def test_a_failed_dbt_node_marks_the_transform_failed_and_keeps_its_last_success(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What a dbt node's on_failure_callback writes (the DAG structure test wires it)."""
    from prometheus_client.parser import text_string_to_metric_families

    from flows.settings import load_settings
    from flows.transform.metrics import record_dag_transform

    monkeypatch.setenv("STOCKPIPE_METRICS_DIR", str(tmp_path))
    monkeypatch.setenv("STOCKPIPE_ALERT_WEBHOOK", "")
    path = record_dag_transform(load_settings(), [])  # a run that succeeded
    assert path is not None

    def samples() -> dict[str, float]:
        families = text_string_to_metric_families(path.read_text())
        return {s.name: s.value for f in families for s in f.samples if not s.labels}

    before = samples()
    orchestration.on_dbt_failure(
        {"run_id": "scheduled__x", "exception": RuntimeError("Database Error in model x")}
    )
    after = samples()
    assert (before["stockpipe_transform_failed"], after["stockpipe_transform_failed"]) == (0, 1)
    last = "stockpipe_transform_last_success_timestamp_seconds"
    assert after[last] == before[last]
    assert after["stockpipe_transform_last_run_timestamp_seconds"] >= before[last]


def test_failure_callback_never_raises_when_the_webhook_is_down(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("STOCKPIPE_ALERT_WEBHOOK", "http://127.0.0.1:9/down")  # discard port

    orchestration.on_failure({"run_id": "manual__x", "exception": RuntimeError("boom")})
    orchestration.on_failure({"task_instance": object()})  # a context it does not understand

    assert "RuntimeError: boom" in caplog.text
    assert "could not deliver the alert" in caplog.text
