"""`stockpipe dlq` on the golden stream: reasons counted as its labels say, samples traceable."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from confluent_kafka import Consumer, TopicPartition
from helpers import GOLDEN_REASONS, golden_messages, produce_raw, run_stockpipe

pytestmark = pytest.mark.kafka


def record_at(bootstrap: str, topic: str, partition: int, offset: int) -> bytes:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "dlq-test"})
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        while True:
            msg = consumer.poll(10)
            assert msg is not None, "no record at the sample's source offset"
            if msg.error() is None:
                return msg.value()
    finally:
        consumer.close()


def test_dlq_reports_every_reason_with_samples_that_lead_to_the_source(
    new_topic, settings_for, golden_dir
):
    topic = new_topic("dlq")
    settings = settings_for(topic=topic)
    messages = golden_messages(golden_dir)
    produce_raw(
        settings.kafka_bootstrap_servers,
        topic,
        [(m["key"].encode(), m["value"].encode()) for m in messages],
    )
    # before the stream ran there is no DLQ: an empty report, not an error
    empty = run_stockpipe(settings, "dlq", "--json")
    assert empty.returncode == 0, empty.stdout
    assert json.loads(empty.stdout)["records"] == 0
    assert run_stockpipe(settings, "stream", "--exit-when-idle", "2").returncode == 0

    done = run_stockpipe(settings, "dlq", "--json", "--samples", "2")
    assert done.returncode == 0, done.stdout
    report = json.loads(done.stdout)
    want = Counter(GOLDEN_REASONS[m["case"]] for m in messages if m["case"].startswith("bad:"))
    assert {r["reason"]: r["count"] for r in report["reasons"]} == want
    assert report["records"] == sum(want.values()) and report["topic"] == f"{topic}.dlq"
    originals = {m["value"] for m in messages if m["case"].startswith("bad:")}
    for r in report["reasons"]:
        assert 1 <= len(r["samples"]) <= 2 and r["first"] <= r["last"]
        for s in r["samples"]:
            assert s["source_topic"] == topic and s["value"] in originals
            source = record_at(
                settings.kafka_bootstrap_servers, topic, s["source_partition"], s["source_offset"]
            )
            assert source.decode() == s["value"]  # the sample leads to its source record

    only = json.loads(run_stockpipe(settings, "dlq", "--json", "--reason", "bad-symbol").stdout)
    assert [(r["reason"], r["count"]) for r in only["reasons"]] == [("bad-symbol", 3)]
    future = run_stockpipe(settings, "dlq", "--json", "--since", "2099-01-01T00:00:00Z")
    assert json.loads(future.stdout)["records"] == 0
    recent = json.loads(run_stockpipe(settings, "dlq", "--json", "--since", "1h").stdout)
    assert recent["records"] == sum(want.values())
    table = run_stockpipe(settings, "dlq")
    assert table.returncode == 0 and "bad-symbol" in table.stdout
    bad = run_stockpipe(settings, "dlq", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since 'yesterday-ish'" in bad.stdout
