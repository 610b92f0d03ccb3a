"""`stockpipe dlq`: what the dead-letter topic holds, by reason, with samples.

Every record the stream rejects goes to `<topic>.dlq` with its original bytes
and headers naming the reason and the source topic, partition and offset
(contract 1). This reads the DLQ (from `--since` on, found by record time, or
from its beginning) up to its end as it was when the command started, and
reports per reason the count, the first and last time, and up to `--samples`
records with where they came from, so a producer bug can be traced to the
exact source record (`kafka-console-consumer --partition P --offset O`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from flows.errors import StockpipeError
from flows.ingest.ticks import DLQ_DETAIL, DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON, DLQ_TOPIC
from flows.net import kafka_unusable
from flows.settings import Settings, load_settings, parse_duration

PREVIEW_BYTES = 200


@dataclass
class Sample:
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    key: str | None
    value: str | None  # the original bytes, decoded with replacement, cut at PREVIEW_BYTES
    detail: str | None
    dlq_partition: int
    dlq_offset: int
    time: str


@dataclass
class Reason:
    reason: str
    count: int = 0
    first: str | None = None
    last: str | None = None
    samples: list[Sample] = field(default_factory=list)


@dataclass
class DlqReport:
    topic: str
    since: str | None
    records: int
    reasons: list[Reason]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    cut = data[:PREVIEW_BYTES]
    return cut.decode("utf-8", "backslashreplace") + ("…" if len(data) > PREVIEW_BYTES else "")


def parse_since(value: str | None, now_ms: int) -> int | None:
    """`--since`: a duration back from now (`1h`) or an ISO time; epoch ms, or None."""
    if value is None:
        return None
    try:
        return now_ms - int(parse_duration(value) * 1000)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise StockpipeError(
            f"--since {value!r}: give a duration (30m, 1h, 2d) or an ISO time "
            "(2026-03-04T15:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _records(settings: Settings, since_ms: int | None, timeout: float) -> Iterator[Any]:
    from confluent_kafka import (
        OFFSET_BEGINNING,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )

    topic = settings.dlq_topic
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": "stockpipe-dlq-reader",  # nothing is committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "log_level": 0,
        }
    )
    try:
        try:
            meta = consumer.list_topics(timeout=timeout)
        except KafkaException:
            raise kafka_unusable(settings.kafka_config()) from None
        found = meta.topics.get(topic)
        if found is None or not found.partitions:
            return  # no DLQ yet: nothing was ever rejected
        parts = sorted(found.partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in parts
        }
        starts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts]
        if since_ms is not None:
            starts = consumer.offsets_for_times(
                [TopicPartition(topic, p, since_ms) for p in parts], timeout=timeout
            )
        todo = {tp.partition for tp in starts if tp.offset != -1 and ends[tp.partition] > 0}
        assignment = [tp for tp in starts if tp.partition in todo]
        if not assignment:
            return
        consumer.assign(assignment)
        deadline = time.monotonic() + max(timeout * 4, 30)
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                p = msg.partition()
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        todo.discard(p)
                    continue
                if msg.offset() >= ends[p]:
                    todo.discard(p)
                    continue
                yield msg
                if msg.offset() + 1 >= ends[p]:
                    todo.discard(p)
    finally:
        consumer.close()


def read_dlq(
    settings: Settings,
    *,
    since_ms: int | None = None,
    reason: str | None = None,
    samples: int = 3,
    timeout: float = 10.0,
) -> DlqReport:
    """The DLQ's records (from `since_ms`), by reason (only `reason`, if given)."""
    by_reason: dict[str, Reason] = {}
    total = 0
    for msg in _records(settings, since_ms, timeout):
        headers = {k: v for k, v in (msg.headers() or [])}
        why = (headers.get(DLQ_REASON) or b"unknown").decode("utf-8", "replace")
        if reason is not None and why != reason:
            continue
        total += 1
        at = _iso(msg.timestamp()[1])
        entry = by_reason.setdefault(why, Reason(why))
        entry.count += 1
        entry.first = entry.first or at
        entry.last = at
        if len(entry.samples) < samples:
            number = headers.get(DLQ_PARTITION), headers.get(DLQ_OFFSET)
            entry.samples.append(
                Sample(
                    source_topic=_text(headers.get(DLQ_TOPIC)),
                    source_partition=int(number[0]) if number[0] else None,
                    source_offset=int(number[1]) if number[1] else None,
                    key=_text(msg.key()),
                    value=_text(msg.value()),
                    detail=_text(headers.get(DLQ_DETAIL)),
                    dlq_partition=msg.partition(),
                    dlq_offset=msg.offset(),
                    time=at,
                )
            )
    reasons = sorted(by_reason.values(), key=lambda r: (-r.count, r.reason))
    since = _iso(since_ms) if since_ms is not None else None
    return DlqReport(settings.dlq_topic, since, total, reasons)


def dlq_command(
    since: Annotated[
        str | None,
        typer.Option(
            help="Only records since then: a duration back from now (1h) or an ISO time.",
            show_default="the whole topic",
        ),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option(help="Only this reason code (e.g. bad-symbol).", show_default="every reason"),
    ] = None,
    samples: Annotated[int, typer.Option(min=0, max=1000, help="Records shown per reason.")] = 3,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
) -> None:
    """The dead-letter topic by reason: counts, first and last time, samples and their source."""
    settings = load_settings()
    since_ms = parse_since(since, int(time.time() * 1000))
    report = read_dlq(settings, since_ms=since_ms, reason=reason, samples=samples)
    if json_output:
        typer.echo(json.dumps(asdict(report), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    where = f" since {report.since}" if report.since else ""
    console.print(f"[bold]{report.topic}[/]{where}: {report.records} records", highlight=False)
    if not report.reasons:
        return
    table = Table("reason", "count", "first", "last")
    for r in report.reasons:
        table.add_row(r.reason, str(r.count), r.first or "", r.last or "")
    console.print(table)
    for r in report.reasons:
        for s in r.samples:
            console.print(
                f"  {r.reason}: {s.source_topic}[{s.source_partition}]@{s.source_offset} "
                f"key={s.key!r} {s.value!r} ({s.detail})",
                highlight=False,
                markup=False,
            )
