"""Contract 1: every kind of bad message gets its reason; good ones parse exactly.

`decode_tick` (the stream) returns a `BadTick` for any bad input and never raises;
`parse_tick` (the producers' self-check) raises it.
"""

from __future__ import annotations

import orjson
import pytest

from flows.ingest.ticks import (
    MAX_AHEAD_MS,
    BadTick,
    Tick,
    decode_tick,
    encode_tick,
    parse_tick,
    tick_id,
)

NOW = 1_741_100_500_000
LOG_TS = NOW  # the Kafka record's own timestamp
OK = {"symbol": "COIN", "price": 245.5, "volume": 10, "ts": 1_741_100_404_441}
TS = OK["ts"]


def bad(**changes: object) -> bytes:
    msg = {**OK, **changes}
    return orjson.dumps({k: v for k, v in msg.items() if v is not ...})


def raw(body: str) -> bytes:
    """A message with its JSON written by hand (NaN, huge numbers, \\ud800 escapes, ...)."""
    return (f'{{"symbol": "COIN", "ts": {TS}, ' + body + "}").encode()


def assert_bad(result: object, reason: str) -> BadTick:
    assert isinstance(result, BadTick), result
    assert result.reason == reason, result
    result.detail.encode("utf-8")  # the detail itself is always valid text
    str(result).encode("utf-8")
    return result


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{nope", "invalid-json"),
        (b"\xff\xfe", "invalid-json"),
        (b"[1]", "not-an-object"),
        (bad(symbol=...), "missing-symbol"),
        (bad(symbol="coin base"), "bad-symbol"),
        (bad(symbol="COIN\n"), "bad-symbol"),
        (bad(symbol=["COIN"]), "bad-symbol"),
        (bad(symbol={"s": 1}), "bad-symbol"),
        (bad(symbol="A" * 33), "bad-symbol"),
        (bad(price=...), "missing-price"),
        (bad(price="12.5"), "price-not-number"),
        (bad(price=True), "price-not-number"),
        (b'{"symbol": "COIN", "price": NaN, "volume": 1, "ts": 1741100404441}', "non-finite-price"),
        (
            b'{"symbol": "COIN", "price": Infinity, "volume": 1, "ts": 1741100404441}',
            "non-finite-price",
        ),
        (bad(price=0), "zero-price"),
        (bad(price=-1.5), "negative-price"),
        (bad(volume=-3), "negative-volume"),
        (bad(volume="1"), "volume-not-number"),
        (bad(ts=...), "missing-ts"),
        (bad(ts=1_741_100_404.441), "ts-not-integer"),
        (bad(ts=915_148_800_000), "ts-before-2000"),
        (bad(ts=NOW + 86_400_001), "future-ts"),
        (bad(conditions="12"), "bad-conditions"),
        (bad(conditions=[1]), "bad-conditions"),
        (bad(id=7), "bad-id"),
        (bad(id=""), "bad-id"),
        (bad(source=1), "bad-source"),
        (bad(exchange=7), "bad-exchange"),
    ],
)
def test_bad_message_names_its_reason(value, reason):
    with pytest.raises(BadTick) as err:
        parse_tick(value, b"COIN", NOW)
    assert_bad(err.value, reason)
    # the stream's decoder gives the same reason, returned rather than raised
    assert_bad(decode_tick(value, b"COIN", NOW, max_skew_ms=MAX_AHEAD_MS), reason)


DIGITS_400 = "9" * 400


@pytest.mark.parametrize(
    ("value", "reason", "in_detail"),
    [
        # poison records: each of these used to raise something other than BadTick
        (raw(f'"price": {DIGITS_400}'), "number-out-of-range", "price"),
        (raw('"price": 1e400'), "number-out-of-range", "price"),
        (raw('"price": -1e400'), "number-out-of-range", "price"),
        (raw(f'"price": 1.5, "volume": {2**64}'), "number-out-of-range", "volume"),
        (raw(f'"price": 1.5, "volume": {2**63}'), "number-out-of-range", "volume"),
        (raw(f'"price": {2**63}'), "number-out-of-range", "price"),
        (raw('"price": 1.5, "volume": 1e300'), "number-out-of-range", "volume"),
        (
            f'{{"symbol": "COIN", "price": 1.5, "ts": {2**64}}}'.encode(),
            "number-out-of-range",
            "ts",
        ),
        (
            f'{{"symbol": "COIN", "price": 1.5, "ts": {"1" * 5000}}}'.encode(),
            "number-out-of-range",
            "ts",
        ),
        # a lone surrogate is valid JSON but not text: no id, so hashing would have failed
        (raw('"price": 1.5, "conditions": ["1", "\\ud800"]'), "bad-text", "conditions[1]"),
        (raw('"price": 1.5, "id": "x\\ud800"'), "bad-text", "id"),
        (raw('"price": 1.5, "id": "\\udfff\\ud800"'), "bad-text", "id"),
        (raw('"price": 1.5, "source": "sim\\udc00"'), "bad-text", "source"),
        (b"\xff\xfe", "invalid-json", "UTF-8"),
        (b'{"symbol": "COIN", "id": "\xed\xa0\x80"}', "invalid-json", "UTF-8"),
        (b"[" * 100_000, "too-large", "100000 bytes"),
        (b"[" * 60_000, "invalid-json", "nesting too deep"),
        # orjson stops at the NaN, the stdlib fallback recurses: RecursionError, caught
        (b'{"price": NaN, "x": ' + b"[" * 60_000, "invalid-json", "nesting too deep"),
        (None, "empty-message", "tombstone"),
        (b" " * 70 * 1024, "too-large", "71680 bytes, over the 65536-byte limit"),
        (b"", "invalid-json", ""),
        (b"null", "not-an-object", ""),
        (b'"\\ud800"', "not-an-object", ""),
        (bad(ts=LOG_TS + 5 * 3_600_000), "future-ts", "ahead"),
        (bad(ts=LOG_TS + 60_001), "future-ts", "60001 ms ahead"),
        (bad(ts=253_402_300_800_000), "future-ts", "9999"),
        (b'{"symbol": "\\ud800", "price": 1.5, "ts": 1741100404441}', "bad-symbol", "\\ud800"),
    ],
)
def test_poison_input_becomes_a_reason_not_an_exception(value, reason, in_detail):
    result = assert_bad(decode_tick(value, b"COIN", LOG_TS), reason)
    assert in_detail in result.detail
    with pytest.raises(BadTick) as err:  # the producers' check agrees
        parse_tick(value, b"COIN", LOG_TS, max_skew_ms=60_000)
    assert err.value.reason == reason


def test_detail_of_a_surrogate_is_printable():
    result = assert_bad(
        decode_tick(raw('"price": 1.5, "id": "\\ud800"'), b"COIN", LOG_TS), "bad-text"
    )
    assert "\\ud800" in result.detail and "U+D800" in result.detail


def test_ts_exactly_max_skew_ahead_of_log_time_is_accepted():
    tick = decode_tick(bad(ts=LOG_TS + 60_000), b"COIN", LOG_TS)
    assert isinstance(tick, Tick) and tick.ts == LOG_TS + 60_000
    assert_bad(decode_tick(bad(ts=LOG_TS + 60_001), b"COIN", LOG_TS), "future-ts")
    assert isinstance(decode_tick(bad(ts=LOG_TS + 9000), b"COIN", LOG_TS, max_skew_ms=9000), Tick)
    # the producers' self-check keeps its one-day allowance against the wall clock
    assert parse_tick(bad(ts=NOW + 5 * 3_600_000), b"COIN", NOW).ts == NOW + 5 * 3_600_000


def test_size_limit_is_configurable():
    value = bad(source="s" * 200)
    assert_bad(decode_tick(value, b"COIN", LOG_TS, max_bytes=len(value) - 1), "too-large")
    assert isinstance(decode_tick(value, b"COIN", LOG_TS, max_bytes=len(value)), Tick)


def test_key_must_be_present_and_match_symbol():
    result = assert_bad(decode_tick(bad(), b"MARA", LOG_TS), "key-mismatch")
    assert "'MARA'" in result.detail
    assert_bad(decode_tick(bad(), b"\xff\xfe", LOG_TS), "key-mismatch")
    assert_bad(decode_tick(bad(), None, LOG_TS), "missing-key")
    with pytest.raises(BadTick) as err:
        parse_tick(bad(), b"MARA", NOW)
    assert err.value.reason == "key-mismatch" and "'MARA'" in err.value.detail
    # producers check a tick before keying it: parse_tick with no key skips the key check
    assert parse_tick(bad(), None, NOW).symbol == "COIN"


def test_decode_tick_never_raises_on_non_bytes():
    for value in (123, object(), ["x"], "{}"):
        assert isinstance(decode_tick(value, b"COIN", LOG_TS), BadTick)  # type: ignore[arg-type]
    # a nonsense log time is the caller's bug, still not an exception
    assert isinstance(decode_tick(bad(), b"COIN", None), BadTick)  # type: ignore[arg-type]


def test_stdlib_fallback_still_accepts_a_good_tick_with_odd_extras():
    # NaN in a field we do not read: orjson refuses the document, the fallback reads it
    tick = decode_tick(
        raw('"price": 1.5, "volume": 2, "extra": NaN, "id": "\\u00e9t\\u00e9"'), b"COIN", LOG_TS
    )
    assert isinstance(tick, Tick)
    assert (tick.price, tick.volume, tick.id) == (1.5, 2.0, "été")


def test_good_tick_parses_and_derives_a_stable_id():
    tick = parse_tick(bad(conditions=["1", "12"]), b"COIN", NOW)
    assert tick == Tick(
        "COIN",
        OK["ts"],
        245.5,
        10.0,
        tick_id("COIN", OK["ts"], 245.5, 10.0, ("1", "12")),
        None,
        ("1", "12"),
    )
    assert parse_tick(encode_tick(tick), b"COIN", NOW) == tick
    assert decode_tick(encode_tick(tick), b"COIN", LOG_TS) == tick
    # the occurrence index keeps two identical trades of one upstream message apart
    assert tick_id("COIN", 1, 2.0, 3.0, (), 0) != tick_id("COIN", 1, 2.0, 3.0, (), 1)


def test_null_volume_is_a_quote_snapshot():
    assert parse_tick(bad(volume=None), None, NOW).volume is None
    tick = decode_tick(bad(volume=None), b"COIN", LOG_TS)
    assert isinstance(tick, Tick) and tick.volume is None


def test_largest_in_range_numbers_are_accepted():
    tick = decode_tick(bad(price=1e18, volume=2**63 - 1024), b"COIN", LOG_TS)
    assert isinstance(tick, Tick) and tick.price == 1e18 and tick.volume == float(2**63 - 1024)
    # 2**63 - 1 fits int64 but becomes 2.0**63 as a float: refused, as the float would be
    assert_bad(decode_tick(bad(volume=2**63 - 1), b"COIN", LOG_TS), "number-out-of-range")
    assert_bad(decode_tick(bad(volume=2.0**63), b"COIN", LOG_TS), "number-out-of-range")
