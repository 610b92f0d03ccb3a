"""Bar arithmetic and the per-partition event-time state, without Bytewax or Kafka.

The state is driven the way the dataflow drives it: Kafka records of one
partition in offset order, each with its log time (the record timestamp).
Expected bars come from `helpers.batch_bars` over `streamgen.expected_ticks`,
a separate, obvious computation.
"""

from __future__ import annotations

import itertools
import pickle
import random
import zlib
from pathlib import Path

import orjson
import polars as pl
import pytest
from helpers import assert_bars_equal, batch_bars, golden_bars, golden_messages
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamgen import LogSpec, StreamSpec, expected_ticks, horizon_margins, make_stream

from flows.ingest.ticks import BadTick, Tick, decode_tick
from flows.stream.bars import (
    BAD,
    FLUSH,
    HEARTBEAT,
    TICK,
    BarRules,
    FileBatch,
    FileRules,
    PartialBar,
    PartitionBars,
    Record,
    TickIn,
    fold_ticks,
)
from flows.stream.conditions import load_rules
from flows.stream.lake_sink import BAR_SCHEMA

DATA = Path(__file__).parent / "data"

RULES = BarRules(conditions=load_rules())  # the trade-condition rules on, as by default
FILES = FileRules(max_rows=1_000_000, max_age_ms=10**12)  # one file unless a test says otherwise
T0 = 1_741_100_400_000  # 15:00:00Z, a window boundary
LOG0 = 1_796_000_000_000  # a log time (2026) later than every event time here
BAR_COLS = BAR_SCHEMA.names
BAR_COLS_OF_BATCH = batch_bars([]).columns


def tick(symbol: str, ts: int, price: float, volume: float | None = 1.0, tid: str = "") -> Tick:
    return Tick(symbol, ts, price, volume, tid or f"{symbol}-{ts}-{price}")


class Feed:
    """Records of one partition, with log time moving as a test says."""

    def __init__(self, rules: BarRules = RULES, files: FileRules = FILES, log: int = LOG0):
        self.rules, self.files = rules, files
        self.state = PartitionBars(rules, files, "t", 0)
        self.offset = 0
        self.log = log
        self.batches: list[FileBatch] = []
        self.records: list[Record] = []

    def send(self, *ticks: Tick, log_step: int = 1) -> None:
        for t in ticks:
            self.log += log_step
            self._record(TICK, t)

    def heartbeat(self, after_ms: int) -> None:
        self.log += after_ms
        self._record(HEARTBEAT)

    def flush(self) -> None:
        self.log += 1
        self._record(FLUSH)

    def _record(self, kind: int, t: Tick | None = None) -> None:
        rec = Record(self.offset, self.log, kind, t)
        self.records.append(rec)
        self.batches += self.state.on_record(rec)
        self.offset += 1

    def assert_on_batch_agrees(self, seed: int = 0) -> None:
        """The same records through `on_batch` (one batch, one per record, random cuts)."""
        rng = random.Random(seed)
        for sizes in ("all", "ones", "random"):
            state = PartitionBars(self.rules, self.files, "t", 0)
            got: list[FileBatch] = []
            i = 0
            while i < len(self.records):
                n = {"all": len(self.records), "ones": 1}.get(sizes) or rng.randrange(1, 6)
                chunk = self.records[i : i + n]
                i += len(chunk)
                got += on_batch_of(state, chunk)
            assert got == self.batches, sizes
            assert (state._bars, state._late) == (self.state._bars, self.state._late), sizes
            assert state.snapshot() == self.state.snapshot(), sizes

    def rows(self) -> pl.DataFrame:
        """Every bar row emitted so far, sealed or not (window_start as epoch ms)."""
        pending = FileBatch("t", 0, -1, -1, self.state._bars, self.state._late)
        return rows_of([*self.batches, pending])


def rows_of(batches: list[FileBatch]) -> pl.DataFrame:
    rows = [r for b in batches for r in b.bars]
    schema = dict.fromkeys(BAR_COLS, pl.Int64) | {
        c: pl.Float64 for c in ["open", "high", "low", "close", "volume", "vwap"]
    }
    return pl.DataFrame(rows, schema=schema | {"symbol": pl.String}, orient="row").with_columns(
        pl.col("window_start") // 1000, pl.col("first_ts") // 1000, pl.col("last_ts") // 1000
    )


def final(rows: pl.DataFrame) -> pl.DataFrame:
    """Highest revision per (symbol, window)."""
    return (
        rows.sort("revision")
        .group_by(["symbol", "window_start"])
        .last()
        .sort(["symbol", "window_start"])
    )


def test_golden_stream_gives_golden_bars(golden_dir):
    messages = golden_messages(golden_dir)
    states = {p: PartitionBars(RULES, FILES, "golden", p) for p in range(4)}
    offsets = dict.fromkeys(range(4), 0)
    batches: list[FileBatch] = []
    late = 0
    for i, msg in enumerate(messages):
        p = zlib.crc32(msg["key"].encode()) % 4  # a symbol stays in one partition
        log = LOG0 + 10 * i
        decoded = decode_tick(msg["value"].encode(), msg["key"].encode(), log)
        if isinstance(decoded, BadTick):
            assert msg["case"].startswith("bad:"), (msg, decoded)
            rec = Record(offsets[p], log, BAD)
        else:
            assert not msg["case"].startswith("bad:"), msg
            rec = Record(offsets[p], log, TICK, decoded)
        offsets[p] += 1
        batches += states[p].on_record(rec)
    for p, state in states.items():
        batches += state.on_record(Record(offsets[p], LOG0 + 10**7, FLUSH))
        late += state.too_late
    want = golden_bars(golden_dir)
    assert_bars_equal(final(rows_of(batches)).select(want.columns), want)
    assert late == sum(m["case"] == "too-late" for m in messages)
    assert sum(len(b.late) for b in batches) == late


def ctick(ts: int, price: float, volume: float | None, *codes: str, source: str = "sim") -> Tick:
    """A trade of symbol A with UTP sale-condition codes, as the simulator prints them."""
    return Tick("A", ts, price, volume, f"A-{ts}-{price}", source, codes)


# One minute of real condition combinations (UTP codes), and what the consolidated-tape
# rules make of them: a spike of an average-price print, an extended-hours Form T trade
# and an official closing report must not move the bar's prices.
CONDITIONED = [
    ctick(T0 + 1_000, 10.0, 100, "@"),  # regular
    ctick(T0 + 2_000, 12.0, 500, "W"),  # average price: volume only
    ctick(T0 + 3_000, 10.8, 20, "Z"),  # sold out of sequence: high/low and volume
    ctick(T0 + 4_000, 10.4, 200, "@", "F"),  # intermarket sweep: regular
    ctick(T0 + 4_500, 10.6, 300, "M"),  # official close report: nothing
    ctick(T0 + 5_000, 10.2, 10, "@", "?"),  # a code no mapping knows
    ctick(T0 + 65_000, 11.0, 100, "W"),  # the next minute: an average-price print alone
]


@pytest.mark.parametrize("unknown", ["regular", "volume"])
def test_trade_conditions_keep_ineligible_trades_out_of_the_prices(unknown):
    """Worked by hand from the CTA/UTP consolidated-update rules (docs/conditions.md)."""
    from flows.stream.conditions import UnknownConditions

    rules = BarRules(conditions=load_rules(unknown=UnknownConditions(unknown)))
    feed = Feed(rules)
    feed.send(*CONDITIONED)
    feed.flush()
    got = final(feed.rows()).to_dicts()
    assert len(got) == 2
    first, second = got
    regular = unknown == "regular"
    # open: the regular 10.0; close: the last trade allowed to set it (the unmapped one
    # counts like a regular trade by default, else only in volume)
    assert (first["open"], first["close"]) == (10.0, 10.2 if regular else 10.4)
    assert (first["high"], first["low"]) == (10.8, 10.0)  # not the 12.0 average-price print
    volume = 100 + 500 + 20 + 200 + 10  # the official close report counts in no volume
    assert first["volume"] == volume
    pv = 10.0 * 100 + 12.0 * 500 + 10.8 * 20 + 10.4 * 200 + 10.2 * 10
    assert abs(first["vwap"] - pv / volume) < 1e-12
    assert first["trade_count"] == 5
    assert first["excluded_count"] == (3 if regular else 4)  # W, Z, M (and the unmapped)
    assert first["unmapped_count"] == 1
    assert (first["first_ts"], first["last_ts"]) == (T0 + 1_000, T0 + 5_000)
    # a minute whose only trade may set no price: no prices, its volume kept
    assert [second[c] for c in ("open", "high", "low", "close")] == [None] * 4
    assert (second["volume"], second["trade_count"], second["excluded_count"]) == (100, 1, 1)
    feed.assert_on_batch_agrees()
    if regular:  # the batch computation, with the tables read on their own, agrees
        want = batch_bars([{**t._asdict(), "seq": i} for i, t in enumerate(CONDITIONED)])
        assert_bars_equal(final(feed.rows()), want)


def test_with_the_rules_off_every_trade_sets_every_field():
    feed = Feed(BarRules())
    feed.send(*CONDITIONED)
    feed.flush()
    first = final(feed.rows()).to_dicts()[0]
    assert (first["open"], first["high"], first["low"], first["close"]) == (10.0, 12.0, 10.0, 10.2)
    assert (first["trade_count"], first["excluded_count"], first["unmapped_count"]) == (6, 0, 0)
    assert first["volume"] == 100 + 500 + 20 + 200 + 300 + 10


# A minute repaired from a vendor's 1-minute candle (the outage backfill's four ticks:
# open at :00, high +1 ms, low +2 ms, close at +59.999 s, the volume on the close), and
# trades of the same minute that did arrive before the outage began.
CANDLE = [
    Tick("A", T0 + m, p, v, f"candle:A:{T0}:{part}", "finnhub-candle")
    for m, p, v, part in [(0, 10.0, 0.0, "o"), (1, 10.9, 0.0, "h"), (2, 9.8, 0.0, "l"),
                          (59_999, 10.5, 700.0, "c")]
]  # fmt: skip
ARRIVED = [
    ctick(T0 + 5_000, 10.1, 100),
    ctick(T0 + 20_000, 11.5, 50, "W"),
    ctick(T0 + 70_000, 10.6, 5),
]


@pytest.mark.parametrize("rules", [RULES, BarRules()], ids=["conditions-on", "conditions-off"])
@pytest.mark.parametrize("order", ["trades-first", "candle-first", "mixed"])
def test_a_candle_stands_for_its_whole_minute_in_any_order(rules, order):
    """The candle's OHLCV, not candle + trades: the arrived trades are inside the candle."""
    ticks = {
        "trades-first": [*ARRIVED, *CANDLE],
        "candle-first": [*CANDLE, *ARRIVED],
        "mixed": [CANDLE[0], ARRIVED[0], CANDLE[3], ARRIVED[1], CANDLE[1], ARRIVED[2], CANDLE[2]],
    }[order]
    feed = Feed(rules)
    feed.send(*ticks)
    feed.flush()
    first, second = final(feed.rows()).to_dicts()
    assert [first[c] for c in ("open", "high", "low", "close")] == [10.0, 10.9, 9.8, 10.5]
    assert (first["volume"], first["vwap"], first["trade_count"]) == (700.0, 10.5, 4)
    assert (first["candle_count"], first["excluded_count"], first["unmapped_count"]) == (4, 0, 0)
    assert (first["first_ts"], first["last_ts"]) == (T0, T0 + 59_999)
    # the next minute has no candle: its trade makes it, unmarked
    assert (second["open"], second["volume"], second["candle_count"]) == (10.6, 5.0, 0)
    feed.assert_on_batch_agrees()
    want = batch_bars(
        [{**t._asdict(), "seq": i} for i, t in enumerate(ticks)],
        conditions=rules.conditions is not None,
    )
    assert_bars_equal(final(feed.rows()), want)


def test_a_late_candle_restates_the_bar_its_trades_made():
    """The backfill's candle arrives after the minute closed: a restatement, candle values."""
    feed = Feed()
    feed.send(ARRIVED[0], tick("A", T0 + 120_000, 12.0))  # closes the first minute
    feed.send(*CANDLE)
    feed.flush()
    rows = feed.rows().filter(pl.col("window_start") == T0).sort("revision").to_dicts()
    assert [(r["revision"], r["close"], r["candle_count"]) for r in rows] == [
        (0, 10.1, 0),
        (1, 10.5, 4),
    ]


def test_partial_bars_merge_a_candle_side_like_folding_every_tick():
    """merge(trades, candle) == fold of all, whichever side holds the candle."""
    from flows.stream.bars import CANDLE as CANDLE_BIT
    from flows.stream.conditions import REGULAR

    def fold(ticks):
        bar = None
        for seq, t, flags in ticks:
            if bar is None:
                bar = PartialBar.of(t.ts, seq, t.price, t.volume, flags)
            else:
                bar.fold(t.ts, seq, t.price, t.volume, flags)
        return bar

    trades = [(i, t, REGULAR) for i, t in enumerate(ARRIVED[:2])]
    candle = [(10 + i, t, REGULAR | CANDLE_BIT) for i, t in enumerate(CANDLE)]
    whole = fold(trades + candle).to_tuple()
    assert fold(trades).merge(fold(candle)).to_tuple() == whole
    assert fold(candle).merge(fold(trades)).to_tuple() == whole
    assert fold(candle + trades).to_tuple() == whole
    merged = fold(trades).merge(fold(candle))
    assert (merged.first_ts, merged.last_ts, merged.candle) == (T0, T0 + 59_999, 4)


def test_ties_take_open_and_close_in_partition_order():
    feed = Feed()
    feed.send(tick("A", T0 + 5, 10.0), tick("A", T0 + 5, 11.0), tick("A", T0 + 5, 9.0))
    feed.flush()
    (bar,) = feed.rows().to_dicts()
    assert (bar["open"], bar["close"], bar["high"], bar["low"]) == (10.0, 9.0, 11.0, 9.0)


def test_window_closes_when_event_time_passes_its_end_plus_lateness():
    feed = Feed()
    feed.send(tick("A", T0 + 1000, 10.0), tick("A", T0 + 64_999, 11.0))
    assert feed.state._bars == []  # watermark 59_999 + 1 ms of log time: not yet
    feed.send(tick("A", T0 + 65_000, 12.0))
    (bar,) = feed.state._bars
    assert bar[2] == T0 * 1000 and bar[13] == 0 and bar[10] == 1


def test_log_time_closes_the_window_of_a_quiet_feed():
    """No new tick: heartbeats move log time, and the watermark moves with it."""
    feed = Feed()
    feed.send(tick("A", T0 + 30_000, 10.0))  # watermark T0 + 25 s; the window ends at T0 + 60 s
    feed.heartbeat(34_000)  # log time +34 s (+1 ms for the tick): watermark T0 + 59.001 s
    assert feed.state._bars == []
    feed.heartbeat(1_000)
    (bar,) = feed.state._bars
    assert bar[14] == feed.log * 1000  # emitted_at is the log time of the causing record


def test_a_backlog_read_at_one_log_time_closes_nothing_early():
    """Catching up: every record has nearly the same log time; only event time closes windows."""
    feed = Feed()
    feed.send(*(tick("A", T0 + i * 1000, 10.0 + i) for i in range(200)), log_step=0)
    feed.flush()
    got = final(feed.rows())
    assert got["trade_count"].to_list() == [60, 60, 60, 20]
    assert feed.rows()["revision"].max() == 0  # nothing restated: nothing closed early


def test_late_ticks_restate_a_closed_bar_in_one_coalesced_row():
    feed = Feed()
    feed.send(tick("A", T0 + 1000, 10.0), tick("A", T0 + 70_000, 10.0))  # closes window T0
    late = [tick("A", T0 + 2000 + i, 10.0 + i / 100) for i in range(1000)]
    feed.send(*late, log_step=0)  # a burst of 1,000 late ticks within one log-time instant
    feed.heartbeat(RULES.restate_interval_ms)  # the restatement is due
    rows = feed.rows().filter(pl.col("window_start") == T0).sort("revision")
    assert rows["revision"].to_list() == [0, 1]
    assert rows["trade_count"].to_list() == [1, 1001]
    assert rows["high"][1] == 10.0 + 999 / 100


def test_restatements_of_a_window_are_at_least_one_interval_of_log_time_apart():
    feed = Feed(log=LOG0)
    feed.send(tick("A", T0 + 1000, 10.0), tick("A", T0 + 70_000, 10.0))
    for i in range(50):  # one late tick every 100 ms of log time for 5 s
        feed.send(tick("A", T0 + 2000 + i, 11.0), log_step=100)
    feed.heartbeat(2 * RULES.restate_interval_ms)
    rows = feed.rows().filter(pl.col("window_start") == T0).sort("revision")
    emitted = rows["emitted_at"].to_list()
    assert rows["revision"].to_list() == list(range(len(rows)))
    assert 3 <= len(rows) <= 7  # revision 0, then about one per second, not 50
    assert all(
        b - a >= RULES.restate_interval_ms * 1000
        for a, b in zip(emitted[1:], emitted[2:], strict=False)
    )
    assert rows["trade_count"][-1] == 51


def test_first_emission_of_window_with_only_late_ticks_is_revision_0():
    feed = Feed()
    feed.send(tick("A", T0 + 300_000, 10.0), tick("A", T0 + 1000, 9.0))
    feed.heartbeat(RULES.restate_interval_ms)
    rows = feed.rows().filter(pl.col("window_start") == T0)
    assert rows["revision"].to_list() == [0] and rows["trade_count"].to_list() == [1]


def test_tick_older_than_restate_horizon_is_too_late():
    feed = Feed()
    feed.send(tick("A", T0 + 2 * 3_600_000, 10.0), tick("A", T0, 9.0, tid="old"))
    feed.flush()
    assert feed.state.too_late == 1
    (late,) = [r for b in feed.batches for r in b.late]
    assert late[4] == "old" and late[1] == T0 * 1000
    assert feed.rows()["trade_count"].to_list() == [1]


# -- the restate horizon's edge ------------------------------------------------------------
#
# Contract 2: a late tick restates its closed window while the window is within the restate
# horizon of event time; ids are remembered "for as long as their window can still be
# restated (the restate horizon plus the lateness, in event time)". So the horizon line
# trails the symbol's newest event time by lateness + horizon, and a window has left it when
# that line reaches its end, as a window closes when the watermark reaches its end (end
# exclusive, the rule `test_window_closes_when_event_time_passes_its_end_plus_lateness`
# pins): too late <=> window end <= newest ts - lateness - horizon.

REACH = RULES.lateness_ms + RULES.restate_ms  # how far the horizon line trails the newest tick
W_END = T0 + RULES.bar_ms  # the end of window T0 (and the start of the next)


def window_end(ts: int) -> int:
    return ts - ts % RULES.bar_ms + RULES.bar_ms


def horizon_line(newest_ts: int) -> int:
    return newest_ts - RULES.lateness_ms - RULES.restate_ms


def reference_bars(ticks: list[Tick]) -> pl.DataFrame:
    """The batch computation over ticks that must be in bars (in arrival order)."""
    return batch_bars(
        {"symbol": t.symbol, "ts": t.ts, "seq": i, "price": t.price, "volume": t.volume}
        for i, t in enumerate(ticks)
    )


@pytest.mark.parametrize(
    ("newest_ts", "late_ts", "outcome"),
    [
        # The newest tick moves the line to 1 ms before, exactly at, 1 ms past window T0's end.
        (W_END + REACH - 1, T0 + 2_000, "restates"),
        (W_END + REACH, T0 + 2_000, "too-late"),
        (W_END + REACH + 1, T0 + 2_000, "too-late"),
        # The line exactly at T0's end; the late tick 1 ms before it, exactly at it, 1 ms after.
        (W_END + REACH, W_END - 1, "too-late"),  # the last ms of window T0
        (W_END + REACH, W_END, "restates"),  # the first ms of window T0 + 1 min
        (W_END + REACH, W_END + 1, "restates"),
        # The line 1 ms before T0's end, the late tick in T0's last ms.
        (W_END + REACH - 1, W_END - 1, "restates"),
    ],
)
def test_a_late_tick_at_the_restate_horizon_edge(newest_ts, late_ts, outcome):
    line = horizon_line(newest_ts)
    assert outcome == ("too-late" if window_end(late_ts) <= line else "restates")  # the table
    feed = Feed()
    before = [
        tick("A", T0 + 1_000, 10.0, 1.0),
        tick("A", W_END + 1_000, 11.0, 2.0),
        tick("A", T0 + 130_000, 10.5, 1.0),  # closes windows T0 and T0 + 1 min (revision 0)
    ]
    newest = tick("A", newest_ts, 12.0, 3.0)
    late = tick("A", late_ts, 99.0, 42.0, tid="edge")
    feed.send(*before, newest)
    feed.send(late)
    accepted = [*before, newest] + ([late] if outcome == "restates" else [])
    # The ids of a (closed) window are forgotten with it when the line reaches its end:
    # dedup state holds the ids of exactly the windows that can still be restated.
    assert len(feed.state.live) == sum(window_end(t.ts) > line for t in accepted)

    feed.heartbeat(RULES.restate_interval_ms)  # a restatement is due by log time, no flush
    rows = feed.rows()
    late_win = rows.filter(pl.col("window_start") == late_ts - late_ts % RULES.bar_ms)
    if outcome == "restates":
        # Emitted again with all its ticks and revision + 1.
        assert late_win["revision"].to_list() == [0, 1]
        assert late_win["trade_count"].to_list()[-1] == 2
        assert late_win["volume"].to_list()[-1] == late.volume + sum(
            t.volume for t in before if window_end(t.ts) == window_end(late_ts)
        )
        assert late_win["high"].to_list()[-1] == 99.0
        assert feed.state.too_late == 0 and [r for b in feed.batches for r in b.late] == []
    else:
        assert 99.0 not in rows["high"].to_list()
        assert feed.state.too_late == 1
        (late_row,) = [*feed.state._late, *(r for b in feed.batches for r in b.late)]
        assert late_row[4] == "edge" and late_row[1] == late_ts * 1000

    # A copy of window T0's first tick: a duplicate while T0 can be restated, else too late.
    copy_too_late = line >= W_END
    feed.send(before[0])
    assert feed.state.too_late == (outcome == "too-late") + copy_too_late
    assert feed.state.duplicates == (not copy_too_late)
    feed.flush()
    assert_bars_equal(final(feed.rows()), reference_bars(accepted))
    feed.assert_on_batch_agrees()


def two_closed_windows(feed: Feed) -> list[Tick]:
    """On-time ticks into windows T0 and T0 + 1 min, and one that closes both."""
    ticks = [
        tick("A", T0 + 1_000, 10.0, 1.0),
        tick("A", W_END + 1_000, 11.0, 2.0),
        tick("A", T0 + 130_000, 10.5, 1.0),  # closes windows T0 and T0 + 1 min
    ]
    feed.send(*ticks)
    return ticks


def test_the_horizon_line_crossing_a_window_end_one_ms_at_a_time():
    """The newest tick moves the line to 1 ms before window T0's end, then onto it.

    Before: T0 takes a late tick (restated) and knows its ids (a copy is a duplicate).
    On it: T0 has left, its pending restatement is written, its ids are forgotten, and a
    late tick or a copy for it is too late. The crossing tick lands in an open window, so
    the dataflow's fast path must see it move the line too.
    """
    feed = Feed()
    before = two_closed_windows(feed)
    inside = tick("A", W_END + REACH - 1, 12.0, 3.0)
    feed.send(inside)
    assert horizon_line(inside.ts) == W_END - 1
    late_in = tick("A", W_END - 1, 98.0, 40.0, tid="late-in")  # T0's last ms: restates T0
    feed.send(late_in, before[0])  # ... and a copy of T0's first tick is a duplicate
    assert (feed.state.too_late, feed.state.duplicates) == (0, 1)
    crossing = tick("A", W_END + REACH, 12.5, 4.0)  # same window as `inside`, 1 ms later
    feed.send(crossing)
    assert horizon_line(crossing.ts) == W_END
    accepted = [*before, inside, late_in, crossing]
    assert len(feed.state.live) == sum(window_end(t.ts) > W_END for t in accepted)
    feed.send(tick("A", W_END - 1, 97.0, 5.0, tid="late-out"), before[0])
    assert (feed.state.too_late, feed.state.duplicates) == (2, 1)
    feed.heartbeat(2 * RULES.restate_interval_ms)
    feed.flush()
    got = final(feed.rows())
    assert_bars_equal(got, reference_bars(accepted))
    w0 = got.filter(pl.col("window_start") == T0).to_dicts()[0]
    assert (w0["revision"], w0["trade_count"], w0["volume"], w0["high"]) == (1, 2, 41.0, 98.0)
    assert sorted(r[4] for b in feed.batches for r in b.late) == sorted(["late-out", before[0].id])
    feed.assert_on_batch_agrees()


@pytest.mark.parametrize("beyond", [0, 1, 2 * RULES.restate_ms])
def test_a_pending_restatement_is_written_when_its_window_leaves_the_horizon(beyond):
    """Late ticks folded into closed windows, then, before the restate interval of log time
    has passed, a tick moves the horizon past them: their restatements must still be
    written, or accepted ticks would be lost from the bars."""
    feed = Feed()
    on_time = two_closed_windows(feed)
    late = [tick("A", T0 + 2_000, 99.0, 42.0, tid="late-1"), tick("A", W_END + 2_000, 1.0, 7.0)]
    feed.send(*late)
    assert feed.rows()["revision"].max() == 0  # the restatements are pending
    # 1 ms of log time later, T0 + 1 min's end is at (or past) the horizon line: both go.
    newest = tick("A", W_END + RULES.bar_ms + REACH + beyond, 12.0, 3.0)
    feed.send(newest)
    assert horizon_line(newest.ts) >= W_END + RULES.bar_ms  # both windows have left it
    too_late = tick("A", T0 + 3_000, 50.0, 5.0, tid="too-late")
    feed.send(too_late)
    feed.heartbeat(2 * RULES.restate_interval_ms)
    feed.flush()
    got = final(feed.rows())
    assert_bars_equal(got, reference_bars([*on_time, *late, newest]))
    w0 = got.filter(pl.col("window_start") == T0).to_dicts()[0]
    assert (w0["revision"], w0["trade_count"], w0["volume"], w0["high"], w0["close"]) == (
        1,
        2,
        43.0,
        99.0,
        99.0,
    )
    w1 = got.filter(pl.col("window_start") == W_END).to_dicts()[0]
    # window T0 + 1 min: the on-time tick (volume 2) and the late one (volume 7, low 1)
    assert (w1["revision"], w1["volume"], w1["low"]) == (1, 9.0, 1.0)
    assert feed.state.too_late == 1
    feed.assert_on_batch_agrees()


@pytest.mark.parametrize("d", [-1, 0, 1])
def test_a_burst_into_a_window_ending_exactly_at_the_watermark_makes_one_row(d):
    """The watermark 1 ms past, exactly at, 1 ms before the end of a window no tick reached.

    At or past it the window is closed, so the burst is late ticks for it: coalesced by log
    time into one first emission (revision 0). Before it the window is open and the burst is
    on time: one revision-0 row when the watermark passes. One row either way, and on_batch
    agrees with on_record at the edge.
    """
    start = T0 + RULES.bar_ms
    end = start + RULES.bar_ms
    feed = Feed()
    feed.send(tick("A", T0 + 1_000, 10.0))
    feed.send(tick("A", end + RULES.lateness_ms - d, 11.0))  # watermark end - d
    burst = [tick("A", start + 1_000 + i, 20.0 + i, 1.0 + i) for i in range(5)]
    feed.send(*burst, log_step=0)  # at the same log time: the watermark stays at end - d
    for _ in range(3 * RULES.restate_interval_ms // 100):
        feed.heartbeat(100)
    rows = feed.rows().filter(pl.col("window_start") == start)
    assert rows["revision"].to_list() == [0]
    assert_bars_equal(rows, reference_bars(burst))
    feed.flush()
    assert feed.rows().filter(pl.col("window_start") == start).height == 1
    feed.assert_on_batch_agrees()


def test_duplicate_15_minutes_of_event_time_late_counts_once():
    feed = Feed()
    original = tick("A", T0 + 1000, 10.0, volume=100, tid="x-1")
    feed.send(original)
    feed.send(*(tick("A", T0 + 60_000 * m, 10.0) for m in range(1, 16)))
    feed.send(original)  # the same trade again, 15 minutes of event time later
    feed.heartbeat(5_000)
    feed.flush()
    bar = final(feed.rows()).filter(pl.col("window_start") == T0).to_dicts()[0]
    assert bar["trade_count"] == 1 and bar["volume"] == 100
    assert feed.state.duplicates == 1


def test_ids_are_forgotten_with_their_window_and_state_stays_bounded():
    feed = Feed()
    for i in range(3 * 3600):  # three hours, one tick a second
        feed.send(tick("A", T0 + i * 1000, 10.0))
    state = feed.state.symbols["A"]
    horizon_windows = (RULES.restate_ms + RULES.lateness_ms) // RULES.bar_ms + 2
    assert len(state.closed) + len(state.open) <= horizon_windows
    assert sum(len(w.ids) for w in state.closed.values()) <= horizon_windows * 60
    # ... and the partition's dedup set forgets them too: it holds the live windows' ids only.
    assert len(feed.state.live) == sum(
        len(w.ids) for w in (*state.closed.values(), *state.open.values())
    )
    assert len(feed.state.live) <= horizon_windows * 60


def test_snapshot_survives_pickle_and_restores_the_same_state():
    feed = Feed()
    feed.send(tick("A", T0 + 1000, 10.0), tick("B", T0 + 2000, 5.0), tick("A", T0 + 90_000, 11.0))
    feed.send(tick("A", T0 + 3000, 12.0))  # a pending restatement of window T0
    snap = pickle.loads(pickle.dumps(feed.state.snapshot()))
    restored = PartitionBars.restore(RULES, FILES, snap)
    assert restored.snapshot() == feed.state.snapshot()


def test_micro_batches_are_cut_by_rows_and_log_time_and_named_by_offsets():
    files = FileRules(max_rows=3, max_age_ms=10_000)
    feed = Feed(files=files)
    feed.send(*(tick(s, T0 + 1000, 10.0) for s in "ABCD"))
    feed.heartbeat(70_000)  # one record closes 4 windows
    assert [len(b.bars) for b in feed.batches] == [4]  # one record's rows are never split
    feed.send(*(tick(s, T0 + 100_000, 10.0) for s in "AB"))
    feed.heartbeat(70_000)  # closes A's and B's second windows: 2 rows pending
    assert [len(b.bars) for b in feed.batches] == [4]
    feed.heartbeat(10_000)  # the pending rows are 10 s of log time old
    assert [len(b.bars) for b in feed.batches] == [4, 2]
    firsts = [(b.first_offset, b.last_offset) for b in feed.batches]
    assert firsts == sorted(firsts) and len(set(firsts)) == len(firsts)


# -- replay: the same log gives the same rows, whatever crashed where ---------------------


def stream_records(
    seed: int, spec: StreamSpec, live: bool = False, log_spec: LogSpec | None = None
) -> tuple[list[Record], list[tuple[str, dict]]]:
    """One partition's records: the random stream with log time, quiet gaps and heartbeats.

    By default log time crawls (a backlog: event time closes windows); `live` keeps
    it about 0-3 s behind the newest event time (a live feed: log time closes them).
    `log_spec` adds flush markers mid-stream, stalls (one log time for many records),
    big jumps and records stamped earlier than log time (from a second random source,
    so without it the records are exactly the plain ones).
    """
    rng = random.Random(seed)
    chaos = random.Random(f"log-{seed}") if log_spec and log_spec.any else None
    stream = make_stream(seed, spec)
    records: list[Record] = []
    log = 0 if live else LOG0
    newest = 0
    stall = 0  # records left in the current stall
    stamps: list[int] = []  # earlier record timestamps, to repeat
    for symbol, msg in stream:
        if rng.random() < 0.02:  # a quiet spell: heartbeats move log time
            for _ in range(rng.randrange(1, 8)):
                if not stall:
                    log += 1000
                records.append(Record(len(records), log, HEARTBEAT))
        if rng.random() < 0.01:  # a future tick (the decoder rejects it) still moves log time
            records.append(Record(len(records), log, BAD))
        step = rng.choice([0, 0, 1, 5, 50])
        stamp = None  # this tick's record timestamp when it is not log time
        if chaos is not None:
            assert log_spec is not None
            if chaos.random() < log_spec.p_flush:  # a flush marker, and the stream goes on
                records.append(Record(len(records), log, FLUSH))
            if not stall and chaos.random() < log_spec.p_stall:
                stall = chaos.randrange(5, 120)
            if chaos.random() < log_spec.p_jump:
                log += chaos.choice([60_000, 600_000, 3_600_000, 4 * 3_600_000])
                log += chaos.randrange(0, 1_000)
            if stamps and chaos.random() < log_spec.p_backwards:
                old = chaos.choice(stamps[-2_000:])
                if live:  # a heartbeat or a bad record stamped back in time
                    records.append(Record(len(records), old, chaos.choice([HEARTBEAT, BAD])))
                else:  # in a backlog any record, ticks too (the skew rule still holds)
                    stamp = old
        if stall:
            stall -= 1
        else:
            log += step
        if live:
            newest = max(newest, msg["ts"])
            behind = rng.randrange(0, 3000)
            # In a stall event time runs ahead of log time, within the clock-skew rule.
            log = max(log, newest - 50_000 if stall else newest + behind)
        stamps.append(log)
        rec_ts = log if stamp is None else stamp
        t = decode_tick(orjson.dumps(msg), symbol.encode(), rec_ts)
        assert not isinstance(t, BadTick), (msg, t)
        records.append(Record(len(records), rec_ts, TICK, t))
    records.append(Record(len(records), log + 1, FLUSH))
    return records, stream


def on_batch_of(state: PartitionBars, chunk: list[Record]) -> list[FileBatch]:
    """`on_batch` over records, in the columns the Kafka source hands it."""
    return state.on_batch(
        [r.offset for r in chunk],
        [r.log_ts for r in chunk],
        [r.kind for r in chunk],
        [r.tick for r in chunk],
    )


def run_records(state: PartitionBars, records: list[Record]) -> list[list[FileBatch]]:
    return [state.on_record(rec) for rec in records]


def draw_stream_and_files(data: st.DataObject) -> tuple[StreamSpec, FileRules, LogSpec]:
    """A random 3-symbol stream's shape, file rules from one row to many per file, and how
    log time moves: flush markers mid-stream, stalls, jumps, repeated timestamps."""
    spec = StreamSpec(
        symbols=["A", "B", "C"],
        ticks_per_symbol=data.draw(st.integers(50, 300)),
        max_gap_ms=data.draw(st.sampled_from([2_000, 20_000])),
        p_far_dup=0.05,
        p_jump=data.draw(st.sampled_from([0.0, 0.01, 0.03])),
        p_edge=data.draw(st.sampled_from([0.0, 0.03, 0.1])),
        p_conditions=data.draw(st.sampled_from([0.0, 0.1, 0.4])),
    )
    files = FileRules(max_rows=data.draw(st.sampled_from([5, 50, 10_000])), max_age_ms=3_000)
    log_spec = LogSpec(
        p_flush=data.draw(st.sampled_from([0.0, 0.005, 0.03])),
        p_stall=data.draw(st.sampled_from([0.0, 0.02, 0.05])),
        p_jump=data.draw(st.sampled_from([0.0, 0.005, 0.02])),
        p_backwards=data.draw(st.sampled_from([0.0, 0.02, 0.1])),
    )
    return spec, files, log_spec


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), data=st.data())
def test_resuming_from_any_snapshot_after_a_crash_rewrites_the_same_rows(seed, data):
    spec, files, log_spec = draw_stream_and_files(data)
    records, stream = stream_records(seed, spec, live=data.draw(st.booleans()), log_spec=log_spec)
    first = PartitionBars(RULES, files, "t", 0)
    snap_at = data.draw(st.integers(0, len(records) - 1))
    # A snapshot is committed only after the outputs of what it covers were written
    # (Bytewax closes an epoch's outputs before its snapshot): the crash comes later.
    crash_at = data.draw(st.integers(snap_at + 1, len(records)))
    out1: list[list[FileBatch]] = []
    for i, rec in enumerate(records):
        out1.append(first.on_record(rec))
        if i == snap_at:
            snapshot = pickle.dumps(first.snapshot())

    resumed = PartitionBars.restore(RULES, files, pickle.loads(snapshot))
    out2 = run_records(resumed, records[snap_at + 1 :])
    # The resumed run seals exactly the batches the first run sealed after the snapshot.
    assert out2 == out1[snap_at + 1 :]

    # What the lake holds after the crash: the first run's files up to the crash, then the
    # resumed run's, by name; a name written twice holds the same rows.
    lake: dict[tuple[int, int], FileBatch] = {}
    for batch in [b for bs in out1[:crash_at] for b in bs] + [b for bs in out2 for b in bs]:
        key = (batch.first_offset, batch.last_offset)
        assert lake.setdefault(key, batch) == batch
    got = final(rows_of(list(lake.values())))
    good, late = expected_ticks(stream)
    want = batch_bars(good)
    assert_bars_equal(got.select(want.columns), want)
    assert sum(len(b.late) for b in lake.values()) == len(late)
    assert_chain([b for bs in out1 for b in bs])


def assert_chain(batches: list[FileBatch]) -> None:
    """Each batch follows the last bar batch before it: its offsets and its rows' UTC days."""
    before = None
    for batch in batches:
        assert batch.follows == before, (batch.first_offset, batch.last_offset)
        if batch.bars:
            days = sorted({r[2] // 86_400_000_000 for r in batch.bars})
            before = (batch.first_offset, batch.last_offset, tuple(days))
            assert before[0] > (batch.follows or (-1, -1))[1]  # after the batch it follows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), data=st.data())
def test_on_batch_returns_what_on_record_returns_however_the_records_are_batched(seed, data):
    """The dataflow's fast path (on_batch) against the definition (on_record), crash included."""
    spec, files, log_spec = draw_stream_and_files(data)
    records, stream = stream_records(seed, spec, live=data.draw(st.booleans()), log_spec=log_spec)
    reference = PartitionBars(RULES, files, "t", 0)
    want = [b for rec in records for b in reference.on_record(rec)]
    good, late = expected_ticks(stream)  # and the definition against the batch computation
    assert_bars_equal(final(rows_of(want)).select(BAR_COLS_OF_BATCH), batch_bars(good))
    assert sum(len(b.late) for b in want) == len(late)

    cuts = sorted(data.draw(st.sets(st.integers(1, len(records) - 1), max_size=40)))
    chunks = [records[a:b] for a, b in zip([0, *cuts], [*cuts, len(records)], strict=True)]
    restart = data.draw(st.integers(0, len(chunks)))  # restore from a snapshot before this chunk
    state = PartitionBars(RULES, files, "t", 0)
    got: list[FileBatch] = []
    for n, chunk in enumerate(chunks):
        if n == restart:
            state = PartitionBars.restore(
                RULES, files, pickle.loads(pickle.dumps(state.snapshot()))
            )
        got += on_batch_of(state, chunk)
    assert got == want
    assert state.snapshot() == reference.snapshot()


def assert_snapshot_fresh(state: PartitionBars) -> None:
    """A snapshot reusing windows' earlier snapshots equals one built from scratch."""
    snap = state.snapshot()
    for bars in state.symbols.values():
        for win in (*bars.open.values(), *bars.closed.values()):
            win._snap = None
    assert state.snapshot() == snap


# Log time that stalls, jumps and repeats, flush markers mid-stream; event time that jumps
# past the horizon and ticks at its edge.
CHAOS_LOG = LogSpec(p_flush=0.01, p_stall=0.03, p_jump=0.01, p_backwards=0.03)


@pytest.mark.parametrize("chaos", [False, True])
@pytest.mark.parametrize("live", [False, True])
def test_on_batch_equals_on_record_over_many_streams_and_batch_sizes(live, chaos):
    """The same as above over fixed seeds, live and backlog log time, batches of 1 to 200."""
    for seed in range(30 if not chaos else 20):
        spec = StreamSpec(
            symbols=["A", "B", "C"],
            ticks_per_symbol=300,
            max_gap_ms=20_000,
            p_far_dup=0.05,
            p_jump=0.01 if chaos else 0.0,
            p_edge=0.05 if chaos else 0.0,
        )
        records, _ = stream_records(seed, spec, live=live, log_spec=CHAOS_LOG if chaos else None)
        files = FileRules(max_rows=50, max_age_ms=3_000)
        reference = PartitionBars(RULES, files, "t", 0)
        want = [b for rec in records for b in reference.on_record(rec)]
        state = PartitionBars(RULES, files, "t", 0)
        rng = random.Random(seed)
        got: list[FileBatch] = []
        i = 0
        while i < len(records):
            chunk = records[i : i + rng.randrange(1, 200)]
            i += len(chunk)
            got += on_batch_of(state, chunk)
            assert_snapshot_fresh(state)  # an epoch's snapshot after every batch
        assert got == want, f"seed {seed}"
        assert state.snapshot() == reference.snapshot(), f"seed {seed}"


def test_random_streams_with_far_duplicates_equal_batch_computation():
    for seed in range(5):
        spec = StreamSpec(ticks_per_symbol=1500, max_gap_ms=10_000, p_far_dup=0.05)
        records, stream = stream_records(seed, spec)
        state = PartitionBars(RULES, FileRules(max_rows=100, max_age_ms=5000), "t", 0)
        batches = [b for bs in run_records(state, records) for b in bs]
        good, late = expected_ticks(stream)
        want = batch_bars(good)
        assert_bars_equal(final(rows_of(batches)).select(want.columns), want)
        assert state.too_late == len(late) > 0
        assert state.duplicates > 0


@pytest.mark.parametrize("live", [False, True])
def test_streams_with_flushes_stalls_jumps_and_horizon_edges_equal_batch_computation(live):
    """Mid-stream flush markers, log time that stalls, jumps and repeats, event time that
    jumps past the horizon (taking pending restatements with it) and ticks exactly at the
    horizon's edge: final bars still equal the batch computation, late/ gets the rest."""
    margins: list[int] = []
    for seed in range(6):
        spec = StreamSpec(
            ticks_per_symbol=600, max_gap_ms=10_000, p_far_dup=0.05, p_jump=0.01, p_edge=0.05
        )
        records, stream = stream_records(seed, spec, live=live, log_spec=CHAOS_LOG)
        assert sum(r.kind == FLUSH for r in records[:-1]) > 0  # flush markers mid-stream
        logs = [r.log_ts for r in records]
        assert any(b < a for a, b in zip(logs, logs[1:], strict=False))  # earlier stamps
        assert max(b - a for a, b in zip(logs, logs[1:], strict=False)) >= 3_600_000  # jumps
        assert max(len(list(g)) for _, g in itertools.groupby(logs)) >= 50  # stalls
        state = PartitionBars(RULES, FileRules(max_rows=100, max_age_ms=5000), "t", 0)
        batches = [b for bs in run_records(state, records) for b in bs]
        good, late = expected_ticks(stream)
        want = batch_bars(good)
        assert_bars_equal(final(rows_of(batches)).select(want.columns), want)
        assert state.too_late == len(late) == sum(len(b.late) for b in batches)
        assert sorted(r[4] for b in batches for r in b.late) == sorted(t["id"] for t in late)
        margins += horizon_margins(stream)
    # The streams reached the edge: exactly on the line, and 1 ms either side of it.
    assert {-1, 0, 1} <= set(margins)


@given(
    ticks=st.lists(
        st.tuples(
            st.integers(0, 59_999), st.floats(0.01, 1e6), st.sampled_from([None, 0.0, 1.0, 100.0])
        ),
        min_size=2,
        max_size=40,
    ),
    data=st.data(),
)
def test_merging_partial_bars_in_any_split_equals_one_fold(ticks, data):
    events = [TickIn(T0 + ts, i, p, v, str(i)) for i, (ts, p, v) in enumerate(ticks)]
    whole = fold_ticks(events, 60_000)[T0]
    cut = data.draw(st.integers(1, len(events) - 1))
    order = data.draw(st.permutations(range(len(events))))
    shuffled = [events[i] for i in order]
    a = fold_ticks(shuffled[:cut], 60_000)[T0]
    b = fold_ticks(shuffled[cut:], 60_000)[T0]
    merged = a.merge(b) if data.draw(st.booleans()) else b.merge(a)
    assert isinstance(merged, PartialBar)
    assert (merged.open, merged.close, merged.high, merged.low, merged.trade_count) == (
        whole.open,
        whole.close,
        whole.high,
        whole.low,
        whole.trade_count,
    )
    assert abs(merged.volume - whole.volume) <= 1e-9 * max(1.0, whole.volume)


@pytest.mark.parametrize(
    "old",
    [
        ("COIN", (1, 1_741_100_400_000, 0.0, {}, {}, [], 0, 0)),  # per-symbol state, v0.1
        (1, "t", 0, 0, {}, (0, 0, 0), ([], [], -1, -1, 0)),  # version 1: blake2b id hashes
    ],
)
def test_a_snapshot_of_another_format_is_refused_not_misread(old):
    with pytest.raises(ValueError, match=r"not a version-7 \(or 2 to 6\) partition bar-state"):
        PartitionBars.restore(RULES, FILES, old)


def test_a_snapshot_keeps_the_rules_it_was_made_under_and_its_cut():
    stamp = {"STOCKPIPE_BAR_SECONDS": 60_000, "partitions": 3}
    state = PartitionBars(RULES, FILES, "t", 0, stamp=stamp, not_before=T0)
    state.on_record(Record(0, LOG0, TICK, tick("A", T0 + 1, 10.0)))
    restored = PartitionBars.restore(RULES, FILES, pickle.loads(pickle.dumps(state.snapshot())))
    assert (restored.stamp, restored.not_before) == (stamp, T0)
    # a format-3 snapshot (an older release) restores with its rules unknown
    snap = state.snapshot()
    v3 = (3, *snap[1:4], {s: _windows_as_v5(b) for s, b in snap[4].items()}, *snap[5:7])
    old = PartitionBars.restore(RULES, FILES, v3)
    assert (old.stamp, old.not_before) == (None, 0)
    assert old.symbols["A"].snapshot() == restored.symbols["A"].snapshot()


def _windows_as_v5(symbol_snap: tuple) -> tuple:
    """A symbol's snapshot with its windows packed as formats 3 to 5 did (regular bars only)."""
    from flows.stream.bars import _WINDOW, _WINDOW_V5

    def repack(data: bytes) -> bytes:
        out, at = b"", 0
        while at < len(data):
            ws, first, last, o_ts, o_seq, o, c_ts, c_seq, c, *rest = _WINDOW.unpack_from(data, at)
            h, lo, v, pv, n, excluded, unmapped, candle, revision, dirty, keys = rest
            assert (first, last, excluded, unmapped, candle) == (o_ts, c_ts, 0, 0, 0)
            at += _WINDOW.size
            old = (ws, o_ts, o_seq, o, c_ts, c_seq, c, h, lo, v, pv, n, revision, dirty, keys)
            out += _WINDOW_V5.pack(*old) + data[at : at + 8 * keys]
            at += 8 * keys
        return out

    max_ts, max_log, open_, closed, evicted = symbol_snap
    return (max_ts, max_log, repack(open_), repack(closed), evicted)


def test_a_format_6_snapshot_restores_with_no_candle_ticks_and_its_pending_rows_widened():
    """Format 6 (before the candle count): windows without the field, rows one column short."""
    from flows.stream.bars import _WINDOW, _WINDOW_V6

    def repack(data: bytes) -> bytes:
        out, at = b"", 0
        while at < len(data):
            ws, *bar, candle, revision, dirty, keys = _WINDOW.unpack_from(data, at)
            assert candle == 0
            at += _WINDOW.size
            out += _WINDOW_V6.pack(ws, *bar, revision, dirty, keys) + data[at : at + 8 * keys]
            at += 8 * keys
        return out

    feed = Feed()
    feed.send(ctick(T0 + 1, 10.0, 5), ctick(T0 + 2, 12.0, 5, "W"), tick("A", T0 + 70_000, 11.0))
    snap = feed.state.snapshot()
    symbols = {s: (*b[:2], repack(b[2]), repack(b[3]), b[4]) for s, b in snap[4].items()}
    rows = [row[:-1] for row in snap[6][0]]  # format 6 rows had no candle_count
    v6 = (6, *snap[1:4], symbols, snap[5], (rows, *snap[6][1:]), *snap[7:])
    old = PartitionBars.restore(RULES, FILES, v6)
    new = PartitionBars.restore(RULES, FILES, snap)
    assert old.symbols["A"].snapshot() == new.symbols["A"].snapshot()
    assert old._bars == new._bars and len(old._bars[0]) == len(BAR_COLS)


def test_ticks_before_the_cut_of_a_drain_point_go_to_late_and_to_no_bar():
    """A store begun at a drain point: no window before its cut gets a row, whatever comes."""
    cut = T0 + 120_000
    ticks = [
        tick("A", cut - 61_000, 9.0),  # two windows before the cut
        tick("A", cut - 1, 9.5),  # the last ms before it
        tick("A", cut, 10.0),  # the first ms of the first window the new store owns
        tick("A", cut - 100, 9.9),  # on time by the watermark: what the fast path would take
        tick("B", cut - 30_000, 5.0),  # a symbol whose first tick is before the cut
        tick("A", cut + 30_000, 11.0),
        tick("B", cut + 61_000, 6.0),
        tick("A", cut - 5, 8.0),  # before the cut again, after later ticks
    ]
    feed = Feed()
    feed.state = PartitionBars(RULES, FILES, "t", 0, not_before=cut)
    feed.send(*ticks)
    feed.flush()
    kept = [t for t in ticks if t.ts >= cut]
    assert_bars_equal(final(feed.rows()), reference_bars(kept))
    late = [r for b in feed.batches for r in b.late]
    assert sorted((r[0], r[1] // 1000) for r in late) == sorted(
        (t.symbol, t.ts) for t in ticks if t.ts < cut
    )
    assert all(r[7] // 1000 >= cut for r in late)  # the watermark they were too late for
    assert feed.state.too_late == len(ticks) - len(kept)
    # the batched path agrees, from the same cut
    rng_state = PartitionBars(RULES, FILES, "t", 0, not_before=cut)
    assert on_batch_of(rng_state, feed.records) == feed.batches


def test_a_format_2_snapshot_of_the_previous_release_resumes_to_the_same_rows():
    """Written by stockpipe at 843ee12 after the first records of a stream, then pickled."""
    with open(DATA / "bars-snapshot-format2.pickle", "rb") as fh:
        saved = pickle.load(fh)
    assert saved["snapshot"][0] == 2
    spec = StreamSpec(
        symbols=["A", "B", "C"], ticks_per_symbol=300, max_gap_ms=20_000, p_far_dup=0.05
    )
    records, _ = stream_records(saved["seed"], spec, live=saved["live"])
    files = FileRules(max_rows=saved["max_rows"], max_age_ms=saved["max_age_ms"])
    cut = saved["records_before"]
    fresh = PartitionBars(RULES, files, "t", 0)
    run_records(fresh, records[:cut])
    resumed = PartitionBars.restore(RULES, files, saved["snapshot"])
    # the same state, but for the bar batch the next one follows: format 2 did not keep it
    assert resumed._follows is None and fresh._follows is not None
    resumed._follows = fresh._follows
    assert resumed.snapshot() == fresh.snapshot()
    resumed._follows = None
    got, want = run_records(resumed, records[cut:]), run_records(fresh, records[cut:])
    sealed = [b for bs in got for b in bs]
    assert sealed[0].follows is None  # a new chain begins at the first batch after the restore
    assert [b._replace(follows=None) for bs in got for b in bs] == [
        b._replace(follows=None) for bs in want for b in bs
    ]
    assert [b.follows for b in sealed[1:]] == [b.follows for bs in want for b in bs][1:]
    assert resumed.snapshot() == fresh.snapshot()


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("heartbeat_interval", "0", "STOCKPIPE_HEARTBEAT_INTERVAL='0': must be at least 50ms"),
        ("restate_interval", "soon", "STOCKPIPE_RESTATE_INTERVAL='soon': not a duration"),
        ("max_clock_skew", "-1s", "STOCKPIPE_MAX_CLOCK_SKEW='-1s'"),
    ],
)
def test_log_time_settings_say_what_is_wrong(variable, value, says):
    from flows.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as err:
        load_settings(**{variable: value})
    assert says in str(err.value)
