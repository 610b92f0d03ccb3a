"""Source freshness on event time and trading sessions, and throttled webhook alerts.

Alerts go to a real HTTP server on 127.0.0.1 (a thread) that records every POST;
the warehouse is a real DuckDB file read through dbt, as in production.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import recording_webhook
from test_dbt_transform import load_bronze, random_bars

from flows.settings import load_settings
from flows.transform import orchestration
from flows.transform.dbt_runner import assess_freshness, trading_time_between

pytestmark = pytest.mark.dbt  # freshness is read through dbt sources

UTC = dt.UTC
CRYPTO = "BINANCE:BTCUSDT"
HOUR = dt.timedelta(hours=1)
LIMIT = dt.timedelta(minutes=30)


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# ------------------------------------------------------------ trading time


def test_nights_weekends_and_holidays_are_not_trading_time() -> None:
    # Fri 2026-11-20 close is 21:00 UTC (16:00 New York); Mon 2026-11-23 opens 14:30 UTC
    assert trading_time_between("XNYS", utc("2026-11-20 21:00"), utc("2026-11-23 14:30")) == (
        dt.timedelta(0)
    )
    assert (
        trading_time_between("XNYS", utc("2026-11-20 20:00"), utc("2026-11-23 15:30")) == 2 * HOUR
    )
    # overnight
    assert trading_time_between("XNYS", utc("2026-11-23 21:00"), utc("2026-11-24 14:30")) == (
        dt.timedelta(0)
    )
    # Thanksgiving (Thu 26th) is closed, Fri 27th closes at 13:00 New York (18:00 UTC)
    assert trading_time_between("XNYS", utc("2026-11-25 21:00"), utc("2026-11-28 12:00")) == (
        dt.timedelta(hours=3, minutes=30)
    )
    # crypto trades 24/7
    assert trading_time_between("24/7", utc("2026-11-20 21:00"), utc("2026-11-23 14:30")) == (
        dt.timedelta(hours=65, minutes=30)
    )


def test_freshness_is_session_aware_per_calendar() -> None:
    newest = {"XNYS": utc("2026-11-27 18:00"), "24/7": utc("2026-11-27 18:00")}
    saturday = assess_freshness(newest, utc("2026-11-28 12:00"), LIMIT)
    assert {r.calendar: r.stale for r in saturday} == {"XNYS": False, "24/7": True}
    # Monday, 45 minutes into the session: the stocks' feed is late now
    monday = assess_freshness(newest, utc("2026-11-30 15:15"), LIMIT)
    xnys = next(r for r in monday if r.calendar == "XNYS")
    assert xnys.stale and xnys.trading_lag == dt.timedelta(minutes=45)
    # ten minutes after the open is within the limit
    early = assess_freshness(newest, utc("2026-11-30 14:40"), LIMIT)
    assert not next(r for r in early if r.calendar == "XNYS").stale


# ------------------------------------------------------------ webhook alerts


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    # the path stands for a token: it must never be logged nor sent
    with recording_webhook("/hooks/T0KEN-s3cret") as hook:
        yield hook


def _load(db: Path, symbol: str, last_end: pd.Timestamp, minutes: int, loaded_at: str) -> None:
    starts = pd.date_range(end=last_end - pd.Timedelta(minutes=1), periods=minutes, freq="1min")
    bars = random_bars(symbol, starts, np.random.default_rng(minutes))
    bars["_source_file"] = f"bars/{loaded_at}.parquet"
    bars["_loaded_at"] = pd.Timestamp(loaded_at, tz="UTC")
    load_bronze(db, bars)


@pytest.mark.slow
def test_a_stale_source_alerts_once_then_its_recovery_once(
    tmp_path: Path,
    webhook: tuple[str, list[dict]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, received = webhook
    db = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("STOCKPIPE_ALERT_WEBHOOK", url)
    settings = load_settings(warehouse=f"duckdb:///{db}", dbt_target_path=tmp_path / "target")
    caplog.set_level(logging.INFO)
    now = pd.Timestamp.now(tz="UTC").floor("min")
    # a 24/7 pair whose feed stopped two hours ago (loaded two days ago, on a slow loader)
    _load(db, CRYPTO, now - pd.Timedelta(hours=2), 30, str(now - pd.Timedelta(days=2)))

    runs = [orchestration.source_freshness(settings) for _ in range(3)]

    assert runs == [["source.stockpipe.bronze.bars: warn"]] * 3
    assert len(received) == 1, [m["body"] for m in received]
    alert = json.loads(received[0]["body"])
    assert received[0]["content_type"] == "application/json"
    assert alert["event"] == "stockpipe.stale_source" and alert["state"] == "stale"
    assert "stale" in alert["text"] and "bronze.bars" in alert["text"]
    assert alert["calendar"] == "24/7"
    assert 2 * 3600 - 120 <= alert["trading_lag_seconds"] <= 2 * 3600 + 600

    # the feed is back: one recovery alert, then quiet
    _load(db, CRYPTO, now + pd.Timedelta(minutes=1), 5, str(now))
    assert orchestration.source_freshness(settings) == []
    assert orchestration.source_freshness(settings) == []
    assert len(received) == 2
    recovery = json.loads(received[1]["body"])
    assert recovery["event"] == "stockpipe.source_fresh"
    assert (recovery["state"], recovery["previous_state"]) == ("fresh", "stale")
    assert "recovered" in recovery["text"]

    # the webhook URL (a secret) is in no payload, no log line, no state file
    secret = "T0KEN-s3cret"
    assert all(secret.encode() not in m["body"] for m in received)
    assert secret not in caplog.text
    assert secret not in orchestration.alert_state_path(settings).read_text()


@pytest.mark.slow
def test_no_alert_for_stocks_over_the_weekend(
    tmp_path: Path, webhook: tuple[str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = webhook
    db = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("STOCKPIPE_ALERT_WEBHOOK", url)
    settings = load_settings(warehouse=f"duckdb:///{db}", dbt_target_path=tmp_path / "target")
    # the last bars of Friday 2026-11-20's session (close 21:00 UTC)
    _load(db, "AAA", pd.Timestamp("2026-11-20 21:00", tz="UTC"), 30, "2026-11-20 21:05")

    saturday = orchestration.source_freshness(settings, now=utc("2026-11-21 18:00"))
    monday_open = orchestration.source_freshness(settings, now=utc("2026-11-23 14:45"))
    monday_late = orchestration.source_freshness(settings, now=utc("2026-11-23 15:30"))

    assert (saturday, monday_open) == ([], [])
    assert monday_late == ["source.stockpipe.bronze.bars: warn"]
    assert [json.loads(m["body"])["calendar"] for m in received] == ["XNYS"]


def test_failure_alerts_are_slack_compatible_and_mask_secrets(
    webhook: tuple[str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = webhook
    monkeypatch.setenv("STOCKPIPE_ALERT_WEBHOOK", url)
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "hunter2-pw")
    orchestration.on_failure(
        {"run_id": "manual__x", "exception": RuntimeError("login hunter2-pw failed")}
    )
    (alert,) = [json.loads(m["body"]) for m in received]
    assert alert["event"] == "stockpipe.failure"
    assert "failed" in alert["text"] and "RuntimeError" in alert["text"]
    assert "hunter2-pw" not in json.dumps(alert)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hooks/sp secret tok",  # a malformed path: errors quote it
        "no-scheme/sp-secret-tok",  # no scheme: errors quote the whole URL
        "http://127.0.0.1:9/hooks/sp-secret-tok",  # nothing listens: connection refused
    ],
)
def test_an_undeliverable_alert_never_logs_the_webhook(url, caplog) -> None:
    settings = load_settings(alert_webhook=url)
    with caplog.at_level(logging.DEBUG):
        assert orchestration.send_alert(settings, {"event": "test"}) is False
    assert "could not deliver the alert" in caplog.text
    assert "secret" not in caplog.text and "tok" not in caplog.text
