"""What every warehouse shares: the bronze tables, the `Warehouse` interface, lake file records.

Contract 3 (docs/contracts.md): `bronze.bars` holds every row of the contract-2 bar
files plus `_source_file`, `_loaded_at` and `_load_seq`; `bronze.load_manifest`
holds one row per loaded file. A warehouse loads a batch of files and writes
their manifest rows in one transaction, so the manifest is the only record of
what is loaded and a re-run after any crash loads every file exactly once.

Reference tables (`REFERENCE_TABLES`: `bronze.outages`, `bronze.splits`) are not
loaded from lake files but upserted by key (`Warehouse.upsert_reference`): one
MERGE built by `merge_statement` on both warehouses, which inserts new keys,
updates rows whose values changed (and their `_loaded_at`), leaves the rest alone
and never deletes.

Load sequence: `bronze.load_state` holds one row, `last_seq`. A load's first
statement inside its transaction is `UPDATE load_state SET last_seq = last_seq + 1`,
which takes the table's write lock until COMMIT or ROLLBACK; so loads are
serialized from that point on and commit in the order of their numbers: a
reader that has seen load N committed has seen every load below N too. That
is what lets dbt select new rows by `_load_seq > max processed` (contract 3),
where the client clock `_loaded_at` could commit out of order.

Names: the manifest's `path` and `_source_file` are the file's key, its path
inside the lake (`bars/interval_s=60/date=…/<name>.parquet`), never the URL it
was reached by. Older loaders recorded URLs; `ensure_schema` rewrites them to
keys once (`key_migration`) and marks `load_state.manifest_format`.

Content check: the manifest keeps `size_bytes`, `content_md5` (MD5 of the file's
bytes, computed while loading, which reads them anyway) and `source_version`
(the S3 ETag, or the local mtime). A file listed again under a loaded name is
unchanged when its size and version match (no read at all), else when its bytes
hash the same, else when it holds the rows bronze holds from it (re-encoded:
another compression, pyarrow version or row order; its new size, version and
MD5 are recorded). Other rows are a `ContentConflict` naming the file and the
first row that differs (`first_difference`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import pyarrow as pa

from flows.errors import StockpipeError
from flows.lake.batches import Link, parse_name

BRONZE_SCHEMA = "bronze"
BARS_TABLE = "bars"
MANIFEST_TABLE = "load_manifest"
STATE_TABLE = "load_state"
OUTAGES_TABLE = "outages"
SPLITS_TABLE = "splits"

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
    # Trade conditions (contract 2): ticks kept out of some price, ticks with unmapped
    # codes. Files of older writers lack them: NULL there (not counted, not zero).
    Column("excluded_count", "BIGINT", "BIGINT"),
    Column("unmapped_count", "BIGINT", "BIGINT"),
    # Ticks of a 1-minute candle (the outage backfill's): > 0 marks a bar made from one.
    Column("candle_count", "BIGINT", "BIGINT"),
)
# Bar columns a file from an older writer may lack (loaded as NULL).
OPTIONAL_BAR_COLUMNS: tuple[str, ...] = ("excluded_count", "unmapped_count", "candle_count")
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
    # the file's batch (flows.lake.batches): its source partition and offsets, from its
    # name, and the last offset of the bar batch it follows (NULL: a chain's first, or
    # a file without the link, as older writers made them)
    Column("source_topic", "VARCHAR", "VARCHAR"),
    Column("source_partition", "INTEGER", "INTEGER"),
    Column("first_offset", "BIGINT", "BIGINT"),
    Column("last_offset", "BIGINT", "BIGINT"),
    Column("follows_offset", "BIGINT", "BIGINT"),
)
STATE_COLUMNS: tuple[Column, ...] = (
    Column("last_seq", "BIGINT", "BIGINT"),
    Column("updated_at", *_TS),
    # added by migration: NULL (older loaders: manifest paths are URLs) or MANIFEST_FORMAT
    Column("manifest_format", "INTEGER", "INTEGER"),
)
# Columns that warehouses created by older loaders lack: ensure_schema adds them.
MIGRATED_COLUMNS: dict[str, tuple[Column, ...]] = {
    BARS_TABLE: (*LOAD_COLUMNS[2:], *BAR_COLUMNS[-2:]),
    MANIFEST_TABLE: MANIFEST_COLUMNS[6:],
    STATE_TABLE: STATE_COLUMNS[2:],
}
# load_state.manifest_format of a manifest (and `_source_file`) keyed by the path in the lake.
MANIFEST_FORMAT = 2
# The path inside the lake at the end of a URL an older loader recorded: the layout of
# contract 2 (`manifest_key`).
_LAKE_KEY_RE = re.compile(r"bars/interval_s=[0-9]+/date=[0-9]{4}-[0-9]{2}-[0-9]{2}/[^/]+$")

# Reference tables: small tables kept by key (`Warehouse.upsert_reference`), not loaded
# from lake files. `_loaded_at` (REFERENCE_LOADED_AT) follows their columns: when the
# row was inserted or last changed.
_DATE = ("DATE", "DATE")
_BOOL = ("BOOLEAN", "BOOLEAN")
_TEXT = ("VARCHAR", "VARCHAR")
REFERENCE_LOADED_AT = Column("_loaded_at", *_TS)


# The Arrow type of each reference-table column type (by its DuckDB name).
_ARROW_OF = {
    "VARCHAR": pa.string(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "BOOLEAN": pa.bool_(),
    "DATE": pa.date32(),
    "DOUBLE": pa.float64(),
}


@dataclass(frozen=True)
class ReferenceTable:
    """A bronze table upserted by `key`: its columns (without `_loaded_at`)."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]

    @property
    def all_columns(self) -> tuple[Column, ...]:
        return (*self.columns, REFERENCE_LOADED_AT)

    @property
    def arrow(self) -> pa.Schema:
        """The Arrow schema of its rows (without `_loaded_at`)."""
        return pa.schema([(c.name, _ARROW_OF[c.duckdb]) for c in self.columns])


REFERENCE_TABLES: dict[str, ReferenceTable] = {
    # The outage ledger (flows/ingest/ledger.py), one row per (entry, symbol): end_ts NULL
    # while the outage is open; repaired_via (trades | candles) and repaired_at NULL until
    # the backfill repaired it. Entries rotated out of the ledger file stay.
    OUTAGES_TABLE: ReferenceTable(
        OUTAGES_TABLE,
        (
            Column("outage_id", *_TEXT),
            Column("symbol", *_TEXT),
            Column("start_ts", *_TS),
            Column("end_ts", *_TS),
            Column("source", *_TEXT),
            Column("reason", *_TEXT),
            Column("repaired", *_BOOL),
            Column("repaired_via", *_TEXT),
            Column("repaired_at", *_TS),
        ),
        ("outage_id", "symbol"),
    ),
    # Stock splits fetched from Finnhub (dbt's stg_splits prefers them to the seed): a split
    # of split_from shares into split_to, effective from ex_date.
    SPLITS_TABLE: ReferenceTable(
        SPLITS_TABLE,
        (
            Column("symbol", *_TEXT),
            Column("ex_date", *_DATE),
            Column("split_from", *_FLOAT),
            Column("split_to", *_FLOAT),
            Column("source", *_TEXT),
        ),
        ("symbol", "ex_date"),
    ),
}


@dataclass(frozen=True)
class UpsertResult:
    """What one `upsert_reference` did: rows offered, and how many it inserted or changed."""

    table: str
    rows: int
    changed: int


def reference_rows(
    table: str, rows: pa.Table, key: Sequence[str]
) -> tuple[ReferenceTable, pa.Table]:
    """The reference table named `table` and `rows` in its columns and types, one row per key.

    Raises `LoadError` for an unknown table, a key other than the table's, a missing
    column, a value of the wrong type or a NULL key. Of rows with the same key the
    last wins (as a later ledger line would).
    """
    ref = REFERENCE_TABLES.get(table)
    if ref is None:
        raise LoadError(
            f"{table!r} is not a reference table (expected one of {', '.join(REFERENCE_TABLES)})"
        )
    if tuple(key) != ref.key:
        raise LoadError(f"bronze.{table} is kept by ({', '.join(ref.key)}), not ({', '.join(key)})")
    missing = [n for n in ref.arrow.names if n not in rows.schema.names]
    if missing:
        raise LoadError(f"rows for bronze.{table} lack column(s) {', '.join(missing)}")
    try:
        rows = rows.select(ref.arrow.names).cast(ref.arrow)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise LoadError(f"rows for bronze.{table} do not fit its columns: {exc}") from None
    for name in ref.key:
        if rows.column(name).null_count:
            raise LoadError(f"rows for bronze.{table}: {name} (part of the key) is NULL")
    keys = list(zip(*(rows.column(n).to_pylist() for n in ref.key), strict=True))
    last = {k: i for i, k in enumerate(keys)}
    if len(last) < len(keys):
        rows = rows.take(sorted(last.values()))
    return ref, rows


def merge_statement(
    target: str, source: str, ref: ReferenceTable, mark: str, q: Callable[[str], str] | None = None
) -> str:
    """The one upsert of a reference table, on both warehouses: MERGE `source` (a relation
    aliased `s` with the table's columns) into `target` by its key. A matched row whose
    values differ is updated, a new key inserted, `_loaded_at` set to the bind parameter
    `mark` (given twice); a row that did not change is left alone, rows absent from
    `source` stay."""
    q = q or quote
    on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in ref.key)
    values = [c.name for c in ref.columns if c.name not in ref.key]
    differs = " OR ".join(f"t.{q(c)} IS DISTINCT FROM s.{q(c)}" for c in values)
    sets = ", ".join(f"{q(c)} = s.{q(c)}" for c in values)
    names = [c.name for c in ref.columns]
    loaded = q(REFERENCE_LOADED_AT.name)
    return (
        f"MERGE INTO {target} AS t USING {source} ON {on} "
        f"WHEN MATCHED AND ({differs}) THEN UPDATE SET {sets}, {loaded} = {mark} "
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(q(c) for c in names)}, {loaded}) "
        f"VALUES ({', '.join(f's.{q(c)}' for c in names)}, {mark})"
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
        ("excluded_count", pa.int64()),
        ("unmapped_count", pa.int64()),
        ("candle_count", pa.int64()),
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
    """Lake files that were loaded under the same name with other rows."""

    summary: Any = None  # the LoadSummary of the run that found them, when it loaded the rest
    count: int = 0  # how many files conflict


@dataclass(frozen=True)
class LakeFile:
    """A Parquet file in the lake.

    `key`, its path inside the lake (`bars/interval_s=60/date=…/<name>.parquet`), is
    what the manifest and `_source_file` record, so the same lake reached through
    another mount, symlink, bucket, prefix or relative URL loads nothing twice;
    `url` is how this run reaches it (messages, Airflow), `path` the same in the
    lake's filesystem.
    """

    key: str
    url: str
    path: str  # path in the lake filesystem (no protocol)
    size: int
    version: str | None = None  # S3 ETag or local mtime: unchanged files are not re-read
    link: Link | None = None  # its place in its partition's chain, once the loader read it


def manifest_values(
    file: LakeFile,
    *,
    rows: int,
    batch_id: str,
    loaded_at: datetime,
    seq: int,
    md5: str,
) -> list[Any]:
    """One manifest row for a loaded file, in MANIFEST_COLUMNS order (both warehouses)."""
    batch = parse_name(file.key.rsplit("/", 1)[-1])
    follows = file.link.follows if file.link is not None else None
    return [
        file.key,
        BARS_TABLE,
        file.size,
        rows,
        batch_id,
        loaded_at,
        seq,
        md5,
        file.version,
        batch.topic if batch else None,
        batch.partition if batch else None,
        batch.first_offset if batch else None,
        batch.last_offset if batch else None,
        follows.last_offset if follows else None,
    ]


@dataclass(frozen=True)
class ManifestEntry:
    """What the manifest recorded for one loaded file (NULLs on rows older than the migration)."""

    key: str
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
    """A warehouse that holds `bronze.bars`, `bronze.load_manifest` and the reference tables."""

    name: str

    def ensure_schema(self) -> None:
        """Create the bronze schema and tables (and stage) when missing."""

    def manifest_entries(self, keys: Sequence[str]) -> dict[str, ManifestEntry]:
        """The manifest rows of these lake keys only (the manifest is never read whole)."""

    def max_loaded_path(self, prefix: str) -> str | None:
        """The greatest manifest key starting with `prefix` (the newest loaded date there)."""

    def loaded_rows(self, key: str) -> pa.Table:
        """The bar rows bronze holds from the file `key`, in contract-2 columns (any order)."""

    def record_versions(self, files: Sequence[LakeFile], md5s: Sequence[str]) -> None:
        """Record the size, version and MD5 of loaded files found re-encoded, same rows."""

    def load_batch(
        self, files: Sequence[LakeFile], *, before_commit: BeforeCommit | None = None
    ) -> LoadResult:
        """Load `files` and their manifest rows in one transaction.

        `before_commit` runs inside the transaction after every row is written,
        just before COMMIT; if it raises, the transaction is rolled back (tests
        use it to simulate a crash at the worst moment).
        """

    def upsert_reference(self, table: str, rows: pa.Table, key: Sequence[str]) -> UpsertResult:
        """Insert or update `rows` of the reference table `table` by `key`, in one transaction.

        Rows whose key is not in `rows` stay; a row that did not change is not touched.
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


def manifest_key(url: str) -> str | None:
    """The path inside the lake at the end of a URL an older loader recorded, if any."""
    match = _LAKE_KEY_RE.search(url)
    return match[0] if match else None


def key_migration(paths: Sequence[tuple[str, int | None]]) -> tuple[dict[str, str], list[str]]:
    """What to do with the manifest (path, load_seq) rows of an older loader, which held URLs.

    Returns {old path: key} to rewrite, and the old paths to drop because an earlier
    load holds the same key (one lake reached by two URLs and loaded twice: the
    earliest load keeps the name). Paths already keys, or outside the layout, stay.
    """
    taken = {path for path, _ in paths if manifest_key(path) == path}
    rewrite: dict[str, str] = {}
    drop: list[str] = []
    for path, _seq in sorted(paths, key=lambda p: (p[1] is not None, p[1] or 0, p[0])):
        key = manifest_key(path)
        if key is None or key == path:
            continue
        if key in taken:
            drop.append(path)
        else:
            taken.add(key)
            rewrite[path] = key
    return rewrite, drop


def log_key_migration(rewrite: dict[str, str], drop: Sequence[str], where: str) -> None:
    if rewrite:
        log.info("%s: %d manifest path(s) rewritten as keys in the lake", where, len(rewrite))
    for path in drop:
        log.warning(
            "%s: %s was loaded twice under two URLs of one lake; its later manifest row is"
            " dropped (its bronze rows keep the old URL in _source_file; silver keeps one)",
            where,
            path,
        )


def key_migration_sql(
    bars: str,
    manifest: str,
    rewrite: dict[str, str],
    drop: Sequence[str],
    mark: str,
    q: Callable[[str], str] = quote,
) -> list[tuple[str, list[str]]]:
    """The statements of `key_migration`'s answer, with `mark` as bind placeholder (? or %s)
    and `q` quoting column names: drop the duplicate manifest rows, then rename manifest
    paths and `_source_file`s."""
    out: list[tuple[str, list[str]]] = []
    for part in chunks(list(drop)):
        out.append(
            (
                f"DELETE FROM {manifest} WHERE {q('path')} IN ({', '.join([mark] * len(part))})",
                list(part),
            )
        )
    for part in chunks(list(rewrite.items())):
        values = ", ".join([f"({mark}, {mark})"] * len(part))
        params = [v for pair in part for v in pair]
        for table, column in ((manifest, "path"), (bars, "_source_file")):
            out.append(
                (
                    f"UPDATE {table} AS t SET {q(column)} = k.new_key "
                    f"FROM (VALUES {values}) AS k(old_path, new_key) "
                    f"WHERE t.{q(column)} = k.old_path",
                    params,
                )
            )
    return out


def chunks(items: Sequence[Any], size: int = 500) -> list[Sequence[Any]]:
    """Bound IN and VALUES lists (and their bind parameters) per manifest statement."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def check_bar_schema(schema: pa.Schema, url: str) -> None:
    """Raise `LoadError` unless a file has every contract-2 column (extra columns are fine;
    the `OPTIONAL_BAR_COLUMNS` of newer writers may be missing)."""
    missing = [
        name
        for name in BAR_COLUMN_NAMES
        if name not in schema.names and name not in OPTIONAL_BAR_COLUMNS
    ]
    if missing:
        raise LoadError(
            f"{url} is not a contract-2 bar file: missing column(s) {', '.join(missing)}; "
            "move it out of the lake's bars/ folder and run the load again"
        )


# ------------------------------------------------------------------ rows, not bytes

# A file's content is its set of contract-2 rows: sorted by the key that names a row
# in messages, then by every other column, the same rows compare equal however encoded.
ROW_KEY: tuple[str, ...] = ("symbol", "window_start", "revision")
_SORT_KEYS = [
    (name, "ascending") for name in (*ROW_KEY, *(n for n in BAR_COLUMN_NAMES if n not in ROW_KEY))
]


def with_bar_columns(table: pa.Table) -> pa.Table:
    """The bar columns of a checked file in warehouse order, NULL for optional ones it lacks."""
    for name in OPTIONAL_BAR_COLUMNS:
        if name not in table.schema.names:
            table = table.append_column(
                name, pa.nulls(table.num_rows, BAR_ARROW_SCHEMA.field(name).type)
            )
    return table.select(list(BAR_COLUMN_NAMES))


def canonical_rows(table: pa.Table, url: str) -> pa.Table:
    """The contract-2 columns of `table` in contract order and types, rows sorted."""
    check_bar_schema(table.schema, url)
    try:
        table = with_bar_columns(table).cast(BAR_ARROW_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise LoadError(f"{url} does not hold contract-2 bar columns: {exc}") from None
    return table.sort_by(_SORT_KEYS)


def first_difference(now: pa.Table, loaded: pa.Table) -> str | None:
    """None when two canonical tables hold the same rows, else the first row that differs.

    Rows are walked in (symbol, window_start, revision) order; the answer names the
    row and each column that differs (loaded -> now), or says on which side it is missing.
    """
    new_rows, old_rows = now.to_pylist(), loaded.to_pylist()
    i = j = 0
    while i < len(new_rows) or j < len(old_rows):
        new = new_rows[i] if i < len(new_rows) else None
        old = old_rows[j] if j < len(old_rows) else None
        if new is not None and old is not None and _row_key(new) == _row_key(old):
            changed = [c for c in BAR_COLUMN_NAMES if not _same(old[c], new[c])]
            if changed:
                what = ", ".join(f"{c} {_show(old[c])} -> {_show(new[c])}" for c in changed)
                return f"{_row_name(new)}: {what}"
            i, j = i + 1, j + 1
        elif old is None or (new is not None and _row_key(new) < _row_key(old)):
            return f"{_row_name(new)}: in the file now, not in what was loaded"  # type: ignore[arg-type]
        else:
            return f"{_row_name(old)}: loaded, no longer in the file"
    return None


def _row_key(row: dict[str, Any]) -> tuple:
    return tuple((row[c] is None, row[c] if row[c] is not None else 0) for c in ROW_KEY)


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def _show(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else repr(value)


def _row_name(row: dict[str, Any]) -> str:
    """`symbol=COIN window_start=2024-11-26T14:30:00+00:00 revision=1`"""
    return " ".join(f"{c}={_plain(row[c])}" for c in ROW_KEY)


def _plain(value: Any) -> str:
    if value is None:
        return "NULL"
    return value.isoformat() if isinstance(value, datetime) else str(value)
