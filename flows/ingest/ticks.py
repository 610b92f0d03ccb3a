"""Contract 1: tick messages, as producers build them and the stream checks them.

`decode_tick` is the dataflow's decode step: it turns ANY bytes into either a
valid `Tick` or a `BadTick` (returned, never raised) whose `reason` is a short
stable code (`negative-price`, `future-ts`, `invalid-json`, ...) and whose
`detail` names the offending value (always encodable as UTF-8). It never
raises: a poison record that crashed the flow would crash it again on every
restart. `parse_tick` is the producers' self-check: the same rules, raising
`BadTick`, with the skew measured against the wall clock.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import reprlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9.:_\-]{0,31}$")
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: far inside int64 microseconds
MAX_AHEAD_MS = 86_400_000  # producers' self-check: at most one day ahead of the wall clock
MAX_SKEW_MS = 60_000  # the stream: at most STOCKPIPE_MAX_CLOCK_SKEW ahead of the log time
MAX_MESSAGE_BYTES = 65_536  # STOCKPIPE_MAX_MESSAGE_BYTES
MAX_ID_LEN = 256
# The source of ticks made from a vendor's 1-minute candle (four a minute: o, h, l, c),
# which the outage backfill produces when the plan gives no trades; the stream marks
# their bars (`candle_count`) and lets the candle stand for its whole minute.
CANDLE_SOURCE = "finnhub-candle"
# Headers of a DLQ record (contract 1): why, and where the original bytes came from.
DLQ_REASON, DLQ_DETAIL = "stockpipe.reason", "stockpipe.detail"
DLQ_TOPIC, DLQ_PARTITION, DLQ_OFFSET = (
    "stockpipe.source.topic",
    "stockpipe.source.partition",
    "stockpipe.source.offset",
)
MAX_NUMBER = 2.0**63  # |price|, |volume| below this: finite, and castable to int64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_KNOWN_SYMBOLS: set[str] = set()  # symbols already matched: the regex runs once per symbol
_KNOWN_SYMBOLS_MAX = 100_000
_PREVIEW_CHARS = 120


class Tick(NamedTuple):
    """One valid trade (or quote snapshot when `volume` is None)."""

    symbol: str
    ts: int  # event time, epoch milliseconds UTC
    price: float
    volume: float | None
    id: str
    source: str | None = None
    conditions: tuple[str, ...] = ()
    exchange: str | None = None  # the venue or exchange code, where the feed gives one


class BadTick(ValueError):
    """A message that breaks contract 1; `reason` is the DLQ reason code.

    `detail` is always encodable as UTF-8 (lone surrogates are backslash-escaped).
    """

    def __init__(self, reason: str, detail: str):
        detail = _printable(detail)
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


# --- previews: short, printable, and never raising ---------------------------------------

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 6


def _printable(text: str) -> str:
    try:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    except Exception:  # noqa: BLE001 - not a str at all
        return "<unprintable>"


def _show(value: Any) -> str:
    """A short repr of a decoded JSON value for a BadTick detail."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a detail must never raise
        text = f"<{type(value).__name__}>"
    text = _printable(text)
    return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "..."


def _preview(value: Any, limit: int = _PREVIEW_CHARS) -> str:
    """A short, printable preview of raw message bytes."""
    try:
        text = bytes(value[:limit]).decode("utf-8", errors="replace")
        return _printable(repr(text + ("..." if len(value) > limit else "")))
    except Exception:  # noqa: BLE001
        return f"<{type(value).__name__}>"


# --- JSON: orjson first, the standard library only to name the problem ---------------------


class _OutOfRange:
    """A JSON number the standard-library fallback refused to turn into an int/float."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        if len(self.text) <= 40:
            return self.text
        return f"{self.text[:20]}...({len(self.text)} chars)"


def _parse_int(text: str) -> int | _OutOfRange:
    # int64 has at most 19 digits; longer literals never become Python ints, which keeps
    # the int-to-str digit limit (ValueError) and huge int arithmetic out of the way.
    return int(text) if len(text) <= 21 else _OutOfRange(text)


def _parse_float(text: str) -> float | _OutOfRange:
    value = float(text)
    return value if math.isfinite(value) else _OutOfRange(text)  # 1e400 -> inf


def _loads(value: bytes) -> tuple[Any, bool]:
    """The decoded JSON, and whether strings may still hold lone surrogates."""
    try:
        return orjson.loads(value), False
    except orjson.JSONDecodeError as exc:
        fast_error = str(exc)
    if "depth limit" in fast_error:
        raise BadTick("invalid-json", f"nesting too deep: {fast_error}: {_preview(value)}")
    # orjson rejects NaN/Infinity, numbers that overflow a double and lone surrogates;
    # the standard library reads them, so the reason can say "price is NaN" or name the
    # field. Everything that can go wrong in there becomes invalid-json.
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadTick(
            "invalid-json", f"not valid UTF-8 at byte {exc.start} ({exc.reason}): {_preview(value)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - not bytes at all
        raise BadTick("invalid-json", f"{type(exc).__name__}: {_preview(value)}") from None
    try:
        return json.loads(text, parse_int=_parse_int, parse_float=_parse_float), True
    except RecursionError:
        raise BadTick("invalid-json", f"nesting too deep: {_preview(value)}") from None
    except (ValueError, OverflowError) as exc:  # JSONDecodeError is a ValueError
        raise BadTick("invalid-json", f"{exc}: {_preview(value)}") from None
    except Exception as exc:  # noqa: BLE001 - decoding must never raise, whatever Python does
        raise BadTick(
            "invalid-json", f"unexpected {type(exc).__name__} ({exc}): {_preview(value)}"
        ) from None


# --- field rules -----------------------------------------------------------------------------


def _number(obj: dict, name: str, required: bool) -> float | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise BadTick(f"missing-{name}", f"no {name!r} field")
        return None
    if not isinstance(value, float):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, _OutOfRange):
                raise BadTick(
                    "number-out-of-range", f"{name} {value!r} does not fit a finite float"
                )
            raise BadTick(f"{name}-not-number", f"{name} must be a JSON number, got {_show(value)}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise BadTick("number-out-of-range", f"{name} {value!r} does not fit int64")
        value = float(value)  # int64 always fits a float (rounded: 2**63-1 -> 2.0**63)
    elif not math.isfinite(value):
        raise BadTick(f"non-finite-{name}", f"{name} must be finite, got {value!r}")
    if not -MAX_NUMBER < value < MAX_NUMBER:
        raise BadTick("number-out-of-range", f"{name} {value!r} is out of range (|{name}| < 2**63)")
    return value


def _text(name: str, value: str) -> None:
    """Raise bad-text unless `value` is valid Unicode text (no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadTick(
            "bad-text",
            f"{name} is not valid text ({exc.reason}: U+{ord(value[exc.start]):04X} "
            f"at index {exc.start}): {_show(value)}",
        ) from None


def _decode(
    value: bytes | None,
    key: bytes | None,
    log_ts_ms: int,
    max_skew_ms: int,
    max_bytes: int,
    key_required: bool,
) -> Tick:
    if value is None:
        raise BadTick("empty-message", "message has no value (a tombstone)")
    if len(value) > max_bytes:
        raise BadTick(
            "too-large",
            f"message is {len(value)} bytes, over the {max_bytes}-byte limit: {_preview(value)}",
        )
    obj, check_text = _loads(value)
    if not isinstance(obj, dict):
        raise BadTick("not-an-object", f"expected a JSON object, got {_preview(value)}")

    symbol = obj.get("symbol")
    if symbol is None:
        raise BadTick("missing-symbol", "no 'symbol' field")
    if not isinstance(symbol, str) or symbol not in _KNOWN_SYMBOLS:
        if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
            raise BadTick(
                "bad-symbol", f"symbol must match {SYMBOL_RE.pattern}, got {_show(symbol)}"
            )
        if len(_KNOWN_SYMBOLS) < _KNOWN_SYMBOLS_MAX:
            _KNOWN_SYMBOLS.add(symbol)
    if key is None:
        if key_required:
            raise BadTick(
                "missing-key",
                f"record has no key; contract 1 keys every tick by its symbol ({symbol!r})",
            )
    elif key != symbol.encode():
        raise BadTick("key-mismatch", f"message key {_preview(key, 40)} != symbol {symbol!r}")

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
        if isinstance(ts, _OutOfRange) or (isinstance(ts, float) and abs(ts) >= MAX_NUMBER):
            raise BadTick("number-out-of-range", f"ts {ts!r} does not fit int64")
        hint = " (looks like seconds: ts is epoch milliseconds)" if isinstance(ts, float) else ""
        raise BadTick(
            "ts-not-integer", f"ts must be integer epoch milliseconds, got {_show(ts)}{hint}"
        )
    if not INT64_MIN <= ts <= INT64_MAX:
        raise BadTick("number-out-of-range", f"ts {ts} does not fit int64")
    if ts < MIN_TS_MS:
        raise BadTick("ts-before-2000", f"ts {ts} is before 2000-01-01 (epoch ms expected)")
    if ts > MAX_TS_MS:
        raise BadTick("future-ts", f"ts {ts} is after 9999-12-31 (epoch ms expected)")
    if ts - log_ts_ms > max_skew_ms:
        raise BadTick(
            "future-ts",
            f"ts {ts} is {ts - log_ts_ms} ms ahead of the record's time {log_ts_ms} "
            f"(at most {max_skew_ms} ms allowed)",
        )

    conditions_raw = obj.get("conditions")
    if conditions_raw is None:
        conditions: tuple[str, ...] = ()
    elif isinstance(conditions_raw, list) and all(isinstance(c, str) for c in conditions_raw):
        conditions = tuple(conditions_raw)
        if check_text:
            for i, c in enumerate(conditions):
                _text(f"conditions[{i}]", c)
    else:
        raise BadTick(
            "bad-conditions", f"conditions must be a list of strings, got {_show(conditions_raw)}"
        )

    source = obj.get("source")
    if source is not None:
        if not isinstance(source, str):
            raise BadTick("bad-source", f"source must be a string, got {_show(source)}")
        if check_text:
            _text("source", source)

    exchange = obj.get("exchange")
    if exchange is not None:
        if not isinstance(exchange, str):
            raise BadTick("bad-exchange", f"exchange must be a string, got {_show(exchange)}")
        if check_text:
            _text("exchange", exchange)

    tid = obj.get("id")
    if tid is None:
        tid = tick_id(symbol, ts, price, volume, conditions)  # type: ignore[arg-type]
    elif not isinstance(tid, str) or not tid or len(tid) > MAX_ID_LEN:
        raise BadTick(
            "bad-id",
            f"id must be a non-empty string of at most {MAX_ID_LEN} chars, got {_show(tid)}",
        )
    elif check_text:
        _text("id", tid)

    return Tick(symbol, ts, price, volume, tid, source, conditions, exchange)  # type: ignore[arg-type]


def decode_tick(
    value: bytes | None,
    key: bytes | None,
    log_ts_ms: int,
    *,
    max_skew_ms: int = MAX_SKEW_MS,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> Tick | BadTick:
    """Decode and validate one Kafka record (contract 1): a `Tick`, or the `BadTick` (returned).

    Never raises, whatever the bytes. `log_ts_ms` is the record's own timestamp (its
    log time): a tick more than `max_skew_ms` ahead of it is `future-ts`, so the
    answer is the same on every replay. A record without a key is `missing-key`.
    """
    try:
        return _decode(value, key, log_ts_ms, max_skew_ms, max_bytes, key_required=True)
    except BadTick as bad:
        return bad
    except Exception as exc:  # noqa: BLE001 - a poison record must never crash the flow
        return BadTick(
            "invalid-json", f"unexpected {type(exc).__name__} while decoding: {_preview(value)}"
        )


def parse_tick(
    value: bytes | None,
    key: bytes | None,
    now_ms: int,
    *,
    max_skew_ms: int = MAX_AHEAD_MS,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> Tick:
    """The producers' self-check: `decode_tick` against the wall clock `now_ms`, raising `BadTick`.

    `key=None` means "not keyed yet": the key is not checked (the producer keys the
    record by the tick's symbol when it sends it).
    """
    try:
        return _decode(value, key, now_ms, max_skew_ms, max_bytes, key_required=False)
    except BadTick:
        raise
    except Exception as exc:  # noqa: BLE001
        raise BadTick(
            "invalid-json", f"unexpected {type(exc).__name__} while decoding: {_preview(value)}"
        ) from None


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
    if tick.exchange:
        obj["exchange"] = tick.exchange
    return orjson.dumps(obj)
