"""The embedded warehouse: a DuckDB file (`STOCKPIPE_WAREHOUSE=duckdb:///path`).

Files are read with pyarrow through the lake's fsspec filesystem (local or
s3://), so DuckDB needs no httpfs extension. Each batch is one DuckDB
transaction holding the bar rows and the manifest rows.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from flows.errors import ServiceUnavailable
from flows.lakefs import Lake
from flows.warehouse.base import (
    BAR_COLUMN_NAMES,
    BAR_COLUMNS,
    BARS_TABLE,
    BRONZE_SCHEMA,
    LOAD_COLUMNS,
    MANIFEST_COLUMNS,
    MANIFEST_TABLE,
    BeforeCommit,
    Column,
    LakeFile,
    LoadError,
    LoadResult,
    check_bar_schema,
    quote,
)

log = logging.getLogger(__name__)

_VIEW = "_stockpipe_load_file"


def _columns_ddl(columns: Sequence[Column]) -> str:
    return ", ".join(f"{quote(c.name)} {c.duckdb}" for c in columns)


class DuckDBWarehouse:
    """bronze.bars and bronze.load_manifest in a DuckDB file."""

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
        self._bars = f"{quote(BRONZE_SCHEMA)}.{quote(BARS_TABLE)}"
        self._manifest = f"{quote(BRONZE_SCHEMA)}.{quote(MANIFEST_TABLE)}"

    def ensure_schema(self) -> None:
        self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(BRONZE_SCHEMA)}")
        self.con.execute(
            f"CREATE TABLE IF NOT EXISTS {self._bars} ({_columns_ddl(BAR_COLUMNS + LOAD_COLUMNS)})"
        )
        # The primary key makes a double load fail at commit instead of duplicating rows.
        self.con.execute(
            f"CREATE TABLE IF NOT EXISTS {self._manifest} "
            f"({_columns_ddl(MANIFEST_COLUMNS)}, PRIMARY KEY ({quote('path')}))"
        )

    def loaded_files(self) -> set[str]:
        rows = self.con.execute(f"SELECT {quote('path')} FROM {self._manifest}").fetchall()
        return {row[0] for row in rows}

    def load_batch(
        self, files: Sequence[LakeFile], *, before_commit: BeforeCommit | None = None
    ) -> LoadResult:
        batch_id = uuid.uuid4().hex
        loaded_at = datetime.now(UTC)
        if not files:
            return LoadResult(batch_id=batch_id, files=0, rows=0, loaded_at=loaded_at)
        columns = ", ".join(quote(name) for name in BAR_COLUMN_NAMES)
        insert_bars = (
            f"INSERT INTO {self._bars} ({columns}, {quote('_source_file')}, {quote('_loaded_at')}) "
            f"SELECT {columns}, ?, ? FROM {_VIEW}"
        )
        manifest_cols = ", ".join(quote(c.name) for c in MANIFEST_COLUMNS)
        insert_manifest = (
            f"INSERT INTO {self._manifest} ({manifest_cols}) VALUES (?, ?, ?, ?, ?, ?)"
        )

        total = 0
        self.con.begin()
        try:
            for file in files:
                table = self._read(file)
                self.con.register(_VIEW, table)
                try:
                    self.con.execute(insert_bars, [file.url, loaded_at])
                finally:
                    self.con.unregister(_VIEW)
                self.con.execute(
                    insert_manifest,
                    [file.url, BARS_TABLE, file.size, table.num_rows, batch_id, loaded_at],
                )
                total += table.num_rows
            if before_commit is not None:
                before_commit()
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise
        log.info("batch %s: loaded %d file(s), %d row(s) into DuckDB", batch_id, len(files), total)
        return LoadResult(batch_id=batch_id, files=len(files), rows=total, loaded_at=loaded_at)

    def _read(self, file: LakeFile) -> pa.Table:
        try:
            with self.lake.fs.open(file.path, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                check_bar_schema(parquet.schema_arrow, file.url)
                return parquet.read(columns=list(BAR_COLUMN_NAMES))
        except FileNotFoundError:
            raise LoadError(f"{file.url} vanished from the lake before it was loaded") from None
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise LoadError(f"cannot read {file.url}: {exc}") from None

    def close(self) -> None:
        self.con.close()
