"""The Coinbase and Binance trade feeds against loopback servers that speak their protocols.

Each test scripts the venue's documented messages (tests/fakes/crypto_servers.py),
runs the real feed into the real broker, then reads the topic back and checks
every tick against the frames the server sent, decoded here on their own
(pandas for the RFC 3339 times, plain float() for the decimal strings).
Nothing is timed: every wait is for a condition, with a generous deadline.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from fakes.crypto_servers import (
    ScriptedWS,
    ServerThread,
    Step,
    bn_server_shutdown,
    bn_trade,
    cb_heartbeat,
    cb_subscriptions,
    cb_trade,
    cb_trades,
)
from helpers import read_records

from flows.ingest import TickWriter
from flows.ingest.binance import BinanceStream
from flows.ingest.coinbase import CoinbaseStream, rfc3339_ms
from flows.ingest.kafka_out import HEARTBEAT_HEADER
from flows.ingest.ticks import Tick, decode_tick
from flows.ingest.ws_feed import SEQUENCE_GAPS, WsFeed

pytestmark = pytest.mark.kafka

NOW = int(time.time() * 1000)


def iso(ms: int, digits: int = 6) -> str:
    """An RFC 3339 time with `digits` fraction digits (Coinbase sends up to nanoseconds)."""
    stamp = pd.Timestamp(ms, unit="ms", tz="UTC")
    frac = f"{stamp.microsecond:06d}{stamp.nanosecond:03d}"[:digits]
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if digits else "") + "Z"


def topic_ticks(bootstrap: str, topic: str) -> list[Tick]:
    """Every tick in the topic, through the stream's own decoder, in partition order."""
    out = []
    for key, value, _partition, headers in read_records(bootstrap, topic):
        if HEARTBEAT_HEADER in headers:
            continue
        tick = decode_tick(value, key.encode() if key else None, NOW + 3_600_000)
        assert isinstance(tick, Tick), (tick, value)
        out.append(tick)
    return out


def sent_trades(scripts: list[list[Step]], pick: Callable[[dict], list[dict]]) -> list[dict]:
    """The trades the server sent, in order, duplicates included."""
    return [t for script in scripts for step, obj in script if step == "send" for t in pick(obj)]


def coinbase_expected(trade: dict) -> tuple:
    ts = pd.Timestamp(trade["time"]).value // 1_000_000
    return (
        f"COINBASE:{trade['product_id']}",
        ts,
        float(trade["price"]),
        float(trade["size"]),
        trade["trade_id"],
        "coinbase",
        "COINBASE",
    )


def coinbase_trades_of(obj: dict) -> list[dict]:
    if obj.get("channel") != "market_trades":
        return []
    return [t for e in obj["events"] for t in e["trades"]]


def as_tuple(tick: Tick) -> tuple:
    return (tick.symbol, tick.ts, tick.price, tick.volume, tick.id, tick.source, tick.exchange)


def by_symbol(rows: list[tuple]) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for row in rows:
        out.setdefault(row[0], []).append(row)
    return out


def ledger(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


async def run_feed(feed: WsFeed, until: Callable[[], bool], timeout: float = 30.0) -> None:
    """Run `feed` until `until()` holds (or the deadline), then stop it cleanly."""
    stop = asyncio.Event()
    task = asyncio.create_task(feed.run(stop))
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 15)


# --------------------------------------------------------------------------- units


def test_rfc3339_times_become_epoch_milliseconds_at_any_precision():
    ms = 1_765_130_400_123
    for digits in (0, 3, 6, 9):
        want = ms - ms % 1000 + (ms % 1000 if digits else 0)
        assert rfc3339_ms(iso(ms, digits)) == want
    assert (
        rfc3339_ms("2026-12-07T19:00:00.5+01:00")
        == pd.Timestamp("2026-12-07T18:00:00.5Z").value // 10**6
    )
    assert rfc3339_ms("yesterday") is None
    assert rfc3339_ms(None) is None


# --------------------------------------------------------------------------- Coinbase

PRODUCTS = ["BTC-USD", "ETH-USD"]
SYMBOLS_CB = [f"COINBASE:{p}" for p in PRODUCTS]


def cb(n: int, product: str, price: str, size: str, digits: int = 6) -> dict:
    return cb_trade(str(800_000 + n), product, price, size, iso(NOW - 60_000 + n * 250, digits))


A, B, C, D, E, F = (
    cb(1, "BTC-USD", "97000.01", "0.0015"),
    cb(2, "ETH-USD", "3500.5", "1.25", digits=9),
    cb(3, "BTC-USD", "97000.02", "0.5"),
    cb(4, "BTC-USD", "96999.99", "0.00000001", digits=3),
    cb(5, "ETH-USD", "3500.25", "2"),
    cb(6, "BTC-USD", "97001", "0.1"),
)
CB_SCRIPTS: list[list[Step]] = [
    # 1: the snapshot, an update, heartbeats, then the TCP connection dies
    [
        cb_subscriptions(0, PRODUCTS),
        cb_trades(1, "snapshot", A, B),
        cb_heartbeat(2, 1),
        cb_trades(3, "update", C),
        ("drop", None),
    ],
    # 2: the snapshot repeats A-C under their ids; then silence: a stall
    [
        cb_trades(0, "snapshot", A, B, C),
        cb_trades(1, "update", D),
        ("stall", None),
    ],
    # 3: the same update frame twice (a duplicate frame), heartbeats, and it stays
    [
        cb_trades(0, "snapshot", C, D),
        cb_trades(1, "update", E, F),
        cb_trades(2, "update", E, F),
        cb_heartbeat(3, 2),
        ("hold", None),
    ],
]


def test_coinbase_reconnects_resubscribes_and_every_trade_reaches_kafka_under_its_trade_id(
    settings_for, new_topic, kafka_bootstrap, tmp_path
):
    topic = new_topic("coinbase")
    outage_log = tmp_path / "outages.jsonl"

    async def scenario() -> tuple[ScriptedWS, CoinbaseStream]:
        async with ScriptedWS(CB_SCRIPTS, subscribe_messages=2) as server:
            settings = settings_for(topic=topic, coinbase_ws_url=server.url, outage_log=outage_log)
            with TickWriter(settings) as writer:
                feed = CoinbaseStream(
                    settings, writer, SYMBOLS_CB, stall_timeout=0.5, backoff_initial=0.05,
                    backoff_max=0.2, seed=1,
                )  # fmt: skip
                want = len(sent_trades(CB_SCRIPTS, coinbase_trades_of))
                await run_feed(feed, lambda: server.finished.is_set() and feed.trades >= want)
            return server, feed

    server, feed = asyncio.run(scenario())

    # three connections, each subscribed to market_trades for the products and to heartbeats
    assert len(server.connections) == 3
    for conn in server.connections:
        assert conn.subscriptions == [
            {"type": "subscribe", "product_ids": PRODUCTS, "channel": "market_trades"},
            {"type": "subscribe", "channel": "heartbeats"},
        ]
    # every trade sent, repeats included, is in Kafka as the frames say, under its trade id
    sent = [coinbase_expected(t) for t in sent_trades(CB_SCRIPTS, coinbase_trades_of)]
    got = [as_tuple(t) for t in topic_ticks(kafka_bootstrap, topic)]
    assert by_symbol(got) == by_symbol(sent)  # per key, in order
    # repeats carry the same id: the stream's dedup counts each trade once
    assert {row[4] for row in got} == {t["trade_id"] for t in (A, B, C, D, E, F)}
    assert len(got) == 13
    # the drop and the stall are in the ledger, each closed when the next connection came
    outages = ledger(outage_log)
    assert [o["source"] for o in outages] == ["coinbase", "coinbase"]
    assert outages[0]["reason"] == "connection dropped"
    assert outages[1]["reason"].startswith("stalled")
    assert all(o["end_ms"] > o["start_ms"] and o["symbols"] == SYMBOLS_CB for o in outages)
    assert feed.gaps == 0  # sequence numbers restart on each connection: no false gap


def test_coinbase_sequence_gap_is_logged_counted_and_ledgered(
    settings_for, new_topic, kafka_bootstrap, tmp_path, caplog
):
    topic = new_topic("coinbase-gap")
    outage_log = tmp_path / "outages.jsonl"
    g1, g2, g3 = (
        cb(11, "BTC-USD", "1.5", "2"),
        cb(12, "BTC-USD", "1.75", "3"),
        cb(13, "ETH-USD", "2", "1"),
    )
    scripts = [
        [
            cb_subscriptions(0, PRODUCTS),
            cb_heartbeat(1, 1),
            cb_trades(2, "update", g1),
            # sequence_num 3, 4 and 5 never arrive
            cb_trades(6, "update", g2),
            cb_heartbeat(6, 2),  # a repeated number is not a gap
            cb_heartbeat(7, 3),
            cb_trades(8, "update", g3),
            ("hold", None),
        ]
    ]
    before = SEQUENCE_GAPS.labels("coinbase")._value.get()

    async def scenario() -> CoinbaseStream:
        async with ScriptedWS(scripts, subscribe_messages=2) as server:
            settings = settings_for(topic=topic, coinbase_ws_url=server.url, outage_log=outage_log)
            with TickWriter(settings) as writer:
                feed = CoinbaseStream(settings, writer, SYMBOLS_CB, stall_timeout=30)
                await run_feed(feed, lambda: server.finished.is_set() and feed.trades >= 3)
            return feed

    feed = asyncio.run(scenario())

    assert feed.gaps == 3
    assert SEQUENCE_GAPS.labels("coinbase")._value.get() - before == 3
    (gap,) = ledger(outage_log)
    assert gap["source"] == "coinbase" and gap["count"] == 3
    assert "sequence_num 2 -> 6" in gap["reason"]
    assert gap["symbols"] == SYMBOLS_CB and gap["end_ms"] > gap["start_ms"]
    assert "sequence gap: 3 message(s) missed" in caplog.text
    got = [as_tuple(t) for t in topic_ticks(kafka_bootstrap, topic)]
    assert by_symbol(got) == by_symbol([coinbase_expected(t) for t in (g1, g2, g3)])


# --------------------------------------------------------------------------- Binance

PAIRS = ["BTCUSDT", "ETHUSDT"]
SYMBOLS_BN = [f"BINANCE:{p}" for p in PAIRS]


def binance_trades_of(obj: dict) -> list[dict]:
    data = obj.get("data")
    return [data] if isinstance(data, dict) and data.get("e") == "trade" else []


def binance_expected(event: dict) -> tuple:
    return (
        f"BINANCE:{event['s']}",
        event["T"],
        float(event["p"]),
        float(event["q"]),
        str(event["t"]),
        "binance",
        "BINANCE",
    )


T1 = bn_trade("BTCUSDT", 5_000_001, "97000.10000000", "0.00150000", NOW - 30_000)
T2 = bn_trade("ETHUSDT", 1_200_001, "3500.01000000", "1.00000000", NOW - 29_000, maker=False)
T3 = bn_trade("BTCUSDT", 5_000_002, "97000.20000000", "0.25000000", NOW - 28_000)
T4 = bn_trade("BTCUSDT", 5_000_003, "96999.90000000", "3.00000000", NOW - 27_000)
T5 = bn_trade("ETHUSDT", 1_200_002, "3499.99000000", "0.01000000", NOW - 26_000)
BN_SCRIPTS: list[list[Step]] = [
    # 1: trades, a duplicated frame, a protocol ping (answered), then the shutdown notice;
    #    the server keeps the connection open: the feed must leave by itself
    [T1, T2, T2, ("ping", b"binance-ping"), T3, bn_server_shutdown(NOW), ("hold", None)],
    # 2: a trade, then quiet until the (shortened) connection-age limit renews it
    [T4, ("hold", None)],
    # 3: the renewed connection carries on
    [T5, ("hold", None)],
]


def test_binance_answers_pings_and_renews_seamlessly_on_shutdown_and_before_the_age_limit(
    settings_for, new_topic, kafka_bootstrap, tmp_path
):
    topic = new_topic("binance")
    outage_log = tmp_path / "outages.jsonl"

    async def scenario() -> tuple[ScriptedWS, BinanceStream]:
        async with ScriptedWS(BN_SCRIPTS) as server:
            settings = settings_for(topic=topic, binance_ws_url=server.url, outage_log=outage_log)
            with TickWriter(settings) as writer:
                feed = BinanceStream(
                    settings, writer, SYMBOLS_BN, stall_timeout=60, max_connection_age=1.0,
                    backoff_initial=0.05, backoff_max=0.2,
                )  # fmt: skip
                await run_feed(feed, lambda: server.finished.is_set() and feed.trades >= 6)
            return server, feed

    server, feed = asyncio.run(scenario())

    # every connection asked for the pairs' trade streams (the URL is the subscription)
    assert len(server.connections) >= 3
    for conn in server.connections:
        assert conn.path.startswith("/stream?")
        assert conn.streams == ["btcusdt@trade", "ethusdt@trade"]
    first, second = server.connections[:2]
    assert first.pongs == [b"binance-ping"]
    # the feed closed both connections itself: on serverShutdown, and at the age limit
    assert first.closed_by_client and second.closed_by_client
    sent = [binance_expected(t) for t in sent_trades(BN_SCRIPTS, binance_trades_of)]
    got = [as_tuple(t) for t in topic_ticks(kafka_bootstrap, topic)]
    assert by_symbol(got) == by_symbol(sent)
    assert [row[4] for row in got if row[0] == "BINANCE:ETHUSDT"] == [
        "1200001",
        "1200001",
        "1200002",
    ]
    # make-before-break: each next connection was subscribed before the feed closed the old
    # one, so no trade can fall between them and the ledger has no gap to record
    third = server.connections[2]
    assert second.opened_at <= first.closed_at and third.opened_at <= second.closed_at
    assert ledger(outage_log) == []
    assert feed.connections >= 3


def test_a_renewal_whose_next_connection_is_refused_reconnects_and_ledgers_the_gap(
    settings_for, new_topic, kafka_bootstrap, tmp_path
):
    topic = new_topic("binance-refused")
    outage_log = tmp_path / "outages.jsonl"
    scripts: list[list[Step]] = [
        [T1, bn_server_shutdown(NOW), ("hold", None)],
        [T2, ("hold", None)],
    ]

    async def scenario() -> ScriptedWS:
        # the early open for the renewal (handshake 1) is refused: an ordinary reconnect follows
        async with ScriptedWS(scripts, refuse={1}) as server:
            settings = settings_for(topic=topic, binance_ws_url=server.url, outage_log=outage_log)
            with TickWriter(settings) as writer:
                feed = BinanceStream(
                    settings, writer, SYMBOLS_BN, stall_timeout=60, backoff_initial=0.05,
                    backoff_max=0.2,
                )  # fmt: skip
                await run_feed(feed, lambda: server.finished.is_set() and feed.trades >= 2)
            return server

    server = asyncio.run(scenario())

    assert server.handshakes == 3 and len(server.connections) == 2
    assert server.connections[0].closed_by_client
    got = [as_tuple(t) for t in topic_ticks(kafka_bootstrap, topic)]
    assert by_symbol(got) == by_symbol(
        [binance_expected(t) for t in sent_trades(scripts, binance_trades_of)]
    )
    (outage,) = ledger(outage_log)
    assert "serverShutdown" in outage["reason"] and outage["source"] == "binance"
    assert outage["end_ms"] > outage["start_ms"] and outage["attempts"] == 1


def test_binance_reconnects_after_a_drop_and_a_stall_with_the_same_streams(
    settings_for, new_topic, kafka_bootstrap, tmp_path
):
    topic = new_topic("binance-drop")
    outage_log = tmp_path / "outages.jsonl"
    scripts: list[list[Step]] = [
        [T1, T2, ("drop", None)],
        [T3, ("stall", None)],
        [T4, T5, ("hold", None)],
    ]

    async def scenario() -> ScriptedWS:
        async with ScriptedWS(scripts) as server:
            settings = settings_for(topic=topic, binance_ws_url=server.url, outage_log=outage_log)
            with TickWriter(settings) as writer:
                feed = BinanceStream(
                    settings, writer, SYMBOLS_BN, stall_timeout=0.5, backoff_initial=0.05,
                    backoff_max=0.2, seed=2,
                )  # fmt: skip
                await run_feed(feed, lambda: server.finished.is_set() and feed.trades >= 5)
            return server

    server = asyncio.run(scenario())

    assert len(server.connections) == 3
    assert all(c.streams == ["btcusdt@trade", "ethusdt@trade"] for c in server.connections)
    sent = [binance_expected(t) for t in sent_trades(scripts, binance_trades_of)]
    got = [as_tuple(t) for t in topic_ticks(kafka_bootstrap, topic)]
    assert by_symbol(got) == by_symbol(sent)
    outages = ledger(outage_log)
    assert [o["reason"].split(":")[0] for o in outages] == ["connection dropped", "stalled"]
    assert all(o["source"] == "binance" and o["symbols"] == SYMBOLS_BN for o in outages)


# --------------------------------------------------------------------------- the CLI


def stockpipe() -> list[str]:
    exe = Path(sys.executable).with_name("stockpipe")
    return [str(exe) if exe.exists() else shutil.which("stockpipe") or "stockpipe"]


@pytest.mark.parametrize(
    ("source", "symbols", "named"),
    [
        ("coinbase", "BINANCE:BTCUSDT", "BINANCE:BTCUSDT"),
        ("coinbase", "COINBASE:BTC-USD,AAPL", "AAPL"),
        ("binance", "COINBASE:BTC-USD", "COINBASE:BTC-USD"),
        ("binance", "BTCUSDT", "BTCUSDT"),
    ],
)
def test_a_symbol_of_another_exchange_is_a_usage_error_that_names_it(source, symbols, named):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}  # never reached
    done = subprocess.run(
        [*stockpipe(), "produce", "--source", source, "--symbols", symbols],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert repr(named) in done.stderr


def test_the_cli_streams_coinbase_with_btc_and_eth_by_default_and_stops_on_ctrl_c(
    new_topic, kafka_bootstrap, tmp_path
):
    topic = new_topic("coinbase-cli")
    trades = [cb(21, "BTC-USD", "97000", "0.1"), cb(22, "ETH-USD", "3500", "0.2")]
    scripts = [[cb_subscriptions(0, PRODUCTS), cb_trades(1, "snapshot", *trades), ("hold", None)]]
    with ServerThread(scripts, subscribe_messages=2) as server:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "STOCKPIPE_TOPIC": topic,
            "COINBASE_WS_URL": server.url,
            "STOCKPIPE_OUTAGE_LOG": str(tmp_path / "outages.jsonl"),
            "STOCKPIPE_SPOOL_DIR": str(tmp_path / "spool"),
        }
        env.pop("STOCKPIPE_SYMBOLS", None)
        proc = subprocess.Popen(
            [*stockpipe(), "produce", "--source", "coinbase"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if server.finished.is_set() and "2 ticks" in _summary_probe(kafka_bootstrap, topic):
                    break
                time.sleep(0.2)
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert server.connections[0].subscriptions[0]["product_ids"] == ["BTC-USD", "ETH-USD"]
    assert "COINBASE:BTC-USD: 1" in out and "COINBASE:ETH-USD: 1" in out
    got = [as_tuple(t) for t in topic_ticks(kafka_bootstrap, topic)]
    assert by_symbol(got) == by_symbol([coinbase_expected(t) for t in trades])


def _summary_probe(bootstrap: str, topic: str) -> str:
    """'N ticks' for the ticks in the topic so far (what the wait above waits for)."""
    n = sum(
        1 for _k, _v, _p, headers in read_records(bootstrap, topic, timeout=5)
        if HEARTBEAT_HEADER not in headers
    )  # fmt: skip
    return f"{n} ticks"
