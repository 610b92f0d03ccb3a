"""`stockpipe status`: values checked against what was produced, streamed, written and loaded."""

from __future__ import annotations

import json
import os
import pickle
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import fsspec
import orjson
import pytest
from helpers import consume_all, produce_raw
from load_helpers import bar_rows, write_bars

from flows.ops.status import (
    BrokerStatus,
    Limits,
    StatusReport,
    StreamStatus,
    TopicStatus,
    lake_status,
    run_checks,
    stream_status,
    warehouse_status,
)
from flows.settings import Settings, load_settings
from flows.stream.recovery import BARS_STEP, SOURCE_STEP, read_recovery_store

SYMBOLS = ("AAA", "BBB", "CCC", "DDD", "EEE")


def run(settings: Settings, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real console command with these settings (and `env` on top)."""
    full = {**os.environ, **settings.to_env(), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=240,
    )


def status_json(settings: Settings, env: dict | None = None) -> dict:
    done = run(settings, "status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


def stream_and_load(settings: Settings, topic: str, ticks: list[dict]) -> None:
    """Produce `ticks` (keyed by symbol), stream them until idle, load the lake."""
    produce_raw(
        settings.kafka_bootstrap_servers,
        topic,
        [(t["symbol"].encode(), orjson.dumps(t)) for t in ticks],
    )
    streamed = run(settings, "stream", "--exit-when-idle", "2s")
    assert streamed.returncode == 0, streamed.stderr[-3000:]
    loaded = run(settings, "load", "--no-progress")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.kafka
def test_status_after_stream_and_load_matches_what_was_produced(new_topic, settings_for):
    topic = new_topic("status", partitions=3)
    settings = settings_for(topic=topic)
    base = (int(time.time() * 1000) - 20 * 60_000) // 60_000 * 60_000
    ticks = []
    for i in range(40):
        for k, symbol in enumerate(SYMBOLS):
            ts = base + i * 7_000 + k * 13  # ~4.6 minutes of event time per symbol
            tick = {"symbol": symbol, "price": 10.0 + i, "volume": 1 + k, "ts": ts}
            ticks.append({**tick, "id": f"{symbol}-{i}"})
    # One late tick under a smaller ts (never the max) and one duplicate of an earlier tick.
    ticks.append({"symbol": "AAA", "price": 99.0, "volume": 1, "ts": base + 1, "id": "AAA-late"})
    ticks.append(dict(ticks[5 * len(SYMBOLS)]))  # same id: a duplicate of AAA-5
    stream_and_load(settings, topic, ticks)

    report = status_json(settings)

    # What the log holds now (ticks, heartbeats, the flush markers), per partition.
    records: dict[int, list] = {}
    for msg in consume_all(settings.kafka_bootstrap_servers, topic):
        records.setdefault(msg.partition(), []).append(msg)
    assert report["broker"] == {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "reachable": True,
        "error": None,
        "brokers": 1,
    }
    assert report["topic"]["exists"] is True
    topic_parts = {p["partition"]: p for p in report["topic"]["partitions"]}
    stream_parts = {p["partition"]: p for p in report["stream"]["partitions"]}
    assert set(topic_parts) == set(stream_parts) == {0, 1, 2}
    lateness = int(settings.allowed_lateness * 1000)
    want_symbols = {}
    for p in range(3):
        msgs = records.get(p, [])
        end = msgs[-1].offset() + 1 if msgs else 0
        last_log = msgs[-1].timestamp()[1] if msgs else None
        assert topic_parts[p]["end"] == end and topic_parts[p]["low"] == 0
        assert topic_parts[p]["log_time_ms"] == last_log
        sp = stream_parts[p]
        assert sp["committed"] == end and sp["end"] == end and sp["lag"] == 0, sp
        assert sp["log_time_ms"] == last_log  # the bar state has read up to the flush marker
        valid = [m for m in msgs if m.value() is not None]
        assert sp["ticks"] == len(valid)
        assert sp["open_windows"] == 0 and sp["pending_restatements"] == 0  # flushed
        assert sp["unsealed_rows"] == 0
        ids = [orjson.loads(m.value())["id"] for m in valid]
        assert sp["duplicates"] == len(ids) - len(set(ids))
        # Per symbol: the max event time, and the log time of the record that first brought it.
        for symbol in {orjson.loads(m.value())["symbol"] for m in valid}:
            mine = [(orjson.loads(m.value())["ts"], m) for m in valid if m.key() == symbol.encode()]
            max_ts = max(ts for ts, _ in mine)
            brought = next(m for ts, m in mine if ts == max_ts).timestamp()[1]
            want_symbols[symbol] = {
                "partition": p,
                "max_ts_ms": max_ts,
                "watermark_ms": max_ts - lateness + (last_log - brought),
            }
    assert sum(p["duplicates"] for p in stream_parts.values()) == 1
    got_symbols = {
        s["symbol"]: {k: s[k] for k in ("partition", "max_ts_ms", "watermark_ms")}
        for s in report["stream"]["symbols"]
    }
    assert got_symbols == want_symbols
    assert set(got_symbols) == set(SYMBOLS)
    for symbol in SYMBOLS:  # and the max event time is what was produced
        assert got_symbols[symbol]["max_ts_ms"] == max(
            t["ts"] for t in ticks if t["symbol"] == symbol
        )

    # The lake: the newest date= folder and its newest file.
    lake = Path(settings.lake_url)
    newest_day = max(datetime.fromtimestamp(t["ts"] / 1000, UTC).date() for t in ticks).isoformat()
    folder = lake / "bars" / "interval_s=60" / f"date={newest_day}"
    files = sorted(folder.glob("*.parquet"))
    assert report["lake"]["found"] is True
    assert report["lake"]["newest_partition"] == newest_day
    assert report["lake"]["files_in_newest_partition"] == len(files) > 0
    newest = Path(report["lake"]["newest_file"])
    assert newest.exists() and newest.parent == folder
    assert report["lake"]["newest_file_size"] == newest.stat().st_size
    assert newest.stat().st_mtime == max(f.stat().st_mtime for f in files)

    # The warehouse: one load of every bar file (the marts are not built here).
    import pyarrow.parquet as pq

    all_files = sorted((lake / "bars").rglob("*.parquet"))
    total_rows = sum(pq.read_metadata(f).num_rows for f in all_files)
    wh = report["warehouse"]
    assert wh["checked"] is True and wh["error"] is None
    assert wh["manifest_files"] == len(all_files)
    assert wh["bronze_rows"] == total_rows
    assert wh["last_load"]["files"] == len(all_files)
    assert wh["last_load"]["rows"] == total_rows
    if wh["has_load_seq"]:
        assert wh["last_load"]["load_seq"] == 1
    assert [(m["table"], m["exists"]) for m in report["marts"]] == [
        ("silver.fct_bars_1m", False),
        ("gold.fct_bars_daily", False),
    ]

    # The tables render too (exit 0, the lag and the newest file on screen).
    shown = run(settings, "status", env={"COLUMNS": "400"})
    assert shown.returncode == 0, shown.stderr
    assert "reachable" in shown.stdout and newest.name in shown.stdout
    assert "does not exist yet" in shown.stdout


def test_status_without_broker_and_without_anything_else_exits_0(tmp_path):
    settings = load_settings(
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",  # nothing listens there
        topic="nothing.here",
        lake_url=str(tmp_path / "lake"),
        recovery_dir=tmp_path / "recovery",
        warehouse=f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
    )
    report = status_json(settings)
    broker = report["broker"]
    assert broker["reachable"] is False
    assert broker["error"].startswith(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}")
    assert "\n" not in broker["error"]
    assert report["topic"]["checked"] is False and report["topic"]["partitions"] == []
    assert report["stream"]["found"] is False and "has not run" in report["stream"]["error"]
    assert report["lake"]["found"] is False
    assert report["warehouse"]["checked"] is False
    assert "no DuckDB file" in report["warehouse"]["error"]
    assert not (tmp_path / "warehouse.duckdb").exists()  # status never creates it
    assert [m["exists"] for m in report["marts"]] == [None, None]

    shown = run(settings, "status")
    assert shown.returncode == 0
    assert "Traceback" not in shown.stderr and shown.stderr == ""
    assert "unreachable" in shown.stdout


# ---------------------------------------------------------------- the recovery store


def _insert(path: Path, sql: str, rows: list[tuple]) -> None:
    with sqlite3.connect(path) as con:
        con.executemany(sql, rows)


def test_recovery_store_takes_the_newest_snapshot_below_the_resume_epoch(tmp_path):
    from bytewax.recovery import init_db_dir

    init_db_dir(tmp_path, 2)  # Bytewax's own schema
    p0, p1 = tmp_path / "part-0.sqlite3", tmp_path / "part-1.sqlite3"
    # Execution 0 (1 worker) then execution 1 with 2 workers resuming at epoch 4; worker 0
    # finished epoch 6, worker 1 epoch 8: a restart resumes at 6, so epochs < 6 are committed.
    _insert(p0, "INSERT INTO exs VALUES (CURRENT_TIMESTAMP, ?, ?, ?)", [(0, 1, 1), (1, 2, 4)])
    _insert(
        p1,
        "INSERT INTO fronts VALUES (CURRENT_TIMESTAMP, ?, ?, ?)",
        [(0, 0, 9), (1, 0, 6), (1, 1, 8)],
    )
    _insert(p0, "INSERT INTO commits VALUES (CURRENT_TIMESTAMP, ?, ?)", [(0, 5)])
    snap = "INSERT INTO snaps VALUES (CURRENT_TIMESTAMP, ?, ?, ?, ?)"
    _insert(
        p0,
        snap,
        [
            (SOURCE_STEP, "0-t", 3, pickle.dumps(100)),
            (SOURCE_STEP, "0-t", 5, pickle.dumps(200)),
            (SOURCE_STEP, "0-t", 7, pickle.dumps(300)),  # not committed: worker 0 is at 6
            (SOURCE_STEP, "1-t", 7, pickle.dumps(50)),  # only uncommitted snapshots
            ("other.step", "x", 1, pickle.dumps("ignored")),
        ],
    )
    _insert(
        p1,
        snap,
        [(SOURCE_STEP, "2-t", 2, pickle.dumps(10)), (SOURCE_STEP, "2-t", 4, None)],  # discarded
    )
    store = read_recovery_store(tmp_path)
    assert (store.execution, store.worker_count, store.resume_epoch) == (1, 2, 6)
    assert store.commit_epochs == {0: 5}
    assert store.snapshots == {
        (
            SOURCE_STEP,
            "0-t",
        ): (5, 200),
        (SOURCE_STEP, "2-t"): (4, None),
    }


def test_stream_status_reads_offsets_and_bar_state_without_a_broker(tmp_path):
    """A never-read partition (offset -2) counts as not committed; bar state gives watermarks."""
    from bytewax.recovery import init_db_dir

    from flows.ingest.ticks import decode_tick
    from flows.stream.bars import BarRules, FileRules, PartitionBars, Record

    settings = load_settings(
        kafka_bootstrap_servers="127.0.0.1:1",
        topic="t.x",
        recovery_dir=tmp_path,
        allowed_lateness="5s",
    )
    store = tmp_path / "t.x"
    store.mkdir()
    init_db_dir(store, 1)
    state = PartitionBars(BarRules.from_settings(settings), FileRules(), "t.x", 1)
    t0 = 1_750_000_000_000
    for offset, (ts, log) in enumerate([(t0, t0 + 10), (t0 + 30_000, t0 + 20), (t0 + 5, t0 + 40)]):
        value = orjson.dumps({"symbol": "ZZZ", "price": 1.5, "volume": 1, "ts": ts})
        tick = decode_tick(value, b"ZZZ", log, max_skew_ms=60_000, max_bytes=65_536)
        state.on_record(Record(offset, log, 0, tick))
    state.on_record(Record(3, t0 + 2_000, 1))  # a heartbeat moves log time
    part = store / "part-0.sqlite3"
    _insert(part, "INSERT INTO exs VALUES (CURRENT_TIMESTAMP, ?, ?, ?)", [(0, 1, 1)])
    _insert(part, "INSERT INTO fronts VALUES (CURRENT_TIMESTAMP, ?, ?, ?)", [(0, 0, 3)])
    _insert(
        part,
        "INSERT INTO snaps VALUES (CURRENT_TIMESTAMP, ?, ?, ?, ?)",
        [
            (SOURCE_STEP, "1-t.x", 2, pickle.dumps(4)),
            (SOURCE_STEP, "0-t.x", 2, pickle.dumps(-2)),  # OFFSET_BEGINNING: nothing read
            (BARS_STEP, "t.x#1", 2, pickle.dumps(state.snapshot())),
        ],
    )
    status = stream_status(settings)
    assert status.found and status.resume_epoch == 3 and status.error is None
    by_part = {p.partition: p for p in status.partitions}
    assert by_part[0].committed is None and by_part[0].lag is None  # no end offsets known
    p1 = by_part[1]
    assert (p1.committed, p1.snapshot_epoch, p1.log_time_ms, p1.ticks) == (4, 2, t0 + 2_000, 3)
    assert p1.open_windows == 1  # [t0+30s window] still open: watermark below its end
    [sym] = status.symbols
    assert sym.max_ts_ms == t0 + 30_000
    # max ts - lateness, advanced by log time since the record that brought it (t0 + 20)
    assert sym.watermark_ms == t0 + 30_000 - 5_000 + (t0 + 2_000 - (t0 + 20))


# --------------------------------------------------------------------------- warehouse


def _settings_with_duckdb(tmp_path: Path) -> Settings:
    return load_settings(warehouse=f"duckdb:///{tmp_path / 'wh.duckdb'}", lake_url=str(tmp_path))


def test_warehouse_status_on_an_older_warehouse_and_the_marts(tmp_path):
    """No load_seq column (before the migration): the last load is the newest batch."""
    settings = _settings_with_duckdb(tmp_path)
    with duckdb.connect(str(settings.duckdb_path)) as con:
        con.execute("CREATE SCHEMA bronze; CREATE SCHEMA silver; CREATE SCHEMA gold")
        con.execute(
            "CREATE TABLE bronze.load_manifest (path VARCHAR, target_table VARCHAR, "
            "size_bytes BIGINT, row_count BIGINT, batch_id VARCHAR, loaded_at TIMESTAMPTZ)"
        )
        con.execute(
            "INSERT INTO bronze.load_manifest VALUES "
            "('a', 'bars', 1, 10, 'b1', '2025-01-02 10:00:00+00'),"
            "('b', 'bars', 1, 20, 'b2', '2025-01-02 11:00:00+00'),"
            "('c', 'bars', 1, 5, 'b2', '2025-01-02 11:00:00+00')"
        )
        con.execute("CREATE TABLE bronze.bars AS SELECT range AS x FROM range(35)")
        con.execute(
            "CREATE TABLE silver.fct_bars_1m AS SELECT TIMESTAMPTZ '2025-01-02 15:59:00+00' "
            "AS window_start UNION ALL SELECT TIMESTAMPTZ '2025-01-02 14:30:00+00'"
        )
    wh, marts = warehouse_status(settings)
    assert wh.checked and wh.error is None and wh.has_load_seq is False
    assert (wh.manifest_files, wh.bronze_rows) == (3, 35)
    assert wh.last_load is not None
    assert (wh.last_load.load_seq, wh.last_load.batch_id) == (None, "b2")
    assert (wh.last_load.files, wh.last_load.rows) == (2, 25)
    assert wh.last_load.loaded_at == "2025-01-02T11:00:00+00:00"
    silver, gold = marts
    assert (silver.exists, silver.latest, silver.rows) == (True, "2025-01-02T15:59:00+00:00", 2)
    assert (gold.exists, gold.latest) == (False, None)

    # Migrated and loaded again: the last load is the greatest load sequence.
    with duckdb.connect(str(settings.duckdb_path)) as con:
        con.execute("ALTER TABLE bronze.load_manifest ADD COLUMN load_seq BIGINT")
        con.execute(
            "INSERT INTO bronze.load_manifest VALUES "
            "('d', 'bars', 1, 7, 'b3', '2025-01-03 09:00:00+00', 1),"
            "('e', 'bars', 1, 8, 'b4', '2025-01-03 09:05:00+00', 2),"
            "('f', 'bars', 1, 9, 'b4', '2025-01-03 09:05:00+00', 2)"
        )
        con.execute("CREATE TABLE gold.fct_bars_daily AS SELECT DATE '2025-01-02' AS trade_date")
    wh, (silver, gold) = warehouse_status(settings)
    assert wh.has_load_seq is True
    assert (wh.last_load.load_seq, wh.last_load.files, wh.last_load.rows) == (2, 2, 17)
    assert (gold.exists, gold.latest, gold.rows) == (True, date(2025, 1, 2).isoformat(), 1)


def test_warehouse_status_when_the_duckdb_file_is_locked(tmp_path):
    settings = _settings_with_duckdb(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            f"con = duckdb.connect({str(settings.duckdb_path)!r})\n"
            "con.execute('CREATE SCHEMA bronze')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        wh, marts = warehouse_status(settings)
        assert wh.checked is False and "locked by another process" in wh.error
        assert "\n" not in wh.error and wh.error_kind == "locked"
        assert [m.exists for m in marts] == [None, None]
        # a load or dbt holding the file is how the warehouse works: not a failed check
        report = _report(settings)
        checks = {c.name: c.status for c in run_checks(report, Limits(0, 0, 0, 0, 0), 0)}
        assert [checks[n] for n in ("warehouse", "load", "marts")] == ["not_checked"] * 3
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    wh, _ = warehouse_status(settings)  # released: readable, nothing loaded yet
    assert wh.checked is True and "no bronze.load_manifest" in wh.error


# ------------------------------------------------------------------------ --check

CHECKS = [
    "broker",
    "topic",
    "stream",
    "consumer_lag",
    "log_time_lag",
    "lake",
    "warehouse",
    "load",
    "marts",
    "offset_gaps",
]


def check(settings: Settings, *options: str) -> tuple[int, dict, str]:
    """`status --check --json` with these options: exit code, document, stderr."""
    done = run(settings, "status", "--check", "--json", *options)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def states(doc: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in doc["check"]["checks"]}


def detail(doc: dict, name: str) -> str:
    return next(c["detail"] for c in doc["check"]["checks"] if c["name"] == name)


@pytest.mark.kafka
def test_status_check_exits_3_naming_each_part_that_is_behind(new_topic, settings_for):
    topic = new_topic("check", partitions=3)
    settings = settings_for(topic=topic)
    base = (int(time.time() * 1000) - 10 * 60_000) // 60_000 * 60_000
    ticks = [
        {"symbol": s, "price": 10.0 + i, "volume": 1, "ts": base + i * 9_000, "id": f"{s}-{i}"}
        for i in range(30)
        for s in SYMBOLS
    ]
    stream_and_load(settings, topic, ticks)
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        [(loaded_at,)] = con.execute(
            "SELECT DISTINCT loaded_at FROM bronze.load_manifest"
        ).fetchall()
    lake = Path(settings.lake_url)

    # Everything is where it should be (the stream has stopped: its log time ages, so the
    # log-time limit is wide here): exit 0, every check ok.
    code, doc, _ = check(settings, "--max-log-time-lag", "1h")
    assert code == 0, doc["check"]
    assert states(doc) == dict.fromkeys(CHECKS, "ok")
    assert doc["check"]["ok"] is True and doc["check"]["failed"] == []
    assert doc["check"]["limits"] == {
        "max_lag": 10_000,
        "max_log_time_lag_s": 3600.0,
        "max_lake_delay_s": 600.0,
        "max_load_delay_s": 900.0,
        "max_mart_delay_s": 900.0,
    }
    newest = Path(doc["lake"]["newest_file"])
    assert doc["lake"]["newest_file_key"] == newest.relative_to(lake).as_posix()
    assert doc["warehouse"]["newest_lake_file_loaded"] is True
    silver = doc["marts"][0]
    assert (silver["table"], silver["exists"]) == ("silver.fct_bars_1m", False)
    # silver lacks the one load since it was committed: not yet too long ago
    assert datetime.fromisoformat(silver["behind_since"]) == loaded_at
    assert "check" not in status_json(settings)  # without --check: the report alone

    # Tight limits: the stopped stream's log time is behind the clock on every
    # partition, and silver lacks a load. Exit 3, the same report, which checks failed.
    code, doc, err = check(settings, "--max-log-time-lag", "0s", "--max-mart-delay", "0s")
    assert code == 3
    assert doc["check"]["failed"] == ["log_time_lag", "marts"]
    assert doc["check"]["ok"] is False
    assert {p["partition"] for p in doc["stream"]["partitions"] if p["log_time_ms"]} == {0, 1, 2}
    for p in range(3):
        assert f"partition {p}: the stream's log time is" in detail(doc, "log_time_lag")
    assert "status --check: 2 check(s) failed: log_time_lag:" in " ".join(err.split())
    shown = run(settings, "status", "--check", "--max-mart-delay", "0s", env={"COLUMNS": "300"})
    assert shown.returncode == 3 and "checks (--check)" in shown.stdout
    assert "lacks the loads since" in shown.stdout and "Traceback" not in shown.stderr

    # Records the stream has not read: consumer lag, per partition.
    extra = [
        {"symbol": "AAA", "price": 50.0, "volume": 1, "ts": base + 600_000 + i, "id": f"x{i}"}
        for i in range(7)
    ]
    produce_raw(
        settings.kafka_bootstrap_servers,
        topic,
        [(b"AAA", orjson.dumps(t)) for t in extra],
    )
    [part] = {
        m.partition()
        for m in consume_all(settings.kafka_bootstrap_servers, topic)
        if m.value() and orjson.loads(m.value())["id"].startswith("x")
    }
    code, doc, _ = check(settings, "--max-log-time-lag", "1h", "--max-lag", "6")
    assert code == 3 and doc["check"]["failed"] == ["consumer_lag"]
    assert {p["partition"]: p["lag"] for p in doc["stream"]["partitions"]} == {
        p: 7 if p == part else 0 for p in range(3)
    }
    assert detail(doc, "consumer_lag") == f"partition {part}: 7 records behind (at most 6)"
    assert check(settings, "--max-log-time-lag", "1h", "--max-lag", "7")[0] == 0

    # The lake's files an hour older than the ticks the stream read: a lake that stopped.
    hour_ago = time.time() - 3600
    files = sorted((lake / "bars").rglob("*.parquet"))
    for f in files:
        os.utime(f, (hour_ago, hour_ago))
    code, doc, _ = check(settings, "--max-log-time-lag", "1h")
    assert code == 3 and doc["check"]["failed"] == ["lake"]
    newest_tick = max(s["max_ts_log_ms"] for s in doc["stream"]["symbols"])
    # the newest tick read: the log time of the last tick produced (the AAA extras unread)
    records = consume_all(settings.kafka_bootstrap_servers, topic)
    first_ids = {t["id"] for t in ticks}
    assert newest_tick == max(
        m.timestamp()[1]
        for m in records
        if m.value() and orjson.loads(m.value())["id"] in first_ids
    )
    assert "after the lake's newest file was written" in detail(doc, "lake")

    # A new file nobody loaded, written 20 minutes ago: the load is behind.
    day = doc["lake"]["newest_partition"]
    start = datetime.fromisoformat(f"{day}T12:00:00+00:00")
    waiting = Path(
        write_bars(
            fsspec.filesystem("file"),
            settings.lake_url,
            bar_rows(3, symbol="ZZZ", start=start),
            name="waiting",
        )
    )
    twenty_ago = time.time() - 1200
    os.utime(waiting, (twenty_ago, twenty_ago))
    code, doc, _ = check(settings, "--max-log-time-lag", "1h", "--max-lake-delay", "2h")
    assert code == 3 and doc["check"]["failed"] == ["load"]
    key = waiting.relative_to(lake).as_posix()
    assert doc["lake"]["newest_file_key"] == key
    assert doc["warehouse"]["newest_lake_file_loaded"] is False
    assert detail(doc, "load").startswith(f"the lake's newest file {key} has waited 20m")
    assert (
        check(
            settings,
            "--max-log-time-lag",
            "1h",
            "--max-lake-delay",
            "2h",
            "--max-load-delay",
            "30m",
        )[0]
        == 0
    )
    assert run(settings, "load", "--no-progress").returncode == 0
    code, doc, _ = check(settings, "--max-log-time-lag", "1h", "--max-lake-delay", "2h")
    assert code == 0 and doc["warehouse"]["newest_lake_file_loaded"] is True


def test_status_check_without_any_part_fails_on_the_broker_and_the_stream(tmp_path):
    settings = load_settings(
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        topic="nothing.here",
        lake_url=str(tmp_path / "lake"),
        recovery_dir=tmp_path / "recovery",
        warehouse=f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
    )
    code, doc, err = check(settings)
    assert code == 3
    # nothing to compare the lake, the load or the marts with: not checked, not failed
    assert states(doc) == {
        "broker": "failed",
        "topic": "not_checked",
        "stream": "failed",
        "consumer_lag": "not_checked",
        "log_time_lag": "not_checked",
        "lake": "not_checked",
        "warehouse": "ok",
        "load": "not_checked",
        "marts": "not_checked",
        "offset_gaps": "not_checked",
    }
    assert doc["check"]["failed"] == ["broker", "stream"]
    assert detail(doc, "broker") == doc["broker"]["error"]
    assert err.count("\n") == 1 and err.startswith("stockpipe: status --check: 2 check(s) failed")

    bad = run(settings, "status", "--check", "--max-log-time-lag", "soon")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "stockpipe: --max-log-time-lag: not a duration: 'soon' "
        "(write e.g. 500ms, 5s, 10m, 1h or plain seconds)"
    )
    bad = run(settings, "status", "--check", env={"STOCKPIPE_CHECK_MAX_LAKE_DELAY": "later"})
    assert bad.returncode == 2 and "STOCKPIPE_CHECK_MAX_LAKE_DELAY" in bad.stderr
    assert "'later'" in bad.stderr and "Traceback" not in bad.stderr


def _report(settings: Settings) -> StatusReport:
    """A report of the lake and the warehouse alone (no broker, no stream)."""
    lake = lake_status(settings)
    warehouse, marts = warehouse_status(settings, lake.newest_file_key)
    return StatusReport(
        "now",
        settings.topic,
        BrokerStatus("127.0.0.1:1", reachable=False, error="down"),
        TopicStatus(settings.topic, checked=False, exists=None),
        StreamStatus("nowhere", found=False, error="no recovery store"),
        lake,
        warehouse,
        marts,
    )


def _silver_behind_one_load(tmp_path, seq_columns: str):
    """A warehouse whose silver took in the first load (AAA, its columns `seq_columns`
    made from bronze's `_load_seq`) and not the second (BBB); its settings and lake fs."""
    from flows.warehouse import load

    settings = _settings_with_duckdb(tmp_path)
    fs = fsspec.filesystem("file", auto_mkdir=True)
    write_bars(fs, settings.lake_url, bar_rows(3, symbol="AAA"), name="a")
    load(settings, progress=False)
    with duckdb.connect(str(settings.duckdb_path)) as con:
        con.execute("CREATE SCHEMA silver")
        con.execute(
            f"CREATE TABLE silver.fct_bars_1m AS SELECT window_start, {seq_columns} FROM bronze.bars"
        )
    write_bars(fs, settings.lake_url, bar_rows(2, symbol="BBB", seed=1), name="b")
    load(settings, progress=False)
    return settings, fs


def test_marts_check_reads_silvers_bronze_mark_not_its_change_mark(tmp_path):
    """Once silver reconciled outage flags its _load_seq (the change mark downstream models
    select by) is above the bronze loads; _bronze_load_seq says which it has taken in."""

    settings, fs = _silver_behind_one_load(
        tmp_path, "_load_seq AS _bronze_load_seq, _load_seq + 4 AS _load_seq"
    )
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        seqs = dict(con.execute("SELECT load_seq, loaded_at FROM bronze.load_manifest").fetchall())
    silver = _report(settings).marts[0]
    assert (silver.load_seq, datetime.fromisoformat(silver.behind_since)) == (1, seqs[2])


def test_marts_check_follows_the_oldest_load_silver_has_not_taken_in(tmp_path):
    """silver.fct_bars_1m's largest _load_seq against the manifest's loads with rows."""
    from flows.warehouse import load

    settings, fs = _silver_behind_one_load(tmp_path, "_load_seq")
    write_bars(fs, settings.lake_url, [], name="c")  # a file with no rows: nothing to take in
    load(settings, progress=False)
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        seqs = dict(con.execute("SELECT load_seq, loaded_at FROM bronze.load_manifest").fetchall())
    assert sorted(seqs) == [1, 2, 3]

    report = _report(settings)
    silver = report.marts[0]
    assert (silver.load_seq, datetime.fromisoformat(silver.behind_since)) == (1, seqs[2])
    limits = Limits(10_000, 300.0, 600.0, 900.0, 900.0)
    at = int(seqs[2].timestamp() * 1000)
    by_name = {c.name: c for c in run_checks(report, limits, at + 14 * 60_000)}
    assert by_name["marts"].status == "ok"
    by_name = {c.name: c for c in run_checks(report, limits, at + 16 * 60_000)}
    assert by_name["marts"].status == "failed"
    assert "silver.fct_bars_1m lacks the loads since" in by_name["marts"].detail
    assert by_name["load"].status == "ok"  # the newest file ("c") is loaded

    with duckdb.connect(str(settings.duckdb_path)) as con:  # dbt ran: silver took in load 2
        con.execute("UPDATE silver.fct_bars_1m SET _load_seq = 2 WHERE _load_seq = 1")
    report = _report(settings)
    assert (report.marts[0].load_seq, report.marts[0].behind_since) == (2, None)
    by_name = {c.name: c for c in run_checks(report, limits, at + 10**9)}
    assert by_name["marts"].status == "ok"  # load 3 brought no rows
