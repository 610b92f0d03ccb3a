"""Bar arithmetic and the per-symbol event-time state, without Bytewax or Kafka."""

from __future__ import annotations

import time

import orjson
import polars as pl
import pytest
from helpers import assert_bars_equal, batch_bars, golden_bars, golden_messages
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamgen import StreamSpec, expected_ticks, make_stream

from flows.bars import BarOut, BarRules, SymbolBars, TickIn, fold_ticks
from flows.ticks import BadTick, parse_tick

RULES = BarRules()
T0 = 1_741_100_400_000  # 15:00:00Z, a window boundary


def run_symbol_stream(events: list[TickIn], rules: BarRules = RULES, now: float = 0.0):
    """Feed ticks at a frozen wall clock, flush at the end; (final bars, all emissions, late)."""
    state = SymbolBars(rules)
    emitted: list[BarOut] = []
    late: list[TickIn] = []
    for t in events:
        for out in state.on_tick(t, now):
            if out == "too-late":
                late.append(t)
            else:
                emitted.append(out)
    emitted.extend(state.flush())
    final: dict[int, BarOut] = {}
    for out in emitted:
        if out.window_start not in final or final[out.window_start].revision < out.revision:
            final[out.window_start] = out
    return final, emitted, late


def to_frame(symbol: str, final: dict[int, BarOut]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "symbol": symbol,
                "window_start": ws,
                "open": o.bar.open,
                "high": o.bar.high,
                "low": o.bar.low,
                "close": o.bar.close,
                "volume": o.bar.volume,
                "vwap": o.bar.vwap,
                "trade_count": o.bar.trade_count,
            }
            for ws, o in sorted(final.items())
        ]
    )


def test_golden_stream_gives_golden_bars(golden_dir):
    now = time.time()
    states: dict[str, SymbolBars] = {}
    emitted: list[tuple[str, BarOut]] = []
    late = bad = 0
    for seq, msg in enumerate(golden_messages(golden_dir)):
        try:
            tick = parse_tick(msg["value"].encode(), msg["key"].encode(), int(now * 1000))
        except BadTick:
            assert msg["case"].startswith("bad:"), msg
            bad += 1
            continue
        state = states.setdefault(tick.symbol, SymbolBars(RULES))
        for out in state.on_tick(TickIn(tick.ts, seq, tick.price, tick.volume, tick.id), now):
            if out == "too-late":
                assert msg["case"] == "too-late", msg
                late += 1
            else:
                emitted.append((tick.symbol, out))
    for symbol, state in states.items():
        emitted.extend((symbol, out) for out in state.flush())
    assert (bad, late) == (19, 11)
    frames = []
    for symbol in states:
        final = {}
        for s, out in emitted:
            if s == symbol and (
                out.window_start not in final or final[out.window_start].revision < out.revision
            ):
                final[out.window_start] = out
        frames.append(to_frame(symbol, final))
    assert_bars_equal(pl.concat(frames), golden_bars(golden_dir))


def test_ties_take_open_and_close_in_partition_order():
    ticks = [
        TickIn(T0 + 10, 1, 10.0, 1, "a"),
        TickIn(T0 + 10, 2, 11.0, 1, "b"),
        TickIn(T0 + 20, 3, 12.0, 1, "c"),
        TickIn(T0 + 20, 4, 9.0, 1, "d"),
    ]
    final, _, _ = run_symbol_stream(ticks)
    bar = final[T0].bar
    assert (bar.open, bar.close, bar.high, bar.low) == (10.0, 9.0, 12.0, 9.0)


def test_late_tick_restates_closed_bar():
    ticks = [TickIn(T0 + 1_000, 0, 10.0, 2, "a"), TickIn(T0 + 70_000, 1, 11.0, 1, "b")]
    state = SymbolBars(RULES)
    outs = [o for t in ticks for o in state.on_tick(t, 0.0)]
    assert [(o.window_start, o.revision, o.bar.trade_count) for o in outs] == [(T0, 0, 1)]
    restated = state.on_tick(TickIn(T0 + 30_000, 2, 13.0, 2, "c"), 0.0)
    assert len(restated) == 1
    bar = restated[0].bar
    assert restated[0].revision == 1
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trade_count) == (
        10.0,
        13.0,
        10.0,
        13.0,
        4.0,
        2,
    )
    assert bar.vwap == pytest.approx((10 * 2 + 13 * 2) / 4)
    # The revision 0 emitted earlier is not changed by the restatement.
    assert outs[0].bar.trade_count == 1 and outs[0].bar.close == 10.0
    again = state.on_tick(TickIn(T0 + 40_000, 3, 8.0, 1, "d"), 0.0)
    assert [(o.revision, o.bar.low, o.bar.trade_count) for o in again] == [(2, 8.0, 3)]


def test_first_emission_of_window_with_only_late_ticks_is_revision_0():
    state = SymbolBars(RULES)
    state.on_tick(TickIn(T0 + 600_000, 0, 10.0, 1, "a"), 0.0)
    outs = state.on_tick(TickIn(T0 + 5_000, 1, 9.0, 1, "late"), 0.0)
    assert [(o.window_start, o.revision, o.bar.open) for o in outs] == [(T0, 0, 9.0)]


def test_tick_older_than_restate_horizon_is_too_late():
    state = SymbolBars(RULES)
    state.on_tick(TickIn(T0 + 3 * 3_600_000, 0, 10.0, 1, "a"), 0.0)
    assert state.on_tick(TickIn(T0, 1, 9.0, 1, "old"), 0.0) == ["too-late"]
    assert state.too_late == 1


def test_duplicate_counts_once_and_ids_are_forgotten_after_dedup_horizon():
    state = SymbolBars(RULES)
    state.on_tick(TickIn(T0, 0, 10.0, 1, "x"), 0.0)
    assert state.on_tick(TickIn(T0, 1, 10.0, 1, "x"), 0.0) == []
    assert state.duplicates == 1
    # Event time moves past the 10 min horizon: "x" is forgotten (bounded state).
    state.on_tick(TickIn(T0 + 600_001, 2, 10.0, 1, "y"), 0.0)
    assert "x" not in state.seen and "y" in state.seen


def test_wall_clock_closes_window_of_quiet_symbol():
    state = SymbolBars(RULES)
    state.on_tick(TickIn(T0 + 50_000, 0, 10.0, 1, "a"), 100.0)
    # event watermark is T0+45s; the window ends at T0+60s: 15 s of wall clock to go.
    assert state.next_close_at() == pytest.approx(115.0)
    assert state.on_wallclock(114.0) == []
    outs = state.on_wallclock(115.5)
    assert [(o.window_start, o.revision) for o in outs] == [(T0, 0)]
    assert state.next_close_at() is None
    # A tick for that window afterwards restates it.
    assert [o.revision for o in state.on_tick(TickIn(T0 + 55_000, 1, 11.0, 1, "b"), 116.0)] == [1]


def test_state_stays_bounded_over_a_day_of_ticks():
    state = SymbolBars(RULES)
    for i in range(86_400):
        state.on_tick(TickIn(T0 + i * 1000, i, 10.0 + (i % 7), 1, f"id{i}"), 0.0)
    assert len(state.seen) <= 601 and len(state.expiry) <= 601
    assert len(state.open) <= 1
    assert len(state.closed) <= 61


def test_snapshot_restore_gives_the_same_emissions():
    stream = make_stream(7, StreamSpec(symbols=["COIN"], ticks_per_symbol=400))
    ticks = [
        TickIn(m["ts"], i, float(m["price"]), m["volume"], m.get("id") or f"h{i}")
        for i, (_, m) in enumerate(stream)
    ]
    _, straight, _ = run_symbol_stream(ticks)
    state = SymbolBars(RULES)
    emitted = []
    for i, t in enumerate(ticks):
        if i == 200:
            state = SymbolBars.restore(RULES, state.snapshot())
        emitted.extend(o for o in state.on_tick(t, 0.0) if o != "too-late")
    emitted.extend(state.flush())
    assert [(o.window_start, o.revision, o.bar) for o in emitted] == [
        (o.window_start, o.revision, o.bar) for o in straight
    ]


@given(
    st.lists(
        st.tuples(
            st.integers(0, 59_999), st.floats(0.01, 1e6), st.sampled_from([None, 0.0, 1.0, 100.0])
        ),
        min_size=2,
        max_size=60,
    ),
    st.data(),
)
def test_merging_partial_bars_in_any_split_equals_one_fold(ticks, data):
    items = [TickIn(T0 + ts, i, p, v, str(i)) for i, (ts, p, v) in enumerate(ticks)]
    whole = fold_ticks(items, 60_000)[T0]
    cut = data.draw(st.integers(1, len(items) - 1))
    order = data.draw(st.permutations(range(len(items))))
    shuffled = [items[i] for i in order]
    a = fold_ticks(shuffled[:cut], 60_000)[T0]
    b = fold_ticks(shuffled[cut:], 60_000)[T0]
    for merged in (a.merge(b), b.merge(a)):
        assert (merged.open, merged.close, merged.high, merged.low, merged.trade_count) == (
            whole.open,
            whole.close,
            whole.high,
            whole.low,
            whole.trade_count,
        )
        assert merged.volume == pytest.approx(whole.volume, rel=1e-12)
        assert (merged.vwap is None) == (whole.vwap is None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(5, 400), gap=st.integers(1, 20_000))
def test_random_streams_equal_batch_computation(seed, n, gap):
    """Duplicates, ties, out-of-order, late and too-late ticks: final bars == batch group-by."""
    spec = StreamSpec(symbols=["COIN", "BINANCE:BTCUSDT"], ticks_per_symbol=n, max_gap_ms=gap)
    stream = make_stream(seed, spec)
    good, late_expected = expected_ticks(stream)
    frames = []
    late_got = []
    for symbol in spec.symbols:
        ticks = []
        for i, (_, m) in enumerate([(s, m) for s, m in stream if s == symbol]):
            parsed = parse_tick(orjson.dumps(m), symbol.encode(), int(time.time() * 1000))
            ticks.append(TickIn(parsed.ts, i, parsed.price, parsed.volume, parsed.id))
        final, emitted, late = run_symbol_stream(ticks)
        frames.append(to_frame(symbol, final))
        late_got.extend((symbol, t.seq) for t in late)
        # Every window's revisions are 0, 1, 2, ... without gaps.
        revs: dict[int, list[int]] = {}
        for o in emitted:
            revs.setdefault(o.window_start, []).append(o.revision)
        assert all(r == list(range(len(r))) for r in revs.values())
    got = pl.concat([f for f in frames if len(f)])
    assert_bars_equal(got, batch_bars(good))
    assert sorted(late_got) == sorted((t["symbol"], t["seq"]) for t in late_expected)
