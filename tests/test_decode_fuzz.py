"""Fuzz `decode_tick`: any bytes at all give a valid `Tick` or a `BadTick`, never an exception.

A record that made decoding raise would be a poison record: it would crash the
flow again on every restart. Thousands of inputs per run, from raw bytes to
valid ticks with one field replaced by something hostile (huge integers,
NaN/inf, lone surrogates, deep nesting, invalid UTF-8).
"""

from __future__ import annotations

import json
import math

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.ingest.ticks import (
    MAX_TS_MS,
    MIN_TS_MS,
    BadTick,
    Tick,
    decode_tick,
    encode_tick,
    parse_tick,
)
from flows.stream.decode import decode_batch

LOG_TS = 1_741_100_500_000
SKEW = 60_000
REASONS = {
    "empty-message",
    "too-large",
    "invalid-json",
    "not-an-object",
    "missing-symbol",
    "bad-symbol",
    "missing-key",
    "key-mismatch",
    "missing-price",
    "price-not-number",
    "non-finite-price",
    "zero-price",
    "negative-price",
    "volume-not-number",
    "non-finite-volume",
    "negative-volume",
    "number-out-of-range",
    "missing-ts",
    "ts-not-integer",
    "ts-before-2000",
    "future-ts",
    "bad-conditions",
    "bad-source",
    "bad-exchange",
    "bad-id",
    "bad-text",
}


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def same_answer(fast: object, slow: Tick | BadTick) -> bool:
    """Whether decode_batch's answer for a record is decode_tick's (a tick read by attribute)."""
    if isinstance(slow, BadTick):
        return isinstance(fast, BadTick) and (fast.reason, fast.detail) == (
            slow.reason,
            slow.detail,
        )
    fields = ("symbol", "ts", "price", "volume", "id", "source")
    got = tuple(getattr(fast, f) for f in fields) + (tuple(fast.conditions or ()),)  # type: ignore[attr-defined]
    return not isinstance(fast, BadTick) and got == (*slow[:6], slow.conditions)


def check(value: bytes | None, key: bytes | None, log_ts: int = LOG_TS) -> Tick | BadTick:
    """decode_tick must not raise, what it returns must hold contract 1, and decode_batch agrees."""
    result = decode_tick(value, key, log_ts, max_skew_ms=SKEW)
    (fast,), bad = decode_batch([value], [key], [log_ts], max_skew_ms=SKEW)
    assert same_answer(fast, result), (fast, result)
    assert bad == ([0] if isinstance(result, BadTick) else [])
    if isinstance(result, BadTick):
        assert result.reason in REASONS, result.reason
        result.detail.encode("utf-8")
        # the producers' check gives the same answer (it skips the check of a missing key,
        # so for those it may accept the tick or find a problem further on)
        try:
            parse_tick(value, key, log_ts, max_skew_ms=SKEW)
        except BadTick as exc:
            assert exc.reason == result.reason or result.reason == "missing-key"
        else:
            assert result.reason == "missing-key"
        return result
    assert isinstance(result, Tick), type(result)
    for text in (result.symbol, result.id, result.source or "", *result.conditions):
        assert isinstance(text, str)
        text.encode("utf-8")
    assert key == result.symbol.encode()
    assert isinstance(result.price, float) and math.isfinite(result.price) and result.price > 0
    assert result.volume is None or (math.isfinite(result.volume) and result.volume >= 0)
    assert type(result.ts) is int and MIN_TS_MS <= result.ts <= log_ts + SKEW
    assert result.id and len(result.id) <= 256
    # a decoded tick survives its own round trip (encode_tick leaves out an empty source)
    again = decode_tick(encode_tick(result), key, log_ts, max_skew_ms=SKEW, max_bytes=10**6)
    assert again == result._replace(source=result.source or None)
    return result


# --- strategies ------------------------------------------------------------------------------

# Any code point, lone surrogates included. st.text() merges a one_of alphabet into one
# character set that drops surrogates (and codec=None alone rarely draws one): join lists.
surrogates = st.characters(categories=["Cs"])


def texts(*alphabet: st.SearchStrategy[str], min_size: int = 0, max_size: int = 12):
    return st.lists(st.one_of(*alphabet), min_size=min_size, max_size=max_size).map("".join)


any_text = texts(st.characters(codec=None), surrogates)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**420), max_value=10**420),  # far past int64 and float
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**400]),
    st.floats(),  # nan, inf, -0.0, subnormals
    st.floats(min_value=1e-3, max_value=1e6),
)
json_leaves = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from([b"COIN", b"BINANCE:BTCUSDT", None, b"MARA", b"\xff", b""])


@st.composite
def encoded(draw, obj) -> bytes:
    """`obj` as JSON bytes the way a careless producer might write it."""
    style = draw(st.sampled_from(["ascii", "utf8-surrogatepass", "utf8-replace"]))
    if style == "ascii":  # \ud800 escapes, NaN, Infinity, 400-digit integers
        return json.dumps(obj, ensure_ascii=True).encode()
    text = json.dumps(obj, ensure_ascii=False)
    if style == "utf8-surrogatepass":  # surrogates encoded as raw (invalid) UTF-8
        return text.encode("utf-8", "surrogatepass")
    return text.encode("utf-8", "replace")


def good_tick(draw) -> dict:
    symbol = draw(st.sampled_from(["COIN", "BINANCE:BTCUSDT"]))
    obj = {
        "symbol": symbol,
        "price": draw(st.floats(min_value=0.0001, max_value=1e9)),
        "volume": draw(st.one_of(st.none(), st.integers(0, 10**9), st.floats(0, 1e9))),
        "ts": draw(st.integers(MIN_TS_MS, LOG_TS + SKEW)),
    }
    for name, strategy in (
        ("id", st.text(min_size=1, max_size=40)),
        ("source", st.sampled_from(["sim", "finnhub-ws", "replay"])),
        ("conditions", st.lists(st.text(max_size=3), max_size=3)),
    ):
        if draw(st.booleans()):
            obj[name] = draw(strategy)
    return obj


@st.composite
def mutated_ticks(draw) -> tuple[bytes, bytes | None]:
    """A valid tick with one field replaced (or dropped, or added) by anything at all."""
    obj = good_tick(draw)
    field = draw(st.sampled_from(["symbol", "price", "volume", "ts", "id", "source", "conditions"]))
    how = draw(st.sampled_from(["replace", "drop", "list-of", "text"]))
    if how == "drop":
        obj.pop(field, None)
    elif how == "text":
        obj[field] = [draw(any_text)] if field == "conditions" else draw(any_text)
    elif how == "list-of":
        obj[field] = draw(st.lists(json_leaves, max_size=3))
    else:
        obj[field] = draw(json_values)
    key = draw(st.one_of(st.just(obj.get("symbol", "COIN")), st.none()))
    key = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else None
    return draw(encoded(obj)), key


@st.composite
def mangled_bytes(draw) -> bytes:
    """Valid tick bytes, then truncated, spliced, or byte-flipped."""
    value = bytearray(orjson.dumps(good_tick(draw)))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(value)))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and pos < len(value):
            value[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del value[pos:]
        else:
            value[pos:pos] = draw(
                st.one_of(
                    st.binary(max_size=4),
                    st.sampled_from([b"NaN", b"1e400", b'"\\ud800"', b"[" * 2000, b"\xed\xa0\x80"]),
                )
            )
    return bytes(value)


# --- properties --------------------------------------------------------------------------------


@fuzz(2000)
@given(value=st.one_of(st.none(), st.binary(max_size=200)), key=keys)
def test_raw_bytes(value, key):
    check(value, key)


@fuzz(1000)
@given(obj=json_values, data=st.data(), key=keys)
def test_any_json_value(obj, data, key):
    result = check(data.draw(encoded(obj)), key)
    if not isinstance(obj, dict):
        assert isinstance(result, BadTick)


@fuzz(1500)
@given(case=mutated_ticks())
def test_valid_tick_with_one_hostile_field(case):
    check(*case)


@fuzz(1000)
@given(value=mangled_bytes(), key=keys)
def test_mangled_tick_bytes(value, key):
    check(value, key)


surrogate_heavy_text = texts(
    surrogates, st.characters(blacklist_categories=()), st.just("\udfff\ud800"), min_size=1
)


@fuzz(800)
@given(
    data=st.data(),
    field=st.sampled_from(["id", "source", "conditions"]),
    text=surrogate_heavy_text,
)
def test_text_fields_must_be_valid_text(data, field, text):
    obj = good_tick(data.draw)
    obj[field] = [text] if field == "conditions" else text
    key = obj["symbol"].encode()
    # escaped (\udXXX), a high+low pair of lone surrogates reads back as one character
    meant = json.loads(json.dumps(text))
    result = check(json.dumps(obj, ensure_ascii=True).encode(), key)
    if is_text(meant):
        assert isinstance(result, Tick), result
        assert getattr(result, field) == ((meant,) if field == "conditions" else meant)
    else:
        assert isinstance(result, BadTick) and result.reason == "bad-text", result
        assert field in result.detail
    # the same text written as raw UTF-8 (a surrogate encoded on its own: invalid UTF-8)
    raw_utf8 = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    result = check(raw_utf8, key)
    if is_text(text):
        assert isinstance(result, Tick), result
    else:
        assert isinstance(result, BadTick) and result.reason == "invalid-json", result


def is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@fuzz(300)
@given(data=st.data())
def test_valid_ticks_decode_exactly(data):
    obj = good_tick(data.draw)
    key = obj["symbol"].encode()
    result = check(orjson.dumps(obj), key)
    assert isinstance(result, Tick), result
    assert (result.symbol, result.ts, result.price) == (obj["symbol"], obj["ts"], obj["price"])
    assert result.volume == (None if obj["volume"] is None else float(obj["volume"]))
    if "id" in obj:
        assert result.id == obj["id"]
    # read the slow way (NaN in an unread field makes orjson refuse it): the same tick
    slow = json.dumps({**obj, "unread": math.nan}).encode()
    assert check(slow, key) == result
    # and one millisecond past the skew is always refused
    late = orjson.dumps({**obj, "ts": LOG_TS + SKEW + 1})
    assert check(late, key).reason == "future-ts"


@fuzz(200)
@given(
    depth=st.integers(1, 20_000),
    prefix=st.sampled_from([b"", b'{"price": NaN, "x": ', b'{"symbol": "COIN", "v": 1e400, "a": ']),
    opener=st.sampled_from([b"[", b'{"a":', b"[{}, "]),
    closed=st.booleans(),
)
def test_deep_nesting(depth, prefix, opener, closed):
    body = prefix + opener * depth
    if closed:
        body += (b"]" if opener != b'{"a":' else b"}") * depth + (b"}" if prefix else b"")
    result = check(body, b"COIN")
    assert isinstance(result, BadTick)
    if len(body) > 65_536:
        assert result.reason == "too-large"


@fuzz(100)
@given(size=st.integers(65_000, 70_000), key=keys)
def test_size_limit(size, key):
    value = orjson.dumps({"symbol": "COIN", "price": 1.0, "ts": LOG_TS, "source": "x" * size})
    result = check(value, key)
    if len(value) > 65_536:
        assert result.reason == "too-large"
    elif key == b"COIN":
        assert isinstance(result, Tick) and len(result.source) == size


@fuzz(400)
@given(
    cases=st.lists(
        st.one_of(
            st.composite(good_tick)().map(lambda obj: (orjson.dumps(obj), obj["symbol"].encode())),
            mutated_ticks(),
            st.tuples(mangled_bytes(), keys),
            st.tuples(st.one_of(st.none(), st.binary(max_size=60)), keys),
        ),
        max_size=25,
    ),
    log_ts=st.lists(st.sampled_from([LOG_TS, -1, MIN_TS_MS, LOG_TS + 10**9]), min_size=25),
)
def test_decode_batch_answers_as_decode_tick_does_record_by_record(cases, log_ts):
    """The batch decoder's fast path may only ever accept what decode_tick accepts, as it does."""
    values = [v for v, _ in cases]
    keys_ = [k for _, k in cases]
    stamps = log_ts[: len(cases)]
    got, bad = decode_batch(values, keys_, stamps, max_skew_ms=SKEW)
    want = [
        decode_tick(v, k, t if t >= 0 else MAX_TS_MS, max_skew_ms=SKEW)
        for v, k, t in zip(values, keys_, stamps, strict=True)
    ]
    assert len(got) == len(want)
    for fast, slow in zip(got, want, strict=True):
        assert same_answer(fast, slow), (fast, slow)
    assert bad == [i for i, w in enumerate(want) if isinstance(w, BadTick)]
