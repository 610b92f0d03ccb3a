"""The production warehouse: Snowflake through snowflake-connector-python.

A batch is loaded in these steps (the loader's role, SNOWFLAKE_LOADER_ROLE):

1. each lake file is copied to a local temp dir (downloaded from s3://) as
   `fNNNNN.parquet` (its MD5 and row count taken on the way) and PUT to the
   batch's own stage path `@stage/batch_<uuid>/`; the fresh path means
   Snowflake's load metadata never skips a file that a crashed run had
   already staged or copied. PUT is not transactional, so it runs first;
2. one COPY into the landing table, outside the transaction (the results'
   row counts are checked against the files' footers):
     COPY INTO bronze.bars_landing FROM @stage/batch_<uuid>/
         FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE
         INCLUDE_METADATA = (_source_file = METADATA$FILENAME)
3. in one transaction:
     UPDATE bronze.load_state SET last_seq = last_seq + 1   -- the load lock
     SELECT max(last_seq) FROM bronze.load_state              -- this load's number
     SELECT ... FROM bronze.load_manifest WHERE path IN (...)  -- loaded meanwhile?
     INSERT INTO bronze.bars (<bar columns>, _source_file, _loaded_at, _load_seq)
         SELECT <bar columns>, CASE right(_source_file, 14) WHEN 'fNNNNN.parquet'
             THEN '<lake URL>' ... END, <t>, <n>
         FROM bronze.bars_landing WHERE contains(_source_file, 'batch_<uuid>/')
     INSERT INTO bronze.load_manifest VALUES (...), (...)
     COMMIT
4. after success and after failure alike:
     DELETE FROM bronze.bars_landing WHERE contains(_source_file, 'batch_<uuid>/')
     REMOVE @stage/batch_<uuid>/

COPY with MATCH_BY_COLUMN_NAME takes no transformations, so `_load_seq` (only
known inside the transaction) cannot come from the COPY itself. Copying into
bronze.bars and stamping the rows with an UPDATE would write bronze.bars twice;
instead the COPY fills `bronze.bars_landing` (a TRANSIENT scratch table with
the columns of bronze.bars, shared by concurrent loaders: a batch's rows are
the ones whose METADATA$FILENAME holds its own stage path) and bronze.bars is
written once, by the INSERT ... SELECT. Landing rows are never updated on
Snowflake and never read outside their batch; a crash that skips step 4 leaves
rows under a batch path no later load uses, so they are never selected.

The local emulator (fakesnow) supports neither INCLUDE_METADATA nor REMOVE: on
it (and only there) the COPY step runs `_copy_emulated` instead, which emulates
INCLUDE_METADATA with one COPY + UPDATE of the landing rows per file (never an
UPDATE of bronze.bars), and REMOVE is a no-op; the
real statements are asserted in tests/test_load_snowflake.py and parsed with
sqlglot's Snowflake dialect.
"""

from __future__ import annotations

import logging
import math
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import snowflake.connector
import snowflake.connector.errors

from flows.errors import ServiceUnavailable, StockpipeError
from flows.lake.store import Lake
from flows.settings import Settings, SettingsError
from flows.warehouse.base import (
    BAR_ARROW_SCHEMA,
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
    ReferenceTable,
    UpsertResult,
    check_bar_schema,
    check_identifier,
    chunks,
    key_migration,
    key_migration_sql,
    log_key_migration,
    manifest_values,
    md5_hex,
    merge_statement,
    reference_rows,
)

log = logging.getLogger(__name__)

# The file format lives in the COPY statement, not on the stage, so the load
# does not depend on how the stage was created.
PARQUET_FORMAT = "FILE_FORMAT = (TYPE = PARQUET USE_VECTORIZED_SCANNER = TRUE)"
_STAGED_NAME_LEN = len("f00000.parquet")
# Scratch for COPY (see the module docstring); the same columns as bronze.bars.
LANDING_TABLE = "bars_landing"
# Rows per MERGE of a reference table (Snowflake's VALUES takes at most 16,384 rows; the
# bound values are inlined into the statement's text, which must stay well under 1 MB).
UPSERT_CHUNK_ROWS = 1000


def _q(identifier: str) -> str:
    """Quote a validated identifier the way Snowflake resolves it unquoted (upper case)."""
    return f'"{identifier.upper()}"'


def _columns_ddl(columns: Sequence[Column]) -> str:
    return ", ".join(f"{_q(c.name)} {c.snowflake}" for c in columns)


def stage_parts(settings: Settings) -> tuple[str, str, str]:
    """(database, schema, stage) from SNOWFLAKE_DATABASE and SNOWFLAKE_STAGE, each validated."""
    database = check_identifier(settings.snowflake_database, "SNOWFLAKE_DATABASE")
    parts = settings.snowflake_stage.split(".")
    if not 1 <= len(parts) <= 3:
        raise SettingsError(
            f"SNOWFLAKE_STAGE={settings.snowflake_stage!r}: expected [database.][schema.]stage"
        )
    for part in parts:
        check_identifier(part, "SNOWFLAKE_STAGE")
    if len(parts) == 1:
        return database, BRONZE_SCHEMA, parts[0]
    if len(parts) == 2:
        return database, parts[0], parts[1]
    return parts[0], parts[1], parts[2]


def _private_key_der(path: Path, passphrase: str | None) -> bytes:
    """The PKCS#8 DER bytes the connector takes, from a PEM file (encrypted or not)."""
    from cryptography.hazmat.primitives import serialization

    try:
        pem = path.expanduser().read_bytes()
    except OSError as exc:
        raise SettingsError(
            f"SNOWFLAKE_PRIVATE_KEY_PATH={str(path)!r}: cannot read it ({exc.strerror})"
        ) from None
    try:
        key = serialization.load_pem_private_key(
            pem, password=passphrase.encode() if passphrase else None
        )
    except (TypeError, ValueError):
        # Never echo the passphrase; the exception text does not contain it either.
        raise SettingsError(
            f"SNOWFLAKE_PRIVATE_KEY_PATH={str(path)!r}: not a PEM private key, or "
            "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE is wrong or missing"
        ) from None
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def session_parameters(settings: Settings) -> dict[str, Any]:
    """Set at login: UTC timestamps, bounded lock waits and statements."""
    return {
        "TIMEZONE": "UTC",
        "LOCK_TIMEOUT": max(1, math.ceil(settings.snowflake_lock_timeout)),
        "STATEMENT_TIMEOUT_IN_SECONDS": max(1, math.ceil(settings.snowflake_statement_timeout)),
    }


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """Arguments for `snowflake.connector.connect` (holds secrets: never log the result)."""
    if not settings.snowflake_account or not settings.snowflake_user:
        raise SettingsError(
            "STOCKPIPE_WAREHOUSE=snowflake needs SNOWFLAKE_ACCOUNT and SNOWFLAKE_USER "
            "(and SNOWFLAKE_PASSWORD or SNOWFLAKE_PRIVATE_KEY_PATH)"
        )
    stage_parts(settings)  # fail on a bad identifier before connecting
    database = check_identifier(settings.snowflake_database, "SNOWFLAKE_DATABASE")
    kwargs: dict[str, Any] = {
        "account": settings.snowflake_account,
        "user": settings.snowflake_user,
        "database": database.upper(),
        "application": "stockpipe",
        "autocommit": True,  # transactions are explicit: BEGIN ... COMMIT
        "login_timeout": settings.snowflake_login_timeout,
    }
    if settings.snowflake_private_key_path is not None:
        passphrase = settings.snowflake_private_key_passphrase
        kwargs["private_key"] = _private_key_der(
            settings.snowflake_private_key_path,
            passphrase.get_secret_value() if passphrase else None,
        )
    elif settings.snowflake_password is not None:
        kwargs["password"] = settings.snowflake_password.get_secret_value()
    else:
        raise SettingsError(
            "STOCKPIPE_WAREHOUSE=snowflake needs SNOWFLAKE_PRIVATE_KEY_PATH (key-pair auth) "
            "or SNOWFLAKE_PASSWORD"
        )
    # The loader works as the loader role of infra/snowflake/setup.sql; dbt uses its own.
    if settings.snowflake_loader_role:
        kwargs["role"] = check_identifier(settings.snowflake_loader_role, "SNOWFLAKE_LOADER_ROLE")
    elif settings.snowflake_role:
        kwargs["role"] = check_identifier(settings.snowflake_role, "SNOWFLAKE_ROLE")
    if settings.snowflake_warehouse:
        kwargs["warehouse"] = check_identifier(settings.snowflake_warehouse, "SNOWFLAKE_WAREHOUSE")
    kwargs["session_parameters"] = session_parameters(settings)
    # host/port/protocol point the connector at a proxy or a local emulator.
    for name in ("host", "port", "protocol"):
        value = getattr(settings, f"snowflake_{name}")
        if value:
            kwargs[name] = value
    return kwargs


class SnowflakeWarehouse:
    """bronze.bars, bronze.load_manifest and bronze.load_state in Snowflake: PUT + one COPY INTO."""

    name = "snowflake"

    def __init__(self, settings: Settings, lake: Lake) -> None:
        self.lake = lake
        kwargs = connect_kwargs(settings)
        stage_database, stage_schema, stage = stage_parts(settings)
        try:
            self.conn = snowflake.connector.connect(**kwargs)
        except snowflake.connector.errors.Error as exc:
            raise ServiceUnavailable(
                f"cannot connect to Snowflake account {settings.snowflake_account!r} "
                f"as user {settings.snowflake_user!r}: {exc.msg or exc}"
            ) from None
        # EMULATOR ONLY: fakesnow cannot run INCLUDE_METADATA; see `_copy_emulated`.
        self.emulated = type(self.conn).__module__.startswith("fakesnow")
        self._schema = f"{_q(kwargs['database'])}.{_q(BRONZE_SCHEMA)}"
        self._bars = f"{self._schema}.{_q(BARS_TABLE)}"
        self._landing = f"{self._schema}.{_q(LANDING_TABLE)}"
        self._manifest = f"{self._schema}.{_q(MANIFEST_TABLE)}"
        self._state = f"{self._schema}.{_q(STATE_TABLE)}"
        self._references = {n: f"{self._schema}.{_q(n)}" for n in REFERENCE_TABLES}
        self._stage_schema = f"{_q(stage_database)}.{_q(stage_schema)}"
        self._stage = f"{self._stage_schema}.{_q(stage)}"

    def _execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        cur = self.conn.cursor()
        try:
            return cur.execute(sql, params)
        except snowflake.connector.errors.ProgrammingError as exc:
            raise LoadError(f"Snowflake rejected a statement: {exc.msg or exc}") from None
        except snowflake.connector.errors.Error as exc:
            raise ServiceUnavailable(
                f"lost the connection to Snowflake: {exc.msg or exc}"
            ) from None

    def _works(self, sql: str) -> bool:
        try:
            self._execute(sql)
        except LoadError:
            return False
        return True

    def ensure_schema(self) -> None:
        # In production infra/snowflake/setup.sql created everything and the loader's role
        # may not hold CREATE or ALTER privileges, so only run DDL for what is missing.
        statements = []
        if not all(
            self._works(f"SELECT 1 FROM {table} LIMIT 0")
            for table in (
                self._bars,
                self._landing,
                self._manifest,
                self._state,
                *self._references.values(),
            )
        ):
            statements += [
                f"CREATE SCHEMA IF NOT EXISTS {self._schema}",
                f"CREATE SCHEMA IF NOT EXISTS {self._stage_schema}",
                f"CREATE STAGE IF NOT EXISTS {self._stage}",
                f"CREATE TABLE IF NOT EXISTS {self._bars} "
                f"({_columns_ddl(BAR_COLUMNS + LOAD_COLUMNS)})",
                f"CREATE TRANSIENT TABLE IF NOT EXISTS {self._landing} "
                f"({_columns_ddl(BAR_COLUMNS + LOAD_COLUMNS)}) DATA_RETENTION_TIME_IN_DAYS = 0",
                f"CREATE TABLE IF NOT EXISTS {self._manifest} "
                f"({_columns_ddl(MANIFEST_COLUMNS)}, PRIMARY KEY ({_q('path')}))",
                f"CREATE TABLE IF NOT EXISTS {self._state} ({_columns_ddl(STATE_COLUMNS)})",
                *(
                    f"CREATE TABLE IF NOT EXISTS {self._references[ref.name]} "
                    f"({_columns_ddl(ref.all_columns)}, "
                    f"PRIMARY KEY ({', '.join(_q(k) for k in ref.key)}))"
                    for ref in REFERENCE_TABLES.values()
                ),
            ]
        # Migration of warehouses created before the load sequence (idempotent); the
        # landing table takes the bar columns added since, as bronze.bars does.
        landing = {
            LANDING_TABLE: tuple(c for c in MIGRATED_COLUMNS[BARS_TABLE] if c in BAR_COLUMNS)
        }
        for table, columns in {**MIGRATED_COLUMNS, **landing}.items():
            target = f"{self._schema}.{_q(table)}"
            names = ", ".join(_q(c.name) for c in columns)
            if statements or not self._works(f"SELECT {names} FROM {target} LIMIT 0"):
                statements += [
                    f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {_q(c.name)} {c.snowflake}"
                    for c in columns
                ]
        for sql in statements:
            try:
                self._execute(sql)
            except LoadError as exc:
                raise StockpipeError(
                    f"{exc}; run infra/snowflake/setup.sql as an administrator first"
                ) from None
        if self._execute(f"SELECT count(*) FROM {self._state}").fetchone()[0] == 0:
            self._execute(
                f"INSERT INTO {self._state} ({_q('last_seq')}, {_q('updated_at')}) "
                f"SELECT coalesce(max({_q('load_seq')}), 0), current_timestamp() "
                f"FROM {self._manifest}"
            )
        self._migrate_keys()

    def _migrate_keys(self) -> None:
        """Manifest paths and `_source_file`s of older loaders (URLs) become lake keys, once."""
        fmt = self._execute(f"SELECT max({_q('manifest_format')}) FROM {self._state}").fetchone()[0]
        if fmt is not None and fmt >= MANIFEST_FORMAT:
            return
        rows = self._execute(f"SELECT {_q('path')}, {_q('load_seq')} FROM {self._manifest}")
        rewrite, drop = key_migration(rows.fetchall())
        self._execute("BEGIN")
        try:
            for sql, params in key_migration_sql(
                self._bars, self._manifest, rewrite, drop, "%s", _q
            ):
                self._execute(sql, params)
            self._execute(
                f"UPDATE {self._state} SET {_q('manifest_format')} = %s", [MANIFEST_FORMAT]
            )
            self._execute("COMMIT")
        except BaseException:
            self.conn.cursor().execute("ROLLBACK")
            raise
        log_key_migration(rewrite, drop, self._manifest)

    def loaded_rows(self, key: str) -> pa.Table:
        columns = ", ".join(_q(c.name) for c in BAR_COLUMNS)
        cur = self._execute(
            f"SELECT {columns} FROM {self._bars} WHERE {_q('_source_file')} = %s", [key]
        )
        names = [c.name for c in BAR_COLUMNS]
        return pa.Table.from_pylist(
            [dict(zip(names, r, strict=True)) for r in cur.fetchall()], schema=BAR_ARROW_SCHEMA
        )

    def record_versions(self, files: Sequence[LakeFile], md5s: Sequence[str]) -> None:
        for file, md5 in zip(files, md5s, strict=True):
            self._execute(
                f"UPDATE {self._manifest} SET {_q('size_bytes')} = %s, "
                f"{_q('source_version')} = %s, {_q('content_md5')} = %s WHERE {_q('path')} = %s",
                [file.size, file.version, md5, file.key],
            )

    def manifest_entries(self, keys: Sequence[str]) -> dict[str, ManifestEntry]:
        out: dict[str, ManifestEntry] = {}
        columns = ("path", "size_bytes", "row_count", "content_md5", "source_version", "load_seq")
        for part in chunks(list(dict.fromkeys(keys))):
            cur = self._execute(
                f"SELECT {', '.join(_q(c) for c in columns)} FROM {self._manifest} "
                f"WHERE {_q('path')} IN ({', '.join(['%s'] * len(part))})",
                list(part),
            )
            out.update({row[0]: ManifestEntry(*row) for row in cur.fetchall()})
        return out

    def max_loaded_path(self, prefix: str) -> str | None:
        cur = self._execute(
            f"SELECT max({_q('path')}) FROM {self._manifest} WHERE startswith({_q('path')}, %s)",
            [prefix],
        )
        row = cur.fetchone()
        return row[0] if row else None

    def load_batch(
        self, files: Sequence[LakeFile], *, before_commit: BeforeCommit | None = None
    ) -> LoadResult:
        batch_id = uuid.uuid4().hex
        loaded_at = datetime.now(UTC)
        if not files:
            return LoadResult(batch_id=batch_id, files=0, rows=0, loaded_at=loaded_at)
        stage_dir = f"batch_{batch_id}"
        stage_path = f"@{self._stage}/{stage_dir}/"
        staged: list[_Staged] = []
        copied = False
        try:
            with tempfile.TemporaryDirectory(prefix="stockpipe-load-") as tmp:
                # PUT is not transactional: staging happens before BEGIN, under a path
                # nobody else uses.
                for index, file in enumerate(files):
                    local = Path(tmp) / f"f{index:05d}.parquet"
                    staged.append(self._fetch(file, local))
                    self._execute(
                        f"PUT '{local.as_uri()}' {stage_path} AUTO_COMPRESS = FALSE OVERWRITE = TRUE"
                    )
            # COPY into the landing table is not part of the transaction either: its rows
            # are this batch's scratch, told apart by the batch's stage path.
            copied = True
            if self.emulated:
                results = self._copy_emulated(stage_dir, stage_path, staged)
            else:
                results = _copy_results(self._execute(copy_statement(self._landing, stage_path)))
            _check_copied(results, files, staged)
            seq = self._insert_in_transaction(
                files, staged, stage_dir, loaded_at, batch_id, before_commit
            )
        finally:
            if copied:
                self._delete_landed(stage_dir)
            self._remove_staged(stage_path)
        total = sum(s.rows for s in staged)
        return LoadResult.committed("Snowflake", batch_id, seq, len(files), total, loaded_at)

    def _fetch(self, file: LakeFile, local: Path) -> _Staged:
        try:
            self.lake.fs.get_file(file.path, str(local))
        except FileNotFoundError:
            raise LoadError(f"{file.url} vanished from the lake before it was loaded") from None
        try:
            parquet = pq.ParquetFile(local)
            check_bar_schema(parquet.schema_arrow, file.url)
            rows = parquet.metadata.num_rows
        except (OSError, ValueError) as exc:
            raise LoadError(f"cannot read {file.url}: {exc}") from None
        return _Staged(local.name, rows, md5_hex(local.read_bytes()))

    def _insert_in_transaction(
        self,
        files: Sequence[LakeFile],
        staged: Sequence[_Staged],
        stage_dir: str,
        loaded_at: datetime,
        batch_id: str,
        before_commit: BeforeCommit | None,
    ) -> int:
        self._execute("BEGIN")
        try:
            seq = self._next_seq()
            if clash := self.manifest_entries([f.key for f in files]):
                raise ConcurrentLoad(
                    f"{len(clash)} file(s) were loaded by another run meanwhile "
                    f"(e.g. {min(clash)}); nothing of this batch was kept, run the load again",
                    sorted(clash),
                )
            sql, params = insert_statement(
                self._bars, self._landing, stage_dir, files, staged, seq, loaded_at
            )
            cur = self._execute(sql, params)
            total = sum(s.rows for s in staged)
            if cur.rowcount != total:
                raise LoadError(
                    f"batch {batch_id}: COPY loaded {total} row(s) but {cur.rowcount} were "
                    f"inserted into {BARS_TABLE} from {LANDING_TABLE}"
                )
            placeholders = ", ".join(
                ["(" + ", ".join(["%s"] * len(MANIFEST_COLUMNS)) + ")"] * len(files)
            )
            params = []
            for file, done in zip(files, staged, strict=True):
                params += manifest_values(
                    file,
                    rows=done.rows,
                    batch_id=batch_id,
                    loaded_at=loaded_at,
                    seq=seq,
                    md5=done.md5,
                )
            columns = ", ".join(_q(c.name) for c in MANIFEST_COLUMNS)
            self._execute(f"INSERT INTO {self._manifest} ({columns}) VALUES {placeholders}", params)
            if before_commit is not None:
                before_commit()
            self._execute("COMMIT")
        except BaseException:
            try:
                self.conn.cursor().execute("ROLLBACK")
            except Exception as exc:  # noqa: BLE001 - Snowflake aborts the transaction itself
                log.warning("ROLLBACK failed (Snowflake aborts the transaction itself): %s", exc)
            raise
        return seq

    def _next_seq(self) -> int:
        """Take the load lock and this load's number (see flows/warehouse/base.py)."""
        sql = (
            f"UPDATE {self._state} SET {_q('last_seq')} = {_q('last_seq')} + 1, "
            f"{_q('updated_at')} = current_timestamp()"
        )
        try:
            # Snowflake waits up to LOCK_TIMEOUT for another load's transaction, then fails;
            # the emulator (DuckDB) fails at once with a write-write conflict.
            cur = self.conn.cursor().execute(sql)
        except Exception as exc:
            text = str(getattr(exc, "msg", None) or exc)
            if "lock" in text.lower() or "conflict" in text.lower():
                raise ConcurrentLoad(f"another load holds the load lock: {text}") from None
            if isinstance(exc, snowflake.connector.errors.ProgrammingError):
                raise LoadError(f"Snowflake rejected a statement: {text}") from None
            raise
        if not cur.rowcount:
            raise LoadError(f"{self._state} is empty: run the load again to initialise it")
        row = self._execute(f"SELECT max({_q('last_seq')}) FROM {self._state}").fetchone()
        return int(row[0])

    def _copy_emulated(
        self, stage_dir: str, stage_path: str, staged: Sequence[_Staged]
    ) -> list[dict[str, Any]]:
        """EMULATOR ONLY (fakesnow lacks INCLUDE_METADATA): the same landing rows the real
        COPY gives, by one COPY per file into the landing table and an UPDATE of those
        landing rows that sets what METADATA$FILENAME would. Its own transaction keeps a
        concurrent loader's not yet labelled rows out of sight. Never runs against
        Snowflake, where `copy_statement` is the one COPY per batch; never updates bars."""
        source = _q("_source_file")
        results: list[dict[str, Any]] = []
        self._execute("BEGIN")
        try:
            for done in staged:
                cur = self._execute(
                    f"COPY INTO {self._landing} FROM {stage_path}{done.name} "
                    "FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE"
                )
                results += _copy_results(cur)
                self._execute(
                    f"UPDATE {self._landing} SET {source} = %s WHERE {source} IS NULL",
                    (f"{stage_dir}/{done.name}",),
                )
            self._execute("COMMIT")
        except BaseException:
            try:
                self.conn.cursor().execute("ROLLBACK")
            except Exception as exc:  # noqa: BLE001 - keep the COPY's own error
                log.warning("ROLLBACK failed: %s", exc)
            raise
        return results

    def _delete_landed(self, stage_dir: str) -> None:
        """Drop the batch's landing rows, whether the load committed or failed."""
        try:
            self._execute(
                f"DELETE FROM {self._landing} WHERE contains({_q('_source_file')}, %s)",
                (f"{stage_dir}/",),
            )
        except Exception as exc:  # noqa: BLE001 - never hide the load's own outcome
            log.warning(
                "could not delete the landing rows of %s from %s (they are never read "
                "again; delete them by hand): %s",
                stage_dir,
                self._landing,
                exc,
            )

    def _remove_staged(self, stage_path: str) -> None:
        """Drop the batch's staged copies, whether the load committed or failed."""
        try:
            self._execute(f"REMOVE {stage_path}")
        except Exception as exc:  # noqa: BLE001 - never hide the load's own outcome
            log.warning("could not remove %s (remove it by hand): %s", stage_path, exc)

    def upsert_reference(self, table: str, rows: pa.Table, key: Sequence[str]) -> UpsertResult:
        """MERGE the rows in chunks of UPSERT_CHUNK_ROWS, all in one transaction.

        EMULATOR ONLY: fakesnow cannot run MERGE inside an explicit transaction (it
        writes its own bookkeeping database), so there the chunks run without BEGIN and
        COMMIT, and its MERGE needs a current schema (USE SCHEMA); the MERGE statements
        are the same.
        """
        ref, rows = reference_rows(table, rows, key)
        if not rows.num_rows:
            return UpsertResult(table, 0, 0)
        loaded_at = datetime.now(UTC)
        names = [c.name for c in ref.columns]
        records = rows.to_pylist()
        changed = 0
        if self.emulated:
            self._execute(f"USE SCHEMA {self._schema}")
        else:
            self._execute("BEGIN")
        try:
            for part in chunks(records, UPSERT_CHUNK_ROWS):
                sql = upsert_statement(self._references[ref.name], ref, len(part))
                params = [row[n] for row in part for n in names] + [loaded_at, loaded_at]
                cur = self._execute(sql, params)
                # MERGE answers "number of rows inserted" and "number of rows updated"
                changed += sum(int(v or 0) for v in cur.fetchone() or ())
            if not self.emulated:
                self._execute("COMMIT")
        except BaseException:
            if not self.emulated:
                try:
                    self.conn.cursor().execute("ROLLBACK")
                except Exception as exc:  # noqa: BLE001 - keep the MERGE's own error
                    log.warning("ROLLBACK failed: %s", exc)
            raise
        return UpsertResult(table, rows.num_rows, changed)

    def close(self) -> None:
        self.conn.close()


@dataclass(frozen=True)
class _Staged:
    """A lake file as staged for one batch: its stage name, rows and MD5."""

    name: str  # fNNNNN.parquet under the batch's stage path
    rows: int
    md5: str


def upsert_statement(target: str, ref: ReferenceTable, rows: int) -> str:
    """One MERGE of `rows` rows bound as VALUES (`%s`, the connector's pyformat), each cast
    to its column's type, then `_loaded_at` twice (see `merge_statement`)."""
    names = [c.name for c in ref.columns]
    row = "(" + ", ".join(["%s"] * len(names)) + ")"
    casts = ", ".join(f"CAST(v.{_q(c.name)} AS {c.snowflake}) AS {_q(c.name)}" for c in ref.columns)
    source = (
        f"(SELECT {casts} FROM (VALUES {', '.join([row] * rows)}) "
        f"AS v({', '.join(_q(n) for n in names)})) AS s"
    )
    return merge_statement(target, source, ref, "%s", _q)


def copy_statement(landing: str, stage_path: str) -> str:
    """The batch's one COPY (Snowflake's documented syntax; see the module docstring)."""
    return (
        f"COPY INTO {landing} FROM {stage_path} FILE_FORMAT = (TYPE = PARQUET) "
        "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE "
        f"INCLUDE_METADATA = ({_q('_source_file')} = METADATA$FILENAME)"
    )


def insert_statement(
    bars: str,
    landing: str,
    stage_dir: str,
    files: Sequence[LakeFile],
    staged: Sequence[_Staged],
    seq: int,
    loaded_at: datetime,
) -> tuple[str, list[Any]]:
    """The batch's one write of bars: its landing rows with lake key, load time and sequence.

    Only this batch's landing rows match: the batch's unique stage path is in
    their `_source_file` (METADATA$FILENAME).
    """
    source = _q("_source_file")
    bar_columns = ", ".join(_q(c.name) for c in BAR_COLUMNS)
    load_columns = ", ".join(_q(name) for name in ("_source_file", "_loaded_at", "_load_seq"))
    whens = " ".join(["WHEN %s THEN %s"] * len(files))
    sql = (
        f"INSERT INTO {bars} ({bar_columns}, {load_columns}) "
        f"SELECT {bar_columns}, CASE right({source}, {_STAGED_NAME_LEN}) {whens} END, %s, %s "
        f"FROM {landing} WHERE contains({source}, %s)"
    )
    params: list[Any] = []
    for file, done in zip(files, staged, strict=True):
        params += [done.name, file.key]
    return sql, [*params, loaded_at, seq, f"{stage_dir}/"]


def _copy_results(cur: Any) -> list[dict[str, Any]]:
    names = [d[0].lower() for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _check_copied(
    results: list[dict[str, Any]], files: Sequence[LakeFile], staged: Sequence[_Staged]
) -> None:
    """Raise unless COPY loaded every staged file, each with the rows its footer counts."""
    by_name = {str(r.get("file", "")).rsplit("/", 1)[-1]: r for r in results}
    for file, done in zip(files, staged, strict=True):
        result = by_name.get(done.name)
        if result is None or str(result.get("status", "")).upper() != "LOADED":
            raise LoadError(f"COPY INTO did not load {file.url}: {result or results}")
        if int(result.get("rows_loaded") or 0) != done.rows:
            raise LoadError(
                f"COPY INTO loaded {result.get('rows_loaded')} row(s) of {file.url}, "
                f"which holds {done.rows}"
            )
