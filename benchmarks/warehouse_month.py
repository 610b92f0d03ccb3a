"""How long `stockpipe load` and `stockpipe transform` take for a month of 1-minute bars.

    .venv/bin/python -m benchmarks.warehouse_month --symbols 500 --month 2025-10 --out data/bench-month

Writes contract-2 bar files (one per trading day, every regular-session
minute of every symbol: a random walk per symbol) into a fresh lake under
--out, then times the load into a fresh DuckDB warehouse and the dbt build
(+ docs) on it, and prints the figures. Nothing here is asserted: it measures.
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import date
from pathlib import Path

import numpy as np

from flows.lake.store import open_lake
from flows.settings import load_settings
from flows.stream.lake_sink import LakeWriter


def trading_minutes(month: str) -> list[np.ndarray]:
    """Per NYSE session of the month: the epoch-ms starts of its regular-session minutes."""
    import exchange_calendars as xcals

    year, mon = (int(x) for x in month.split("-"))
    first = date(year, mon, 1)
    last = date(year + (mon == 12), mon % 12 + 1, 1)
    cal = xcals.get_calendar("XNYS")
    days = []
    for session in cal.sessions_in_range(first, last):
        if session.date() >= last:
            continue
        open_ms = int(cal.session_open(session).timestamp() * 1000)
        close_ms = int(cal.session_close(session).timestamp() * 1000)
        days.append(np.arange(open_ms, close_ms, 60_000, dtype=np.int64))
    return days


def write_month(lake_dir: Path, n_symbols: int, month: str, seed: int = 1) -> tuple[int, int]:
    settings = load_settings(lake_url=str(lake_dir))
    writer = LakeWriter(open_lake(settings), name_tag="bench")
    rng = np.random.default_rng(seed)
    symbols = [f"S{i:04d}" for i in range(n_symbols)]
    price = rng.uniform(10, 500, n_symbols)
    files = rows = 0
    for minutes in trading_minutes(month):
        m = len(minutes)
        rets = rng.normal(0, 0.0008, (n_symbols, m))
        close = price[:, None] * np.exp(np.cumsum(rets, axis=1))
        open_ = np.concatenate([price[:, None], close[:, :-1]], axis=1)
        spread = np.abs(rng.normal(0, 0.0005, (n_symbols, m))) * close
        high = np.maximum(open_, close) + spread
        low = np.minimum(open_, close) - spread
        volume = rng.integers(100, 10_000, (n_symbols, m)).astype(float)
        count = rng.integers(5, 200, (n_symbols, m))
        price = close[:, -1]
        start_us = minutes * 1000
        emitted = int(time.time() * 1_000_000)
        batch = []
        for s, symbol in enumerate(symbols):
            for j in range(m):
                batch.append((symbol, 60, int(start_us[j]), int(start_us[j]) + 60_000_000,
                              float(open_[s, j]), float(high[s, j]), float(low[s, j]),
                              float(close[s, j]), float(volume[s, j]),
                              float((high[s, j] + low[s, j] + close[s, j]) / 3), int(count[s, j]),
                              int(start_us[j]) + 1_000_000, int(start_us[j]) + 59_000_000, 0,
                              emitted, 0, 0, 0))  # fmt: skip
        writer.write_bars(batch, 60)
        files += 1
        rows += len(batch)
    return files, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--month", default="2025-10")
    parser.add_argument("--out", type=Path, default=Path("data/bench-month"))
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    t0 = time.perf_counter()
    files, rows = write_month(args.out / "lake", args.symbols, args.month)
    t1 = time.perf_counter()
    print(f"wrote {rows:,} bars in {files} files in {t1 - t0:.1f}s")

    from flows.transform.dbt_runner import transform
    from flows.warehouse import load

    settings = load_settings(
        lake_url=str(args.out / "lake"),
        warehouse=f"duckdb:///{args.out / 'warehouse.duckdb'}",
        dbt_target_path=args.out / "dbt",
    )
    t2 = time.perf_counter()
    summary = load(settings, progress=False)
    t3 = time.perf_counter()
    print(
        f"stockpipe load: {summary.rows:,} rows from {summary.files_loaded} files in {t3 - t2:.1f}s"
    )
    transform(settings)
    t4 = time.perf_counter()
    print(f"stockpipe transform (dbt build + docs): {t4 - t3:.1f}s")
    summary = load(settings, progress=False)
    t5 = time.perf_counter()
    transform(settings)
    t6 = time.perf_counter()
    print(f"second run, nothing new: load {t5 - t4:.1f}s, transform {t6 - t5:.1f}s")


if __name__ == "__main__":
    main()
