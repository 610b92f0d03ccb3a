"""`stockpipe fetch-splits` against the loopback Finnhub REST server (`/stock/split`), into
bronze.splits on real DuckDB and on the Snowflake emulator."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import duckdb
import fakesnow
import pytest
from fakes.finnhub_server import FakeFinnhubREST
from helpers import run_stockpipe
from load_helpers import EMULATED_LOADER, emulator_query
from test_backfill_outages import serving

from flows.errors import StockpipeError
from flows.ingest.finnhub_rest import FinnhubApi
from flows.settings import Settings, load_settings
from flows.warehouse.splits import fetch_splits

SPLITS = {
    "COIN": [("2021-06-01", 1.0, 2.0), ("2024-03-04", 1.0, 4.0)],
    "MSTR": [("2024-08-08", 1.0, 10.0), ("1999-01-04", 1.0, 2.0)],  # the second before --since
    "MARA": [],
}
SYMBOLS = ["COIN", "MARA", "MSTR", "BINANCE:BTCUSDT"]


def settings_for(tmp_path: Path, server: FakeFinnhubREST, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "warehouse": f"duckdb:///{tmp_path / 'wh.duckdb'}",
        "lake_url": str(tmp_path / "lake"),
        "finnhub_api_key": "k",
        "finnhub_rest_url": server.base_url,
        "finnhub_calls_per_minute": 6000,
        "symbols": SYMBOLS,
    }
    return load_settings(**{**base, **overrides})


def api_for(settings: Settings, server: FakeFinnhubREST, **kw: object) -> FinnhubApi:
    return FinnhubApi(settings, base_url=server.base_url, backoff_initial=0.05, **kw)


def duckdb_rows(settings: Settings) -> list[tuple]:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        return con.execute(
            "select symbol, ex_date, split_from, split_to, source from bronze.splits order by 1, 2"
        ).fetchall()


EXPECTED = [
    ("COIN", date(2021, 6, 1), 1.0, 2.0, "finnhub"),
    ("COIN", date(2024, 3, 4), 1.0, 4.0, "finnhub"),
    ("MSTR", date(2024, 8, 8), 1.0, 10.0, "finnhub"),
]


def test_splits_land_in_bronze_after_a_429_and_a_5xx_and_crypto_is_never_asked(
    tmp_path: Path,
) -> None:
    server = FakeFinnhubREST(
        {}, token="k", splits=SPLITS, faults=[(429, {"Retry-After": "0.1"}), (503, {})]
    )
    with serving(server):
        settings = settings_for(tmp_path, server)
        report = fetch_splits(
            settings, since="2000-01-01", until="2025-12-31", api=api_for(settings, server)
        )
        asked = [(q["symbol"], s) for _p, q, s in server.requests]
        # paused on the 429, retried the 503, then one call per equity; the pair is skipped
        assert asked == [("COIN", 429), ("COIN", 503), ("COIN", 200), ("MARA", 200), ("MSTR", 200)]
        assert {(q["from"], q["to"]) for _p, q, _s in server.requests} == {
            ("2000-01-01", "2025-12-31")
        }
        assert report.skipped == ["BINANCE:BTCUSDT"] and report.failed == {}
        assert (report.rows, report.changed) == (3, 3)
        assert duckdb_rows(settings) == EXPECTED

        # again: nothing changes; a corrected factor replaces its row, the others stay
        assert (
            fetch_splits(settings, since="2000-01-01", api=api_for(settings, server)).changed == 0
        )
        server.splits = {"COIN": [("2024-03-04", 1.0, 3.0)]}
        fixed = fetch_splits(settings, since="2000-01-01", api=api_for(settings, server))
        assert (fixed.rows, fixed.changed) == (1, 1)
        rows = duckdb_rows(settings)
        assert rows == [EXPECTED[0], ("COIN", date(2024, 3, 4), 1.0, 3.0, "finnhub"), EXPECTED[2]]


def test_a_symbol_finnhub_keeps_failing_is_reported_and_the_rest_is_written(
    tmp_path: Path,
) -> None:
    server = FakeFinnhubREST({}, token="k", splits=SPLITS)
    with serving(server):
        settings = settings_for(tmp_path, server)
        api = api_for(settings, server, max_retries=1)
        ask = api.client.stock_splits

        def breaks_on_mara(symbol, **kw):
            server.faults = ["fail"] if symbol == "MARA" else []
            return ask(symbol, **kw)

        api.client.stock_splits = breaks_on_mara
        report = fetch_splits(settings, since="2000-01-01", api=api)
    assert list(report.failed) == ["MARA"] and "failed 2 times (500)" in report.failed["MARA"]
    assert duckdb_rows(settings) == EXPECTED  # COIN and MSTR written


def test_the_command_dry_run_json_and_its_exit_codes(tmp_path: Path) -> None:
    server = FakeFinnhubREST({}, token="k", splits=SPLITS)
    with serving(server):
        settings = settings_for(tmp_path, server)
        done = run_stockpipe(
            settings, "fetch-splits", "--symbols", "COIN,MSTR", "--dry-run", "--json"
        )
        assert done.returncode == 0, done.stdout
        report = json.loads(done.stdout)
        assert report["dry_run"] is True and report["symbols"] == ["COIN", "MSTR"]
        assert [(s["symbol"], s["ex_date"]) for s in report["splits"]] == [
            ("COIN", "2021-06-01"), ("COIN", "2024-03-04"), ("MSTR", "2024-08-08"),
        ]  # fmt: skip
        assert not settings.duckdb_path.exists()  # nothing written, not even a warehouse

        text = run_stockpipe(settings, "fetch-splits")
        assert text.returncode == 0, text.stdout
        assert "skipped BINANCE:BTCUSDT: a crypto pair" in text.stdout
        assert "3 row(s) in bronze.splits, 3 inserted or changed" in text.stdout
        assert duckdb_rows(settings) == EXPECTED

        server.faults = ["fail"]  # Finnhub down: 69, what to do said, no traceback
        down = run_stockpipe(settings, "fetch-splits", "--symbols", "COIN")
        assert down.returncode == 69, down.stdout
        assert "run again" in down.stdout and "Traceback" not in down.stdout

    no_key = load_settings(**{**settings.model_dump(), "finnhub_api_key": None})
    missing = run_stockpipe(no_key, "fetch-splits", "--dry-run")
    assert missing.returncode == 2 and "needs FINNHUB_API_KEY" in missing.stdout
    for argv, says in [
        (["--since", "soon"], "--since 'soon'"),
        (["--symbols", "not a symbol"], "not a valid symbol"),
        (["--since", "2025-01-02", "--until", "2025-01-01"], "is after --until"),
    ]:
        bad = run_stockpipe(settings, "fetch-splits", *argv)
        assert bad.returncode == 2, (argv, bad.stdout)
        assert says in bad.stdout and "Traceback" not in bad.stdout, bad.stdout


def test_only_crypto_asks_nothing_and_needs_no_key(tmp_path: Path) -> None:
    settings = load_settings(symbols=["BINANCE:BTCUSDT"], warehouse=f"duckdb:///{tmp_path / 'w'}")
    report = fetch_splits(settings)
    assert report.skipped == ["BINANCE:BTCUSDT"] and report.symbols == [] and report.calls == 0


def test_splits_upsert_on_the_snowflake_emulator(tmp_path: Path) -> None:
    server = FakeFinnhubREST({}, token="k", splits=SPLITS)
    with serving(server), fakesnow.patch(nop_regexes=["^REMOVE "]):
        settings = settings_for(tmp_path, server, **EMULATED_LOADER)
        report = fetch_splits(settings, since="2000-01-01", api=api_for(settings, server))
        assert (report.rows, report.changed) == (3, 3)
        again = fetch_splits(settings, since="2000-01-01", api=api_for(settings, server))
        assert again.changed == 0
        rows = emulator_query(
            "select symbol, ex_date, split_from, split_to, source"
            " from stockpipe.bronze.splits order by 1, 2"
        )
    assert rows == EXPECTED


def test_a_bad_range_is_an_error_naming_it() -> None:
    with pytest.raises(StockpipeError, match="--until 'later'"):
        fetch_splits(load_settings(finnhub_api_key="k"), until="later")
