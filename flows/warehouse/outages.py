"""`stockpipe load-outages`: the outage ledger into the warehouse, as `bronze.outages`.

The ledger (`flows.ingest.ledger`, the JSON-lines file at STOCKPIPE_OUTAGE_LOG) lists
stretches of data that never reached Kafka, and the backfill's repairs of them. Each
(entry, symbol) becomes one row of `bronze.outages`:

| column | from the ledger |
|---|---|
| `outage_id` | the entry's `id` (a hash of its content; derived for entries without one) |
| `symbol` | one of the entry's `symbols` |
| `start_ts`, `end_ts` | `start_ms`, `end_ms` (UTC); `end_ts` NULL while the outage is open |
| `source`, `reason` | the entry's |
| `repaired` | whether a repair line names (entry, symbol) |
| `repaired_via`, `repaired_at` | that line's `via` (trades or candles) and `at`; NULL if not repaired |
| `_loaded_at` | when the row was inserted or last changed |

Rows are upserted by (outage_id, symbol) (`Warehouse.upsert_reference`): a re-load
changes nothing, a later repair updates its row, and an entry rotated out of the
ledger file stays in the warehouse. A torn line (a crash mid-write) is skipped.

After each run, `outages.prom` in STOCKPIPE_METRICS_DIR holds the ledger's outages by
state and the start of the oldest one not repaired (flows/warehouse/metrics.py).

Exit codes: 0 loaded (or nothing to load), 2 a bad setting or an unreadable ledger,
69 the warehouse is unavailable.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.errors import StockpipeError
from flows.settings import Settings, load_settings

if TYPE_CHECKING:
    import pyarrow as pa

    from flows.ingest.ledger import Ledger

log = logging.getLogger(__name__)

OUTAGE_KEY = ("outage_id", "symbol")


def _instant(ms: Any) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if isinstance(ms, int) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _repaired_at(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def outage_rows(ledger: Ledger) -> list[dict[str, Any]]:
    """One `bronze.outages` row per (entry, symbol) of `ledger`, in ledger order."""
    rows = []
    for entry in ledger.entries:
        for symbol in entry["symbols"]:
            repair = ledger.repairs.get((entry["id"], str(symbol)))
            rows.append(
                {
                    "outage_id": entry["id"],
                    "symbol": str(symbol),
                    "start_ts": _instant(entry["start_ms"]),
                    "end_ts": _instant(entry.get("end_ms")),
                    "source": _text(entry.get("source")),
                    "reason": _text(entry.get("reason")),
                    "repaired": repair is not None,
                    "repaired_via": _text(repair.get("via")) if repair else None,
                    "repaired_at": _repaired_at(repair.get("at")) if repair else None,
                }
            )
    return rows


def outages_table(rows: list[dict[str, Any]]) -> pa.Table:
    import pyarrow as pa

    from flows.warehouse.base import OUTAGES_TABLE, REFERENCE_TABLES

    return pa.Table.from_pylist(rows, schema=REFERENCE_TABLES[OUTAGES_TABLE].arrow)


def read_outage_ledger(settings: Settings) -> Ledger:
    """The ledger at STOCKPIPE_OUTAGE_LOG (a missing file is empty); unreadable: an error."""
    from flows.ingest.ledger import read_ledger

    try:
        return read_ledger(settings.outage_log)
    except OSError as exc:
        raise StockpipeError(
            f"STOCKPIPE_OUTAGE_LOG={str(settings.outage_log)!r}: cannot read it ({exc.strerror})"
        ) from None


def load_outages(settings: Settings) -> dict[str, Any]:
    """Upsert the ledger into `bronze.outages`; what it did (the command's `--json`)."""
    from flows.warehouse.base import OUTAGES_TABLE
    from flows.warehouse.loader import open_warehouse
    from flows.warehouse.metrics import outage_states, record_outages

    ledger = read_outage_ledger(settings)
    rows = outage_rows(ledger)
    warehouse = open_warehouse(settings)
    try:
        warehouse.ensure_schema()
        result = warehouse.upsert_reference(OUTAGES_TABLE, outages_table(rows), OUTAGE_KEY)
    finally:
        warehouse.close()
    record_outages(settings, rows)
    states = outage_states(rows)
    report = {
        "ledger": str(settings.outage_log),
        "warehouse": settings.warehouse,
        "table": f"bronze.{OUTAGES_TABLE}",
        "entries": len(ledger.entries),
        "rows": result.rows,
        "changed": result.changed,
        "open": sum(r["end_ts"] is None for r in rows),
        "unrepaired": states["open"] + states["unrepaired"],
        "repaired": states["repaired"],
    }
    log.info(
        "bronze.%s: %d row(s) from %d ledger entries, %d inserted or changed",
        OUTAGES_TABLE,
        result.rows,
        len(ledger.entries),
        result.changed,
    )
    return report


def load_outages_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Load the outage ledger (STOCKPIPE_OUTAGE_LOG) into the warehouse as bronze.outages."""
    report = load_outages(load_settings())
    if json_output:
        typer.echo(json.dumps(report, indent=2))
        return
    if not report["entries"]:
        typer.echo(f"nothing to load: {report['ledger']} lists no outage")
        return
    typer.echo(
        f"{report['table']}: {report['rows']} row(s) from {report['entries']} ledger "
        f"entries in {report['ledger']} ({report['changed']} inserted or changed, "
        f"{report['open']} open, {report['unrepaired']} not repaired, "
        f"{report['repaired']} repaired)"
    )
