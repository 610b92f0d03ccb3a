"""Split-adjusted daily models beside the raw ones, with real dbt on DuckDB.

SPL trades at half its former price from its 2-for-1 split's ex-date on, with twice
the volume; AAA has no split. The split arrives later, in bronze.splits (the table a
fetcher fills, absent on the first run): the adjusted history is restated, the
adjusted indicators equal TA-Lib's on the adjusted series, and the raw ones keep
theirs. Expectations are computed here with pandas and TA-Lib from the bars loaded.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pytest
import talib
from test_dbt_transform import assert_close, load_bronze, sessions_per_year, talib_trend
from test_marts_metrics import _bars, _session_minutes

from flows.settings import load_settings
from flows.transform.dbt_runner import transform

pytestmark = [pytest.mark.slow, pytest.mark.dbt]

SESSIONS = 70
EX_INDEX = 40  # SPL's split takes effect on its 41st session
FIRST_LOAD_SESSIONS = 65


def _sessions() -> list[str]:
    cal = xcals.get_calendar("XNYS", start="2024-01-01", end="2024-12-31")
    return [str(d.date()) for d in cal.sessions[:SESSIONS]]


def _series(symbol: str, days: list[str], seed: int, split_at: int | None) -> pd.DataFrame:
    """Thirty one-minute bars after each open, the day's level a random walk; from
    `split_at` on, prices halved and volumes doubled (a 2-for-1 split)."""
    rng = np.random.default_rng(seed)
    levels = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, len(days))))
    parts = []
    for i, (day, level) in enumerate(zip(days, levels, strict=True)):
        bars = _bars(symbol, _session_minutes(day, "09:30", "10:00"), level, seed * 1000 + i)
        if split_at is not None and i >= split_at:
            for col in ("open", "high", "low", "close", "vwap"):
                bars[col] = bars[col] / 2
            bars["volume"] = bars.volume * 2
        parts.append(bars)
    return pd.concat(parts, ignore_index=True)


def _daily(bars: pd.DataFrame) -> pd.DataFrame:
    bars = bars.sort_values(["symbol", "window_start"])
    bars = bars.assign(trade_date=bars.window_start.dt.tz_convert("America/New_York").dt.date)
    return (
        bars.groupby(["symbol", "trade_date"])
        .agg(
            open=("open", "first"),
            high=("high", "max"),
            low=("low", "min"),
            close=("close", "last"),
            volume=("volume", "sum"),
        )
        .reset_index()
    )


def _indicators(day: pd.DataFrame) -> pd.DataFrame:
    """TA-Lib's (and the stated formulas') values on one symbol's daily series."""
    close, high, low = (day[c].to_numpy(float) for c in ("close", "high", "low"))
    log_return = np.log(day.close / day.close.shift())
    year = sessions_per_year(day.symbol.iloc[0])
    return pd.DataFrame(
        {
            **talib_trend(close),
            "atr_14": talib.ATR(high, low, close, 14),
            "log_return": log_return.to_numpy(),
            "realized_vol_20d": (log_return.rolling(20).std(ddof=1) * np.sqrt(year)).to_numpy(),
        }
    )


def _marts(db: Path, adjusted: bool) -> pd.DataFrame:
    suffix = "_adjusted" if adjusted else ""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            f"select * from gold.mart_trend_daily{suffix} "
            f"join gold.mart_volatility_daily{suffix} using (symbol, trade_date) "
            "order by symbol, trade_date"
        ).df()


def _assert_marts(actual: pd.DataFrame, daily: pd.DataFrame, what: str) -> None:
    expected = pd.concat(
        [_indicators(group) for _, group in daily.groupby("symbol", sort=True)], ignore_index=True
    )
    assert len(actual) == len(expected), what
    for col in expected.columns:
        assert_close(actual[col], expected[col], f"{what} {col}", atol=1e-12)


def test_split_adjusted_marts_equal_talib_on_the_adjusted_series(tmp_path: Path) -> None:
    days = _sessions()
    ex_date = days[EX_INDEX]
    bars = pd.concat(
        [_series("SPL", days, 1, split_at=EX_INDEX), _series("AAA", days, 2, split_at=None)],
        ignore_index=True,
    )
    in_first = bars.window_start < pd.Timestamp(days[FIRST_LOAD_SESSIONS], tz="America/New_York")
    db = tmp_path / "warehouse.duckdb"
    settings = load_settings(warehouse=f"duckdb:///{db}", dbt_target_path=tmp_path / "target")

    # first run: no bronze.splits yet, and the seed's demo split is for another symbol
    load_bronze(
        db,
        bars[in_first].assign(
            _source_file="bars/a.parquet", _loaded_at=pd.Timestamp("2024-04-08", tz="UTC")
        ),
    )
    transform(settings, docs=False)
    raw_first = _daily(bars[in_first])
    _assert_marts(_marts(db, adjusted=True), raw_first, "adjusted, no split known")
    _assert_marts(_marts(db, adjusted=False), raw_first, "raw, first run")

    # the fetcher's table arrives with the split, and the days after it with a later load
    with duckdb.connect(str(db)) as con:
        con.execute(
            "create table bronze.splits (symbol varchar, ex_date date, split_from double, "
            "split_to double, source varchar)"
        )
        con.execute(f"insert into bronze.splits values ('SPL', '{ex_date}', 1, 2, 'test')")
    load_bronze(
        db,
        bars[~in_first].assign(
            _source_file="bars/b.parquet", _loaded_at=pd.Timestamp("2024-04-15", tz="UTC")
        ),
    )
    transform(settings, docs=False)

    raw = _daily(bars)
    factor = np.where((raw.symbol == "SPL") & (raw.trade_date < pd.Timestamp(ex_date).date()), 2, 1)
    adjusted = raw.assign(
        **{c: raw[c] / factor for c in ("open", "high", "low", "close")},
        volume=raw.volume * factor,
    )
    with duckdb.connect(str(db), read_only=True) as con:
        daily_adjusted = con.execute(
            "select * from gold.fct_bars_daily_adjusted order by symbol, trade_date"
        ).df()
    # _daily's rows, like the query's, are in (symbol, trade_date) order
    for col in ("open", "high", "low", "close", "volume"):
        assert_close(daily_adjusted[col], adjusted[col], f"adjusted {col}")
    assert_close(daily_adjusted.split_factor, factor, "split_factor")

    adjusted_marts = _marts(db, adjusted=True)
    _assert_marts(adjusted_marts, adjusted, "adjusted")
    _assert_marts(_marts(db, adjusted=False), raw, "raw")
    # the split day is an ordinary day once adjusted, a -69% log return raw
    on_ex = adjusted_marts[
        (adjusted_marts.symbol == "SPL") & (adjusted_marts.trade_date.astype(str) == ex_date)
    ]
    assert abs(on_ex.log_return.iloc[0]) < 0.2
