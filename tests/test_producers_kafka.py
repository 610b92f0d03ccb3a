"""Producers against the real local Kafka broker and loopback Finnhub stand-ins."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from conftest import GOLDEN_DIR
from fakes.finnhub_server import PING, FakeFinnhubREST, FakeFinnhubWS, trade, trades
from helpers import read_records

from flows.errors import ServiceUnavailable
from flows.ingest import TickWriter, ensure_topics, simulate
from flows.ingest.command import pump
from flows.ingest.finnhub_rest import QuotePoller
from flows.ingest.finnhub_ws import FinnhubStream
from flows.ingest.kafka_out import HEARTBEAT_HEADER
from flows.ingest.pacing import Pacer
from flows.ingest.replay import read_replay
from flows.ingest.ticks import Tick, encode_tick, tick_id
from flows.settings import load_settings

pytestmark = pytest.mark.kafka

START = int(datetime(2025, 3, 4, 15, 0, tzinfo=UTC).timestamp() * 1000)  # 10:00 New York


def read_topic(
    bootstrap: str, topic: str, timeout: float = 30.0
) -> list[tuple[str | None, bytes | None, int]]:
    """Every message in `topic` as (key, value, partition), in partition order; no heartbeats."""
    return [
        (key, value, partition)
        for key, value, partition, headers in read_records(bootstrap, topic, timeout)
        if HEARTBEAT_HEADER not in headers
    ]


def per_key(messages) -> dict[str | None, list[bytes | None]]:
    out: dict[str | None, list[bytes | None]] = {}
    for key, value, _ in messages:
        out.setdefault(key, []).append(value)
    return out


# --------------------------------------------------------------------------- writer


def test_writer_raises_a_clear_error_when_kafka_is_unreachable():
    settings = load_settings(kafka_bootstrap_servers="127.0.0.1:1")
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=r"127\.0\.0\.1:1.*stockpipe kafka start"):
        TickWriter(settings, connect_timeout=3)
    assert time.monotonic() - t0 < 10


def test_missing_topics_are_created_with_the_configured_partitions(settings_for, kafka_bootstrap):
    topic = f"test.create.{time.time_ns()}"
    settings = settings_for(topic=topic, topic_partitions=3)
    assert sorted(ensure_topics(settings)) == [topic, f"{topic}.dlq"]
    assert ensure_topics(settings) == []  # idempotent
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    meta = admin.list_topics(timeout=10).topics
    assert len(meta[topic].partitions) == 3
    assert len(meta[f"{topic}.dlq"].partitions) == 1


def test_created_topics_take_the_brokers_clock_as_record_time(settings_for, kafka_bootstrap):
    topic = f"test.logtime.{time.time_ns()}"
    settings = settings_for(topic=topic, topic_partitions=2)
    assert sorted(ensure_topics(settings)) == [topic, f"{topic}.dlq"]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in (topic, f"{topic}.dlq")]
    for resource, future in admin.describe_configs(resources).items():
        configs = future.result(timeout=30)
        assert configs["message.timestamp.type"].value == "LogAppendTime", resource
    # and a record written with an explicit (ancient) create time carries the append time
    with TickWriter(settings, heartbeat_interval=0) as writer:
        writer._producer.produce(topic, b"{}", b"COIN", timestamp=1_000)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"t-{time.time_ns()}"})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(2)])
        msg = None
        deadline = time.monotonic() + 30
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
        assert msg is not None and msg.error() is None
        kind, ts = msg.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME and ts > 1_000_000_000_000
    finally:
        consumer.close()


def test_every_partition_of_a_quiet_topic_gets_heartbeats_while_a_writer_runs(
    settings_for, kafka_bootstrap
):
    topic = f"test.heartbeat.{time.time_ns()}"
    settings = settings_for(topic=topic, topic_partitions=4, heartbeat_interval=0.2)
    counts: Counter[int] = Counter()
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"t-{time.time_ns()}"})
    try:
        with TickWriter(settings) as writer:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(4)])
            deadline = time.monotonic() + 40
            while (len(counts) < 4 or min(counts.values()) < 2) and time.monotonic() < deadline:
                for msg in consumer.consume(100, timeout=0.5):
                    assert msg.error() is None, msg.error()
                    assert msg.key() is None and msg.value() is None
                    assert dict(msg.headers() or []) == {HEARTBEAT_HEADER: b"1"}
                    assert msg.timestamp()[0] == TIMESTAMP_LOG_APPEND_TIME
                    counts[msg.partition()] += 1
        assert sorted(counts) == [0, 1, 2, 3]
        assert min(counts.values()) >= 2  # repeated while quiet, not a one-off
        assert writer.heartbeats >= sum(counts.values())
        assert writer.acknowledged == 0 and not writer.delivered  # heartbeats are not ticks
    finally:
        consumer.close()


# --------------------------------------------------------------------------- simulator


def test_simulated_ticks_arrive_in_kafka_keyed_by_symbol(settings_for, new_topic, kafka_bootstrap):
    topic = new_topic("sim")
    settings = settings_for(topic=topic)
    items = list(
        simulate(["COIN", "MARA", "BINANCE:BTCUSDT"], 9, START, 3000, duplicates=0.03, bad=0.02)
    )
    with TickWriter(settings) as writer:
        pump(items, writer, Pacer(threading.Event()))
    messages = read_topic(kafka_bootstrap, topic)
    assert len(messages) == 3000
    sent = {}
    for item in items:
        key, value = (item.symbol, encode_tick(item)) if isinstance(item, Tick) else item
        sent.setdefault(key, []).append(value)
    assert per_key(messages) == sent  # every message, verbatim, in order per key
    tick_items = [i for i in items if isinstance(i, Tick)]
    tick_pairs = _tick_pairs(items)
    for key, value, _ in messages:
        if (key, value) in tick_pairs:
            assert orjson.loads(value)["symbol"] == key
    injected = len(tick_items) - len({t.id for t in tick_items})
    assert injected > 0
    ids = Counter(orjson.loads(v)["id"] for k, v, _ in messages if (k, v) in tick_pairs)
    assert sum(n - 1 for n in ids.values()) == injected  # unique except the injected duplicates
    assert writer.delivered == Counter(t.symbol for t in tick_items)
    assert sum(writer.delivered_raw.values()) == len(items) - len(tick_items)


def _tick_pairs(items) -> set[tuple[str, bytes]]:
    return {(i.symbol, encode_tick(i)) for i in items if isinstance(i, Tick)}


# --------------------------------------------------------------------------- replay


def test_golden_file_replays_verbatim_in_file_order(settings_for, new_topic, kafka_bootstrap):
    topic = new_topic("golden")
    golden = GOLDEN_DIR / "ticks_golden.jsonl"
    lines = [orjson.loads(line) for line in golden.read_bytes().splitlines() if line.strip()]
    assert len(lines) == 420
    with TickWriter(settings_for(topic=topic)) as writer:
        pump(read_replay(golden), writer, Pacer(threading.Event()))
    messages = read_topic(kafka_bootstrap, topic)
    assert len(messages) == 420
    expected: dict[str | None, list[bytes | None]] = {}
    for line in lines:
        expected.setdefault(line["key"], []).append(line["value"].encode())
    assert per_key(messages) == expected


def test_parquet_and_tick_lines_replay_as_ticks(settings_for, new_topic, kafka_bootstrap, tmp_path):
    topic = new_topic("pq")
    table = pa.table(
        {
            "symbol": ["COIN", "COIN", "COIN", "MARA"],
            "ts": pa.array([START, START, START + 5, START + 9], pa.timestamp("ms", "UTC")),
            "price": [250.5, 250.5, 251.0, -1.0],
            "volume": pa.array([100, 100, 5, 10], pa.int64()),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    lines = tmp_path / "t.jsonl"
    lines.write_text(f'{{"symbol":"BLK","price":950.1,"volume":3,"ts":{START}}}\nnot json\n')
    with TickWriter(settings_for(topic=topic)) as writer:
        pump(read_replay(tmp_path / "t.parquet"), writer, Pacer(threading.Event()))
        pump(read_replay(lines), writer, Pacer(threading.Event()))
    got = per_key(read_topic(kafka_bootstrap, topic))
    coin = [orjson.loads(v) for v in got["COIN"]]
    assert [c["ts"] for c in coin] == [START, START, START + 5]
    # two identical rows at one ts: occurrence 0 and 1, ids as the dataflow would derive for the first
    assert coin[0]["id"] == tick_id("COIN", START, 250.5, 100.0, (), 0)
    assert coin[1]["id"] == tick_id("COIN", START, 250.5, 100.0, (), 1)
    assert {c["source"] for c in coin} == {"replay"}
    assert orjson.loads(got["MARA"][0])["price"] == -1.0  # sent on, for the DLQ
    blk = orjson.loads(got["BLK"][0])
    assert blk["id"] == tick_id("BLK", START, 950.1, 3.0) and blk["source"] == "replay"
    assert got[None] == [b"not json"]


# --------------------------------------------------------------------------- finnhub websocket

T = 1741100400000
F1 = trades(trade("COIN", 250.1, T + 1, 100), trade("MARA", 17.2, T + 2, 500))
F2 = trades(  # a trade repeated inside one frame is two trades
    trade("COIN", 250.2, T + 10, 10),
    trade("COIN", 250.2, T + 10, 10),
    trade("MARA", 17.25, T + 11, 1, ["1", "12"]),
)
F3 = trades(trade("COIN", 250.3, T + 20, 5), trade("MARA", 17.3, T + 21, 100))
F4 = trades(trade("COIN", 250, T + 30, 200))
F5 = trades(trade("MARA", 17.4, T + 40, 300), trade("COIN", 250.5, T + 41, 1))
WS_SCRIPTS = [
    [
        PING,
        F1,
        F2,
        ("send", {"type": "error", "msg": "Invalid symbol XYZ"}),
        PING,
        F3,
        ("sleep", 0.05),
        ("drop", None),
    ],
    [F3, F4, ("stall", None)],  # F3 re-sent after the reconnect, then silence
    [PING, F5, ("hold", None)],
]


def expected_ids(frames) -> list[tuple[str, str]]:
    out = []
    for _, frame in frames:
        seen: Counter = Counter()
        for d in frame["data"]:
            ident = (d["s"], d["p"], d["t"], d["v"], tuple(d["c"]))
            out.append(
                (d["s"], tick_id(d["s"], d["t"], float(d["p"]), float(d["v"]), d["c"], seen[ident]))
            )
            seen[ident] += 1
    return out


def test_websocket_producer_reconnects_and_sends_every_trade_once_per_send(
    settings_for, new_topic, kafka_bootstrap, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    topic = new_topic("ws")
    outage_log = tmp_path / "outages.jsonl"

    async def scenario():
        async with FakeFinnhubWS(WS_SCRIPTS, token="secret-test-key", subscriptions=2) as server:
            settings = settings_for(
                topic=topic,
                finnhub_api_key="secret-test-key",
                finnhub_ws_url=server.url,
                outage_log=outage_log,
            )
            with TickWriter(settings) as writer:
                stream = FinnhubStream(
                    settings,
                    writer,
                    ["COIN", "MARA"],
                    stall_timeout=0.5,
                    backoff_initial=0.05,
                    backoff_max=0.2,
                    seed=1,
                )
                stop = asyncio.Event()
                task = asyncio.create_task(stream.run(stop))
                await asyncio.wait_for(server.finished.wait(), 20)
                deadline = time.monotonic() + 5
                while stream.trades < 12 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                stop.set()
                await asyncio.wait_for(task, 10)
            return server, stream

    server, stream = asyncio.run(scenario())

    assert len(server.connections) == 3
    assert all(c.subscriptions == ["COIN", "MARA"] for c in server.connections)
    messages = read_topic(kafka_bootstrap, topic)
    sends = expected_ids([F1, F2, F3, F3, F4, F5])
    assert len(messages) == len(sends) == 12
    got = per_key(messages)
    for symbol in ("COIN", "MARA"):
        values = [orjson.loads(v) for v in got[symbol]]
        assert [v["id"] for v in values] == [i for s, i in sends if s == symbol]
        assert {v["source"] for v in values} == {"finnhub-ws"}
        assert all(v["symbol"] == symbol for v in values)
    all_ids = [i for _, i in sends]
    assert len(set(all_ids)) == 10  # the re-sent F3 kept its ids; F2's twins did not collide
    assert orjson.loads(got["MARA"][1])["conditions"] == ["1", "12"]

    outages = [orjson.loads(line) for line in outage_log.read_bytes().splitlines()]
    assert len(outages) == 2 == len(stream.outages)
    for outage in outages:
        assert outage["start_ms"] < outage["end_ms"]
        assert outage["symbols"] == ["COIN", "MARA"]
        assert outage["source"] == "finnhub-ws"
    assert outages[0]["reason"] == "connection dropped"
    assert outages[1]["reason"].startswith("stalled")
    assert (
        outages[1]["end_ms"] - outages[1]["start_ms"] >= 500
    )  # silent for the whole stall timeout

    assert "Invalid symbol XYZ" in caplog.text
    assert "secret-test-key" not in caplog.text


def test_websocket_producer_with_a_refused_key_records_the_outage(settings_for, tmp_path, caplog):
    outage_log = tmp_path / "outages.jsonl"

    async def scenario():
        async with FakeFinnhubWS([], token="right", subscriptions=1) as server:
            settings = settings_for(
                finnhub_api_key="wrong-key", finnhub_ws_url=server.url, outage_log=outage_log
            )
            stream = FinnhubStream(
                settings, None, ["COIN"], stall_timeout=1, backoff_initial=0.05, backoff_max=0.1
            )  # type: ignore[arg-type]
            stop = asyncio.Event()
            task = asyncio.create_task(stream.run(stop))
            await asyncio.sleep(0.6)
            stop.set()
            await asyncio.wait_for(task, 5)
            return server

    server = asyncio.run(scenario())
    assert server.refused >= 3  # it kept retrying, with backoff
    assert server.refused < 20
    (outage,) = [orjson.loads(line) for line in outage_log.read_bytes().splitlines()]
    assert "HTTP 401" in outage["reason"] and "still down at shutdown" in outage["reason"]
    # the last refusal may land just as the stop does, and then is not counted as an attempt
    assert outage["attempts"] in (server.refused - 1, server.refused)
    assert "wrong-key" not in caplog.text


# --------------------------------------------------------------------------- finnhub REST


def quote(c: float, t: int) -> dict:
    return {
        "c": c,
        "d": 0.5,
        "dp": 0.2,
        "h": c + 1,
        "l": c - 1,
        "o": c - 0.5,
        "pc": c - 0.5,
        "t": t,
    }


TS = 1741100400
REST_SCRIPTS = {
    "COIN": [
        quote(250.1, TS),
        quote(250.1, TS),  # unchanged: dropped
        (429, {"Retry-After": "1"}),
        quote(250.2, TS + 5),
        (429, {}),
        quote(250.3, TS + 9),
        (503, {}),
        quote(250.4, TS + 12),
    ],
    "MARA": [quote(17.1, TS + 1), quote(17.1, TS + 1), quote(17.2, TS + 6)],
}


def test_rest_poller_backs_off_keeps_the_rate_and_drops_repeats(
    settings_for, new_topic, kafka_bootstrap, caplog
):
    caplog.set_level(logging.INFO)
    topic = new_topic("rest")
    per_minute = 600  # one call every 0.1 s

    async def scenario():
        async with FakeFinnhubREST(REST_SCRIPTS, token="rest-key") as server:
            settings = settings_for(
                topic=topic, finnhub_api_key="rest-key", finnhub_rest_url=server.base_url
            )
            with TickWriter(settings) as writer:
                poller = QuotePoller(
                    settings,
                    writer,
                    ["COIN", "MARA", "NOPE"],
                    calls_per_minute=per_minute,
                    backoff_initial=0.3,
                )
                stop = asyncio.Event()
                task = asyncio.create_task(poller.run(stop))
                deadline = time.monotonic() + 20
                while not server.exhausted and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                calls = len(server.calls)
                while len(server.calls) < calls + 4:  # a few quiet-market repeats too
                    await asyncio.sleep(0.05)
                stop.set()
                await asyncio.wait_for(task, 5)
            return server, poller

    server, poller = asyncio.run(scenario())

    calls = server.calls
    assert {c.token for c in calls} == {"rest-key"}
    statuses = [c.status for c in calls if c.symbol == "COIN"]
    assert statuses[:8] == [200, 200, 429, 200, 429, 200, 503, 200]
    # backoff: Retry-After honoured, exponential backoff without it, retry after 5xx
    coin = [c for c in calls if c.symbol == "COIN"]
    assert coin[3].at - coin[2].at >= 1.0
    assert coin[5].at - coin[4].at >= 0.3
    assert coin[7].at - coin[6].at >= 0.3
    # never faster than the limit: calls spaced by 60/limit, at most limit/60 in any second
    times = [c.at for c in calls]
    # (measured at the server, in the same event loop: allow scheduling jitter of one call)
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.05
    assert max(sum(1 for u in times if t <= u < t + 1.0) for t in times) <= per_minute // 60 + 1
    assert poller.rate_limited == 2 and poller.server_errors == 1
    assert poller.repeats_dropped >= 2

    got = per_key(read_topic(kafka_bootstrap, topic))
    assert set(got) == {"COIN", "MARA"}  # NOPE (c == 0) skipped
    coin_ticks = [orjson.loads(v) for v in got["COIN"]]
    assert [(q["price"], q["ts"]) for q in coin_ticks] == [
        (250.1, TS * 1000),
        (250.2, (TS + 5) * 1000),
        (250.3, (TS + 9) * 1000),
        (250.4, (TS + 12) * 1000),
    ]
    assert all(q["volume"] is None and q["source"] == "finnhub-rest" for q in coin_ticks)
    assert coin_ticks[0]["id"] == tick_id("COIN", TS * 1000, 250.1, None)
    assert [orjson.loads(v)["price"] for v in got["MARA"]] == [17.1, 17.2]
    assert "no quote for NOPE" in caplog.text
    assert "rest-key" not in caplog.text


def test_rest_poller_gives_up_on_a_failing_symbol_after_max_retries_and_goes_on(
    settings_for, new_topic, kafka_bootstrap, caplog
):
    topic = new_topic("rest-fail")
    scripts = {"COIN": [(503, {})] * 4 + [quote(250.0, TS)], "MARA": [quote(17.0, TS)]}

    async def scenario():
        async with FakeFinnhubREST(scripts, token="k") as server:
            settings = settings_for(
                topic=topic, finnhub_api_key="k", finnhub_rest_url=server.base_url
            )
            with TickWriter(settings) as writer:
                poller = QuotePoller(
                    settings, writer, ["COIN", "MARA"], calls_per_minute=1200,
                    backoff_initial=0.05, max_retries=2,
                )  # fmt: skip
                stop = asyncio.Event()
                task = asyncio.create_task(poller.run(stop))
                deadline = time.monotonic() + 30
                while not server.exhausted and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                stop.set()
                await asyncio.wait_for(task, 5)
            return server, poller

    server, poller = asyncio.run(scenario())
    order = [(c.symbol, c.status) for c in server.calls]
    # three tries of COIN (two retries), then MARA, then COIN again from the top of the round
    assert order[:5] == [("COIN", 503), ("COIN", 503), ("COIN", 503), ("MARA", 200), ("COIN", 503)]
    assert "finnhub quote for COIN failed 3 times (503); moving on" in caplog.text
    assert poller.server_errors >= 4
    got = per_key(read_topic(kafka_bootstrap, topic))
    assert [orjson.loads(v)["price"] for v in got["COIN"]] == [250.0]


# --------------------------------------------------------------------------- command line


def test_ctrl_c_flushes_and_every_reported_tick_is_in_the_topic(new_topic, kafka_bootstrap):
    topic = new_topic("sigint")
    exe = Path(sys.executable).with_name("stockpipe")
    cmd = [str(exe) if exe.exists() else shutil.which("stockpipe") or "stockpipe"]
    cmd += ["produce", "--source", "sim", "--symbols", "COIN,BINANCE:BTCUSDT", "--seed", "3"]
    cmd += [
        "--start",
        "2025-03-04T15:00:00Z",
        "--rate",
        "400",
        "--duplicates",
        "0.02",
        "--bad",
        "0.01",
    ]
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "STOCKPIPE_TOPIC": topic}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        admin = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "watch"})
        deadline = time.monotonic() + 30
        produced = 0
        while produced < 200 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            produced = sum(
                admin.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                for p in range(4)
            )
        admin.close()
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    reported = {}
    for line in out.splitlines():
        if line.startswith("  ") and ":" in line:
            key, _, n = line.strip().rpartition(": ")
            reported[key] = int(n.split()[0])
    messages = read_topic(kafka_bootstrap, topic)
    assert sum(reported.values()) == len(messages) >= 200
    assert reported == dict(Counter(k for k, _, _ in messages))


def _latest_weekday_open(now: datetime) -> datetime:
    """The latest NYSE session open at or before `now` (exchange_calendars, apart from the sim)."""
    from datetime import timedelta

    import exchange_calendars as xcals

    day = now.date()
    cal = xcals.get_calendar("XNYS", start=(day - timedelta(days=30)).isoformat())
    for session in reversed(
        cal.sessions_in_range(day - timedelta(days=14), day + timedelta(days=1))
    ):
        opened = cal.session_open(session).to_pydatetime()
        if opened <= now:
            return opened.astimezone(UTC)
    raise AssertionError("no NYSE session in two weeks")


def test_last_session_with_warmup_shows_a_session_at_any_hour(new_topic, kafka_bootstrap):
    """What compose runs: the latest session compressed, after sparse history, never ahead
    of the clock (a run right after an open waits for the session's ticks in real time)."""
    topic = new_topic("last-session")
    before = _latest_weekday_open(datetime.now(UTC))
    exe = Path(sys.executable).with_name("stockpipe")
    cmd = [str(exe) if exe.exists() else shutil.which("stockpipe") or "stockpipe"]
    cmd += ["produce", "--source", "sim", "--symbols", "COIN,MARA", "--seed", "5"]
    cmd += ["--start", "last-session", "--warmup-from", "3d", "--warmup-intensity", "0.01"]
    cmd += ["--duration", "2m", "--speed", "240"]  # 2 minutes of a session in 0.5 s
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "STOCKPIPE_TOPIC": topic}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    finished = datetime.now(UTC)
    after = _latest_weekday_open(finished)
    assert done.returncode == 0, done.stderr
    stamps = sorted(orjson.loads(v)["ts"] for _, v, _ in read_topic(kafka_bootstrap, topic))
    opens = {int(o.timestamp() * 1000) for o in (before, after)}  # a run across 09:30
    session_open = next((o for o in opens if any(o <= ts < o + 120_000 for ts in stamps)), None)
    assert session_open is not None, f"no tick after the opens {sorted(opens)}"
    history = [ts for ts in stamps if ts < session_open]
    session = [ts for ts in stamps if ts >= session_open]
    # at least one weekday of history (at 1%), then the session
    assert history and session_open - 3 * 86_400_000 <= history[0]
    assert session and max(session) < session_open + 120_000  # --duration bounds event time
    assert max(stamps) <= finished.timestamp() * 1000  # nothing from the future
