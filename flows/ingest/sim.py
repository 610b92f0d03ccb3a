"""A seeded market simulator: realistic trades for any symbol, plus optional faults.

Calendar. Plain tickers trade only on NYSE sessions from exchange_calendars (XNYS,
see `flows.ingest.calendar`, the same source as dbt's seed): no trade on weekends
or holidays, the regular session 09:30-16:00 New York (13:00 on half days),
pre-market from 04:00 and post-market until 20:00 (17:00 on half days). Crypto
pairs (`X:Y`, e.g. `BINANCE:BTCUSDT`) trade around the clock. `last_open` (the
producer's `--start last-session`) and warm-ups follow the same calendar.

Arrivals. A Poisson process per symbol whose intensity follows the day: pre- and
post-market thin (8 % and 6 % of the regular rate), the first half hour 1.8x and
the last 1.5x the rate of the middle of the session.

Prices. The mid is a pure function of (seed, symbol, time), so a restarted run
continues the path a stopped one left. Each day starts at an anchor: a seeded,
mean-reverting walk (half-life 90 days) of daily moves, each a normal move with the
day's variance plus, rarely, a Merton jump, so daily returns have the profile's
volatility and the level stays near its base. Inside a day the mid is a Brownian
bridge to the next anchor on a variance clock (pre/post-market 0.35, the open 1.3,
the close 1.2 of mid-session variance per hour; a closed night, weekend day or
holiday moves like 1.5 h), bridged per 4-minute chunk, then per second, linear in
between; the day's jump is a step at its seeded time. Trades print at the bid or
the ask (half the profile's spread away), rounded to the tick.

Conditions (UTP sale-condition codes as the feed sends them, `source` `sim`; the
rules table maps them). A stock trade's list is [settlement, trade-through
exemption, extended hours/sequence, detail], empty slots dropped:
- `@` regular settlement on every trade; a plain trade is `["@"]`.
- `I` odd lot: every trade under 100 shares (42 % of trades).
- `F` intermarket sweep: 12 % of exchange trades in the regular session, 5 % in
  extended hours; never on the TRF.
- `T` Form T: every pre-/post-market trade; `U` instead when such a trade is also
  out of sequence.
- `Z` sold out of sequence: 0.3 % of trades, reported now at the mid of 2-90 s ago.
- `W` average price: 0.05 % of trades, 2,000-50,000 shares on the TRF, 2-5 % away
  from the market (an earlier accumulation's average): volume only under the rules.
- Per session, from the listing market (`Q` Nasdaq; `N` NYSE for BLK): the opening
  cross `["@", "O"]` at 09:30 plus 0-250 ms, then the official open `["Q"]` at the
  cross's price 1-1500 ms later; the closing cross `["@", "6"]` at the close and
  the official close `["M"]`. Q and M repeat the cross's size and count in neither
  volume nor prices. They are seeded per session, so a rerun repeats them exactly.
`exchange` is a UTP participant code drawn by share of trades (`VENUES_REGULAR`:
36 % `D` FINRA TRF off-exchange, 16 % Nasdaq, ...; `VENUES_EXTENDED` for pre/post-
market). Crypto trades carry no conditions and the pair's exchange (`BINANCE`).

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

import bisect
import hashlib
import heapq
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from itertools import islice

import numpy as np
import orjson

from flows.ingest import calendar
from flows.ingest.calendar import NEW_YORK
from flows.ingest.kafka_out import Item
from flows.ingest.ticks import Tick, tick_id

SOURCE = "sim"
_MS_PER_DAY = 86_400_000


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


def _key(seed: int, symbol: str) -> list[int]:
    """The entropy of a (seed, symbol) for numpy's SeedSequence."""
    digest = hashlib.blake2b(f"{seed}:{symbol}".encode(), digest_size=16).digest()
    return [int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")]


# --- the calendar of a day's variance ---------------------------------------------------------

_HOUR_S = 3600
# Variance weights per hour of a stock's day, relative to the middle of the regular session.
_W_PRE, _W_OPEN, _W_REGULAR, _W_CLOSE, _W_POST = 0.35, 1.3, 1.0, 1.2, 0.35
_OVERNIGHT_HOURS = 1.5  # a closed stretch (a night, a weekend day, a holiday) moves like 1.5 h
# A full session day, 04:00 to 04:00, in hours of mid-session variance: the unit of a
# stock's daily variance (vol**2 / 252 per full session day).
_FULL_DAY_HOURS = (
    5.5 * _W_PRE + 0.5 * _W_OPEN + 5.5 * _W_REGULAR + 0.5 * _W_CLOSE + 4 * _W_POST
    + _OVERNIGHT_HOURS
)  # fmt: skip
_CHUNK_S = 240  # the path is bridged per day, then per 4-minute chunk, then per second


@dataclass(frozen=True)
class _Day:
    """One day stretch of a symbol's path: [start_ms, start_ms + n_s * 1000)."""

    start_ms: int  # 04:00 New York (stocks) or 00:00 UTC (crypto)
    n_s: int
    weights: tuple[tuple[int, int, float], ...]  # (first second, end second, weight per second)
    total: float  # sum of the weights, in weight-seconds


@cache
def _day(ordinal: int, crypto: bool) -> _Day:
    d = date.fromordinal(ordinal)
    if crypto:
        start = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
        return _Day(start, 86_400, ((0, 86_400, 1.0),), 86_400.0)
    start = int(datetime.combine(d, calendar.PRE_OPEN, NEW_YORK).timestamp() * 1000)
    nd = d + timedelta(days=1)
    end = int(datetime.combine(nd, calendar.PRE_OPEN, NEW_YORK).timestamp() * 1000)
    n_s = (end - start) // 1000
    s = calendar.session(d, strict=False)
    if s is None:
        w = _OVERNIGHT_HOURS * _HOUR_S / n_s
        return _Day(start, n_s, ((0, n_s, w),), _OVERNIGHT_HOURS * _HOUR_S)

    def sec(ms: int) -> int:
        return (ms - start) // 1000

    o, c, post = sec(s.open), sec(s.close), sec(s.post_close)
    night = n_s - post
    pieces = (
        (0, o, _W_PRE),
        (o, o + 1800, _W_OPEN),
        (o + 1800, c - 1800, _W_REGULAR),
        (c - 1800, c, _W_CLOSE),
        (c, post, _W_POST),
        (post, n_s, _OVERNIGHT_HOURS * _HOUR_S / night),
    )
    return _Day(start, n_s, pieces, sum((b - a) * w for a, b, w in pieces))


def _second_weights(day: _Day, lo: int, hi: int) -> np.ndarray:
    """The weight of every second in [lo, hi) of a day."""
    out = np.empty(hi - lo)
    for a, b, w in day.weights:
        a, b = max(a, lo), min(b, hi)
        if a < b:
            out[a - lo : b - lo] = w
    return out


def _day_ordinal(ts_ms: int, crypto: bool) -> int:
    if crypto:
        return ts_ms // _MS_PER_DAY + _EPOCH_ORDINAL
    local = datetime.fromtimestamp(ts_ms / 1000, NEW_YORK)
    d = local.date()
    if local.time() < calendar.PRE_OPEN:
        d -= timedelta(days=1)
    return d.toordinal()


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_BLOCK_DAYS = 256
_HALF_LIFE_DAYS = 90  # calendar days for a price level to revert halfway to its base
_MEMORY_DAYS = 1536  # the anchors' walk remembers this many days (0.5 ** (1536/90) ~ 1e-5)
_PHI = 0.5 ** (1 / _HALF_LIFE_DAYS)
_PHI_POWERS = _PHI ** np.arange(_MEMORY_DAYS)[::-1]  # oldest day first


class _Path:
    """A symbol's log mid price as a pure function of (seed, symbol, time).

    Anchors (the log mid at each day's start) are a seeded, mean-reverting walk of
    daily moves: the anchor of day d is log(base) + sum over the previous days k of
    phi**(d-1-k) * move_k, where move_k is the diffusive move plus any Merton jump of
    day k, drawn from a generator keyed by (seed, symbol, block of 256 days). Inside a
    day the diffusive part is a Brownian bridge between consecutive anchors on the
    day's variance clock, built in two levels (4-minute chunks, then seconds) with
    generators keyed by (seed, symbol, day[, chunk]); the day's jump is a step at its
    seeded time. Nothing depends on where a run starts.
    """

    def __init__(self, symbol: str, seed: int, p: Profile):
        self.key = _key(seed, symbol)
        self.crypto = p.crypto
        self.mu = math.log(p.price)
        per_day = p.vol**2 / (365 if p.crypto else 252)
        # variance per weight-second
        self.unit = per_day / (86_400 if p.crypto else _FULL_DAY_HOURS * _HOUR_S)
        self.jump_p = p.jumps_per_year / (365 if p.crypto else 252)
        self.jump_mean, self.jump_std = p.jump_mean, p.jump_std
        self.blocks: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.cur: tuple | None = None  # (ordinal, day, anchor, bridge, jump, jump_s)
        self.chunks: dict[tuple[int, int], np.ndarray] = {}

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(daily moves, jump sizes (0: none), jump positions in (0, 1)) of a block of days."""
        if b not in self.blocks:
            rng = np.random.default_rng([*self.key, 0, b])
            z = rng.standard_normal(_BLOCK_DAYS)
            hit = rng.random(_BLOCK_DAYS) < self.jump_p
            size = np.where(hit, rng.normal(self.jump_mean, self.jump_std, _BLOCK_DAYS), 0.0)
            where = rng.random(_BLOCK_DAYS)
            first = b * _BLOCK_DAYS
            var = np.array([_day(first + i, self.crypto).total for i in range(_BLOCK_DAYS)])
            moves = np.sqrt(var * self.unit) * z + size
            if len(self.blocks) > 16:
                self.blocks.clear()
            self.blocks[b] = (moves, size, where)
        return self.blocks[b]

    def _moves(self, lo: int, hi: int) -> np.ndarray:
        """The daily moves of days [lo, hi)."""
        parts = []
        for b in range(lo // _BLOCK_DAYS, (hi - 1) // _BLOCK_DAYS + 1):
            moves = self._block(b)[0]
            first = b * _BLOCK_DAYS
            parts.append(moves[max(lo - first, 0) : min(hi - first, _BLOCK_DAYS)])
        return np.concatenate(parts)

    def anchor(self, ordinal: int) -> float:
        """The log mid at the start of day `ordinal`."""
        return self.mu + float(_PHI_POWERS @ self._moves(ordinal - _MEMORY_DAYS, ordinal))

    def _enter(self, ordinal: int) -> tuple:
        day = _day(ordinal, self.crypto)
        a0, a1 = self.anchor(ordinal), self.anchor(ordinal + 1)
        _, size, where = self._block(ordinal // _BLOCK_DAYS)
        jump = float(size[ordinal % _BLOCK_DAYS])
        # the jump falls where the day's variance clock reaches its seeded position
        w = _second_weights(day, 0, day.n_s)
        clock = np.cumsum(w)
        jump_s = int(np.searchsorted(clock, where[ordinal % _BLOCK_DAYS] * clock[-1]))
        # level 1: a bridge of the diffusive part over the chunks of the day
        edges = np.arange(0, day.n_s + _CHUNK_S, _CHUNK_S).clip(max=day.n_s)
        edges = np.unique(edges)
        var = np.add.reduceat(w, edges[:-1]) * self.unit
        rng = np.random.default_rng([*self.key, 1, ordinal])
        walk = np.concatenate(([0.0], np.cumsum(np.sqrt(var) * rng.standard_normal(len(var)))))
        cum = np.concatenate(([0.0], np.cumsum(var)))
        target = a1 - a0 - jump
        bridge = walk - cum / cum[-1] * (walk[-1] - target)
        self.cur = (ordinal, day, a0, bridge, jump, jump_s)
        self.chunks.clear()
        return self.cur

    def _chunk(self, ordinal: int, day: _Day, bridge: np.ndarray, c: int) -> list[float]:
        """Level 2: the bridge at every second boundary of chunk `c` (len = seconds + 1)."""
        got = self.chunks.get((ordinal, c))
        if got is None:
            lo, hi = c * _CHUNK_S, min((c + 1) * _CHUNK_S, day.n_s)
            var = _second_weights(day, lo, hi) * self.unit
            rng = np.random.default_rng([*self.key, 2, ordinal, c])
            walk = np.concatenate(([0.0], np.cumsum(np.sqrt(var) * rng.standard_normal(hi - lo))))
            cum = np.concatenate(([0.0], np.cumsum(var)))
            got = bridge[c] + walk - cum / cum[-1] * (walk[-1] - (bridge[c + 1] - bridge[c]))
            if len(self.chunks) > 8:
                self.chunks.clear()
            got = got.tolist()
            self.chunks[(ordinal, c)] = got
        return got

    def log_mid(self, ts_ms: int) -> float:
        """The log mid price at `ts_ms` (linear between whole seconds)."""
        cur = self.cur
        if cur is None or not 0 <= ts_ms - cur[1].start_ms < cur[1].n_s * 1000:
            ordinal = _day_ordinal(ts_ms, self.crypto)
            cur = self.cur if self.cur and self.cur[0] == ordinal else self._enter(ordinal)
        ordinal, day, a0, bridge, jump, jump_s = cur
        at = (ts_ms - day.start_ms) / 1000
        s = min(int(at), day.n_s - 1)
        c = s // _CHUNK_S
        values = self._chunk(ordinal, day, bridge, c)
        i = s - c * _CHUNK_S
        frac = at - s
        diffusive = values[i] + (values[i + 1] - values[i]) * frac
        return a0 + float(diffusive) + (jump if s >= jump_s else 0.0)


# --- sessions, for trade arrivals -------------------------------------------------------------

# Arrival intensity relative to the regular session: thin pre/post-market, busy near the
# open and into the close.
_PRE, _REGULAR, _POST = "pre", "regular", "post"


def _stock_segments(start_ms: int) -> Iterator[tuple[int, int, float, str, calendar.Session]]:
    """(start_ms, end_ms, intensity, part, session) of every open stretch from `start_ms` on."""
    for s in calendar.sessions_from(start_ms):
        for lo, hi, intensity, part in (
            (s.pre_open, s.open, 0.08, _PRE),
            (s.open, s.open + 1_800_000, 1.8, _REGULAR),
            (s.open + 1_800_000, s.close - 1_800_000, 1.0, _REGULAR),
            (s.close - 1_800_000, s.close, 1.5, _REGULAR),
            (s.close, s.post_close, 0.06, _POST),
        ):
            if hi > start_ms:
                yield max(lo, start_ms), hi, intensity, part, s


def _crypto_segments(start_ms: int) -> Iterator[tuple[int, int, float, str, None]]:
    while True:  # one open-ended stretch, chopped by days so nothing ever overflows
        yield start_ms, start_ms + _MS_PER_DAY, 1.0, _REGULAR, None
        start_ms += _MS_PER_DAY


def last_open(now_ms: int) -> int:
    """Epoch ms of the latest NYSE regular-session open at or before `now_ms`.

    The session a stock simulator started there shows first: during a session, today's;
    at night, at a weekend or on a holiday, the last one (exchange_calendars XNYS).
    """
    return calendar.last_open(now_ms)


# --- trade conditions (UTP sale-condition codes) and venues --------------------------------

P_ISO = 0.12  # intermarket sweeps, of exchange-executed regular-hours trades
P_ISO_EXTENDED = 0.05
P_OUT_OF_SEQUENCE = 0.003  # Z (U in extended hours): reported late, at a stale price
P_AVERAGE_PRICE = 0.0005  # W: an average-price print, far from the market
# Venues by share of trades (UTP participant codes): D = FINRA TRF (off-exchange),
# Q = Nasdaq, P = NYSE Arca, Z/K/Y/J = Cboe BZX/EDGX/BYX/EDGA, U = MEMX, N = NYSE,
# V = IEX, X = Nasdaq PSX, B = Nasdaq BX, H = MIAX Pearl.
VENUES_REGULAR = {
    "D": 0.36, "Q": 0.16, "P": 0.09, "Z": 0.08, "K": 0.08, "U": 0.05, "N": 0.04,
    "V": 0.04, "Y": 0.03, "J": 0.02, "X": 0.02, "B": 0.02, "H": 0.01,
}  # fmt: skip
VENUES_EXTENDED = {"Q": 0.35, "P": 0.25, "D": 0.25, "K": 0.10, "Z": 0.05}
OFF_EXCHANGE = "D"
_LISTING = {"BLK": "N"}  # the listing market prints the crosses; Nasdaq for the others


def _cumulative(weights: dict[str, float]) -> tuple[list[str], list[float]]:
    names = list(weights)
    total, cum = 0.0, []
    for name in names:
        total += weights[name]
        cum.append(total)
    return names, [c / total for c in cum]


_VENUES = {part: _cumulative(v) for part, v in ((_REGULAR, VENUES_REGULAR), (_PRE, VENUES_EXTENDED), (_POST, VENUES_EXTENDED))}  # fmt: skip


class _SymbolSim:
    """One symbol's trade arrivals (piecewise-constant Poisson), prints and conditions."""

    def __init__(
        self,
        symbol: str,
        seed: int,
        start_ms: int,
        intensity: float = 1.0,
        warmup: tuple[int, float] | None = None,
    ):
        self.symbol = symbol
        self.seed = seed
        self.p = profile_for(symbol)
        self.path = _Path(symbol, seed, self.p)
        self.rng = random.Random(f"{seed}:{symbol}")
        self.start_ms = start_ms
        self.segments = (_crypto_segments if self.p.crypto else _stock_segments)(start_ms)
        self.seg = next(self.segments)
        self.t = float(start_ms)
        self.per_ms = self.p.trades_per_s * intensity / 1000.0
        # (until_ms, intensity): a sparser stretch before `until_ms`, e.g. months of
        # history leading into a full-rate session
        self.warmup_until = warmup[0] if warmup else None
        self.warmup_per_ms = self.p.trades_per_s * warmup[1] / 1000.0 if warmup else 0.0
        self.decimals = _price_decimals(self.p.price)
        self.listing = _LISTING.get(symbol, "Q")
        self.exchange = symbol.split(":", 1)[0] if self.p.crypto else None
        self.last_ts = -1
        self.seen_at_ts: Counter[tuple] = Counter()
        self.scheduled: list[tuple[int, int, tuple]] = []  # (ts, order, print): crosses, Q, M
        self.sessions_seen: set[date] = set()
        self.arrival: tuple[int, str] | None = None

    def _schedule(self, s: calendar.Session) -> None:
        """The opening cross and Q, the closing cross and M of a session (seeded per day)."""
        if s.day in self.sessions_seen:
            return
        self.sessions_seen.add(s.day)
        rng = random.Random(f"{self.seed}:{self.symbol}:{s.day.isoformat()}:cross")
        for at, cross, report in ((s.open, "O", "Q"), (s.close, "6", "M")):
            ts = at + rng.randint(0, 250)  # the cross executes just after the bell
            size = self.p.lot_mult * 100.0 * max(5, round(math.exp(rng.gauss(math.log(120), 0.7))))
            lag = rng.randint(1, 1500)  # the listing market's official report follows
            for order, stamp, codes in ((0, ts, ("@", cross)), (1, ts + lag, (report,))):
                if stamp >= self.start_ms:
                    heapq.heappush(self.scheduled, (stamp, order, (at, codes, size)))

    def next_arrival(self) -> tuple[int, str]:
        """Event time (ms) of the next ordinary trade, and the part of the day it falls in."""
        need = self.rng.expovariate(1.0)  # unit-rate exponential, spent at the session's rate
        while True:
            lo, hi, intensity, part, s = self.seg
            if s is not None:
                self._schedule(s)
            self.t = max(self.t, float(lo))
            per_ms, until = self.per_ms, hi
            if self.warmup_until is not None and self.t < self.warmup_until:
                per_ms, until = self.warmup_per_ms, min(hi, self.warmup_until)
            rate = per_ms * intensity
            if self.t + need / rate < until:
                self.t += need / rate
                return int(self.t), part
            need -= (until - self.t) * rate
            self.t = float(until)
            if until == hi:
                self.seg = next(self.segments)

    def next_trade(self) -> Tick:
        if self.arrival is None:
            self.arrival = self.next_arrival()
        if self.scheduled and self.scheduled[0][0] <= self.arrival[0]:
            ts, _, (at, codes, size) = heapq.heappop(self.scheduled)
            price = self._round(math.exp(self.path.log_mid(at)))
            return self._tick(ts, price, size, codes, self.listing)
        ts, part = self.arrival
        self.arrival = None
        return self._ordinary(ts, part)

    def _round(self, raw: float) -> float:
        return max(round(raw, self.decimals), 10.0**-self.decimals)

    def _ordinary(self, ts: int, part: str) -> Tick:
        rng, p = self.rng, self.p
        mid = math.exp(self.path.log_mid(ts))
        half_spread = mid * p.spread_bps / 20_000
        bounce = half_spread if rng.random() < 0.5 else -half_spread
        if p.crypto:
            return self._tick(ts, self._round(mid + bounce), self._size(mid), (), self.exchange)
        names, cum = _VENUES[part]
        venue = names[bisect.bisect_left(cum, rng.random())]
        extended = part != _REGULAR
        u = rng.random()
        if u < P_AVERAGE_PRICE:  # an earlier accumulation's average price, reported now
            away = rng.uniform(0.02, 0.05) * (1 if rng.random() < 0.5 else -1)
            size = float(p.lot_mult * 100 * rng.randint(20, 500))
            codes = ("@", "T", "W") if extended else ("@", "W")
            return self._tick(ts, self._round(mid * (1 + away)), size, codes, OFF_EXCHANGE)
        volume = self._size(mid)
        level2 = ""
        if venue != OFF_EXCHANGE and rng.random() < (P_ISO_EXTENDED if extended else P_ISO):
            level2 = "F"
        level3 = "T" if extended else ""
        if u < P_AVERAGE_PRICE + P_OUT_OF_SEQUENCE:  # executed seconds ago, reported now
            stale = ts - rng.randint(2_000, 90_000)
            mid = math.exp(self.path.log_mid(stale))
            level3 = "U" if extended else "Z"
        codes = tuple(c for c in ("@", level2, level3, "I" if volume < 100 else "") if c)
        return self._tick(ts, self._round(mid + bounce), volume, codes, venue)

    def _tick(
        self, ts: int, price: float, volume: float, codes: tuple[str, ...], venue: str | None
    ) -> Tick:
        # ids: identical trades in the same millisecond count as one upstream message
        if ts != self.last_ts:
            self.last_ts = ts
            self.seen_at_ts.clear()
        what = (price, volume, codes)
        occurrence = self.seen_at_ts[what]
        self.seen_at_ts[what] += 1
        tid = tick_id(self.symbol, ts, price, volume, codes, occurrence)
        return Tick(self.symbol, ts, price, volume, tid, SOURCE, codes, venue)

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
