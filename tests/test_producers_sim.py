"""The market simulator and the producers' pure parts (no broker, no network)."""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from datetime import UTC, datetime
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from flows.ingest.finnhub_rest import retry_after_seconds
from flows.ingest.finnhub_ws import redact, trades_from_frame
from flows.ingest.pacing import Pacer
from flows.ingest.sim import BAD_KINDS, bad_record, profile_for, simulate
from flows.ingest.ticks import BadTick, Tick, encode_tick, parse_tick, tick_id

NY = ZoneInfo("America/New_York")
NOW_MS = int(time.time() * 1000)


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz=NY) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=tz).timestamp() * 1000)


def raw_bytes(items) -> list[tuple[str | None, bytes | None]]:
    return [(i.symbol, encode_tick(i)) if isinstance(i, Tick) else i for i in items]


def test_same_seed_gives_byte_identical_messages_and_another_seed_does_not():
    args = dict(start_ms=ms(2025, 3, 4, 9, 25), count=3000, duplicates=0.05, bad=0.05, late=0.02)
    symbols = ["COIN", "MARA", "BINANCE:BTCUSDT"]
    first = raw_bytes(simulate(symbols, seed=7, **args))
    second = raw_bytes(simulate(symbols, seed=7, **args))
    other = raw_bytes(simulate(symbols, seed=8, **args))
    assert len(first) == 3000
    assert first == second
    assert first != other
    # a shorter run is a prefix of a longer one
    assert raw_bytes(simulate(symbols, seed=7, **{**args, "count": 500})) == first[:500]


def test_prices_are_positive_and_at_each_symbols_level():
    ticks = list(
        simulate(
            ["COIN", "MARA", "MSTR", "BLK", "BINANCE:BTCUSDT"], 1, ms(2025, 3, 4, 9, 30), 40_000
        )
    )
    by_symbol: dict[str, list[Tick]] = {}
    for t in ticks:
        by_symbol.setdefault(t.symbol, []).append(t)
    # the level wanders (a mean-reverting walk of daily moves, stationary spread about
    # 0.3-0.45 in log for these vols, 0.08 for BLK) around the profile's base price
    levels = {
        "COIN": (250 / 3, 250 * 3),
        "MARA": (17.5 / 3, 17.5 * 3),
        "MSTR": (330 / 3, 330 * 3),
        "BLK": (950 / 1.5, 950 * 1.5),
        "BINANCE:BTCUSDT": (95_000 / 3, 95_000 * 3),
    }
    for symbol, (lo, hi) in levels.items():
        prices = [t.price for t in by_symbol[symbol]]
        assert all(p > 0 and math.isfinite(p) for p in prices)
        assert lo < statistics.median(prices) < hi, symbol

    # price moves are volatility-shaped: BLK (low vol) moves less than MSTR (very high vol)
    def spread(symbol: str) -> float:
        ps = [t.price for t in by_symbol[symbol]]
        return (max(ps) - min(ps)) / statistics.median(ps)

    assert spread("BLK") < spread("MSTR")
    # every tick is valid contract 1 and its id is the content id
    for t in ticks[:2000]:
        assert parse_tick(encode_tick(t), t.symbol.encode(), NOW_MS) == t


def test_trade_sizes_are_round_lot_ish_with_a_heavy_tail():
    ticks = list(simulate(["COIN"], 3, ms(2025, 3, 4, 9, 30), 20_000))
    sizes = Counter(t.volume for t in ticks)
    assert all(v > 0 and v == int(v) for v in sizes)
    assert {1.0, 5.0, 10.0, 100.0, 250.0, 500.0} <= set(sizes)
    assert sizes.most_common(1)[0][0] == 100.0
    assert sum(n for v, n in sizes.items() if v % 100 == 0) / len(ticks) > 0.5
    big = sum(n for v, n in sizes.items() if v >= 5000)
    assert 0 < big / len(ticks) < 0.05
    crypto = list(simulate(["BINANCE:ETHUSDT"], 3, ms(2025, 3, 4), 2000))
    assert all(0 < t.volume < 10_000 for t in crypto)
    assert len({t.volume for t in crypto}) > 1000  # fractional, not lots


def test_stocks_trade_only_in_sessions_and_crypto_around_the_clock():
    # Friday noon to Monday noon, across the 2025 switch to daylight time (Sunday 9 March)
    start, end = ms(2025, 3, 7, 12), ms(2025, 3, 10, 12)
    ticks = list(simulate(["BLK", "MARA", "BINANCE:BTCUSDT"], 5, start, end_ms=end, intensity=0.02))
    stocks = [t for t in ticks if t.symbol != "BINANCE:BTCUSDT"]
    crypto = [t for t in ticks if t.symbol == "BINANCE:BTCUSDT"]
    assert stocks and crypto
    assert all(start <= t.ts < end for t in ticks)
    sessions = Counter()
    for t in stocks:
        local = datetime.fromtimestamp(t.ts / 1000, NY)
        assert local.weekday() < 5, local
        hhmm = local.hour * 60 + local.minute
        assert 4 * 60 <= hhmm < 20 * 60, local
        sessions["regular" if 570 <= hhmm < 960 else "extended"] += 1
    assert sessions["regular"] > 5 * sessions["extended"] > 0
    weekend = [t for t in crypto if datetime.fromtimestamp(t.ts / 1000, NY).weekday() >= 5]
    assert len(weekend) > 0.5 * len(crypto)  # two of the three days are a weekend
    # Monday pre-market opens at 04:00 New York time, i.e. 08:00 UTC after the switch
    monday = [t for t in stocks if datetime.fromtimestamp(t.ts / 1000, NY).weekday() == 0]
    assert datetime.fromtimestamp(monday[0].ts / 1000, UTC).hour == 8


def test_trades_arrive_at_roughly_the_profile_rate():
    start = ms(2025, 3, 4, 11)  # mid-session, flat intensity
    ticks = list(simulate(["COIN"], 11, start, end_ms=start + 600_000))
    rate = len(ticks) / 600
    assert abs(rate - profile_for("COIN").trades_per_s) < 0.6
    gaps = [b.ts - a.ts for a, b in zip(ticks, ticks[1:], strict=False)]
    assert statistics.pstdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.15)  # exponential


def test_unknown_symbols_get_a_deterministic_profile():
    a, b = profile_for("ZZTOP"), profile_for("ZZTOP")
    assert a == b and 5 <= a.price <= 500 and not a.crypto
    assert profile_for("KRAKEN:FOOBAR").crypto
    assert profile_for("ZZTOP") != profile_for("ZZTOQ")


def test_fault_injection_proportions():
    n = 20_000
    p = dict(duplicates=0.04, out_of_order=0.03, late=0.02, too_late=0.01, bad=0.05)
    items = list(islice(simulate(["COIN", "MARA"], 2, ms(2025, 3, 4, 9, 30), **p), n))
    ticks = [i for i in items if isinstance(i, Tick)]
    raw = [i for i in items if not isinstance(i, Tick)]
    ids = Counter(t.id for t in ticks)
    dups = sum(c - 1 for c in ids.values())
    trades = len(ticks) - dups
    assert dups / trades == pytest.approx(0.04, abs=0.008)
    assert len(raw) / trades == pytest.approx(0.05, abs=0.008)
    late = too_late = swapped = 0
    clock: dict[str, int] = {}
    seen: set[str] = set()
    for t in ticks:
        if t.id in seen:
            continue
        seen.add(t.id)
        behind = clock.get(t.symbol, t.ts) - t.ts
        if behind > 86_400_000:
            too_late += 1
        elif behind >= 300_000 - 1000:
            late += 1
        elif behind > 0:
            swapped += 1
        clock[t.symbol] = max(clock.get(t.symbol, t.ts), t.ts)
    assert too_late / trades == pytest.approx(0.01, abs=0.004)
    assert late / trades == pytest.approx(0.02, abs=0.005)
    assert swapped / trades == pytest.approx(0.03, abs=0.01)


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_each_bad_kind_is_rejected_with_its_reason(kind):
    tick = next(iter(simulate(["COIN"], 1, ms(2025, 3, 4, 10))))
    key, value = bad_record(kind, tick)
    with pytest.raises(BadTick) as caught:
        parse_tick(value, key.encode(), NOW_MS)
    assert caught.value.reason == BAD_KINDS[kind]


def test_bad_records_in_a_stream_cover_every_kind():
    items = simulate(["COIN", "BINANCE:BTCUSDT"], 4, ms(2025, 3, 4, 10), 3000, bad=0.2)
    reasons = Counter()
    for item in items:
        if not isinstance(item, Tick):
            with pytest.raises(BadTick) as caught:
                parse_tick(item[1], item[0].encode(), NOW_MS)
            reasons[caught.value.reason] += 1
    assert set(reasons) == set(BAD_KINDS.values())


def test_simulate_rejects_bad_probabilities():
    with pytest.raises(ValueError, match="duplicates"):
        simulate(["COIN"], duplicates=1.5)
    with pytest.raises(ValueError, match="late"):
        simulate(["COIN"], late=0.7, too_late=0.6)


def test_finnhub_frame_ids_count_identical_trades_within_a_frame():
    trade = {"s": "COIN", "p": 250, "t": 1741100400123, "v": 100, "c": ["1", "12"]}
    frame = {"type": "trade", "data": [trade, dict(trade), {**trade, "s": "MARA", "p": 17.5}]}
    items = trades_from_frame(frame, NOW_MS)
    assert [i.symbol for i in items] == ["COIN", "COIN", "MARA"]
    assert items[0].id == tick_id("COIN", 1741100400123, 250.0, 100.0, ("1", "12"), 0)
    assert items[1].id == tick_id("COIN", 1741100400123, 250.0, 100.0, ("1", "12"), 1)
    assert items[0].id != items[1].id
    assert items[0].conditions == ("1", "12") and items[0].source == "finnhub-ws"
    # the same frame re-sent gives the same ids
    assert trades_from_frame(frame, NOW_MS) == items
    # a broken trade comes back raw, for the DLQ
    broken = trades_from_frame({"type": "trade", "data": [{**trade, "p": 0}]}, NOW_MS)
    assert broken[0][0] == "COIN" and isinstance(broken[0][1], bytes)


def test_redact_hides_the_token():
    assert redact("wss://ws.finnhub.io?token=abc123&x=1") == "wss://ws.finnhub.io?token=***&x=1"
    assert "abc123" not in redact("GET /api/v1/quote?symbol=A&token=abc123")


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


class FakeClock:
    """A monotonic clock that moves only when the pacer waits (or a test says so): the
    pacer's waits are then exact, whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []
        self.stopped = False

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return time.time_ns()

    def is_set(self) -> bool:
        return self.stopped

    def wait(self, delay: float) -> bool:  # threading.Event.wait: True when stopped
        self.waits.append(round(delay, 6))
        self.now += delay
        return self.stopped


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    import types

    from flows.ingest import pacing

    fake = FakeClock()
    monkeypatch.setattr(
        pacing, "time", types.SimpleNamespace(monotonic=fake.monotonic, time_ns=fake.time_ns)
    )
    return fake


def test_pacer_follows_event_time_at_speed_and_fixed_rate(clock: FakeClock):
    pacer = Pacer(clock, speed=10.0)  # type: ignore[arg-type]
    for ts in (0, 1000, 500, 3000):  # 3 s of event time at 10x: 0.3 s; the late tick does not wait
        assert pacer.wait(1_741_100_400_000 + ts)
    assert clock.waits == [0.1, 0.2]
    clock.waits.clear()
    pacer = Pacer(clock, rate=50)  # type: ignore[arg-type]
    for _ in range(11):
        assert pacer.wait(None)
    assert clock.waits == [0.02] * 10  # the first goes at once
    clock.stopped = True
    assert not pacer.wait(None)


def test_identical_trades_in_the_same_millisecond_get_distinct_ids():
    ticks = list(simulate(["MARA"], 1, ms(2025, 3, 4, 10), 20_000, intensity=20))
    same_content = Counter((t.ts, t.price, t.volume) for t in ticks)
    assert any(n > 1 for n in same_content.values())  # genuinely identical trades happen
    assert len({t.id for t in ticks}) == len(ticks)


def test_pacer_with_an_origin_waits_out_the_quiet_time_before_the_first_tick(clock: FakeClock):
    pacer = Pacer(clock, speed=10.0, origin_ms=1_741_100_400_000)  # type: ignore[arg-type]
    assert pacer.wait(1_741_100_400_000 + 2000)  # 2 s of event time after the origin: 0.2 s
    assert clock.waits == [0.2]


def test_a_bad_record_with_a_future_ts_does_not_hold_back_pacing(clock: FakeClock):
    from flows.ingest.pacing import event_ts
    from flows.ingest.ticks import Tick

    t0 = 1_741_100_400_000
    items = [
        Tick("COIN", t0, 1.0, 1.0, "a"),
        (b"COIN", b'{"symbol": "COIN", "price": 1, "volume": 1, "ts": 4102444800000}'),
        Tick("COIN", t0 + 1000, 1.0, 1.0, "b"),
    ]
    pacer = Pacer(clock, speed=100.0)  # type: ignore[arg-type]
    for item in items:
        assert pacer.wait(event_ts(item))
    assert clock.waits == [0.01]  # 1 s of event time at 100x, not 75 years


def test_warmup_history_is_sparse_and_leads_into_the_session_on_one_price_path():
    import math
    from datetime import UTC, datetime

    from flows.ingest import simulate

    session_open = int(datetime(2025, 3, 4, 14, 30, tzinfo=UTC).timestamp() * 1000)
    start = session_open - 14 * 86_400_000
    ticks = list(
        simulate(["COIN"], seed=3, start_ms=start, end_ms=session_open + 3_600_000,
                 warmup_until_ms=session_open, warmup_intensity=0.01)
    )  # fmt: skip
    before = [t for t in ticks if t.ts < session_open]
    after = [t for t in ticks if t.ts >= session_open]
    # ~9 sessions of history at 1% vs one hour at full rate (COIN: ~6 trades/s)
    assert 0 < len(before) < 0.1 * len(after) * 9 * 6.5
    assert len(after) > 10_000
    # one continuous path: the session opens near the last historical price
    assert abs(math.log(after[0].price / before[-1].price)) < 0.25


def test_pacing_starts_at_the_origin_not_during_the_unpaced_warmup(clock: FakeClock):
    from flows.ingest.ticks import Tick

    origin = 1_741_100_400_000
    pacer = Pacer(clock, speed=1.0, origin_ms=origin)  # type: ignore[arg-type]
    for i in range(3):  # history: immediate
        assert pacer.wait(Tick("COIN", origin - 86_400_000 + i, 1.0, 1.0, str(i)).ts)
    assert clock.waits == []
    clock.now += 0.3  # producing history took a while
    assert pacer.wait(origin)  # the first session tick starts the clock
    assert pacer.wait(origin + 400)  # 0.4 s later in event time: waits 0.4 s, not 0.1 s
    assert clock.waits == [0.4]


def test_last_open_is_the_latest_weekday_0930_new_york_at_or_before_now():
    from flows.ingest.sim import last_open

    def utc(*args: int) -> int:
        return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)

    # Saturday noon: Friday's open (EST, 14:30 UTC); Monday 08:00 ET: the Friday before
    assert last_open(utc(2026, 12, 5, 17, 0)) == utc(2026, 12, 4, 14, 30)
    assert last_open(utc(2026, 12, 7, 13, 0)) == utc(2026, 12, 4, 14, 30)
    # during a session, today's; at the open itself, that open
    assert last_open(utc(2026, 12, 8, 16, 0)) == utc(2026, 12, 8, 14, 30)
    assert last_open(utc(2026, 12, 8, 14, 30)) == utc(2026, 12, 8, 14, 30)
    # in summer time the open is 13:30 UTC
    assert last_open(utc(2026, 7, 1, 20, 0)) == utc(2026, 7, 1, 13, 30)


def test_a_live_edge_pacer_holds_a_tick_until_its_time(clock: FakeClock):
    from flows.ingest.pacing import now_ms

    now = now_ms()
    fast = Pacer(clock, speed=1e9)  # type: ignore[arg-type]  # an hour of event time is nothing
    assert fast.wait(now - 60_000) and fast.wait(now + 3_600_000)
    assert clock.waits == []
    live = Pacer(clock, speed=1e9, live_edge=True)  # type: ignore[arg-type]
    assert live.wait(now - 60_000)  # the past goes out at speed
    assert clock.waits == []
    assert live.wait(now + 3_600_000)  # an hour ahead: held until its time
    (held,) = clock.waits
    assert 3_590 < held <= 3_600


def test_warmup_from_is_a_date_time_or_a_duration_before_the_start():
    from flows.errors import StockpipeError
    from flows.ingest.command import _parse_start, _warmup_from

    start = int(datetime(2026, 12, 4, 14, 30, tzinfo=UTC).timestamp() * 1000)
    assert _warmup_from("30d", start) == start - 30 * 86_400_000
    assert _warmup_from("90m", start) == start - 90 * 60_000
    assert _warmup_from("2026-11-04T14:30:00Z", start) == start - 30 * 86_400_000
    with pytest.raises(
        StockpipeError, match=r"--warmup-from 'yesterday' is not an ISO .* duration"
    ):
        _warmup_from("yesterday", start)
    with pytest.raises(StockpipeError, match=r"--start 'soon' is not an ISO .*last-session"):
        _parse_start("soon")
