"""The stream's decode step: a partition batch of Kafka records -> ticks for the bar state + DLQ.

`decode_batch` is `decode_tick` (contract 1, `flows.ingest.ticks`) over a whole
batch, decoded in C by msgspec; `make_decoder` is the dataflow step built on it,
which routes every bad record to `<topic>.dlq` with its original bytes and reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, NamedTuple

import msgspec
from bytewax.connectors.kafka import KafkaSinkMessage
from prometheus_client import Counter

from flows.ingest.ticks import (
    _KNOWN_SYMBOLS_MAX,
    DLQ_DETAIL,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    MAX_ID_LEN,
    MAX_MESSAGE_BYTES,
    MAX_NUMBER,
    MAX_SKEW_MS,
    MAX_TS_MS,
    MIN_TS_MS,
    BadTick,
    decode_tick,
)
from flows.stream.bars import BAD, TICK
from flows.stream.kafka_source import PartitionBatch


class WireTick(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A contract-1 message as the batch decoder reads it (a `Tick` by its attributes).

    Only a message with exactly these fields and these JSON types decodes into
    it; anything else takes `decode_tick`'s path.
    """

    symbol: str
    price: Annotated[float, msgspec.Meta(gt=0.0, lt=MAX_NUMBER)]
    ts: Annotated[int, msgspec.Meta(ge=MIN_TS_MS, le=MAX_TS_MS)]
    volume: Annotated[float, msgspec.Meta(ge=0.0, lt=MAX_NUMBER)] | None = None
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LEN)] | None = None
    source: str | None = None
    conditions: tuple[str, ...] | None = None  # a tuple: the rules memoise by it
    exchange: str | None = None


_decode_wire = msgspec.json.Decoder(WireTick).decode
_SYMBOL_KEYS: dict[str, bytes] = {}  # symbols decode_tick accepted -> the key they need
_WIRE_ERRORS = (msgspec.DecodeError, TypeError, ValueError)

DLQ_RECORDS = Counter(
    "stockpipe_dlq_records_total",
    "Records sent to the dead-letter topic, by reason (contract 1's reason codes).",
    ["topic", "reason"],
)


def decode_batch(
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None],
    log_ts: Sequence[int],
    *,
    max_skew_ms: int = MAX_SKEW_MS,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> tuple[list[Any], list[int]]:
    """`decode_tick` over a batch of records: (one tick or `BadTick` per record, the bad indices).

    The same answer as calling `decode_tick` on each record, faster: every
    message is decoded in C into a `WireTick` (typed, ranges checked, no
    unknown fields), then its key, clock skew and id are checked; a message that is not plain
    ASCII JSON without `\\u` escapes, or that fails any check, goes to
    `decode_tick` itself, which names the problem. So the fast path only ever
    accepts what `decode_tick` accepts, with the same values (a property test
    holds it to that). A valid tick is a `WireTick` or a `Tick`: read them by
    attribute (`symbol`, `ts`, `price`, `volume`, `id`, `source`, `conditions`,
    `exchange`).
    """
    n = len(values)
    wires: list[Any]
    try:
        blob = b"".join(values)  # type: ignore[arg-type]  # a None (tombstone) raises TypeError
        if not _plain(blob) or max(map(len, values)) > max_bytes:  # type: ignore[arg-type]
            raise ValueError("not plain")
        wires = [_decode_wire(v) for v in values]  # type: ignore[arg-type]
    except _WIRE_ERRORS:
        wires = [_wire_or_none(v, max_bytes) for v in values]
    known = _SYMBOL_KEYS
    out: list[Any] = wires
    bad: list[int] = []
    if min(log_ts, default=0) < 0:  # a record without a timestamp is never ahead of it
        log_ts = [lt if lt >= 0 else MAX_TS_MS for lt in log_ts]
    skew = max_skew_ms
    for i in [
        i
        for i, w, key, lt in zip(range(n), wires, keys, log_ts, strict=False)
        if w is None
        or key is None
        or known.get(w.symbol) != key
        or w.ts - lt > skew
        or w.id is None
    ]:
        tick = decode_tick(
            values[i],
            keys[i],
            log_ts[i],
            max_skew_ms=max_skew_ms,
            max_bytes=max_bytes,
        )
        out[i] = tick
        if isinstance(tick, BadTick):
            bad.append(i)
        elif len(known) < _KNOWN_SYMBOLS_MAX:
            known[tick.symbol] = keys[i]  # type: ignore[assignment]  # == symbol.encode()
    return out, bad


def _plain(data: bytes) -> bool:
    """ASCII without `\\u` escapes: no text the fast decoder could read differently."""
    return data.isascii() and b"\\u" not in data


def _wire_or_none(value: bytes | None, max_bytes: int) -> WireTick | None:
    """One message through the fast decoder, or None for `decode_tick` to judge."""
    if value is None or len(value) > max_bytes or not _plain(value):
        return None
    try:
        return _decode_wire(value)
    except _WIRE_ERRORS:
        return None


# What the decode step sends on: ("ok", (key, Decoded)) or ("bad", KafkaSinkMessage).
Routed = tuple[str, object]


class Decoded(NamedTuple):
    """A partition batch after decoding, as `PartitionBars.on_batch` takes it."""

    topic: str
    partition: int
    offsets: list[int]
    log_ts: list[int]
    kinds: list[int]  # TICK, HEARTBEAT, FLUSH or BAD
    ticks: list[Any]  # the tick of each TICK record (see flows.ingest.ticks.decode_batch)


def make_decoder(max_skew_ms: int, max_bytes: int) -> Callable[[tuple[str, PartitionBatch]], list]:
    """The decode step: a partition batch -> its records for the bar state, plus DLQ messages."""

    def decode(item: tuple[str, PartitionBatch]) -> list[Routed]:
        key, batch = item
        kinds = batch.kinds
        if kinds is None:  # every record is a tick
            ticks, bad = decode_batch(
                batch.values,
                batch.keys,
                batch.timestamps,
                max_skew_ms=max_skew_ms,
                max_bytes=max_bytes,
            )
            kinds = [TICK] * len(ticks)
        else:
            at = [i for i, kind in enumerate(kinds) if kind == TICK]
            some, some_bad = decode_batch(
                [batch.values[i] for i in at],
                [batch.keys[i] for i in at],
                [batch.timestamps[i] for i in at],
                max_skew_ms=max_skew_ms,
                max_bytes=max_bytes,
            )
            ticks = [None] * len(kinds)
            for i, tick in zip(at, some, strict=True):
                ticks[i] = tick
            bad = [at[j] for j in some_bad]
            kinds = list(kinds)
        out: list[Routed] = []
        for i in bad:
            kinds[i] = BAD
            out.append(("bad", dlq_message(batch, i, ticks[i])))
            DLQ_RECORDS.labels(batch.topic, ticks[i].reason).inc()
            ticks[i] = None
        decoded = Decoded(
            batch.topic, batch.partition, batch.offsets, batch.timestamps, kinds, ticks
        )
        out.append(("ok", (key, decoded)))
        return out

    return decode


def dlq_message(batch: PartitionBatch, i: int, bad: BadTick) -> KafkaSinkMessage:
    """The original bytes of record `i`, the reason, and where they came from (contract 1)."""
    headers = [
        (DLQ_REASON, bad.reason.encode()),
        (DLQ_DETAIL, bad.detail.encode("utf-8", "backslashreplace")[:1000]),
        (DLQ_TOPIC, batch.topic.encode()),
        (DLQ_PARTITION, str(batch.partition).encode()),
        (DLQ_OFFSET, str(batch.offsets[i]).encode()),
    ]
    return KafkaSinkMessage(key=batch.keys[i], value=batch.values[i], headers=headers)
