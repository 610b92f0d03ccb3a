"""The dataflow: Kafka ticks -> validated, deduplicated, event-time OHLCV bars -> Parquet lake.

    KafkaSource (per partition: records with their log times, heartbeats, flush markers)
        -> decode + validate                       (bad -> <topic>.dlq, never an exception)
        -> per Kafka partition: dedup -> tumbling bars, watermark, coalesced restatement,
           micro-batches cut by row count and log time          (flows.bars.PartitionBars)
        -> Parquet files named after the offsets they cover      (flows.lake.LakeSink)

Run it with `stockpipe stream` (recovery on, several processes with
`--workers N`) or `python -m bytewax.run flows.ohlc:flow -r DIR -s 5 -b 0`.
Bar arithmetic lives in `flows/bars.py`; this module only wires it to Bytewax.
State is keyed by Kafka partition (each key holds every symbol of its
partition), so offsets, log time, heartbeats and bar state line up one to one,
and every row written is a function of that partition's log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from flows.bars import BAD, TICK, BarRules, FileBatch, FileRules, PartitionBars
from flows.errors import StockpipeError
from flows.kafka_source import PartitionBatch, TickSource
from flows.lake import LakeSink
from flows.lakefs import open_lake
from flows.settings import Settings, SettingsError, load_settings
from flows.ticks import BadTick, decode_batch

# What the decode step sends on: ("ok", (key, Decoded)) or ("bad", KafkaSinkMessage).
Routed = tuple[str, object]


class Decoded(NamedTuple):
    """A partition batch after decoding, as `PartitionBars.on_batch` takes it."""

    topic: str
    partition: int
    offsets: list[int]
    log_ts: list[int]
    kinds: list[int]  # TICK, HEARTBEAT, FLUSH or BAD
    ticks: list[Any]  # the tick of each TICK record (see flows.ticks.decode_batch)


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
        ("stockpipe.reason", bad.reason.encode()),
        ("stockpipe.detail", bad.detail.encode("utf-8", "backslashreplace")[:1000]),
        ("stockpipe.source.topic", batch.topic.encode()),
        ("stockpipe.source.partition", str(batch.partition).encode()),
        ("stockpipe.source.offset", str(batch.offsets[i]).encode()),
    ]
    return KafkaSinkMessage(key=batch.keys[i], value=batch.values[i], headers=headers)


class BarLogic(StatefulBatchLogic[tuple, FileBatch, tuple]):
    """Bytewax adapter around `PartitionBars` for one Kafka partition: records in, files out."""

    def __init__(self, rules: BarRules, files: FileRules, resume: tuple | None):
        self.rules = rules
        self.files = files
        # stateful_batch's builder is not given the key: the partition comes
        # with the first batch and is kept in the snapshot.
        try:
            self.state = None if resume is None else PartitionBars.restore(rules, files, resume)
        except (ValueError, TypeError) as exc:
            raise StockpipeError(
                f"the recovery store holds bar state this version cannot read ({exc}): it was "
                "written by an older stockpipe. Stop every stream worker, delete "
                "STOCKPIPE_RECOVERY_DIR/<topic>, and run the stream again: it replays the "
                "topic from its earliest offset and rewrites the same bars."
            ) from None

    def on_batch(self, values: list[Decoded]) -> tuple[list[FileBatch], bool]:
        sealed: list[FileBatch] = []
        for d in values:
            state = self.state
            if state is None:
                state = self.state = PartitionBars(self.rules, self.files, d.topic, d.partition)
            sealed.extend(state.on_batch(d.offsets, d.log_ts, d.kinds, d.ticks))
        return sealed, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[FileBatch], bool]:
        # The close at end of input went through the flush marker in the log;
        # anything after it stays in the state for the next run.
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> tuple | None:
        return None if self.state is None else self.state.snapshot()


def build_flow(
    settings: Settings, *, exit_when_idle: float | None = None, reset_offsets: str | None = None
) -> Dataflow:
    """The stockpipe dataflow for these settings (see the module docstring for the picture)."""
    rules = BarRules.from_settings(settings)
    files = FileRules(max_rows=settings.flush_rows, max_age_ms=int(settings.flush_interval * 1000))
    flow = Dataflow("stockpipe_ohlc")

    raw = op.input(
        "kafka_in",
        flow,
        TickSource(
            settings.kafka_bootstrap_servers,
            settings.topic,
            heartbeat_interval=settings.heartbeat_interval,
            exit_when_idle=exit_when_idle,
            reset_offsets=reset_offsets,
        ),
    )
    decoder = make_decoder(int(settings.max_clock_skew * 1000), settings.max_message_bytes)
    decoded = op.flat_map("decode", raw, decoder)
    split = op.branch("valid", decoded, lambda item: item[0] == "ok")

    dlq = op.map("dlq_message", split.falses, lambda item: item[1])
    op.output("dlq", dlq, KafkaSink([settings.kafka_bootstrap_servers], settings.dlq_topic))

    keyed = op.map("by_partition", split.trues, lambda item: item[1])
    files_out = op.stateful_batch("bars", keyed, lambda resume: BarLogic(rules, files, resume))
    op.output("lake", files_out, LakeSink(open_lake(settings)))
    return flow


def _flow_from_environment() -> Dataflow:
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise SystemExit(f"stockpipe: {exc}") from None
    return build_flow(settings, exit_when_idle=settings.exit_when_idle)


flow = _flow_from_environment()
