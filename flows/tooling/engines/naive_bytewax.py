"""A straightforward Bytewax OHLCV flow, the way the tutorials write it.

    KafkaSource -> op.map(json.loads) -> op.key_on(symbol)
                -> fold_window(EventClock, TumblingWindower 60 s), one fold per tick
                -> null sink

No validation, no dedup, no restatement, no Parquet: the comparison shows what
the stockpipe dataflow pays (or saves) against the obvious per-tick version.
`tail=False` makes the source stop at the end of every partition, and
fold_window then emits every open window. The clock starts when the first
message reaches the map step and stops when the run returns.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.tooling.engines.common import emit, kafka_security, runner_args


class _Counter:
    def __init__(self) -> None:
        self.first: float | None = None
        self.ticks = 0
        self.bars = 0


class _NullPartition(StatelessSinkPartition[Any]):
    def __init__(self, counter: _Counter):
        self._counter = counter

    def write_batch(self, items: list[Any]) -> None:
        self._counter.bars += len(items)


class NullSink(DynamicSink[Any]):
    """Counts what reaches it and keeps nothing."""

    def __init__(self, counter: _Counter):
        self._counter = counter

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NullPartition:
        return _NullPartition(self._counter)


def new_bar() -> dict:
    return {"open": None, "high": float("-inf"), "low": float("inf"), "close": None, "volume": 0.0}


def add_tick(bar: dict, tick: dict) -> dict:
    price = tick["price"]
    if bar["open"] is None:
        bar["open"] = price
    bar["high"] = max(bar["high"], price)
    bar["low"] = min(bar["low"], price)
    bar["close"] = price
    bar["volume"] += tick.get("volume") or 0.0
    return bar


def merge_bars(a: dict, b: dict) -> dict:
    # Tumbling windows never merge; fold_window still asks for a merger.
    return {
        "open": a["open"],
        "high": max(a["high"], b["high"]),
        "low": min(a["low"], b["low"]),
        "close": b["close"],
        "volume": a["volume"] + b["volume"],
    }


def build_naive_flow(bootstrap: str, topic: str, counter: _Counter) -> Dataflow:
    flow = Dataflow("naive_ohlc")
    msgs = op.input(
        "kafka", flow, KafkaSource([bootstrap], [topic], tail=False, add_config=kafka_security())
    )

    def decode(msg: Any) -> list[dict]:
        if msg.value is None:  # a heartbeat or flush marker another consumer wrote: no tick
            return []
        if counter.first is None:
            counter.first = time.perf_counter()
        counter.ticks += 1
        return [json.loads(msg.value)]

    ticks = op.flat_map("json", msgs, decode)
    keyed = op.key_on("symbol", ticks, lambda tick: tick["symbol"])
    clock = EventClock(
        lambda tick: datetime.fromtimestamp(tick["ts"] / 1000, UTC),
        wait_for_system_duration=timedelta(seconds=5),
    )
    windower = TumblingWindower(
        length=timedelta(seconds=60), align_to=datetime(2000, 1, 1, tzinfo=UTC)
    )
    bars = fold_window("ohlcv", keyed, clock, windower, new_bar, add_tick, merge_bars)
    op.output("out", bars.down, NullSink(counter))
    return flow


def main(argv: list[str] | None = None) -> None:
    from bytewax.testing import run_main

    args = runner_args(__doc__.splitlines()[0], argv)
    counter = _Counter()
    run_main(build_naive_flow(args.bootstrap, args.topic, counter))
    ended = time.perf_counter()
    if counter.first is None or counter.ticks < args.ticks:
        raise SystemExit(f"naive bytewax read {counter.ticks} of {args.ticks} messages")
    emit(counter.ticks, ended - counter.first, bars=counter.bars)


if __name__ == "__main__":
    main()
