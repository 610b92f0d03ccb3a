"""A seeded market simulator: realistic trades for any symbol, plus optional faults.

Prices follow geometric Brownian motion with Merton jumps; trades arrive as a
Poisson process per symbol whose intensity follows the session: NYSE pre-market
(04:00-09:30 America/New_York, thin), regular hours (09:30-16:00, busiest near
the open and the close) and post-market (16:00-20:00, thin), nothing at night
or on weekends. Crypto pairs (`X:Y`, e.g. `BINANCE:BTCUSDT`) trade around the
clock. Prices move only while a market is open, plus an overnight gap.

`simulate(...)` is a pure, deterministic generator: the same arguments give
byte-identical messages (ids included). Wall-clock pacing is the caller's
business (see `flows.ingest.command`).

Fault injection, for tests and demos (each a probability per simulated trade):
`duplicates` (an exact copy a few messages later), `out_of_order` (swapped with
the symbol's next trade), `late` (event time 5-15 min back: restates a bar),
`too_late` (2-5 days back: beyond the restate horizon), `bad` (an extra record
breaking contract 1, cycling through every kind in `BAD_KINDS`).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

import orjson

from flows.ingest.kafka_out import Item
from flows.ingest.ticks import Tick, tick_id

SOURCE = "sim"
NEW_YORK = ZoneInfo("America/New_York")
_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 86_400_000
# Variance clocks: a stock's annual volatility accrues over 252 regular sessions
# of 6.5 h; a crypto pair's over calendar time.
_STOCK_YEAR_MS = 252 * 6.5 * _MS_PER_HOUR
_CRYPTO_YEAR_MS = 365 * 24 * _MS_PER_HOUR
_OVERNIGHT_VARIANCE_MS = 1.5 * _MS_PER_HOUR  # an overnight gap moves like 1.5 h of trading


@dataclass(frozen=True)
class Profile:
    """How one symbol trades."""

    price: float  # starting price level
    vol: float  # annualised volatility
    trades_per_s: float  # mean arrival rate in the regular session (crypto: always)
    jumps_per_year: float  # Merton jump intensity
    jump_mean: float  # mean log jump size
    jump_std: float  # std of the log jump size
    spread_bps: float  # quoted spread; trades bounce between bid and ask
    lot_mult: int = 1  # cheap stocks trade in larger round lots
    crypto: bool = False


PROFILES: dict[str, Profile] = {
    "COIN": Profile(250.0, 0.75, 6.0, 12, -0.01, 0.05, 3.0),
    "MARA": Profile(17.5, 0.95, 8.0, 14, -0.015, 0.06, 6.0, lot_mult=5),
    "MSTR": Profile(330.0, 1.10, 5.0, 16, -0.01, 0.07, 4.0),
    "BLK": Profile(950.0, 0.22, 1.5, 3, -0.005, 0.02, 2.0),
    "AAPL": Profile(230.0, 0.25, 12.0, 3, -0.005, 0.02, 1.0),
}
_CRYPTO_PROFILES: dict[str, Profile] = {
    "BTC": Profile(95_000.0, 0.55, 15.0, 10, -0.01, 0.04, 1.0, crypto=True),
    "ETH": Profile(3_400.0, 0.70, 10.0, 12, -0.01, 0.05, 1.5, crypto=True),
}

# kind -> the `BadTick.reason` that `flows.ingest.ticks.parse_tick` gives it
BAD_KINDS: dict[str, str] = {
    "negative-price": "negative-price",
    "zero-price": "zero-price",
    "nan-price": "non-finite-price",
    "string-price": "price-not-number",
    "missing-price": "missing-price",
    "negative-volume": "negative-volume",
    "ts-in-seconds": "ts-not-integer",
    "ts-before-2000": "ts-before-2000",
    "future-ts": "future-ts",
    "missing-ts": "missing-ts",
    "bad-symbol": "bad-symbol",
    "missing-symbol": "missing-symbol",
    "key-mismatch": "key-mismatch",
    "bad-conditions": "bad-conditions",
    "bad-id": "bad-id",
    "invalid-json": "invalid-json",
    "not-an-object": "not-an-object",
    "empty-message": "empty-message",
}


def is_crypto(symbol: str) -> bool:
    """`EXCHANGE:PAIR` symbols trade 24/7; everything else follows the NYSE sessions."""
    return ":" in symbol


def _unit_floats(symbol: str) -> list[float]:
    digest = hashlib.blake2b(symbol.encode(), digest_size=16).digest()
    return [int.from_bytes(digest[i : i + 4], "big") / 2**32 for i in range(0, 16, 4)]


def profile_for(symbol: str) -> Profile:
    """The known profile of a symbol, or a deterministic one derived from its name."""
    if symbol in PROFILES:
        return PROFILES[symbol]
    u = _unit_floats(symbol)
    if is_crypto(symbol):
        pair = symbol.split(":", 1)[1]
        for base, profile in _CRYPTO_PROFILES.items():
            if pair.startswith(base):
                return profile
        price = math.exp(math.log(0.05) + u[0] * math.log(5000 / 0.05))
        return Profile(price, 0.5 + 0.7 * u[1], 2.0 + 8.0 * u[2], 12, -0.01, 0.06, 5.0, crypto=True)
    price = math.exp(math.log(5.0) + u[0] * math.log(500 / 5.0))
    return Profile(
        price,
        0.2 + 0.6 * u[1],
        0.5 + 4.0 * u[2],
        4 + 10 * u[3],
        -0.01,
        0.03 + 0.03 * u[3],
        2.0 + 8.0 * u[1],
        lot_mult=5 if price < 20 else 1,
    )


def _price_decimals(level: float) -> int:
    """US stocks quote in cents above $1 and in 1/100 cent below; crypto by magnitude."""
    if level >= 1000:
        return 2
    if level >= 1:
        return 2 if level >= 10 else 4
    return 6


# Session shape of a stock's day: (start, end) local hours, arrival intensity
# relative to the regular session, and how much the price moves per hour.
_STOCK_DAY = [
    (4.0, 9.5, 0.08, 0.35),  # pre-market
    (9.5, 10.0, 1.8, 1.3),  # the open
    (10.0, 15.5, 1.0, 1.0),
    (15.5, 16.0, 1.5, 1.2),  # into the close
    (16.0, 20.0, 0.06, 0.35),  # post-market
]


def _stock_segments(start_ms: int) -> Iterator[tuple[int, int, float, float]]:
    """(start_ms, end_ms, intensity, variance weight) of every open stretch from `start_ms` on."""
    day: date = datetime.fromtimestamp(start_ms / 1000, NEW_YORK).date()
    while True:
        if day.weekday() < 5:
            midnight = datetime(day.year, day.month, day.day, tzinfo=NEW_YORK)
            for lo, hi, intensity, weight in _STOCK_DAY:
                seg_lo = int((midnight + timedelta(hours=lo)).timestamp() * 1000)
                seg_hi = int((midnight + timedelta(hours=hi)).timestamp() * 1000)
                if seg_hi > start_ms:
                    yield max(seg_lo, start_ms), seg_hi, intensity, weight
        day += timedelta(days=1)


def last_open(now_ms: int) -> int:
    """Epoch ms of the latest regular-session open (09:30 New York, a weekday) at or before `now_ms`.

    The session a stock simulator started there shows first: during a session, today's;
    at night or at a weekend, the last one (the simulator's calendar: every weekday).
    """
    day: date = datetime.fromtimestamp(now_ms / 1000, NEW_YORK).date()
    while True:
        if day.weekday() < 5:
            midnight = datetime(day.year, day.month, day.day, tzinfo=NEW_YORK)
            opened = int((midnight + timedelta(hours=9.5)).timestamp() * 1000)
            if opened <= now_ms:
                return opened
        day -= timedelta(days=1)


def _crypto_segments(start_ms: int) -> Iterator[tuple[int, int, float, float]]:
    while True:  # one open-ended stretch, chopped by days so nothing ever overflows
        yield start_ms, start_ms + _MS_PER_DAY, 1.0, 1.0
        start_ms += _MS_PER_DAY


class _SymbolSim:
    """One symbol's trade arrivals (piecewise-constant Poisson) and price path."""

    def __init__(
        self,
        symbol: str,
        seed: int,
        start_ms: int,
        intensity: float = 1.0,
        warmup: tuple[int, float] | None = None,
    ):
        self.symbol = symbol
        self.p = profile_for(symbol)
        self.rng = random.Random(f"{seed}:{symbol}")
        self.segments = (_crypto_segments if self.p.crypto else _stock_segments)(start_ms)
        self.seg = next(self.segments)
        self.t = float(start_ms)
        self.per_ms = self.p.trades_per_s * intensity / 1000.0
        # (until_ms, intensity): a sparser stretch before `until_ms`, e.g. months of
        # history leading into a full-rate session along one continuous price path
        self.warmup_until = warmup[0] if warmup else None
        self.warmup_per_ms = self.p.trades_per_s * warmup[1] / 1000.0 if warmup else 0.0
        year_ms = _CRYPTO_YEAR_MS if self.p.crypto else _STOCK_YEAR_MS
        self.var_per_ms = self.p.vol**2 / year_ms
        self.jumps_per_ms = self.p.jumps_per_year / year_ms
        self.jump_comp = math.exp(self.p.jump_mean + self.p.jump_std**2 / 2) - 1
        self.log_mid = math.log(self.p.price)
        self.decimals = _price_decimals(self.p.price)
        self.last_ts = -1
        self.seen_at_ts: Counter[tuple[float, float]] = Counter()

    def next_arrival(self) -> tuple[float, float]:
        """Event time of the next trade, and the variance time (ms) elapsed until it."""
        need = self.rng.expovariate(1.0)  # unit-rate exponential, spent at the session's rate
        tau = 0.0
        while True:
            lo, hi, intensity, weight = self.seg
            if self.t < lo:  # the market was closed in between: an overnight gap
                tau += _OVERNIGHT_VARIANCE_MS
                self.t = float(lo)
            per_ms, until = self.per_ms, hi
            if self.warmup_until is not None and self.t < self.warmup_until:
                per_ms, until = self.warmup_per_ms, min(hi, self.warmup_until)
            rate = per_ms * intensity
            if self.t + need / rate < until:
                dt = need / rate
                self.t += dt
                return self.t, tau + dt * weight
            need -= (until - self.t) * rate
            tau += (until - self.t) * weight
            self.t = float(until)
            if until == hi:
                self.seg = next(self.segments)

    def next_trade(self) -> Tick:
        t, tau = self.next_arrival()
        rng, p = self.rng, self.p
        # GBM step over the elapsed variance time, plus (rarely) a Merton jump
        var = self.var_per_ms * tau
        step = -0.5 * var - self.jumps_per_ms * self.jump_comp * tau
        step += math.sqrt(var) * rng.gauss(0.0, 1.0)
        if rng.random() < -math.expm1(-self.jumps_per_ms * tau):
            step += rng.gauss(p.jump_mean, p.jump_std)
        self.log_mid += step
        mid = math.exp(self.log_mid)
        half_spread = mid * p.spread_bps / 20_000
        raw = mid + half_spread if rng.random() < 0.5 else mid - half_spread
        price = max(round(raw, self.decimals), 10.0**-self.decimals)
        volume = self._size(mid)
        ts = int(t)
        # ids: identical trades in the same millisecond count as one upstream message
        if ts != self.last_ts:
            self.last_ts = ts
            self.seen_at_ts.clear()
        occurrence = self.seen_at_ts[(price, volume)]
        self.seen_at_ts[(price, volume)] += 1
        return Tick(
            self.symbol,
            ts,
            price,
            volume,
            tick_id(self.symbol, ts, price, volume, (), occurrence),
            SOURCE,
        )

    def _size(self, mid: float) -> float:
        rng = self.rng
        if self.p.crypto:  # notional in dollars is lognormal around $500
            notional = math.exp(rng.gauss(math.log(500.0), 1.6))
            return max(round(notional / mid, 6), 1e-6)
        u = rng.random()
        if u < 0.42:  # odd lots, mostly small round numbers
            return float(
                rng.choice(
                    (1, 1, 1, 2, 3, 5, 5, 10, 10, 15, 20, 25, 30, 50, 75, rng.randint(1, 99))
                )
            )
        if u < 0.95:  # round lots
            return float(
                self.p.lot_mult
                * rng.choice((100, 100, 100, 100, 200, 200, 250, 300, 400, 500, 500, 1000))
            )
        # blocks: heavy (Pareto) tail, in hundreds
        return float(min(100 * round(5 * rng.paretovariate(1.2)), 250_000) * self.p.lot_mult)


def _trades(
    symbols: Sequence[str],
    seed: int,
    start_ms: int,
    end_ms: int | None,
    intensity: float,
    warmup: tuple[int, float] | None = None,
) -> Iterator[Tick]:
    """Every symbol's trades merged in event-time order (ties by symbol order)."""
    sims = [_SymbolSim(s, seed, start_ms, intensity, warmup) for s in symbols]
    heap = [(tick.ts, i, tick) for i, sim in enumerate(sims) for tick in [sim.next_trade()]]
    heapq.heapify(heap)
    while heap:
        ts, i, tick = heap[0]
        if end_ms is not None and ts >= end_ms:
            return
        yield tick
        nxt = sims[i].next_trade()
        heapq.heapreplace(heap, (nxt.ts, i, nxt))


def _retime(tick: Tick, ts: int) -> Tick:
    """The same trade reported with another event time (a new trade, so a new id)."""
    new_id = tick_id(tick.symbol, ts, tick.price, tick.volume, tick.conditions)
    return tick._replace(ts=ts, id=new_id)


def bad_record(kind: str, tick: Tick) -> tuple[str, bytes | None]:
    """A (key, value) that breaks contract 1 in the way `kind` names (see `BAD_KINDS`)."""
    obj: dict = {"symbol": tick.symbol, "price": tick.price, "volume": tick.volume, "ts": tick.ts}
    obj["id"] = tick.id
    obj["source"] = SOURCE
    key = tick.symbol
    match kind:
        case "negative-price":
            obj["price"] = -tick.price
        case "zero-price":
            obj["price"] = 0
        case "nan-price":  # what json.dumps writes for float('nan'): not JSON, but common
            obj["price"] = "__nan__"
            return key, orjson.dumps(obj).replace(b'"__nan__"', b"NaN")
        case "string-price":
            obj["price"] = str(tick.price)
        case "missing-price":
            del obj["price"]
        case "negative-volume":
            obj["volume"] = -(tick.volume or 1.0)
        case "ts-in-seconds":
            obj["ts"] = tick.ts / 1000
        case "ts-before-2000":  # integer seconds where milliseconds belong
            obj["ts"] = tick.ts // 1000
        case "future-ts":  # microseconds where milliseconds belong
            obj["ts"] = tick.ts * 1000
        case "missing-ts":
            del obj["ts"]
        case "bad-symbol":
            obj["symbol"] = "$" + tick.symbol.lower()
        case "missing-symbol":
            del obj["symbol"]
        case "key-mismatch":
            obj["symbol"] = tick.symbol + ".X" if len(tick.symbol) < 30 else "ZZZ"
        case "bad-conditions":
            obj["conditions"] = "1,12"
        case "bad-id":
            obj["id"] = ""
        case "invalid-json":
            return key, orjson.dumps(obj)[:-9]
        case "not-an-object":
            return key, orjson.dumps([tick.symbol, tick.price, tick.volume, tick.ts])
        case "empty-message":
            return key, None
        case _:
            raise ValueError(f"unknown bad record kind {kind!r}; known: {', '.join(BAD_KINDS)}")
    return key, orjson.dumps(obj)


def _with_faults(
    trades: Iterator[Tick],
    rng: random.Random,
    duplicates: float,
    out_of_order: float,
    late: float,
    too_late: float,
    bad: float,
) -> Iterator[Item]:
    kinds = list(BAD_KINDS)
    n_bad = 0
    pending_dups: list[tuple[int, int, Tick]] = []  # (due after trade n, seq, copy)
    held: dict[str, Tick] = {}  # out-of-order: a trade waiting for the symbol's next one

    def emit(tick: Tick) -> Iterator[Item]:
        if tick.symbol in held:
            yield tick
            yield held.pop(tick.symbol)
        elif out_of_order and rng.random() < out_of_order:
            held[tick.symbol] = tick
        else:
            yield tick

    for n, tick in enumerate(trades, 1):
        r = rng.random()
        if r < too_late:
            tick = _retime(tick, tick.ts - rng.randint(2 * _MS_PER_DAY, 5 * _MS_PER_DAY))
        elif r < too_late + late:
            tick = _retime(tick, tick.ts - rng.randint(5 * 60_000, 15 * 60_000))
        yield from emit(tick)
        if duplicates and rng.random() < duplicates:
            heapq.heappush(pending_dups, (n + rng.randint(0, 3), n, tick))
        if bad and rng.random() < bad:
            yield bad_record(kinds[n_bad % len(kinds)], tick)
            n_bad += 1
        while pending_dups and pending_dups[0][0] <= n:
            yield heapq.heappop(pending_dups)[2]
    for _, _, tick in sorted(pending_dups):
        yield tick
    yield from held.values()


def simulate(
    symbols: Sequence[str],
    seed: int = 0,
    start_ms: int | None = None,
    count: int | None = None,
    end_ms: int | None = None,
    *,
    duplicates: float = 0.0,
    out_of_order: float = 0.0,
    late: float = 0.0,
    too_late: float = 0.0,
    bad: float = 0.0,
    intensity: float = 1.0,
    warmup_until_ms: int | None = None,
    warmup_intensity: float = 0.01,
) -> Iterator[Item]:
    """Simulated trades for `symbols`, in event-time order, deterministic for a seed.

    symbols: what to trade (known profiles for COIN, MARA, MSTR, BLK, AAPL, BTC/ETH
        pairs; any other symbol gets a deterministic profile derived from its name).
    seed: the same seed and arguments give byte-identical messages, ids included.
    start_ms: event time of the start, epoch ms (default: now). Stocks then wait
        for the next session; crypto trades at once.
    count: stop after this many messages (injected faults included).
    end_ms: stop at this event time (exclusive). Neither: never stop.
    duplicates, out_of_order, late, too_late, bad: fault probabilities per
        simulated trade (see the module docstring).
    intensity: scales every symbol's trade arrival rate (0.1: a tenth of the trades).
    warmup_until_ms: before this event time trade at `warmup_intensity` instead
        (history leading into a full-rate session, on one price path).

    Yields `Tick`s, and `(key, raw bytes | None)` for injected bad records.
    """
    for name, p in [("duplicates", duplicates), ("out_of_order", out_of_order), ("late", late),
                    ("too_late", too_late), ("bad", bad)]:  # fmt: skip
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability between 0 and 1, got {p!r}")
    if late + too_late > 1.0:
        raise ValueError(f"late + too_late must not exceed 1, got {late + too_late!r}")
    if not symbols:
        raise ValueError("simulate needs at least one symbol")
    if start_ms is None:
        start_ms = int(datetime.now(UTC).timestamp() * 1000)
    if intensity <= 0:
        raise ValueError(f"intensity must be > 0, got {intensity!r}")
    if warmup_until_ms is not None and warmup_intensity <= 0:
        raise ValueError(f"warmup_intensity must be > 0, got {warmup_intensity!r}")
    warmup = (warmup_until_ms, warmup_intensity) if warmup_until_ms is not None else None
    trades = _trades(list(symbols), seed, start_ms, end_ms, intensity, warmup)
    rng = random.Random(f"{seed}:faults")
    items: Iterator[Item] = _with_faults(trades, rng, duplicates, out_of_order, late, too_late, bad)
    if count is not None:
        items = islice(items, count)
    return items
