"""Kafka input for the dataflow: one Bytewax partition per Kafka partition.

Why not `bytewax.connectors.kafka.KafkaSource`: it wraps every message in a
dataclass (measurable at 100k+ msgs/s), cannot stop when the topic goes idle
(`stockpipe stream --exit-when-idle`), and reports lag only when the offset
is positive. This source emits plain tuples, keeps its offset in the recovery
store exactly like Bytewax's (offsets live there, not in a consumer group), and
publishes consumer lag as a Prometheus gauge and in its log lines.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import Gauge

from flows.errors import ServiceUnavailable

log = logging.getLogger(__name__)

LAG = Gauge(
    "stockpipe_consumer_lag",
    "Messages in the partition not yet read by the dataflow (end offset - next offset).",
    ["topic", "partition"],
)
SEQ_SHIFT = 40  # seq = partition << 40 | offset: partition-major position of a message


class RawMessage(NamedTuple):
    """One Kafka message as the decode step needs it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class _Partition(StatefulSourcePartition[RawMessage, int]):
    def __init__(
        self,
        config: dict,
        topic: str,
        partition: int,
        offset: int,
        batch_size: int,
        exit_when_idle: float | None,
    ):
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._batch_size = batch_size
        self._exit_when_idle = exit_when_idle
        self._last_data = time.monotonic()
        self._awake: datetime | None = None
        self._labels = (topic, str(partition))
        config = dict(config, stats_cb=self._on_stats)
        self._consumer = Consumer(config)
        self._consumer.assign([TopicPartition(topic, partition, offset)])

    def _on_stats(self, stats_json: str) -> None:
        stats = orjson.loads(stats_json)
        part = (
            stats.get("topics", {})
            .get(self._topic, {})
            .get("partitions", {})
            .get(str(self._partition))
        )
        if not part or part.get("ls_offset", -1) < 0:
            return
        # Before the first message the position is the partition's start.
        position = self._offset if self._offset >= 0 else part.get("lo_offset", -1)
        if position >= 0:
            LAG.labels(*self._labels).set(max(part["ls_offset"] - position, 0))

    def next_batch(self) -> list[RawMessage]:
        msgs = self._consumer.consume(self._batch_size, 0)
        batch: list[RawMessage] = []
        for msg in msgs:
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.fatal() or not error.retriable():
                    raise KafkaException(error)
                log.warning("kafka %s[%d]: %s (retrying)", self._topic, self._partition, error)
                continue
            batch.append(
                RawMessage(self._topic, self._partition, msg.offset(), msg.key(), msg.value())
            )
        now = time.monotonic()
        if batch:
            self._offset = batch[-1].offset + 1
            self._last_data = now
            self._awake = None
        else:
            self._maybe_finish(now)
            # Nothing there: look again shortly without blocking the worker.
            self._awake = datetime.now(UTC) + timedelta(milliseconds=50)
        return batch

    def _maybe_finish(self, now: float) -> None:
        if self._exit_when_idle is None or now - self._last_data < self._exit_when_idle:
            return
        low, high = self._consumer.get_watermark_offsets(
            TopicPartition(self._topic, self._partition), timeout=10
        )
        position = self._offset if self._offset >= 0 else low  # nothing read yet
        if position >= high:
            log.info(
                "kafka %s[%d]: idle for %.1fs at offset %d, input done",
                self._topic,
                self._partition,
                now - self._last_data,
                self._offset,
            )
            raise StopIteration
        self._last_data = now  # more data is on its way; it is not idle

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class TickSource(FixedPartitionedSource[RawMessage, int]):
    """Every partition of one topic, from the beginning or from the recovered offset."""

    def __init__(
        self,
        brokers: str,
        topic: str,
        *,
        batch_size: int = 5000,
        exit_when_idle: float | None = None,
        add_config: dict | None = None,
    ):
        self._brokers = brokers
        self._topic = topic
        self._batch_size = batch_size
        self._exit_when_idle = exit_when_idle
        self._add_config = add_config or {}

    def list_parts(self) -> list[str]:
        admin = AdminClient({"bootstrap.servers": self._brokers, **self._add_config})
        try:
            meta = admin.list_topics(timeout=15)  # all topics: asking for one may auto-create it
        except KafkaException as exc:
            raise ServiceUnavailable(
                f"cannot reach Kafka at {self._brokers} ({exc}); start it with "
                "`stockpipe kafka start` or set KAFKA_BOOTSTRAP_SERVERS"
            ) from None
        topic = meta.topics.get(self._topic)
        if topic is None or topic.error is not None:
            raise ServiceUnavailable(
                f"topic {self._topic!r} does not exist on {self._brokers}; produce to it first "
                "(`stockpipe produce`) or set STOCKPIPE_TOPIC"
            )
        return [f"{p}-{self._topic}" for p in sorted(topic.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        idx, topic = for_part.split("-", 1)
        config = {
            "bootstrap.servers": self._brokers,
            "group.id": "stockpipe-bytewax",  # required by librdkafka; offsets are not committed
            "enable.auto.commit": "false",
            "enable.partition.eof": "false",
            "statistics.interval.ms": 5000,
            "fetch.wait.max.ms": 50,
            "queued.min.messages": 200_000,
            # read-ahead per partition: librdkafka's 64 MB default costs ~300 MB at 4 partitions
            "queued.max.messages.kbytes": 16_384,
            **self._add_config,
        }
        offset = OFFSET_BEGINNING if resume_state is None else resume_state
        return _Partition(config, topic, int(idx), offset, self._batch_size, self._exit_when_idle)
