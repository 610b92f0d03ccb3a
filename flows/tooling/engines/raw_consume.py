"""The ceiling: how fast confluent-kafka alone hands this topic's messages to Python.

One consumer with the dataflow's read-ahead (`flows.stream.kafka_source.READ_AHEAD`), every
partition assigned from the beginning; `consume(num_messages=10000)`
batches are counted, never decoded. The clock starts when the first batch
arrives (its messages are not counted, so connecting and the first fetch are
left out) and stops when N messages have been read. When one batch holds them
all (tiny runs), the clock starts at the assignment instead.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from flows.stream.kafka_source import READ_AHEAD
from flows.tooling.engines.common import emit, kafka_security, runner_args

BATCH = 10_000
STALL_S = 60.0  # no message for this long: the topic holds fewer than N


def consume_raw(bootstrap: str, topic: str, ticks: int) -> tuple[int, float]:
    """(messages timed, seconds) for reading `ticks` messages of `topic`."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            **kafka_security(),
            "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",  # required; nothing is committed
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 50,
            **READ_AHEAD,  # the dataflow's read-ahead: the ceiling of the same client setup
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
        assigned = time.perf_counter()
        read = 0
        first_batch = 0
        started = 0.0
        last_data = time.monotonic()
        while read < ticks:
            msgs = consumer.consume(num_messages=BATCH, timeout=1.0)
            now = time.perf_counter()
            if not msgs:
                if time.monotonic() - last_data > STALL_S:
                    raise SystemExit(f"raw consume: only {read} of {ticks} messages in {topic!r}")
                continue
            last_data = time.monotonic()
            if not read:
                started, first_batch = now, len(msgs)
            read += len(msgs)
        if read == first_batch:
            return read, now - assigned
        return read - first_batch, now - started
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> None:
    args = runner_args(__doc__.splitlines()[0], argv)
    timed, seconds = consume_raw(args.bootstrap, args.topic, args.ticks)
    emit(timed, seconds, consumed=args.ticks)


if __name__ == "__main__":
    main()
