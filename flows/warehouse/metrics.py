"""Gauges of the last load run, written to `load.prom` in STOCKPIPE_METRICS_DIR, and of
the outage ledger at the last `stockpipe load-outages` run, in `outages.prom`.

A load is a batch job, so its metrics are gauges of the last run (Prometheus's
convention), which node_exporter's textfile collector serves between runs.
`stockpipe load` writes them after each run; under Airflow, the find step when
the lake has nothing new (a lake checked and found loaded is a successful
load: a quiet weekend is not a stale loader) and each load batch. A failed run
keeps the last success of the run before it, read back from the file, so
`time() - stockpipe_load_last_success_timestamp_seconds` is the time since
the last load that worked.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from flows.metrics import GaugeSpec, GaugeValue, gauges_registry, read_gauge, write_gauges
from flows.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path
    from typing import Any

    from flows.warehouse.loader import LoadSummary

LOAD_FILE = "load.prom"
LAST_SUCCESS = "stockpipe_load_last_success_timestamp_seconds"
LOAD_GAUGES = (
    GaugeSpec("stockpipe_load_last_run_timestamp_seconds", "When the last load run ended."),
    GaugeSpec(LAST_SUCCESS, "When the last load run that succeeded ended."),
    GaugeSpec("stockpipe_load_failed", "1 when the last load run failed, else 0."),
    GaugeSpec("stockpipe_load_duration_seconds", "How long the last load run took."),
    GaugeSpec(
        "stockpipe_load_files",
        "Lake files of the last load run by outcome: loaded, unchanged (in the manifest "
        "already), linked (new, found in older partitions by their links), left (new, for "
        "the next run).",
        ("outcome",),
    ),
    GaugeSpec("stockpipe_load_rows", "Rows the last load run committed into bronze.bars."),
    GaugeSpec(
        "stockpipe_load_offset_gaps",
        "Files the last load run found named by their partition's chain but not in the lake.",
    ),
    GaugeSpec(
        "stockpipe_load_content_conflicts",
        "Lake files the last load run found loaded before with other rows (not loaded again).",
    ),
)


def record_load(
    settings: Settings,
    summary: LoadSummary | None,
    *,
    failed: bool = False,
    seconds: float | None = None,
    conflicts: int = 0,
) -> Path | None:
    """Write `load.prom` for a run that ended now: `summary` is what it did (None when it
    failed before loading anything), `seconds` its duration when there is no summary."""
    now = time.time()
    directory = settings.metrics_dir
    values: dict[str, GaugeValue | None] = {
        "stockpipe_load_last_run_timestamp_seconds": now,
        LAST_SUCCESS: read_gauge(directory, LOAD_FILE, LAST_SUCCESS) if failed else now,
        "stockpipe_load_failed": 1.0 if failed else 0.0,
        "stockpipe_load_duration_seconds": summary.seconds if summary is not None else seconds,
        "stockpipe_load_content_conflicts": float(conflicts),
    }
    if summary is not None:
        values |= {
            "stockpipe_load_files": {
                ("loaded",): summary.files_loaded,
                ("unchanged",): summary.files_unchanged,
                ("linked",): summary.files_linked,
                ("left",): summary.files_left,
            },
            "stockpipe_load_rows": summary.rows,
            "stockpipe_load_offset_gaps": len(summary.gaps),
        }
    return write_gauges(directory, LOAD_FILE, gauges_registry(LOAD_GAUGES, values))


OUTAGES_FILE = "outages.prom"
OLDEST_UNREPAIRED = "stockpipe_outages_oldest_unrepaired_start_timestamp_seconds"
OUTAGE_GAUGES = (
    GaugeSpec(
        "stockpipe_outages",
        "Outages of the ledger (one per entry and symbol) at the last load-outages run, by "
        "state: open (no end yet), unrepaired (ended, not repaired), repaired.",
        ("state",),
    ),
    GaugeSpec(
        OLDEST_UNREPAIRED,
        "Start of the oldest outage of the ledger not repaired (open or ended); absent when "
        "none is.",
    ),
    GaugeSpec(
        "stockpipe_outages_last_load_timestamp_seconds",
        "When load-outages last loaded the ledger into the warehouse.",
    ),
)


def outage_states(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """(entry, symbol) rows of `bronze.outages` by state: open, unrepaired, repaired."""
    states = dict.fromkeys(("open", "unrepaired", "repaired"), 0)
    for row in rows:
        state = "repaired" if row["repaired"] else "open" if row["end_ts"] is None else "unrepaired"
        states[state] += 1
    return states


def record_outages(settings: Settings, rows: list[Mapping[str, Any]]) -> Path | None:
    """Write `outages.prom` for the ledger's `rows` (flows.warehouse.outages.outage_rows),
    loaded now: an operator (and the StockpipeOutageUnrepaired alert) sees what the
    backfill has left to repair without opening the warehouse."""
    waiting = [row["start_ts"].timestamp() for row in rows if not row["repaired"]]
    values: dict[str, GaugeValue | None] = {
        "stockpipe_outages": {(state,): n for state, n in outage_states(rows).items()},
        OLDEST_UNREPAIRED: min(waiting) if waiting else None,
        "stockpipe_outages_last_load_timestamp_seconds": time.time(),
    }
    return write_gauges(settings.metrics_dir, OUTAGES_FILE, gauges_registry(OUTAGE_GAUGES, values))
