"""What every producer shares besides Kafka: self-checked items, pacing, and clean stops."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from flows.ingest.kafka_out import Item, value_ts
from flows.ingest.ticks import MAX_AHEAD_MS, MIN_TS_MS, BadTick, Tick, parse_tick

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def as_float(value: Any) -> Any:
    """Numbers as float (so ids match what the dataflow derives); anything else unchanged."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def checked(obj: dict[str, Any], key: str | None, now: int | None = None) -> Item:
    """A contract-1 object as a `Tick`, or as raw bytes (bound for the DLQ) if it breaks the contract.

    Upstream data that breaks the contract is still sent, verbatim, so the
    dataflow records it in the DLQ with its reason instead of it vanishing here.
    """
    value = orjson.dumps(obj)
    try:
        return parse_tick(value, key.encode() if key is not None else None, now or now_ms())
    except BadTick as exc:
        log.warning(
            "sending a record that breaks contract 1 (%s) for the DLQ: %s", exc.reason, value[:200]
        )
        return key, value


def event_ts(item: Item) -> int | None:
    """The event time of an item, when it has a readable one (raw records: best effort)."""
    if isinstance(item, Tick):
        return item.ts
    ts = value_ts(item[1])
    if ts is None:
        return None
    # A deliberately bad record's ts (year 2100, 1999, ...) must not move the pacing
    # clock: one future ts would hold back everything after it.
    now_ms = time.time_ns() // 1_000_000
    return ts if MIN_TS_MS <= ts <= now_ms + MAX_AHEAD_MS else None


class Pacer:
    """Holds items back so they go out in wall-clock time.

    speed: event time runs `speed` times faster than the wall clock (60: an hour
        of ticks in a minute); 0 means no pacing.
    rate: alternatively, a fixed number of messages per wall-clock second
        (takes precedence over speed).
    origin_ms: the event time where pacing starts (default: the first item's), so
        a simulator starting before a session waits it out; items before it
        (warm-up history) go out at once, and the clock starts at the first one
        at or after it.
    live_edge: with speed, an item never goes out before the wall clock reaches its
        event time: a start in the past catches up at `speed`, then runs in real
        time (a simulator never produces a tick from the future).
    The event clock only moves forward, so late ticks go out without a pause.
    """

    def __init__(
        self,
        stop: threading.Event,
        speed: float = 0.0,
        rate: float | None = None,
        origin_ms: int | None = None,
        live_edge: bool = False,
    ):
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed!r}")
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        self.stop, self.speed, self.rate, self.live_edge = stop, speed, rate, live_edge
        self._wall0: float | None = None
        self._ts0: int | None = origin_ms
        self._clock: int | None = origin_ms
        self._n = 0

    def wait(self, ts: int | None) -> bool:
        """Sleep until the item with event time `ts` is due; False once a stop was asked for."""
        if self.stop.is_set():
            return False
        if self.rate:
            if self._wall0 is None:
                self._wall0 = time.monotonic()
            due = self._wall0 + self._n / self.rate
            self._n += 1
        elif self.speed and ts is not None:
            if self._wall0 is None and self._ts0 is not None and ts < self._ts0:
                return True  # history before the origin (a warm-up) goes out unpaced
            if self._wall0 is None:
                self._wall0 = time.monotonic()
                if self._ts0 is None:
                    self._ts0 = self._clock = ts
            self._clock = max(self._clock or ts, ts)
            due = self._wall0 + (self._clock - self._ts0) / 1000 / self.speed  # type: ignore[operator]
            if self.live_edge:
                due = max(due, time.monotonic() + (ts - now_ms()) / 1000)
        else:
            return True
        delay = due - time.monotonic()
        if delay > 0.001:
            return not self.stop.wait(delay)
        return True


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C / SIGTERM, so producers can flush and exit 0.

    A second Ctrl-C interrupts for real.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info(
            "received %s: stopping after flushing what was produced", signal.Signals(signum).name
        )
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
