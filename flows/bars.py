"""Bar arithmetic and the per-symbol event-time state machine (contract 2), engine-free.

Nothing here imports Bytewax: `flows/ohlc.py` drives `SymbolBars` from a
stateful operator, the tests drive it directly, and a benchmark or another
engine could too.

Ordering. Every tick carries `(ts, seq)`: its event time and its position in
its Kafka partition (`seq`, partition-major). open/close are the price at the
smallest/largest `(ts, seq)`, so ties on `ts` go to partition order and a
partial bar can be merged with another in any order and give the same result.

Closing. The watermark of a symbol is its largest event time minus the allowed
lateness, advanced by wall-clock time since that tick arrived. A window whose
end is at or below the watermark is closed: its bar is emitted with
revision 0. A later tick for a closed window within the restate horizon is
folded into it and the bar is emitted again with revision + 1, once per tick,
so the content of every revision depends only on the order of the input, never
on how it was batched. Older ticks are "too late": they go to `late/`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple


class TickIn(NamedTuple):
    """What the bar state needs of a valid tick."""

    ts: int  # event time, epoch ms
    seq: int  # position in the source partition (partition-major), for ties
    price: float
    volume: float | None
    id: str


@dataclass(slots=True)
class PartialBar:
    """A mergeable OHLCV aggregate of some ticks of one (symbol, window)."""

    first_ts: int
    first_seq: int
    open: float
    last_ts: int
    last_seq: int
    close: float
    high: float
    low: float
    volume: float
    pv: float  # sum of price * volume, for vwap
    trade_count: int

    @classmethod
    def of(cls, ts: int, seq: int, price: float, volume: float | None) -> PartialBar:
        v = volume or 0.0
        return cls(ts, seq, price, ts, seq, price, price, price, v, price * v, 1)

    def fold(self, ts: int, seq: int, price: float, volume: float | None) -> None:
        """Add one tick."""
        if (ts, seq) < (self.first_ts, self.first_seq):
            self.first_ts, self.first_seq, self.open = ts, seq, price
        if (ts, seq) > (self.last_ts, self.last_seq):
            self.last_ts, self.last_seq, self.close = ts, seq, price
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        if volume:
            self.volume += volume
            self.pv += price * volume
        self.trade_count += 1

    def merge(self, other: PartialBar) -> PartialBar:
        """The aggregate of both sets of ticks (they must be disjoint)."""
        first = (
            self if (self.first_ts, self.first_seq) <= (other.first_ts, other.first_seq) else other
        )
        last = self if (self.last_ts, self.last_seq) >= (other.last_ts, other.last_seq) else other
        return PartialBar(
            first.first_ts,
            first.first_seq,
            first.open,
            last.last_ts,
            last.last_seq,
            last.close,
            max(self.high, other.high),
            min(self.low, other.low),
            self.volume + other.volume,
            self.pv + other.pv,
            self.trade_count + other.trade_count,
        )

    @property
    def vwap(self) -> float | None:
        return self.pv / self.volume if self.volume > 0 else None

    def to_tuple(self) -> tuple:
        return (
            self.first_ts,
            self.first_seq,
            self.open,
            self.last_ts,
            self.last_seq,
            self.close,
            self.high,
            self.low,
            self.volume,
            self.pv,
            self.trade_count,
        )


def window_start(ts_ms: int, bar_ms: int) -> int:
    """Start of the epoch-aligned tumbling window holding `ts_ms` (start inclusive)."""
    return ts_ms - ts_ms % bar_ms


def fold_ticks(ticks: list[TickIn], bar_ms: int) -> dict[int, PartialBar]:
    """Batch-fold ticks into partial bars per window start (no dedup, no lateness)."""
    bars: dict[int, PartialBar] = {}
    for t in ticks:
        ws = t.ts - t.ts % bar_ms
        bar = bars.get(ws)
        if bar is None:
            bars[ws] = PartialBar.of(t.ts, t.seq, t.price, t.volume)
        else:
            bar.fold(t.ts, t.seq, t.price, t.volume)
    return bars


class BarOut(NamedTuple):
    """One emission of a bar: the window, its aggregate, and its revision."""

    window_start: int  # epoch ms
    bar: PartialBar
    revision: int


@dataclass(frozen=True, slots=True)
class BarRules:
    """The contract-2 parameters, in milliseconds."""

    bar_ms: int = 60_000
    lateness_ms: int = 5_000
    restate_ms: int = 3_600_000
    dedup_ms: int = 600_000

    @classmethod
    def from_settings(cls, settings: Any) -> BarRules:
        return cls(
            bar_ms=int(settings.bar_seconds * 1000),
            lateness_ms=int(settings.allowed_lateness * 1000),
            restate_ms=int(settings.restate_horizon * 1000),
            dedup_ms=int(settings.dedup_horizon * 1000),
        )


class SymbolBars:
    """Event-time OHLCV state of one symbol: dedup, open windows, restatable closed bars.

    `on_tick` returns what the tick caused, in order: `BarOut`s (closings and
    restatements) and, for a too-late tick, the string "too-late". State stays
    bounded: ids live for the dedup horizon of event time after they were
    seen, closed bars for the restate horizon.
    """

    __slots__ = (
        "rules",
        "max_ts",
        "arrived_at",
        "open",
        "closed",
        "seen",
        "expiry",
        "min_open_end",
        "duplicates",
        "too_late",
        "evicted_through",
    )

    def __init__(self, rules: BarRules):
        self.rules = rules
        self.max_ts: int | None = None  # largest event time seen
        self.arrived_at: float = 0.0  # wall-clock seconds when max_ts arrived
        self.open: dict[int, PartialBar] = {}  # window start -> aggregate
        self.closed: dict[int, tuple[PartialBar, int]] = {}  # window start -> (bar, revision)
        self.seen: dict[str, int] = {}  # tick id -> expiry (event-time ms)
        self.expiry: deque[tuple[int, str]] = deque()  # (expiry, id), expiry ascending
        self.min_open_end: int | None = None
        self.duplicates = 0
        self.too_late = 0
        self.evicted_through = -1  # horizon (ms) of the last closed-bar eviction

    # -- the event-time clock -------------------------------------------------

    def watermark(self, now: float | None = None) -> int | None:
        """Largest event time minus lateness, advanced by wall-clock time since it arrived."""
        if self.max_ts is None:
            return None
        wm = self.max_ts - self.rules.lateness_ms
        if now is not None and now > self.arrived_at:
            wm += int((now - self.arrived_at) * 1000)
        return wm

    def next_close_at(self) -> float | None:
        """Wall-clock time (seconds) at which the earliest open window closes if no tick comes."""
        if self.min_open_end is None or self.max_ts is None:
            return None
        gap_ms = self.min_open_end - (self.max_ts - self.rules.lateness_ms)
        return self.arrived_at + max(gap_ms, 0) / 1000.0

    # -- input ------------------------------------------------------------------

    def on_tick(self, t: TickIn, now: float) -> list[BarOut | str]:
        """Process one valid tick that arrived at wall-clock `now` (seconds)."""
        rules = self.rules
        out: list[BarOut | str] = []

        # Dedup first: a duplicate never counts, whatever its lateness.
        if t.id in self.seen:
            self.duplicates += 1
            return out
        reference = t.ts if self.max_ts is None or t.ts > self.max_ts else self.max_ts
        expiry = reference + rules.dedup_ms
        self.seen[t.id] = expiry
        self.expiry.append((expiry, t.id))

        if self.max_ts is None or t.ts > self.max_ts:
            self.max_ts = t.ts
            self.arrived_at = now
            self._expire()
        bar_ms = rules.bar_ms
        ws = t.ts - t.ts % bar_ms
        event_wm = self.max_ts - rules.lateness_ms

        bar = self.open.get(ws)
        if bar is not None:
            bar.fold(t.ts, t.seq, t.price, t.volume)
        elif ws + bar_ms > event_wm and ws not in self.closed:
            # A window that is still open by event time (wall-clock closings
            # are handled below; a window closed by them is in `closed`).
            self.open[ws] = PartialBar.of(t.ts, t.seq, t.price, t.volume)
            if self.min_open_end is None or ws + bar_ms < self.min_open_end:
                self.min_open_end = ws + bar_ms
        elif ws + bar_ms <= event_wm - rules.restate_ms:
            self.too_late += 1
            out.append("too-late")
            return out
        else:
            entry = self.closed.get(ws)
            if entry is None:  # first emission of a window that only got late ticks
                restated = BarOut(ws, PartialBar.of(t.ts, t.seq, t.price, t.volume), 0)
            else:
                old, revision = entry
                old.fold(t.ts, t.seq, t.price, t.volume)
                restated = BarOut(ws, old, revision + 1)
            self.closed[ws] = (restated.bar, restated.revision)
            out.append(_frozen(restated))

        if self.min_open_end is not None and self.min_open_end <= event_wm:
            out.extend(self._close_through(event_wm))
        return out

    def on_wallclock(self, now: float) -> list[BarOut]:
        """Close the windows that the wall-clock-advanced watermark has passed."""
        wm = self.watermark(now)
        if wm is None or self.min_open_end is None or self.min_open_end > wm:
            return []
        return self._close_through(wm)

    def flush(self) -> list[BarOut]:
        """Close every open window now (end of input); they stay restatable."""
        if not self.open:
            return []
        return self._close_through(max(ws + self.rules.bar_ms for ws in self.open))

    # -- internals ---------------------------------------------------------------

    def _close_through(self, wm: int) -> list[BarOut]:
        bar_ms = self.rules.bar_ms
        out = []
        for ws in sorted(w for w in self.open if w + bar_ms <= wm):
            bar = self.open.pop(ws)
            self.closed[ws] = (bar, 0)
            out.append(_frozen(BarOut(ws, bar, 0)))
        self.min_open_end = min(self.open) + bar_ms if self.open else None
        return out

    def _expire(self) -> None:
        """Forget ids and closed bars that have left their horizons (bounded state)."""
        max_ts = self.max_ts
        expiry, seen = self.expiry, self.seen
        while expiry and expiry[0][0] < max_ts:
            _, tid = expiry.popleft()
            seen.pop(tid, None)
        # Closed bars can only leave the horizon when it crosses a window boundary:
        # look at them once per window of event time, not on every tick.
        bar_ms = self.rules.bar_ms
        horizon = max_ts - self.rules.lateness_ms - self.rules.restate_ms
        horizon -= horizon % bar_ms
        if horizon > self.evicted_through:
            self.evicted_through = horizon
            for ws in [w for w in self.closed if w + bar_ms <= horizon]:
                del self.closed[ws]

    # -- recovery ------------------------------------------------------------------

    def snapshot(self) -> tuple:
        return (
            1,  # snapshot format version
            self.max_ts,
            self.arrived_at,
            {ws: b.to_tuple() for ws, b in self.open.items()},
            {ws: (b.to_tuple(), r) for ws, (b, r) in self.closed.items()},
            list(self.expiry),
            self.duplicates,
            self.too_late,
        )

    @classmethod
    def restore(cls, rules: BarRules, snap: tuple) -> SymbolBars:
        version, max_ts, arrived_at, open_, closed, expiry, dups, late = snap
        if version != 1:
            raise ValueError(f"unknown bar-state snapshot version {version!r}")
        state = cls(rules)
        state.max_ts = max_ts
        state.arrived_at = arrived_at
        state.open = {ws: PartialBar(*t) for ws, t in open_.items()}
        state.closed = {ws: (PartialBar(*t), r) for ws, (t, r) in closed.items()}
        state.expiry = deque(tuple(e) for e in expiry)
        state.seen = {tid: exp for exp, tid in state.expiry}
        state.min_open_end = min(state.open) + rules.bar_ms if state.open else None
        state.duplicates = dups
        state.too_late = late
        return state


def _frozen(out: BarOut) -> BarOut:
    """A copy, so a later restatement cannot change what was already emitted."""
    return BarOut(out.window_start, PartialBar(*out.bar.to_tuple()), out.revision)
