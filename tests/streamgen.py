"""Random tick streams with every kind of trouble, and the answer a batch computation gives.

A stream is a list of (symbol, message dict) in arrival order. `expected_ticks`
replays the contract's rules the obvious way (a running max of event time for
the too-late cut, then dedup by id among the ticks accepted into bars, whose
windows are still restatable) and returns the ticks that must end up in bars,
for `helpers.batch_bars`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

BASE_MS = 1_741_100_400_000  # 2025-03-04T15:00:00Z


@dataclass
class StreamSpec:
    symbols: list[str] = field(default_factory=lambda: ["COIN", "MARA", "MSTR", "BLK"])
    ticks_per_symbol: int = 300
    max_gap_ms: int = 4_000
    p_tie: float = 0.1
    p_dup: float = 0.08
    p_swap: float = 0.08
    p_late: float = 0.03
    p_too_late: float = 0.02
    p_null_volume: float = 0.03
    p_no_id: float = 0.3
    p_far_dup: float = 0.0  # re-send any earlier tick of the symbol, however long ago
    # Event time jumps ahead by 1-3 restate horizons (a symbol that was halted, a feed that
    # came back): every closed window leaves the horizon at once, pending restatements too.
    p_jump: float = 0.0
    # A tick that puts the restate horizon (newest ts - lateness - horizon) exactly on a
    # window boundary, or 1 ms either side, then a tick exactly at that boundary or 1 ms
    # before it (or at the start of the window ending there): the too-late edge.
    p_edge: float = 0.0
    # A tick carries sale-condition codes (UTP codes, as the simulator sends them, from
    # CONDITION_MIX: regular, odd lots, Form T, average price, out of sequence, official
    # open and close, an unmapped code) with this probability.
    p_conditions: float = 0.0
    # The rules the edge ticks aim at (those of `expected_ticks` and of BarRules()).
    bar_ms: int = 60_000
    lateness_ms: int = 5_000
    restate_ms: int = 3_600_000


# Condition codes as a SIP prints them (UTP), alone and in the combinations trades carry.
CONDITION_MIX: list[list[str]] = [
    ["@"],
    ["I"],
    ["@", "I"],
    ["F"],
    ["@", "F", "I"],
    ["T"],
    ["T", "I"],
    ["W"],
    ["Z"],
    ["4"],
    ["M"],
    ["Q"],
    ["@", "?"],  # a code no mapping knows
]


@dataclass
class LogSpec:
    """How log time (the Kafka record timestamps) moves besides the steady crawl.

    All zero is the plain stream. Each is a probability per tick record.
    """

    p_flush: float = 0.0  # a flush marker (--exit-when-idle's close) mid-stream; the stream goes on
    p_stall: float = 0.0  # log time stands still for the next 5-120 records
    p_jump: float = 0.0  # log time jumps ahead by 1 min to 4 h (a broker down, a quiet night)
    p_backwards: float = 0.0  # a record with an earlier (repeated) timestamp than log time

    @property
    def any(self) -> bool:
        return bool(self.p_flush or self.p_stall or self.p_jump or self.p_backwards)


def make_stream(seed: int, spec: StreamSpec | None = None) -> list[tuple[str, dict]]:
    """Per symbol: increasing event times with ties, duplicates, swaps, late and too-late ticks."""
    spec = spec or StreamSpec()
    rng = random.Random(seed)
    per_symbol: dict[str, list[dict]] = {}
    for s_idx, symbol in enumerate(spec.symbols):
        ts = BASE_MS + rng.randrange(0, 60_000)
        price = 50.0 + 40 * s_idx
        events: list[dict] = []
        reach = spec.lateness_ms + spec.restate_ms  # newest ts - horizon line
        for i in range(spec.ticks_per_symbol):
            if not (events and rng.random() < spec.p_tie):
                ts += rng.randrange(1, spec.max_gap_ms + 1)
            # (Each new draw is behind its probability, so a spec without it draws as before.)
            if spec.p_jump and rng.random() < spec.p_jump:
                ts += spec.restate_ms + rng.randrange(0, 2 * spec.restate_ms)
            boundary = None
            if spec.p_edge and rng.random() < spec.p_edge:
                # The smallest ts' >= ts whose horizon line ts' - reach is a window boundary.
                aligned = ts + (reach - ts) % spec.bar_ms
                boundary = aligned - reach
                ts = max(ts, aligned + rng.choice([-1, 0, 0, 1]))
            price = round(max(0.01, price * (1 + rng.gauss(0, 0.002))), 4)
            msg: dict = {
                "symbol": symbol,
                "price": price,
                "volume": None
                if rng.random() < spec.p_null_volume
                else rng.choice([1, 5, 10, 100, 250]),
                "ts": ts,
            }
            if rng.random() >= spec.p_no_id:
                msg["id"] = f"{symbol}-{i}"
            if spec.p_conditions and rng.random() < spec.p_conditions:
                msg["conditions"] = rng.choice(CONDITION_MIX)
                msg["source"] = "sim"
            r = rng.random()
            if boundary is not None:
                pass  # this tick moves the horizon line; the edge tick follows it
            elif r < spec.p_late:
                msg = dict(msg, ts=ts - rng.randrange(300_000, 900_000), id=f"{symbol}-late-{i}")
            elif r < spec.p_late + spec.p_too_late:
                msg = dict(msg, ts=ts - 3 * 86_400_000, id=f"{symbol}-old-{i}")
            events.append(msg)
            if boundary is not None:
                edge_ts = boundary + rng.choice([-spec.bar_ms, -1, -1, 0, 1])
                events.append(dict(msg, ts=edge_ts, id=f"{symbol}-edge-{i}"))
            if rng.random() < spec.p_dup:
                events.append(dict(events[rng.randrange(max(0, len(events) - 4), len(events))]))
            if rng.random() < spec.p_far_dup:
                events.append(dict(events[rng.randrange(0, len(events))]))
        for i in range(len(events) - 1):
            if rng.random() < spec.p_swap:
                events[i], events[i + 1] = events[i + 1], events[i]
        per_symbol[symbol] = events
    # Interleave symbols randomly, keeping each symbol's own order.
    out: list[tuple[str, dict]] = []
    cursors = {s: 0 for s in spec.symbols}
    while cursors:
        symbol = rng.choice(sorted(cursors))
        out.append((symbol, per_symbol[symbol][cursors[symbol]]))
        cursors[symbol] += 1
        if cursors[symbol] == len(per_symbol[symbol]):
            del cursors[symbol]
    return out


def expected_ticks(
    stream: list[tuple[str, dict]],
    *,
    bar_ms: int = 60_000,
    lateness_ms: int = 5_000,
    restate_ms: int = 3_600_000,
) -> tuple[list[dict], list[dict]]:
    """(ticks that belong in bars, too-late ticks), each with `seq` = per-symbol arrival index.

    A copy of a tick is only possible in the same window (ids come from the
    content), so "remembered while the window can be restated" means: too
    late first, else a duplicate if the id was accepted before.
    """
    from flows.ingest.ticks import tick_id

    accepted: set[tuple[str, str]] = set()
    max_ts: dict[str, int] = {}
    seq: dict[str, int] = {}
    good, late = [], []
    for symbol, msg in stream:
        n = seq[symbol] = seq.get(symbol, -1) + 1
        tid = msg.get("id") or tick_id(
            symbol,
            msg["ts"],
            float(msg["price"]),
            None if msg["volume"] is None else float(msg["volume"]),
            msg.get("conditions", ()),
        )
        max_ts[symbol] = max(max_ts.get(symbol, msg["ts"]), msg["ts"])
        ws = msg["ts"] - msg["ts"] % bar_ms
        tick = {
            "symbol": symbol,
            "ts": msg["ts"],
            "seq": n,
            "price": float(msg["price"]),
            "volume": msg["volume"],
            "id": tid,
            "source": msg.get("source"),
            "conditions": msg.get("conditions"),
        }
        if ws + bar_ms <= max_ts[symbol] - lateness_ms - restate_ms:
            late.append(tick)
        elif (symbol, tid) not in accepted:
            accepted.add((symbol, tid))
            good.append(tick)
    return good, late


def horizon_margins(
    stream: list[tuple[str, dict]],
    *,
    bar_ms: int = 60_000,
    lateness_ms: int = 5_000,
    restate_ms: int = 3_600_000,
) -> list[int]:
    """Per tick: its window's end minus the horizon line when it arrives (<= 0: too late).

    For checking that a stream reaches the edge: 0 is a tick whose window ends exactly
    on the line, 1 and -1 are 1 ms inside and outside it.
    """
    max_ts: dict[str, int] = {}
    out = []
    for symbol, msg in stream:
        ts = msg["ts"]
        max_ts[symbol] = max(max_ts.get(symbol, ts), ts)
        out.append(ts - ts % bar_ms + bar_ms - (max_ts[symbol] - lateness_ms - restate_ms))
    return out
