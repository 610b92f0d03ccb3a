"""No data is not no trade: silver marks the gap-filled minutes inside unrepaired outages.

Real dbt on DuckDB, bars of two stocks over a few NYSE sessions with gaps:

  - AAA's gap in session 1 lies inside an unrepaired outage of AAA's (no data), BBB's
    gap at the same minutes inside none (a quiet market: no trade);
  - AAA's gap in session 2 lies inside an outage already repaired (no trade: the
    backfill found nothing there), and AAA traded through another outage of session 2
    (real bars are never "no data");
  - BBB has an open outage (no end) from session 3 on, with a gap after its start;
  - one AAA bar was made from a vendor's candle (candle_count > 0).

Steps, each an incremental `stockpipe transform`: the bars without any bronze.outages
table (every flag false), then the ledger loaded with no new bar (silver reconciles
the minutes it built before), then AAA's outage repaired with no new bar (its flags
clear, fct_bars_daily follows), then a new session whose bars fill BBB's open
outage's gap. Each step is checked against a pandas computation of which synthetic
minutes are no-data, and the warehouse rebuilt with `dbt build --full-refresh` must
hold the same rows as the incremental one.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from test_dbt_incremental import _duckdb_tables, _full_refresh_duckdb, assert_same_rows
from test_dbt_transform import BRONZE_COLUMNS, load_bronze, nyse_schedule, random_bars

from flows.settings import load_settings
from flows.transform.dbt_runner import transform

pytestmark = [pytest.mark.slow, pytest.mark.dbt]

SESSIONS = 5
OUTAGES_DDL = """
create table if not exists bronze.outages (
    outage_id varchar, symbol varchar, start_ts timestamptz, end_ts timestamptz,
    source varchar, reason varchar, repaired boolean, repaired_via varchar,
    repaired_at timestamptz, _loaded_at timestamptz
)
"""


def minute(schedule: pd.DataFrame, session: int, n: int) -> pd.Timestamp:
    return schedule.market_open.iloc[session] + pd.Timedelta(minutes=n)


def session_bars(symbol: str, schedule: pd.DataFrame, sessions: range, skip, seed: int):
    """`symbol`'s bars for every regular minute of `sessions` but the (session, minute)
    in `skip`."""
    starts = []
    for s in sessions:
        opening = schedule.market_open.iloc[s]
        closing = schedule.market_close.iloc[s]
        for m in pd.date_range(opening, closing, freq="1min", inclusive="left"):
            if (s, int((m - opening) / pd.Timedelta(minutes=1))) not in skip:
                starts.append(m)
    return random_bars(symbol, pd.DatetimeIndex(starts), np.random.default_rng(seed))


def gap(session: int, first: int, last: int) -> set[tuple[int, int]]:
    return {(session, m) for m in range(first, last)}


def outage(oid, symbol, start, end, repaired=False, loaded="2025-03-01"):
    return {
        "outage_id": oid,
        "symbol": symbol,
        "start_ts": start,
        "end_ts": end,
        "source": "finnhub-ws",
        "reason": "disconnected",
        "repaired": repaired,
        "repaired_via": "trades" if repaired else None,
        "repaired_at": pd.Timestamp("2025-03-01", tz="UTC") if repaired else None,
        "_loaded_at": pd.Timestamp(loaded, tz="UTC"),
    }


def write_outages(db: Path, rows: list[dict]) -> None:
    with duckdb.connect(str(db)) as con:
        con.execute(OUTAGES_DDL)
        con.execute("delete from bronze.outages")
        frame = pd.DataFrame(rows)
        con.register("outages_df", frame)
        con.execute(
            "insert into bronze.outages select outage_id, symbol, start_ts, end_ts, source, "
            "reason, repaired, repaired_via, repaired_at, _loaded_at from outages_df"
        )


def expected_no_data(bars: pd.DataFrame, schedule: pd.DataFrame, outages: list[dict]) -> set:
    """(symbol, window_start) of every synthetic minute inside an unrepaired outage: the
    regular-session minutes between the symbol's first and last bar without a bar."""
    out = set()
    for symbol, mine in bars.groupby("symbol"):
        first, last = mine.window_start.min(), mine.window_start.max()
        traded = set(mine.window_start)
        for o, c in zip(schedule.market_open, schedule.market_close, strict=True):
            for m in pd.date_range(o, c, freq="1min", inclusive="left"):
                if not (first < m < last) or m in traded:
                    continue
                for row in outages:
                    if (
                        row["symbol"] == symbol
                        and not row["repaired"]
                        and row["start_ts"] <= m
                        and (row["end_ts"] is None or m < row["end_ts"])
                    ):
                        out.add((symbol, m))
    return out


def silver(db: Path) -> pd.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        frame = con.execute("select * from silver.fct_bars_1m").df()
    frame["window_start"] = frame.window_start.dt.tz_convert("UTC")
    return frame


def daily(db: Path) -> pd.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "select symbol, cast(trade_date as varchar) as trade_date, no_data_minutes, "
            "has_gaps, is_session_complete, _load_seq from gold.fct_bars_daily"
        ).df()


def flagged(frame: pd.DataFrame) -> set:
    rows = frame[frame.is_no_data]
    return set(zip(rows.symbol, rows.window_start, strict=True))


def expected_daily_counts(no_data: set, schedule: pd.DataFrame) -> dict:
    counts: dict = {}
    for symbol, m in no_data:
        day = str(m.tz_convert("America/New_York").date())
        counts[(symbol, day)] = counts.get((symbol, day), 0) + 1
    return counts


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("outages")
    db = tmp / "warehouse.duckdb"
    settings = load_settings(warehouse=f"duckdb:///{db}", dbt_target_path=tmp / "target")
    schedule = nyse_schedule().iloc[:SESSIONS].reset_index(drop=True)

    aaa_skip = gap(1, 100, 130) | gap(1, 200, 210) | gap(2, 150, 160)
    bbb_skip = gap(1, 100, 130) | gap(3, 300, 320)
    # the last session comes later, with a gap of BBB's inside its open outage
    last_skip = gap(4, 20, 25)
    aaa = session_bars("AAA", schedule, range(SESSIONS - 1), aaa_skip, 1)
    bbb = session_bars("BBB", schedule, range(SESSIONS - 1), bbb_skip, 2)
    # a bar the backfill made from a vendor's 1-minute candle
    candle_minute = minute(schedule, 2, 10)
    first = pd.concat([aaa, bbb], ignore_index=True).assign(
        _source_file="bars/first/0.parquet", _loaded_at=pd.Timestamp("2025-02-01", tz="UTC")
    )[BRONZE_COLUMNS]
    load_bronze(db, first)
    with duckdb.connect(str(db)) as con:
        con.execute("alter table bronze.bars add column candle_count bigint")
        con.execute(
            "update bronze.bars set candle_count = 4 where symbol = 'AAA' "
            f"and window_start = '{candle_minute.isoformat()}'"
        )
        con.execute(
            "update bronze.bars set candle_count = 0 where symbol = 'AAA' "
            f"and window_start = '{minute(schedule, 2, 11).isoformat()}'"
        )

    outages = [
        # AAA's gap of session 1, minutes 100..129, inside minutes 95..140: no data
        outage("o1", "AAA", minute(schedule, 1, 95), minute(schedule, 1, 140)),
        # AAA's gap of session 2 inside a repaired one: no trade
        outage("o2", "AAA", minute(schedule, 2, 140), minute(schedule, 2, 170), repaired=True),
        # AAA traded through this one: real bars only
        outage("o3", "AAA", minute(schedule, 2, 40), minute(schedule, 2, 60)),
        # BBB's open outage from session 3, minute 310 (its gap is 300..319)
        outage("o4", "BBB", minute(schedule, 3, 310), None),
    ]
    out: dict = {"schedule": schedule, "db": db, "outages": outages, "candle": candle_minute}

    def step(name: str, bars: pd.DataFrame, ledger: list[dict] | None) -> None:
        result = transform(settings, docs=False)
        assert set(result.status_counts) <= {"success", "pass", "no-op"}, result.status_counts
        out[name] = {
            "silver": silver(db),
            "daily": daily(db),
            "expected": expected_no_data(bars, schedule, ledger or []),
            "tables": _duckdb_tables(db),
            "full": _full_refresh_duckdb(db, tmp),
        }

    step("no ledger", first, None)
    write_outages(db, outages)
    step("ledger", first, outages)
    repaired = [
        {
            **o,
            "repaired": True,
            "repaired_via": "trades",
            "repaired_at": pd.Timestamp("2025-03-02", tz="UTC"),
        }
        if o["outage_id"] == "o1"
        else o
        for o in outages
    ]
    with duckdb.connect(str(db)) as con:
        con.execute(
            "update bronze.outages set repaired = true, repaired_via = 'trades', "
            "repaired_at = '2025-03-02 00:00:00+00' where outage_id = 'o1'"
        )
    step("repaired", first, repaired)
    # with the new session, BBB's bar before its session-3 gap restated (the rebuild
    # writes that gap's minutes again) and, in the same run, a new outage over part of
    # that gap loaded (the reconcile finds those minutes too: written once)
    before_gap = first[(first.symbol == "BBB") & (first.window_start == minute(schedule, 3, 299))]
    restated = before_gap.assign(
        revision=1, close=before_gap.close * 1.001, high=before_gap.high * 1.001
    )
    new_session = session_bars("BBB", schedule, range(SESSIONS - 1, SESSIONS), last_skip, 3)
    last = pd.concat([new_session, restated], ignore_index=True).assign(
        _source_file="bars/last/0.parquet", _loaded_at=pd.Timestamp("2025-03-03", tz="UTC")
    )[BRONZE_COLUMNS]
    out["last_seq"] = load_bronze(db, last)
    later = [*repaired, outage("o5", "BBB", minute(schedule, 3, 300), minute(schedule, 3, 305))]
    write_outages(db, later)
    step("new session", pd.concat([first, last], ignore_index=True), later)
    return out


STEPS = ["no ledger", "ledger", "repaired", "new session"]


@pytest.mark.parametrize("name", STEPS)
def test_silver_marks_exactly_the_synthetic_minutes_inside_unrepaired_outages(
    runs: dict, name: str
) -> None:
    run = runs[name]
    frame = run["silver"]
    assert frame.is_no_data.notna().all()
    assert not frame[~frame.is_synthetic].is_no_data.any(), "a real bar marked no-data"
    assert flagged(frame) == run["expected"], name
    if name == "no ledger":
        assert not run["expected"]
    else:
        assert run["expected"], "the step has no-data minutes"
    # the quiet gap (BBB's session-1 gap, AAA's second session-1 gap) stays "no trade"
    schedule = runs["schedule"]
    quiet = frame[(frame.symbol == "BBB") & (frame.window_start == minute(schedule, 1, 110))]
    assert bool(quiet.is_synthetic.iloc[0]) and not bool(quiet.is_no_data.iloc[0])


def test_the_ledger_flags_aaas_outage_and_the_repair_clears_it(runs: dict) -> None:
    schedule = runs["schedule"]
    inside = ("AAA", minute(schedule, 1, 110))
    assert inside in runs["ledger"]["expected"]
    assert inside in flagged(runs["ledger"]["silver"])
    assert inside not in flagged(runs["repaired"]["silver"])
    # BBB's open outage: its gap minutes after the start only (310..319); then the new
    # session's gap and the later outage's minutes of the first gap
    bbb = {m for s, m in flagged(runs["repaired"]["silver"]) if s == "BBB"}
    assert bbb == {minute(schedule, 3, m) for m in range(310, 320)}
    bbb = {m for s, m in flagged(runs["new session"]["silver"]) if s == "BBB"}
    assert bbb == {minute(schedule, 3, m) for m in range(300, 305)} | {
        minute(schedule, 3, m) for m in range(310, 320)
    } | {minute(schedule, 4, m) for m in range(20, 25)}


@pytest.mark.parametrize("name", STEPS)
def test_daily_counts_the_no_data_minutes_of_each_day(runs: dict, name: str) -> None:
    run = runs[name]
    counts = expected_daily_counts(run["expected"], runs["schedule"])
    frame = run["daily"]
    got = {
        (r.symbol, r.trade_date): int(r.no_data_minutes)
        for r in frame.itertuples()
        if r.no_data_minutes
    }
    assert got == counts, name
    assert (frame.has_gaps == (frame.no_data_minutes > 0)).all()


def test_a_reconcile_without_a_bronze_load_reaches_gold_and_later_loads_still_arrive(
    runs: dict,
) -> None:
    before, after = runs["ledger"]["daily"], runs["repaired"]["daily"]
    day = str(minute(runs["schedule"], 1, 0).tz_convert("America/New_York").date())
    was = before[(before.symbol == "AAA") & (before.trade_date == day)].iloc[0]
    now = after[(after.symbol == "AAA") & (after.trade_date == day)].iloc[0]
    assert (int(was.no_data_minutes), bool(was.has_gaps)) == (30, True)
    assert (int(now.no_data_minutes), bool(now.has_gaps)) == (0, False)
    assert now._load_seq > was._load_seq
    # a session with minutes of no data is not complete; repaired, it is, and the daily
    # marts take that up too
    assert not bool(was.is_session_complete) and bool(now.is_session_complete)
    for step, complete in (("no ledger", True), ("ledger", False), ("repaired", True)):
        trend = runs[step]["tables"]["gold.mart_trend_daily"]
        row = trend[(trend.symbol == "AAA") & (trend.trade_date == pd.Timestamp(day))]
        assert bool(row.is_session_complete.iloc[0]) is complete, step
    # the new session's bars (a bronze load numbered below silver's marks by now) arrive
    last_day = str(runs["schedule"].trade_date.iloc[-1])
    final = runs["new session"]["daily"]
    assert len(final[(final.symbol == "BBB") & (final.trade_date == last_day)]) == 1
    frame = runs["new session"]["silver"]
    assert frame._bronze_load_seq.max() == runs["last_seq"]


@pytest.mark.parametrize("name", STEPS)
def test_an_incremental_run_gives_the_full_refresh_rows(runs: dict, name: str) -> None:
    assert_same_rows(runs[name]["tables"], runs[name]["full"], name)


def test_a_candle_bar_is_marked_in_silver(runs: dict) -> None:
    frame = runs["no ledger"]["silver"]
    aaa = frame[frame.symbol == "AAA"].set_index("window_start")
    candle = aaa.loc[runs["candle"]]
    assert int(candle.candle_count) == 4 and bool(candle.is_from_candles)
    after = aaa.loc[runs["candle"] + pd.Timedelta(minutes=1)]
    assert int(after.candle_count) == 0 and not bool(after.is_from_candles)
    # NULL counts (every other bronze bar) and synthetic bars are not from candles
    assert frame.is_from_candles.notna().all() and frame.is_from_candles.sum() == 1
    assert frame[~frame.is_synthetic].candle_count.isna().sum() == (~frame.is_synthetic).sum() - 2
    assert frame[frame.is_synthetic].candle_count.eq(0).all()
