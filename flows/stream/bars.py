"""Bar arithmetic and the event-time state of one Kafka partition (contract 2), engine-free.

Nothing here imports Bytewax: `flows/stream/dataflow.py` drives `PartitionBars` from a
stateful operator keyed by Kafka partition, the tests drive it directly, and
a benchmark or another engine could too.

Purity. Every output is a function of the partition's records in offset
order and their log times (the Kafka record timestamps; see contract 2): no
wall clock, no process-dependent hash, no dependence on how the records were
batched. A run resumed from any snapshot therefore writes exactly the rows the
first run wrote, and cuts the same files.

Ordering. Every tick carries its offset in the partition; open/close are the
price at the smallest/largest `(ts, offset)`, so ties on `ts` go to partition
order and partial bars merge in any order to the same result.

Closing. The watermark of a symbol is its largest event time minus the allowed
lateness, advanced by how far the partition's log time has moved since the
record that brought that largest event time. A window whose end is at or below
the watermark is closed and emitted with revision 0. Log time only moves with
records, so quiet partitions get heartbeat records (from the stream and the
producers), and `--exit-when-idle` closes everything through a flush marker
written into the log.

Late ticks. A tick for a closed window within the restate horizon (event
time) is folded into it; the window is emitted again with revision + 1 once
`restate_interval` of log time has passed since its first unemitted late tick,
so a burst of late ticks makes one row, not one per tick. Older ticks are
"too late" and go to `late/`. Tick ids are remembered per window (64-bit
hashes) for as long as the window can be restated, so a duplicate never
changes a bar however late it comes, and dedup state is bounded by the
horizon.
"""

from __future__ import annotations

import heapq
import struct
from array import array
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

from xxhash import xxh3_64_intdigest

from flows.ingest.ticks import CANDLE_SOURCE
from flows.stream.conditions import (
    CANDLE,
    HIGH_LOW,
    OPEN_CLOSE,
    REGULAR,
    UNMAPPED,
    VOLUME,
    UnknownConditions,
    load_rules,
)


class TickIn(NamedTuple):
    """What the bar state needs of a valid tick."""

    ts: int  # event time, epoch ms
    seq: int  # position in the source partition (its offset), for ties
    price: float
    volume: float | None
    id: str
    flags: int = REGULAR  # what its trade conditions let it update (flows.stream.conditions)


_BOTH_PRICES = OPEN_CLOSE | HIGH_LOW
_NO_TS = 2**62  # open_ts of a bar no trade may open (and -_NO_TS: close_ts none may close)


@dataclass(slots=True)
class PartialBar:
    """A mergeable OHLCV aggregate of some ticks of one (symbol, window).

    Trade conditions (contract 1) decide what each tick updates: open/close come
    from the ticks allowed to set them (the earliest and latest by `(ts, seq)`),
    high/low from those allowed to set them, volume, `pv` and `trade_count` from
    those that count in volume. A price no tick could set is NaN here (with
    `open_ts`/`close_ts` at +/-_NO_TS, high/low at -inf/+inf) and null in the row.
    `first_ts`/`last_ts` span every tick of the window; `excluded` counts the ticks
    kept out of some price, `unmapped` those with a code no feed mapping knows.

    A window holding ticks of a vendor's 1-minute candle (`CANDLE`: the outage
    backfill's) takes every field but `first_ts`/`last_ts` from those ticks alone:
    the candle stands for the whole minute, so the trades that did arrive in it
    (already inside the candle) are not counted twice. `candle` counts its candle
    ticks. Which ticks win depends only on the set of ticks, never on their order,
    so `fold` and `merge` keep the batch definition.
    """

    first_ts: int
    last_ts: int
    open_ts: int
    open_seq: int
    open: float
    close_ts: int
    close_seq: int
    close: float
    high: float
    low: float
    volume: float
    pv: float  # sum of price * volume, for vwap
    trade_count: int
    excluded: int = 0
    unmapped: int = 0
    candle: int = 0

    @classmethod
    def of(
        cls, ts: int, seq: int, price: float, volume: float | None, flags: int = REGULAR
    ) -> PartialBar:
        if flags == REGULAR:
            v = volume or 0.0
            return cls(ts, ts, ts, seq, price, ts, seq, price, price, price, v, price * v, 1)
        bar = cls(ts, ts, *_NO_TICK)
        bar.fold(ts, seq, price, volume, flags)
        return bar

    def fold(
        self, ts: int, seq: int, price: float, volume: float | None, flags: int = REGULAR
    ) -> None:
        """Add one tick (its `flags` say which fields it may update)."""
        if ts < self.first_ts:
            self.first_ts = ts
        if ts > self.last_ts:
            self.last_ts = ts
        if flags & CANDLE:
            if not self.candle:  # the candle covers the minute: the trades so far give way
                self._clear()
            self.candle += 1
        elif self.candle:
            return  # a trade inside a minute a candle stands for
        if flags & OPEN_CLOSE:
            if (ts, seq) < (self.open_ts, self.open_seq):
                self.open_ts, self.open_seq, self.open = ts, seq, price
            if (ts, seq) > (self.close_ts, self.close_seq):
                self.close_ts, self.close_seq, self.close = ts, seq, price
        if flags & HIGH_LOW:
            if price > self.high:
                self.high = price
            if price < self.low:
                self.low = price
        if flags & VOLUME:
            if volume:
                self.volume += volume
                self.pv += price * volume
            self.trade_count += 1
        if flags & _BOTH_PRICES != _BOTH_PRICES:
            self.excluded += 1
        if flags & UNMAPPED:
            self.unmapped += 1

    def _clear(self) -> None:
        """Every field but first_ts/last_ts back to a window of no tick (`_NO_TICK`)."""
        (
            self.open_ts, self.open_seq, self.open, self.close_ts, self.close_seq, self.close,
            self.high, self.low, self.volume, self.pv, self.trade_count,
        ) = _NO_TICK  # fmt: skip
        self.excluded = self.unmapped = 0

    def merge(self, other: PartialBar) -> PartialBar:
        """The aggregate of both sets of ticks (they must be disjoint)."""
        if bool(self.candle) != bool(other.candle):  # a candle's side stands for the window
            won = self if self.candle else other
            merged = PartialBar(*won.to_tuple())
            merged.first_ts = min(self.first_ts, other.first_ts)
            merged.last_ts = max(self.last_ts, other.last_ts)
            return merged
        first = self if (self.open_ts, self.open_seq) <= (other.open_ts, other.open_seq) else other
        last = (
            self if (self.close_ts, self.close_seq) >= (other.close_ts, other.close_seq) else other
        )
        return PartialBar(
            min(self.first_ts, other.first_ts),
            max(self.last_ts, other.last_ts),
            first.open_ts,
            first.open_seq,
            first.open,
            last.close_ts,
            last.close_seq,
            last.close,
            max(self.high, other.high),
            min(self.low, other.low),
            self.volume + other.volume,
            self.pv + other.pv,
            self.trade_count + other.trade_count,
            self.excluded + other.excluded,
            self.unmapped + other.unmapped,
            self.candle + other.candle,
        )

    @property
    def vwap(self) -> float | None:
        return self.pv / self.volume if self.volume > 0 else None

    def prices(self) -> tuple[float | None, float | None, float | None, float | None]:
        """(open, high, low, close), None where no tick of the window could set it."""
        has_oc = self.open_ts != _NO_TS
        has_hl = self.high != -_INF
        return (
            self.open if has_oc else None,
            self.high if has_hl else None,
            self.low if has_hl else None,
            self.close if has_oc else None,
        )

    def to_tuple(self) -> tuple:
        return (
            self.first_ts,
            self.last_ts,
            self.open_ts,
            self.open_seq,
            self.open,
            self.close_ts,
            self.close_seq,
            self.close,
            self.high,
            self.low,
            self.volume,
            self.pv,
            self.trade_count,
            self.excluded,
            self.unmapped,
            self.candle,
        )

    @classmethod
    def from_v5(cls, fields: tuple) -> PartialBar:
        """A bar of a snapshot before format 6 (every tick was regular)."""
        first_ts, first_seq, open_, last_ts, last_seq, close, high, low, volume, pv, n = fields
        return cls(
            first_ts, last_ts, first_ts, first_seq, open_, last_ts, last_seq, close,
            high, low, volume, pv, n,
        )  # fmt: skip


_NAN = float("nan")
_INF = float("inf")
# PartialBar's fields after first_ts/last_ts, up to trade_count, for a window no tick
# has updated: no open/close (their times out of reach), high/low at -inf/+inf, nothing
# counted
_NO_TICK = (_NO_TS, 0, _NAN, -_NO_TS, 0, _NAN, -_INF, _INF, 0.0, 0.0, 0)


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
            bars[ws] = PartialBar.of(t.ts, t.seq, t.price, t.volume, t.flags)
        else:
            bar.fold(t.ts, t.seq, t.price, t.volume, t.flags)
    return bars


def dedup_key(symbol_mix: int, ws: int, tick_id: str) -> int:
    """The 64-bit dedup key of a tick id in one (symbol, window): XXH3, stable across processes.

    `symbol_mix` is `symbol_hash(symbol)`. Keying by window makes one set per
    partition hold every live id: a key is in it exactly when its window holds
    that id, and a window's keys leave it with the window.
    """
    return xxh3_64_intdigest(tick_id.encode(), symbol_mix ^ ws)


def symbol_hash(symbol: str) -> int:
    return xxh3_64_intdigest(symbol.encode())


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
    restate_interval_ms: int = 1_000
    # The trade-condition rules (`flows.stream.conditions.ConditionRules`); None: off,
    # every trade updates every field.
    conditions: Any = None

    @classmethod
    def from_settings(cls, settings: Any) -> BarRules:
        conditions = None
        if settings.conditions == "on":
            conditions = load_rules(unknown=UnknownConditions(settings.unknown_conditions))
        return cls(
            bar_ms=int(settings.bar_seconds * 1000),
            lateness_ms=int(settings.allowed_lateness * 1000),
            restate_ms=int(settings.restate_horizon * 1000),
            restate_interval_ms=int(settings.restate_interval * 1000),
            conditions=conditions,
        )


def _all_regular(source: str | None, codes: tuple[str, ...]) -> int:
    return REGULAR


# One window in a snapshot (format 7): its start, its bar (PartialBar's fields in order),
# its revision, its dirty mark (-1 for none: log time starts at 0 and never goes back) and
# how many dedup keys follow it, as uint64s. Format 6 had no candle count (`_WINDOW_V6`);
# formats 3 to 5 packed the bar of before the trade conditions (`_WINDOW_V5`,
# `PartialBar.from_v5`).
_WINDOW = struct.Struct("<5qd2q5d7q")
_WINDOW_V6 = struct.Struct("<5qd2q5d6q")
_WINDOW_V5 = struct.Struct("<3qd2q5d4q")


class Window:
    """One (symbol, window) of the state: its aggregate, its dedup keys, its emission state."""

    __slots__ = ("bar", "ids", "revision", "dirty_since", "_snap")

    def __init__(self, bar: PartialBar, ids: array, revision: int, dirty_since: int | None):
        self.bar = bar
        self.ids = ids  # array('Q'): dedup keys of its ticks (also in the partition's `live` set)
        self.revision = revision  # last emitted revision; -1 before the first emission
        self.dirty_since = dirty_since  # log time of the first late tick not emitted yet
        # (key count, revision, dirty mark, bytes) of the last snapshot: reused while equal
        self._snap: tuple[int, int, int | None, bytes] | None = None

    @classmethod
    def first(cls, bar: PartialBar, key: int, dirty_since: int | None = None) -> Window:
        """A window holding one tick, not emitted yet."""
        return cls(bar, array("Q", (key,)), -1, dirty_since)

    def snapshot(self, ws: int) -> bytes:
        """The window starting at `ws` as bytes (`_WINDOW`, then its keys)."""
        # Every change to a window adds a tick (and its key) or moves its revision or
        # its dirty mark, so a snapshot with the same three is the same snapshot: the
        # closed windows (most of the state) cost nothing from one epoch to the next.
        n, revision, dirty = len(self.ids), self.revision, self.dirty_since
        snap = self._snap
        if snap is not None and snap[0] == n and snap[1] == revision and snap[2] == dirty:
            return snap[3]
        data = (
            _WINDOW.pack(ws, *self.bar.to_tuple(), revision, -1 if dirty is None else dirty, n)
            + self.ids.tobytes()
        )
        self._snap = (n, revision, dirty, data)
        return data

    @classmethod
    def restore_all(cls, data: bytes, version: int = 7) -> dict[int, Window]:
        """The windows of `b"".join` of their snapshots, by start, in their order."""
        out: dict[int, Window] = {}
        layout = _WINDOW if version >= 7 else _WINDOW_V6 if version == 6 else _WINDOW_V5
        at, end, size = 0, len(data), layout.size
        while at < end:
            ws, *fields, revision, dirty, n = layout.unpack_from(data, at)
            at += size
            ids = array("Q", data[at : at + 8 * n])
            at += 8 * n
            bar = PartialBar(*fields) if version >= 6 else PartialBar.from_v5(tuple(fields))
            out[ws] = cls(bar, ids, revision, None if dirty < 0 else dirty)
        return out

    @classmethod
    def restore_v2(cls, snap: tuple) -> Window:
        """A window from a format-2 snapshot: (bar tuple, key bytes, revision, dirty mark)."""
        bar, ids, revision, dirty = snap
        return cls(PartialBar.from_v5(tuple(bar)), array("Q", ids), revision, dirty)


TOO_LATE = "too-late"
DUPLICATE = "duplicate"
NEVER = 2**62  # a time (ms) later than any event or log time
DAY_US = 86_400_000_000  # a UTC day in the microseconds of the lake rows


class SymbolBars:
    """Event-time OHLCV state of one symbol: open windows and restatable closed ones.

    Times are event time (`ts`, ms) and log time (`log`, ms: the Kafka record
    timestamp that `PartitionBars` passes down). `on_tick` returns what the
    tick caused: `BarOut`s, or `TOO_LATE`/`DUPLICATE`. Dedup keys live in
    `live`, one set shared by every symbol of the partition.

    `min_end` (end of the earliest open window) and `evict_at` (the event time
    whose arrival evicts closed windows) are kept current for the partition's
    fast path: a tick below both, into an open window, changes nothing but
    that window and the clock.
    """

    __slots__ = (
        "rules",
        "mix",
        "live",
        "max_ts",
        "max_log",
        "open",
        "closed",
        "closed_order",
        "evicted_through",
        "min_end",
        "evict_at",
    )

    def __init__(self, rules: BarRules, symbol: str, live: set[int]):
        self.rules = rules
        self.mix = symbol_hash(symbol)
        self.live = live
        self.max_ts: int | None = None  # largest event time seen
        self.max_log = 0  # the partition's log time when max_ts arrived
        self.open: dict[int, Window] = {}  # window start -> window not emitted yet
        self.closed: dict[int, Window] = {}  # window start -> window inside the restate horizon
        self.closed_order: list[int] = []  # a heap of the starts in `closed`, for eviction
        self.evicted_through = -1  # horizon (ms) of the last closed-window eviction
        self.min_end = NEVER
        self.evict_at = NEVER
        self._refresh()

    def _refresh(self) -> None:
        rules = self.rules
        self.min_end = min(self.open) + rules.bar_ms if self.open else NEVER
        e = self.evicted_through
        self.evict_at = e - e % rules.bar_ms + rules.bar_ms + rules.lateness_ms + rules.restate_ms

    # -- the event-time clock -------------------------------------------------

    def watermark(self, log: int) -> int | None:
        """Largest event time minus lateness, advanced by log time since it arrived."""
        if self.max_ts is None:
            return None
        return self.max_ts - self.rules.lateness_ms + max(log - self.max_log, 0)

    def close_due(self) -> int | None:
        """Log time at which the earliest open window closes if no newer tick comes."""
        if not self.open or self.max_ts is None:
            return None
        return self.max_log + max(self.min_end - (self.max_ts - self.rules.lateness_ms), 0)

    # -- input ----------------------------------------------------------------

    def on_tick(self, t: TickIn, log: int) -> list[BarOut] | str:
        """Fold one valid tick read at partition log time `log`; returns the bars it emitted."""
        rules = self.rules
        bar_ms = rules.bar_ms
        ws = t.ts - t.ts % bar_ms
        if self.max_ts is not None and ws + bar_ms <= self._horizon():
            # Too late, a copy or not: its window can no longer be restated (and may
            # linger in `closed` until the next eviction pass, but is never consulted).
            return TOO_LATE
        key = dedup_key(self.mix, ws, t.id)
        if key in self.live:
            return DUPLICATE
        self.live.add(key)

        out: list[BarOut] = []
        if self.max_ts is None or t.ts > self.max_ts:
            self.max_ts = t.ts
            self.max_log = log
            out.extend(self._evict())  # never this tick's window: it is inside the horizon
        wm = self.watermark(log)

        win = self.open.get(ws)
        closed = self.closed.get(ws) if win is None else None
        if win is not None:
            win.bar.fold(t.ts, t.seq, t.price, t.volume, t.flags)
            win.ids.append(key)
        elif closed is None and ws + bar_ms > wm:  # type: ignore[operator]
            bar = PartialBar.of(t.ts, t.seq, t.price, t.volume, t.flags)
            self.open[ws] = Window.first(bar, key)
            if ws + bar_ms < self.min_end:
                self.min_end = ws + bar_ms
        elif closed is None:  # the first tick of a window already closed by time: it waits
            bar = PartialBar.of(t.ts, t.seq, t.price, t.volume, t.flags)
            self.closed[ws] = Window.first(bar, key, log)
            heapq.heappush(self.closed_order, ws)
        else:
            closed.bar.fold(t.ts, t.seq, t.price, t.volume, t.flags)
            closed.ids.append(key)
            if closed.dirty_since is None:
                closed.dirty_since = log
        out.extend(self.close_through(wm))  # type: ignore[arg-type]
        return out

    def close_through(self, wm: int) -> list[BarOut]:
        """Emit (revision 0) and close every open window whose end is at or below `wm`."""
        if self.min_end > wm:
            return []
        bar_ms = self.rules.bar_ms
        open_, closed, order = self.open, self.closed, self.closed_order
        due = [ws for ws in open_ if ws + bar_ms <= wm]
        if len(due) > 1:
            due.sort()
        out = []
        for ws in due:
            win = open_.pop(ws)
            win.revision = 0
            closed[ws] = win
            heapq.heappush(order, ws)
            out.append(BarOut(ws, win.bar, 0))
        self.min_end = min(open_) + bar_ms if open_ else NEVER
        return out

    def restate_due(self) -> list[tuple[int, int]]:
        """(log time, window start) at which each window with unemitted late ticks is due."""
        interval = self.rules.restate_interval_ms
        return [
            (w.dirty_since + interval, ws)
            for ws, w in self.closed.items()
            if w.dirty_since is not None
        ]

    def restate(self, ws: int, log: int, force: bool = False) -> BarOut | None:
        """Emit window `ws` again if it has late ticks and is due at log time `log`."""
        win = self.closed.get(ws)
        if win is None or win.dirty_since is None:
            return None
        if not force and win.dirty_since + self.rules.restate_interval_ms > log:
            return None
        win.revision += 1
        win.dirty_since = None
        return BarOut(ws, win.bar, win.revision)

    def flush(self) -> list[BarOut]:
        """End of input (a flush marker): emit every open window and every pending restatement."""
        out = [o for ws in sorted(self.closed) if (o := self.restate(ws, 0, force=True))]
        if self.open:
            out.extend(self.close_through(max(self.open) + self.rules.bar_ms))
        return out

    # -- internals ------------------------------------------------------------

    def _horizon(self) -> int:
        """Event time at or below which a window's end can no longer be restated."""
        return self.max_ts - self.rules.lateness_ms - self.rules.restate_ms  # type: ignore[operator]

    def _evict(self) -> list[BarOut]:
        """Forget closed windows (and their dedup keys) that left the restate horizon.

        A window with unemitted late ticks is emitted first, so no tick that
        was accepted into a bar is ever lost from it.
        """
        bar_ms = self.rules.bar_ms
        horizon = self._horizon()
        horizon -= horizon % bar_ms
        if horizon <= self.evicted_through:
            return []
        self.evicted_through = horizon
        self._refresh()
        out = []
        order = self.closed_order
        while order and order[0] + bar_ms <= horizon:
            ws = heapq.heappop(order)
            if self.closed[ws].dirty_since is not None:
                out.append(self.restate(ws, 0, force=True))  # type: ignore[arg-type]
            self.live.difference_update(self.closed.pop(ws).ids)
        return out

    # -- recovery -------------------------------------------------------------

    def snapshot(self) -> tuple:
        # Each group of windows is one bytes object: pickling it is a copy, not a walk.
        return (
            self.max_ts,
            self.max_log,
            b"".join([w.snapshot(ws) for ws, w in self.open.items()]),
            b"".join([w.snapshot(ws) for ws, w in self.closed.items()]),
            self.evicted_through,
        )

    @classmethod
    def restore(
        cls, rules: BarRules, symbol: str, live: set[int], snap: tuple, version: int = 6
    ) -> SymbolBars:
        max_ts, max_log, open_, closed, evicted = snap
        state = cls(rules, symbol, live)
        state.max_ts = max_ts
        state.max_log = max_log
        if isinstance(open_, dict):  # format 2: a dict of tuples per group
            state.open = {ws: Window.restore_v2(w) for ws, w in open_.items()}
            state.closed = {ws: Window.restore_v2(w) for ws, w in closed.items()}
        else:
            state.open = Window.restore_all(open_, version)
            state.closed = Window.restore_all(closed, version)
        state.closed_order = sorted(state.closed)
        state.evicted_through = evicted
        for win in (*state.open.values(), *state.closed.values()):
            live.update(win.ids)
        state._refresh()
        return state


# -- one Kafka partition: every symbol in it, log time, and the files it cuts ----------

TICK, HEARTBEAT, FLUSH, BAD = 0, 1, 2, 3


class Record(NamedTuple):
    """One Kafka record as the bar state sees it, in offset order."""

    offset: int
    log_ts: int  # the record's timestamp (ms): LogAppendTime on topics stockpipe creates
    kind: int  # TICK, HEARTBEAT, FLUSH or BAD (bad records move log time too)
    tick: Any = None  # for TICK: anything with symbol, ts, price, volume, id, source


class FileBatch(NamedTuple):
    """A sealed micro-batch: the rows caused by records `first_offset..last_offset`.

    Its boundaries are decided from the log alone (row count, log time, flush
    markers), so a replay seals the same batch and the lake sink rewrites the
    same file under the same name. `follows` names the partition's bar batch
    before it, so the bar files of a partition form a chain the loader can
    check for a missing link (`flows.lake.batches`).
    """

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    bars: list[tuple]
    late: list[tuple]
    # The bar batch this one follows in its partition's chain (`flows.lake.batches`):
    # (first offset, last offset, UTC day numbers of its bar rows); None for a chain's first.
    follows: tuple[int, int, tuple[int, ...]] | None = None


@dataclass(frozen=True, slots=True)
class FileRules:
    """When a micro-batch is sealed: at `max_rows` rows or `max_age_ms` of log time."""

    max_rows: int = 50_000
    max_age_ms: int = 1_000


# 7: 6 plus each bar's count of candle ticks (`PartialBar.candle`); 6: bars with what trade conditions kept out of them (open/close and their own
# times, excluded and unmapped counts: `PartialBar`); 5: 4 plus the bar batch the next one follows (`FileBatch.follows`); 4: 3 plus the rules the state was made under and its event-time cut; 3: each symbol's
# windows packed into bytes; 2: dedup keys are XXH3 per (symbol, window), windows as
# tuples (2 and 3 still read, their rules unknown); 1: blake2b per id (refused: the keys
# cannot be converted)
SNAPSHOT_VERSION = 7
READABLE_VERSIONS = (2, 3, 4, 5, 6, 7)


class PartitionBars:
    """The bars of every symbol of one Kafka partition, driven by its records in order.

    `on_record` is the definition: one record at a time. `on_batch` is what
    the dataflow calls: the same records as columns, with a fast path for the
    common tick (into an open window, not a copy, closing nothing, nothing due)
    and `on_record` for everything else, so it returns exactly what
    `on_record` would, however the records are batched (a property test holds
    it to that). Both return the micro-batches the records sealed. Outputs are
    rows in the lake schemas of `flows/stream/lake_sink.py` (timestamps in microseconds),
    with `emitted_at`/`received_at` = the log time of the record that caused
    them.
    """

    def __init__(
        self,
        rules: BarRules,
        files: FileRules,
        topic: str,
        partition: int,
        *,
        stamp: dict[str, int] | None = None,
        not_before: int = 0,
    ):
        self.rules = rules
        self.files = files
        self.topic = topic
        self.partition = partition
        # The settings the state is made under (flows.stream.recovery.stream_rules), kept in
        # every snapshot and compared on restore; None for a snapshot older than format 4.
        self.stamp = stamp
        # Event-time cut of a store started from a drain point: a tick before it goes to
        # late/, as its window may have a row under the old store's rules.
        self.not_before = not_before
        self.log = 0  # log time: the largest record timestamp read so far (ms)
        self.symbols: dict[str, SymbolBars] = {}
        self.live: set[int] = set()  # dedup keys of every window inside the horizon
        self.duplicates = 0
        self.too_late = 0
        self.ticks = 0
        # (source, condition codes) -> what the trade may update (flows.stream.conditions)
        self._classify = rules.conditions.classify if rules.conditions else _all_regular
        # The micro-batch being filled.
        self._bars: list[tuple] = []
        self._late: list[tuple] = []
        self._first_offset = -1
        self._last_offset = -1
        self._first_log = 0
        # The last sealed batch with bar rows, which the next batch follows (FileBatch.follows).
        self._follows: tuple[int, int, tuple[int, ...]] | None = None
        # Due closings and restatements: (log time, symbol, window start or -1 for a
        # closing). Entries may be stale: a closing counts only if it is the one in
        # `_scheduled`, a restatement only if its window is still due.
        self._due: list[tuple[int, str, int]] = []
        self._scheduled: dict[str, int] = {}
        # Closings the fast path rescheduled without a heap entry yet, and the earliest
        # log time at which anything may be due (heap or those).
        self._unsynced: set[str] = set()
        self._unsynced_due = NEVER  # at most the earliest of their closings
        self._next_due = NEVER

    # -- input ----------------------------------------------------------------

    def on_record(self, rec: Record) -> list[FileBatch]:
        sealed: list[FileBatch] = []
        if rec.log_ts > self.log:
            self.log = rec.log_ts
        log = self.log
        if log >= self._unsynced_due:
            self._sync()
        if (self._bars or self._late) and log - self._first_log >= self.files.max_age_ms:
            sealed.append(self._seal())
        due = self._due
        while due and due[0][0] <= log:
            at, symbol, ws = heapq.heappop(due)
            self._fire(at, symbol, ws, rec.offset)
        kind = rec.kind
        if kind == TICK:
            self._on_tick(rec.tick, rec.offset)
        elif kind == FLUSH:
            for symbol in sorted(self.symbols):
                self._emit(symbol, self.symbols[symbol].flush(), rec.offset)
            self._scheduled.clear()
            if self._bars or self._late:
                sealed.append(self._seal())
        if len(self._bars) + len(self._late) >= self.files.max_rows:
            sealed.append(self._seal())
        self._next_due = min(due[0][0], self._unsynced_due) if due else self._unsynced_due
        return sealed

    def on_batch(
        self, offsets: list[int], log_ts: list[int], kinds: list[int], ticks: list[Any]
    ) -> list[FileBatch]:
        """Records as columns (offset order); `ticks[i]` is the tick of a TICK record."""
        sealed: list[FileBatch] = []
        bar_ms = self.rules.bar_ms
        lateness = self.rules.lateness_ms
        max_age = self.files.max_age_ms
        max_rows = self.files.max_rows
        symbols = self.symbols
        live = self.live
        scheduled = self._scheduled
        unsynced = self._unsynced
        log = self.log
        seal_at = self._first_log + max_age if (self._bars or self._late) else NEVER
        next_due = self._next_due
        cut = self.not_before
        classify = self._classify
        fast = 0
        for offset, lt, kind, t in zip(offsets, log_ts, kinds, ticks, strict=True):
            if lt > log:
                log = lt
            if log < next_due and log < seal_at:
                if kind == TICK:
                    st = symbols.get(t.symbol)
                    if st is not None and t.ts >= cut:
                        ts = t.ts
                        ws = ts - ts % bar_ms
                        win = st.open.get(ws)
                        if win is not None or ws not in st.closed:
                            key = xxh3_64_intdigest(t.id.encode(), st.mix ^ ws)
                            max_ts: int = st.max_ts  # type: ignore[assignment]
                            if ts > max_ts:
                                wm = ts - lateness
                            else:
                                wm = max_ts - lateness + log - st.max_log
                            if key in live or (win is None and ws + bar_ms <= wm):
                                due = -1  # a copy, or a window closed by time: on_record
                            elif wm < st.min_end and (ts <= max_ts or ts < st.evict_at):
                                # The fast path: exactly what on_record does for this tick,
                                # which closes, evicts and restates nothing.
                                codes = t.conditions
                                flags = classify(t.source, codes) if codes else REGULAR
                                if t.source == CANDLE_SOURCE:
                                    flags |= CANDLE
                                if win is None:  # the first tick of a window
                                    bar = PartialBar.of(ts, offset, t.price, t.volume, flags)
                                    st.open[ws] = Window.first(bar, key)
                                    if ws + bar_ms < st.min_end:
                                        st.min_end = ws + bar_ms
                                elif flags != REGULAR or win.bar.candle:
                                    win.ids.append(key)
                                    win.bar.fold(ts, offset, t.price, t.volume, flags)
                                else:  # PartialBar.fold of a regular trade, inline
                                    win.ids.append(key)
                                    bar = win.bar
                                    price = t.price
                                    if ts < bar.open_ts or (
                                        ts == bar.open_ts and offset < bar.open_seq
                                    ):
                                        bar.open_ts, bar.open_seq, bar.open = ts, offset, price
                                        if ts < bar.first_ts:
                                            bar.first_ts = ts
                                    if ts > bar.close_ts or (
                                        ts == bar.close_ts and offset > bar.close_seq
                                    ):
                                        bar.close_ts, bar.close_seq, bar.close = ts, offset, price
                                        if ts > bar.last_ts:
                                            bar.last_ts = ts
                                    if price > bar.high:
                                        bar.high = price
                                    if price < bar.low:
                                        bar.low = price
                                    volume = t.volume
                                    if volume:
                                        bar.volume += volume
                                        bar.pv += price * volume
                                    bar.trade_count += 1
                                live.add(key)
                                fast += 1
                                if ts <= max_ts and win is not None:
                                    continue  # its symbol's next closing did not move
                                if ts > max_ts:
                                    st.max_ts = ts
                                    st.max_log = log
                                due = st.max_log + st.min_end - st.max_ts + lateness  # type: ignore[operator]
                            elif ts > max_ts:
                                # The newest tick of its symbol closes or evicts windows:
                                # on_record's work for it, without the rest of on_record.
                                self.log = log
                                due = self._fold_closing(st, t, ws, win, key, offset)
                                if len(self._bars) + len(self._late) >= max_rows:
                                    sealed.append(self._seal())
                                if self._bars or self._late:
                                    seal_at = self._first_log + max_age
                                else:
                                    seal_at = NEVER
                                fast += 1
                            else:  # a closing due by log time: on_record
                                due = -1
                            if due != -1:  # reschedule the symbol's next closing, if it moved
                                if due is None:
                                    scheduled.pop(t.symbol, None)
                                elif scheduled.get(t.symbol) != due:
                                    scheduled[t.symbol] = due
                                    unsynced.add(t.symbol)
                                    if due < next_due:
                                        next_due = due
                                    if due < self._unsynced_due:
                                        self._unsynced_due = due
                                continue
                elif kind != FLUSH:
                    continue  # a heartbeat or bad record only moves log time
            self.log = log
            self._next_due = next_due
            sealed.extend(self.on_record(Record(offset, lt, kind, t)))
            next_due = self._next_due
            seal_at = self._first_log + max_age if (self._bars or self._late) else NEVER
        self.log = log
        self._next_due = next_due
        self.ticks += fast
        return sealed

    def _fold_closing(
        self, st: SymbolBars, t: Any, ws: int, win: Window | None, key: int, offset: int
    ) -> int | None:
        """The newest tick of its symbol, not a copy, into an open or a new open window.

        What `on_record` does for it (evict, fold, close, emit) without the rest
        of `on_record`; `on_batch` checks that it applies. Returns the symbol's
        next closing time.
        """
        ts = t.ts
        st.max_ts = ts
        st.max_log = self.log
        outs = st._evict() if ts >= st.evict_at else []
        flags = self._flags(t)
        if win is None:
            st.open[ws] = Window.first(PartialBar.of(ts, offset, t.price, t.volume, flags), key)
            st.min_end = min(st.min_end, ws + self.rules.bar_ms)
        else:
            win.bar.fold(ts, offset, t.price, t.volume, flags)
            win.ids.append(key)
        self.live.add(key)
        outs += st.close_through(ts - self.rules.lateness_ms)
        self._emit(t.symbol, outs, offset)
        return st.close_due()

    def _sync(self) -> None:
        """Give the closings the fast path rescheduled their heap entries (before any is due)."""
        scheduled = self._scheduled
        for symbol in self._unsynced:
            at = scheduled.get(symbol)
            if at is not None:
                heapq.heappush(self._due, (at, symbol, -1))
        self._unsynced.clear()
        self._unsynced_due = NEVER

    def _flags(self, tick: Any) -> int:
        codes = tick.conditions
        flags = self._classify(tick.source, codes) if codes else REGULAR
        return flags | CANDLE if tick.source == CANDLE_SOURCE else flags

    def _on_tick(self, tick: Any, offset: int) -> None:
        self.ticks += 1
        symbol = tick.symbol
        state = self.symbols.get(symbol)
        if tick.ts < self.not_before:  # before a drain point's cut (the fast path never is)
            self.too_late += 1
            self._late_row(state, tick, offset)
            return
        if state is None:
            state = self.symbols[symbol] = SymbolBars(self.rules, symbol, self.live)
        tick_in = TickIn(tick.ts, offset, tick.price, tick.volume, tick.id, self._flags(tick))
        result = state.on_tick(tick_in, self.log)
        if result is DUPLICATE:
            self.duplicates += 1
            return
        if result is TOO_LATE:
            self.too_late += 1
            self._late_row(state, tick, offset)
            return
        self._emit(symbol, result, offset)
        self._schedule_closing(symbol, state)
        ws = tick.ts - tick.ts % self.rules.bar_ms
        win = state.closed.get(ws)
        if win is not None and win.dirty_since == self.log:
            heapq.heappush(self._due, (self.log + self.rules.restate_interval_ms, symbol, ws))

    def _schedule_closing(self, symbol: str, state: SymbolBars) -> None:
        due = state.close_due()
        if due is None:
            self._scheduled.pop(symbol, None)
        elif self._scheduled.get(symbol) != due:
            self._scheduled[symbol] = due
            heapq.heappush(self._due, (due, symbol, -1))

    def _fire(self, at: int, symbol: str, ws: int, offset: int) -> None:
        state = self.symbols[symbol]
        if ws == -1:  # a closing: the watermark has passed the earliest open window
            if self._scheduled.get(symbol) != at:
                return  # superseded by a later scheduling
            del self._scheduled[symbol]
            self._emit(symbol, state.close_through(state.watermark(self.log)), offset)  # type: ignore[arg-type]
            self._schedule_closing(symbol, state)
        else:
            restated = state.restate(ws, self.log)
            if restated is not None:
                self._emit(symbol, [restated], offset)

    # -- output ---------------------------------------------------------------

    def _touch(self, offset: int) -> None:
        """Record that `offset` caused rows of the batch being filled."""
        if not self._bars and not self._late:
            self._first_offset = offset
            self._first_log = self.log
        self._last_offset = offset

    def _emit(self, symbol: str, outs: list[BarOut], offset: int) -> None:
        """Append the rows of `outs` (read now: a window's bar changes after it is emitted)."""
        if not outs:
            return
        self._touch(offset)
        bar_ms = self.rules.bar_ms
        emitted_at = self.log * 1000
        for o in outs:
            bar = o.bar
            self._bars.append(
                (
                    symbol,
                    bar_ms // 1000,
                    o.window_start * 1000,
                    (o.window_start + bar_ms) * 1000,
                    *bar.prices(),
                    bar.volume,
                    bar.vwap,
                    bar.trade_count,
                    bar.first_ts * 1000,
                    bar.last_ts * 1000,
                    o.revision,
                    emitted_at,
                    bar.excluded,
                    bar.unmapped,
                    bar.candle,
                )
            )

    def _late_row(self, state: SymbolBars | None, tick: Any, offset: int) -> None:
        self._touch(offset)
        start = tick.ts - tick.ts % self.rules.bar_ms
        if state is None or state.max_ts is None:  # before a drain point's cut
            watermark = self.not_before
        else:
            watermark = max(state.max_ts - self.rules.lateness_ms, self.not_before)
        self._late.append(
            (
                tick.symbol,
                tick.ts * 1000,
                tick.price,
                tick.volume,
                tick.id,
                tick.source,
                start * 1000,
                watermark * 1000,
                self.log * 1000,
            )
        )

    def _seal(self) -> FileBatch:
        bars = sorted(self._bars, key=_bar_order)
        batch = FileBatch(
            self.topic,
            self.partition,
            self._first_offset,
            self._last_offset,
            bars,
            sorted(self._late, key=_late_order),
            self._follows,
        )
        if bars:  # a batch of late rows only is not a link of the bar files' chain
            days = tuple(sorted({row[2] // DAY_US for row in bars}))
            self._follows = (self._first_offset, self._last_offset, days)
        self._bars, self._late = [], []
        return batch

    # -- recovery -------------------------------------------------------------

    def snapshot(self) -> tuple:
        return (
            SNAPSHOT_VERSION,
            self.topic,
            self.partition,
            self.log,
            {s: b.snapshot() for s, b in self.symbols.items()},
            (self.duplicates, self.too_late, self.ticks),
            (
                self._bars,
                self._late,
                self._first_offset,
                self._last_offset,
                self._first_log,
                self._follows,
            ),
            None if self.stamp is None else tuple(self.stamp.items()),
            self.not_before,
        )

    @classmethod
    def restore(cls, rules: BarRules, files: FileRules, snap: tuple) -> PartitionBars:
        """The state of a snapshot, under `rules` and `files` (the caller checks `stamp`)."""
        if (
            not isinstance(snap, tuple)
            or snap[:1] not in [(v,) for v in READABLE_VERSIONS]
            or len(snap) != (9 if snap[0] >= 4 else 7)
        ):
            raise ValueError(
                f"not a version-{SNAPSHOT_VERSION} (or 2 to 6) partition bar-state snapshot: "
                f"{str(snap)[:80]}"
            )
        _version, topic, partition, log, symbols, counts, pending = snap[:7]
        stamp, not_before = (None, 0) if len(snap) == 7 else snap[7:]
        state = cls(
            rules,
            files,
            topic,
            partition,
            stamp=None if stamp is None else dict(stamp),
            not_before=not_before,
        )
        state.log = log
        state.symbols = {
            s: SymbolBars.restore(rules, s, state.live, b, snap[0]) for s, b in symbols.items()
        }
        state.duplicates, state.too_late, state.ticks = counts
        # before format 5 the batch the next one follows is unknown: the chain starts again
        bars, late, state._first_offset, state._last_offset, state._first_log = pending[:5]
        state._follows = pending[5] if len(pending) > 5 else None
        if snap[0] < 6:  # rows of before the trade conditions: nothing excluded, no unmapped
            bars = [(*row, 0, 0) for row in bars]
        if snap[0] < 7:  # rows of before the candle count: no candle ticks
            bars = [(*row, 0) for row in bars]
        state._bars, state._late = list(bars), list(late)
        for symbol, bars_state in state.symbols.items():  # the due list is derived state
            state._schedule_closing(symbol, bars_state)
            for at, ws in bars_state.restate_due():
                heapq.heappush(state._due, (at, symbol, ws))
        state._next_due = state._due[0][0] if state._due else NEVER
        return state


_bar_order = itemgetter(0, 2, 13)  # symbol, window_start, revision
_late_order = itemgetter(0, 1, 4)  # symbol, ts, id
