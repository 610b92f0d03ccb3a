"""The embedded warehouse: a DuckDB file (`STOCKPIPE_WAREHOUSE=duckdb:///path`).

Files are read with pyarrow through the lake's fsspec filesystem (local or
s3://), so DuckDB needs no httpfs extension. Each batch is one DuckDB
transaction holding the load-sequence bump, the bar rows and the manifest rows.

Concurrency: one process at a time can open the file for writing (DuckDB's
file lock); loads of the same file inside one process are serialized by a
per-file mutex, and `UPDATE load_state` would fail with a write-write conflict
if anything still raced, so load numbers follow commit order.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from flows.errors import ServiceUnavailable
from flows.lake.store import Lake
from flows.warehouse.base import (
    BAR_COLUMN_NAMES,
    BAR_COLUMNS,
    BARS_TABLE,
    BRONZE_SCHEMA,
    LOAD_COLUMNS,
    MANIFEST_COLUMNS,
    MANIFEST_FORMAT,
    MANIFEST_TABLE,
    MIGRATED_COLUMNS,
    REFERENCE_TABLES,
    STATE_COLUMNS,
    STATE_TABLE,
    BeforeCommit,
    Column,
    ConcurrentLoad,
    LakeFile,
    LoadError,
    LoadResult,
    ManifestEntry,
    UpsertResult,
    check_bar_schema,
    chunks,
    key_migration,
    key_migration_sql,
    log_key_migration,
    manifest_values,
    md5_hex,
    merge_statement,
    quote,
    reference_rows,
    with_bar_columns,
)

_VIEW = "_stockpipe_load_file"
_REFERENCE_VIEW = "_stockpipe_reference_rows"
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _process_lock(path: Path) -> threading.Lock:
    """One mutex per DuckDB file, shared by every warehouse object of this process."""
    key = str(path.resolve())
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def _columns_ddl(columns: Sequence[Column]) -> str:
    return ", ".join(f"{quote(c.name)} {c.duckdb}" for c in columns)


class DuckDBWarehouse:
    """bronze.bars, bronze.load_manifest and bronze.load_state in a DuckDB file."""

    name = "duckdb"

    def __init__(self, path: Path, lake: Lake) -> None:
        self.path = path
        self.lake = lake
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(path))
        except duckdb.Error as exc:
            # Most often another process (a running load, a dbt build) holds the file lock.
            raise ServiceUnavailable(f"cannot open the DuckDB warehouse {path}: {exc}") from None
        self._lock = _process_lock(path)
        self._bars = f"{quote(BRONZE_SCHEMA)}.{quote(BARS_TABLE)}"
        self._manifest = f"{quote(BRONZE_SCHEMA)}.{quote(MANIFEST_TABLE)}"
        self._state = f"{quote(BRONZE_SCHEMA)}.{quote(STATE_TABLE)}"

    def ensure_schema(self) -> None:
        with self._lock:
            self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(BRONZE_SCHEMA)}")
            self.con.execute(
                f"CREATE TABLE IF NOT EXISTS {self._bars} "
                f"({_columns_ddl(BAR_COLUMNS + LOAD_COLUMNS)})"
            )
            # The primary key makes a double load fail at commit instead of duplicating rows.
            self.con.execute(
                f"CREATE TABLE IF NOT EXISTS {self._manifest} "
                f"({_columns_ddl(MANIFEST_COLUMNS)}, PRIMARY KEY ({quote('path')}))"
            )
            self.con.execute(
                f"CREATE TABLE IF NOT EXISTS {self._state} ({_columns_ddl(STATE_COLUMNS)})"
            )
            for ref in REFERENCE_TABLES.values():
                keys = ", ".join(quote(k) for k in ref.key)
                self.con.execute(
                    f"CREATE TABLE IF NOT EXISTS {quote(BRONZE_SCHEMA)}.{quote(ref.name)} "
                    f"({_columns_ddl(ref.all_columns)}, PRIMARY KEY ({keys}))"
                )
            # Migration of warehouses created by older loaders (idempotent).
            for table, columns in MIGRATED_COLUMNS.items():
                for column in columns:
                    self.con.execute(
                        f"ALTER TABLE {quote(BRONZE_SCHEMA)}.{quote(table)} "
                        f"ADD COLUMN IF NOT EXISTS {quote(column.name)} {column.duckdb}"
                    )
            self.con.execute(
                f"INSERT INTO {self._state} (last_seq, updated_at) "
                f"SELECT (SELECT coalesce(max(load_seq), 0) FROM {self._manifest}), now() "
                f"WHERE NOT EXISTS (SELECT 1 FROM {self._state})"
            )
            self._migrate_keys()

    def _migrate_keys(self) -> None:
        """Manifest paths and `_source_file`s of older loaders (URLs) become lake keys, once."""
        (fmt,) = self.con.execute(f"SELECT max(manifest_format) FROM {self._state}").fetchone()
        if fmt is not None and fmt >= MANIFEST_FORMAT:
            return
        rows = self.con.execute(f"SELECT path, load_seq FROM {self._manifest}").fetchall()
        rewrite, drop = key_migration(rows)
        self.con.begin()
        try:
            for sql, params in key_migration_sql(self._bars, self._manifest, rewrite, drop, "?"):
                self.con.execute(sql, params)
            self.con.execute(f"UPDATE {self._state} SET manifest_format = ?", [MANIFEST_FORMAT])
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise
        log_key_migration(rewrite, drop, str(self.path))

    def manifest_entries(self, keys: Sequence[str]) -> dict[str, ManifestEntry]:
        return _manifest_entries(self.con, self._manifest, keys)

    def loaded_rows(self, key: str) -> pa.Table:
        columns = ", ".join(quote(name) for name in BAR_COLUMN_NAMES)
        return self.con.execute(
            f"SELECT {columns} FROM {self._bars} WHERE _source_file = ?", [key]
        ).to_arrow_table()

    def record_versions(self, files: Sequence[LakeFile], md5s: Sequence[str]) -> None:
        with self._lock:
            self.con.executemany(
                f"UPDATE {self._manifest} SET size_bytes = ?, source_version = ?, "
                "content_md5 = ? WHERE path = ?",
                [[f.size, f.version, md5, f.key] for f, md5 in zip(files, md5s, strict=True)],
            )

    def max_loaded_path(self, prefix: str) -> str | None:
        row = self.con.execute(
            f"SELECT max(path) FROM {self._manifest} WHERE starts_with(path, ?)", [prefix]
        ).fetchone()
        return row[0] if row else None

    def load_batch(
        self, files: Sequence[LakeFile], *, before_commit: BeforeCommit | None = None
    ) -> LoadResult:
        batch_id = uuid.uuid4().hex
        loaded_at = datetime.now(UTC)
        if not files:
            return LoadResult(batch_id=batch_id, files=0, rows=0, loaded_at=loaded_at)
        columns = ", ".join(quote(name) for name in BAR_COLUMN_NAMES)
        load_cols = ", ".join(quote(c.name) for c in LOAD_COLUMNS)
        insert_bars = (
            f"INSERT INTO {self._bars} ({columns}, {load_cols}) "
            f"SELECT {columns}, ?, ?, ? FROM {_VIEW}"
        )
        manifest_cols = ", ".join(quote(c.name) for c in MANIFEST_COLUMNS)
        placeholders = ", ".join(["?"] * len(MANIFEST_COLUMNS))
        insert_manifest = f"INSERT INTO {self._manifest} ({manifest_cols}) VALUES ({placeholders})"

        total = 0
        with self._lock:
            self.con.begin()
            try:
                seq = self._next_seq(loaded_at)
                if clash := _manifest_entries(self.con, self._manifest, [f.key for f in files]):
                    raise ConcurrentLoad(
                        f"{len(clash)} file(s) were loaded by another run meanwhile "
                        f"(e.g. {min(clash)}); nothing of this batch was kept, run the load again",
                        sorted(clash),
                    )
                for file in files:
                    table, md5 = self._read(file)
                    self.con.register(_VIEW, table)
                    try:
                        self.con.execute(insert_bars, [file.key, loaded_at, seq])
                    finally:
                        self.con.unregister(_VIEW)
                    self.con.execute(
                        insert_manifest,
                        manifest_values(
                            file,
                            rows=table.num_rows,
                            batch_id=batch_id,
                            loaded_at=loaded_at,
                            seq=seq,
                            md5=md5,
                        ),
                    )
                    total += table.num_rows
                if before_commit is not None:
                    before_commit()
                self.con.commit()
            except BaseException:
                self.con.rollback()
                raise
        return LoadResult.committed("DuckDB", batch_id, seq, len(files), total, loaded_at)

    def _next_seq(self, loaded_at: datetime) -> int:
        """This load's number, taken inside its transaction (see flows/warehouse/base.py)."""
        try:
            row = self.con.execute(
                f"UPDATE {self._state} SET last_seq = last_seq + 1, updated_at = ? "
                "RETURNING last_seq",
                [loaded_at],
            ).fetchall()
        except duckdb.TransactionException as exc:
            raise ConcurrentLoad(f"another load of {self.path} is running: {exc}") from None
        if len(row) != 1:
            raise LoadError(f"{self._state} must hold exactly one row, found {len(row)}")
        return int(row[0][0])

    def _read(self, file: LakeFile) -> tuple[pa.Table, str]:
        try:
            data = self.lake.fs.cat_file(file.path)
            parquet = pq.ParquetFile(io.BytesIO(data))
            check_bar_schema(parquet.schema_arrow, file.url)
            names = parquet.schema_arrow.names
            table = parquet.read(columns=[c for c in BAR_COLUMN_NAMES if c in names])
            return with_bar_columns(table), md5_hex(data)
        except FileNotFoundError:
            raise LoadError(f"{file.url} vanished from the lake before it was loaded") from None
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise LoadError(f"cannot read {file.url}: {exc}") from None

    def upsert_reference(self, table: str, rows: pa.Table, key: Sequence[str]) -> UpsertResult:
        ref, rows = reference_rows(table, rows, key)
        if not rows.num_rows:
            return UpsertResult(table, 0, 0)
        columns = ", ".join(quote(c.name) for c in ref.columns)
        source = f"(SELECT {columns} FROM {_REFERENCE_VIEW}) AS s"
        target = f"{quote(BRONZE_SCHEMA)}.{quote(ref.name)}"
        sql = merge_statement(target, source, ref, "$loaded_at")
        # a cursor of its own: the rows' view is seen by this transaction only
        with self._lock, self.con.cursor() as con:
            con.register(_REFERENCE_VIEW, rows)
            con.begin()
            try:
                (changed,) = con.execute(sql, {"loaded_at": datetime.now(UTC)}).fetchone()
                con.commit()
            except BaseException:
                con.rollback()
                raise
        return UpsertResult(table, rows.num_rows, int(changed or 0))

    def close(self) -> None:
        self.con.close()


def _manifest_entries(
    con: duckdb.DuckDBPyConnection, manifest: str, keys: Sequence[str]
) -> dict[str, ManifestEntry]:
    out: dict[str, ManifestEntry] = {}
    for part in chunks(list(dict.fromkeys(keys))):
        rows = con.execute(
            "SELECT path, size_bytes, row_count, content_md5, source_version, load_seq "
            f"FROM {manifest} WHERE path IN ({', '.join(['?'] * len(part))})",
            list(part),
        ).fetchall()
        out.update({row[0]: ManifestEntry(*row) for row in rows})
    return out
