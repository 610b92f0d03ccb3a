"""The dataflow end to end on the real broker: produce -> `stockpipe stream` -> lake."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import polars as pl
import pytest
from confluent_kafka import Consumer, Producer
from helpers import (
    GOLDEN_REASONS,
    assert_bars_equal,
    assert_each_row_once,
    assert_revisions_never_change,
    consume_all,
    expected_bars,
    final_bars,
    free_port_pair,
    golden_bars,
    golden_messages,
    produce_raw,
    read_lake_bars,
    read_records,
    run_stockpipe,
    stockpipe,
    stream_messages,
)
from streamgen import StreamSpec, make_stream

pytestmark = pytest.mark.kafka


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
    # a fifth of the trades with sale conditions: the bars follow the rules table
    stream = make_stream(11, StreamSpec(ticks_per_symbol=1500, p_conditions=0.2))
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


def _committed_offsets(settings) -> dict[int, int] | None:
    """Per partition, the offset a restart resumes from (the recovery store's committed one).

    None while nothing is committed yet or the store is locked by the worker.
    """
    import sqlite3

    from flows.stream.recovery import SOURCE_STEP, read_recovery_store, recovery_path

    try:
        store = read_recovery_store(recovery_path(settings))
    except sqlite3.Error:
        return None
    if store.resume_epoch is None:
        return None
    out = {}
    for (step, key), (_epoch, offset) in store.snapshots.items():
        idx, _, key_topic = key.partition("-")
        if step == SOURCE_STEP and key_topic == settings.topic and isinstance(offset, int):
            out[int(idx)] = offset
    return out


def _lake_files(lake: Path) -> dict[str, tuple[int, int, int]]:
    """Bar and late files: path -> (partition, last offset, inode), from `<topic>+<p>+<a>-<b>`."""
    out = {}
    for path in lake.rglob("*.parquet"):
        _topic, part, span = path.name.removesuffix(".parquet").rsplit("+", 2)
        out[str(path)] = (int(part), int(span.split("-")[1]), path.stat().st_ino)
    return out


def _dlq_offsets(bootstrap: str, topic: str) -> Counter:
    """How many DLQ records each (source partition, source offset) has."""
    return Counter(
        (int(h["stockpipe.source.partition"]), int(h["stockpipe.source.offset"]))
        for _key, _value, _part, h in read_records(bootstrap, f"{topic}.dlq")
    )


def produce_paced(
    bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], hurry: threading.Event
) -> threading.Thread:
    """A thread producing `messages` 100 at a time, a pause after each hundred until
    `hurry` is set (so log time moves on while a worker reads), then the rest at once."""

    def run() -> None:
        producer = Producer({"bootstrap.servers": bootstrap})
        for i in range(0, len(messages), 100):
            for key, value in messages[i : i + 100]:
                producer.produce(topic, key=key, value=value)
            assert producer.flush(30) == 0
            if not hurry.is_set():
                time.sleep(0.25)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_killed_worker_resumes_without_losing_or_double_counting(new_topic, settings_for, tmp_path):
    """SIGKILL at a moment the first run has read records its committed snapshot has not passed.

    The moment is found, not slept into: the worker is frozen (SIGSTOP) while the
    test reads the offsets its recovery store would resume from and the offsets
    its lake file names say it read; it is killed (still frozen) only when a file
    names an offset at or past the resume offset of its partition, i.e. was written
    since the last snapshot, else let go on. The resumed run must then read those
    records again and write that file again, under the same name with the same
    rows. Bad records among the ticks go to the DLQ with their source offsets, so
    both runs' reading shows there too: those the first run had read from the
    resume offset on reach the DLQ a second time, none below it does. And the
    final bars still equal the batch computation, each row held once.
    """
    topic = new_topic("crash")
    # Files are sealed every second of log time and snapshots taken every three of wall
    # time, so most of an epoch has files its snapshot has not passed. (With both at one
    # second the two fell into step on a busy machine, a file was written only just
    # before each snapshot, and no moment was found within the deadline.)
    settings = settings_for(topic=topic, epoch_interval=3.0, flush_interval=1.0)
    stream = make_stream(5, StreamSpec(ticks_per_symbol=2000, p_conditions=0.2))
    half = len(stream) // 2
    messages = stream_messages(stream)
    rest: list[tuple[bytes, bytes]] = []  # the second half, a bad record after every 10th tick
    for i, (key, value) in enumerate(messages[half:]):
        rest.append((key, value))
        if i % 10 == 0:  # keyed as that tick: same partition; a negative price goes to the DLQ
            rest.append((key, orjson.dumps({"symbol": key.decode(), "price": -1.0, "ts": 1})))
    bad = len(rest) - (len(messages) - half)
    produce_raw(settings.kafka_bootstrap_servers, topic, messages[:half])

    lake = Path(settings.lake_url)
    log = (tmp_path / "first-run.log").open("wb")
    worker = stockpipe(settings, "stream", stdout=log, stderr=subprocess.STDOUT)

    killed = threading.Event()  # log time moves on while the worker runs; the rest at once
    producer = produce_paced(settings.kafka_bootstrap_servers, topic, rest, killed)
    resume: dict[int, int] | None = None
    read_before: dict[int, int] = {}  # per partition, the largest offset the first run read
    try:
        deadline = time.monotonic() + 180
        while resume is None and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.3)
            worker.send_signal(signal.SIGSTOP)
            try:
                committed = _committed_offsets(settings)
                files = _lake_files(lake)
                # Every partition past its first snapshot (so each has a resume offset
                # to check against), and a file written since the last snapshot: it
                # names an offset the first run read at or past the one a restart
                # resumes from.
                if (
                    committed
                    and len(committed) == 4  # the topic's partitions
                    and min(committed.values()) >= 0
                    and any(
                        last >= committed.get(part, 1 << 62) for part, last, _ in files.values()
                    )
                ):
                    worker.send_signal(signal.SIGKILL)  # frozen: nothing moved since we looked
                    killed.set()
                    resume = committed
                    for part, offset in _dlq_offsets(settings.kafka_bootstrap_servers, topic):
                        read_before[part] = max(read_before.get(part, -1), offset)
                    for part, last, _ in files.values():
                        read_before[part] = max(read_before.get(part, -1), last)
            finally:
                worker.send_signal(signal.SIGCONT)
        assert resume is not None, (
            f"no moment to kill found; worker exit {worker.poll()}",
            (tmp_path / "first-run.log").read_text(errors="replace")[-3000:],
        )
        worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)
        log.close()
        killed.set()
        producer.join(120)
    assert worker.returncode == -signal.SIGKILL
    assert _committed_offsets(settings) == resume  # what the restart resumes from
    replayed = {  # partition -> (resume offset, the last offset the first run read)
        p: (resume[p], last) for p, last in read_before.items() if 0 <= resume.get(p, -1) <= last
    }
    assert replayed  # partitions where the resumed run must read again what the first run read
    files_before = _lake_files(lake)
    rows_before = {path: pl.read_parquet(path).rows() for path in files_before}
    dlq_before = _dlq_offsets(settings.kafka_bootstrap_servers, topic)
    assert set(dlq_before.values()) <= {1}

    done = run_stockpipe(settings, "stream", "--exit-when-idle", "3")
    assert done.returncode == 0, done.stdout

    # The resumed run read again from its snapshot: the DLQ records of offsets the first
    # run had read at or after the resume offset came a second time, none before it did.
    dlq_after = _dlq_offsets(settings.kafka_bootstrap_servers, topic)
    again = {src for src, n in dlq_after.items() if n > dlq_before.get(src, 0)}
    assert all(off >= resume.get(part, 0) for part, off in again), (resume, sorted(again))
    for p, (start, last) in replayed.items():
        first_read = {(part, off) for part, off in dlq_before if part == p and start <= off <= last}
        assert first_read <= again, (p, start, last, sorted(first_read - again))
    assert len(dlq_after) == bad and max(dlq_after.values()) <= 2  # each bad record, <= once a run

    # The files the first run wrote for records at or past the resume offset were written
    # again by the resumed run, under the same name with the same rows; none was added.
    files_after = _lake_files(lake)
    rewritten = set()
    for path, (part, last, ino) in files_before.items():
        assert path in files_after
        assert pl.read_parquet(path).rows() == rows_before[path], path
        if last >= resume.get(part, 0):
            assert files_after[path][2] != ino, f"{path} was not written again by the replay"
            rewritten.add(path)
    assert rewritten  # the file that made the kill a replay, written again by the resumed run
    rows = read_lake_bars(settings.lake_url)
    assert_bars_equal(final_bars(rows), expected_bars(stream))
    assert_revisions_never_change(rows)
    assert_each_row_once(rows)  # the replay rewrote the files it had written, it added none
    assert not list(lake.rglob(".*.tmp")), "half-written files left behind"


@pytest.mark.parametrize(
    "signum,workers",
    [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2)],
    ids=["SIGTERM", "SIGINT", "SIGTERM-2-workers"],
)
def test_a_signal_stops_a_busy_stream_cleanly_and_the_restart_reads_nothing_again(
    new_topic, settings_for, tmp_path, signum, workers
):
    """SIGTERM (compose's stop) or SIGINT while ticks arrive: the stream ends its input,
    the epoch closes with its files and snapshot, and it exits 0. The snapshot then
    covers everything the first run wrote (every file and DLQ record names an offset
    below the partition's resume offset), so the restart reads no record twice: each
    bad record reaches the DLQ once, no file is written again, and the final bars
    equal the batch computation."""
    topic = new_topic("stop")
    settings = settings_for(topic=topic, epoch_interval=1.0, flush_interval=1.0)
    stream = make_stream(7, StreamSpec(ticks_per_symbol=1500))
    messages: list[tuple[bytes, bytes]] = []
    for i, (key, value) in enumerate(stream_messages(stream)):
        messages.append((key, value))
        if i % 10 == 0:  # keyed as that tick: same partition; a negative price goes to the DLQ
            messages.append((key, orjson.dumps({"symbol": key.decode(), "price": -1.0, "ts": 1})))
    bad = len(messages) - len(stream)
    lake = Path(settings.lake_url)
    log = (tmp_path / "first-run.log").open("wb")
    # with --workers 2 the signal goes to the parent, which forwards it to its workers
    worker = stockpipe(
        settings, "stream", "--workers", str(workers), stdout=log, stderr=subprocess.STDOUT
    )
    stopped = threading.Event()
    producer = produce_paced(settings.kafka_bootstrap_servers, topic, messages, stopped)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and worker.poll() is None:  # busy: files and DLQ
            committed = _committed_offsets(settings)
            if committed and len(committed) == 4 and len(_lake_files(lake)) >= 4:
                break
            time.sleep(0.3)
        assert worker.poll() is None, (tmp_path / "first-run.log").read_text()[-3000:]
        worker.send_signal(signum)
        stopped.set()
        code = worker.wait(120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)
        log.close()
        stopped.set()
        producer.join(120)
    output = (tmp_path / "first-run.log").read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert output.count(f"{signal.Signals(signum).name}: ending the input") == workers

    resume = _committed_offsets(settings)
    files_before = _lake_files(lake)
    dlq_before = _dlq_offsets(settings.kafka_bootstrap_servers, topic)
    assert files_before and dlq_before
    # nothing the first run wrote lies past its last snapshot
    assert all(last < resume[part] for part, last, _ in files_before.values()), resume
    assert all(off < resume[part] for part, off in dlq_before), resume

    done = run_stockpipe(settings, "stream", "--exit-when-idle", "3")
    assert done.returncode == 0, done.stdout[-3000:]
    dlq_after = _dlq_offsets(settings.kafka_bootstrap_servers, topic)
    assert len(dlq_after) == bad and set(dlq_after.values()) == {1}  # none read twice
    files_after = _lake_files(lake)
    assert all(files_after[path] == info for path, info in files_before.items())  # not rewritten
    rows = read_lake_bars(settings.lake_url)
    assert_bars_equal(final_bars(rows), expected_bars(stream))
    assert_each_row_once(rows)


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


def _scrape_lag(port: int, topic: str) -> dict[int, float] | None:
    """stockpipe_consumer_lag per partition of `topic` from the flow's /metrics (None: no answer)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            body = resp.read().decode()
    except OSError:
        return None
    return {
        int(line.split('partition="')[1].split('"')[0]): float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("stockpipe_consumer_lag{") and f'topic="{topic}"' in line
    }


def test_consumer_lag_is_exported_as_a_prometheus_gauge(new_topic, settings_for):
    """Bytewax keeps offsets in its recovery store, so the flow exports lag itself, on /metrics.

    What the gauge must say is known apart from it: the test produces a known
    number of records to each partition (and the stream appends none: no
    heartbeats, no flush marker), the broker's end offsets are read back, and the
    recovery store says how far the stream has read and committed. The test
    waits until the store has every record of both partitions committed and the
    gauge reports, for each partition, end offset - committed offset (0 by then).
    """
    from confluent_kafka import TopicPartition

    topic = new_topic("lag", partitions=2)
    settings = settings_for(topic=topic, heartbeat_interval=3600)  # the log end stays put
    stream = make_stream(3, StreamSpec(symbols=["COIN", "MARA"], ticks_per_symbol=200))
    messages = stream_messages(stream)
    produced: Counter = Counter()

    def delivered(err, msg) -> None:
        assert err is None, err
        produced[msg.partition()] += 1

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    per_partition = {b"COIN": 0, b"MARA": 1}
    extra = 0
    for key, value in messages:
        producer.produce(
            topic, key=key, value=value, partition=per_partition[key], on_delivery=delivered
        )
        if key == b"MARA" and extra < 57:  # other counts on the two partitions
            producer.produce(topic, key=key, value=value, partition=1, on_delivery=delivered)
            extra += 1
    assert producer.flush(30) == 0
    assert produced[0] > 0 and produced[1] > 0 and produced[0] != produced[1], produced
    reader = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "lag"})
    ends = {
        p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in (0, 1)
    }
    reader.close()
    assert ends == {0: produced[0], 1: produced[1]}  # the log holds what was produced, no more

    port = free_port_pair()  # the stream's process 0 serves on STOCKPIPE_METRICS_PORT + 1
    env = {**os.environ, **settings.to_env(), "STOCKPIPE_METRICS_PORT": str(port - 1)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "stream"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lags: dict[int, float] | None = None
        committed: dict[int, int] | None = None
        want: dict[int, int] | None = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.5)
            committed = _committed_offsets(settings)
            lags = _scrape_lag(port, topic)
            if committed is None or lags is None or set(committed) != {0, 1}:
                continue
            if committed != ends:
                continue  # the stream has not read and committed everything yet
            want = {p: ends[p] - committed[p] for p in (0, 1)}
            if lags == want:
                break
        assert committed == ends, (committed, ends)  # read to the end, as the store says
        assert want == {0: 0, 1: 0}
        assert lags == want, lags  # the gauge: end offset - next offset, per partition
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


def test_a_partition_that_read_nothing_resumes_at_its_start(new_topic, settings_for):
    """Contract 2: a partition that has read nothing resumes at its start rule, never refused.

    Partition 1 gets a tick, partition 0 nothing (no heartbeats either); once the
    recovery store has committed partition 1's offset the stream is SIGKILLed and
    run again.
    """
    topic = new_topic("unread", partitions=2)
    settings = settings_for(topic=topic, epoch_interval=0.5, heartbeat_interval=3600)
    t0 = 1_741_100_400_000
    tick = {"symbol": "BLK", "price": 900.0, "volume": 10, "ts": t0 + 1000, "id": "a"}
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    producer.produce(topic, key=b"BLK", value=orjson.dumps(tick), partition=1)
    assert producer.flush(30) == 0
    worker = stockpipe(settings, "stream", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        committed = None
        while time.monotonic() < deadline:
            committed = _committed_offsets(settings)
            if committed and committed.get(1) == 1:
                break
            time.sleep(0.3)
        assert committed is not None and committed.get(1) == 1, committed
        assert committed.get(0, -2) < 0  # partition 0 has read nothing
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(60)
    # partition 0's first record, written while no stream runs: the resumed partition
    # must start at the beginning of its log, as a fresh one does, and read it
    first = {"symbol": "COIN", "price": 300.0, "volume": 5, "ts": t0 + 2000, "id": "b"}
    producer.produce(topic, key=b"COIN", value=orjson.dumps(first), partition=0)
    assert producer.flush(30) == 0
    done = run_stockpipe(settings, "stream", "--exit-when-idle", "2")
    assert done.returncode == 0, done.stdout[-2000:]
    rows = read_lake_bars(settings.lake_url).sort("symbol")
    assert rows.select(["symbol", "revision", "trade_count", "close"]).rows() == [
        ("BLK", 0, 1, 900.0),
        ("COIN", 0, 1, 300.0),
    ]
