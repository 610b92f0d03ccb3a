"""Contract 1: tick messages. Validation, and the deterministic tick id.

`parse_tick` is the dataflow's decode step and the producers' self-check: it
returns a `Tick` or raises `BadTick` whose `reason` is a short stable code
(`negative-price`, `future-ts`, ...) and whose `detail` names the value.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9.:_\-]{0,31}$")
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_AHEAD_MS = 86_400_000  # a tick may be at most one day ahead of the wall clock
MAX_ID_LEN = 256
_KNOWN_SYMBOLS: set[str] = set()  # symbols already matched: the regex runs once per symbol
_KNOWN_SYMBOLS_MAX = 100_000


class Tick(NamedTuple):
    """One valid trade (or quote snapshot when `volume` is None)."""

    symbol: str
    ts: int  # event time, epoch milliseconds UTC
    price: float
    volume: float | None
    id: str
    source: str | None = None
    conditions: tuple[str, ...] = ()


class BadTick(ValueError):
    """A message that breaks contract 1; `reason` is the DLQ reason code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def tick_id(
    symbol: str,
    ts: int,
    price: float,
    volume: float | None,
    conditions: Sequence[str] = (),
    occurrence: int = 0,
) -> str:
    """The content-derived id of a trade.

    Producers pass the occurrence index of an identical trade inside one
    upstream message, so a re-sent trade keeps its id while two genuinely
    identical trades in one message do not collide. The dataflow derives ids
    for messages that carry none with occurrence 0.
    """
    text = f"{symbol}|{ts}|{price!r}|{volume!r}|{','.join(conditions)}|{occurrence}"
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


def _loads(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    # The standard library accepts NaN/Infinity literals, which lets us say
    # "price is NaN" rather than just "invalid JSON" for the common bad case.
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadTick("invalid-json", f"{exc}: {_preview(value)}") from None


def _preview(value: bytes, limit: int = 120) -> str:
    text = value[:limit].decode("utf-8", errors="replace")
    return repr(text + ("..." if len(value) > limit else ""))


def _number(obj: dict, name: str, required: bool) -> float | None:
    if name not in obj or obj[name] is None:
        if required:
            raise BadTick(f"missing-{name}", f"no {name!r} field")
        return None
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadTick(f"{name}-not-number", f"{name} must be a JSON number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise BadTick(f"non-finite-{name}", f"{name} must be finite, got {value!r}")
    return value


def parse_tick(value: bytes | None, key: bytes | None, now_ms: int) -> Tick:
    """Decode and validate one Kafka message (contract 1), or raise `BadTick`."""
    if value is None:
        raise BadTick("empty-message", "message has no value")
    obj = _loads(value)
    if not isinstance(obj, dict):
        raise BadTick("not-an-object", f"expected a JSON object, got {_preview(value)}")

    symbol = obj.get("symbol")
    if symbol is None:
        raise BadTick("missing-symbol", "no 'symbol' field")
    if not isinstance(symbol, str) or symbol not in _KNOWN_SYMBOLS:
        if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
            raise BadTick("bad-symbol", f"symbol must match {SYMBOL_RE.pattern}, got {symbol!r}")
        if len(_KNOWN_SYMBOLS) < _KNOWN_SYMBOLS_MAX:
            _KNOWN_SYMBOLS.add(symbol)
    if key is not None and key != symbol.encode():
        raise BadTick(
            "key-mismatch", f"message key {key.decode('utf-8', 'replace')!r} != symbol {symbol!r}"
        )

    price = _number(obj, "price", required=True)
    if price <= 0:  # type: ignore[operator]
        reason = "zero-price" if price == 0 else "negative-price"
        raise BadTick(reason, f"price must be > 0, got {price!r}")
    volume = _number(obj, "volume", required=False)
    if volume is not None and volume < 0:
        raise BadTick("negative-volume", f"volume must be >= 0, got {volume!r}")

    ts = obj.get("ts")
    if ts is None:
        raise BadTick("missing-ts", "no 'ts' field")
    if isinstance(ts, bool) or not isinstance(ts, int):
        hint = " (looks like seconds: ts is epoch milliseconds)" if isinstance(ts, float) else ""
        raise BadTick("ts-not-integer", f"ts must be integer epoch milliseconds, got {ts!r}{hint}")
    if ts < MIN_TS_MS:
        raise BadTick("ts-before-2000", f"ts {ts} is before 2000-01-01 (epoch ms expected)")
    if ts > now_ms + MAX_AHEAD_MS:
        raise BadTick("future-ts", f"ts {ts} is more than 1 day ahead of the wall clock ({now_ms})")

    conditions_raw = obj.get("conditions")
    if conditions_raw is None:
        conditions: tuple[str, ...] = ()
    elif isinstance(conditions_raw, list) and all(isinstance(c, str) for c in conditions_raw):
        conditions = tuple(conditions_raw)
    else:
        raise BadTick(
            "bad-conditions", f"conditions must be a list of strings, got {conditions_raw!r}"
        )

    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        raise BadTick("bad-source", f"source must be a string, got {source!r}")

    tid = obj.get("id")
    if tid is None:
        tid = tick_id(symbol, ts, price, volume, conditions)  # type: ignore[arg-type]
    elif not isinstance(tid, str) or not tid or len(tid) > MAX_ID_LEN:
        raise BadTick(
            "bad-id", f"id must be a non-empty string of at most {MAX_ID_LEN} chars, got {tid!r}"
        )

    return Tick(symbol, ts, price, volume, tid, source, conditions)  # type: ignore[arg-type]


def encode_tick(tick: Tick) -> bytes:
    """The contract-1 JSON value of a tick (what producers send)."""
    obj: dict[str, Any] = {
        "symbol": tick.symbol,
        "price": tick.price,
        "volume": tick.volume,
        "ts": tick.ts,
        "id": tick.id,
    }
    if tick.source:
        obj["source"] = tick.source
    if tick.conditions:
        obj["conditions"] = list(tick.conditions)
    return orjson.dumps(obj)
