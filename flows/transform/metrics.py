"""Gauges of the last transform run, written to `transform.prom` in STOCKPIPE_METRICS_DIR.

Like the load's (flows/warehouse/metrics.py): gauges of the last run, for
node_exporter's textfile collector, a failed run keeping the last success
before it. `stockpipe transform` writes them all after each run. Under Airflow
the dbt nodes are tasks of their own, so the source_freshness task at the end
of a stockpipe_load run writes them instead: it runs only when no dbt task
failed, so the run is a success then (the marts hold every loaded row), with
the freshness it checked; node counts and durations are left out, as that task
does not know them. A dbt task that fails marks the run failed from its failure
callback (`orchestration.on_dbt_failure`), keeping the last success.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from flows.metrics import GaugeSpec, GaugeValue, gauges_registry, read_gauge, write_gauges
from flows.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from flows.transform.dbt_runner import SourceFreshness, TransformResult

TRANSFORM_FILE = "transform.prom"
LAST_SUCCESS = "stockpipe_transform_last_success_timestamp_seconds"
# dbt's node statuses, as the `status` label counts them (an exposure's no-op is no work)
NODE_STATUSES = {
    "success": "success",
    "pass": "success",
    "error": "error",
    "runtime error": "error",
    "fail": "fail",
    "warn": "warn",
    "skipped": "skip",
}
STATUS_LABELS = ("success", "error", "fail", "warn", "skip")
TRANSFORM_GAUGES = (
    GaugeSpec(
        "stockpipe_transform_last_run_timestamp_seconds", "When the last transform run ended."
    ),
    GaugeSpec(LAST_SUCCESS, "When the last transform run that succeeded ended."),
    GaugeSpec("stockpipe_transform_failed", "1 when the last transform run failed, else 0."),
    GaugeSpec("stockpipe_transform_build_duration_seconds", "How long its dbt build took."),
    GaugeSpec("stockpipe_transform_docs_duration_seconds", "How long its dbt docs generate took."),
    GaugeSpec(
        "stockpipe_transform_nodes",
        "dbt nodes the last dbt build ran, by status: success (pass), error, fail, warn, skip.",
        ("status",),
    ),
    GaugeSpec(
        "stockpipe_transform_test_failures",
        "dbt tests of the last build whose status was fail or error.",
    ),
    GaugeSpec(
        "stockpipe_transform_stale_sources",
        "Sources (per calendar) the last freshness check found stale.",
    ),
    GaugeSpec(
        "stockpipe_transform_source_newest_window_end_timestamp_seconds",
        "Event time of the newest bar of a source, per calendar, at the last freshness check.",
        ("source", "calendar"),
    ),
)


def _freshness(results: Sequence[SourceFreshness]) -> dict[str, GaugeValue | None]:
    return {
        "stockpipe_transform_stale_sources": float(sum(r.stale for r in results)),
        "stockpipe_transform_source_newest_window_end_timestamp_seconds": {
            (r.source, r.calendar): r.newest_window_end.timestamp() for r in results
        }
        or None,
    }


def _write(settings: Settings, failed: bool, values: dict[str, GaugeValue | None]) -> Path | None:
    now = time.time()
    directory = settings.metrics_dir
    values |= {
        "stockpipe_transform_last_run_timestamp_seconds": now,
        LAST_SUCCESS: read_gauge(directory, TRANSFORM_FILE, LAST_SUCCESS) if failed else now,
        "stockpipe_transform_failed": 1.0 if failed else 0.0,
    }
    return write_gauges(directory, TRANSFORM_FILE, gauges_registry(TRANSFORM_GAUGES, values))


def record_transform(
    settings: Settings, result: TransformResult | None, *, failed: bool = False
) -> Path | None:
    """Write `transform.prom` for a `stockpipe transform` that ended now: `result` is what
    it did (None when it failed before dbt build reported anything)."""
    values: dict[str, GaugeValue | None] = {}
    if result is not None:
        counts = Counter(NODE_STATUSES.get(n.status) for n in result.nodes)
        tests_failed = sum(
            n.resource_type == "test" and n.status in ("fail", "error") for n in result.nodes
        )
        values = {
            "stockpipe_transform_build_duration_seconds": result.build_seconds,
            "stockpipe_transform_docs_duration_seconds": result.docs_seconds,
            "stockpipe_transform_nodes": {(s,): counts[s] for s in STATUS_LABELS},
            "stockpipe_transform_test_failures": float(tests_failed),
            **_freshness(result.freshness),
        }
    return _write(settings, failed, values)


def record_dag_transform(settings: Settings, freshness: Sequence[SourceFreshness]) -> Path | None:
    """Write `transform.prom` from a DAG run whose dbt tasks had no failure: a success,
    with the freshness just checked (no node counts: those ran as tasks of their own)."""
    return _write(settings, False, _freshness(freshness))
