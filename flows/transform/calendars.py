"""Generate dbt's exchange-calendar seed from exchange-calendars (XNYS).

`python -m flows.transform.calendars` rewrites `dbt/seeds/xnys_calendar.csv`: one row
per calendar day from 2000-01-01 through the end of the year after next (run in
2026, it covers 2000-2028), with the NYSE
session boundaries in UTC (pre-market 04:00, open 09:30, close 16:00 or 13:00 on
half days, post-market until 20:00 or 17:00 New York time). The output is
committed, so dbt never needs exchange-calendars (or the network) at run time;
re-run it once a year, or when the NYSE announces a new holiday. exchange-calendars
(4.13) has no upper bound for XNYS: it projects the holiday rules onto any year
(its default `end` is only today + 1 year, which is why the range is explicit
here), so years past the announced ones follow the rules but miss ad-hoc closures.
A bar dated outside the seed fails dbt's `assert_loaded_dates_within_calendar`.
"""

from __future__ import annotations

import csv
import datetime as dt
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import pandas as pd

from flows.assets import asset_dir

SEED_PATH = asset_dir("dbt") / "seeds" / "xnys_calendar.csv"
START = dt.date(2000, 1, 1)
NEW_YORK = ZoneInfo("America/New_York")
UTC = dt.UTC
PRE_OPEN = dt.time(4, 0)
# Years past the current one that the seed covers by default: next year and the one after.
YEARS_AHEAD = 2
# Extended hours end four hours after the regular close (20:00, or 17:00 on half days).
POST_HOURS = dt.timedelta(hours=4)
COLUMNS = [
    "calendar_date",
    "utc_day_start",
    "is_trading_day",
    "is_half_day",
    "pre_open_utc",
    "market_open_utc",
    "market_close_utc",
    "post_close_utc",
]


def _utc(ts: dt.datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00:00")


def calendar_rows(start: dt.date, end: dt.date) -> list[dict[str, str]]:
    """One row per calendar day in [start, end]: NYSE session bounds in UTC, empty when closed."""
    cal = xcals.get_calendar("XNYS", start=start.isoformat(), end=end.isoformat())
    schedule = cal.schedule
    half_days = {d.date() for d in cal.early_closes}
    sessions = {
        idx.date(): (row.open.to_pydatetime(), row.close.to_pydatetime())
        for idx, row in schedule.iterrows()
    }
    rows = []
    for day in pd.date_range(start, end, freq="D"):
        date = day.date()
        row = {
            "calendar_date": date.isoformat(),
            "utc_day_start": _utc(dt.datetime.combine(date, dt.time(0), UTC)),
            "is_trading_day": "false",
            "is_half_day": "false",
            "pre_open_utc": "",
            "market_open_utc": "",
            "market_close_utc": "",
            "post_close_utc": "",
        }
        if date in sessions:
            market_open, market_close = sessions[date]
            row.update(
                is_trading_day="true",
                is_half_day="true" if date in half_days else "false",
                pre_open_utc=_utc(dt.datetime.combine(date, PRE_OPEN, NEW_YORK)),
                market_open_utc=_utc(market_open),
                market_close_utc=_utc(market_close),
                post_close_utc=_utc(market_close + POST_HOURS),
            )
        rows.append(row)
    return rows


def write_seed(path: Path = SEED_PATH, *, end_year: int | None = None) -> int:
    """Write the seed CSV (through Dec 31 of `end_year`, default the year after next); returns
    its rows."""
    end = dt.date(end_year or dt.date.today().year + YEARS_AHEAD, 12, 31)
    rows = calendar_rows(START, end)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    end_year = int(args[0]) if args else None
    count = write_seed(end_year=end_year)
    print(f"wrote {count} days to {SEED_PATH}")


if __name__ == "__main__":
    main()
