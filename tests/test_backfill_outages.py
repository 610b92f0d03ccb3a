"""`stockpipe backfill-outages` against a loopback Finnhub REST server and the real broker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from fakes.finnhub_server import FakeFinnhubREST
from helpers import read_records

from flows.ingest.backfill import backfill_outages
from flows.ingest.finnhub_rest import FinnhubApi
from flows.ingest.ledger import Outage, append_outage, entry_id, read_ledger
from flows.ingest.ticks import Tick, decode_tick, tick_id
from flows.stream.bars import FLUSH, TICK, BarRules, FileRules, PartitionBars, Record
from flows.stream.conditions import load_rules
from flows.stream.lake_sink import BAR_SCHEMA

T0 = 1_732_633_200_000  # 2024-11-26T15:00:00Z, a minute boundary
MIN = 60_000


@contextmanager
def serving(server: FakeFinnhubREST) -> Iterator[FakeFinnhubREST]:
    """The fake in a loop of its own thread (the backfill runs its own asyncio loop)."""
    loop = asyncio.new_event_loop()
    ready, done = threading.Event(), None

    async def main() -> None:
        nonlocal done
        done = asyncio.Event()
        async with server:
            ready.set()
            await done.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(done.set)  # type: ignore[union-attr]
        thread.join(10)


def ledger_with_two_outages(path: Path) -> list[Outage]:
    feed = Outage(T0, ["COIN", "MARA"], "stall", end_ms=T0 + 2 * MIN - 1, source="finnhub-ws")
    lost = Outage(
        T0 + 10 * MIN + 5_000, ["MSTR"], "timeout", end_ms=T0 + 11 * MIN + 10_000,
        source="kafka-producer", count=3, topic="stock.ticks",
    )  # fmt: skip
    append_outage(path, feed)
    append_outage(path, lost)
    return [feed, lost]


TRADES = {
    "COIN": [
        (T0 + 1_000, 250.0, 10.0, "V", ["1"]),
        (T0 + 1_000, 250.0, 10.0, "V", ["1"]),  # genuinely identical: occurrence 1
        (T0 + 65_000, 251.5, 5.0, "N", ["1", "12"]),
        (T0 + 3 * MIN, 252.0, 1.0, "V", ["1"]),  # after the outage: not sent
    ],
    "MARA": [(T0 + 30_000, 17.1, 100.0, "Q", [])],
    "MSTR": [(T0 + 10 * MIN + 6_000, 400.0, 2.0, "Q", ["1"])],
}
CANDLES = {
    "COIN": [(T0 // 1000, 250.0, 251.0, 249.5, 250.5, 300.0)],
    "MARA": [(T0 // 1000 + 60, 17.0, 17.3, 16.9, 17.2, 1000.0)],
    "MSTR": [
        (T0 // 1000 + 600, 400.0, 401.0, 399.0, 400.5, 20.0),
        (T0 // 1000 + 660, 400.5, 402.0, 400.0, 401.0, 30.0),
        (T0 // 1000 + 720, 401.0, 401.0, 401.0, 401.0, 1.0),  # after the range: not sent
    ],
}


def ticks_in(bootstrap: str, topic: str) -> list[dict]:
    return [orjson.loads(v) for _k, v, _p, _h in read_records(bootstrap, topic) if v]


def api_for(settings, server: FakeFinnhubREST, **kw) -> FinnhubApi:
    kw.setdefault("calls_per_minute", 6000)
    return FinnhubApi(settings, base_url=server.base_url, backoff_initial=0.05, **kw)


def test_trades_fill_exactly_the_ledgered_ranges_with_the_websocket_ids_then_nothing_twice(
    settings_for, new_topic, kafka_bootstrap, tmp_path
):
    topic = new_topic("backfill-trades")
    ledger = tmp_path / "outages.jsonl"
    ledger_with_two_outages(ledger)
    server = FakeFinnhubREST({}, token="k", trades=TRADES, faults=[(429, {"Retry-After": "0.2"})])
    with serving(server):
        settings = settings_for(topic=topic, finnhub_api_key="k", outage_log=ledger)
        report = backfill_outages(settings, api=api_for(settings, server))
        assert report.repaired == 3 and report.failed == 0
        fetched = [(p, q["symbol"], q["date"]) for p, q, s in server.requests if s == 200]
        assert fetched == [
            ("/api/v1/stock/tick", "COIN", "2024-11-26"),
            ("/api/v1/stock/tick", "MARA", "2024-11-26"),
            ("/api/v1/stock/tick", "MSTR", "2024-11-26"),
        ]
        assert [s for _p, _q, s in server.requests][0] == 429  # paused, then asked again
        # a second run: nothing left to repair, no call at all
        before = len(server.requests)
        again = backfill_outages(settings, api=api_for(settings, server))
        assert again.jobs == [] and len(server.requests) == before

    got = ticks_in(kafka_bootstrap, topic)
    # decoded independently: the trades inside each entry's range, occurrence per identity
    want = set()
    ranges = {"COIN": (T0, T0 + 2 * MIN - 1), "MARA": (T0, T0 + 2 * MIN - 1)}
    ranges["MSTR"] = (T0 + 10 * MIN + 5_000, T0 + 11 * MIN + 10_000)
    for symbol, rows in TRADES.items():
        seen: dict[tuple, int] = {}
        for t, p, v, _x, c in rows:
            lo, hi = ranges[symbol]
            if lo <= t <= hi:
                n = seen.get((t, p, v, tuple(c)), 0)
                seen[(t, p, v, tuple(c))] = n + 1
                # the id the websocket producer gives the same trade
                want.add((symbol, t, p, v, tick_id(symbol, t, p, v, c, n)))
    assert {(g["symbol"], g["ts"], g["price"], g["volume"], g["id"]) for g in got} == want
    assert len(got) == len(want) == 5
    assert {g["source"] for g in got} == {"finnhub-tick"}
    state = read_ledger(ledger)
    assert {(e, s) for e, s in state.repaired} == {
        (state.entries[0]["id"], "COIN"), (state.entries[0]["id"], "MARA"),
        (state.entries[1]["id"], "MSTR"),
    }  # fmt: skip


def test_without_trade_access_candles_become_four_ticks_a_minute(
    settings_for, new_topic, kafka_bootstrap, tmp_path
):
    topic = new_topic("backfill-candles")
    ledger = tmp_path / "outages.jsonl"
    ledger_with_two_outages(ledger)
    server = FakeFinnhubREST({}, token="k", candles=CANDLES, tick_access=False, faults=[(503, {})])
    with serving(server):
        settings = settings_for(topic=topic, finnhub_api_key="k", outage_log=ledger)
        report = backfill_outages(settings, api=api_for(settings, server))
    assert report.repaired == 3 and {j.via for j in report.jobs} == {"candles"}
    asked = [(p.rsplit("/", 1)[1], q["symbol"], s) for p, q, s in server.requests]
    # one 503 (retried), one 403 on trades, then candles only
    assert asked == [
        ("tick", "COIN", 503), ("tick", "COIN", 403), ("candle", "COIN", 200),
        ("candle", "MARA", 200), ("candle", "MSTR", 200),
    ]  # fmt: skip
    candle_q = [q for p, q, s in server.requests if p.endswith("candle")]
    assert [(q["resolution"], int(q["from"]), int(q["to"])) for q in candle_q] == [
        ("1", T0 // 1000, (T0 + 2 * MIN - 1) // 1000),
        ("1", T0 // 1000, (T0 + 2 * MIN - 1) // 1000),
        ("1", (T0 + 10 * MIN) // 1000, (T0 + 11 * MIN + 10_000) // 1000),
    ]
    got = ticks_in(kafka_bootstrap, topic)
    want = set()
    for symbol, rows in CANDLES.items():
        for t, o, h, low, c, v in rows[:2]:
            m = t * 1000
            want |= {
                (symbol, m, o, 0.0, f"candle:{symbol}:{m}:o"),
                (symbol, m + 1, h, 0.0, f"candle:{symbol}:{m}:h"),
                (symbol, m + 2, low, 0.0, f"candle:{symbol}:{m}:l"),
                (symbol, m + 59_999, c, v, f"candle:{symbol}:{m}:c"),
            }
    assert {(g["symbol"], g["ts"], g["price"], g["volume"], g["id"]) for g in got} == want
    assert {g["source"] for g in got} == {"finnhub-candle"}
    # through the stream's bar state, with a live trade of COIN's first minute that did
    # arrive: each minute's bar is its candle, marked (and the live trade not added)
    live = Tick("COIN", T0 + 3_000, 1.0, 999.0, "live-trade", "finnhub")
    state = PartitionBars(BarRules(conditions=load_rules()), FileRules(), topic, 0)
    decoded = [decode_tick(orjson.dumps(g), g["symbol"].encode(), T0 + 10**7) for g in got]
    sealed = [
        *(
            b
            for i, t in enumerate([live, *decoded])
            for b in state.on_record(Record(i, T0, TICK, t))
        ),
        *state.on_record(Record(len(got) + 1, T0 + 10**8, FLUSH, None)),
    ]
    names = BAR_SCHEMA.names
    rows = [r for batch in sealed for r in batch.bars]
    bars = {(r[0], r[2] // 1000): dict(zip(names, r, strict=True)) for r in rows}
    for symbol, rows in CANDLES.items():
        for t, o, h, low, c, v in rows[:2]:
            bar = bars[(symbol, t * 1000)]
            assert [bar[k] for k in ("open", "high", "low", "close", "volume")] == [o, h, low, c, v]
            assert (bar["candle_count"], bar["trade_count"]) == (4, 4)


def test_dry_run_fetches_and_writes_nothing(settings_for, new_topic, kafka_bootstrap, tmp_path):
    topic = new_topic("backfill-dry")
    ledger = tmp_path / "outages.jsonl"
    ledger_with_two_outages(ledger)
    before = ledger.read_bytes()
    server = FakeFinnhubREST({}, token="k", trades=TRADES)
    with serving(server):
        settings = settings_for(topic=topic, finnhub_api_key="k", outage_log=ledger)
        report = backfill_outages(settings, dry_run=True, api=api_for(settings, server))
    assert [(j.symbol, j.start_ms) for j in report.jobs] == [
        ("COIN", T0), ("MARA", T0), ("MSTR", T0 + 10 * MIN + 5_000),
    ]  # fmt: skip
    assert server.requests == [] and ledger.read_bytes() == before
    assert ticks_in(kafka_bootstrap, topic) == []
    # --since filters by overlap: an old ledger entry is left alone
    assert (
        backfill_outages(settings, since="2024-11-26T15:05:00", dry_run=True).jobs[0].symbol
        == "MSTR"
    )


def test_a_run_that_fails_half_way_resumes_and_repairs_the_rest_once(
    settings_for, new_topic, kafka_bootstrap, tmp_path
):
    topic = new_topic("backfill-crash")
    ledger = tmp_path / "outages.jsonl"
    ledger_with_two_outages(ledger)
    server = FakeFinnhubREST({}, token="k", trades=TRADES)
    with serving(server):
        settings = settings_for(topic=topic, finnhub_api_key="k", outage_log=ledger)
        api = api_for(settings, server, max_retries=1)
        api.client.stock_tick = _break_after_first(api.client.stock_tick, server)
        first = backfill_outages(settings, api=api)
        assert first.repaired == 1 and first.failed == 2
        server.faults = []
        second = backfill_outages(settings, api=api_for(settings, server))
        assert [j.symbol for j in second.jobs] == ["MARA", "MSTR"] and second.repaired == 2
        assert backfill_outages(settings, api=api_for(settings, server)).jobs == []
    ok = [q["symbol"] for p, q, s in server.requests if s == 200]
    assert ok == ["COIN", "MARA", "MSTR"]  # each fetched (and sent) once
    got = ticks_in(kafka_bootstrap, topic)
    assert sorted(g["symbol"] for g in got) == ["COIN", "COIN", "COIN", "MARA", "MSTR"]


def _break_after_first(method, server: FakeFinnhubREST):
    def call(*args, **kwargs):
        result = method(*args, **kwargs)
        server.faults = ["fail"]  # the server breaks once the first symbol is in
        return result

    return call


def test_old_entries_get_their_id_from_their_content(tmp_path):
    path = tmp_path / "old.jsonl"
    old = {"start_ms": T0, "end_ms": T0 + 1, "symbols": ["COIN"], "reason": "x", "source": "s"}
    path.write_bytes(orjson.dumps(old) + b"\n" + b'{"torn')
    entry = read_ledger(path).entries[0]
    assert entry["id"] == entry_id(old)
    new = Outage(T0, ["COIN"], "x", end_ms=T0 + 1, source="s")
    assert orjson.loads(new.line())["id"] == entry_id(old)


def test_command_prints_one_json_document_and_names_a_bad_value(tmp_path):
    import os
    import subprocess
    import sys

    ledger = tmp_path / "outages.jsonl"
    ledger_with_two_outages(ledger)
    exe = str(Path(sys.executable).with_name("stockpipe"))
    env = os.environ | {"STOCKPIPE_OUTAGE_LOG": str(ledger)}
    done = subprocess.run(
        [exe, "backfill-outages", "--dry-run", "--json"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["dry_run"] is True and [j["symbol"] for j in report["jobs"]] == [
        "COIN", "MARA", "MSTR",
    ]  # fmt: skip
    bad = subprocess.run(
        [exe, "backfill-outages", "--since", "soon"], env=env, capture_output=True, timeout=60
    )
    assert bad.returncode == 2 and b"'soon'" in bad.stderr and b"Traceback" not in bad.stderr
