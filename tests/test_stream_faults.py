"""The dataflow under the faults production brings, on the real broker.

Poison records, duplicates far apart, ticks stamped hours ahead, bursts of late
ticks, quiet feeds, and a resume offset that retention removed. Expected bars
come from `helpers.batch_bars`, a separate computation.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import polars as pl
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from helpers import (
    assert_bars_equal,
    assert_each_row_once,
    batch_bars,
    consume_all,
    final_bars,
    produce_raw,
    read_lake_bars,
    run_stockpipe,
    stockpipe,
)

from flows.ingest.kafka_out import HEARTBEAT_HEADER
from flows.settings import load_settings

pytestmark = pytest.mark.kafka

T0 = 1_741_100_400_000  # 2025-03-04T15:00:00Z


def msg(symbol: str, ts: int, price: float, volume: float | None = 1, **extra: object) -> bytes:
    return orjson.dumps({"symbol": symbol, "price": price, "volume": volume, "ts": ts, **extra})


def as_ticks(pairs: list[tuple[str, int, float, float | None]]) -> list[dict]:
    """(symbol, ts, price, volume) in arrival order -> batch_bars input (seq = arrival index)."""
    return [
        {"symbol": s, "ts": ts, "seq": i, "price": p, "volume": v}
        for i, (s, ts, p, v) in enumerate(pairs)
    ]


def dlq_reasons(settings) -> list[str]:
    return sorted(
        dict(m.headers())["stockpipe.reason"].decode()
        for m in consume_all(settings.kafka_bootstrap_servers, settings.dlq_topic)
    )


def test_poison_records_go_to_the_dlq_and_the_stream_exits_0(new_topic, settings_for):
    topic = new_topic("poison")
    settings = settings_for(topic=topic)
    good = [("COIN", T0 + i * 1000, 100.0 + i, 10.0) for i in range(40)]
    too_late = T0 - 3 * 86_400_000
    poison: list[tuple[bytes | None, bytes | None, str]] = [
        (b"COIN", b'{"symbol":"COIN","price":1' + b"0" * 400 + b',"volume":1,"ts":%d}' % T0, "?"),
        (
            b"COIN",
            b'{"symbol":"COIN","price":1,"volume":1,"ts":%d,"conditions":["\\ud800"]}' % T0,
            "bad-text",
        ),
        (
            b"COIN",
            b'{"symbol":"COIN","price":1,"volume":1,"ts":%d,"id":"\\udfff"}' % too_late,
            "bad-text",
        ),
        (
            b"COIN",
            b'{"symbol":"COIN","price":1,"volume":1,"ts":%d,"source":"\\ud800x"}' % too_late,
            "bad-text",
        ),
        (b"COIN", b"[" * 100_000, "invalid-json"),
        (b"COIN", b'{"symbol":"COIN","price":1e400,"volume":1,"ts":%d}' % T0, "?"),
        (b"COIN", b'{"symbol":"COIN","price":1,"volume":%d,"ts":%d}' % (2**70, T0), "?"),
        (b"COIN", None, "empty-message"),
        (b"COIN", msg("COIN", T0, 1.0, pad="x" * 70_000), "too-large"),
        (None, msg("COIN", T0, 1.0), "missing-key"),
        (b"COIN", b"\xff\xfe\xfd", "invalid-json"),
    ]
    messages = [(b"COIN", msg(s, ts, p, v)) for s, ts, p, v in good[:20]]
    messages += [(k, v) for k, v, _ in poison]
    messages += [(b"COIN", msg(s, ts, p, v)) for s, ts, p, v in good[20:]]
    produce_raw(settings.kafka_bootstrap_servers, topic, messages)

    done = run_stockpipe(settings, "stream", "--exit-when-idle", "3")
    assert done.returncode == 0, done.stdout
    dlq = consume_all(settings.kafka_bootstrap_servers, settings.dlq_topic)
    assert len(dlq) == len(poison)
    by_offset = {int(dict(m.headers())["stockpipe.source.offset"]): m for m in dlq}
    assert len(by_offset) == len(poison)
    for m in dlq:
        headers = dict(m.headers())
        reason = headers["stockpipe.reason"].decode()
        assert reason and headers["stockpipe.detail"], headers
    reasons = dlq_reasons(settings)
    for _, _, want in poison:
        if want != "?":
            assert want in reasons, (want, reasons)
    assert_bars_equal(final_bars(read_lake_bars(settings.lake_url)), batch_bars(as_ticks(good)))

    # A restart reads past them again without stopping: nothing poisons the recovery state.
    assert run_stockpipe(settings, "stream", "--exit-when-idle", "2").returncode == 0


def test_a_duplicate_15_minutes_late_counts_once(new_topic, settings_for):
    topic = new_topic("dup15")
    settings = settings_for(topic=topic)
    ticks = [("MSTR", T0 + i * 10_000, 300.0 + i, 5.0) for i in range(20 * 6)]  # 20 minutes
    messages = [(b"MSTR", msg(s, ts, p, v)) for s, ts, p, v in ticks]
    messages.append(messages[0])  # the first trade again, 20 minutes of event time later
    messages.append((b"MSTR", msg("MSTR", ticks[1][1], ticks[1][2], 5.0, id="x")))  # new trade
    produce_raw(settings.kafka_bootstrap_servers, topic, messages)

    assert run_stockpipe(settings, "stream", "--exit-when-idle", "3").returncode == 0
    want = batch_bars(as_ticks([*ticks, ("MSTR", ticks[1][1], ticks[1][2], 5.0)]))
    got = final_bars(read_lake_bars(settings.lake_url))
    assert_bars_equal(got, want)
    assert got.filter(pl.col("window_start") == T0)["trade_count"].to_list() == [7]


def test_a_tick_hours_ahead_goes_to_the_dlq_and_its_symbol_stays_exact(new_topic, settings_for):
    topic = new_topic("future")
    settings = settings_for(topic=topic)
    now = int(time.time() * 1000)
    start = now - 30 * 60_000
    ticks = [("BLK", start + i * 5_000, 900.0 + i % 7, 1.0) for i in range(300)]  # 25 minutes
    messages = [(b"BLK", msg(s, ts, p, v)) for s, ts, p, v in ticks[:100]]
    messages.append((b"BLK", msg("BLK", now + 5 * 3_600_000, 901.0)))  # a ms/s or time-zone bug
    messages += [(b"BLK", msg(s, ts, p, v)) for s, ts, p, v in ticks[100:]]
    produce_raw(settings.kafka_bootstrap_servers, topic, messages)

    assert run_stockpipe(settings, "stream", "--exit-when-idle", "3").returncode == 0
    assert dlq_reasons(settings) == ["future-ts"]
    assert_bars_equal(final_bars(read_lake_bars(settings.lake_url)), batch_bars(as_ticks(ticks)))
    assert not (Path(settings.lake_url) / "late").exists(), "normal ticks went to late/"


def test_a_thousand_late_ticks_make_a_few_rows_per_window(new_topic, settings_for):
    topic = new_topic("burst")
    settings = settings_for(topic=topic)
    on_time = [("MARA", T0 + i * 6_000, 20.0, 1.0) for i in range(100)]  # 10 minutes
    late = [("MARA", T0 + (i % 5) * 60_000 + 30_000 + i, 20.0 + i / 1000, 2.0) for i in range(1000)]
    messages = [(b"MARA", msg(s, ts, p, v)) for s, ts, p, v in on_time + late]
    produce_raw(settings.kafka_bootstrap_servers, topic, messages)

    assert run_stockpipe(settings, "stream", "--exit-when-idle", "3").returncode == 0
    rows = read_lake_bars(settings.lake_url)
    assert_bars_equal(final_bars(rows), batch_bars(as_ticks(on_time + late)))
    per_window = rows.group_by("window_start").len()["len"]
    assert per_window.max() <= 3, rows.sort(["window_start", "revision"])
    assert rows.height < 40
    assert_each_row_once(rows)


def test_heartbeats_close_the_windows_of_a_quiet_feed(new_topic, settings_for):
    topic = new_topic("quiet")
    settings = settings_for(topic=topic, flush_interval=1.0)
    now = int(time.time() * 1000)
    ts = now - now % 60_000 - 30_000  # the middle of the previous minute
    produce_raw(settings.kafka_bootstrap_servers, topic, [(b"COIN", msg("COIN", ts, 250.0))])

    worker = stockpipe(settings, "stream")  # no more ticks come: only log time can close it
    try:
        lake = Path(settings.lake_url)
        deadline = time.time() + 120
        while not list(lake.rglob("*.parquet")) and time.time() < deadline:
            time.sleep(0.5)
        rows = read_lake_bars(lake)
        assert rows["window_start"].to_list() == [ts - ts % 60_000]
        assert rows["revision"].to_list() == [0]
    finally:
        worker.terminate()
        worker.wait(30)
    heartbeats = [
        m
        for m in consume_all(settings.kafka_bootstrap_servers, topic)
        if m.value() is None and dict(m.headers() or [])[HEARTBEAT_HEADER] == b"1"
    ]
    assert heartbeats, "the stream wrote no heartbeat"


def test_a_vanished_resume_offset_stops_the_stream_with_a_message(new_topic, settings_for):
    topic = new_topic("gone", partitions=1)
    settings = settings_for(topic=topic)
    bootstrap = settings.kafka_bootstrap_servers
    produce_raw(bootstrap, topic, [(b"COIN", msg("COIN", T0 + i, 10.0)) for i in range(10)])
    assert run_stockpipe(settings, "stream", "--exit-when-idle", "2").returncode == 0

    produce_raw(bootstrap, topic, [(b"COIN", msg("COIN", T0 + 100 + i, 11.0)) for i in range(10)])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    from confluent_kafka import Consumer

    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
    _, high = probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    probe.close()
    for future in admin.delete_records([TopicPartition(topic, 0, high - 3)]).values():
        future.result(timeout=30)  # retention, in effect: the stream's resume offset is gone

    done = run_stockpipe(settings, "stream", "--exit-when-idle", "2")
    assert done.returncode == 2, done.stdout
    assert f"{topic}[0]" in done.stdout and "--reset-offsets" in done.stdout
    assert "Traceback" not in done.stdout

    done = run_stockpipe(settings, "stream", "--exit-when-idle", "2", "--reset-offsets", "earliest")
    assert done.returncode == 0, done.stdout
    got = final_bars(read_lake_bars(settings.lake_url))
    assert got["trade_count"].sum() == 10 + 3  # the first run's ticks, then what was left


def test_bar_state_from_an_older_stockpipe_stops_with_what_to_do():
    from flows.errors import StockpipeError
    from flows.stream.bars import BarRules, FileRules
    from flows.stream.dataflow import BarLogic

    old = ("COIN", (1, 1_741_100_400_000, 0.0, {}, {}, [], 0, 0))
    with pytest.raises(StockpipeError, match="delete STOCKPIPE_RECOVERY_DIR"):
        BarLogic(BarRules(), FileRules(), old, {})


def test_bar_state_made_under_other_rules_stops_with_each_changed_setting():
    """The check each partition's state makes on restore, whatever the store's record says."""
    from flows.stream.bars import BarRules, FileRules, PartitionBars
    from flows.stream.dataflow import BarLogic
    from flows.stream.recovery import RulesChanged, stream_rules

    before = stream_rules(load_settings(), 4)
    state = PartitionBars(BarRules(), FileRules(), "stock.ticks", 2, stamp=before)
    now = stream_rules(load_settings(bar_seconds=300, flush_rows=10), 6)
    with pytest.raises(RulesChanged) as refused:
        BarLogic(BarRules(bar_ms=300_000), FileRules(), state.snapshot(), now)
    says = str(refused.value)
    assert "the bar state of stock.ticks[2]" in says
    assert refused.value.changes == [
        "STOCKPIPE_BAR_SECONDS: was 60s, now 300s",
        "STOCKPIPE_FLUSH_ROWS: was 50000, now 10",
        "partitions of topic 'stock.ticks': was 4, now 6",
    ]
    assert "--from-drain" in says and "--exit-when-idle" in says
    # under the same rules it restores, and a state of the previous format adopts them
    assert BarLogic(BarRules(), FileRules(), state.snapshot(), before).state.stamp == before
    v3 = (3, *state.snapshot()[1:7])
    assert BarLogic(BarRules(), FileRules(), v3, now).state.stamp == now
