"""`load.prom` and `transform.prom`: the gauges of the last load and transform run.

The real commands in subprocesses (real DuckDB, real dbt) with STOCKPIPE_METRICS_DIR
set; what the files say is held to what the warehouse holds (bronze.load_manifest),
to what dbt itself wrote (run_results.json) and to the clock around each run, and
`promtool check metrics` must accept every file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import duckdb
import fsspec
import numpy as np
import pandas as pd
import pytest
from helpers import run_stockpipe
from load_helpers import bar_rows, key_of, write_bars, write_many
from prometheus_client.parser import text_string_to_metric_families

from flows.settings import Settings, load_settings

FS = fsspec.filesystem("file", auto_mkdir=True)


def gauges(path: Path) -> dict[tuple[str, frozenset], float]:
    """Every sample of a textfile: (name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge", family.name
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: dict, name: str, **labels: str) -> float | None:
    return got.get((name, frozenset(labels.items())))


def promtool_accepts(path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=path.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def query(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        return con.execute(sql).fetchall()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        lake_url=str(tmp_path / "lake"),
        warehouse=f"duckdb:///{tmp_path / 'wh' / 'warehouse.duckdb'}",
        metrics_dir=tmp_path / "metrics",
    )


def test_the_load_writes_its_last_run_and_a_failed_run_keeps_the_last_success(
    settings: Settings,
) -> None:
    prom = settings.metrics_dir / "load.prom"
    write_many(FS, settings.lake_url, 5, rows_each=4)

    before = time.time()
    done = run_stockpipe(settings, "load", "--batch-files", "2", "--max-batches", "2")
    after = time.time()

    assert done.returncode == 0, done.stdout
    got = gauges(prom)
    files, rows = query(settings, "SELECT count(*), sum(row_count) FROM bronze.load_manifest")[0]
    assert (files, rows) == (4, 16)  # two batches of two files; the fifth waits
    assert value(got, "stockpipe_load_files", outcome="loaded") == files
    assert value(got, "stockpipe_load_files", outcome="left") == 5 - files
    assert value(got, "stockpipe_load_files", outcome="unchanged") == 0
    assert value(got, "stockpipe_load_files", outcome="linked") == 0
    assert value(got, "stockpipe_load_rows") == rows
    assert value(got, "stockpipe_load_offset_gaps") == 0
    assert value(got, "stockpipe_load_content_conflicts") == 0
    assert value(got, "stockpipe_load_failed") == 0
    ran = value(got, "stockpipe_load_last_run_timestamp_seconds")
    assert before <= ran <= after
    assert value(got, "stockpipe_load_last_success_timestamp_seconds") == ran
    assert 0 <= value(got, "stockpipe_load_duration_seconds") <= after - before
    promtool_accepts(prom)

    # the rest, then nothing new: a run that loads nothing is a success too
    assert run_stockpipe(settings, "load").returncode == 0
    done = run_stockpipe(settings, "load")
    assert done.returncode == 0, done.stdout
    got = gauges(prom)
    (loaded,) = query(settings, "SELECT count(*) FROM bronze.load_manifest")[0]
    assert loaded == 5
    assert value(got, "stockpipe_load_files", outcome="loaded") == 0
    assert value(got, "stockpipe_load_files", outcome="unchanged") == loaded
    assert value(got, "stockpipe_load_rows") == 0
    last_success = value(got, "stockpipe_load_last_success_timestamp_seconds")
    assert last_success > ran and value(got, "stockpipe_load_failed") == 0

    # a loaded file rewritten with other rows: the run fails (exit 2) after loading the
    # new file, and keeps the last success of the run before it
    conflicting = sorted(FS.glob(f"{settings.lake_url}/bars/**/*.parquet"))[0]
    write_bars(FS, settings.lake_url, bar_rows(2, symbol="NEW", seed=8), name="new")
    write_bars(
        FS, settings.lake_url, bar_rows(3, symbol="OLD", seed=4), name=Path(conflicting).stem
    )
    before = time.time()
    done = run_stockpipe(settings, "load")
    assert done.returncode == 2 and key_of(conflicting) in done.stdout, done.stdout
    got = gauges(prom)
    assert value(got, "stockpipe_load_failed") == 1
    assert value(got, "stockpipe_load_last_run_timestamp_seconds") >= before
    assert value(got, "stockpipe_load_last_success_timestamp_seconds") == last_success
    assert value(got, "stockpipe_load_content_conflicts") == 1
    new_rows = query(
        settings,
        "SELECT count(*), sum(row_count) FROM bronze.load_manifest WHERE load_seq = "
        "(SELECT max(load_seq) FROM bronze.load_manifest)",
    )[0]
    assert new_rows == (1, 2)
    assert value(got, "stockpipe_load_files", outcome="loaded") == new_rows[0]
    assert value(got, "stockpipe_load_rows") == new_rows[1]
    promtool_accepts(prom)


def test_a_load_that_cannot_start_is_a_failed_run_without_a_success(tmp_path: Path) -> None:
    settings = load_settings(
        lake_url=str(tmp_path / "lake"),
        warehouse="duckdb:///",  # a setting the loader rejects once it runs
        metrics_dir=tmp_path / "metrics",
    )

    done = run_stockpipe(settings, "load")

    assert done.returncode == 2, done.stdout
    got = gauges(settings.metrics_dir / "load.prom")
    assert value(got, "stockpipe_load_failed") == 1
    assert value(got, "stockpipe_load_last_run_timestamp_seconds") is not None
    # never succeeded: no last success (not a 0 that would read as 1970)
    assert value(got, "stockpipe_load_last_success_timestamp_seconds") is None
    assert not [k for k in got if k[0] == "stockpipe_load_files"]
    promtool_accepts(settings.metrics_dir / "load.prom")


def _statuses(run_results: Path) -> Counter[str]:
    """dbt's own statuses of a build, as the `status` label counts them."""
    label = {"success": "success", "pass": "success", "error": "error", "fail": "fail"}
    label |= {"warn": "warn", "skipped": "skip"}
    results = json.loads(run_results.read_text())["results"]
    return Counter(label[r["status"]] for r in results if r["status"] in label)


@pytest.mark.slow
@pytest.mark.dbt
def test_the_transform_writes_its_last_run_and_a_failed_build_keeps_the_last_success(
    tmp_path: Path,
) -> None:
    from test_dbt_transform import load_bronze, random_bars
    from test_marts_metrics import _session_minutes
    from test_transform_cli import _warehouse

    settings = _warehouse(tmp_path).model_copy(update={"metrics_dir": tmp_path / "metrics"})
    prom = settings.metrics_dir / "transform.prom"

    before = time.time()
    done = run_stockpipe(settings, "transform", timeout=900)
    after = time.time()

    assert done.returncode == 0, done.stdout[-3000:]
    got = gauges(prom)
    ran = value(got, "stockpipe_transform_last_run_timestamp_seconds")
    assert before <= ran <= after
    assert value(got, "stockpipe_transform_last_success_timestamp_seconds") == ran
    assert value(got, "stockpipe_transform_failed") == 0
    manifest = json.loads((settings.dbt_target_path / "manifest.json").read_text())
    built = sum(
        n["resource_type"] in ("model", "seed", "snapshot", "test")
        for n in manifest["nodes"].values()
    )
    nodes = {
        dict(labels)["status"]: v
        for (name, labels), v in got.items()
        if name == "stockpipe_transform_nodes"
    }
    assert nodes == {"success": built, "error": 0, "fail": 0, "warn": 0, "skip": 0}
    assert value(got, "stockpipe_transform_test_failures") == 0
    build = value(got, "stockpipe_transform_build_duration_seconds")
    docs = value(got, "stockpipe_transform_docs_duration_seconds")
    assert build > 0 and docs > 0 and build + docs <= after - before
    # the freshness of bronze: its newest bar, a session of 2024, so stale
    (newest,) = query(settings, "SELECT max(window_end) FROM bronze.bars")[0]
    source = {"source": "source.stockpipe.bronze.bars", "calendar": "XNYS"}
    end = value(got, "stockpipe_transform_source_newest_window_end_timestamp_seconds", **source)
    assert end == pd.Timestamp(newest).timestamp()
    assert value(got, "stockpipe_transform_stale_sources") == 1
    promtool_accepts(prom)

    # a bar dated past the calendar fails tests (test_transform_cli): exit 2
    outside = random_bars(
        "AAA", _session_minutes("2031-06-02", "09:30", "09:32"), np.random.default_rng(5)
    )
    load_bronze(
        settings.duckdb_path,
        outside.assign(_source_file="bars/t/1.parquet", _loaded_at=pd.Timestamp.now(tz="UTC")),
    )
    done = run_stockpipe(settings, "transform", timeout=900)
    assert done.returncode == 2, done.stdout[-3000:]
    got = gauges(prom)
    assert value(got, "stockpipe_transform_failed") == 1
    assert value(got, "stockpipe_transform_last_success_timestamp_seconds") == ran
    assert value(got, "stockpipe_transform_last_run_timestamp_seconds") > ran
    results = json.loads((settings.dbt_target_path / "run_results.json").read_text())["results"]
    nodes = {
        dict(labels)["status"]: v
        for (name, labels), v in got.items()
        if name == "stockpipe_transform_nodes"
    }
    want = _statuses(settings.dbt_target_path / "run_results.json")
    assert nodes == {s: want[s] for s in ("success", "error", "fail", "warn", "skip")}
    failing_tests = [
        r
        for r in results
        if r["unique_id"].startswith("test.") and r["status"] in ("fail", "error")
    ]
    assert failing_tests
    assert value(got, "stockpipe_transform_test_failures") == len(failing_tests)
    assert value(got, "stockpipe_transform_docs_duration_seconds") is None  # no docs then
    promtool_accepts(prom)
