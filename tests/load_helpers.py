"""Contract-2 bar files for the loader tests, written the way the lake sink lays them out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from flows.settings import Settings, load_settings
from flows.warehouse.base import BAR_ARROW_SCHEMA

# The loader's Snowflake settings on the emulator (inside `fakesnow.patch()`), without
# the lake or anything else a test sets.
EMULATED_LOADER = {
    "warehouse": "snowflake",
    "snowflake_account": "acme-test",
    "snowflake_user": "loader",
    "snowflake_password": "pw",
    "snowflake_database": "stockpipe",
    "snowflake_stage": "bronze.lake_stage",
}


def emulated_loader_settings(**overrides: Any) -> Settings:
    """Settings of a loader on the Snowflake emulator, with `overrides`."""
    return load_settings(**(EMULATED_LOADER | overrides))


def emulator_query(sql: str) -> list[tuple]:
    """Rows of `sql` on the emulator's STOCKPIPE database (inside `fakesnow.patch()`)."""
    import snowflake.connector

    with snowflake.connector.connect(
        account="a", user="u", password="p", database="STOCKPIPE"
    ) as conn:
        return conn.cursor().execute(sql).fetchall()


T0 = datetime(2024, 11, 26, 14, 30, tzinfo=UTC)


def bar_rows(
    count: int, *, symbol: str = "COIN", start: datetime = T0, seed: int = 0
) -> list[dict]:
    """`count` consecutive one-minute bars with distinct, checkable values."""
    rows = []
    for i in range(count):
        window_start = start + timedelta(minutes=i)
        base = 100.0 + seed * 10 + i * 0.25
        volume = 0.0 if i % 3 == 2 else 10.0 + i
        rows.append(
            {
                "symbol": symbol,
                "interval_s": 60,
                "window_start": window_start,
                "window_end": window_start + timedelta(minutes=1),
                "open": base,
                "high": base + 1.5,
                "low": base - 0.75,
                "close": base + 0.125,
                "volume": volume,
                "vwap": None if volume == 0 else base + 0.5,  # null when no volume
                "trade_count": 3 + i,
                "first_ts": window_start + timedelta(seconds=1, microseconds=123),
                "last_ts": window_start + timedelta(seconds=59, microseconds=456),
                "revision": i % 2,
                "emitted_at": window_start + timedelta(minutes=1, seconds=5),
                "excluded_count": i % 4,
                "unmapped_count": (i + 1) % 3,
                "candle_count": 4 if i % 5 == 4 else 0,
            }
        )
    return rows


def bars_table(rows: list[dict], *, extra_column: bool = False) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=BAR_ARROW_SCHEMA)
    if extra_column:  # "more columns may be added after these"
        table = table.append_column("future_col", pa.array(["x"] * len(rows), pa.string()))
    return table


def write_bars(
    fs: fsspec.AbstractFileSystem,
    lake_root: str,
    rows: list[dict],
    *,
    name: str | None = None,
    extra_column: bool = False,
    table: pa.Table | None = None,
) -> str:
    """Write one bar file under `bars/interval_s=60/date=…/`; return its path in `fs`."""
    table = table if table is not None else bars_table(rows, extra_column=extra_column)
    day = rows[0]["window_start"].date().isoformat() if rows else "2024-11-26"
    path = (
        f"{lake_root.rstrip('/')}/bars/interval_s=60/date={day}/{name or uuid.uuid4().hex}.parquet"
    )
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle:
        pq.write_table(table, handle)
    return path


def write_many(
    fs: fsspec.AbstractFileSystem, lake_root: str, count: int, rows_each: int = 3
) -> dict[str, list[dict]]:
    """`count` files with different symbols/values; returns {path: rows}."""
    files = {}
    for n in range(count):
        rows = bar_rows(rows_each, symbol=f"SYM{n}", seed=n)
        files[write_bars(fs, lake_root, rows, name=f"part-{n:03d}")] = rows
    return files


def key_of(path: str) -> str:
    """What the manifest and `_source_file` record for a lake file: its path from `bars/` on
    (the lake's root is `.../lake` in these tests, and nothing else there is named bars)."""
    return path[path.rindex("/bars/") + 1 :]


def expected_rows(files: dict[str, list[dict]], url_of: Any = key_of) -> list[tuple]:
    """The rows bronze.bars must hold for these files, as sorted tuples with _source_file."""
    out = []
    for path, rows in files.items():
        for row in rows:
            out.append((*row.values(), url_of(path)))
    return sorted(out, key=_sort_key)


def _sort_key(row: tuple) -> tuple:
    return (row[-1], row[0], row[2])


class CountingLocalFS(LocalFileSystem):
    """A real local filesystem that records every folder it lists (`ls`)."""

    cachable = False  # a fresh instance per test, never fsspec's shared one

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listed: list[str] = []

    def ls(self, path: str, detail: bool = False, **kwargs: Any) -> Any:
        self.listed.append(self._strip_protocol(path).rstrip("/"))
        return super().ls(path, detail=detail, **kwargs)


def day_folder(lake_root: str, day: str) -> str:
    return f"{lake_root.rstrip('/')}/bars/interval_s=60/date={day}"


def write_sessions(lake: str, days: list[datetime], symbols: list[str], minutes: int = 390) -> int:
    """One file per symbol and session of one-minute bars (named symbol-date); returns the rows."""
    fs = fsspec.filesystem("file")
    rows = 0
    for day in days:
        for seed, symbol in enumerate(symbols):
            bars = bar_rows(minutes, symbol=symbol, start=day, seed=seed)
            write_bars(fs, lake, bars, name=f"{symbol}-{day:%Y%m%d}")
            rows += len(bars)
    return rows
