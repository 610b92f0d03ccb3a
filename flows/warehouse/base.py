"""What every warehouse shares: the bronze tables, the `Warehouse` interface, lake file records.

Contract 3 (docs/contracts.md): `bronze.bars` holds every row of the contract-2 bar
files plus `_source_file`, `_loaded_at` and `_load_seq`; `bronze.load_manifest`
holds one row per loaded file. A warehouse loads a batch of files and writes
their manifest rows in one transaction, so the manifest is the only record of
what is loaded and a re-run after any crash loads every file exactly once.

Load sequence: `bronze.load_state` holds one row, `last_seq`. A load's first
statement inside its transaction is `UPDATE load_state SET last_seq = last_seq + 1`,
which takes the table's write lock until COMMIT or ROLLBACK; so loads are
serialized from that point on and commit in the order of their numbers: a
reader that has seen load N committed has seen every load below N too. That
is what lets dbt select new rows by `_load_seq > max processed` (contract 3),
where the client clock `_loaded_at` could commit out of order.

Content check: the manifest keeps `size_bytes`, `content_md5` (MD5 of the file's
bytes, computed while loading, which reads them anyway) and `source_version`
(the S3 ETag, or the local mtime). A file listed again under a loaded name is
unchanged when its size and version match (no read at all); when only the
version differs (rewritten), its bytes are hashed and compared.
"""

from __future__ import annotations

import hashlib
import logging
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
STATE_TABLE = "load_state"

log = logging.getLogger(__name__)

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
    Column("_load_seq", "BIGINT", "BIGINT"),  # added by migration to older warehouses
)
MANIFEST_COLUMNS: tuple[Column, ...] = (
    Column("path", "VARCHAR", "VARCHAR"),
    Column("target_table", "VARCHAR", "VARCHAR"),
    Column("size_bytes", "BIGINT", "BIGINT"),
    Column("row_count", "BIGINT", "BIGINT"),
    Column("batch_id", "VARCHAR", "VARCHAR"),
    Column("loaded_at", *_TS),
    # added by migration to older warehouses (NULL on their rows):
    Column("load_seq", "BIGINT", "BIGINT"),
    Column("content_md5", "VARCHAR", "VARCHAR"),
    Column("source_version", "VARCHAR", "VARCHAR"),
)
# Columns that warehouses created before the load sequence lack: ensure_schema adds them.
MIGRATED_COLUMNS: dict[str, tuple[Column, ...]] = {
    BARS_TABLE: LOAD_COLUMNS[2:],
    MANIFEST_TABLE: MANIFEST_COLUMNS[6:],
}
STATE_COLUMNS: tuple[Column, ...] = (
    Column("last_seq", "BIGINT", "BIGINT"),
    Column("updated_at", *_TS),
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


class ConcurrentLoad(LoadError):
    """Another load holds the load lock or loaded some of the batch's files meanwhile.

    Nothing of the batch was kept; the loader checks the files again and retries.
    """

    def __init__(self, message: str, urls: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.urls = tuple(urls)


class ContentConflict(LoadError):
    """Lake files that were loaded under the same name with other content."""


@dataclass(frozen=True)
class LakeFile:
    """A Parquet file in the lake: `url` is what the manifest and `_source_file` record."""

    url: str
    path: str  # path inside the lake filesystem (no protocol)
    size: int
    version: str | None = None  # S3 ETag or local mtime: unchanged files are not re-read


@dataclass(frozen=True)
class ManifestEntry:
    """What the manifest recorded for one loaded file (NULLs on rows older than the migration)."""

    url: str
    size: int
    rows: int
    content_md5: str | None
    source_version: str | None
    load_seq: int | None


@dataclass(frozen=True)
class LoadResult:
    """What one committed batch loaded."""

    batch_id: str
    files: int
    rows: int
    loaded_at: datetime
    load_seq: int | None = None

    @classmethod
    def committed(
        cls, target: str, batch_id: str, seq: int, files: int, rows: int, loaded_at: datetime
    ) -> LoadResult:
        """The result of a committed batch, logged the same way on every warehouse."""
        log.info(
            "batch %s (load %d): loaded %d file(s), %d row(s) into %s",
            batch_id,
            seq,
            files,
            rows,
            target,
        )
        return cls(batch_id=batch_id, files=files, rows=rows, loaded_at=loaded_at, load_seq=seq)


BeforeCommit = Callable[[], None]


class Warehouse(Protocol):
    """A warehouse that holds `bronze.bars` and `bronze.load_manifest`."""

    name: str

    def ensure_schema(self) -> None:
        """Create the bronze schema and tables (and stage) when missing."""

    def manifest_entries(self, urls: Sequence[str]) -> dict[str, ManifestEntry]:
        """The manifest rows of these URLs only (the manifest is never read whole)."""

    def max_loaded_path(self, prefix: str) -> str | None:
        """The greatest manifest path starting with `prefix` (the newest loaded date there)."""

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


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def chunks(items: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    """Bound IN lists (and their bind parameters) per manifest query."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def check_bar_schema(schema: pa.Schema, url: str) -> None:
    """Raise `LoadError` unless a file has every contract-2 column (extra columns are fine)."""
    missing = [name for name in BAR_COLUMN_NAMES if name not in schema.names]
    if missing:
        raise LoadError(
            f"{url} is not a contract-2 bar file: missing column(s) {', '.join(missing)}; "
            "move it out of the lake's bars/ folder and run the load again"
        )
