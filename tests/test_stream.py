"""The dataflow end to end on the real broker: produce -> `stockpipe stream` -> lake."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import polars as pl
import pytest
from helpers import (
    assert_bars_equal,
    assert_each_row_once,
    assert_revisions_never_change,
    consume_all,
    expected_bars,
    final_bars,
    golden_bars,
    golden_messages,
    produce_raw,
    read_lake_bars,
    run_stockpipe,
    stockpipe,
    stream_messages,
)
from streamgen import StreamSpec, make_stream

pytestmark = pytest.mark.kafka

GOLDEN_REASONS = {  # the golden file's label -> the reason code the DLQ carries
    "bad:negative-price": "negative-price",
    "bad:ts-in-seconds-float": "ts-not-integer",
    "bad:bad-symbol": "bad-symbol",
    "bad:future-ts": "future-ts",
    "bad:ts-before-2000": "ts-before-2000",
    "bad:price-not-number": "price-not-number",
    "bad:zero-price": "zero-price",
    "bad:missing-price": "missing-price",
    "bad:negative-volume": "negative-volume",
    "bad:nan-price": "non-finite-price",
}


def test_golden_stream_through_kafka_gives_golden_bars_dlq_and_late(
    new_topic, settings_for, golden_dir, tmp_path
):
    topic = new_topic("golden")
    settings = settings_for(topic=topic)
    messages = golden_messages(golden_dir)
    produce_raw(
        settings.kafka_bootstrap_servers,
        topic,
        [(m["key"].encode(), m["value"].encode()) for m in messages],
    )

    done = run_stockpipe(settings, "stream", "--exit-when-idle", "3")
    assert done.returncode == 0, done.stdout

    rows = read_lake_bars(settings.lake_url)
    assert_bars_equal(final_bars(rows), golden_bars(golden_dir))
    assert rows.schema["revision"] == pl.Int32 and rows.schema["interval_s"] == pl.Int32
    # The golden late ticks land in windows that had no tick: first emissions, revision 0.
    late_windows = rows.filter(pl.col("trade_count") == 1, pl.col("volume") == 5.0)
    assert late_windows.height == 8 and set(late_windows["revision"]) == {0}

    late = pl.read_parquet(Path(settings.lake_url) / "late", hive_partitioning=True)
    want_late = sorted(orjson.loads(m["value"])["id"] for m in messages if m["case"] == "too-late")
    assert sorted(late["id"].to_list()) == want_late

    dlq = consume_all(settings.kafka_bootstrap_servers, settings.dlq_topic)
    bad = [m for m in messages if m["case"].startswith("bad:")]
    assert len(dlq) == len(bad) == 19
    by_value = {m["value"].encode(): m for m in bad}
    for msg in dlq:
        headers = dict(msg.headers())
        original = by_value[msg.value()]  # the original bytes, unchanged
        assert headers["stockpipe.reason"].decode() == GOLDEN_REASONS[original["case"]]
        assert headers["stockpipe.source.topic"].decode() == topic
        assert int(headers["stockpipe.source.offset"]) >= 0
        assert msg.key() == original["key"].encode()


def test_two_worker_processes_give_the_same_bars_as_batch(new_topic, settings_for):
    topic = new_topic("workers", partitions=4)
    settings = settings_for(topic=topic)
    stream = make_stream(11, StreamSpec(ticks_per_symbol=1500))
    produce_raw(settings.kafka_bootstrap_servers, topic, stream_messages(stream))

    done = run_stockpipe(settings, "stream", "--workers", "2", "--exit-when-idle", "3")
    assert done.returncode == 0, done.stdout

    rows = read_lake_bars(settings.lake_url)
    assert_bars_equal(final_bars(rows), expected_bars(stream))
    # files are named <topic>+<partition>+<first offset>-<last offset>: every partition
    # that holds ticks wrote its own
    names = {p.name.split("+")[1] for p in Path(settings.lake_url).rglob("*.parquet")}
    with_ticks = {
        str(m.partition())
        for m in consume_all(settings.kafka_bootstrap_servers, topic)
        if m.value() is not None
    }
    assert names == with_ticks and len(names) >= 2
    assert_each_row_once(rows)


def test_bad_records_go_to_dlq_and_the_flow_keeps_going(new_topic, settings_for):
    topic = new_topic("bad")
    settings = settings_for(topic=topic)
    now = int(time.time() * 1000)
    good = [
        (
            b"COIN",
            orjson.dumps(
                {"symbol": "COIN", "price": 10.0 + i, "volume": 1, "ts": now - 60_000 + i * 100}
            ),
        )
        for i in range(50)
    ]
    bad = [
        (b"COIN", b"{not json"),
        (b"COIN", b"[1, 2]"),
        (b"COIN", b'{"price": 1, "volume": 1, "ts": 1741100404441}'),
        (b"COIN", orjson.dumps({"symbol": "MARA", "price": 1, "volume": 1, "ts": now})),
        (b"COIN", orjson.dumps({"symbol": "COIN", "price": 1, "volume": 1})),
        (b"COIN", orjson.dumps({"symbol": "COIN", "price": 1, "volume": "x", "ts": now})),
        (
            b"COIN",
            orjson.dumps(
                {"symbol": "COIN", "price": 1, "volume": 1, "ts": now, "conditions": "12"}
            ),
        ),
        (b"COIN", orjson.dumps({"symbol": "COIN", "price": 1, "volume": 1, "ts": now, "id": 7})),
        (b"COIN", orjson.dumps({"symbol": "COIN", "price": True, "volume": 1, "ts": now})),
        (b"COIN", b"\xff\xfe not utf8"),
    ]
    messages = good[:25] + bad + good[25:]
    produce_raw(settings.kafka_bootstrap_servers, topic, messages)

    done = run_stockpipe(settings, "stream", "--exit-when-idle", "3")
    assert done.returncode == 0, done.stdout
    reasons = sorted(
        dict(m.headers())["stockpipe.reason"].decode()
        for m in consume_all(settings.kafka_bootstrap_servers, settings.dlq_topic)
    )
    assert reasons == sorted(
        [
            "invalid-json",
            "not-an-object",
            "missing-symbol",
            "key-mismatch",
            "missing-ts",
            "volume-not-number",
            "bad-conditions",
            "bad-id",
            "price-not-number",
            "invalid-json",
        ]
    )
    bars = final_bars(read_lake_bars(settings.lake_url))
    assert bars["trade_count"].sum() == 50


def test_killed_worker_resumes_without_losing_or_double_counting(new_topic, settings_for, tmp_path):
    topic = new_topic("crash")
    settings = settings_for(topic=topic, epoch_interval=1.0, flush_interval=1.0)
    stream = make_stream(5, StreamSpec(ticks_per_symbol=2000))
    half = len(stream) // 2
    produce_raw(settings.kafka_bootstrap_servers, topic, stream_messages(stream[:half]))

    worker = stockpipe(settings, "stream", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lake = Path(settings.lake_url)
    deadline = time.time() + 90
    while not list(lake.rglob("*.parquet")) and time.time() < deadline:
        time.sleep(0.5)
    assert list(lake.rglob("*.parquet")), "no bar files before the kill"
    produce_raw(settings.kafka_bootstrap_servers, topic, stream_messages(stream[half : half + 500]))
    time.sleep(1.5)  # mid-stream: some of these are processed, maybe not all
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    produce_raw(settings.kafka_bootstrap_servers, topic, stream_messages(stream[half + 500 :]))

    done = run_stockpipe(settings, "stream", "--exit-when-idle", "3")
    assert done.returncode == 0, done.stdout
    rows = read_lake_bars(settings.lake_url)
    assert_bars_equal(final_bars(rows), expected_bars(stream))
    assert_revisions_never_change(rows)
    assert_each_row_once(rows)  # the replay rewrote the files it had written, it added none
    assert not list(lake.rglob(".*.tmp")), "half-written files left behind"


def test_second_run_resumes_and_restates_bars_flushed_at_idle(new_topic, settings_for):
    """Windows emitted at --exit-when-idle stay restatable: the next run adds revision 1."""
    topic = new_topic("resume")
    settings = settings_for(topic=topic)
    t0 = 1_741_100_400_000
    first = [
        (
            b"BLK",
            orjson.dumps(
                {"symbol": "BLK", "price": 900.0, "volume": 10, "ts": t0 + 1000, "id": "a"}
            ),
        )
    ]
    produce_raw(settings.kafka_bootstrap_servers, topic, first)
    assert run_stockpipe(settings, "stream", "--exit-when-idle", "2").returncode == 0
    second = [
        (
            b"BLK",
            orjson.dumps(
                {"symbol": "BLK", "price": 905.0, "volume": 30, "ts": t0 + 2000, "id": "b"}
            ),
        ),
        (
            b"BLK",
            orjson.dumps(
                {"symbol": "BLK", "price": 900.0, "volume": 10, "ts": t0 + 1000, "id": "a"}
            ),
        ),
    ]
    produce_raw(settings.kafka_bootstrap_servers, topic, second)
    assert run_stockpipe(settings, "stream", "--exit-when-idle", "2").returncode == 0
    rows = read_lake_bars(settings.lake_url).sort("revision")
    assert_revisions_never_change(rows)
    assert_each_row_once(rows)
    distinct = rows.select(["revision", "trade_count", "close", "volume"]).unique().sort("revision")
    assert distinct.rows() == [(0, 1, 900.0, 10.0), (1, 2, 905.0, 40.0)]
    rows = final_bars(rows)
    assert rows["vwap"][0] == pytest.approx((900 * 10 + 905 * 30) / 40)


def test_stream_says_what_is_wrong_with_a_bad_setting(settings_for):
    settings = settings_for()
    env = {**os.environ, **settings.to_env(), "STOCKPIPE_BAR_SECONDS": "sixty"}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "stream"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "STOCKPIPE_BAR_SECONDS='sixty'" in done.stderr
    assert "Traceback" not in done.stderr


def test_stream_says_when_the_topic_is_missing(settings_for):
    missing = f"no.such.topic.{uuid.uuid4().hex[:8]}"
    settings = settings_for(topic=missing)
    done = run_stockpipe(settings, "stream", "--exit-when-idle", "1", timeout=60)
    assert done.returncode == 2
    assert f"{missing!r} does not exist" in done.stdout
    assert "Traceback" not in done.stdout


def test_consumer_lag_is_exported_as_a_prometheus_gauge(new_topic, settings_for, tmp_path):
    """Bytewax keeps offsets in its recovery store, so the flow exports lag itself."""
    import socket
    import urllib.request

    topic = new_topic("lag", partitions=2)
    settings = settings_for(topic=topic)
    stream = make_stream(3, StreamSpec(symbols=["COIN", "MARA"], ticks_per_symbol=200))
    produce_raw(settings.kafka_bootstrap_servers, topic, stream_messages(stream))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        **settings.to_env(),
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
        "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "stream"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lags: dict[str, float] = {}
        deadline = time.time() + 60
        while time.time() < deadline and len(lags) < 2:
            time.sleep(1)
            try:
                body = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                    .read()
                    .decode()
                )
            except OSError:
                continue
            lags = {
                line.split("partition=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
                for line in body.splitlines()
                if line.startswith("stockpipe_consumer_lag{") and f'topic="{topic}"' in line
            }
        assert lags == {"0": 0.0, "1": 0.0}, lags  # both partitions read to the end
    finally:
        worker.terminate()
        worker.wait(30)


def test_bytewax_run_entry_point_with_recovery(new_topic, settings_for, golden_dir, tmp_path):
    """`python -m bytewax.run flows.ohlc:flow -r DIR -s 2 -b 0`, the documented way in."""
    topic = new_topic("bwrun")
    settings = settings_for(topic=topic)
    produce_raw(
        settings.kafka_bootstrap_servers,
        topic,
        [(m["key"].encode(), m["value"].encode()) for m in golden_messages(golden_dir)],
    )
    recovery = tmp_path / "bytewax-recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "2"], check=True)
    env = {**os.environ, **settings.to_env(), "STOCKPIPE_EXIT_WHEN_IDLE": "2"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bytewax.run",
            "flows.ohlc:flow",
            "-r",
            str(recovery),
            "-s",
            "2",
            "-b",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_bars_equal(final_bars(read_lake_bars(settings.lake_url)), golden_bars(golden_dir))
