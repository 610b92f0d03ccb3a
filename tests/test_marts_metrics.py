"""Gold metrics on hand-made sessions, and the calendar's range, with real dbt on DuckDB.

The warehouse is built as in test_dbt_transform.py (bronze rows inserted as
`stockpipe load` would, then `flows.transform.dbt_runner.transform`); expectations are
computed independently here with numpy/pandas over the bars loaded.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from test_dbt_transform import load_bronze, random_bars

from flows.errors import StockpipeError
from flows.settings import load_settings
from flows.transform.calendars import SEED_PATH
from flows.transform.dbt_runner import transform

pytestmark = [pytest.mark.slow, pytest.mark.dbt]

NEW_YORK = "America/New_York"
# two NYSE sessions (09:30-16:00 New York = 14:30-21:00 UTC in December)
DAY_1 = "2024-12-02"
DAY_2 = "2024-12-03"


def _session_minutes(day: str, start: str, end: str) -> pd.DatetimeIndex:
    return pd.date_range(
        pd.Timestamp(f"{day} {start}", tz=NEW_YORK),
        pd.Timestamp(f"{day} {end}", tz=NEW_YORK),
        freq="1min",
        inclusive="left",
    ).tz_convert("UTC")


def _bars(symbol: str, starts: pd.DatetimeIndex, level: float, seed: int) -> pd.DataFrame:
    bars = random_bars(symbol, starts, np.random.default_rng(seed))
    scale = level / bars.close.iloc[0]
    for col in ("open", "high", "low", "close", "vwap"):
        bars[col] = bars[col] * scale
    return bars


def _build(tmp_path: Path, rows: pd.DataFrame):
    db = tmp_path / "warehouse.duckdb"
    settings = load_settings(warehouse=f"duckdb:///{db}", dbt_target_path=tmp_path / "target")
    load_bronze(
        db,
        rows.assign(
            _source_file="bars/test/0.parquet", _loaded_at=pd.Timestamp("2024-12-04", tz="UTC")
        ),
    )
    return db, transform(settings)


def test_intraday_realized_vol_starts_at_the_first_real_trade(tmp_path: Path) -> None:
    # day 1: a full session around 100; day 2: pre-market prints around 130, then no
    # regular trade before 09:47, then trading around 150 (far from both earlier closes)
    day_1 = _bars("AAA", _session_minutes(DAY_1, "09:30", "16:00"), 100.0, 1)
    pre = _bars("AAA", _session_minutes(DAY_2, "08:00", "08:10"), 130.0, 2)
    day_2 = _bars("AAA", _session_minutes(DAY_2, "09:47", "16:00"), 150.0, 3)
    rows = pd.concat([day_1, pre, day_2], ignore_index=True)
    db, _ = _build(tmp_path, rows)

    with duckdb.connect(str(db), read_only=True) as con:
        actual = con.execute(
            "select trade_date::varchar as d, intraday_realized_vol "
            "from gold.mart_volatility_daily where symbol = 'AAA' order by 1"
        ).df()
        synthetic_before_first_trade = con.execute(
            "select count(*) from silver.fct_bars_1m where symbol = 'AAA' and is_synthetic "
            f"and trade_date = '{DAY_2}' and session = 'regular'"
        ).fetchone()[0]
    # the 17 minutes 09:30..09:46 are gap-filled with the pre-market close: the case at hand
    assert synthetic_before_first_trade == 17

    def expected(session: pd.DataFrame) -> float:
        session = session.sort_values("window_start")
        closes = session.close.to_numpy()
        first = np.log(closes[0] / session.open.iloc[0])
        returns = np.concatenate([[first], np.diff(np.log(closes))])
        return float(np.sqrt(np.sum(returns**2)) * np.sqrt(252))

    assert list(actual.d) == [DAY_1, DAY_2]
    want = [expected(day_1), expected(day_2)]
    np.testing.assert_allclose(actual.intraday_realized_vol.to_numpy(), want, rtol=1e-9)
    # what the overnight leak would add: far more than the session's own volatility
    leaked = np.log(day_2.close.iloc[0] / pre.close.iloc[-1]) ** 2
    assert leaked * 252 > want[1] ** 2


def test_calendar_seed_covers_2000_through_the_year_after_next() -> None:
    with SEED_PATH.open() as fh:
        dates = [row["calendar_date"] for row in csv.DictReader(fh)]
    assert dates[0] == "2000-01-01"
    assert dates[-1] >= f"{dt.date.today().year + 2}-12-31"
    # one row per day, none missing
    assert len(dates) == (dt.date.fromisoformat(dates[-1]) - dt.date(2000, 1, 1)).days + 1


def test_a_bar_dated_outside_the_calendar_fails_the_transform_naming_the_date(
    tmp_path: Path,
) -> None:
    inside = _bars("AAA", _session_minutes(DAY_1, "09:30", "09:40"), 100.0, 4)
    outside = _bars("AAA", _session_minutes("2031-06-02", "09:30", "09:32"), 100.0, 5)
    with pytest.raises(StockpipeError, match=r"2031-06-02.*outside the calendar") as failed:
        _build(tmp_path, pd.concat([inside, outside], ignore_index=True))
    assert "calendar_seed" in str(failed.value)  # says how to fix it


def test_transform_refuses_a_bar_size_the_marts_are_not_built_on(tmp_path: Path) -> None:
    from flows.errors import StockpipeError
    from flows.settings import load_settings
    from flows.transform.dbt_runner import dbt_environment, transform

    settings = load_settings(bar_seconds=30, warehouse=f"duckdb:///{tmp_path / 'w.duckdb'}")
    assert dbt_environment(settings)["STOCKPIPE_BAR_SECONDS"] == "30"  # staging's filter
    with pytest.raises(StockpipeError, match="STOCKPIPE_BAR_SECONDS=30: the dbt marts are built"):
        transform(settings)
    assert not (tmp_path / "w.duckdb").exists()
