"""The production warehouse: Snowflake through snowflake-connector-python.

A batch is loaded in three steps:

1. each lake file is copied to a local temp dir (downloaded from s3://) and
   PUT to a stage path of its own, `@stage/batch_<uuid>/f00000/`; the batch's
   fresh path means Snowflake's load metadata never skips a file that a
   crashed run had already staged or copied;
2. in one transaction: per file, `COPY INTO bronze.bars FROM @stage/batch_<uuid>/fNNNNN/`
   (FILE_FORMAT in the statement, MATCH_BY_COLUMN_NAME) followed by an UPDATE
   that stamps `_source_file` and `_loaded_at` on the rows that COPY just
   inserted, then the manifest rows;
3. COMMIT.

Why COPY + UPDATE and not `METADATA$FILENAME`: Snowflake forbids COPY
transformations together with MATCH_BY_COLUMN_NAME, and the local emulator
(fakesnow) supports neither INCLUDE_METADATA nor METADATA$ columns. Rows that
have no `_source_file` yet can only be this transaction's: every committed
row got one in its own transaction.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import snowflake.connector
import snowflake.connector.errors

from flows.errors import ServiceUnavailable, StockpipeError
from flows.lakefs import Lake
from flows.settings import Settings, SettingsError
from flows.warehouse.base import (
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
    check_identifier,
)

log = logging.getLogger(__name__)

# The file format lives in the COPY statement, not on the stage, so the load
# does not depend on how the stage was created.
PARQUET_FORMAT = "FILE_FORMAT = (TYPE = PARQUET USE_VECTORIZED_SCANNER = TRUE)"


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
    for name in ("role", "warehouse"):
        value = getattr(settings, f"snowflake_{name}")
        if value:
            kwargs[name] = check_identifier(value, f"SNOWFLAKE_{name.upper()}")
    # host/port/protocol point the connector at a proxy or a local emulator.
    for name in ("host", "port", "protocol"):
        value = getattr(settings, f"snowflake_{name}")
        if value:
            kwargs[name] = value
    return kwargs


class SnowflakeWarehouse:
    """bronze.bars and bronze.load_manifest in Snowflake, loaded by PUT + COPY INTO."""

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
        self._schema = f"{_q(kwargs['database'])}.{_q(BRONZE_SCHEMA)}"
        self._bars = f"{self._schema}.{_q(BARS_TABLE)}"
        self._manifest = f"{self._schema}.{_q(MANIFEST_TABLE)}"
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

    def ensure_schema(self) -> None:
        # In production infra/snowflake/setup.sql created everything and the loader's role
        # may not hold CREATE privileges, so only run DDL when a table is missing.
        try:
            for table in (self._bars, self._manifest):
                self._execute(f"SELECT 1 FROM {table} LIMIT 0")
            return
        except LoadError:
            pass
        statements = [
            f"CREATE SCHEMA IF NOT EXISTS {self._schema}",
            f"CREATE SCHEMA IF NOT EXISTS {self._stage_schema}",
            f"CREATE STAGE IF NOT EXISTS {self._stage}",
            f"CREATE TABLE IF NOT EXISTS {self._bars} ({_columns_ddl(BAR_COLUMNS + LOAD_COLUMNS)})",
            f"CREATE TABLE IF NOT EXISTS {self._manifest} "
            f"({_columns_ddl(MANIFEST_COLUMNS)}, PRIMARY KEY ({_q('path')}))",
        ]
        for sql in statements:
            try:
                self._execute(sql)
            except LoadError as exc:
                raise StockpipeError(
                    f"{exc}; run infra/snowflake/setup.sql as an administrator first"
                ) from None

    def loaded_files(self) -> set[str]:
        cur = self._execute(f"SELECT {_q('path')} FROM {self._manifest}")
        return {row[0] for row in cur.fetchall()}

    def load_batch(
        self, files: Sequence[LakeFile], *, before_commit: BeforeCommit | None = None
    ) -> LoadResult:
        batch_id = uuid.uuid4().hex
        loaded_at = datetime.now(UTC)
        if not files:
            return LoadResult(batch_id=batch_id, files=0, rows=0, loaded_at=loaded_at)
        stage_path = f"@{self._stage}/batch_{batch_id}"
        with tempfile.TemporaryDirectory(prefix="stockpipe-load-") as tmp:
            # PUT is not transactional: staging happens before BEGIN, under paths nobody else uses.
            for index, file in enumerate(files):
                local = Path(tmp) / f"f{index:05d}.parquet"
                self._fetch(file, local)
                self._execute(
                    f"PUT '{local.as_uri()}' {stage_path}/f{index:05d}/ "
                    "AUTO_COMPRESS = FALSE OVERWRITE = TRUE"
                )
        rows_per_file = self._copy_in_transaction(
            files, stage_path, batch_id, loaded_at, before_commit
        )
        total = sum(rows_per_file)
        log.info(
            "batch %s: loaded %d file(s), %d row(s) into Snowflake", batch_id, len(files), total
        )
        return LoadResult(batch_id=batch_id, files=len(files), rows=total, loaded_at=loaded_at)

    def _fetch(self, file: LakeFile, local: Path) -> None:
        try:
            self.lake.fs.get_file(file.path, str(local))
        except FileNotFoundError:
            raise LoadError(f"{file.url} vanished from the lake before it was loaded") from None
        try:
            schema = pq.read_schema(local)
        except (OSError, ValueError) as exc:
            raise LoadError(f"cannot read {file.url}: {exc}") from None
        check_bar_schema(schema, file.url)

    def _copy_in_transaction(
        self,
        files: Sequence[LakeFile],
        stage_path: str,
        batch_id: str,
        loaded_at: datetime,
        before_commit: BeforeCommit | None,
    ) -> list[int]:
        source, stamped = _q("_source_file"), _q("_loaded_at")
        rows_per_file: list[int] = []
        self._execute("BEGIN")
        try:
            for index, file in enumerate(files):
                cur = self._execute(
                    f"COPY INTO {self._bars} FROM {stage_path}/f{index:05d}/ "
                    f"{PARQUET_FORMAT} MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE PURGE = TRUE"
                )
                rows = _rows_loaded(cur, file)
                cur = self._execute(
                    f"UPDATE {self._bars} SET {source} = %s, {stamped} = %s WHERE {source} IS NULL",
                    (file.url, loaded_at),
                )
                if cur.rowcount != rows:
                    raise LoadError(
                        f"{file.url}: COPY loaded {rows} row(s) but {cur.rowcount} got a source "
                        f"file; is another process writing rows without {source}?"
                    )
                rows_per_file.append(rows)
            self._check_not_loaded_meanwhile(files)
            placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(files))
            params: list[Any] = []
            for file, rows in zip(files, rows_per_file, strict=True):
                params += [file.url, BARS_TABLE, file.size, rows, batch_id, loaded_at]
            columns = ", ".join(_q(c.name) for c in MANIFEST_COLUMNS)
            self._execute(f"INSERT INTO {self._manifest} ({columns}) VALUES {placeholders}", params)
            if before_commit is not None:
                before_commit()
            self._execute("COMMIT")
        except BaseException:
            try:
                self.conn.cursor().execute("ROLLBACK")
            except snowflake.connector.errors.Error as exc:
                log.warning(
                    "ROLLBACK failed (Snowflake aborts the transaction itself): %s", exc.msg
                )
            raise
        return rows_per_file

    def _check_not_loaded_meanwhile(self, files: Sequence[LakeFile]) -> None:
        # Our UPDATE holds bronze.bars' lock, so a concurrent load of the same files
        # has committed by now, and READ COMMITTED shows its manifest rows.
        placeholders = ", ".join(["%s"] * len(files))
        cur = self._execute(
            f"SELECT {_q('path')} FROM {self._manifest} WHERE {_q('path')} IN ({placeholders})",
            [file.url for file in files],
        )
        if clash := sorted(row[0] for row in cur.fetchall()):
            raise LoadError(
                f"{len(clash)} file(s) were loaded by another run meanwhile (e.g. {clash[0]}); "
                "nothing of this batch was kept, run the load again"
            )

    def close(self) -> None:
        self.conn.close()


def _rows_loaded(cur: Any, file: LakeFile) -> int:
    """rows_loaded of a one-file COPY result; raise unless that file was LOADED."""
    names = [d[0].lower() for d in cur.description]
    results = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    if len(results) != 1 or str(results[0].get("status", "")).upper() != "LOADED":
        raise LoadError(f"COPY INTO did not load {file.url}: {results}")
    return int(results[0]["rows_loaded"])
