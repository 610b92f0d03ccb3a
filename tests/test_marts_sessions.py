"""Daily rows say whether their session is complete, with real dbt on DuckDB.

The rule (contract 3, dbt/models/gold/fct_bars_daily.sql): a session is complete when
the data's newest bar (any symbol) ends at or after its close, and none of its minutes
from the open to the day's last real bar is missing (silver fills the minutes between
a symbol's first and last bar, so only a day before the symbol's first bar at the open
lacks some). Expectations are computed here from the bars loaded, with pandas.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest
from test_dbt_transform import load_bronze
from test_marts_metrics import _bars, _session_minutes

from flows.settings import load_settings
from flows.transform.dbt_runner import transform

pytestmark = [pytest.mark.slow, pytest.mark.dbt]

NEW_YORK = "America/New_York"
DAYS = ["2024-12-02", "2024-12-03", "2024-12-04"]
DAILY_MODELS = ("gold.fct_bars_daily", "gold.mart_trend_daily", "gold.mart_volatility_daily")


def _expected(bars: pd.DataFrame) -> dict[tuple[str, str], bool]:
    """(symbol, day) -> complete, by the rule, from the bars alone (NYSE, 09:30-16:00)."""
    clock = bars.window_end.max()
    first_bar = bars.groupby("symbol").window_start.min()
    out = {}
    for symbol, day in (
        bars.assign(day=bars.window_start.dt.tz_convert(NEW_YORK).dt.date)
        .groupby(["symbol", "day"])
        .groups
    ):
        market_open = pd.Timestamp(f"{day} 09:30", tz=NEW_YORK)
        market_close = pd.Timestamp(f"{day} 16:00", tz=NEW_YORK)
        out[(symbol, str(day))] = bool(clock >= market_close and first_bar[symbol] <= market_open)
    return out


def _flags(db: Path) -> dict[str, dict[tuple[str, str], bool]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {
            model: {
                (symbol, day): flag
                for symbol, day, flag in con.execute(
                    f"select symbol, trade_date::varchar, is_session_complete from {model}"
                ).fetchall()
            }
            for model in DAILY_MODELS
        }


def test_daily_rows_say_whether_their_session_is_complete(tmp_path: Path) -> None:
    # AAA's history starts at 09:45 on day 1 (no data before: incomplete), day 2 is a
    # whole session, day 3 has come in up to 11:00 (the provisional row). BBB trades
    # every day from the open, on day 3 until 14:00 and then no more: its day 3 turns
    # complete once the data (AAA's later bars) passes the close, with no bar of its own.
    first = pd.concat(
        [
            _bars("AAA", _session_minutes(DAYS[0], "09:45", "16:00"), 100.0, 1),
            _bars("AAA", _session_minutes(DAYS[1], "09:30", "16:00"), 101.0, 2),
            _bars("AAA", _session_minutes(DAYS[2], "09:30", "11:00"), 102.0, 3),
            _bars("BBB", _session_minutes(DAYS[0], "09:30", "16:00"), 50.0, 4),
            _bars("BBB", _session_minutes(DAYS[1], "09:30", "16:00"), 51.0, 5),
            _bars("BBB", _session_minutes(DAYS[2], "09:30", "14:00"), 52.0, 6),
        ],
        ignore_index=True,
    )
    second = _bars("AAA", _session_minutes(DAYS[2], "11:00", "16:30"), 103.0, 7)

    db = tmp_path / "warehouse.duckdb"
    settings = load_settings(warehouse=f"duckdb:///{db}", dbt_target_path=tmp_path / "target")
    load_bronze(
        db,
        first.assign(
            _source_file="bars/a.parquet", _loaded_at=pd.Timestamp("2024-12-04 17:00", tz="UTC")
        ),
    )
    transform(settings, docs=False)
    after_first = _flags(db)
    load_bronze(
        db,
        second.assign(
            _source_file="bars/b.parquet", _loaded_at=pd.Timestamp("2024-12-04 22:00", tz="UTC")
        ),
    )
    transform(settings, docs=False)
    after_second = _flags(db)

    want_first = _expected(first)
    want_second = _expected(pd.concat([first, second], ignore_index=True))
    # the cases at hand, stated outright
    assert want_first == {
        ("AAA", DAYS[0]): False,
        ("AAA", DAYS[1]): True,
        ("AAA", DAYS[2]): False,
        ("BBB", DAYS[0]): True,
        ("BBB", DAYS[1]): True,
        ("BBB", DAYS[2]): False,
    }
    assert want_second == {**want_first, ("AAA", DAYS[2]): True, ("BBB", DAYS[2]): True}
    for model in DAILY_MODELS:
        assert after_first[model] == want_first, model
        assert after_second[model] == want_second, model
