"""Incremental warehouse cost at scale: one new day, and a one-day backfill 11 months back.

    .venv/bin/python -m benchmarks.warehouse_scale --symbols 500 --days 1260 --out data/bench-scale

Writes `--days` NYSE sessions of 1-minute regular-session bars for `--symbols`
symbols (a random walk each, ~1% of minutes without a trade, so silver gap-fills)
as contract-2 lake files, loads them into a fresh DuckDB warehouse and builds
it (`stockpipe load` + `stockpipe transform`, the library functions). Then,
each timed as an incremental load + transform:

  (a) new day:  the next session's file;
  (b) backfill: a file restating (revision 1, other prices) ~2% of the bars of
      the session ~11 months (231 sessions) before the last one, or the first
      session of a shorter history, loaded with `since=` that date.

Each is compared with the same day built alone: only that day's files (for
(b) the day's original file and its restatement) loaded and transformed on an
empty warehouse. The goals (issue 16, at 500 symbols x 5 years = 1260 sessions):
the new day within 1.5x of the day alone, the backfill within 2x, whatever the
history: an incremental run costs in proportion to the new and restated data.
Prints a table and the slowest dbt nodes of each timed build (dbt's execution time
per node), or JSON with --json. Nothing is asserted: it measures.

`--history-loads N` loads and builds the history in N parts, oldest first, as it
would have arrived (the first a full build, the rest incremental): the same
warehouse (an incremental run builds what a full refresh does), without one sort
of all of it; `--duckdb-memory-limit` caps DuckDB's memory for dbt (STOCKPIPE_DUCKDB_MEMORY_LIMIT,
read by dbt/profiles.yml) on a shared machine; DuckDB spills to disk beyond it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from flows.lake.batches import file_name
from flows.lake.store import open_lake
from flows.settings import Settings, load_settings
from flows.stream.lake_sink import BAR_SCHEMA, LakeWriter

SESSIONS_IN_11_MONTHS = 231
LAST_SESSION = "2025-10-31"
GOALS = {"new day": 1.5, "backfill": 2.0}  # incremental run / the same day alone


@dataclass
class Run:
    name: str
    load_s: float
    transform_s: float
    rows_loaded: int
    silver_rows_rewritten: int | None = None
    alone_load_s: float | None = None
    alone_transform_s: float | None = None
    goal: float | None = None  # the ratio it should stay within
    # the dbt nodes that took longest in its build (and in the same day's alone), seconds
    slowest_nodes: dict[str, float] | None = None
    alone_slowest_nodes: dict[str, float] | None = None

    @property
    def total_s(self) -> float:
        return self.load_s + self.transform_s

    @property
    def alone_total_s(self) -> float | None:
        if self.alone_load_s is None or self.alone_transform_s is None:
            return None
        return self.alone_load_s + self.alone_transform_s

    @property
    def ratio(self) -> float | None:
        alone = self.alone_total_s
        return self.total_s / alone if alone else None


def sessions(count: int) -> list[tuple[date, np.ndarray]]:
    """The last `count` NYSE sessions up to LAST_SESSION: (date, epoch-µs minute starts)."""
    import exchange_calendars as xcals

    cal = xcals.get_calendar("XNYS", start="2019-01-01", end="2026-12-31")
    days = cal.sessions_in_range("2020-01-01", LAST_SESSION)[-count:]
    out = []
    for session in days:
        open_us = int(cal.session_open(session).timestamp()) * 1_000_000
        close_us = int(cal.session_close(session).timestamp()) * 1_000_000
        out.append((session.date(), np.arange(open_us, close_us, 60_000_000, dtype=np.int64)))
    return out


class BarMaker:
    """A random walk per symbol, one session at a time, as Arrow tables (BAR_SCHEMA)."""

    def __init__(self, n_symbols: int, seed: int = 1):
        self.rng = np.random.default_rng(seed)
        self.symbols = np.array([f"S{i:04d}" for i in range(n_symbols)])
        self.price = self.rng.uniform(10, 500, n_symbols)

    def day(self, minutes: np.ndarray, emitted_us: int) -> pa.Table:
        rng, n, m = self.rng, len(self.symbols), len(minutes)
        close = self.price[:, None] * np.exp(np.cumsum(rng.normal(0, 8e-4, (n, m)), axis=1))
        open_ = np.concatenate([self.price[:, None], close[:, :-1]], axis=1)
        spread = np.abs(rng.normal(0, 5e-4, (n, m))) * close
        high = np.maximum(open_, close) + spread
        low = np.minimum(open_, close) - spread
        self.price = close[:, -1]
        keep = rng.uniform(0, 1, (n, m)) >= 0.01  # ~1% of minutes without a trade ...
        keep[:, [0, -1]] = True  # ... never a session's first or last
        return bar_table(
            np.repeat(self.symbols, m)[keep.ravel()],
            np.tile(minutes, n)[keep.ravel()],
            open_[keep],
            high[keep],
            low[keep],
            close[keep],
            rng.integers(100, 10_000, keep.sum()).astype(float),
            rng.integers(5, 200, keep.sum()),
            0,
            emitted_us,
        )

    def restate(self, bars: pa.Table, fraction: float, emitted_us: int) -> pa.Table:
        """Revision 1 of a random `fraction` of the bars, with moved prices."""
        picked = bars.filter(pa.array(self.rng.uniform(0, 1, bars.num_rows) < fraction))
        factor = self.rng.uniform(0.995, 1.005, picked.num_rows)

        def col(name: str) -> np.ndarray:
            return picked[name].to_numpy()

        return bar_table(
            col("symbol"),
            picked["window_start"].cast(pa.int64()).to_numpy(),
            col("open") * factor,
            col("high") * factor,
            col("low") * factor,
            col("close") * factor,
            col("volume") + 1,
            col("trade_count") + 1,
            1,
            emitted_us,
        )


def bar_table(symbol, start_us, open_, high, low, close, volume, count, revision, emitted_us):
    """Contract-2 bars (BAR_SCHEMA) from column arrays: nothing excluded, no candle."""
    n = len(start_us)

    def ts(us) -> pa.Array:
        return pa.array(us, type=pa.int64()).cast(BAR_SCHEMA.field("window_start").type)

    def const(value, field: str) -> pa.Array:
        return pa.array(np.full(n, value), type=BAR_SCHEMA.field(field).type)

    columns = {
        "symbol": pa.array(symbol, type=pa.string()),
        "interval_s": const(60, "interval_s"),
        "window_start": ts(start_us),
        "window_end": ts(start_us + 60_000_000),
        "open": pa.array(open_),
        "high": pa.array(high),
        "low": pa.array(low),
        "close": pa.array(close),
        "volume": pa.array(volume, type=pa.float64()),
        "vwap": pa.array((high + low + close) / 3),
        "trade_count": pa.array(count, type=pa.int64()),
        "first_ts": ts(start_us + 1_000_000),
        "last_ts": ts(start_us + 59_000_000),
        "revision": const(revision, "revision"),
        "emitted_at": ts(np.full(n, emitted_us)),
        "excluded_count": const(0, "excluded_count"),
        "unmapped_count": const(0, "unmapped_count"),
        "candle_count": const(0, "candle_count"),
    }
    return pa.Table.from_arrays([columns[f.name] for f in BAR_SCHEMA], schema=BAR_SCHEMA)


class DayWriter:
    """Writes each table (one session's bars) as a bar file of its UTC date."""

    def __init__(self, root: Path, tag: str):
        self.lake = LakeWriter(open_lake(load_settings(lake_url=str(root / "lake"))))
        self.tag = tag
        self.files = 0

    def write(self, bars: pa.Table) -> str:
        first = bars["window_start"][0].as_py()
        self.files += 1
        name = file_name(f"{self.tag}-{self.files:06d}", 0, 0, 0)
        return self.lake.write_bar_table(bars, name, 60, first.strftime("%Y-%m-%d"))


def warehouse_settings(root: Path) -> Settings:
    return load_settings(
        lake_url=str(root / "lake"),
        warehouse=f"duckdb:///{root / 'warehouse.duckdb'}",
        dbt_target_path=root / "dbt",
    )


SLOWEST_NODES = 8
LAST_BUILD: dict[str, float] = {}  # node -> seconds, of the last transform's build


def slowest(nodes: dict[str, float], count: int = SLOWEST_NODES) -> dict[str, float]:
    """The `count` slowest nodes, by their short name (model.stockpipe.x -> model x)."""
    top = sorted(nodes.items(), key=lambda item: -item[1])[:count]
    return {f"{uid.split('.')[0]} {uid.split('.')[2]}": round(s, 3) for uid, s in top}


def load_and_transform(settings: Settings, since: date | None = None) -> tuple[float, float, int]:
    """`stockpipe load` (every pending file) then `stockpipe transform`: seconds each, rows."""
    from flows.transform.dbt_runner import transform
    from flows.warehouse import load

    started = time.perf_counter()
    rows = 0
    while True:
        summary = load(settings, progress=False, since=since)
        rows += summary.rows
        if not summary.files_left:
            break
    loaded = time.perf_counter()
    result = transform(settings)
    LAST_BUILD.clear()
    LAST_BUILD.update({n.unique_id: n.execution_time_s for n in result.nodes})
    return loaded - started, time.perf_counter() - loaded, rows


def rows_rewritten(settings: Settings) -> int:
    """Silver rows the last transform wrote: they carry the newest load sequence."""
    path = str(settings.duckdb_path)
    with duckdb.connect(path, read_only=True) as con:
        return con.execute(
            "select count(*) from silver.fct_bars_1m "
            "where _load_seq = (select max(_load_seq) from bronze.bars)"
        ).fetchone()[0]


def alone(root: Path, batches: list[pa.Table], run: Run) -> None:
    """The given files alone in a fresh lake and warehouse: `run`'s alone figures."""
    if root.exists():
        shutil.rmtree(root)
    out = DayWriter(root, "alone")
    for bars in batches:
        out.write(bars)
    run.alone_load_s, run.alone_transform_s, _ = load_and_transform(warehouse_settings(root))
    run.alone_slowest_nodes = slowest(LAST_BUILD)


def run(n_symbols: int, n_days: int, out: Path, log=print, history_loads: int = 1) -> dict:
    if out.exists():
        shutil.rmtree(out)
    days = sessions(n_days + 1)
    history, (new_day, new_minutes) = days[:-1], days[-1]
    backfill_index = max(0, n_days - 1 - SESSIONS_IN_11_MONTHS)
    maker = BarMaker(n_symbols)
    emitted = int(time.time() * 1_000_000)

    lake = DayWriter(out / "main", "bench")
    settings = warehouse_settings(out / "main")
    backfill_rows: pa.Table | None = None
    bars = 0
    initial = Run("initial build (history)", 0.0, 0.0, 0)
    # the history in `history_loads` parts, oldest first, each loaded and built (the
    # first a full build, the others incremental) as if it had arrived over time
    cuts = [round(k * len(history) / history_loads) for k in range(history_loads + 1)]
    for part, (first, last) in enumerate(zip(cuts, cuts[1:], strict=False), 1):
        started = time.perf_counter()
        for i in range(first, last):
            rows = maker.day(history[i][1], emitted)
            lake.write(rows)
            bars += rows.num_rows
            if i == backfill_index:
                backfill_rows = rows
        log(f"wrote {bars:,} bars of {n_symbols} symbols x {last} sessions "
            f"in {time.perf_counter() - started:.0f}s")  # fmt: skip
        load_s, transform_s, rows = load_and_transform(settings)
        initial.load_s += load_s
        initial.transform_s += transform_s
        initial.rows_loaded += rows
        log(f"history {part}/{history_loads}: load {load_s:.1f}s, transform {transform_s:.1f}s")
    if history_loads > 1:
        initial.name = f"history, built in {history_loads} loads"

    new_rows = maker.day(new_minutes, emitted + 1)
    lake.write(new_rows)
    load_s, transform_s, rows = load_and_transform(settings)
    new_run = Run(
        f"(a) new day, {new_day}",
        load_s,
        transform_s,
        rows,
        rows_rewritten(settings),
        goal=GOALS["new day"],
        slowest_nodes=slowest(LAST_BUILD),
    )
    log(f"new day: load {load_s:.1f}s, transform {transform_s:.1f}s")

    backfill_day = history[backfill_index][0]
    restated = maker.restate(backfill_rows, 0.02, emitted + 2)
    lake.write(restated)
    load_s, transform_s, rows = load_and_transform(settings, since=backfill_day)
    backfill_run = Run(
        f"(b) backfill, {backfill_day}: {restated.num_rows:,} bars restated",
        load_s,
        transform_s,
        rows,
        rows_rewritten(settings),
        goal=GOALS["backfill"],
        slowest_nodes=slowest(LAST_BUILD),
    )
    log(f"backfill: load {load_s:.1f}s, transform {transform_s:.1f}s")

    alone(out / "alone-new", [new_rows], new_run)
    alone(out / "alone-backfill", [backfill_rows, restated], backfill_run)
    runs = [initial, new_run, backfill_run]
    return {
        "symbols": n_symbols,
        "days": n_days,
        "bars": bars,
        "runs": [
            asdict(r) | {"total_s": r.total_s, "alone_total_s": r.alone_total_s, "ratio": r.ratio}
            for r in runs
        ],
    }


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{report['bars']:,} bars: {report['symbols']} symbols x {report['days']} sessions"
    )
    for column in (
        "run",
        "rows loaded",
        "load s",
        "transform s",
        "total s",
        "silver rows rewritten",
        "same day alone s",
        "ratio",
        "goal",
    ):
        table.add_column(column, justify="left" if column == "run" else "right")

    def fmt(value: float | None, spec: str = ".1f") -> str:
        return "-" if value is None else format(value, spec)

    for r in report["runs"]:
        table.add_row(
            r["name"],
            f"{r['rows_loaded']:,}",
            fmt(r["load_s"]),
            fmt(r["transform_s"]),
            fmt(r["total_s"]),
            fmt(r["silver_rows_rewritten"], ","),
            fmt(r["alone_total_s"]),
            fmt(r["ratio"], ".2f"),
            "-" if r["goal"] is None else f"<= {r['goal']}x",
        )
    console = Console(width=160)
    console.print(table)
    for r in report["runs"]:
        for key, label in (("slowest_nodes", ""), ("alone_slowest_nodes", ", the day alone")):
            if r.get(key):
                nodes = ", ".join(f"{name} {s:.2f}" for name, s in r[key].items())
                console.print(f"slowest dbt nodes, {r['name']}{label} (s): {nodes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--days", type=int, default=252, help="NYSE sessions of history")
    parser.add_argument("--out", type=Path, default=Path("data/bench-scale"))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--history-loads",
        type=int,
        default=1,
        help="load and build the history in this many parts, oldest first (1: one full build)",
    )
    parser.add_argument(
        "--duckdb-memory-limit",
        help="DuckDB's memory limit for dbt, e.g. 8GB (default: DuckDB's own, 80%% of RAM)",
    )
    args = parser.parse_args()
    if args.duckdb_memory_limit:
        os.environ["STOCKPIPE_DUCKDB_MEMORY_LIMIT"] = args.duckdb_memory_limit
    if args.days < 1 or args.symbols < 2:
        parser.error("need at least 1 session and 2 symbols")
    if not 1 <= args.history_loads <= args.days:
        parser.error("--history-loads must be between 1 and --days")
    os.environ.setdefault("DBT_QUIET", "true")  # dbt's own log lines: the figures only

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    # progress and whatever the runs print go to stderr: stdout is the table or the JSON
    with contextlib.redirect_stdout(sys.stderr):
        report = run(args.symbols, args.days, args.out, log=log, history_loads=args.history_loads)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
