"""`stockpipe transform` as a script sees it: `--json`, and selections that name nothing.

The real command in a subprocess, real dbt on a small DuckDB warehouse (bronze rows
inserted as `stockpipe load` would, as in test_marts_metrics.py). The JSON document
is held to what dbt itself wrote (`run_results.json`) and what the warehouse holds.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from helpers import run_stockpipe, run_stockpipe_json
from test_dbt_transform import TABLES, load_bronze, random_bars
from test_marts_metrics import _session_minutes

from flows.settings import Settings, load_settings

pytestmark = [pytest.mark.slow, pytest.mark.dbt]


def _warehouse(tmp_path: Path, *extra: pd.DataFrame) -> Settings:
    """Two NYSE sessions of one stock (and `extra` rows) in bronze, one load."""
    rng = np.random.default_rng(3)
    rows = pd.concat(
        [
            random_bars("AAA", _session_minutes("2024-12-02", "09:30", "16:00"), rng),
            random_bars("AAA", _session_minutes("2024-12-03", "09:30", "16:00"), rng),
            *extra,
        ],
        ignore_index=True,
    )
    db = tmp_path / "warehouse.duckdb"
    load_bronze(
        db, rows.assign(_source_file="bars/t/0.parquet", _loaded_at=pd.Timestamp.now(tz="UTC"))
    )
    return load_settings(warehouse=f"duckdb:///{db}", dbt_target_path=tmp_path / "target")


def _manifest_nodes(settings: Settings) -> set[str]:
    """Every node `dbt build` runs, from dbt's manifest: models, seeds, snapshots, tests,
    and exposures (a no-op)."""
    doc = json.loads((settings.dbt_target_path / "manifest.json").read_text())
    runs = {"model", "seed", "snapshot", "test"}
    nodes = {u for u, n in doc["nodes"].items() if n["resource_type"] in runs}
    return nodes | set(doc["exposures"])


def _plain(log: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", log)


def _dbt_summary(log: str) -> dict[str, int]:
    """dbt's own last line of a build: `Done. PASS=77 WARN=0 ERROR=0 SKIP=0 NO-OP=1 TOTAL=78`."""
    done = re.findall(r"Done\. (PASS=.*TOTAL=\d+)", _plain(log))
    return {k: int(v) for k, v in (item.split("=") for item in done[-1].split())}


def _as_summary(nodes: list[dict]) -> dict[str, int]:
    """The document's statuses counted the way dbt's summary line counts them."""
    kinds = {"success": "PASS", "pass": "PASS", "warn": "WARN", "error": "ERROR", "fail": "ERROR"}
    kinds |= {"skipped": "SKIP", "no-op": "NO-OP"}
    counts = dict.fromkeys(["PASS", "WARN", "ERROR", "SKIP", "NO-OP"], 0)
    for node in nodes:
        counts[kinds[node["status"]]] += 1
    return {**counts, "TOTAL": len(nodes)}


def _model_times(log: str) -> dict[str, float]:
    """Each model's time as dbt logs it: `... model silver.fct_bars_1m .... [OK in 0.26s]`."""
    found = re.findall(r" OK created sql \w+ model \w+\.(\w+) \.* \[OK in ([\d.]+)s\]", _plain(log))
    return {name: float(seconds) for name, seconds in found}


def test_transform_json_lists_every_node_dbt_ran_with_its_status_and_time(tmp_path: Path) -> None:
    settings = _warehouse(tmp_path)

    code, doc, err = run_stockpipe_json(settings, "transform", timeout=900)

    assert code == 0, err[-3000:]
    assert "Running with dbt=" in err  # dbt's own log: on stderr, stdout is the document
    assert "\x1b[" not in err  # not a terminal: no colour codes in the log
    assert {n["unique_id"] for n in doc["nodes"]} == _manifest_nodes(settings)
    assert _as_summary(doc["nodes"]) == _dbt_summary(err)
    assert doc["status_counts"] == dict(sorted(Counter(n["status"] for n in doc["nodes"]).items()))
    for node in doc["nodes"]:
        assert node["resource_type"] == node["unique_id"].split(".")[0]
        assert node["status"] in ("success", "pass", "no-op") and not node["failures"]
    times = _model_times(err)
    models = {
        n["unique_id"].split(".")[-1]: n for n in doc["nodes"] if n["resource_type"] == "model"
    }
    assert set(times) == set(models) >= {t.split(".")[1] for t in TABLES}
    for name, seconds in times.items():
        assert models[name]["execution_time_s"] == pytest.approx(seconds, abs=0.006)
    assert (doc["ok"], doc["failures"], doc["select"], doc["target"]) == (True, [], None, "duckdb")
    assert doc["build_seconds"] > 0 and doc["docs_seconds"] > 0
    assert Path(doc["docs_index"]).is_file()
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        (newest,) = con.execute("SELECT max(window_end) FROM bronze.bars").fetchone()
        rows = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    # two full sessions of one stock: every minute real, one daily row each
    assert (rows["silver.fct_bars_1m"], rows["gold.fct_bars_daily"]) == (2 * 390, 2)
    [fresh] = doc["freshness"]  # one calendar: XNYS
    assert (fresh["source"], fresh["calendar"]) == ("source.stockpipe.bronze.bars", "XNYS")
    assert pd.Timestamp(fresh["newest_window_end"]) == pd.Timestamp(newest)
    assert fresh["stale"] is True and fresh["stale_after_s"] == 1800  # a session of 2024
    assert doc["stale_sources"] == ["source.stockpipe.bronze.bars: warn"]

    index = Path(doc["docs_index"])
    written = index.stat().st_mtime_ns
    code, doc, err = run_stockpipe_json(
        settings, "transform", "--select", "fct_bars_daily", "--no-docs"
    )
    assert code == 0, err[-3000:]
    assert doc["select"] == "fct_bars_daily"
    assert (doc["docs_seconds"], doc["docs_index"]) == (None, None)  # --no-docs: none made
    assert index.stat().st_mtime_ns == written
    assert {n["unique_id"] for n in doc["nodes"] if n["resource_type"] == "model"} == {
        "model.stockpipe.fct_bars_daily"
    }
    assert _as_summary(doc["nodes"]) == _dbt_summary(err)


def test_a_failing_build_is_still_one_document_naming_the_failures(tmp_path: Path) -> None:
    """A bar dated past the calendar fails a test (test_marts_metrics): exit 2, and the
    document says which node failed, with dbt's own count of failing rows."""
    outside = random_bars(
        "AAA", _session_minutes("2031-06-02", "09:30", "09:32"), np.random.default_rng(5)
    )
    settings = _warehouse(tmp_path, outside)

    code, doc, err = run_stockpipe_json(settings, "transform", timeout=900)

    assert code == 2
    assert doc["ok"] is False
    assert {n["unique_id"] for n in doc["nodes"]} == _manifest_nodes(settings)
    assert _as_summary(doc["nodes"]) == _dbt_summary(err)
    failed = sorted(
        (n for n in doc["nodes"] if n["status"] in ("fail", "error")), key=lambda n: n["unique_id"]
    )
    assert failed and len(doc["failures"]) == len(failed)
    for line, node in zip(sorted(doc["failures"]), failed, strict=True):
        assert line.startswith(f"{node['unique_id']} ({node['status']}): ")
        if node["status"] == "fail":  # dbt's count of the test's failing rows
            assert node["failures"] > 0
    assert "2031-06-02" in " ".join(doc["failures"])
    assert doc["docs_seconds"] is None and doc["docs_index"] is None
    assert "dbt build failed on target duckdb" in err


@pytest.mark.parametrize("selection", ["nonexistent", "fct_bars_daily nonexistent"])
def test_a_selection_that_names_nothing_fails_naming_it(tmp_path: Path, selection: str) -> None:
    settings = _warehouse(tmp_path)

    done = run_stockpipe(settings, "transform", "--select", selection, timeout=600)

    assert done.returncode == 2, done.stdout[-3000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("stockpipe:")]
    assert line.startswith(
        f"stockpipe: --select {selection!r}: 'nonexistent' matches no model, seed, snapshot, "
        "test or source of the dbt project"
    )
    assert "Nothing to do" not in done.stdout and "Traceback" not in done.stdout
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:  # nothing built
        schemas = {r[0] for r in con.execute("SELECT schema_name FROM duckdb_schemas()").fetchall()}
    assert "gold" not in schemas


def test_a_selection_of_nothing_dbt_builds_fails_too(tmp_path: Path) -> None:
    settings = _warehouse(tmp_path)

    done = run_stockpipe(settings, "transform", "--select", "source:stockpipe.bronze.bars")

    assert done.returncode == 2
    assert (
        "stockpipe: --select 'source:stockpipe.bronze.bars' selects no model, seed, snapshot "
        "or test to build"
    ) in done.stdout
