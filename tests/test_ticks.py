"""Contract 1: every kind of bad message gets its reason; good ones parse exactly."""

from __future__ import annotations

import orjson
import pytest

from flows.ticks import BadTick, Tick, encode_tick, parse_tick, tick_id

NOW = 1_741_100_500_000
OK = {"symbol": "COIN", "price": 245.5, "volume": 10, "ts": 1_741_100_404_441}


def bad(**changes: object) -> bytes:
    msg = {**OK, **changes}
    return orjson.dumps({k: v for k, v in msg.items() if v is not ...})


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{nope", "invalid-json"),
        (b"\xff\xfe", "invalid-json"),
        (b"[1]", "not-an-object"),
        (bad(symbol=...), "missing-symbol"),
        (bad(symbol="coin base"), "bad-symbol"),
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
    ],
)
def test_bad_message_names_its_reason(value, reason):
    with pytest.raises(BadTick) as err:
        parse_tick(value, b"COIN", NOW)
    assert err.value.reason == reason


def test_key_must_match_symbol():
    with pytest.raises(BadTick) as err:
        parse_tick(bad(), b"MARA", NOW)
    assert err.value.reason == "key-mismatch" and "'MARA'" in err.value.detail


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
    # the occurrence index keeps two identical trades of one upstream message apart
    assert tick_id("COIN", 1, 2.0, 3.0, (), 0) != tick_id("COIN", 1, 2.0, 3.0, (), 1)


def test_null_volume_is_a_quote_snapshot():
    assert parse_tick(bad(volume=None), None, NOW).volume is None
