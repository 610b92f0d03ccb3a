"""Incremental runs build the same tables as a full refresh, on DuckDB and on the Snowflake emulator.

The warehouse is built from generated one-minute bars (test_dbt_transform.py's
generator: two stocks and a 24/7 crypto pair, missing minutes, revisions, replays)
in steps, each an incremental `stockpipe transform`:

  history   every session but the last two (one full build)
  new day   the next session (one stock and the crypto pair start it after a gap)
  restated  old bars restated (revision + 1, another close), AAA's 15 sessions
            back (one mid-session, and the session's last, which moves the day's
            close), and a BBB bar that never arrived filled into a gap 14 sessions
            back (the trend and volatility marts continue from their stored state
            there; the pair's correlations take the way for symbols with the same
            days), and 13 sessions back a BBB minute whose trades could set no price
            (trade conditions: null prices in bronze, the previous close in silver)
  restated early  two bars of BBB's third session restated, its close among them,
            the minute without prices restated with a priced trade, and a crypto
            minute without prices, the pair's only new bar
            (BBB's indicators are recomputed from its start, its correlations read
            from their start)
  last day  the last session, after the restatements

On the Snowflake emulator, which runs the same SQL far slower, the steps are
history, new day, and both restatement steps as one (`emulator_steps`): each
incremental path of the Snowflake SQL, in fewer builds.

After each step but the first (a full build already) the warehouse is copied and rebuilt with `dbt build --full-refresh`,
and every silver and gold table must hold the same rows as the incrementally built
one: the same keys, the same text, dates, booleans and NULLs, and numbers equal to
1e-12 relative (MACD's lines, which cross zero, relative to the day's close). Lineage
columns (`_load_seq`, `_loaded_at`) say which run wrote a row and differ by design.

Why not bit for bit: an SQL engine sums in whatever order its threads and blocks
give, so the same day's VWAP already differs in the last bit between a run that
builds that day alone and one that builds every day (1e-15 here), and the trend and
volatility marts continue the EMA/MACD/RSI/ATR recursions from the value stored for
the day before, where a full build unrolls them from the series' start: the same
recursion, its floating-point operations in another order. 1e-12 is a thousand
times that rounding and a million times tighter than contract 3's 1e-6 of TA-Lib;
a lookback cut short, a stale row, a state taken from the wrong day or a missed
gap-filled minute all move values far more (or change the rows), and fail.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from test_dbt_transform import BRONZE_COLUMNS, TABLES, generate_loads, load_bronze, nyse_schedule

from flows.settings import load_settings
from flows.transform.dbt_runner import dbt_session, invoke, transform

pytestmark = [pytest.mark.slow, pytest.mark.dbt]

SESSIONS = 70
# (silver's `_bronze_load_seq` too: the bronze load a row reflects, which a full build
# gives every row as the newest)
LINEAGE = {"_load_seq", "_loaded_at", "_bronze_load_seq"}
# Numbers agree to this relative tolerance; MACD's lines cross zero, so theirs is
# relative to the day's close. Nothing here is looser than 1e-12 (contract 3 asks 1e-6
# of TA-Lib): a lookback cut short, a stale row or a state taken from the wrong day
# moves values by far more.
RTOL = 1e-12
PRICE_SCALED = {
    table: {"macd", "macd_signal", "macd_hist"}
    for table in ("gold.mart_trend_daily", "gold.mart_trend_daily_adjusted")
}


@dataclass
class Steps:
    """Bronze rows of each step, in load order."""

    names: list[str]
    batches: list[pd.DataFrame]


def make_steps(sessions: int = SESSIONS, crypto_days: int | None = None) -> Steps:
    schedule = nyse_schedule().iloc[:sessions]
    loads = generate_loads(schedule)
    rows = pd.concat([loads.first, loads.second], ignore_index=True)
    if crypto_days is not None:  # fewer crypto minutes (for the emulator, which is slower)
        end = rows.window_start.min() + pd.Timedelta(days=crypto_days)
        rows = rows[(rows.symbol != "BINANCE:BTCUSDT") | (rows.window_start < end)]
    opens = schedule.market_open.reset_index(drop=True)
    # the last two sessions (and, for crypto, their UTC days) arrive one by one
    cut_new = opens.iloc[-2] - pd.Timedelta(hours=6)
    cut_last = opens.iloc[-1] - pd.Timedelta(hours=6)
    history = rows[rows.window_start < cut_new]
    new_day = rows[(rows.window_start >= cut_new) & (rows.window_start < cut_last)]
    # the new day starts with a gap: BBB trades from 09:33 (no pre-market), the crypto
    # pair from 00:05 UTC; the minutes before are gap-filled with the day before's close
    first_bbb = opens.iloc[-2] + pd.Timedelta(minutes=3)
    first_crypto = new_day[new_day.symbol == "BINANCE:BTCUSDT"].window_start.min() + pd.Timedelta(
        minutes=5
    )
    new_day = new_day[
        ~((new_day.symbol == "BBB") & (new_day.window_start < first_bbb))
        & ~((new_day.symbol == "BINANCE:BTCUSDT") & (new_day.window_start < first_crypto))
    ]
    last_day = rows[rows.window_start >= cut_last]

    final = loads.final

    closes = schedule.market_close.reset_index(drop=True)

    def restate(symbol: str, session: int, minutes: int | None) -> pd.DataFrame:
        """A bar restated: the first at or after `minutes` into the session, or (None) the
        session's last regular bar, whose close is the day's close."""
        mine = final[final.symbol == symbol]
        if minutes is None:
            bar = mine[mine.window_start < closes.iloc[session]].iloc[[-1]].copy()
        else:
            when = opens.iloc[session] + pd.Timedelta(minutes=minutes)
            bar = mine[mine.window_start >= when].iloc[[0]].copy()
        bar["revision"] += 1
        bar["close"] *= 1.004
        bar["high"] = np.maximum(bar.high, bar.close)
        bar["emitted_at"] += pd.Timedelta(days=90)
        return bar

    def first_gap(symbol: str, start: pd.Timestamp, first: int, last: int) -> pd.Timestamp:
        """The first minute `first`..`last` minutes after `start` that `symbol` never
        traded, right after one it did."""
        traded = set(final[final.symbol == symbol].window_start)
        return next(
            start + pd.Timedelta(minutes=m)
            for m in range(first, last)
            if start + pd.Timedelta(minutes=m) not in traded
            and start + pd.Timedelta(minutes=m - 1) in traded
        )

    def bar_before(symbol: str, minute: pd.Timestamp) -> pd.DataFrame:
        return final[(final.symbol == symbol) & (final.window_start < minute)].iloc[[-1]].copy()

    def moved(bar: pd.DataFrame, minute: pd.Timestamp, **values: object) -> pd.DataFrame:
        """`bar` as a first emission of `minute`, loaded 90 days later, with `values`."""
        return bar.assign(
            window_start=minute,
            window_end=minute + pd.Timedelta(minutes=1),
            first_ts=minute + pd.Timedelta(seconds=1),
            last_ts=minute + pd.Timedelta(seconds=59),
            emitted_at=minute + pd.Timedelta(days=90),
            revision=0,
            **values,
        )

    # a minute of BBB's that never traded, 14 sessions back: it turns real
    gap = first_gap("BBB", opens.iloc[-14], 30, 390)
    previous = bar_before("BBB", gap)
    filled = moved(
        previous,
        gap,
        open=previous.close.to_numpy(),
        high=previous.close.to_numpy() * 1.002,
        close=previous.close.to_numpy() * 1.002,
        low=previous.close.to_numpy(),
    )

    # a minute of BBB's that never traded, 13 sessions back, gets trades none of which
    # could set a price (trade conditions: its prices are null, silver carries the close
    # before it), then a restatement with a priced trade
    quiet = first_gap("BBB", opens.iloc[-13], 30, 390)
    before_quiet = bar_before("BBB", quiet)
    unpriced = moved(
        filled,
        quiet,
        open=np.nan,
        high=np.nan,
        low=np.nan,
        close=np.nan,
        volume=300.0,
        vwap=before_quiet.close.to_numpy() * 0.97,
    )
    priced_later = unpriced.assign(
        revision=1,
        emitted_at=quiet + pd.Timedelta(days=91),
        open=before_quiet.close.to_numpy() * 1.001,
        high=before_quiet.close.to_numpy() * 1.003,
        low=before_quiet.close.to_numpy() * 1.001,
        close=before_quiet.close.to_numpy() * 1.003,
        volume=400.0,
    )

    # a crypto minute that never traded, in the middle of the history, gets trades none
    # of which could set a price, and nothing else of the pair is new: its range starts
    # at the priced bar before it, which it carries
    middle = history[history.symbol == "BINANCE:BTCUSDT"].window_start
    middle = middle.iloc[len(middle) // 2]
    lonely = first_gap("BINANCE:BTCUSDT", middle, 1, 10_000)
    lonely_bar = moved(
        bar_before("BINANCE:BTCUSDT", lonely),
        lonely,
        open=np.nan,
        high=np.nan,
        low=np.nan,
        close=np.nan,
        volume=250.0,
    )

    def load(rows: list[pd.DataFrame], tag: str, loaded_at: str) -> pd.DataFrame:
        frame = pd.concat(rows, ignore_index=True).assign(
            _source_file=f"bars/{tag}/0.parquet", _loaded_at=pd.Timestamp(loaded_at, tz="UTC")
        )
        return frame[BRONZE_COLUMNS].astype(rows_dtypes)

    rows_dtypes = rows[BRONZE_COLUMNS].dtypes.to_dict()
    # AAA's close 15 sessions back (the trend, volatility and correlation marts move from
    # there on) and one of its minutes there, and BBB's gap; then BBB's third session,
    # its close and a minute
    restated = load(
        [restate("AAA", -15, 95), restate("AAA", -15, None), filled, unpriced],
        "restated",
        "2025-07-01",
    )
    restated_early = load(
        [restate("BBB", 2, 131), restate("BBB", 2, None), priced_later, lonely_bar],
        "restated-early",
        "2025-07-02",
    )

    def stamped(frame: pd.DataFrame, loaded_at: str) -> pd.DataFrame:
        return frame.assign(_loaded_at=pd.Timestamp(loaded_at, tz="UTC"))

    return Steps(
        names=["history", "new day", "restated", "restated early", "last day"],
        batches=[
            history,  # its own stamps: several loads
            stamped(new_day, "2025-06-01"),
            restated,
            restated_early,
            stamped(last_day, "2025-08-01"),
        ],
    )


def read_tables(query) -> dict[str, pd.DataFrame]:
    """Every table, keyed and sorted, lineage dropped; `query(sql)` returns a DataFrame."""
    out = {}
    for table, key in TABLES.items():
        frame = query(f"select * from {table}").rename(columns=str.lower)
        frame = frame.drop(columns=[c for c in frame.columns if c in LINEAGE])
        for col in frame.columns:
            if isinstance(frame[col].dtype, pd.DatetimeTZDtype):
                frame[col] = frame[col].dt.tz_convert("UTC")
            elif col == "trade_date":
                frame[col] = pd.to_datetime(frame[col])
        out[table] = frame.sort_values(key).reset_index(drop=True)
    return out


def assert_same_rows(incremental: dict, full: dict, step: str) -> None:
    problems = []
    for table, key in TABLES.items():
        inc, ref = incremental[table], full[table]
        what = f"{table} after the {step!r} step"
        assert list(inc.columns) == list(ref.columns), what
        assert len(inc) == len(ref) > 0, what
        pd.testing.assert_frame_equal(inc[key], ref[key], obj=f"{what}: keys")
        for col in inc.columns:
            if col in key:
                continue
            a, b = inc[col], ref[col]
            if not (a.isna() == b.isna()).all():
                problems.append(f"{what}: NULLs of {col} differ")
            elif pd.api.types.is_float_dtype(b) or pd.api.types.is_float_dtype(a):
                x, y = a.to_numpy(float), b.to_numpy(float)
                scale = np.abs(y)
                if col in PRICE_SCALED.get(table, ()):
                    scale = np.abs(ref["close"].to_numpy(float))
                both = ~np.isnan(y)
                bad = np.flatnonzero(np.abs(x[both] - y[both]) > RTOL * scale[both])
                if bad.size:
                    problems.append(
                        f"{what}: {bad.size} values of {col} differ from the full refresh, e.g. "
                        f"{x[both][bad[:3]]} vs {y[both][bad[:3]]}"
                    )
            elif not (a[a.notna()].astype(str) == b[b.notna()].astype(str)).all():
                problems.append(f"{what}: {col} differs")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------- DuckDB


def _duckdb_tables(db: Path) -> dict[str, pd.DataFrame]:
    with duckdb.connect(str(db), read_only=True) as con:
        return read_tables(lambda sql: con.execute(sql).df())


def _full_refresh_duckdb(db: Path, work: Path) -> dict[str, pd.DataFrame]:
    copy = work / "full.duckdb"
    shutil.copy(db, copy)
    settings = load_settings(warehouse=f"duckdb:///{copy}", dbt_target_path=work / "full-target")
    with dbt_session(settings, work / "full-target") as common:
        outcome = invoke(["build", "--full-refresh"], common)
    assert outcome.success, "dbt build --full-refresh failed"
    tables = _duckdb_tables(copy)
    copy.unlink()
    return tables


@pytest.fixture(scope="module")
def duckdb_runs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, dict, dict, dict]]:
    tmp = tmp_path_factory.mktemp("incremental_duckdb")
    db = tmp / "warehouse.duckdb"
    settings = load_settings(warehouse=f"duckdb:///{db}", dbt_target_path=tmp / "target")
    steps = make_steps()
    runs = []
    for name, batch in zip(steps.names, steps.batches, strict=True):
        last_seq = load_bronze(db, batch)
        result = transform(settings, docs=False)
        assert set(result.status_counts) <= {"success", "pass", "no-op"}, result.status_counts
        # the first build is a full one: nothing to compare it with
        full = _full_refresh_duckdb(db, tmp) if runs else None
        runs.append((name, _duckdb_tables(db), full, _rewritten(db, last_seq)))
    return runs


def _rewritten(db: Path, last_seq: int) -> dict[str, pd.DataFrame]:
    """Per gold table, the keys of the rows stamped with the step's load (written by its
    run), and fct_bars_daily whole (to tell which rows had to be)."""
    out = {}
    with duckdb.connect(str(db), read_only=True) as con:
        for table in ("gold.mart_trend_daily", "gold.mart_volatility_daily"):
            out[table] = con.execute(
                f"select symbol, trade_date from {table} where _load_seq = {last_seq}"
            ).df()
        out["gold.mart_correlation_daily"] = con.execute(
            "select symbol_a, symbol_b, trade_date from gold.mart_correlation_daily "
            f"where _load_seq = {last_seq}"
        ).df()
        out["daily"] = con.execute(
            "select symbol, trade_date, _load_seq from gold.fct_bars_daily"
        ).df()
    out["last_seq"] = last_seq
    return out


STEPS = {"new day": 1, "restated": 2, "restated early": 3, "last day": 4}


@pytest.mark.parametrize("step", STEPS.values(), ids=STEPS.keys())
def test_an_incremental_run_on_duckdb_gives_the_full_refresh_rows(
    duckdb_runs: list, step: int
) -> None:
    name, incremental, full, _ = duckdb_runs[step]
    assert_same_rows(incremental, full, name)


def test_the_restated_closes_move_later_days_of_every_daily_mart(duckdb_runs: list) -> None:
    # Else the comparisons above would not show that a restated old day reaches the
    # later days it must: AAA's restated close, 15 sessions back, moves its EMA on the
    # step's last day, and the pair's correlation on a day in the window after it.
    (_, before, _, _), (_, after, _, _) = (
        duckdb_runs[STEPS["new day"]],
        duckdb_runs[STEPS["restated"]],
    )

    def last_aaa(tables: dict, table: str, where=lambda f: f.symbol == "AAA") -> pd.Series:
        frame = tables[table]
        return frame[where(frame)].iloc[-1]

    for table, col in (
        ("gold.mart_trend_daily", "ema_26"),
        ("gold.mart_volatility_daily", "atr_14"),
    ):
        assert last_aaa(before, table)[col] != last_aaa(after, table)[col], table
    corr = "gold.mart_correlation_daily"
    frame = after[corr]
    days = sorted(frame[(frame.symbol_a == "AAA") & (frame.symbol_b == "BBB")].trade_date)

    def pair(f: pd.DataFrame) -> pd.Series:
        return (f.symbol_a == "AAA") & (f.symbol_b == "BBB") & (f.trade_date == days[-5])

    assert (
        last_aaa(before, corr, pair).correlation_20d != last_aaa(after, corr, pair).correlation_20d
    )


def test_a_minute_without_prices_carries_the_close_then_takes_its_restated_prices(
    duckdb_runs: list,
) -> None:
    """Trade conditions: a bar whose trades could set no price keeps its volume and carries
    the previous priced close in silver; restated with a priced trade, it has its own."""
    by_step = {name: tables["silver.fct_bars_1m"] for name, tables, _full, _rw in duckdb_runs}
    # (the generated history has minutes without prices of its own, AAA's and the pair's;
    # BBB's is this step's)
    restated = by_step["restated"]
    carried = restated[restated.is_price_carried & (restated.symbol == "BBB")]
    assert len(carried) == 1
    row = carried.iloc[0]
    assert (row.symbol, row.volume, bool(row.is_synthetic)) == ("BBB", 300.0, False)
    bbb = by_step["restated"][by_step["restated"].symbol == "BBB"].sort_values("window_start")
    before = bbb[bbb.window_start < row.window_start].iloc[-1]
    assert row.open == row.high == row.low == row.close == before.close
    after = by_step["restated early"]
    same = after[(after.symbol == "BBB") & (after.window_start == row.window_start)].iloc[0]
    assert same.volume == 400.0 and same.close == pytest.approx(before.close * 1.003, rel=1e-12)
    assert not bool(same.is_price_carried)
    # the crypto minute, the pair's only new bar: carried from the priced bar before it
    was = set(restated[restated.is_price_carried].window_start)
    carried = after[after.is_price_carried & ~after.window_start.isin(was)]
    assert carried.symbol.tolist() == ["BINANCE:BTCUSDT"] and carried.volume.tolist() == [250.0]
    pair = after[after.symbol == "BINANCE:BTCUSDT"].sort_values("window_start")
    prior = pair[pair.window_start < carried.window_start.iloc[0]].iloc[-1]
    assert carried.close.iloc[0] == prior.close and not np.isnan(prior.close)


def _keys(frame: pd.DataFrame) -> set[tuple]:
    return {
        tuple(str(v)[:10] if isinstance(v, date | np.datetime64) else v for v in row)
        for row in frame.itertuples(index=False)
    }


@pytest.mark.parametrize("step", STEPS.values(), ids=STEPS.keys())
def test_an_incremental_run_on_duckdb_rewrites_only_the_affected_rows_of_the_daily_marts(
    duckdb_runs: list, step: int
) -> None:
    # Which rows a run must write, from fct_bars_daily alone (pandas): for the trend and
    # volatility marts, each symbol with a rebuilt daily row from its first one on (a
    # changed close moves every later EMA); for the correlations, each pair with a
    # rebuilt symbol from its first rebuilt day through the 20th pair day after its
    # last (the last 20-day window a changed close enters). A run that rebuilt whole
    # tables, or stopped short of a lookback, writes other rows.
    name, _, _, found = duckdb_runs[step]
    daily = found["daily"].assign(trade_date=lambda f: pd.to_datetime(f.trade_date))
    changed = daily[daily._load_seq == found["last_seq"]]
    assert len(changed) > 0, f"the {name!r} step rebuilt no daily row"
    first = changed.groupby("symbol").trade_date.min()
    expected = daily[daily.symbol.map(first).le(daily.trade_date)][["symbol", "trade_date"]]
    for table in ("gold.mart_trend_daily", "gold.mart_volatility_daily"):
        assert _keys(found[table]) == _keys(expected), f"{table}, {name!r} step"

    last = changed.groupby("symbol").trade_date.max()
    symbols = sorted(daily.symbol.unique())
    pairs = []
    for i, a in enumerate(symbols):
        for b in symbols[i + 1 :]:
            if a not in first.index and b not in first.index:
                continue
            days = sorted(
                set(daily[daily.symbol == a].trade_date) & set(daily[daily.symbol == b].trade_date)
            )
            start = min(first.get(s, pd.Timestamp.max) for s in (a, b))
            end = max(last.get(s, pd.Timestamp.min) for s in (a, b))
            through = [d for d in days if d <= end]
            stop = days[min(len(days) - 1, len(through) - 1 + 20)] if through else None
            pairs += [(a, b, d) for d in days if d >= start and stop is not None and d <= stop]
    expected_pairs = pd.DataFrame(pairs, columns=["symbol_a", "symbol_b", "trade_date"])
    assert len(expected_pairs) > 0
    assert _keys(found["gold.mart_correlation_daily"]) == _keys(expected_pairs), name


# ------------------------------------------------------- Snowflake (the emulator)

SNOWFLAKE_DDL = """
create table if not exists bronze.bars (
    symbol varchar, interval_s integer, window_start timestamp_tz, window_end timestamp_tz,
    open double, high double, low double, close double, volume double, vwap double,
    trade_count bigint, first_ts timestamp_tz, last_ts timestamp_tz, revision integer,
    emitted_at timestamp_tz, _source_file varchar, _loaded_at timestamp_tz, _load_seq bigint
)
"""


@pytest.fixture(scope="module")
def snowflake_runs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, dict, dict]]:
    import snowflake.connector
    from helpers import emulator_snowflake_settings
    from snowflake_emulator import emulated_snowflake

    tmp = tmp_path_factory.mktemp("incremental_snowflake")
    steps = emulator_steps()
    incremental_settings = emulator_snowflake_settings(tmp / "incremental")
    full_settings = emulator_snowflake_settings(tmp / "full", snowflake_database="STOCKPIPE_FULL")
    runs = []
    with emulated_snowflake():
        # imported inside the patch, which replaces it with the emulator's
        from snowflake.connector.pandas_tools import write_pandas

        cons = {}
        for database in ("STOCKPIPE", "STOCKPIPE_FULL"):
            con = snowflake.connector.connect(
                account="fakesnow", user="loader", password="unused", database=database
            )
            con.cursor().execute("create schema if not exists bronze")
            con.cursor().execute(SNOWFLAKE_DDL)
            cons[database] = con

        def tables(database: str) -> dict[str, pd.DataFrame]:
            cursor = cons[database].cursor()
            return read_tables(lambda sql: cursor.execute(sql).fetch_pandas_all())

        last_seq = 0
        for name, batch in zip(steps.names, steps.batches, strict=True):
            # numbered as load_bronze numbers loads: one per _loaded_at, after the last
            seq = last_seq + batch._loaded_at.rank(method="dense").astype("int64")
            last_seq = int(seq.max())
            numbered = batch[BRONZE_COLUMNS].assign(_load_seq=seq.to_numpy())
            for con in cons.values():
                write_pandas(con, numbered.rename(columns=str.upper), "BARS", schema="BRONZE")
            result = transform(incremental_settings, docs=False)
            assert set(result.status_counts) <= {"success", "pass", "no-op"}, result.status_counts
            if not runs:  # the first build is a full one: nothing to compare it with
                runs.append((name, None, None))
                continue
            with dbt_session(full_settings, tmp / "full") as common:
                # one thread: parallel connections race to create the same schema in the
                # emulator (a DuckDB catalog write-write conflict), not in Snowflake
                outcome = invoke(["build", "--full-refresh", "--threads", "1"], common)
            assert outcome.success, "dbt build --full-refresh failed on the emulator"
            runs.append((name, tables("STOCKPIPE"), tables("STOCKPIPE_FULL")))
        for con in cons.values():
            con.close()
    return runs


def emulator_steps() -> Steps:
    """The emulator's steps: it runs the same SQL far slower, so fewer of them, each one
    of the incremental paths its Snowflake SQL takes: a new day (appends), and every
    restatement at once (AAA's from its stored state 15 sessions back, BBB's and the
    pair's from their start)."""
    steps = make_steps(crypto_days=40)
    batch = dict(zip(steps.names, steps.batches, strict=True))
    both = pd.concat([batch["restated"], batch["restated early"]], ignore_index=True)
    return Steps(
        names=["history", "new day", "restated"],
        batches=[batch["history"], batch["new day"], both],
    )


EMULATOR_STEPS = {"new day": 1, "restated": 2}


@pytest.mark.parametrize("step", EMULATOR_STEPS.values(), ids=EMULATOR_STEPS.keys())
def test_an_incremental_run_on_the_snowflake_emulator_gives_the_full_refresh_rows(
    snowflake_runs: list, step: int
) -> None:
    name, incremental, full = snowflake_runs[step]
    assert_same_rows(incremental, full, name)
