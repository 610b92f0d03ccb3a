"""The Kafka side of every producer: an idempotent producer that never loses a tick silently.

`TickWriter` keys each message by symbol and counts what the broker
acknowledged (per symbol, for the summary). What it promises:

**Nothing is lost without a ledger entry.** A record either reaches Kafka, or
lands in the outage ledger (`STOCKPIPE_OUTAGE_LOG`, the JSON-lines format of
`flows.ingest.ledger`, `source` = `kafka-producer`) with the first and last
event ts, the count and the symbols of what was lost, and why.

- *Broker slow or briefly away*: librdkafka's in-memory queue
  (`queue.buffering.max.messages`) absorbs it. When that queue is full,
  `send` blocks (backpressure on the source) as long as the broker keeps
  acknowledging; after `STALL_SECONDS` without any progress the broker is
  taken as unreachable and records go to a **disk spool** instead, so a
  websocket source is not stalled into dropping its connection.
- *The spool*: append-only segment files under `STOCKPIPE_SPOOL_DIR`, at most
  `STOCKPIPE_SPOOL_MAX_BYTES` (default 256 MiB). Once anything is spooled,
  every later record is spooled too, and a background thread moves the spool
  into librdkafka, oldest first, as its queue frees up: order is kept per key
  (in fact overall). Records that do not fit in a full spool are lost, with
  the reason "spool full". `STOCKPIPE_SPOOL_MAX_BYTES=0` turns the spool
  off: `send` then blocks for as long as the broker is away (pure backpressure,
  for sources that can wait, like the simulator or a replay).
- *Stopping* (`close`, or leaving the `with` block): the spool and the queue get
  `STOCKPIPE_PRODUCER_DRAIN_TIMEOUT` (default 30 s) to drain; what is still
  undelivered then is purged and recorded in the ledger, and `close` raises
  `ServiceUnavailable` saying so.
- *Permanent delivery errors* (message too large, topic not authorised, a
  fatal idempotence error) are recorded in the ledger as they happen.

**`message.timeout.ms` is 0 (infinite)**, not re-queued on expiry. With
`enable.idempotence` librdkafka retries a batch with the same producer id and
sequence numbers, so the broker appends it once and in order however often it
is retried, across a broker restart too. A message that timed out and was
produced again would get a new sequence number: if its first attempt had in
fact been appended (the ack was lost), it would be written twice, and the
messages behind it, already re-sent by librdkafka, would overtake it. So the
producer keeps retrying for as long as it runs, and the bounded drain on
`close` is the only place where a record is given up (and ledgered).

**Heartbeats** (contract 2, "Quiet feeds"): while a writer runs, each partition
of its topic that has not taken a record for `STOCKPIPE_HEARTBEAT_INTERVAL`
gets one heartbeat record (key and value None, header `HEARTBEAT_HEADER` = b"1",
produced to that explicit partition). With `LogAppendTime` topics it only moves
the partition's log time; it is not a tick and never counted as one. At most
one heartbeat per partition is outstanding, so an outage does not pile them up.

`ensure_topics` creates the tick topic and its `.dlq` with
`message.timestamp.type=LogAppendTime`: a record's timestamp is the broker's
clock when it was appended (contract 2, "Log time").
"""

from __future__ import annotations

import logging
import shutil
import struct
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge

from flows.errors import ServiceUnavailable, StockpipeError
from flows.ingest.ledger import Outage, append_outage
from flows.ingest.ticks import Tick, encode_tick
from flows.net import kafka_unusable
from flows.settings import Settings

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger("flows.ingest.librdkafka")

# What producers yield: a valid tick, or a deliberately raw record (key, value bytes).
Item = Tick | tuple[str | None, bytes | None]

HEARTBEAT_HEADER = "stockpipe.heartbeat"  # a record that only moves its partition's log time
FLUSH_HEADER = "stockpipe.flush"  # the stream's end-of-input marker (written by the stream)
TOPIC_CONFIG = {"message.timestamp.type": "LogAppendTime"}
LEDGER_SOURCE = "kafka-producer"

STALL_SECONDS = 1.0  # a full queue with no acknowledgement for this long: spool to disk
LEDGER_FLUSH_SECONDS = 5.0  # losses are written to the ledger at most this late
_METADATA_REFRESH_SECONDS = 30.0  # partitions added to the topic get heartbeats too
_TICK_SECONDS = 0.05  # the background thread's pace
_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)
UNACKED_SECONDS = 60.0  # records pending and none acknowledged this long: /healthz says so
PROGRESS_SECONDS = 60.0  # one progress line this often

PRODUCED = MetricCounter(
    "stockpipe_producer_records_total",
    "Records the producer handled, by outcome: sent (handed to the writer), delivered "
    "(acknowledged by Kafka), spooled (waited on disk), undelivered (in the outage log).",
    ["topic", "outcome"],
)
TRADES_RECEIVED = MetricCounter(
    "stockpipe_trades_received_total",
    "Ticks the producer received from its source and sent on, by source (sim, finnhub-ws, ...).",
    ["source"],
)
SPOOL_BYTES = Gauge(
    "stockpipe_spool_bytes", "Bytes waiting in the producer's disk spool.", ["topic"]
)


def _unreachable(config: dict[str, Any], exc: KafkaException) -> StockpipeError:
    reason = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else exc
    return kafka_unusable(config, reason)


def ensure_topics(settings: Settings, topic: str | None = None, timeout: float = 15.0) -> list[str]:
    """Create `topic` (settings.topic_partitions partitions) and `<topic>.dlq` (1) if missing.

    Both are created with `message.timestamp.type=LogAppendTime`. Returns the
    names it created. Raises `ServiceUnavailable` when the broker does not
    answer within `timeout` seconds.
    """
    topic = topic or settings.topic
    admin = AdminClient(
        {
            **settings.kafka_config(),
            "socket.connection.setup.timeout.ms": 5000,
            "logger": _rdkafka_log,
        }
    )
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise _unreachable(settings.kafka_config(), exc) from None
    wanted = {topic: settings.topic_partitions, f"{topic}.dlq": 1}
    missing = [
        NewTopic(name, parts, 1, config=dict(TOPIC_CONFIG))
        for name, parts in wanted.items()
        if name not in existing
    ]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            created.append(name)
            log.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another producer won the race
            raise ServiceUnavailable(f"could not create Kafka topic {name!r}: {exc}") from None
    _wait_visible(admin, {name: wanted[name] for name in created}, timeout)
    return created


def _wait_visible(admin: AdminClient, partitions: dict[str, int], timeout: float) -> None:
    """Until the broker's metadata lists each new topic with its partitions: a topic the
    controller created may reach the metadata a moment later, and a client started right
    away (a stream checking its input) would find it missing."""
    deadline = time.monotonic() + timeout
    while partitions:
        try:
            topics = admin.list_topics(timeout=max(deadline - time.monotonic(), 0.1)).topics
        except KafkaException:
            topics = {}
        partitions = {
            name: n
            for name, n in partitions.items()
            if name not in topics or topics[name].error is not None
            or len(topics[name].partitions) < n
        }  # fmt: skip
        if not partitions:
            return
        if time.monotonic() > deadline:
            raise ServiceUnavailable(
                f"Kafka created {sorted(partitions)} but does not list them after {timeout:.0f}s"
            )
        time.sleep(0.2)


# --------------------------------------------------------------------------- disk spool

_TICK, _RAW = 0, 1
_NO_TS = -(2**63)
_HEADER = struct.Struct("<Bqii")  # kind, event ts (or _NO_TS), key length, value length (-1: None)


@dataclass
class _Record:
    kind: int
    ts: int | None
    key: bytes | None
    value: bytes | None
    size: int


class _Spool:
    """Records waiting for Kafka, in append-only segment files read back oldest first.

    `max_bytes` bounds the live segments together; a segment is deleted once
    read to its end, and everything once the spool is empty.
    """

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.segment_bytes = max(64 * 1024, max_bytes // 8)
        self.count = 0
        self.bytes = 0  # size of the live segments
        self._segments: deque[tuple[Path, list[int]]] = deque()  # path, [size]
        self._wfh: IO[bytes] | None = None
        self._rfh: IO[bytes] | None = None
        self._roff = 0
        self._next_name = 0
        self._peeked: _Record | None = None

    def append(self, kind: int, ts: int | None, key: bytes | None, value: bytes | None) -> bool:
        """Add a record at the end; False (nothing written) when it would not fit."""
        body = (key or b"") + (value or b"")
        size = _HEADER.size + len(body)
        if self.bytes + size > self.max_bytes:
            return False
        if self._wfh is None or self._segments[-1][1][0] + size > self.segment_bytes:
            self._new_segment()
        assert self._wfh is not None
        header = _HEADER.pack(
            kind,
            _NO_TS if ts is None else ts,
            -1 if key is None else len(key),
            -1 if value is None else len(value),
        )
        self._wfh.write(header + body)
        self._segments[-1][1][0] += size
        self.bytes += size
        self.count += 1
        return True

    def _new_segment(self) -> None:
        if self._wfh is not None:
            self._wfh.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self._next_name:08d}.spool"
        self._next_name += 1
        self._wfh = path.open("wb")
        self._segments.append((path, [0]))

    def peek(self) -> _Record | None:
        """The oldest record, without removing it (None when the spool is empty)."""
        if self._peeked is not None or self.count == 0:
            return self._peeked
        path, size = self._segments[0]
        if self._roff >= size[0]:  # this segment is used up (the writer moved on)
            self._drop_first()
            path, size = self._segments[0]
        if len(self._segments) == 1 and self._wfh is not None:
            self._wfh.flush()  # reading the segment being written
        if self._rfh is None:
            self._rfh = path.open("rb")
            self._rfh.seek(self._roff)
        kind, ts, klen, vlen = _HEADER.unpack(self._rfh.read(_HEADER.size))
        key = self._rfh.read(klen) if klen >= 0 else None
        value = self._rfh.read(vlen) if vlen >= 0 else None
        size_ = _HEADER.size + max(klen, 0) + max(vlen, 0)
        self._peeked = _Record(kind, None if ts == _NO_TS else ts, key, value, size_)
        return self._peeked

    def pop(self) -> None:
        """Remove the record `peek` returned."""
        assert self._peeked is not None
        self._roff += self._peeked.size
        self._peeked = None
        self.count -= 1
        if self.count == 0:
            self.clear()

    def _drop_first(self) -> None:
        path, size = self._segments.popleft()
        if self._rfh is not None:
            self._rfh.close()
            self._rfh = None
        path.unlink(missing_ok=True)
        self.bytes -= size[0]
        self._roff = 0

    def clear(self) -> None:
        """Forget every record and delete the files."""
        for fh in (self._rfh, self._wfh):
            if fh is not None:
                fh.close()
        self._rfh = self._wfh = self._peeked = None
        self._segments.clear()
        self.count = self.bytes = self._roff = 0
        shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------- losses


@dataclass
class _Loss:
    """Records lost for one reason since the ledger was last written."""

    count: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    symbols: set[str] = field(default_factory=set)

    def add(self, key: bytes | None, ts: int | None) -> None:
        self.count += 1
        if key is not None:
            self.symbols.add(key.decode("utf-8", "replace"))
        if ts is not None:
            self.first_ms = ts if self.first_ms is None else min(self.first_ms, ts)
            self.last_ms = ts if self.last_ms is None else max(self.last_ms, ts)


def value_ts(value: bytes | None) -> int | None:
    """The event ts in a record's JSON value, when it has a readable integer one."""
    if not value:
        return None
    try:
        ts = orjson.loads(value).get("ts")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else None


# --------------------------------------------------------------------------- writer


class TickWriter:
    """Writes ticks to one Kafka topic with an idempotent, acks=all producer.

    Use it as a context manager: leaving the block drains what is queued or
    spooled (for at most `drain_timeout`), ledgers what could not be delivered,
    and raises if anything was lost.

        with TickWriter(settings) as out:
            out.send(tick)              # key = symbol, value = encode_tick(tick)
            out.send_raw("COIN", b"{")  # a deliberately bad record, sent verbatim
        print(out.delivered)            # Counter: symbol -> ticks acknowledged

    `delivered` counts acknowledged ticks per symbol, `delivered_raw`
    acknowledged raw records per key, `failed` records that never reached
    Kafka (each one is in the outage ledger), `spooled` records that waited in
    the disk spool, `heartbeats` acknowledged heartbeat records.

    heartbeat_interval: seconds of quiet before a partition gets a heartbeat
        (default STOCKPIPE_HEARTBEAT_INTERVAL; 0 turns heartbeats off).
    drain_timeout: how long `close` waits for undelivered records (default
        STOCKPIPE_PRODUCER_DRAIN_TIMEOUT).
    spool_dir, spool_max_bytes, outage_log: default to the settings of the same names.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str | None = None,
        *,
        create_topics: bool = True,
        config: dict[str, Any] | None = None,
        connect_timeout: float = 15.0,
        heartbeat_interval: float | None = None,
        drain_timeout: float | None = None,
        spool_dir: Path | None = None,
        spool_max_bytes: int | None = None,
        outage_log: Path | None = None,
    ):
        self.topic = topic or settings.topic
        self.bootstrap = settings.kafka_bootstrap_servers
        self.heartbeat_interval = (
            settings.heartbeat_interval if heartbeat_interval is None else heartbeat_interval
        )
        self.drain_timeout = (
            settings.producer_drain_timeout if drain_timeout is None else drain_timeout
        )
        self.outage_log = outage_log or settings.outage_log
        if create_topics:
            ensure_topics(settings, self.topic, timeout=connect_timeout)
        conf: dict[str, Any] = {
            **settings.kafka_config(),
            "client.id": "stockpipe-producer",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "compression.type": "lz4",
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "message.timeout.ms": 0,  # infinite: see the module docstring
            "socket.connection.setup.timeout.ms": 5000,
            "logger": _rdkafka_log,
        }
        conf.update(config or {})
        self._producer = Producer(conf)
        try:  # also proves the broker answers when ensure_topics did not run
            meta = self._producer.list_topics(self.topic, timeout=connect_timeout)
        except KafkaException as exc:
            raise _unreachable(settings.kafka_config(), exc) from None
        topic_meta = meta.topics.get(self.topic)
        self._partitions = sorted(topic_meta.partitions) if topic_meta is not None else []

        self.delivered: Counter[str] = Counter()
        self.delivered_raw: Counter[str] = Counter()
        self._m_sent = PRODUCED.labels(self.topic, "sent")
        self._m_delivered = PRODUCED.labels(self.topic, "delivered")
        self._m_spooled = PRODUCED.labels(self.topic, "spooled")
        self._m_undelivered = PRODUCED.labels(self.topic, "undelivered")
        self._m_spool_bytes = SPOOL_BYTES.labels(self.topic)
        self._m_sources: dict[str, Any] = {}
        self._acked_at = time.monotonic()
        self.failed = 0
        self.spooled = 0
        self.heartbeats = 0
        self.queued = 0
        self.last_error: KafkaError | None = None

        self._lock = threading.RLock()
        folder = (spool_dir or settings.spool_dir) / f"{self.topic}.{uuid.uuid4().hex[:12]}"
        max_bytes = settings.spool_max_bytes if spool_max_bytes is None else spool_max_bytes
        self._spool = _Spool(folder, max_bytes)
        self._losses: dict[str, _Loss] = {}
        self._ledger_due = time.monotonic() + LEDGER_FLUSH_SECONDS
        started = time.monotonic()
        self._last_write: dict[int, float] = dict.fromkeys(self._partitions, started)
        self._heartbeat_pending: set[int] = set()
        self._metadata_due = started + _METADATA_REFRESH_SECONDS
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._background, name=f"tickwriter-{self.topic}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ delivery reports
    # (served by poll()/flush() on whichever thread calls them, hence the lock)

    def _on_tick(self, err: KafkaError | None, msg: Message) -> None:
        self._report(err, msg, self.delivered, _TICK)

    def _on_raw(self, err: KafkaError | None, msg: Message) -> None:
        self._report(err, msg, self.delivered_raw, _RAW)

    def _report(
        self, err: KafkaError | None, msg: Message, counter: Counter[str], kind: int
    ) -> None:
        with self._lock:
            key = msg.key()
            if err is None:
                self._last_write[msg.partition()] = self._acked_at = time.monotonic()
                counter[key.decode("utf-8", "replace") if key is not None else ""] += 1
                self._m_delivered.inc()
                return
            self.last_error = err
            if err.code() in _PURGED:
                reason = self._shutdown_reason()
            else:
                reason = f"delivery failed: {err.str()}"
            self._lose(reason, key, value_ts(msg.value()))

    def _on_heartbeat(self, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            self._heartbeat_pending.discard(msg.partition())
            if err is None:
                self._last_write[msg.partition()] = time.monotonic()
                self.heartbeats += 1

    def _shutdown_reason(self) -> str:
        return (
            f"undelivered when the producer stopped: Kafka at {self.bootstrap} did not take it "
            f"within the {self.drain_timeout:g}s drain ({self.last_error or 'no answer'})"
        )

    def _lose(self, reason: str, key: bytes | None, ts: int | None) -> None:
        with self._lock:
            loss = self._losses.setdefault(reason, _Loss())
            if loss.count == 0:
                log.error(
                    "records for %s are being lost (%s); see %s",
                    self.topic,
                    reason,
                    self.outage_log,
                )
            loss.add(key, ts)
            self.failed += 1
            self._m_undelivered.inc()

    def _write_ledger(self) -> None:
        """Append one outage line per reason for what was lost since the last call."""
        with self._lock:
            losses, self._losses = self._losses, {}
            self._ledger_due = time.monotonic() + LEDGER_FLUSH_SECONDS
        now = time.time_ns() // 1_000_000
        for reason, loss in losses.items():
            outage = Outage(
                start_ms=loss.first_ms if loss.first_ms is not None else now,
                end_ms=loss.last_ms if loss.last_ms is not None else now,
                symbols=sorted(loss.symbols),
                reason=reason,
                source=LEDGER_SOURCE,
                count=loss.count,
                topic=self.topic,
            )
            append_outage(self.outage_log, outage)
            log.error(
                "%d records for %s could not be delivered (%s); recorded in %s",
                loss.count,
                self.topic,
                reason,
                self.outage_log,
            )

    # ------------------------------------------------------------------ producing

    def _try_produce(self, kind: int, key: bytes | None, value: bytes | None) -> bool:
        """Hand one record to librdkafka; False when its queue is full."""
        callback = self._on_tick if kind == _TICK else self._on_raw
        try:
            self._producer.produce(self.topic, value, key, on_delivery=callback)
        except BufferError:
            return False
        except KafkaException as exc:  # e.g. larger than message.max.bytes, or a fatal error
            self.last_error = exc.args[0] if exc.args else None
            self._lose(f"rejected by the producer: {exc}", key, value_ts(value))
            return True
        self.queued += 1
        return True

    def _spool_or_lose(
        self, kind: int, ts: int | None, key: bytes | None, value: bytes | None
    ) -> None:
        if self._spool.append(kind, ts, key, value):
            if self._spool.count == 1:
                log.warning(
                    "Kafka at %s does not keep up or is unreachable: spooling records for %s to %s",
                    self.bootstrap,
                    self.topic,
                    self._spool.folder,
                )
            self.spooled += 1
            self._m_spooled.inc()
        else:
            self._lose(
                f"spool full ({self._spool.max_bytes} bytes) while Kafka at {self.bootstrap} "
                "was unreachable",
                key,
                ts,
            )

    def _send(self, kind: int, ts: int | None, key: bytes | None, value: bytes | None) -> None:
        if self._closed:
            raise RuntimeError("TickWriter is closed")
        self._m_sent.inc()
        with self._lock:
            if self._spool.count:  # behind spooled records: keep the order
                self._spool_or_lose(kind, ts, key, value)
                return
            if self._try_produce(kind, key, value):
                if self.queued % 1000 == 0:
                    self._producer.poll(0)
                return
        # librdkafka's queue is full: wait while the broker makes progress, spool once it stops
        waiting = len(self._producer)
        progress_at = time.monotonic()
        while True:
            self._producer.poll(0.05)
            with self._lock:
                if self._spool.count:
                    self._spool_or_lose(kind, ts, key, value)
                    return
                if self._try_produce(kind, key, value):
                    return
                now, left = time.monotonic(), len(self._producer)
                if left < waiting:
                    waiting, progress_at = left, now
                elif now - progress_at >= STALL_SECONDS and self._spool.max_bytes > 0:
                    self._spool_or_lose(kind, ts, key, value)
                    return

    def send(self, tick: Tick) -> None:
        """Queue one tick: key = symbol, value = contract-1 JSON."""
        source = self._m_sources.get(tick.source)
        if source is None:
            source = self._m_sources[tick.source] = TRADES_RECEIVED.labels(tick.source or "")
        source.inc()
        self._send(_TICK, tick.ts, tick.symbol.encode(), encode_tick(tick))

    def send_raw(self, key: str | bytes | None, value: bytes | None) -> None:
        """Queue a record verbatim (e.g. a deliberately bad one that must reach the DLQ as is)."""
        if isinstance(key, str):
            key = key.encode()
        self._send(_RAW, value_ts(value), key, value)

    def write(self, item: Item) -> None:
        """`send` a Tick, `send_raw` a (key, bytes) pair."""
        if isinstance(item, Tick):
            self.send(item)
        else:
            self.send_raw(item[0], item[1])

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports (cheap; producers call it now and then)."""
        self._producer.poll(timeout)

    @property
    def acknowledged(self) -> int:
        return sum(self.delivered.values()) + sum(self.delivered_raw.values())

    def health(self) -> tuple[bool, str]:
        """For /healthz: unhealthy while records wait and Kafka has acknowledged none lately."""
        pending = self.pending
        quiet = time.monotonic() - self._acked_at
        if pending and quiet > UNACKED_SECONDS:
            return False, (
                f"Kafka at {self.bootstrap} has acknowledged nothing for {quiet:.0f}s; "
                f"{pending} records wait ({self._spool.count} spooled)"
            )
        return True, f"{self.acknowledged} records delivered, {pending} pending"

    @property
    def pending(self) -> int:
        """Records not yet acknowledged: spooled, or queued in librdkafka (heartbeats included)."""
        return self._spool.count + len(self._producer)

    # ------------------------------------------------------------------ background

    def _drain_spool(self, budget: int = 10_000) -> None:
        """Move spooled records into librdkafka, oldest first, while its queue takes them."""
        with self._lock:
            for _ in range(budget):
                record = self._spool.peek()
                if record is None:
                    return
                if not self._try_produce(record.kind, record.key, record.value):
                    return
                self._spool.pop()
                if self._spool.count == 0:
                    log.info("spool for %s drained: writing to Kafka directly again", self.topic)

    def _send_heartbeats(self) -> None:
        if self.heartbeat_interval <= 0:
            return
        now = time.monotonic()
        with self._lock:
            for partition in self._partitions:
                quiet = now - self._last_write.get(partition, now)
                if quiet < self.heartbeat_interval or partition in self._heartbeat_pending:
                    continue
                try:
                    self._producer.produce(
                        self.topic,
                        None,
                        None,
                        partition=partition,
                        headers=[(HEARTBEAT_HEADER, b"1")],
                        on_delivery=self._on_heartbeat,
                    )
                except (BufferError, KafkaException):
                    return  # a full queue is not quiet: try again later
                self._heartbeat_pending.add(partition)

    def _refresh_partitions(self) -> None:
        try:
            meta = self._producer.list_topics(self.topic, timeout=1.0)
        except KafkaException:
            return
        topic_meta = meta.topics.get(self.topic)
        if topic_meta is None or topic_meta.error is not None:
            return
        with self._lock:
            now = time.monotonic()
            for partition in topic_meta.partitions:
                self._last_write.setdefault(partition, now)
            self._partitions = sorted(topic_meta.partitions)

    def _background(self) -> None:
        """Serve delivery reports, drain the spool, send heartbeats, write the ledger."""
        said_at, said = time.monotonic(), 0
        while not self._stop.is_set():
            try:
                self._producer.poll(_TICK_SECONDS)
                if self._spool.count:
                    self._drain_spool()
                self._m_spool_bytes.set(self._spool.bytes)
                self._send_heartbeats()
                now = time.monotonic()
                if now >= self._metadata_due:
                    self._metadata_due = now + _METADATA_REFRESH_SECONDS
                    self._refresh_partitions()
                if self._losses and now >= self._ledger_due:
                    self._write_ledger()
                if now - said_at >= PROGRESS_SECONDS:
                    done = self.acknowledged
                    log.info(
                        "progress: %s %.0f records/s delivered, %d pending (%d spooled), %d lost",
                        self.topic,
                        (done - said) / (now - said_at),
                        self.pending,
                        self._spool.count,
                        self.failed,
                    )
                    said_at, said = now, done
            except Exception:  # never let the thread die silently: it carries the spool
                log.exception("TickWriter background work for %s failed; retrying", self.topic)
                self._stop.wait(1.0)

    # ------------------------------------------------------------------ flush / close

    def _wait_delivered(self, deadline: float) -> bool:
        """Drain the spool and the queue until nothing is pending or `deadline` passes."""
        while True:
            if self._spool.count:
                self._drain_spool()
            if self.pending == 0:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._producer.flush(min(0.1, left))

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every record is acknowledged; raise if some are still pending or lost.

        Pending records are not given up here (that is `close`'s job); lost ones
        are already in the outage ledger.
        """
        delivered = self._wait_delivered(time.monotonic() + timeout)
        if self._losses:
            self._write_ledger()
        if not delivered:
            raise ServiceUnavailable(
                f"{self.pending} records to {self.topic!r} still undelivered after {timeout:g}s: "
                f"is Kafka at {self.bootstrap} up? ({self.last_error or 'no answer'})"
            )
        self._raise_if_lost()

    def _raise_if_lost(self) -> None:
        if self.failed:
            raise ServiceUnavailable(
                f"{self.failed} records to {self.topic!r} could not be delivered "
                f"(last error: {self.last_error}); they are listed in the outage log "
                f"{self.outage_log}; check Kafka at {self.bootstrap}"
            )

    def close(self, drain_timeout: float | None = None) -> None:
        """Stop: drain for at most `drain_timeout`, ledger what is left, raise if anything was lost.

        Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join()
        timeout = self.drain_timeout if drain_timeout is None else drain_timeout
        self.drain_timeout = timeout
        if not self._wait_delivered(time.monotonic() + timeout):
            log.error(
                "%d records for %s still undelivered after %gs; giving them up",
                self.pending,
                self.topic,
                timeout,
            )
            with self._lock:
                reason = self._shutdown_reason()
                while (record := self._spool.peek()) is not None:
                    self._spool.pop()
                    self._lose(reason, record.key, record.ts)
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.flush(5.0)  # serves the purged records' reports: into the ledger
        self._spool.clear()
        if self._losses:
            self._write_ledger()
        self._raise_if_lost()

    def __enter__(self) -> TickWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # still deliver what was queued, but don't mask the original error
            try:
                self.close()
            except ServiceUnavailable as close_exc:
                log.error("while stopping on %s: %s", exc_type.__name__, close_exc)
