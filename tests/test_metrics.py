"""/metrics and /healthz of a running producer and stream, on the real broker.

What the counters must say is known apart from the code: the golden stream's
labels say how many records are duplicates, too late or bad (and why), its
golden bars how many ticks are in bars and how many windows there are; the
producer's counters are compared with what its topic holds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from helpers import (
    GOLDEN_REASONS,
    free_port_pair,
    golden_bars,
    golden_messages,
    produce_raw,
    read_lake_bars,
    read_records,
    stockpipe,
)
from prometheus_client.parser import text_string_to_metric_families

from flows.ingest.kafka_out import HEARTBEAT_HEADER

pytestmark = pytest.mark.kafka


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a text exposition: (name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(got: dict, name: str, **labels: str) -> float:
    """The sum over the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in got.items() if n == name and want <= ls)


def get(port: int, path: str) -> tuple[int, bytes] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None


def test_the_stream_counts_the_golden_stream_as_its_labels_say(new_topic, settings_for, golden_dir):
    topic = new_topic("metrics")
    port = free_port_pair()
    settings = settings_for(topic=topic, metrics_port=port - 1)  # the stream's process 0: port
    messages = golden_messages(golden_dir)
    produce_raw(
        settings.kafka_bootstrap_servers,
        topic,
        [(m["key"].encode(), m["value"].encode()) for m in messages],
    )
    cases = Counter(m["case"] for m in messages)
    want_dlq = Counter(GOLDEN_REASONS[c] for m in messages if (c := m["case"]).startswith("bad:"))
    golden = golden_bars(golden_dir)
    want_in_bars = int(golden["trade_count"].sum())

    worker = stockpipe(settings, "stream", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        got: dict = {}
        while time.monotonic() < deadline:
            answer = get(port, "/metrics")
            if answer is not None:
                got = samples(answer[1].decode())
                written = total(got, "stockpipe_lake_rows_written_total", kind="bars")
                emitted = total(got, "stockpipe_bars_emitted_total", topic=topic)
                if (
                    total(got, "stockpipe_ticks_total", topic=topic, outcome="bar") == want_in_bars
                    and total(got, "stockpipe_bars_emitted_total", kind="first") == golden.height
                    and written == emitted
                ):
                    break
            time.sleep(0.5)
        assert total(got, "stockpipe_ticks_total", outcome="bar") == want_in_bars
        assert total(got, "stockpipe_ticks_total", outcome="duplicate") == cases["duplicate"]
        assert total(got, "stockpipe_ticks_total", outcome="late") == cases["too-late"]
        dlq = {
            dict(ls)["reason"]: v
            for (n, ls), v in got.items()
            if n == "stockpipe_dlq_records_total" and dict(ls).get("topic") == topic
        }
        assert dlq == want_dlq
        assert total(got, "stockpipe_records_read_total", topic=topic) >= len(messages)
        assert total(got, "stockpipe_bars_emitted_total", kind="first") == golden.height
        rows = read_lake_bars(settings.lake_url)
        assert total(got, "stockpipe_lake_rows_written_total", kind="bars") == rows.height
        restated = rows.filter(rows["revision"] > 0).height
        assert total(got, "stockpipe_bars_emitted_total", kind="restatement") == restated
        assert total(got, "stockpipe_lake_write_seconds_count") >= 1
        assert total(got, "stockpipe_snapshot_seconds_count") >= 1
        # lag is refreshed from the broker: every partition is read to its end (heartbeats
        # keep arriving, so a partition may be one record behind for a moment)
        lags = [v for (n, ls), v in got.items() if n == "stockpipe_consumer_lag"]
        assert lags and max(lags) <= 1
        status, body = get(port, "/healthz") or (None, b"")
        assert status == 200 and json.loads(body)["ok"] is True
        assert (get(port, "/nope") or (None,))[0] == 404
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(120) == 0


def test_the_producer_serves_metrics_and_writes_them_at_exit(new_topic, settings_for, tmp_path):
    topic = new_topic("producer-metrics")
    port = free_port_pair()
    textfile = tmp_path / "producer.prom"
    settings = settings_for(topic=topic, metrics_port=port, metrics_textfile=textfile)

    # a long-running producer: its endpoint answers while it runs. It starts at a past
    # session's open: from "now" a stock simulator waits for the next NYSE session, so
    # outside market hours it would deliver nothing for many minutes
    running = stockpipe(
        settings, "produce", "--source", "sim", "--speed", "60",
        "--start", "2026-11-30T14:30:00Z",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        delivered = 0.0
        while time.monotonic() < deadline and not delivered:
            answer = get(port, "/metrics")
            if answer is not None:
                got = samples(answer[1].decode())
                delivered = total(got, "stockpipe_producer_records_total", outcome="delivered")
            time.sleep(0.3)
        assert delivered > 0
        status, body = get(port, "/healthz") or (None, b"")
        assert status == 200 and json.loads(body)["ok"] is True
    finally:
        running.send_signal(signal.SIGTERM)
        assert running.wait(120) == 0
    # what it wrote at exit is what the topic holds
    final = samples(textfile.read_text())
    records = [
        r
        for r in read_records(settings.kafka_bootstrap_servers, topic)
        if HEARTBEAT_HEADER not in r[3]
    ]
    assert total(final, "stockpipe_producer_records_total", outcome="delivered") == len(records)
    assert total(final, "stockpipe_producer_records_total", outcome="sent") == len(records)
    assert total(final, "stockpipe_producer_records_total", outcome="undelivered") == 0
    assert total(final, "stockpipe_trades_received_total", source="sim") == len(records)
    assert len(records) >= delivered


def test_health_says_stalled_when_records_wait_and_none_are_read():
    from flows.stream.kafka_source import STALL_SECONDS, LagWatcher, _Progress

    watcher = LagWatcher()
    assert watcher.health() == (True, "starting: no partition assigned yet")
    now = time.monotonic()
    busy, idle = _Progress(100, now), _Progress(50, now - STALL_SECONDS - 5)
    busy.end, idle.end = 250, 80
    watcher._parts = {("t", 0): busy, ("t", 1): idle}
    ok, detail = watcher.health()
    assert not ok and detail.startswith("stalled: t[1]: 30 records wait, none read for ")
    idle.end = 50  # caught up: nothing waits, so a quiet partition is healthy
    assert watcher.health() == (True, "reading 2 partitions")
    busy.log_time = time.time() - 2.0
    line = watcher.progress(600, 60.0)
    assert line.startswith("2 partitions, 10 records/s, lag 150 records, log time 2.")
    assert line.endswith("s behind the clock")
