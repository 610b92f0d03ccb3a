"""The simulator against the market it imitates: the NYSE calendar, a price path that
survives restarts, and UTP trade conditions. Calendar facts are checked against
exchange_calendars directly, not through the simulator's own calendar module."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import pytest

from flows.ingest import sim
from flows.ingest.sim import simulate
from flows.ingest.ticks import Tick, encode_tick, parse_tick, tick_id

NY = ZoneInfo("America/New_York")
NOW_MS = int(datetime.now(UTC).timestamp() * 1000)
OFF_MARKET = {"W", "Z", "U", "Q", "M"}  # prints whose price is not the market's now


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz=NY) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=tz).timestamp() * 1000)


@lru_cache(maxsize=1)
def xnys() -> xcals.ExchangeCalendar:
    return xcals.get_calendar("XNYS", start="2020-01-01", end="2027-12-31")


def regular_session(ts: int) -> tuple[int, int] | None:
    """(open, close) in epoch ms of the XNYS session on the New York date of `ts`, if any."""
    day = datetime.fromtimestamp(ts / 1000, NY).date().isoformat()
    cal = xnys()
    if not cal.is_session(day):
        return None
    return (
        int(cal.session_open(day).timestamp() * 1000),
        int(cal.session_close(day).timestamp() * 1000),
    )


def is_ordinary(t: Tick) -> bool:
    return (
        not OFF_MARKET & set(t.conditions) and "O" not in t.conditions and "6" not in t.conditions
    )


@pytest.fixture(scope="module")
def thanksgiving() -> list[Tick]:
    """Wednesday 2026-11-25 to Monday 2026-11-30: Thanksgiving, then a half day."""
    symbols = ["COIN", "BLK", "COINBASE:BTC-USD"]
    return list(simulate(symbols, 4, ms(2026, 11, 25), end_ms=ms(2026, 12, 1), intensity=0.02))


def test_stocks_follow_the_nyse_calendar_around_thanksgiving(thanksgiving):
    stocks = [t for t in thanksgiving if ":" not in t.symbol]
    days = Counter(datetime.fromtimestamp(t.ts / 1000, NY).date().isoformat() for t in stocks)
    assert days["2026-11-26"] == 0  # Thanksgiving: closed
    assert days["2026-11-28"] == days["2026-11-29"] == 0  # the weekend
    assert days["2026-11-25"] and days["2026-11-27"] and days["2026-11-30"]
    for t in stocks:
        session = regular_session(t.ts)
        assert session is not None, t
        open_, close = session
        extended = not open_ <= t.ts < close
        # extended hours: 04:00 to 20:00, or to 17:00 after a 13:00 close
        local = datetime.fromtimestamp(t.ts / 1000, NY)
        post_end = 17 if close - open_ < 6 * 3_600_000 else 20
        assert 4 <= local.hour < post_end, t
        if extended:
            # Form T (or U, out of sequence in extended hours), bar the closing cross and
            # the official close, which print just after the bell
            crosses = {"6", "M"} & set(t.conditions) and t.ts - close < 2_000
            assert crosses or {"T", "U"} & set(t.conditions), t
        else:
            assert not {"T", "U"} & set(t.conditions), t
    # the half day: no regular-session trade after 13:00 New York
    half_close = ms(2026, 11, 27, 13)
    after = [t for t in stocks if half_close <= t.ts < ms(2026, 11, 28)]
    assert after and all({"T", "U"} & set(t.conditions) or t.ts - half_close < 2_000 for t in after)
    closes = [t for t in stocks if "M" in t.conditions and t.symbol == "COIN"]
    assert [datetime.fromtimestamp(t.ts / 1000, NY).hour for t in closes] == [16, 13, 16]


def test_crypto_trades_through_holidays_and_nights(thanksgiving):
    crypto = [t for t in thanksgiving if ":" in t.symbol]
    days = {datetime.fromtimestamp(t.ts / 1000, NY).date().isoformat() for t in crypto}
    assert {"2026-11-26", "2026-11-28", "2026-11-29"} <= days
    assert any(datetime.fromtimestamp(t.ts / 1000, UTC).hour == 3 for t in crypto)
    assert all(t.conditions == () and t.exchange == "COINBASE" for t in crypto)


def test_last_session_skips_holidays():
    from flows.ingest.sim import last_open

    cal = xnys()
    thanksgiving_noon = ms(2026, 11, 26, 12)
    wednesday = int(cal.session_open("2026-11-25").timestamp() * 1000)
    assert last_open(thanksgiving_noon) == wednesday
    friday = int(cal.session_open("2026-11-27").timestamp() * 1000)
    assert last_open(ms(2026, 11, 29, 12)) == friday  # Sunday: the half day's open
    # Good Friday 2026 (April 3) is a holiday that is no weekend
    assert last_open(ms(2026, 4, 3, 15)) == int(cal.session_open("2026-04-02").timestamp() * 1000)


def test_a_warmup_follows_the_calendar_too():
    start = ms(2026, 11, 30, 9, 30)
    ticks = list(
        simulate(["MARA"], 2, ms(2026, 11, 20), end_ms=start + 60_000,
                 warmup_until_ms=start, warmup_intensity=0.02)
    )  # fmt: skip
    assert all(regular_session(t.ts) is not None for t in ticks)
    history = {datetime.fromtimestamp(t.ts / 1000, NY).date().isoformat() for t in ticks}
    assert "2026-11-26" not in history and {"2026-11-25", "2026-11-27"} <= history


# --------------------------------------------------------------------------- price path


def log_moves(ticks: list[Tick]) -> list[float]:
    return [abs(math.log(b.price / a.price)) for a, b in zip(ticks, ticks[1:], strict=False)]


@pytest.mark.parametrize(
    "symbol, t0, t1",
    [
        ("COIN", ms(2026, 12, 2, 10), ms(2026, 12, 2, 13, 59)),  # mid-session
        ("MSTR", ms(2026, 12, 1, 15), ms(2026, 12, 2, 9, 31)),  # across a night
        ("BINANCE:BTCUSDT", ms(2026, 12, 2, 23, tz=UTC), ms(2026, 12, 3, 0, 0, tz=UTC)),
    ],
)
def test_a_restart_continues_the_price_path(symbol, t0, t1):
    t2 = t1 + 3_600_000
    whole = [t for t in simulate([symbol], 9, t0, end_ms=t2) if is_ordinary(t)]
    before = [t for t in simulate([symbol], 9, t0, end_ms=t1) if is_ordinary(t)]
    after = [t for t in simulate([symbol], 9, t1, end_ms=t2) if is_ordinary(t)]
    assert before and after
    restart_jump = abs(math.log(after[0].price / before[-1].price))
    # ordinary moves of the uninterrupted run, over the same stretch
    moves = log_moves([t for t in whole if t.ts >= before[-1].ts - 600_000])
    assert restart_jump <= max(moves)
    # the restarted run trades at the uninterrupted run's prices: same path, other arrivals
    near = [t for t in whole if t1 <= t.ts < t1 + 60_000]
    gap = abs(math.log(statistics.median(t.price for t in near) / after[0].price))
    assert gap < 0.005
    # the same seed, the same series
    assert [t for t in simulate([symbol], 9, t1, end_ms=t1 + 600_000) if is_ordinary(t)] == [
        t for t in after if t.ts < t1 + 600_000
    ]


def test_the_path_is_a_function_of_time_alone():
    from flows.ingest.sim import _Path, profile_for

    p = profile_for("COIN")
    a, b = _Path("COIN", 3, p), _Path("COIN", 3, p)
    times = [ms(2026, 12, 2, 10) + k * 7_777 for k in range(200)]
    forward = [a.log_mid(t) for t in times]
    backward = [b.log_mid(t) for t in reversed(times)][::-1]
    assert forward == pytest.approx(backward, abs=1e-12)
    assert _Path("COIN", 4, p).log_mid(times[0]) != forward[0]


def test_daily_moves_have_the_profiles_volatility():
    """Close-to-close log returns of the path's anchors over years: vol near the profile's."""
    from datetime import date

    from flows.ingest.sim import _Path, profile_for

    for symbol in ("BLK", "MSTR"):
        p = profile_for(symbol)
        path = _Path(symbol, 1, p)
        first = date(2021, 1, 4).toordinal()
        sessions = [
            d for d in range(first, first + 4 * 365)
            if xnys().is_session(date.fromordinal(d).isoformat())
        ]  # fmt: skip
        level = [path.anchor(d) for d in sessions]
        returns = [b - a for a, b in zip(level, level[1:], strict=False)]
        vol = statistics.pstdev(returns) * math.sqrt(252)
        assert vol == pytest.approx(p.vol, rel=0.2), symbol


# --------------------------------------------------------------------------- conditions


@pytest.fixture(scope="module")
def busy_days() -> list[Tick]:
    """Three full days of a liquid stock (pre-market to post-market)."""
    return list(simulate(["AAPL"], 6, ms(2026, 12, 2), end_ms=ms(2026, 12, 5)))


def test_condition_mix_matches_the_documented_frequencies(busy_days):
    trades = [t for t in busy_days if not {"Q", "M", "O", "6"} & set(t.conditions)]
    n = len(trades)
    assert n > 500_000
    codes = Counter(c for t in trades for c in t.conditions)
    assert codes["@"] == n  # every UTP trade settles regular
    odd = sum(1 for t in trades if t.volume < 100)
    assert codes["I"] == odd and odd / n == pytest.approx(0.42, abs=0.02)
    regular = [t for t in trades if not {"T", "U"} & set(t.conditions)]
    on_exchange = [t for t in regular if t.exchange != sim.OFF_EXCHANGE and "W" not in t.conditions]
    iso = sum(1 for t in on_exchange if "F" in t.conditions) / len(on_exchange)
    assert iso == pytest.approx(sim.P_ISO, rel=0.05)
    assert codes["Z"] / len(regular) == pytest.approx(sim.P_OUT_OF_SEQUENCE, rel=0.15)
    assert codes["W"] / n == pytest.approx(sim.P_AVERAGE_PRICE, rel=0.35)
    venues = Counter(t.exchange for t in regular if "W" not in t.conditions)
    for venue, share in sim.VENUES_REGULAR.items():
        assert venues[venue] / sum(venues.values()) == pytest.approx(share, abs=0.01), venue
    assert all(t.exchange in sim.VENUES_EXTENDED for t in trades if "T" in t.conditions)
    assert all(parse_tick(encode_tick(t), t.symbol.encode(), NOW_MS) == t for t in trades[:5000])


def test_average_price_prints_are_away_from_the_market(busy_days):
    ordinary = [t for t in busy_days if is_ordinary(t)]
    stamps = [t.ts for t in ordinary]
    import bisect

    prints = [t for t in busy_days if "W" in t.conditions]
    assert len(prints) > 50
    for w in prints:
        i = bisect.bisect_left(stamps, w.ts - 30_000)
        j = bisect.bisect_right(stamps, w.ts + 30_000)
        market = statistics.median(t.price for t in ordinary[i:j])
        assert abs(math.log(w.price / market)) > 0.015, w
        assert w.volume >= 2000 and w.exchange == sim.OFF_EXCHANGE


def test_out_of_sequence_prints_are_slightly_stale(busy_days):
    ordinary = [t for t in busy_days if is_ordinary(t)]
    stale = [t for t in busy_days if {"Z", "U"} & set(t.conditions)]
    assert stale
    moves = [abs(math.log(t.price / ordinary[0].price)) for t in stale]
    assert max(moves) < 0.2  # a stale price, not a wild one
    # on average further from the market now than an ordinary trade is
    stamps = [t.ts for t in ordinary]
    import bisect

    def off(t: Tick) -> float:
        i = bisect.bisect_left(stamps, t.ts)
        window = ordinary[max(i - 20, 0) : i + 20]
        return abs(math.log(t.price / statistics.median(x.price for x in window)))

    sample = ordinary[:: max(len(ordinary) // len(stale), 1)][: len(stale)]
    assert statistics.mean(map(off, stale)) > statistics.mean(map(off, sample))


def test_official_open_and_close_once_per_session_at_the_bell(busy_days):
    cal = xnys()
    for code, cross, field in (("Q", "O", "session_open"), ("M", "6", "session_close")):
        reports = [t for t in busy_days if t.conditions == (code,)]
        crosses = [t for t in busy_days if cross in t.conditions]
        days = [datetime.fromtimestamp(t.ts / 1000, NY).date().isoformat() for t in reports]
        assert days == ["2026-12-02", "2026-12-03", "2026-12-04"]
        for report, crossing, day in zip(reports, crosses, days, strict=True):
            bell = int(getattr(cal, field)(day).timestamp() * 1000)
            assert bell <= crossing.ts < report.ts < bell + 2_000
            assert report.price == crossing.price and report.exchange == "Q"
            assert crossing.volume >= 500 and crossing.conditions == ("@", cross)


def test_ids_are_the_content_ids_and_stay_unique(busy_days):
    head = busy_days[:50_000]
    assert len({t.id for t in head}) == len(head)
    for t in head[:2000]:
        assert t.id == tick_id(t.symbol, t.ts, t.price, t.volume, t.conditions) or (
            # identical trades in one millisecond: the occurrence index tells them apart
            t.id in {tick_id(t.symbol, t.ts, t.price, t.volume, t.conditions, k) for k in range(8)}
        )


def test_a_restart_resends_the_crosses_with_the_same_ids():
    """The opening cross and Q are seeded per session: a rerun over the open repeats them
    byte for byte, so the stream's dedup drops the copies."""
    first = [t for t in simulate(["COIN"], 2, ms(2026, 12, 2, 9), end_ms=ms(2026, 12, 2, 9, 31))]
    again = [
        t for t in simulate(["COIN"], 2, ms(2026, 12, 2, 9, 20), end_ms=ms(2026, 12, 2, 9, 31))
    ]
    pick = lambda ticks: [t for t in ticks if {"O", "Q"} & set(t.conditions)]  # noqa: E731
    assert pick(first) == pick(again) and len(pick(first)) == 2


def test_the_exchange_field_round_trips_and_keeps_the_fast_decoder():
    from flows.stream.decode import decode_batch

    tick = next(t for t in simulate(["COIN"], 1, ms(2026, 12, 2, 10)) if t.exchange)
    value = encode_tick(tick)
    assert b'"exchange"' in value
    for _ in range(2):  # the first sight of a symbol takes the checked path, once
        (decoded,), bad = decode_batch([value], [tick.symbol.encode()], [NOW_MS])
        assert not bad and decoded.exchange == tick.exchange
    assert type(decoded).__name__ == "WireTick"  # not the slow path
