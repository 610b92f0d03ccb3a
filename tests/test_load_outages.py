"""`stockpipe load-outages`: the outage ledger as bronze.outages, on real DuckDB and on the
Snowflake emulator (fakesnow, in-process), compared row by row with an independent
reading of the JSON lines; and the Snowflake MERGE's text parsed as Snowflake SQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import fakesnow
import pytest
from helpers import run_stockpipe
from load_helpers import emulated_loader_settings, emulator_query
from prometheus_client.parser import text_string_to_metric_families
from test_snowflake_sql import snowflake_violations

from flows.ingest.ledger import Outage, append_outage, append_repaired, entry_id, read_ledger
from flows.settings import Settings, load_settings
from flows.warehouse.base import OUTAGES_TABLE, REFERENCE_TABLES, SPLITS_TABLE
from flows.warehouse.outages import load_outages
from flows.warehouse.snowflake_warehouse import upsert_statement

T0 = 1_732_633_200_000  # 2024-11-26T15:00:00Z
MIN = 60_000
COLUMNS = [c.name for c in REFERENCE_TABLES[OUTAGES_TABLE].columns]


def write_ledger(path: Path) -> dict[str, str]:
    """Open, closed, multi-symbol, repaired (trades, candles) and old entries, a torn line."""
    open_ = Outage(T0, ["COIN"], "stall", source="finnhub-ws")  # still open: no end
    closed = Outage(T0 + MIN, ["MARA"], "drop", end_ms=T0 + 3 * MIN, source="finnhub-ws")
    multi = Outage(
        T0 + 10 * MIN, ["COIN", "MARA", "MSTR"], "timeout", end_ms=T0 + 11 * MIN,
        source="kafka-producer", count=7, topic="stock.ticks",
    )  # fmt: skip
    for outage in (open_, closed, multi):
        append_outage(path, outage)
    ids = {name: json.loads(o.line())["id"] for name, o in [("open", open_), ("closed", closed)]}
    ids["multi"] = json.loads(multi.line())["id"]
    append_repaired(path, ids["multi"], "COIN", "trades", 12)
    append_repaired(path, ids["multi"], "MARA", "candles", 8)
    append_repaired(path, ids["closed"], "MARA", "trades", 3)
    # an entry of a writer from before ids, and a line torn by a crash mid-write
    old = {"start_ms": T0 - MIN, "end_ms": T0 - 1, "symbols": ["BLK"], "reason": "x", "source": "s"}
    with path.open("ab") as fh:
        fh.write(json.dumps(old).encode() + b"\n")
        fh.write(b'{"start_ms": 1732633200000, "symbols": ["CO')
    ids["old"] = entry_id(old)
    return ids


def expected_rows(path: Path) -> list[tuple]:
    """bronze.outages as the JSON lines say, read here with `json`, not the ledger module."""
    entries, repairs = [], {}
    for raw in path.read_bytes().splitlines():
        try:
            obj = json.loads(raw)
        except ValueError:
            continue  # the torn line
        if "repaired" in obj:
            repairs.setdefault((obj["repaired"], obj["symbol"]), obj)
        else:
            entries.append(obj)
    rows = []
    for e in entries:
        outage_id = e.get("id") or entry_id(e)  # the old entry: the id its content hashes to
        for symbol in e["symbols"]:
            r = repairs.get((outage_id, symbol))
            rows.append(
                (
                    outage_id,
                    symbol,
                    datetime.fromtimestamp(e["start_ms"] / 1000, UTC),
                    datetime.fromtimestamp(e["end_ms"] / 1000, UTC) if e.get("end_ms") else None,
                    e.get("source"),
                    e.get("reason"),
                    r is not None,
                    r["via"] if r else None,
                    datetime.fromisoformat(r["at"]) if r else None,
                )
            )
    return sorted(rows)


def outage_gauges(settings: Settings) -> dict[tuple[str, tuple], float]:
    """outages.prom as Prometheus's own text parser reads it: (name, labels) -> value."""
    text = (settings.metrics_dir / "outages.prom").read_text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def expected_gauges(rows: list[tuple]) -> dict[tuple[str, tuple], float]:
    """The gauges of `expected_rows`: outages by state, the oldest start not repaired."""
    states = {"open": 0, "unrepaired": 0, "repaired": 0}
    for row in rows:
        states["repaired" if row[6] else "open" if row[3] is None else "unrepaired"] += 1
    out = {("stockpipe_outages", (("state", k),)): float(v) for k, v in states.items()}
    waiting = [row[2].timestamp() for row in rows if not row[6]]
    if waiting:
        out[("stockpipe_outages_oldest_unrepaired_start_timestamp_seconds", ())] = min(waiting)
    return out


def assert_outage_gauges(settings: Settings, started: float) -> None:
    got = outage_gauges(settings)
    loaded = got.pop(("stockpipe_outages_last_load_timestamp_seconds", ()))
    assert started <= loaded <= time.time()
    assert got == expected_gauges(expected_rows(settings.outage_log))


@pytest.fixture(params=["duckdb", "snowflake"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Settings, object]]:
    """Settings for a warehouse of each kind, and a function that reads a table from it."""
    ledger = tmp_path / "outages.jsonl"
    metrics = tmp_path / "metrics"
    if request.param == "duckdb":
        path = tmp_path / "wh.duckdb"
        settings = load_settings(
            warehouse=f"duckdb:///{path}",
            lake_url=str(tmp_path / "lake"),
            outage_log=ledger,
            metrics_dir=metrics,
        )

        def query(sql: str) -> list[tuple]:
            with duckdb.connect(str(path), read_only=True) as con:
                return con.execute(sql).fetchall()

        yield settings, query
        return
    with fakesnow.patch(nop_regexes=["^REMOVE "]):
        settings = emulated_loader_settings(
            lake_url=str(tmp_path / "lake"), outage_log=ledger, metrics_dir=metrics
        )

        def query(sql: str) -> list[tuple]:
            return emulator_query(sql.replace("bronze.", "stockpipe.bronze."))

        yield settings, query


def _utc(value: object) -> object:
    return value.astimezone(UTC) if isinstance(value, datetime) else value


def table_rows(query, with_loaded_at: bool = False) -> list[tuple]:
    columns = COLUMNS + (["_loaded_at"] if with_loaded_at else [])
    rows = query(f"SELECT {', '.join(columns)} FROM bronze.outages ORDER BY 1, 2")
    return sorted(tuple(_utc(v) for v in row) for row in rows)


def test_the_ledger_loads_row_by_row_and_reloads_idempotently_then_updates_a_repair(
    target: tuple[Settings, object],
) -> None:
    settings, query = target
    ids = write_ledger(settings.outage_log)

    started = time.time()
    first = load_outages(settings)

    want = expected_rows(settings.outage_log)
    assert len(want) == 1 + 1 + 3 + 1  # open, closed, three symbols of one entry, old
    assert table_rows(query) == want
    assert first["rows"] == first["changed"] == 6 and first["entries"] == 4
    assert first["open"] == 1 and first["repaired"] == 3 and first["unrepaired"] == 3
    # outages.prom: open COIN; the old BLK and the multi entry's MSTR ended, not repaired
    assert_outage_gauges(settings, started)
    assert outage_gauges(settings)[("stockpipe_outages", (("state", "unrepaired"),))] == 2
    by_key = {(r[0], r[1]): r for r in want}
    assert by_key[(ids["open"], "COIN")][3] is None  # open: NULL end
    assert by_key[(ids["multi"], "COIN")][6:8] == (True, "trades")
    assert by_key[(ids["multi"], "MARA")][6:8] == (True, "candles")
    assert by_key[(ids["multi"], "MSTR")][6:] == (False, None, None)
    assert (ids["old"], "BLK") in by_key

    # a re-load changes nothing, not even _loaded_at
    before = table_rows(query, with_loaded_at=True)
    again = load_outages(settings)
    assert again["rows"] == 6 and again["changed"] == 0
    assert table_rows(query, with_loaded_at=True) == before

    # a later repair updates exactly that row
    append_repaired(settings.outage_log, ids["multi"], "MSTR", "candles", 4)
    third = load_outages(settings)
    assert third["changed"] == 1
    assert_outage_gauges(settings, started)
    after = table_rows(query, with_loaded_at=True)
    assert table_rows(query) == expected_rows(settings.outage_log)
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert [new[:2] for _old, new in changed] == [(ids["multi"], "MSTR")]
    ((old, new),) = changed
    assert new[6:8] == (True, "candles") and new[8] is not None and new[9] > old[9]

    # the ledger rotated (only a new entry left): what was loaded stays
    settings.outage_log.unlink()
    append_outage(
        settings.outage_log, Outage(T0 + 20 * MIN, ["BLK"], "stall", end_ms=T0 + 21 * MIN)
    )
    load_outages(settings)
    rows = table_rows(query)
    assert len(rows) == 7
    assert {r[:9] for r in after} <= set(rows)  # every earlier row, unchanged


def test_read_ledger_keeps_each_repairs_line_and_its_callers_sets(tmp_path: Path) -> None:
    path = tmp_path / "outages.jsonl"
    ids = write_ledger(path)
    append_repaired(path, ids["multi"], "COIN", "candles", 1)  # a second repair: the first stays
    ledger = read_ledger(path)
    assert (ids["multi"], "COIN") in ledger.repaired and len(ledger.entries) == 4
    assert ledger.repairs[(ids["multi"], "COIN")]["via"] == "trades"
    assert set(ledger.repairs) == ledger.repaired


def test_command_prints_one_json_document_and_names_an_unreadable_ledger(tmp_path: Path) -> None:
    ledger = tmp_path / "outages.jsonl"
    write_ledger(ledger)
    settings = load_settings(
        warehouse=f"duckdb:///{tmp_path / 'wh.duckdb'}",
        lake_url=str(tmp_path / "lake"),
        outage_log=ledger,
    )
    done = run_stockpipe(settings, "load-outages", "--json")
    assert done.returncode == 0, done.stdout
    report = json.loads(done.stdout)
    assert (report["rows"], report["changed"], report["table"]) == (6, 6, "bronze.outages")
    text = run_stockpipe(settings, "load-outages")
    assert text.returncode == 0 and "6 row(s) from 4 ledger entries" in text.stdout

    # a folder where the ledger should be: exit 2, the setting and value named
    folder = load_settings(**{**settings.model_dump(), "outage_log": tmp_path})
    bad = run_stockpipe(folder, "load-outages")
    assert bad.returncode == 2, bad.stdout
    assert f"STOCKPIPE_OUTAGE_LOG='{tmp_path}'" in bad.stdout and "Traceback" not in bad.stdout

    # the warehouse file held by another process: a service unavailable (69)
    with duckdb.connect(str(tmp_path / "wh.duckdb")):
        held = run_stockpipe(settings, "load-outages")
    assert held.returncode == 69, held.stdout
    assert "Traceback" not in held.stdout


@pytest.mark.parametrize("table", [OUTAGES_TABLE, SPLITS_TABLE])
def test_the_snowflake_merge_is_snowflakes_documented_syntax(table: str) -> None:
    """MERGE INTO ... USING (SELECT CAST(...) FROM (VALUES ...) AS v(...)) AS s ON <key>
    WHEN MATCHED AND <changed> THEN UPDATE ... WHEN NOT MATCHED THEN INSERT ...
    (https://docs.snowflake.com/en/sql-reference/sql/merge)."""
    import sqlglot
    from sqlglot import exp

    ref = REFERENCE_TABLES[table]
    target = f'"STOCKPIPE"."BRONZE"."{table.upper()}"'
    sql = upsert_statement(target, ref, 3)
    # The connector binds %s client-side; parse with the values' places marked by `?`, and
    # hold it to the constructs tests/test_snowflake_sql.py rules out for the models.
    marked = sql.replace("%s", "?")
    parsed = sqlglot.parse_one(marked, read="snowflake", error_level=sqlglot.ErrorLevel.RAISE)
    assert snowflake_violations(marked) == []
    assert isinstance(parsed, exp.Merge)
    assert parsed.this.sql("snowflake").startswith(target)
    whens = parsed.args["whens"].expressions
    assert [(bool(w.args.get("matched")), type(w.args["then"]).__name__) for w in whens] == [
        (True, "Update"),
        (False, "Insert"),
    ]
    assert whens[0].args.get("condition") is not None  # unchanged rows are left alone
    on = parsed.args["on"].sql("snowflake")
    assert on == " AND ".join(f't."{k.upper()}" = s."{k.upper()}"' for k in ref.key)
    values = parsed.find(exp.Values)
    assert len(values.expressions) == 3 and values.alias == "v"
    # every column is cast to its Snowflake type; 3 rows of values plus _loaded_at twice
    casts = [c.this.name.upper() for c in parsed.find_all(exp.Cast)]
    assert casts == [c.name.upper() for c in ref.columns]
    for c in ref.columns:  # the types of setup.sql, as written there
        name = c.name.upper()
        assert f'CAST(v."{name}" AS {c.snowflake}) AS "{name}"' in sql
    assert sql.count("%s") == 3 * len(ref.columns) + 2
    # no key column is ever updated
    updated = {e.this.name.upper() for e in whens[0].args["then"].expressions}
    assert updated.isdisjoint(k.upper() for k in ref.key) and "_LOADED_AT" in updated
