"""The NYSE trading calendar as the simulator uses it (plain tickers; `X:Y` crypto is 24/7).

One source of truth: `exchange_calendars` (XNYS), a runtime dependency of the
package, from 2000-01-01 through the end of the year after next. dbt's seed
`xnys_calendar.csv` is generated from the same package by
`flows.transform.calendars`, with the same extended-hours convention used here:
pre-market from 04:00 New York time to the open, post-market from the close
until 20:00 (17:00 on half days, when the regular session closes at 13:00).
Days outside the range raise a ValueError that says so: the calendar never
silently runs out.
"""

from __future__ import annotations

import bisect
import warnings
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
FIRST_DAY = date(2000, 1, 1)
PRE_OPEN = time(4, 0)
POST_CLOSE = time(20, 0)
POST_CLOSE_HALF_DAY = time(17, 0)


@dataclass(frozen=True)
class Session:
    """One NYSE trading day, in epoch ms UTC."""

    day: date
    pre_open: int  # 04:00 New York
    open: int  # 09:30
    close: int  # 16:00, or 13:00 on a half day
    post_close: int  # 20:00, or 17:00 on a half day

    @property
    def half_day(self) -> bool:
        return self.close - self.open < 6 * 3_600_000


def _ms(day: date, at: time) -> int:
    return int(datetime.combine(day, at, NEW_YORK).timestamp() * 1000)


@lru_cache(maxsize=1)
def _calendar() -> tuple[list[date], dict[date, Session], date]:
    import exchange_calendars as xcals  # imported on first use: `--help` stays fast

    last = date(date.today().year + 2, 12, 31)
    with warnings.catch_warnings():  # pandas deprecation notices from inside the package
        warnings.simplefilter("ignore")
        cal = xcals.get_calendar("XNYS", start=FIRST_DAY.isoformat(), end=last.isoformat())
    days: list[date] = []
    sessions: dict[date, Session] = {}
    for label, row in cal.schedule.iterrows():
        day = label.date()
        open_ms = int(row["open"].timestamp() * 1000)
        close_ms = int(row["close"].timestamp() * 1000)
        half = close_ms - open_ms < 6 * 3_600_000
        post = POST_CLOSE_HALF_DAY if half else POST_CLOSE
        sessions[day] = Session(day, _ms(day, PRE_OPEN), open_ms, close_ms, _ms(day, post))
        days.append(day)
    return days, sessions, last


def _check(day: date) -> None:
    _, _, last = _calendar()
    if not FIRST_DAY <= day <= last:
        raise ValueError(
            f"{day} is outside the simulator's NYSE calendar ({FIRST_DAY} to {last}, "
            "from exchange_calendars XNYS)"
        )


def session(day: date, strict: bool = True) -> Session | None:
    """The NYSE session on `day` (a New York date), or None on a weekend or holiday.

    strict: a day outside the calendar raises; otherwise it has no session (the price
    path's variance clock looks a few months past what is traded).
    """
    if strict:
        _check(day)
    return _calendar()[1].get(day)


def local_day(ts_ms: int) -> date:
    """The New York date of an instant."""
    return datetime.fromtimestamp(ts_ms / 1000, NEW_YORK).date()


def sessions_from(ts_ms: int):  # noqa: ANN201 - an iterator of Session
    """Every session whose extended hours end after `ts_ms`, in order."""
    days, sessions, last = _calendar()
    day = local_day(ts_ms) - timedelta(days=1)
    _check(max(day, FIRST_DAY))
    i = bisect.bisect_left(days, day)
    for d in days[i:]:
        s = sessions[d]
        if s.post_close > ts_ms:
            yield s
    raise ValueError(f"the simulator's NYSE calendar ends on {last}")


def last_open(now_ms: int) -> int:
    """Epoch ms of the latest regular-session open at or before `now_ms` (NYSE calendar)."""
    days, sessions, _ = _calendar()
    day = local_day(now_ms)
    _check(day)
    i = bisect.bisect_right(days, day)
    while i > 0:
        i -= 1
        s = sessions[days[i]]
        if s.open <= now_ms:
            return s.open
    raise ValueError(f"no NYSE session at or before {day} in the simulator's calendar")
