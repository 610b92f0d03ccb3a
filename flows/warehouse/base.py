"""What every warehouse shares: the bronze tables, the `Warehouse` interface, lake file records.

Contract 3 of DESIGN.md: `bronze.bars` holds every row of the contract-2 bar
files plus `_source_file` and `_loaded_at`; `bronze.load_manifest` holds one
row per loaded file. A warehouse loads a batch of files and writes their
manifest rows in one transaction, so the manifest is the only record of what
is loaded and a re-run after any crash loads every file exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import pyarrow as pa

from flows.errors import StockpipeError

BRONZE_SCHEMA = "bronze"
BARS_TABLE = "bars"
MANIFEST_TABLE = "load_manifest"

_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


@dataclass(frozen=True)
class Column:
    """One column of a bronze table, with its type on each warehouse."""

    name: str
    duckdb: str
    snowflake: str


_TS = ("TIMESTAMPTZ", "TIMESTAMP_TZ")
_FLOAT = ("DOUBLE", "FLOAT")

# The contract-2 Parquet columns, in contract order. Timestamps stay instants in
# UTC (timestamp with time zone on both warehouses); dbt converts to exchange time.
BAR_COLUMNS: tuple[Column, ...] = (
    Column("symbol", "VARCHAR", "VARCHAR"),
    Column("interval_s", "INTEGER", "INTEGER"),
    Column("window_start", *_TS),
    Column("window_end", *_TS),
    Column("open", *_FLOAT),
    Column("high", *_FLOAT),
    Column("low", *_FLOAT),
    Column("close", *_FLOAT),
    Column("volume", *_FLOAT),
    Column("vwap", *_FLOAT),
    Column("trade_count", "BIGINT", "BIGINT"),
    Column("first_ts", *_TS),
    Column("last_ts", *_TS),
    Column("revision", "INTEGER", "INTEGER"),
    Column("emitted_at", *_TS),
)
LOAD_COLUMNS: tuple[Column, ...] = (
    Column("_source_file", "VARCHAR", "VARCHAR"),
    Column("_loaded_at", *_TS),
)
MANIFEST_COLUMNS: tuple[Column, ...] = (
    Column("path", "VARCHAR", "VARCHAR"),
    Column("target_table", "VARCHAR", "VARCHAR"),
    Column("size_bytes", "BIGINT", "BIGINT"),
    Column("row_count", "BIGINT", "BIGINT"),
    Column("batch_id", "VARCHAR", "VARCHAR"),
    Column("loaded_at", *_TS),
)

# The Arrow schema of contract 2, for writers and for checking files before a load.
BAR_ARROW_SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("interval_s", pa.int32()),
        ("window_start", pa.timestamp("us", tz="UTC")),
        ("window_end", pa.timestamp("us", tz="UTC")),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.float64()),
        ("vwap", pa.float64()),
        ("trade_count", pa.int64()),
        ("first_ts", pa.timestamp("us", tz="UTC")),
        ("last_ts", pa.timestamp("us", tz="UTC")),
        ("revision", pa.int32()),
        ("emitted_at", pa.timestamp("us", tz="UTC")),
    ]
)
BAR_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in BAR_COLUMNS)


class LoadError(StockpipeError):
    """A batch could not be loaded; nothing of it is visible in the warehouse."""


@dataclass(frozen=True)
class LakeFile:
    """A Parquet file in the lake: `url` is what the manifest and `_source_file` record."""

    url: str
    path: str  # path inside the lake filesystem (no protocol)
    size: int


@dataclass(frozen=True)
class LoadResult:
    """What one committed batch loaded."""

    batch_id: str
    files: int
    rows: int
    loaded_at: datetime


BeforeCommit = Callable[[], None]


class Warehouse(Protocol):
    """A warehouse that holds `bronze.bars` and `bronze.load_manifest`."""

    name: str

    def ensure_schema(self) -> None:
        """Create the bronze schema and tables (and stage) when missing."""

    def loaded_files(self) -> set[str]:
        """URLs of every file in the manifest."""

    def load_batch(
        self, files: Sequence[LakeFile], *, before_commit: BeforeCommit | None = None
    ) -> LoadResult:
        """Load `files` and their manifest rows in one transaction.

        `before_commit` runs inside the transaction after every row is written,
        just before COMMIT; if it raises, the transaction is rolled back (tests
        use it to simulate a crash at the worst moment).
        """

    def close(self) -> None:
        """Release the connection."""


def check_identifier(value: str, what: str) -> str:
    """Return `value` if it is a plain SQL identifier, else raise naming the setting."""
    if not _IDENTIFIER_RE.match(value):
        raise StockpipeError(
            f"{what}={value!r} is not a valid identifier "
            "(letters, digits, _ and $, not starting with a digit)"
        )
    return value


def quote(identifier: str) -> str:
    """Double-quote an identifier that `check_identifier` accepted."""
    check_identifier(identifier, "identifier")
    return f'"{identifier}"'


def check_bar_schema(schema: pa.Schema, url: str) -> None:
    """Raise `LoadError` unless a file has every contract-2 column (extra columns are fine)."""
    missing = [name for name in BAR_COLUMN_NAMES if name not in schema.names]
    if missing:
        raise LoadError(
            f"{url} is not a contract-2 bar file: missing column(s) {', '.join(missing)}; "
            "move it out of the lake's bars/ folder and run the load again"
        )
