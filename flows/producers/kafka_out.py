"""The Kafka side of every producer: an idempotent producer that writes contract-1 ticks.

`TickWriter` keys each message by symbol, counts what the broker acknowledged
(per symbol, for the summary), and turns an unreachable broker or failed
deliveries into a `ServiceUnavailable` that says what to do.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from flows.errors import ServiceUnavailable
from flows.settings import Settings
from flows.ticks import Tick, encode_tick

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger("flows.producers.librdkafka")

# What producers yield: a valid tick, or a deliberately raw record (key, value bytes).
Item = Tick | tuple[str | None, bytes | None]


def _unreachable(bootstrap: str, exc: object) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"Kafka is not reachable at {bootstrap} ({exc}); start it with `stockpipe kafka start` "
        "or set KAFKA_BOOTSTRAP_SERVERS"
    )


def ensure_topics(settings: Settings, topic: str | None = None, timeout: float = 15.0) -> list[str]:
    """Create `topic` (settings.topic_partitions partitions) and `<topic>.dlq` (1) if missing.

    Returns the names it created. Raises `ServiceUnavailable` when the broker
    does not answer within `timeout` seconds.
    """
    topic = topic or settings.topic
    bootstrap = settings.kafka_bootstrap_servers
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.connection.setup.timeout.ms": 5000,
            "logger": _rdkafka_log,
        }
    )
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise _unreachable(bootstrap, exc) from None
    wanted = {topic: settings.topic_partitions, f"{topic}.dlq": 1}
    missing = [NewTopic(name, parts, 1) for name, parts in wanted.items() if name not in existing]
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
    return created


class TickWriter:
    """Writes ticks to one Kafka topic with an idempotent, acks=all producer.

    Use it as a context manager: leaving the block flushes everything and
    raises if anything could not be delivered.

        with TickWriter(settings) as out:
            out.send(tick)              # key = symbol, value = encode_tick(tick)
            out.send_raw("COIN", b"{")  # a deliberately bad record, sent verbatim
        print(out.delivered)            # Counter: symbol -> ticks acknowledged

    `delivered` counts acknowledged ticks per symbol, `delivered_raw` counts
    acknowledged raw records per key, `failed` counts messages the broker
    never took; `flush()` raises `ServiceUnavailable` when `failed` is non-zero
    or messages are still queued after its timeout.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str | None = None,
        *,
        create_topics: bool = True,
        config: dict[str, Any] | None = None,
        connect_timeout: float = 15.0,
    ):
        self.topic = topic or settings.topic
        self.bootstrap = settings.kafka_bootstrap_servers
        if create_topics:
            ensure_topics(settings, self.topic, timeout=connect_timeout)
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "client.id": "stockpipe-producer",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "compression.type": "lz4",
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "message.timeout.ms": 60_000,
            "socket.connection.setup.timeout.ms": 5000,
            "logger": _rdkafka_log,
        }
        conf.update(config or {})
        self._producer = Producer(conf)
        if not create_topics:  # otherwise ensure_topics already proved the broker answers
            try:
                self._producer.list_topics(timeout=connect_timeout)
            except KafkaException as exc:
                raise _unreachable(self.bootstrap, exc) from None
        self.delivered: Counter[str] = Counter()
        self.delivered_raw: Counter[str] = Counter()
        self.failed = 0
        self.queued = 0
        self.last_error: KafkaError | None = None

    # delivery reports (called from poll()/flush() on this thread)
    def _on_tick(self, err: KafkaError | None, msg: Message) -> None:
        self._count(err, msg, self.delivered)

    def _on_raw(self, err: KafkaError | None, msg: Message) -> None:
        self._count(err, msg, self.delivered_raw)

    def _count(self, err: KafkaError | None, msg: Message, counter: Counter[str]) -> None:
        if err is not None:
            self.failed += 1
            self.last_error = err
            if self.failed <= 5 or self.failed % 1000 == 0:
                log.error("delivery to %s failed (%d so far): %s", self.topic, self.failed, err)
            return
        key = msg.key()
        counter[key.decode("utf-8", "replace") if key is not None else ""] += 1

    def _produce(self, key: bytes | None, value: bytes | None, callback: Any) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value, key, on_delivery=callback)
                break
            except BufferError:  # local queue full: let the broker catch up
                self._producer.poll(0.05)
        self.queued += 1
        if self.queued % 1000 == 0:
            self._producer.poll(0)

    def send(self, tick: Tick) -> None:
        """Queue one tick: key = symbol, value = contract-1 JSON."""
        self._produce(tick.symbol.encode(), encode_tick(tick), self._on_tick)

    def send_raw(self, key: str | bytes | None, value: bytes | None) -> None:
        """Queue a record verbatim (e.g. a deliberately bad one that must reach the DLQ as is)."""
        if isinstance(key, str):
            key = key.encode()
        self._produce(key, value, self._on_raw)

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

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every queued message is acknowledged; raise if any was not."""
        deadline = time.monotonic() + timeout
        remaining = self._producer.flush(timeout)
        while remaining and time.monotonic() < deadline:
            remaining = self._producer.flush(max(0.1, deadline - time.monotonic()))
        if remaining:
            raise ServiceUnavailable(
                f"{remaining} messages to {self.topic!r} still undelivered after {timeout:.0f}s: "
                f"is Kafka at {self.bootstrap} up? ({self.last_error or 'no answer'})"
            )
        if self.failed:
            raise ServiceUnavailable(
                f"{self.failed} messages to {self.topic!r} could not be delivered "
                f"(last error: {self.last_error}); check Kafka at {self.bootstrap}"
            )

    def __enter__(self) -> TickWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.flush()
        else:  # still try to deliver what was queued, but don't mask the original error
            try:
                self.flush(timeout=10.0)
            except ServiceUnavailable as flush_exc:
                log.error("while stopping on %s: %s", exc_type.__name__, flush_exc)
