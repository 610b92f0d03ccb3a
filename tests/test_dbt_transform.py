"""The dbt project on DuckDB: real dbt, real DuckDB, generated one-minute bars.

One module-scoped warehouse is built in two loads, the second run incremental:
~120 NYSE sessions (Thanksgiving, its half day, Christmas Eve and the 2025
holidays, both DST changes) of two stocks plus a 24/7 crypto pair, with missing
minutes, restated revisions, replayed duplicates, late bars that fill earlier
gaps and restatements of bars from the first load. Every expectation is computed
independently here, with pandas, exchange-calendars and TA-Lib.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pytest
import talib

from flows.errors import StockpipeError
from flows.settings import load_settings
from flows.transform.dbt_runner import TransformResult, transform

# Every table dbt builds, with its unique key (the DuckDB and Snowflake-emulator tests).
TABLES = {
    "silver.fct_bars_1m": ["symbol", "window_start"],
    "gold.fct_bars_daily": ["symbol", "trade_date"],
    "gold.mart_intraday_hourly": ["symbol", "hour_start"],
    "gold.mart_trend_daily": ["symbol", "trade_date"],
    "gold.mart_volatility_daily": ["symbol", "trade_date"],
    "gold.mart_correlation_daily": ["symbol_a", "symbol_b", "trade_date"],
    "gold.fct_bars_daily_adjusted": ["symbol", "trade_date"],
    "gold.mart_trend_daily_adjusted": ["symbol", "trade_date"],
    "gold.mart_volatility_daily_adjusted": ["symbol", "trade_date"],
}

pytestmark = [pytest.mark.slow, pytest.mark.dbt]

STOCKS = ["AAA", "BBB"]
CRYPTO = "BINANCE:BTCUSDT"
SYMBOLS = [*STOCKS, CRYPTO]
FIRST_SESSION = pd.Timestamp("2024-10-01")
SESSIONS = 120
SECOND_LOAD_SESSIONS = 8  # the last sessions arrive with the second load
NEW_YORK = "America/New_York"
RTOL = 1e-6


def sessions_per_year(symbol: str) -> int:
    """Contract 3: sessions a year of the symbol's calendar, 24/7 for `X:Y` crypto."""
    return 365 if ":" in symbol else 252


BRONZE_COLUMNS = [
    "symbol",
    "interval_s",
    "window_start",
    "window_end",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "trade_count",
    "first_ts",
    "last_ts",
    "revision",
    "emitted_at",
    "_source_file",
    "_loaded_at",
]
BRONZE_DDL = """
create schema if not exists bronze;
create table if not exists bronze.bars (
    symbol varchar, interval_s integer,
    window_start timestamptz, window_end timestamptz,
    open double, high double, low double, close double, volume double, vwap double,
    trade_count bigint, first_ts timestamptz, last_ts timestamptz, revision integer,
    emitted_at timestamptz, _source_file varchar, _loaded_at timestamptz, _load_seq bigint
);
"""


# ---------------------------------------------------------------- test data


def nyse_schedule() -> pd.DataFrame:
    """The test's NYSE sessions with pre/post bounds, straight from exchange-calendars."""
    cal = xcals.get_calendar("XNYS", start="2024-01-01", end="2025-12-31")
    schedule = cal.schedule.loc[FIRST_SESSION:].iloc[:SESSIONS]
    days = schedule.index.date
    pre_open = [pd.Timestamp(f"{d} 04:00", tz=NEW_YORK).tz_convert("UTC") for d in days]
    return pd.DataFrame(
        {
            "trade_date": days,
            "pre_open": pre_open,
            "market_open": schedule["open"].to_numpy(),
            "market_close": schedule["close"].to_numpy(),
            "post_close": schedule["close"].to_numpy() + pd.Timedelta(hours=4),
        }
    )


def random_bars(symbol: str, starts: pd.DatetimeIndex, rng: np.random.Generator) -> pd.DataFrame:
    """Valid final (revision 0) bars for the given minutes: a random walk of log prices."""
    n = len(starts)
    base = 100.0 if symbol != CRYPTO else 60_000.0
    close = base * np.exp(np.cumsum(rng.normal(0, 8e-4, n)))
    open_ = np.concatenate([[base], close[:-1]]) * np.exp(rng.normal(0, 2e-4, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 3e-4, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 3e-4, n)))
    volume = np.round(rng.lognormal(5, 1, n))
    vwap = np.where(volume > 0, low + (high - low) * rng.uniform(0, 1, n), np.nan)
    return pd.DataFrame(
        {
            "symbol": symbol,
            "interval_s": 60,
            "window_start": starts,
            "window_end": starts + pd.Timedelta(minutes=1),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "vwap": vwap,
            "trade_count": rng.integers(1, 60, n),
            "first_ts": starts + pd.Timedelta(seconds=1),
            "last_ts": starts + pd.Timedelta(seconds=59),
            "revision": 0,
            "emitted_at": starts + pd.Timedelta(seconds=65),
        }
    )


def _minutes(start: pd.Timestamp, end: pd.Timestamp) -> np.ndarray:
    """Minute starts in [start, end) as int64 nanoseconds since the epoch (UTC)."""
    return np.arange(start.value, end.value, 60 * 10**9, dtype=np.int64)


@dataclass
class Loads:
    first: pd.DataFrame  # bronze rows of the first load
    second: pd.DataFrame  # bronze rows of the second load
    third: pd.DataFrame  # one restated bar of the last session
    fourth: pd.DataFrame  # another, a little later in that session, stamped by a slow clock
    final: pd.DataFrame  # the bar that must win for every (symbol, window_start)
    split: pd.Timestamp  # first window_start of the second load's new sessions
    holiday_print: pd.Timestamp


def generate_loads(schedule: pd.DataFrame, seed: int = 7) -> Loads:
    rng = np.random.default_rng(seed)
    finals = []
    for symbol in STOCKS:
        chunks = []
        for pre, o, c, post in schedule[
            ["pre_open", "market_open", "market_close", "post_close"]
        ].itertuples(index=False):
            chunks.append(_minutes(o, c))
            chunks.append(rng.choice(_minutes(pre, o), 12, replace=False))
            chunks.append(rng.choice(_minutes(c, post), 12, replace=False))
        starts = pd.to_datetime(np.sort(np.concatenate(chunks)), utc=True)
        finals.append(random_bars(symbol, starts, rng))
    first_day = schedule.trade_date.iloc[0]
    last_day = schedule.trade_date.iloc[-1]
    crypto_minutes = pd.date_range(
        pd.Timestamp(first_day, tz="UTC"),
        pd.Timestamp(last_day, tz="UTC") + pd.Timedelta(days=1),
        freq="1min",
        inclusive="left",
    )
    finals.append(random_bars(CRYPTO, crypto_minutes, rng))
    full = pd.concat(finals, ignore_index=True)

    # a stray print on Thanksgiving: kept as `closed`, never gap-filled around
    holiday_print = pd.Timestamp("2024-11-28 17:00", tz="UTC")
    stray = random_bars("AAA", pd.DatetimeIndex([holiday_print]), rng)
    stray[["open", "high", "low", "close"]] = full.loc[full.symbol == "AAA", "close"].iloc[0]
    full = pd.concat([full, stray], ignore_index=True).sort_values(["symbol", "window_start"])
    full = full.reset_index(drop=True)

    # minutes never traded (synthetic in silver), never the first or last bar of a symbol
    interior = (
        full.groupby("symbol")
        .cumcount()
        .between(5, full.groupby("symbol").symbol.transform("size") - 6)
    )
    missing = (
        interior & (rng.uniform(0, 1, len(full)) < 0.03) & (full.window_start != holiday_print)
    )
    # whole-hour gap in one stock's session: a run of synthetic bars
    gap_day = schedule.market_open.iloc[len(schedule) // 3]
    missing |= (full.symbol == "BBB") & full.window_start.between(
        gap_day + pd.Timedelta(minutes=60), gap_day + pd.Timedelta(minutes=119)
    )
    final = full[~missing].reset_index(drop=True)
    # minutes whose trades could set no price (trade conditions: an average-price print
    # alone, say): null prices in bronze, the previous priced close in silver, their
    # volume kept; AAA's in the first half of the history and the crypto pair's
    interior = (
        final.groupby("symbol")
        .cumcount()
        .between(5, final.groupby("symbol").symbol.transform("size") - 6)
    )
    halfway = schedule.market_open.iloc[len(schedule) // 2]
    unpriced = (
        interior
        & (rng.uniform(0, 1, len(final)) < 0.004)
        & (((final.symbol == "AAA") & (final.window_start < halfway)) | (final.symbol == CRYPTO))
        & (final.window_start != holiday_print)
    )
    final.loc[unpriced, ["open", "high", "low", "close"]] = np.nan

    split = schedule.market_open.iloc[len(schedule) - SECOND_LOAD_SESSIONS] - pd.Timedelta(hours=6)
    early = final.window_start < split
    # late bars: minutes of the first period that only arrive with the second load
    late = early & (rng.uniform(0, 1, len(final)) < 0.01)
    # restated in the second load: the first load carries revision 0 with other prices
    restated_later = early & ~late & (rng.uniform(0, 1, len(final)) < 0.005)
    # restated within a load: revisions 0 (and sometimes 1) precede the final one
    restated = rng.uniform(0, 1, len(final)) < 0.01
    twice = restated & (rng.uniform(0, 1, len(final)) < 0.3)

    final.loc[restated_later | restated, "revision"] = 1
    final.loc[twice, "revision"] = 2

    def superseded(rows: pd.DataFrame, revision: int, factor: float) -> pd.DataFrame:
        out = rows.copy()
        out["revision"] = revision
        for col in ("open", "high", "low", "close", "vwap"):
            out[col] = out[col] * factor
        out["volume"] = out["volume"] + 7
        return out

    first = pd.concat(
        [
            final[early & ~late & ~restated_later],
            superseded(final[early & ~late & restated_later], 0, 1.01),
            superseded(final[early & ~late & restated], 0, 0.99),
            superseded(final[early & ~late & twice], 1, 1.02),
        ]
    )
    second = pd.concat(
        [
            final[~early | late | restated_later],
            superseded(final[~early & restated], 0, 0.98),
            superseded(final[~early & twice], 1, 1.03),
        ]
    )

    def stamp(rows: pd.DataFrame, loaded_at: str, tag: str) -> pd.DataFrame:
        rows = rows.copy()
        rows["_source_file"] = [f"bars/{tag}/{i // 5000}.parquet" for i in range(len(rows))]
        rows["_loaded_at"] = pd.Timestamp(loaded_at, tz="UTC")
        # a replay repeats some revisions exactly (another file, a later load)
        repeats = rows.sample(frac=0.005, random_state=int(rng.integers(1 << 30)))
        repeats["_source_file"] = f"bars/{tag}/replay.parquet"
        repeats["_loaded_at"] = rows["_loaded_at"].iloc[0] + pd.Timedelta(minutes=2)
        return pd.concat([rows, repeats], ignore_index=True)[BRONZE_COLUMNS]

    # two tiny loads (each followed by a run) restate one bar each in the last
    # session: each run rebuilds only AAA from the last real bar before its load's
    # restated bar. The fourth commits after the third but its loader's clock is
    # behind: its `_loaded_at` is earlier than the third's, its `_load_seq` is not.
    last_open = schedule.market_open.iloc[-1]
    restatements = []
    for minutes, loaded_at in ((30, "2025-05-01 12:00"), (90, "2025-05-01 09:00")):
        start = last_open + pd.Timedelta(minutes=minutes)
        target = final.index[(final.symbol == "AAA") & (final.window_start >= start)][0]
        final.loc[target, "revision"] += 1
        final.loc[target, "close"] *= 1.004
        final.loc[target, "high"] = max(final.loc[target, "high"], final.loc[target, "close"])
        restatements.append(
            final.loc[[target], :].assign(
                _source_file=f"bars/restated-{minutes}/0.parquet",
                _loaded_at=pd.Timestamp(loaded_at, tz="UTC"),
            )[BRONZE_COLUMNS]
        )

    return Loads(
        first=stamp(first, "2025-03-01 00:00", "first"),
        second=stamp(second, "2025-04-01 00:00", "second"),
        third=restatements[0],
        fourth=restatements[1],
        final=final,
        split=split,
        holiday_print=holiday_print,
    )


# ------------------------------------------------------------- expectations


def expected_silver(final: pd.DataFrame, schedule: pd.DataFrame) -> pd.DataFrame:
    """Final bars plus synthetic regular-session minutes, trade date and session."""
    parts = []
    for symbol, bars in final.groupby("symbol"):
        bars = bars.copy()
        bars["is_synthetic"] = False
        bars["is_price_carried"] = bars.close.isna()
        first, last = bars.window_start.min(), bars.window_start.max()
        if ":" in symbol:
            days = pd.date_range(first.normalize(), last.normalize(), freq="D")
            opens, closes = days, days + pd.Timedelta(days=1)
        else:
            opens, closes = schedule.market_open, schedule.market_close
        session_minutes = pd.DatetimeIndex(
            np.concatenate(
                [
                    pd.date_range(o, c, freq="1min", inclusive="left")
                    for o, c in zip(opens, closes, strict=True)
                ]
            )
        )
        if session_minutes.tz is None:
            session_minutes = session_minutes.tz_localize("UTC")
        inside = session_minutes[(session_minutes > first) & (session_minutes < last)]
        gaps = inside.difference(pd.DatetimeIndex(bars.window_start))
        synthetic = pd.DataFrame(
            {
                "symbol": symbol,
                "window_start": gaps,
                "is_synthetic": True,
                "is_price_carried": False,
            }
        )
        merged = pd.concat([bars, synthetic], ignore_index=True).sort_values("window_start")
        carried = merged.close.ffill()  # the last priced close before each minute
        for col in ("open", "high", "low", "close"):
            merged[col] = merged[col].where(
                ~(merged.is_synthetic | merged.is_price_carried), carried
            )
        merged.loc[merged.is_synthetic, "volume"] = 0.0
        merged.loc[merged.is_synthetic, "trade_count"] = 0
        if ":" in symbol:
            merged["trade_date"] = merged.window_start.dt.tz_convert("UTC").dt.date
            merged["session"] = "regular"
        else:
            merged["trade_date"] = merged.window_start.dt.tz_convert(NEW_YORK).dt.date
            bounds = schedule.set_index("trade_date")
            b = bounds.reindex(merged.trade_date)
            ws = merged.window_start.to_numpy()
            regular = (ws >= b.market_open.to_numpy()) & (ws < b.market_close.to_numpy())
            pre = (ws >= b.pre_open.to_numpy()) & (ws < b.market_open.to_numpy())
            post = (ws >= b.market_close.to_numpy()) & (ws < b.post_close.to_numpy())
            merged["session"] = np.select(
                [regular, pre, post], ["regular", "pre", "post"], "closed"
            )
        parts.append(merged)
    return (
        pd.concat(parts, ignore_index=True)
        .sort_values(["symbol", "window_start"])
        .reset_index(drop=True)
    )


def expected_daily(silver: pd.DataFrame) -> pd.DataFrame:
    regular = silver[silver.session == "regular"].sort_values(["symbol", "window_start"])
    real = regular[~regular.is_synthetic].copy()
    real["pv"] = real.vwap * real.volume
    real["v_with_vwap"] = real.volume.where(real.vwap.notna())
    # prices from the bars with prices of their own, volume from every real bar
    priced = real[~real.is_price_carried]
    daily = (
        priced.groupby(["symbol", "trade_date"])
        .agg(
            open=("open", "first"),
            high=("high", "max"),
            low=("low", "min"),
            close=("close", "last"),
        )
        .join(
            real.groupby(["symbol", "trade_date"]).agg(
                volume=("volume", "sum"),
                pv=("pv", "sum"),
                v_with_vwap=("v_with_vwap", "sum"),
                bar_count=("close", "size"),
            )
        )
    )
    daily["vwap"] = daily.pv / daily.v_with_vwap
    # Contract 3: the session's minutes from its first real trade on; the first return is
    # that bar's own (open to close), then close to close.
    first_real = priced.groupby(["symbol", "trade_date"]).window_start.min().rename("first_real")
    session = regular.join(first_real, on=["symbol", "trade_date"])
    session = session[session.window_start >= session.first_real]
    previous = session.groupby(["symbol", "trade_date"]).close.shift()
    returns = np.log(session.close / previous.fillna(session.open))
    variance = (returns**2).groupby([session.symbol, session.trade_date]).sum()
    daily["realized_variance_1m"] = variance.reindex(daily.index)
    factor = np.sqrt(daily.index.get_level_values("symbol").map(sessions_per_year).to_numpy(float))
    daily["intraday_realized_vol"] = np.sqrt(daily.realized_variance_1m) * factor
    return daily.drop(columns=["pv", "v_with_vwap"]).reset_index()


def expected_correlation(daily: pd.DataFrame) -> pd.DataFrame:
    """pandas' rolling 20-day correlation of each pair's returns between common days."""
    closes = daily.pivot(index="trade_date", columns="symbol", values="close")
    parts = []
    for i, a in enumerate(sorted(SYMBOLS)):
        for b in sorted(SYMBOLS)[i + 1 :]:
            pair = closes[[a, b]].dropna()
            returns = np.log(pair / pair.shift())
            corr = returns[a].rolling(20).corr(returns[b])
            parts.append(
                pd.DataFrame(
                    {
                        "symbol_a": a,
                        "symbol_b": b,
                        "trade_date": pair.index,
                        "corr": corr.to_numpy(),
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------ fixture


@dataclass
class Built:
    db: Path
    loads: Loads
    schedule: pd.DataFrame
    first: TransformResult
    second: TransformResult
    third: TransformResult
    fourth: TransformResult
    load_seqs: dict[str, int]  # the (last) `_load_seq` each load was given

    def query(self, sql: str) -> pd.DataFrame:
        with duckdb.connect(str(self.db), read_only=True) as con:
            return con.execute(sql).df()


def load_bronze(db: Path, rows: pd.DataFrame) -> int:
    """Insert the rows as `stockpipe load` would: every `_loaded_at` in them is one load,
    numbered in commit order after the last load (`_load_seq`), whatever its clock says.
    Returns the number of the last of these loads."""
    with duckdb.connect(str(db)) as con:
        con.execute(BRONZE_DDL)
        (last,) = con.execute("select coalesce(max(_load_seq), 0) from bronze.bars").fetchall()[0]
        seq = last + rows._loaded_at.rank(method="dense").astype("int64")
        con.register("rows_df", rows[BRONZE_COLUMNS].assign(_load_seq=seq.to_numpy()))
        con.execute(
            f"insert into bronze.bars ({', '.join(BRONZE_COLUMNS)}, _load_seq) "
            "select * from rows_df"
        )
        return int(seq.max()) if len(rows) else int(last)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("dbt")
    db = tmp / "warehouse.duckdb"
    settings = load_settings(warehouse=f"duckdb:///{db}", dbt_target_path=tmp / "target")
    schedule = nyse_schedule()
    loads = generate_loads(schedule)
    seqs = {"first": load_bronze(db, loads.first)}
    first = transform(settings)
    seqs["second"] = load_bronze(db, loads.second)
    second = transform(settings)
    seqs["third"] = load_bronze(db, loads.third)
    third = transform(settings)
    seqs["fourth"] = load_bronze(db, loads.fourth)
    fourth = transform(settings)
    return Built(db, loads, schedule, first, second, third, fourth, seqs)


@pytest.fixture(scope="module")
def silver_expected(built: Built) -> pd.DataFrame:
    return expected_silver(built.loads.final, built.schedule)


@pytest.fixture(scope="module")
def silver_actual(built: Built) -> pd.DataFrame:
    df = built.query("select * from silver.fct_bars_1m order by symbol, window_start")
    df["window_start"] = df.window_start.dt.tz_convert("UTC")
    df["trade_date"] = pd.to_datetime(df.trade_date).dt.date
    return df


@pytest.fixture(scope="module")
def daily_expected(silver_expected: pd.DataFrame) -> pd.DataFrame:
    return expected_daily(silver_expected)


def assert_close(
    actual: pd.Series, expected: pd.Series | np.ndarray, what: str, atol: float = 0.0
) -> None:
    actual = np.asarray(actual, dtype=float)
    expected = np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, what
    nulls_a, nulls_e = np.isnan(actual), np.isnan(expected)
    mismatch = np.flatnonzero(nulls_a != nulls_e)
    assert mismatch.size == 0, (
        f"{what}: NULL where a value is expected (or back) at rows {mismatch[:10]}"
    )
    ok = np.isclose(actual[~nulls_a], expected[~nulls_e], rtol=RTOL, atol=atol)
    bad = np.flatnonzero(~ok)
    assert bad.size == 0, (
        f"{what}: {bad.size} values differ, e.g. {actual[~nulls_a][bad[:3]]} vs {expected[~nulls_e][bad[:3]]}"
    )


# -------------------------------------------------------------------- tests


def test_every_run_builds_every_node(built: Built) -> None:
    for result in (built.first, built.second, built.third, built.fourth):
        assert set(result.status_counts) <= {"success", "pass", "no-op"}, result.status_counts
        assert "model.stockpipe.mart_trend_daily" in result.node_statuses
        print(f"dbt build: {result.build_seconds:.1f}s, docs: {result.docs_seconds:.1f}s")
    run_results = json.loads((built.fourth.target_path / "run_results.json").read_text())
    assert run_results["args"]["which"] == "generate"  # docs ran last


def test_a_restated_bar_rebuilds_only_itself_and_what_follows(
    built: Built, silver_actual: pd.DataFrame
) -> None:
    # The last run sees only the fourth load (the run before processed the third), so
    # it rebuilds AAA from the fourth load's restated bar (15:00 UTC) itself, not from
    # the third's (13:30), up to the first real bar after it: the minutes before the
    # restated bar, the real bar before it included, cannot change.
    restated = built.loads.fourth.window_start.iloc[0]
    last_load = built.load_seqs["fourth"]
    aaa = silver_actual[silver_actual.symbol == "AAA"]
    previous_real = aaa[(aaa.window_start < restated) & ~aaa.is_synthetic].window_start.max()
    assert previous_real == restated - pd.Timedelta(minutes=1)  # 14:59 traded
    next_real = aaa[(aaa.window_start > restated) & ~aaa.is_synthetic].window_start.min()
    rebuilt = silver_actual[silver_actual._load_seq == last_load]
    assert set(rebuilt.symbol) == {"AAA"}
    assert rebuilt.window_start.min() == restated
    # ... up to the next real bar, not to the end of the history: the synthetic bars
    # after that one carry its close, which did not change
    assert rebuilt.window_start.max() == next_real < aaa.window_start.max()
    assert len(rebuilt) == len(aaa[aaa.window_start.between(restated, next_real)])
    # what the run before rebuilt for the third load (its restated bar up to the real
    # bar after it) keeps its number, and the rows between the two ranges still carry
    # the second load's, which last rebuilt them
    third = built.loads.third.window_start.iloc[0]
    real = aaa[~aaa.is_synthetic].window_start
    third_range = aaa.window_start.between(third, real[real > third].min())
    assert third_range.sum() >= 2
    assert (aaa._load_seq == built.load_seqs["third"]).sum() == third_range.sum()
    assert (aaa[third_range]._load_seq == built.load_seqs["third"]).all()
    between = aaa[(aaa.window_start > real[real > third].min()) & (aaa.window_start < restated)]
    assert len(between) > 0
    assert (between._load_seq == built.load_seqs["second"]).all()
    daily = built.query(
        "select trade_date, _load_seq from gold.fct_bars_daily where symbol = 'AAA'"
    )
    assert (daily._load_seq == last_load).sum() == 1


def test_a_load_stamped_earlier_but_committed_later_reaches_gold(
    built: Built, silver_actual: pd.DataFrame, daily_expected: pd.DataFrame
) -> None:
    # The fourth load committed after the third with a loader clock behind the third's:
    # picking new rows by `_loaded_at` would never process it; `_load_seq` does.
    third, fourth = built.loads.third, built.loads.fourth
    assert fourth._loaded_at.iloc[0] < third._loaded_at.iloc[0]
    seq = built.load_seqs["fourth"]
    assert seq > built.load_seqs["third"]
    restated = fourth.iloc[0]

    bar = silver_actual[
        (silver_actual.symbol == "AAA") & (silver_actual.window_start == restated.window_start)
    ]
    assert len(bar) == 1
    assert bar.revision.iloc[0] == restated.revision
    assert bar.close.iloc[0] == pytest.approx(restated.close, rel=RTOL)
    assert bar["_load_seq"].iloc[0] == seq

    day = restated.window_start.tz_convert(NEW_YORK).date()
    gold = built.query(
        "select daily.trade_date, daily.high, daily.close, daily._load_seq, "
        "vol.intraday_realized_vol from gold.fct_bars_daily as daily "
        "join gold.mart_volatility_daily as vol using (symbol, trade_date) "
        "where symbol = 'AAA'"
    )
    gold["trade_date"] = pd.to_datetime(gold.trade_date).dt.date
    row = gold[gold.trade_date == day]
    expected = daily_expected[(daily_expected.symbol == "AAA") & (daily_expected.trade_date == day)]
    assert len(row) == 1 and len(expected) == 1
    assert row["_load_seq"].iloc[0] == seq
    # the restated close moves the day's minute returns, hence its realised volatility
    for column in ("high", "close", "intraday_realized_vol"):
        assert_close(row[column], expected[column], f"AAA {day} {column}")
    hourly = built.query(
        "select max(_load_seq) as seq from gold.mart_intraday_hourly where symbol = 'AAA'"
    )
    assert hourly.seq.iloc[0] == seq


def test_silver_has_one_row_per_symbol_minute_with_the_highest_revision(
    silver_actual: pd.DataFrame, silver_expected: pd.DataFrame
) -> None:
    assert not silver_actual.duplicated(["symbol", "window_start"]).any()
    assert len(silver_actual) == len(silver_expected)
    assert (silver_actual.symbol.to_numpy() == silver_expected.symbol.to_numpy()).all()
    assert (silver_actual.window_start.to_numpy() == silver_expected.window_start.to_numpy()).all()
    for col in ("open", "high", "low", "close", "volume", "vwap"):
        assert_close(silver_actual[col], silver_expected[col], f"silver {col}")
    real = ~silver_expected.is_synthetic.to_numpy()
    assert (
        silver_actual.revision.to_numpy()[real] == silver_expected.revision.to_numpy()[real]
    ).all()


def test_synthetic_bars_fill_exactly_the_missing_session_minutes(
    built: Built, silver_actual: pd.DataFrame, silver_expected: pd.DataFrame
) -> None:
    assert (silver_actual.is_synthetic.to_numpy() == silver_expected.is_synthetic.to_numpy()).all()
    synthetic = silver_actual[silver_actual.is_synthetic]
    assert len(synthetic) > 1000
    assert (synthetic.session == "regular").all()
    assert (synthetic.volume == 0).all() and (synthetic.trade_count == 0).all()
    assert (synthetic[["open", "high", "low"]].to_numpy() == synthetic[["close"]].to_numpy()).all()
    # none on holidays or weekends for the stocks
    stock_dates = set(synthetic[synthetic.symbol != CRYPTO].trade_date)
    assert stock_dates <= set(built.schedule.trade_date)
    for holiday in ("2024-11-28", "2024-12-25", "2025-01-01", "2025-01-09"):
        day = pd.Timestamp(holiday).date()
        assert day not in stock_dates
    # the stray Thanksgiving print is kept, labelled closed
    stray = silver_actual[
        (silver_actual.symbol == "AAA") & (silver_actual.window_start == built.loads.holiday_print)
    ]
    assert stray.session.tolist() == ["closed"] and not stray.is_synthetic.any()
    # the hour-long hole is one run of 60 synthetic bars carrying the last close
    gap_open = built.schedule.market_open.iloc[len(built.schedule) // 3]
    hole = silver_actual[
        (silver_actual.symbol == "BBB")
        & silver_actual.window_start.between(
            gap_open + pd.Timedelta(minutes=60), gap_open + pd.Timedelta(minutes=119)
        )
    ]
    assert len(hole) == 60 and hole.is_synthetic.all() and hole.close.nunique() == 1


def test_sessions_follow_the_nyse_calendar_with_half_days(
    silver_actual: pd.DataFrame, built: Built
) -> None:
    stocks = silver_actual[silver_actual.symbol != CRYPTO]
    regular = stocks[stocks.session == "regular"]
    local_end = (
        regular.groupby("trade_date").window_start.max() + pd.Timedelta(minutes=1)
    ).dt.tz_convert(NEW_YORK)
    for half_day in ("2024-11-29", "2024-12-24"):
        assert local_end[pd.Timestamp(half_day).date()].strftime("%H:%M") == "13:00"
    assert local_end[pd.Timestamp("2024-11-27").date()].strftime("%H:%M") == "16:00"
    # both DST changes: the session opens at 09:30 New York time on either side
    local_start = regular.groupby("trade_date").window_start.min().dt.tz_convert(NEW_YORK)
    assert set(local_start.dt.strftime("%H:%M")) == {"09:30"}
    assert set(stocks.session) == {"pre", "regular", "post", "closed"}
    crypto = silver_actual[silver_actual.symbol == CRYPTO]
    assert set(crypto.session) == {"regular"}
    assert (crypto.groupby("trade_date").size().iloc[1:-1] == 1440).all()


def test_daily_bars_equal_a_pandas_computation(built: Built, daily_expected: pd.DataFrame) -> None:
    actual = built.query("select * from gold.fct_bars_daily order by symbol, trade_date")
    expected = daily_expected.sort_values(["symbol", "trade_date"]).reset_index(drop=True)
    assert len(actual) == len(expected)
    assert (
        pd.to_datetime(actual.trade_date).dt.date.to_numpy() == expected.trade_date.to_numpy()
    ).all()
    for col in ("open", "high", "low", "close", "volume", "vwap", "bar_count"):
        assert_close(actual[col], expected[col], f"daily {col}")
    assert sorted(actual.groupby("symbol").size()) == [
        SESSIONS,
        SESSIONS,
        len(set(expected[expected.symbol == CRYPTO].trade_date)),
    ]


def _per_symbol(frame: pd.DataFrame, fn) -> pd.DataFrame:
    return pd.concat(
        [fn(group) for _, group in frame.groupby("symbol", sort=True)], ignore_index=True
    )


def talib_trend(close: np.ndarray) -> dict[str, np.ndarray]:
    """TA-Lib's values of mart_trend_daily's indicators on one symbol's daily closes."""
    macd, signal, hist = talib.MACD(close, 12, 26, 9)
    upper, middle, lower = talib.BBANDS(close, 20, 2, 2, 0)
    return {
        "sma_20": talib.SMA(close, 20),
        "sma_50": talib.SMA(close, 50),
        "ema_12": talib.EMA(close, 12),
        "ema_26": talib.EMA(close, 26),
        "macd": macd,
        "macd_signal": signal,
        "macd_hist": hist,
        "rsi_14": talib.RSI(close, 14),
        "bb_middle_20": middle,
        "bb_upper_20": upper,
        "bb_lower_20": lower,
    }


def test_trend_indicators_equal_talib(built: Built, daily_expected: pd.DataFrame) -> None:
    actual = built.query("select * from gold.mart_trend_daily order by symbol, trade_date")

    def indicators(day: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(talib_trend(day.close.to_numpy(dtype=float)))

    expected = _per_symbol(daily_expected.sort_values(["symbol", "trade_date"]), indicators)
    assert len(actual) == len(expected)
    for col in expected.columns:
        # MACD lines cross zero: an absolute floor far below any price keeps "relative" meaningful
        assert_close(actual[col], expected[col], f"trend {col}", atol=1e-9)
    assert set(actual.trend_regime.dropna()) <= {"uptrend", "downtrend", "sideways"}
    assert actual.trend_regime.isna().sum() == 3 * 49


def yang_zhang(day: pd.DataFrame, n: int) -> np.ndarray:
    """Yang and Zhang (2000), eq. 10, over each window of n days with a previous close:
    σ² = σ²_o + k σ²_c + (1 − k) σ²_rs, k = 0.34 / (1.34 + (n + 1) / (n − 1)), where
    o = ln(O/C₋₁) is the overnight move, c = ln(C/O), σ²_o and σ²_c their sample
    variances, σ²_rs the mean of Rogers–Satchell's u(u − c) + d(d − c), u = ln(H/O),
    d = ln(L/O). NaN until n overnight moves exist. Daily, not annualised."""
    o = np.log(day.open.to_numpy(float)[1:] / day.close.to_numpy(float)[:-1])
    c = np.log(day.close.to_numpy(float) / day.open.to_numpy(float))[1:]
    u = np.log(day.high.to_numpy(float) / day.open.to_numpy(float))[1:]
    d = np.log(day.low.to_numpy(float) / day.open.to_numpy(float))[1:]
    rs = u * (u - c) + d * (d - c)
    k = 0.34 / (1.34 + (n + 1) / (n - 1))
    out = np.full(len(day), np.nan)
    for end in range(n, len(o) + 1):
        window = slice(end - n, end)
        variance = (
            np.var(o[window], ddof=1) + k * np.var(c[window], ddof=1) + (1 - k) * rs[window].mean()
        )
        out[end] = np.sqrt(variance)
    return out


def test_volatility_measures_equal_talib_and_the_stated_formulas(
    built: Built, daily_expected: pd.DataFrame
) -> None:
    actual = built.query("select * from gold.mart_volatility_daily order by symbol, trade_date")

    def measures(day: pd.DataFrame) -> pd.DataFrame:
        # annualised by the symbol's calendar: 252 NYSE sessions, 365 days for crypto
        year = sessions_per_year(day.symbol.iloc[0])
        log_return = np.log(day.close / day.close.shift())
        hl = np.log(day.high / day.low) ** 2
        gk = 0.5 * hl - (2 * np.log(2) - 1) * np.log(day.close / day.open) ** 2
        return pd.DataFrame(
            {
                "log_return": log_return.to_numpy(),
                "realized_vol_20d": (log_return.rolling(20).std(ddof=1) * np.sqrt(year)).to_numpy(),
                "parkinson_vol_20d": np.sqrt(
                    year * hl.rolling(20).mean() / (4 * np.log(2))
                ).to_numpy(),
                "garman_klass_vol_20d": np.sqrt(year * gk.rolling(20).mean()).to_numpy(),
                "yang_zhang_vol_20d": yang_zhang(day, 20) * np.sqrt(year),
                "atr_14": talib.ATR(
                    day.high.to_numpy(float), day.low.to_numpy(float), day.close.to_numpy(float), 14
                ),
                "intraday_realized_vol": day.intraday_realized_vol.to_numpy(),
            }
        )

    expected = _per_symbol(daily_expected.sort_values(["symbol", "trade_date"]), measures)
    assert len(actual) == len(expected)
    for col in expected.columns:
        assert_close(actual[col], expected[col], f"volatility {col}", atol=1e-12)
    assert actual.realized_vol_20d.notna().sum() == len(actual) - 3 * 20
    # a crypto pair beside the stocks, each with its own calendar's factor
    assert {CRYPTO, *STOCKS} <= set(actual.symbol)


def test_correlation_mart_equals_pandas_rolling_corr(
    built: Built, daily_expected: pd.DataFrame
) -> None:
    actual = built.query(
        "select * from gold.mart_correlation_daily order by symbol_a, symbol_b, trade_date"
    )
    expected = expected_correlation(daily_expected)
    assert len(actual) == len(expected)
    assert (actual.symbol_a.to_numpy() == expected.symbol_a.to_numpy()).all()
    assert_close(actual.correlation_20d, expected["corr"], "correlation_20d", atol=1e-9)


def test_intraday_hourly_mart_rolls_up_the_minutes(
    built: Built, silver_expected: pd.DataFrame, daily_expected: pd.DataFrame
) -> None:
    actual = built.query("select * from gold.mart_intraday_hourly order by symbol, hour_start")
    bars = silver_expected.copy()
    bars["hour_start"] = bars.window_start.dt.floor("h")
    real = bars[~bars.is_synthetic]
    expected = real.groupby(["symbol", "hour_start"]).agg(
        open=("open", "first"),
        close=("close", "last"),
        volume=("volume", "sum"),
        bar_count=("close", "size"),
    )
    # prices from the bars with prices of their own where the hour has one
    priced = real[~real.is_price_carried].groupby(["symbol", "hour_start"])
    expected["open"] = priced.open.first().reindex(expected.index).fillna(expected.open)
    expected["close"] = priced.close.last().reindex(expected.index).fillna(expected.close)
    # returns over each regular session from its first real trade (the first from that
    # bar's open), then grouped into hours: an hour's first return is from the last close
    # of the hour before
    regular = bars[bars.session == "regular"].sort_values(["symbol", "window_start"])
    first_real = (
        regular[~regular.is_synthetic & ~regular.is_price_carried]
        .groupby(["symbol", "trade_date"])
        .window_start.min()
    )
    regular = regular.join(first_real.rename("first_real"), on=["symbol", "trade_date"])
    regular = regular[regular.window_start >= regular.first_real]
    previous = regular.groupby(["symbol", "trade_date"]).close.shift()
    returns = np.log(regular.close / previous.fillna(regular.open))
    variance = (returns**2).groupby([regular.symbol, regular.hour_start]).sum()
    expected["realized_variance_1m"] = variance.reindex(expected.index)
    expected["realized_vol"] = np.sqrt(expected.realized_variance_1m)
    expected = expected.reset_index()
    assert len(actual) == len(expected)
    for col in ("open", "close", "volume", "bar_count", "realized_variance_1m", "realized_vol"):
        assert_close(actual[col], expected[col], f"hourly {col}", atol=1e-12)

    # a day's hours add up to the day's realized variance, and to the daily mart's
    # intraday volatility (annualised by the symbol's calendar)
    hours = actual.groupby(["symbol", "trade_date"]).realized_variance_1m.sum().reset_index()
    hours["trade_date"] = pd.to_datetime(hours.trade_date).dt.date
    day = daily_expected.merge(hours, on=["symbol", "trade_date"], suffixes=("", "_hours"))
    assert len(day) == len(daily_expected)
    assert_close(day.realized_variance_1m_hours, day.realized_variance_1m, "Σ hourly variance")
    vol = built.query(
        "select symbol, trade_date, intraday_realized_vol from gold.mart_volatility_daily"
    )
    vol["trade_date"] = pd.to_datetime(vol.trade_date).dt.date
    day = day.merge(vol, on=["symbol", "trade_date"], suffixes=("_expected", ""))
    factor = day.symbol.map(sessions_per_year).to_numpy(float)
    assert_close(
        day.intraday_realized_vol,
        np.sqrt(day.realized_variance_1m_hours * factor),
        "daily vs hours",
    )


def test_docs_artifacts_show_lineage_from_source_to_gold(built: Built) -> None:
    target = built.fourth.target_path
    assert (target / "catalog.json").exists()
    manifest = json.loads((target / "manifest.json").read_text())
    parents = manifest["parent_map"]
    assert "source.stockpipe.bronze.bars" in parents["model.stockpipe.stg_bronze__bars"]
    assert "model.stockpipe.stg_bronze__bars" in parents["model.stockpipe.fct_bars_1m"]
    assert "model.stockpipe.fct_bars_1m" in parents["model.stockpipe.fct_bars_daily"]
    for mart in ("mart_trend_daily", "mart_volatility_daily", "mart_correlation_daily"):
        assert "model.stockpipe.fct_bars_daily" in parents[f"model.stockpipe.{mart}"]
    nodes = manifest["nodes"]
    assert nodes["model.stockpipe.fct_bars_1m"]["schema"] == "silver"
    assert nodes["model.stockpipe.mart_trend_daily"]["schema"] == "gold"
    for node in nodes.values():
        if node["resource_type"] == "model":
            assert node["description"], node["unique_id"]
            assert all(c["description"] for c in node["columns"].values()), node["unique_id"]
    assert "exposure.stockpipe.stockpipe_report" in manifest["exposures"]


def test_stale_source_only_warns(built: Built) -> None:
    # the generated loads are from 2025: far older than the one-day freshness window
    assert built.fourth.stale_sources == ["source.stockpipe.bronze.bars: warn"]


def test_missing_bronze_fails_with_the_failing_node(tmp_path: Path) -> None:
    settings = load_settings(
        warehouse=f"duckdb:///{tmp_path / 'empty.duckdb'}", dbt_target_path=tmp_path / "target"
    )
    with pytest.raises(StockpipeError, match="stg_bronze__bars"):
        transform(settings, select="stg_bronze__bars")


# ------------------------------------------- incremental cost: a backfill of an old day

BACKFILL_SESSIONS = 45
BACKFILL_DAY = BACKFILL_SESSIONS // 3  # BBB's hour-long hole is on this session
SILVER_KEY = ["symbol", "window_start"]
PAIR_KEY = ["symbol_a", "symbol_b", "trade_date"]


def winners(rows: pd.DataFrame) -> pd.DataFrame:
    """The bar that wins per (symbol, window_start): highest revision, latest emission."""
    ordered = rows.sort_values(["revision", "emitted_at"], ascending=False, kind="stable")
    return ordered.drop_duplicates(SILVER_KEY).sort_values(SILVER_KEY).reset_index(drop=True)


@dataclass
class Backfilled:
    db: Path
    schedule: pd.DataFrame
    day: object  # the backfilled (old) trade date
    rows: pd.DataFrame  # the backfill load: restatements of AAA, a new bar in BBB's hole
    seq: int  # its `_load_seq`
    final: pd.DataFrame  # the winning bars after it
    before: dict[str, pd.DataFrame]
    after: dict[str, pd.DataFrame]
    result: TransformResult


def _tables(db: Path) -> dict[str, pd.DataFrame]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {
            "silver": con.execute(
                "select * from silver.fct_bars_1m order by symbol, window_start"
            ).df(),
            "daily": con.execute(
                "select * from gold.fct_bars_daily order by symbol, trade_date"
            ).df(),
            "correlation": con.execute(
                "select * from gold.mart_correlation_daily order by symbol_a, symbol_b, trade_date"
            ).df(),
        }


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> Backfilled:
    """Six weeks built, then one load restating bars of a day a month back: the
    incremental run after it must rewrite that day's affected minutes only."""
    tmp = tmp_path_factory.mktemp("backfill")
    db = tmp / "warehouse.duckdb"
    settings = load_settings(warehouse=f"duckdb:///{db}", dbt_target_path=tmp / "target")
    schedule = nyse_schedule().iloc[:BACKFILL_SESSIONS]
    loads = generate_loads(schedule)
    history = pd.concat([loads.first, loads.second], ignore_index=True)
    load_bronze(db, history)
    transform(settings)
    before = _tables(db)

    day = schedule.trade_date.iloc[BACKFILL_DAY]
    market_open = schedule.market_open.iloc[BACKFILL_DAY]
    current = winners(history)
    silver = before["silver"]
    silver_aaa = silver[(silver.symbol == "AAA") & ~silver.is_synthetic]
    real_aaa = set(silver_aaa.window_start.dt.tz_convert("UTC"))
    synthetic_aaa = set(
        silver[(silver.symbol == "AAA") & silver.is_synthetic].window_start.dt.tz_convert("UTC")
    )
    # AAA: revision + 1 with another close for two bars each followed by a synthetic
    # minute (their close is carried on), and one bar in the middle of the session
    followed = sorted(
        t for t in real_aaa
        if t >= market_open and t + pd.Timedelta(minutes=1) in synthetic_aaa
        and t.tz_convert(NEW_YORK).date() == day
    )  # fmt: skip
    assert len(followed) >= 2, "no AAA bar followed by a gap on the backfilled day"
    restated_starts = [followed[0], market_open + pd.Timedelta(minutes=200), followed[-1]]
    restated = current[
        (current.symbol == "AAA") & current.window_start.isin(restated_starts)
    ].copy()
    assert len(restated) == 3
    restated["revision"] += 1
    restated["close"] *= 1.003
    restated["high"] = np.maximum(restated.high, restated.close)
    restated["emitted_at"] += pd.Timedelta(days=30)
    # BBB: a bar that never arrived, inside its hour-long hole (a synthetic minute
    # turns real, and the synthetic minutes after it carry its close)
    hole_start = market_open + pd.Timedelta(minutes=60)
    inserted_at = hole_start + pd.Timedelta(minutes=10)
    assert not ((current.symbol == "BBB") & (current.window_start == inserted_at)).any()
    previous = current[(current.symbol == "BBB") & (current.window_start < hole_start)].iloc[-1]
    inserted = previous.to_frame().T.assign(
        window_start=inserted_at,
        window_end=inserted_at + pd.Timedelta(minutes=1),
        first_ts=inserted_at + pd.Timedelta(seconds=1),
        last_ts=inserted_at + pd.Timedelta(seconds=59),
        emitted_at=inserted_at + pd.Timedelta(days=30),
        open=previous.close,
        high=previous.close * 1.002,
        low=previous.close,
        close=previous.close * 1.002,
        vwap=previous.close * 1.001,
        volume=42.0,
        trade_count=3,
        revision=0,
    )
    rows = pd.concat([restated, inserted], ignore_index=True).assign(
        _source_file="bars/backfill/0.parquet",
        _loaded_at=pd.Timestamp("2025-06-01", tz="UTC"),
    )[BRONZE_COLUMNS]
    rows = rows.astype(history[BRONZE_COLUMNS].dtypes.to_dict())
    seq = load_bronze(db, rows)
    result = transform(settings)
    return Backfilled(
        db=db,
        schedule=schedule,
        day=day,
        rows=rows,
        seq=seq,
        final=winners(pd.concat([history, rows], ignore_index=True)),
        before=before,
        after=_tables(db),
        result=result,
    )


def _affected_ranges(silver: pd.DataFrame, symbol: str, starts: pd.Series) -> list[tuple]:
    """Each of `starts` and the first real bar after it in `silver` (the table after the
    run): the rows that change (a bar changes itself and the synthetic bars carrying its
    close), with that next real bar, which is rebuilt unchanged."""
    real = silver[(silver.symbol == symbol) & ~silver.is_synthetic].window_start
    return [(start, real[real > start].min()) for start in sorted(starts)]


def _inside(silver: pd.DataFrame, ranges: dict[str, list[tuple]]) -> pd.Series:
    inside = pd.Series(False, index=silver.index)
    for symbol, spans in ranges.items():
        for start, end in spans:
            inside |= (silver.symbol == symbol) & silver.window_start.between(start, end)
    return inside


def _split(frame: pd.DataFrame, key: list[str], inside: pd.Series) -> tuple:
    frame = frame.set_index(key)
    return frame[inside.to_numpy()], frame[~inside.to_numpy()]


def test_a_backfilled_day_rewrites_only_its_affected_minutes(backfilled: Backfilled) -> None:
    before, after = backfilled.before["silver"], backfilled.after["silver"]
    assert set(backfilled.result.status_counts) <= {"success", "pass", "no-op"}

    # the whole table is what a full build of every load gives
    expected = expected_silver(backfilled.final, backfilled.schedule)
    assert len(after) == len(expected)
    assert (after.window_start.to_numpy() == expected.window_start.to_numpy()).all()
    assert (after.is_synthetic.to_numpy() == expected.is_synthetic.to_numpy()).all()
    for col in ("open", "high", "low", "close", "volume", "vwap"):
        assert_close(after[col], expected[col], f"silver after the backfill: {col}")

    # per symbol, each backfilled bar up to the first real bar after it (not the whole
    # span from the first backfilled bar to the last: the real bars between them, and
    # the synthetic minutes carrying those, do not change) ...
    ranges = {}
    for symbol, starts in backfilled.rows.groupby("symbol").window_start:
        ranges[symbol] = _affected_ranges(after, symbol, starts)
        for start, end in ranges[symbol]:
            assert start.tz_convert(NEW_YORK).date() == end.tz_convert(NEW_YORK).date()
    assert set(ranges) == {"AAA", "BBB"}
    assert len(ranges["AAA"]) == 3
    inside = _inside(after, ranges)
    # ... is exactly what the run wrote (rewritten rows carry the backfill's load) ...
    rewritten = after._load_seq == backfilled.seq
    assert (rewritten == inside).all(), after[rewritten != inside][SILVER_KEY].head()
    # (all on the backfilled day, of ~130,000 rows over 45 sessions)
    assert set(after[rewritten].trade_date.map(pd.Timestamp)) == {pd.Timestamp(backfilled.day)}
    day_rows = (after.symbol != CRYPTO) & (
        after.trade_date.map(pd.Timestamp) == pd.Timestamp(backfilled.day)
    )
    assert 0 < rewritten.sum() <= day_rows.sum()
    # ... and every row outside it is byte-identical to before, its `_load_seq` included
    inside_before = _inside(before, ranges)
    _, kept_before = _split(before, SILVER_KEY, inside_before)
    changed_after, kept_after = _split(after, SILVER_KEY, inside)
    pd.testing.assert_frame_equal(kept_after, kept_before)
    assert len(kept_after) == len(after) - rewritten.sum()

    # inside: the restated closes are carried by the synthetic minutes after them, and
    # BBB's new bar is real now, carried by the rest of the hole up to the next real bar
    changed_before, _ = _split(before, SILVER_KEY, inside_before)
    moved = changed_after.close.ne(changed_before.reindex(changed_after.index).close)
    synthetic_moved = changed_after[moved & changed_after.is_synthetic]
    assert set(synthetic_moved.index.get_level_values("symbol")) == {"AAA", "BBB"}
    bbb = changed_after.loc["BBB"]
    inserted = backfilled.rows[backfilled.rows.symbol == "BBB"].window_start.iloc[0]
    assert not bbb.loc[inserted, "is_synthetic"]
    assert (bbb[bbb.index > inserted].iloc[:-1].is_synthetic).all()
    assert (bbb[bbb.index > inserted].iloc[:-1].close == bbb.loc[inserted, "close"]).all()


def test_a_backfilled_day_rebuilds_only_the_correlations_it_reaches(
    backfilled: Backfilled,
) -> None:
    before = backfilled.before["correlation"]
    after = backfilled.after["correlation"]
    day = pd.Timestamp(backfilled.day)
    daily = expected_daily(expected_silver(backfilled.final, backfilled.schedule))

    # the whole mart equals pandas on the final data
    expected = expected_correlation(daily)
    assert len(after) == len(expected)
    assert_close(after.correlation_20d, expected["corr"], "correlation after the backfill", 1e-9)

    # rewritten: for each pair (all have AAA or BBB), the backfilled day and the 20
    # pair days after it, whose 20-day windows of returns reach the day's close
    trade_date = pd.to_datetime(after.trade_date)
    position = after.groupby(["symbol_a", "symbol_b"]).cumcount()
    day_position = (
        position.where(trade_date == day).groupby([after.symbol_a, after.symbol_b]).transform("max")
    )
    inside = position.between(day_position, day_position + 20)
    rewritten = after._load_seq == backfilled.seq
    assert (rewritten == inside).all(), after[rewritten != inside][PAIR_KEY].head()
    assert rewritten.sum() == 3 * 21
    changed, kept = _split(after, PAIR_KEY, inside)
    _, kept_before = _split(
        before, PAIR_KEY, pd.Series(before.set_index(PAIR_KEY).index.isin(changed.index))
    )
    pd.testing.assert_frame_equal(kept, kept_before)

    # fct_bars_daily: the two restated days, nothing else
    daily_after = backfilled.after["daily"]
    rebuilt_days = daily_after[daily_after._load_seq == backfilled.seq]
    assert sorted(rebuilt_days.symbol) == ["AAA", "BBB"]
    assert set(pd.to_datetime(rebuilt_days.trade_date)) == {day}


def test_data_tests_check_recent_days_unless_asked_for_the_full_history(
    backfilled: Backfilled, tmp_path: Path
) -> None:
    """A broken row older than `test_since_days` before the latest trade date passes the
    default build's tests and fails `--vars '{test_full_history: true}'`; a broken row
    the latest run wrote (the backfilled day) fails them whatever its date."""
    import shutil

    from flows.transform.dbt_runner import dbt_session, invoke

    db = tmp_path / "copy.duckdb"
    shutil.copy(backfilled.db, db)
    old_day = backfilled.schedule.trade_date.iloc[BACKFILL_DAY - 5]
    settings = load_settings(warehouse=f"duckdb:///{db}", dbt_target_path=tmp_path / "target")
    test = ["test", "--select", "non_negative_fct_bars_daily_volume"]

    def break_volume(day: object) -> None:
        with duckdb.connect(str(db)) as con:
            con.execute(
                "update gold.fct_bars_daily set volume = -1 "
                "where symbol = 'AAA' and trade_date = ?",
                [day],
            )

    break_volume(old_day)
    with dbt_session(settings, tmp_path / "target") as common:
        recent = invoke(test, common)
        full = invoke([*test, "--vars", "{test_full_history: true}"], common)
        wider = invoke([*test, "--vars", "{test_since_days: 60}"], common)
    assert recent.success
    assert not full.success
    assert not wider.success

    break_volume(backfilled.day)
    with dbt_session(settings, tmp_path / "target") as common:
        assert not invoke(test, common).success
        # and a row the latest run wrote without a date is found too (the latest run's
        # rows are read by the dates it wrote, and by its rows without one)
        not_null = ["test", "--select", "not_null_fct_bars_daily_trade_date"]
        assert invoke(not_null, common).success
        with duckdb.connect(str(db)) as con:
            con.execute(
                "update gold.fct_bars_daily set trade_date = null "
                "where symbol = 'BBB' and trade_date = ?",
                [backfilled.day],
            )
        assert not invoke(not_null, common).success
