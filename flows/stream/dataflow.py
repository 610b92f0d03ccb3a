"""The dataflow: Kafka ticks -> validated, deduplicated, event-time OHLCV bars -> Parquet lake.

    KafkaSource (per partition: records with their log times, heartbeats, flush markers)
        -> decode + validate                       (bad -> <topic>.dlq, never an exception)
        -> per Kafka partition: dedup -> tumbling bars, watermark, coalesced restatement,
           micro-batches cut by row count and log time          (flows.stream.bars.PartitionBars)
        -> Parquet files named after the offsets they cover      (flows.stream.lake_sink.LakeSink)

Run it with `stockpipe stream` (recovery on, several processes with
`--workers N`) or `python -m bytewax.run flows.ohlc:flow -r DIR -s 5 -b 0`.
Bar arithmetic lives in `flows/stream/bars.py` and decoding in `flows/stream/decode.py`;
this module only wires them to Bytewax.
State is keyed by Kafka partition (each key holds every symbol of its
partition), so offsets, log time, heartbeats and bar state line up one to one,
and every row written is a function of that partition's log.
"""

from __future__ import annotations

import time

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from prometheus_client import Counter, Gauge, Histogram

from flows.errors import StockpipeError
from flows.lake.store import open_lake
from flows.settings import Settings
from flows.stream.bars import BarRules, FileBatch, FileRules, PartitionBars
from flows.stream.decode import Decoded, make_decoder
from flows.stream.kafka_source import TickSource, topic_partitions
from flows.stream.lake_sink import LakeSink
from flows.stream.recovery import FLOW_ID, RulesChanged, rule_changes, stream_rules

TICKS = Counter(
    "stockpipe_ticks_total",
    "Valid ticks by what became of them: in a bar, a duplicate (dropped), too late (late/).",
    ["topic", "outcome"],
)
BARS = Counter(
    "stockpipe_bars_emitted_total",
    "Bar rows emitted into sealed micro-batches: first emissions (revision 0) and restatements.",
    ["topic", "kind"],
)
WATERMARK_DELAY = Gauge(
    "stockpipe_watermark_delay_seconds",
    "The partition's log time minus its most advanced symbol watermark (event time): how far "
    "behind the broker's clock the windows close.",
    ["topic", "partition"],
)
SNAPSHOT_SECONDS = Histogram(
    "stockpipe_snapshot_seconds",
    "Time to snapshot one partition's bar state at the end of an epoch.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
# The watermark gauge walks every symbol of the partition: at most once a second of wall
# time (not log time, which races ahead while a backlog is read).
_GAUGE_EVERY_S = 1.0


class _Exported:
    """What a partition's counters were when last exported: metrics move by the difference."""

    __slots__ = ("ticks", "duplicates", "too_late", "gauge_at")

    def __init__(self, state: PartitionBars | None = None):
        self.ticks = state.ticks if state else 0
        self.duplicates = state.duplicates if state else 0
        self.too_late = state.too_late if state else 0
        self.gauge_at = 0.0  # monotonic time of the last watermark gauge


class BarLogic(StatefulBatchLogic[tuple, FileBatch, tuple]):
    """Bytewax adapter around `PartitionBars` for one Kafka partition: records in, files out.

    `stamp` is the rules the flow runs under (`flows.stream.recovery.stream_rules`); a
    restored state made under other rules stops the stream (`RulesChanged`) before it
    writes a row. `not_before` is the event-time cut of a store started from a drain point.
    """

    def __init__(
        self,
        rules: BarRules,
        files: FileRules,
        resume: tuple | None,
        stamp: dict[str, int],
        not_before: int = 0,
    ):
        self.rules = rules
        self.files = files
        self.stamp = stamp
        self.not_before = not_before
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
        if self.state is not None:
            state = self.state
            if state.stamp is not None:
                changes = rule_changes(state.stamp, stamp, state.topic)
                if changes:
                    where = f"the bar state of {state.topic}[{state.partition}]"
                    raise RulesChanged(where, changes, state.topic)
            state.stamp = stamp  # a format-3 snapshot: recorded from now on
        self._exported = _Exported(self.state)  # counters restored are not this process's

    def on_batch(self, values: list[Decoded]) -> tuple[list[FileBatch], bool]:
        sealed: list[FileBatch] = []
        for d in values:
            state = self.state
            if state is None:
                state = self.state = PartitionBars(
                    self.rules,
                    self.files,
                    d.topic,
                    d.partition,
                    stamp=self.stamp,
                    not_before=self.not_before,
                )
            sealed.extend(state.on_batch(d.offsets, d.log_ts, d.kinds, d.ticks))
        if self.state is not None:
            self._export(self.state, sealed)
        return sealed, StatefulBatchLogic.RETAIN

    def _export(self, state: PartitionBars, sealed: list[FileBatch]) -> None:
        """Move the metrics by what this batch did (cheap: a few subtractions per batch)."""
        seen, topic = self._exported, state.topic
        dups, late = state.duplicates - seen.duplicates, state.too_late - seen.too_late
        in_bars = state.ticks - seen.ticks - dups - late
        if in_bars:
            TICKS.labels(topic, "bar").inc(in_bars)
        if dups:
            TICKS.labels(topic, "duplicate").inc(dups)
        if late:
            TICKS.labels(topic, "late").inc(late)
        seen.ticks, seen.duplicates, seen.too_late = state.ticks, state.duplicates, state.too_late
        for batch in sealed:
            first = sum(1 for row in batch.bars if row[13] == 0)  # revision
            if first:
                BARS.labels(topic, "first").inc(first)
            if len(batch.bars) > first:
                BARS.labels(topic, "restatement").inc(len(batch.bars) - first)
        now = time.monotonic()
        if now - seen.gauge_at >= _GAUGE_EVERY_S:
            seen.gauge_at = now
            marks = [w for b in state.symbols.values() if (w := b.watermark(state.log)) is not None]
            if marks:
                delay = (state.log - max(marks)) / 1000
                WATERMARK_DELAY.labels(topic, str(state.partition)).set(delay)

    def on_eof(self) -> tuple[list[FileBatch], bool]:
        # The close at end of input went through the flush marker in the log;
        # anything after it stays in the state for the next run.
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> tuple | None:
        if self.state is None:
            return None
        with SNAPSHOT_SECONDS.time():
            return self.state.snapshot()


def build_flow(
    settings: Settings,
    *,
    exit_when_idle: float | None = None,
    reset_offsets: str | None = None,
    partitions: int | None = None,
    start_offsets: dict[int, int] | None = None,
    not_before: int = 0,
) -> Dataflow:
    """The stockpipe dataflow for these settings (see the module docstring for the picture).

    `partitions` is the topic's partition count (asked of Kafka when not given): it is one
    of the rules every bar-state snapshot records. `start_offsets` and `not_before` are
    the start rule of a store begun at a drain point (`flows.stream.recovery`).
    """
    if partitions is None:
        partitions = topic_partitions(
            settings.kafka_bootstrap_servers, settings.topic, settings.kafka_security_config()
        )
    stamp = stream_rules(settings, partitions)
    rules = BarRules.from_settings(settings)
    files = FileRules(max_rows=settings.flush_rows, max_age_ms=int(settings.flush_interval * 1000))
    flow = Dataflow(FLOW_ID)

    raw = op.input(
        "kafka_in",
        flow,
        TickSource(
            settings.kafka_bootstrap_servers,
            settings.topic,
            heartbeat_interval=settings.heartbeat_interval,
            exit_when_idle=exit_when_idle,
            reset_offsets=reset_offsets,
            start_offsets=start_offsets,
            add_config=settings.kafka_security_config(),
        ),
    )
    decoder = make_decoder(int(settings.max_clock_skew * 1000), settings.max_message_bytes)
    decoded = op.flat_map("decode", raw, decoder)
    split = op.branch("valid", decoded, lambda item: item[0] == "ok")

    dlq = op.map("dlq_message", split.falses, lambda item: item[1])
    op.output(
        "dlq",
        dlq,
        KafkaSink(
            [settings.kafka_bootstrap_servers],
            settings.dlq_topic,
            add_config=settings.kafka_security_config(),
        ),
    )

    keyed = op.map("by_partition", split.trues, lambda item: item[1])
    files_out = op.stateful_batch(
        "bars", keyed, lambda resume: BarLogic(rules, files, resume, stamp, not_before)
    )
    op.output("lake", files_out, LakeSink(open_lake(settings)))
    return flow
