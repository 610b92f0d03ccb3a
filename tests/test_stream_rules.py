"""Restarting under other rules, adding partitions, and the drain point, on the real broker.

Contract 2: restarts never change a row. The recovery store records the rules
that shape rows and files; a restart under others is refused before a row is
written, and the way to change them on purpose is a drain point.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import orjson
import polars as pl
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions
from helpers import (
    assert_bars_equal,
    assert_each_row_once,
    batch_bars,
    final_bars,
    read_lake_bars,
    run_stockpipe,
    stockpipe,
)

from flows.stream.recovery import (
    STORE_FILE,
    partition_snapshots,
    read_recovery_store,
    recovery_path,
)

pytestmark = pytest.mark.kafka

T0 = 1_741_100_400_000  # 15:00:00Z: a boundary of 1-minute and 5-minute windows


def tick(symbol: str, ts: int, price: float, volume: float = 10.0) -> dict:
    return {"symbol": symbol, "price": price, "volume": volume, "ts": ts, "id": f"{symbol}{ts}"}


def produce(bootstrap: str, topic: str, ticks: list[tuple[int, dict]]) -> None:
    """Each tick into the partition given with it."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, t in ticks:
        producer.produce(topic, orjson.dumps(t), t["symbol"].encode(), partition=partition)
    assert producer.flush(30) == 0


def lake_files(settings) -> dict[str, bytes]:
    root = settings.lake_url
    return {str(p.relative_to(root)): p.read_bytes() for p in Path(root).rglob("*.parquet")}


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
    try:
        return {
            p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        probe.close()


def add_partitions(bootstrap: str, topic: str, total: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_partitions([NewPartitions(topic, total)]).values():
        future.result(timeout=30)


def as_batch_input(ticks: list[dict]) -> list[dict]:
    return [
        {"symbol": t["symbol"], "ts": t["ts"], "seq": i, "price": t["price"], "volume": t["volume"]}
        for i, t in enumerate(ticks)
    ]


def test_a_restart_under_other_rules_or_partitions_is_refused_and_writes_nothing(
    new_topic, settings_for
):
    topic = new_topic("rules", partitions=2)
    settings = settings_for(topic=topic)
    bootstrap = settings.kafka_bootstrap_servers
    produce(bootstrap, topic, [(i % 2, tick("COIN", T0 + 1000 * i, 100.0 + i)) for i in range(20)])
    assert run_stockpipe(settings, "stream", "--exit-when-idle", "2").returncode == 0
    before = lake_files(settings)
    assert before
    record = json.loads((recovery_path(settings) / STORE_FILE).read_bytes())
    assert record["rules"]["STOCKPIPE_BAR_SECONDS"] == 60_000 and record["rules"]["partitions"] == 2

    # more input waits in the topic: a run under other rules would read it
    produce(bootstrap, topic, [(0, tick("COIN", T0 + 30_000, 99.0))])
    cases = [
        (
            {"bar_seconds": 300, "allowed_lateness": "10s"},
            [
                "STOCKPIPE_BAR_SECONDS: was 60s, now 300s",
                "STOCKPIPE_ALLOWED_LATENESS: was 5s, now 10s",
            ],
        ),
        ({"flush_interval": "200s"}, ["STOCKPIPE_FLUSH_INTERVAL: was 1s, now 200s"]),
        # the trade-condition rules shape prices and volume: turning them off is a change
        (
            {"conditions": "off"},
            [
                "STOCKPIPE_CONDITIONS: was on, now off",
                "STOCKPIPE_UNKNOWN_CONDITIONS: was regular, now unset",
            ],
        ),
        (
            {"unknown_conditions": "volume"},
            ["STOCKPIPE_UNKNOWN_CONDITIONS: was regular, now volume"],
        ),
    ]
    for overrides, changes in cases:
        done = run_stockpipe(
            settings_for(topic=topic, **overrides), "stream", "--exit-when-idle", "2"
        )
        assert done.returncode == 2, done.stdout[-2000:]
        for line in changes:
            assert line in done.stdout
        assert "--from-drain" in done.stdout and "Traceback" not in done.stdout
        assert lake_files(settings) == before, overrides

    add_partitions(bootstrap, topic, 3)
    done = run_stockpipe(settings, "stream", "--exit-when-idle", "2")
    assert done.returncode == 2, done.stdout[-2000:]
    assert f"partitions of topic {topic!r}: was 2, now 3" in done.stdout
    assert "between the drain and --from-drain" in done.stdout
    assert lake_files(settings) == before

    # the record lost (a store of an older stockpipe): the bar state still knows its rules
    (recovery_path(settings) / STORE_FILE).unlink()
    done = run_stockpipe(
        settings_for(topic=topic, bar_seconds=300), "stream", "--exit-when-idle", "2"
    )
    assert done.returncode == 2, done.stdout[-2000:]
    assert "STOCKPIPE_BAR_SECONDS: was 60s, now 300s" in done.stdout
    assert lake_files(settings) == before


def test_a_drain_point_changes_the_bar_size_and_adds_a_partition_without_a_row_twice(
    new_topic, settings_for
):
    topic = new_topic("drain", partitions=2)
    settings = settings_for(topic=topic)
    bootstrap = settings.kafka_bootstrap_servers
    old = [(i % 2, tick(("COIN", "MARA")[i % 2], T0 + 2500 * i, 100.0 + i % 7)) for i in range(40)]
    produce(bootstrap, topic, old)
    # the drain: the producers stopped, every window closed and every file written
    assert run_stockpipe(settings, "stream", "--exit-when-idle", "2").returncode == 0
    drained_at = end_offsets(bootstrap, topic, 2)  # the ticks, heartbeats and flush markers

    add_partitions(bootstrap, topic, 3)
    new_rules = settings_for(topic=topic, bar_seconds=300)
    newest_old = max(t["ts"] for _, t in old)  # T0 + 97.5 s
    cut = T0 + 300_000  # the first boundary of 1 and 5 minutes after it
    assert cut - 300_000 <= newest_old < cut
    new = [
        (i % 3, tick(("COIN", "MARA", "MSTR")[i % 3], cut + 7000 * i, 50.0 + i)) for i in range(90)
    ]
    straggler = (0, tick("COIN", T0 + 120_000, 77.0))  # a window the old rules own
    produce(bootstrap, topic, [new[0], straggler, *new[1:]])

    done = run_stockpipe(new_rules, "stream", "--from-drain", "--exit-when-idle", "2")
    assert done.returncode == 0, done.stdout[-3000:]
    aside = sorted(recovery_path(settings).parent.glob(f"{topic}.drained-*"))
    assert len(aside) == 1 and any(aside[0].glob("part-*.sqlite3"))
    record = json.loads((recovery_path(settings) / STORE_FILE).read_bytes())
    assert record["not_before_ms"] == cut
    assert (
        record["rules"]["STOCKPIPE_BAR_SECONDS"] == 300_000 and record["rules"]["partitions"] == 3
    )
    # partition 2 has no start offset: it starts at its beginning
    assert record["start_offsets"] == {str(p): o for p, o in drained_at.items()}

    rows = read_lake_bars(settings.lake_url)
    assert_each_row_once(rows)
    got = final_bars(rows)
    one_minute = got.filter(pl.col("interval_s") == 60)
    five_minutes = got.filter(pl.col("interval_s") == 300)
    assert_bars_equal(one_minute, batch_bars(as_batch_input([t for _, t in old])))
    assert_bars_equal(five_minutes, batch_bars(as_batch_input([t for _, t in new]), bar_ms=300_000))
    late = pl.read_parquet(f"{settings.lake_url}/late/**/*.parquet")
    assert late.select("symbol", "price").rows() == [("COIN", 77.0)]

    # the new store restarts under its own rules, and refuses the old ones
    assert run_stockpipe(new_rules, "stream", "--exit-when-idle", "2").returncode == 0
    assert read_lake_bars(settings.lake_url).height == rows.height
    done = run_stockpipe(settings, "stream", "--exit-when-idle", "2")
    assert done.returncode == 2 and "STOCKPIPE_BAR_SECONDS: was 300s, now 60s" in done.stdout


def test_from_drain_refuses_a_store_that_was_not_drained(new_topic, settings_for):
    topic = new_topic("undrained", partitions=1)
    settings = settings_for(topic=topic, flush_interval="1h", flush_rows=1_000_000)
    produce(settings.kafka_bootstrap_servers, topic, [(0, tick("BLK", T0 + 1000, 900.0))])
    # killed, not drained: once a snapshot holds the tick, its window is open in it
    worker = stockpipe(settings, "stream")
    path = recovery_path(settings)

    def snapshot_holds_the_tick() -> bool:
        if not any(path.glob("part-*.sqlite3")):
            return False
        _, bars = partition_snapshots(read_recovery_store(path), topic)
        snap = bars.get(0, (None, None))[1]
        return snap is not None and bool(snap[4])

    try:
        deadline = time.monotonic() + 120
        while not snapshot_holds_the_tick():
            assert time.monotonic() < deadline, "no snapshot holds the tick"
            time.sleep(0.3)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(60)
    done = run_stockpipe(settings, "stream", "--from-drain", "--exit-when-idle", "2")
    assert done.returncode == 2, done.stdout[-2000:]
    assert "was not drained (partition 0: 1 open windows" in done.stdout
    assert not list(recovery_path(settings).parent.glob(f"{topic}.drained-*"))


def test_a_store_from_before_the_condition_rules_counts_as_rules_off():
    """Its rows were made with every trade regular: a restart with the rules on is a change,
    with them off is none; the table's fingerprint matters only while the rules are on."""
    from flows.settings import Settings
    from flows.stream.recovery import CONDITION_TABLE_RULE, rule_changes, stream_rules

    on = stream_rules(Settings(), 4)
    off = stream_rules(Settings(STOCKPIPE_CONDITIONS="off"), 4)
    older = {k: v for k, v in off.items() if "CONDITION" not in k and k != CONDITION_TABLE_RULE}
    assert rule_changes(older, off, "t") == []
    changes = rule_changes(older, on, "t")
    assert changes[0] == "STOCKPIPE_CONDITIONS: was off, now on"
    assert changes[1] == "STOCKPIPE_UNKNOWN_CONDITIONS: was unset, now regular"
    assert changes[2].startswith("the trade-condition table (flows/stream/conditions/): was none")
    assert len(changes) == 3
    # another table (a rule edited by an upgrade) is a change of its own
    edited = {**on, CONDITION_TABLE_RULE: on[CONDITION_TABLE_RULE] ^ 1}
    assert rule_changes(on, edited, "t") == [
        "the trade-condition table (flows/stream/conditions/): was "
        f"{on[CONDITION_TABLE_RULE]:012x}, now {edited[CONDITION_TABLE_RULE]:012x}"
    ]
