"""Kafka input for the dataflow: one Bytewax partition per Kafka partition, with log time.

Why not `bytewax.connectors.kafka.KafkaSource`: it wraps every message in a
dataclass, drops the record timestamps the bar logic runs on (log time,
contract 2), cannot keep a quiet partition's log time moving, cannot stop
through a flush marker in the log (`stockpipe stream --exit-when-idle`), and
resets silently when a resumed offset is gone. This source:

- emits one item per fetched batch, `(partition key, PartitionBatch)`, so the
  stateful step keyed by partition gets its records in offset order;
- keeps its offset in the recovery store exactly like Bytewax's (offsets live
  there, not in a consumer group) and exports consumer lag as a gauge;
- appends a heartbeat record to its partition when the partition has been
  quiet for `heartbeat_interval` while the stream is caught up, so windows of
  a quiet feed close (a heartbeat only moves log time; while catching up on a
  backlog, log time comes from the backlog, so nothing closes early);
- with `exit_when_idle`, once idle and caught up, appends a flush marker,
  reads up to it (the stateful step closes everything there) and ends: the
  close is in the log, so a replay sees it at the same point;
- uses `auto.offset.reset=error`: a resume offset that retention or a
  re-created topic removed stops the stream with a message, unless the user
  chose `--reset-offsets earliest|latest`.

Heartbeats, flush markers and the exit decision use the wall clock; that is
fine because their effect on the bars goes through records in the log.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import Counter, Gauge

from flows.errors import ServiceUnavailable, StockpipeError
from flows.ingest.kafka_out import FLUSH_HEADER, HEARTBEAT_HEADER
from flows.net import kafka_unusable
from flows.stream.bars import FLUSH, HEARTBEAT, TICK

log = logging.getLogger(__name__)

LAG = Gauge(
    "stockpipe_consumer_lag",
    "Messages in the partition not yet read by the dataflow (end offset - next offset), "
    "refreshed every few seconds from the broker, also while the stream is blocked.",
    ["topic", "partition"],
)
LOG_TIME = Gauge(
    "stockpipe_partition_log_time_seconds",
    "Log time of the partition: the largest record timestamp the dataflow has read.",
    ["topic", "partition"],
)
LOG_TIME_LAG = Gauge(
    "stockpipe_log_time_lag_seconds",
    "Wall-clock time minus the partition's log time: how old the newest record read is.",
    ["topic", "partition"],
)
RECORDS_READ = Counter(
    "stockpipe_records_read_total",
    "Records the dataflow read (ticks, bad records, heartbeats and flush markers).",
    ["topic", "partition"],
)
LAG_REFRESH_SECONDS = 5.0
GROUP = "stockpipe-bytewax"  # the consumer group the offsets read are committed to
STALL_SECONDS = 60.0  # records waiting and none read for this long: /healthz says stalled
PROGRESS_SECONDS = 60.0  # one progress line this often

RESET_CHOICES = ("earliest", "latest")
SECURITY_KEYS = ("security.", "sasl.", "ssl.")  # librdkafka's, as Settings.kafka_config gives

# Read-ahead per partition, measured with `stockpipe bench`: up to 20,000 records
# (8 MB) fetched 2 MB at a time keeps a partition that holds most of the traffic at
# the client's rate. What librdkafka holds grows with the fetch size (~19 MB per
# partition with 2 MB fetches, ~36 MB with 4 MB, at the same speed) and its defaults
# (64 MB, 100,000 records) cost ~100 MB more at 500 symbols. A full queue postpones
# the next fetch by fetch.queue.backoff.ms, 1 s by default: with these thresholds that
# pause, not the broker, held one busy partition to ~90,000 records/s. The bench's
# raw-consume ceiling reads the same way.
READ_AHEAD = {
    "queued.min.messages": 20_000,
    "queued.max.messages.kbytes": 8_192,
    "max.partition.fetch.bytes": 2 << 20,
    "fetch.queue.backoff.ms": 10,
}


class PartitionBatch(NamedTuple):
    """Consecutive records of one partition, in offset order, as columns."""

    topic: str
    partition: int
    offsets: list[int]
    timestamps: list[int]  # the records' timestamps, ms (their log times on LogAppendTime topics)
    keys: list[bytes | None]
    values: list[bytes | None]
    # flows.stream.bars.TICK (any record with a value, or a tombstone), HEARTBEAT or FLUSH per
    # record; None when every record has a value (all ticks, the common case)
    kinds: list[int] | None


def partition_key(topic: str, partition: int) -> str:
    """The key of the stateful step: one bar state per Kafka partition."""
    return f"{topic}#{partition}"


def _kind(headers: list | None) -> int:
    """What a record without a value is, from its headers (a tombstone is a bad tick)."""
    if headers:
        for name, _ in headers:
            if name == HEARTBEAT_HEADER:
                return HEARTBEAT
            if name == FLUSH_HEADER:
                return FLUSH
    return TICK


# Set by `request_stop` (SIGTERM or SIGINT in `stockpipe stream`): every partition of
# this process then ends its input, so Bytewax closes the epoch, writes its last
# snapshot and returns. Windows stay open in the snapshot (a stop is not the end of
# the log), so the next run goes on exactly where this one stopped.
_STOP = threading.Event()


def request_stop() -> None:
    """End this process's input at the next read of each partition (a clean stop)."""
    _STOP.set()


class OffsetGone(StockpipeError):
    """The offset the stream must resume from is no longer in the partition."""


class _Partition(StatefulSourcePartition[tuple[str, PartitionBatch], int]):
    def __init__(
        self,
        config: dict,
        topic: str,
        partition: int,
        offset: int,
        *,
        batch_size: int,
        heartbeat_interval: float,
        exit_when_idle: float | None,
    ):
        self._topic = topic
        self._partition = partition
        self._key = partition_key(topic, partition)
        self._offset = offset
        self._batch_size = batch_size
        self._heartbeat_interval = heartbeat_interval
        self._exit_when_idle = exit_when_idle
        now = time.monotonic()
        self._last_record = now  # any record, heartbeats included
        self._last_data = now  # a record that is not a heartbeat
        self._awake: datetime | None = None
        self._marker: bytes | None = None  # our flush marker, once written
        self._done = False
        self._labels = (topic, str(partition))
        self._tp = TopicPartition(topic, partition)
        self._records = RECORDS_READ.labels(*self._labels)
        WATCHER.watch(config, self._tp, offset)
        self._consumer = Consumer(config)
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._warned_at = 0.0
        self._producer = Producer(
            {
                "bootstrap.servers": config["bootstrap.servers"],
                **{k: v for k, v in config.items() if k.startswith(SECURITY_KEYS)},
                "linger.ms": 0,
                "acks": "all",
                "enable.idempotence": True,
                "message.timeout.ms": 0,  # a marker waits out a broker outage, never dropped
            }
        )

    def next_batch(self) -> list[tuple[str, PartitionBatch]]:
        if self._done or _STOP.is_set():
            raise StopIteration
        msgs = self._consumer.consume(self._batch_size, 0)
        if msgs and any([m.error() is not None for m in msgs]):
            for msg in msgs:
                error = msg.error()
                if error is not None:
                    self._on_error(error)
            msgs = [m for m in msgs if m.error() is None]
        now = time.monotonic()
        if not msgs:
            self._when_quiet(now)
            # Right after data (catching up, the fetch queue drained for a moment) look
            # again soon; when quiet, every 50 ms is plenty.
            pause = 2 if now - self._last_record < 0.5 else 50
            self._awake = datetime.now(UTC) + timedelta(milliseconds=pause)
            return []
        values = [m.value() for m in msgs]
        keys = [m.key() for m in msgs]
        kinds = None
        data = True
        if None in values:  # a heartbeat, a flush marker or a tombstone among them
            kinds = [
                TICK if v is not None else _kind(m.headers())
                for m, v in zip(msgs, values, strict=True)
            ]
            data = TICK in kinds
            if self._marker is not None and any(
                kind == FLUSH and key == self._marker for kind, key in zip(kinds, keys, strict=True)
            ):
                self._done = True  # our own marker came back: everything before it is read
        offsets = [m.offset() for m in msgs]
        timestamps = [m.timestamp()[1] for m in msgs]
        self._offset = offsets[-1] + 1
        self._last_record = now
        if data:
            self._last_data = now
        self._awake = None
        log_time = max(timestamps) / 1000
        LOG_TIME.labels(*self._labels).set(log_time)
        self._records.inc(len(msgs))
        WATCHER.read(self._tp, self._offset, log_time, now)
        batch = PartitionBatch(
            self._topic, self._partition, offsets, timestamps, keys, values, kinds
        )
        return [(self._key, batch)]

    def _on_error(self, error: KafkaError) -> None:
        code = error.code()
        if code == KafkaError._PARTITION_EOF:
            return
        if code in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
            low, high = self._watermarks() or (-1, -1)
            raise OffsetGone(_gone_message(self._topic, self._partition, self._offset, low, high))
        if error.fatal():
            raise KafkaException(error)
        # Anything else (a broker restarting, a leader moving, the network) is the
        # client's to retry: the stream waits, it does not crash.
        self._warn(f"{error} (the client retries)")

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 10:  # one line per 10 s, not one per poll
            self._warned_at = now
            log.warning("kafka %s[%d]: %s", self._topic, self._partition, text)

    def _watermarks(self) -> tuple[int, int] | None:
        """(low, high) offsets of the partition, or None while the broker does not answer."""
        try:
            return self._consumer.get_watermark_offsets(self._tp, timeout=5)
        except KafkaException as exc:
            self._warn(f"no watermark offsets ({exc.args[0]}); retrying")
            return None

    def _when_quiet(self, now: float) -> None:
        """Nothing fetched: send a heartbeat, or end through a flush marker, once caught up."""
        wants_heartbeat = now - self._last_record >= self._heartbeat_interval
        wants_exit = (
            self._exit_when_idle is not None
            and self._marker is None
            and now - self._last_data >= self._exit_when_idle
        )
        if not (wants_heartbeat or wants_exit):
            return
        self._producer.poll(0)
        if len(self._producer) > 0 or not self._caught_up():
            return  # the last record we appended is not in the log yet, or there is more to read
        if wants_exit:
            self._marker = f"stockpipe-flush-{uuid.uuid4().hex}".encode()
            log.info(
                "kafka %s[%d]: idle for %.1fs at offset %d: writing a flush marker, then done",
                self._topic,
                self._partition,
                now - self._last_data,
                self._offset,
            )
            self._append(FLUSH_HEADER, self._marker)
        else:
            self._append(HEARTBEAT_HEADER, None)
        self._last_record = now

    def _caught_up(self) -> bool:
        marks = self._watermarks()
        if marks is None:
            return False  # the broker is away: nothing new can be in the log either
        low, high = marks
        position = self._offset if self._offset >= 0 else low
        return position >= high

    def _append(self, header: str, key: bytes | None) -> None:
        """Queue a heartbeat or flush marker; the idempotent producer delivers it when it can."""
        self._producer.produce(
            self._topic, key=key, value=None, partition=self._partition, headers=[(header, b"1")]
        )
        self._producer.poll(0)

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        WATCHER.forget(self._tp)
        self._consumer.close()
        self._producer.flush(10)


class _Progress:
    """What the watcher knows of one partition the process reads."""

    __slots__ = ("offset", "end", "log_time", "read_at")

    def __init__(self, offset: int, now: float):
        self.offset = offset  # next offset to read (negative: the start, not read yet)
        self.end: int | None = None  # the partition's end offset, from the broker
        self.log_time: float | None = None
        self.read_at = now  # monotonic time of the last read


class LagWatcher:
    """Consumer lag and progress of every partition this process reads, on a thread of its own.

    Lag is end offset (asked of the broker every LAG_REFRESH_SECONDS) minus the
    partition's next offset, so it keeps growing while the dataflow is blocked
    (a lake outage, a slow sink), when nothing the dataflow runs would update it.
    The offsets read are also committed to the consumer group `stockpipe-bytewax`,
    so Kafka's own lag tools (`kafka-consumer-groups.sh --describe`) see the
    stream; they are for watching only: the stream resumes from its recovery
    store, never from the group. `health` tells /healthz whether the process
    makes progress.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[tuple[str, int], _Progress] = {}
        self._config: dict | None = None
        self._thread: threading.Thread | None = None

    def watch(self, config: dict, tp: TopicPartition, offset: int) -> None:
        with self._lock:
            self._parts[(tp.topic, tp.partition)] = _Progress(offset, time.monotonic())
            if self._thread is None:
                self._config = dict(config)
                self._thread = threading.Thread(target=self._run, name="lag-watcher", daemon=True)
                self._thread.start()

    def forget(self, tp: TopicPartition) -> None:
        with self._lock:
            self._parts.pop((tp.topic, tp.partition), None)

    def read(self, tp: TopicPartition, offset: int, log_time: float, now: float) -> None:
        part = self._parts.get((tp.topic, tp.partition))
        if part is not None:
            part.offset, part.log_time, part.read_at = offset, log_time, now

    def _run(self) -> None:
        consumer = Consumer({**(self._config or {}), "group.id": GROUP})
        said_at, said_read = time.monotonic(), self._read_total()
        while True:
            with self._lock:
                parts = list(self._parts.items())
            read = [TopicPartition(t, p, part.offset) for (t, p), part in parts if part.offset >= 0]
            if read:
                with contextlib.suppress(KafkaException):
                    consumer.commit(offsets=read, asynchronous=False)
            for (topic, partition), part in parts:
                try:
                    low, high = consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=5
                    )
                except KafkaException:
                    continue  # the broker is away: keep the last values
                part.end = high
                position = part.offset if part.offset >= 0 else low
                labels = (topic, str(partition))
                LAG.labels(*labels).set(max(high - position, 0))
                if part.log_time is not None:
                    LOG_TIME_LAG.labels(*labels).set(max(time.time() - part.log_time, 0.0))
            now = time.monotonic()
            if now - said_at >= PROGRESS_SECONDS:
                read = self._read_total()
                log.info("progress: %s", self.progress(read - said_read, now - said_at))
                said_at, said_read = now, read
            time.sleep(LAG_REFRESH_SECONDS)

    def _read_total(self) -> int:
        return sum(max(p.offset, 0) for p in list(self._parts.values()))

    def progress(self, read: int, seconds: float) -> str:
        """One line: the read rate, lag and log-time lag over the partitions of this process."""
        parts = list(self._parts.values())
        lag = sum(max(p.end - max(p.offset, 0), 0) for p in parts if p.end is not None)
        times = [p.log_time for p in parts if p.log_time is not None]
        behind = f"{time.time() - max(times):.1f}s" if times else "-"
        return (
            f"{len(parts)} partitions, {read / max(seconds, 1e-9):.0f} records/s, "
            f"lag {lag} records, log time {behind} behind the clock"
        )

    def health(self) -> tuple[bool, str]:
        now = time.monotonic()
        with self._lock:
            parts = list(self._parts.items())
        if not parts:
            return True, "starting: no partition assigned yet"
        stalled = []
        for (topic, partition), part in parts:
            waiting = None if part.end is None else part.end - max(part.offset, 0)
            if waiting and waiting > 0 and now - part.read_at > STALL_SECONDS:
                stalled.append(
                    f"{topic}[{partition}]: {waiting} records wait, none read for "
                    f"{now - part.read_at:.0f}s"
                )
        if stalled:
            return False, "stalled: " + "; ".join(stalled)
        return True, f"reading {len(parts)} partitions"


WATCHER = LagWatcher()


def _gone_message(topic: str, partition: int, offset: int, low: int, high: int) -> str:
    return (
        f"{topic}[{partition}]: the stream must resume at offset {offset}, but the partition "
        f"now holds offsets {low}..{max(high - 1, low)} (retention removed older records, or "
        "the topic was re-created). Nothing was skipped. To go on deliberately, rerun with "
        "`stockpipe stream --reset-offsets earliest` (replay what is left) or "
        "`--reset-offsets latest` (only new records)."
    )


def topic_partitions(brokers: str, topic: str, add_config: dict | None = None) -> int:
    """How many partitions `topic` has; ServiceUnavailable when Kafka or the topic is missing."""
    admin = AdminClient({"bootstrap.servers": brokers, **(add_config or {})})
    try:
        meta = admin.list_topics(timeout=15)  # all topics: asking for one may auto-create it
    except KafkaException as exc:
        config = {"bootstrap.servers": brokers, **(add_config or {})}
        raise kafka_unusable(config, exc.args[0].str()) from None
    found = meta.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ServiceUnavailable(
            f"topic {topic!r} does not exist on {brokers}; produce to it first "
            "(`stockpipe produce`) or set STOCKPIPE_TOPIC"
        )
    return len(found.partitions)


class TickSource(FixedPartitionedSource[tuple[str, PartitionBatch], int]):
    """Every partition of one topic, from its start rule or from the recovered offset.

    The start rule of a partition without a recovered offset is its beginning, or,
    for a store begun at a drain point, the offset in `start_offsets`.
    """

    def __init__(
        self,
        brokers: str,
        topic: str,
        *,
        batch_size: int = 5000,
        heartbeat_interval: float = 1.0,
        exit_when_idle: float | None = None,
        reset_offsets: str | None = None,
        add_config: dict | None = None,
        start_offsets: dict[int, int] | None = None,
    ):
        if reset_offsets is not None and reset_offsets not in RESET_CHOICES:
            raise StockpipeError(
                f"--reset-offsets must be earliest or latest, got {reset_offsets!r}"
            )
        self._brokers = brokers
        self._topic = topic
        self._batch_size = batch_size
        self._heartbeat_interval = heartbeat_interval
        self._exit_when_idle = exit_when_idle
        self._reset_offsets = reset_offsets
        self._add_config = add_config or {}
        self._start_offsets = dict(start_offsets or {})

    def list_parts(self) -> list[str]:
        count = topic_partitions(self._brokers, self._topic, self._add_config)
        return [f"{p}-{self._topic}" for p in range(count)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        idx, topic = for_part.split("-", 1)
        partition = int(idx)
        config = {
            "bootstrap.servers": self._brokers,
            "group.id": GROUP,  # required by librdkafka; the lag watcher commits to it
            "enable.auto.commit": "false",
            "enable.partition.eof": "false",
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": 50,
            **READ_AHEAD,
            **self._add_config,
        }
        # A partition that has read nothing snapshots its start offset, OFFSET_BEGINNING
        # for a fresh one (Bytewax snapshots every partition at every epoch): it starts
        # again by its start rule. A start offset of a drain point is checked like a
        # recovered one: retention may have removed it since.
        start = self._start_offsets.get(partition, OFFSET_BEGINNING)
        if resume_state is None or resume_state == OFFSET_BEGINNING:
            resume_state = start
        offset = (
            OFFSET_BEGINNING
            if resume_state == OFFSET_BEGINNING
            else self._resume_at(config, topic, partition, resume_state)
        )
        return _Partition(
            config,
            topic,
            partition,
            offset,
            batch_size=self._batch_size,
            heartbeat_interval=self._heartbeat_interval,
            exit_when_idle=self._exit_when_idle,
        )

    def _resume_at(self, config: dict, topic: str, partition: int, offset: int) -> int:
        """The recovered offset, checked against what the partition still holds."""
        probe = Consumer(config)
        deadline = time.monotonic() + 120  # a broker restarting: wait for it, as the client does
        try:
            while True:
                try:
                    low, high = probe.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=10
                    )
                    break
                except KafkaException as exc:
                    if time.monotonic() > deadline:
                        raise ServiceUnavailable(
                            f"{topic}[{partition}]: no answer from Kafka at "
                            f"{self._brokers} for 2 minutes ({exc.args[0]})"
                        ) from None
                    log.warning("%s[%d]: %s; retrying", topic, partition, exc.args[0])
                    time.sleep(2)
        finally:
            probe.close()
        if low <= offset <= high:
            return offset
        if self._reset_offsets == "earliest":
            log.warning("%s[%d]: offset %d is gone, resuming at %d", topic, partition, offset, low)
            return low
        if self._reset_offsets == "latest":
            log.warning("%s[%d]: offset %d is gone, resuming at %d", topic, partition, offset, high)
            return high
        raise OffsetGone(_gone_message(topic, partition, offset, low, high))
