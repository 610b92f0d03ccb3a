"""A Quix Streams tumbling-window OHLCV app on the same topic.

`Application(auto_offset_reset="earliest")` with a consumer group of its own
and its state (RocksDB, with changelog topics, the defaults) in a fresh
folder; the topic's `timestamp_extractor` makes the tick's `ts` the message
time, and `tumbling_window(60 s).reduce(...).final()` folds every tick. The
fold counts ticks and stops the app (`app.stop()`) at the N-th. The clock
starts when the first tick is folded (after the consumer-group join and state
recovery) and stops when the N-th has been; the shutdown (final checkpoint,
leaving the group) is reported apart as `shutdown_seconds`.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from quixstreams import Application
from quixstreams.kafka.configuration import ConnectionConfig

from flows.tooling.engines.common import emit, kafka_security, runner_args

IDLE_STOP_S = 30.0


def new_bar(tick: dict) -> dict:
    price = tick["price"]
    return {
        "open": price,
        "high": price,
        "low": price,
        "close": price,
        "volume": tick["volume"] or 0.0,
    }


def add_tick(bar: dict, tick: dict) -> dict:
    price = tick["price"]
    bar["high"] = max(bar["high"], price)
    bar["low"] = min(bar["low"], price)
    bar["close"] = price
    bar["volume"] += tick["volume"] or 0.0
    return bar


def tick_time(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    return timestamp if value is None else value["ts"]  # None: a heartbeat, no tick


def main(argv: list[str] | None = None) -> None:
    args = runner_args(__doc__.splitlines()[0], argv)
    workdir = Path(args.workdir or ".")
    app = Application(
        broker_address=ConnectionConfig.from_librdkafka_dict(
            {"bootstrap.servers": args.bootstrap, **kafka_security()}
        ),
        consumer_group=args.group or f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        state_dir=workdir / "quix-state",
        loglevel="WARNING",
    )
    topic = app.topic(args.topic, value_deserializer="json", timestamp_extractor=tick_time)
    seen: dict[str, Any] = {"n": 0, "first": None, "last": None}

    def tally() -> None:
        seen["n"] += 1
        if seen["n"] == args.ticks:
            seen["last"] = time.perf_counter()
            app.stop()

    def first_fold(tick: dict) -> dict:
        if seen["first"] is None:
            seen["first"] = time.perf_counter()
        bar = new_bar(tick)
        tally()
        return bar

    def fold(bar: dict, tick: dict) -> dict:
        bar = add_tick(bar, tick)
        tally()
        return bar

    sdf = app.dataframe(topic)
    sdf = sdf.filter(lambda tick: tick is not None)  # heartbeats and flush markers: no tick
    sdf = sdf.tumbling_window(60_000).reduce(fold, first_fold).final()
    # The idle timeout only matters if ticks go missing (e.g. dropped as late): no hang.
    app.run(sdf, timeout=IDLE_STOP_S, collect=False)
    ended = time.perf_counter()
    if seen["last"] is None:
        raise SystemExit(f"quix folded {seen['n']} of {args.ticks} ticks")
    emit(seen["n"], seen["last"] - seen["first"], shutdown_seconds=ended - seen["last"])


if __name__ == "__main__":
    main()
