"""The dataflow: Kafka ticks -> validated, deduplicated, event-time OHLCV bars -> Parquet lake.

    KafkaSource -> decode + validate -> (bad -> <topic>.dlq)
                -> per symbol: dedup -> tumbling bars, watermark, restatement (flows.bars)
                -> (bars, too-late ticks) -> Parquet micro-batches in the lake

Run it with `stockpipe stream` (recovery on, several processes with
`--workers N`) or `python -m bytewax.run flows.ohlc:flow -r DIR -s 5 -b 0`.
Bar arithmetic lives in `flows/bars.py`; this module only wires it to Bytewax.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from flows.bars import BarOut, BarRules, SymbolBars, TickIn
from flows.kafka_source import SEQ_SHIFT, RawMessage, TickSource
from flows.lake import LakeSink
from flows.lakefs import open_lake
from flows.settings import Settings, SettingsError, load_settings
from flows.ticks import BadTick, Tick, parse_tick

Decoded = tuple[str, Any]  # ("ok", (symbol, [(seq, Tick), ...])) or ("bad", KafkaSinkMessage)


def decode_batch(batch: list[RawMessage]) -> Iterable[Decoded]:
    """Validate a batch of raw messages (contract 1).

    Good ticks are grouped per symbol, in partition order, so the exchange to
    the stateful step moves one item per symbol and batch instead of one per
    tick. Bad ones become DLQ messages: the original bytes, the reason, and
    where they came from.
    """
    now_ms = int(time.time() * 1000)
    per_symbol: dict[str, list[tuple[int, Tick]]] = {}
    out: list[Decoded] = []
    for msg in batch:
        try:
            tick = parse_tick(msg.value, msg.key, now_ms)
        except BadTick as bad:
            out.append(("bad", dlq_message(msg, bad)))
            continue
        seq = (msg.partition << SEQ_SHIFT) | msg.offset
        ticks = per_symbol.get(tick.symbol)
        if ticks is None:
            per_symbol[tick.symbol] = [(seq, tick)]
        else:
            ticks.append((seq, tick))
    out.extend(("ok", item) for item in per_symbol.items())
    return out


def dlq_message(msg: RawMessage, bad: BadTick) -> KafkaSinkMessage:
    headers = [
        ("stockpipe.reason", bad.reason.encode()),
        ("stockpipe.detail", bad.detail.encode("utf-8", "replace")[:1000]),
        ("stockpipe.source.topic", msg.topic.encode()),
        ("stockpipe.source.partition", str(msg.partition).encode()),
        ("stockpipe.source.offset", str(msg.offset).encode()),
    ]
    return KafkaSinkMessage(key=msg.key, value=msg.value, headers=headers)


def _us(ms: int) -> int:
    return ms * 1000


class BarLogic(StatefulBatchLogic[list, tuple, tuple]):
    """Bytewax adapter around `SymbolBars` for one symbol: ticks in, lake rows out."""

    def __init__(self, rules: BarRules, resume: tuple | None):
        # stateful_batch's builder is not given the key: the symbol comes with
        # the first tick and is kept in the snapshot.
        self.rules = rules
        if resume is None:
            self.symbol = ""
            self.state = SymbolBars(rules)
        else:
            self.symbol, snap = resume
            self.state = SymbolBars.restore(rules, snap)

    def on_batch(self, values: list[list[tuple[int, Tick]]]) -> tuple[list[tuple], bool]:
        now = time.time()
        state = self.state
        rows: list[tuple] = []
        for ticks in values:
            self.symbol = ticks[0][1].symbol
            for seq, tick in ticks:
                results = state.on_tick(TickIn(tick.ts, seq, tick.price, tick.volume, tick.id), now)
                for result in results:
                    if result == "too-late":
                        rows.append(("late", self._late_row(tick, now)))
                    else:
                        rows.append(("bar", self._bar_row(result, now)))
        return rows, self.RETAIN

    def on_notify(self) -> tuple[list[tuple], bool]:
        now = time.time()
        return [("bar", self._bar_row(o, now)) for o in self.state.on_wallclock(now)], self.RETAIN

    def on_eof(self) -> tuple[list[tuple], bool]:
        # End of input (--exit-when-idle): emit every open window; keep them
        # restatable, a later run resumes from this state.
        now = time.time()
        return [("bar", self._bar_row(o, now)) for o in self.state.flush()], self.RETAIN

    def notify_at(self) -> datetime | None:
        at = self.state.next_close_at()
        return None if at is None else datetime.fromtimestamp(at, UTC)

    def snapshot(self) -> tuple:
        return (self.symbol, self.state.snapshot())

    def _bar_row(self, out: BarOut, now: float) -> tuple:
        bar = out.bar
        start = out.window_start
        return (
            self.symbol,
            self.rules.bar_ms // 1000,
            _us(start),
            _us(start + self.rules.bar_ms),
            bar.open,
            bar.high,
            bar.low,
            bar.close,
            bar.volume,
            bar.vwap,
            bar.trade_count,
            _us(bar.first_ts),
            _us(bar.last_ts),
            out.revision,
            int(now * 1_000_000),
        )

    def _late_row(self, tick: Tick, now: float) -> tuple:
        start = tick.ts - tick.ts % self.rules.bar_ms
        watermark = (self.state.max_ts or tick.ts) - self.rules.lateness_ms
        return (
            tick.symbol,
            _us(tick.ts),
            tick.price,
            tick.volume,
            tick.id,
            tick.source,
            _us(start),
            _us(watermark),
            int(now * 1_000_000),
        )


def build_flow(settings: Settings, *, exit_when_idle: float | None = None) -> Dataflow:
    """The stockpipe dataflow for these settings (see the module docstring for the picture)."""
    rules = BarRules.from_settings(settings)
    flow = Dataflow("stockpipe_ohlc")

    raw = op.input(
        "kafka_in",
        flow,
        TickSource(settings.kafka_bootstrap_servers, settings.topic, exit_when_idle=exit_when_idle),
    )
    decoded = op.flat_map_batch("decode", raw, decode_batch)
    split = op.branch("valid", decoded, lambda item: item[0] == "ok")

    dlq = op.map("dlq_message", split.falses, lambda item: item[1])
    op.output("dlq", dlq, KafkaSink([settings.kafka_bootstrap_servers], settings.dlq_topic))

    keyed = op.map("by_symbol", split.trues, lambda item: item[1])
    bars = op.stateful_batch("bars", keyed, lambda resume: BarLogic(rules, resume))
    op.output(
        "lake",
        bars,
        LakeSink(
            open_lake(settings),
            interval_s=settings.bar_seconds,
            flush_rows=settings.flush_rows,
            flush_interval=settings.flush_interval,
        ),
    )
    return flow


def _flow_from_environment() -> Dataflow:
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise SystemExit(f"stockpipe: {exc}") from None
    return build_flow(settings, exit_when_idle=settings.exit_when_idle)


flow = _flow_from_environment()
