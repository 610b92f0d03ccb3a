"""`stockpipe load` into Snowflake: PUT + COPY INTO landing + INSERT ... SELECT + manifest,
against fakesnow in-process.

fakesnow runs the same connector calls and SQL the loader sends to Snowflake
(PUT to an internal stage, Parquet COPY INTO with MATCH_BY_COLUMN_NAME,
explicit transactions) on an in-memory DuckDB. It lacks INCLUDE_METADATA and
REMOVE: the real statements are asserted as text (parsed with sqlglot's
Snowflake dialect) and their order recorded with a recording cursor.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import fakesnow
import fsspec
import pytest
from load_helpers import (
    bar_rows,
    bars_table,
    emulated_loader_settings,
    emulator_query,
    expected_rows,
    key_of,
    write_bars,
    write_many,
)

from flows.errors import ServiceUnavailable, StockpipeError
from flows.lake.store import open_lake
from flows.net import free_ports
from flows.settings import Settings, SettingsError, load_settings
from flows.warehouse import (
    ContentConflict,
    LoadError,
    load,
    load_files,
    open_warehouse,
    pending_files,
)
from flows.warehouse.base import (
    BAR_COLUMN_NAMES,
    BAR_COLUMNS,
    LOAD_COLUMNS,
    MANIFEST_COLUMNS,
    REFERENCE_TABLES,
    STATE_COLUMNS,
    LakeFile,
)
from flows.warehouse.snowflake_warehouse import (
    SnowflakeWarehouse,
    connect_kwargs,
    copy_statement,
    insert_statement,
)

FS = fsspec.filesystem("file", auto_mkdir=True)
PASSWORD = "pw-Zq8#never-in-logs"
SETUP_SQL = Path(__file__).resolve().parents[1] / "infra" / "snowflake" / "setup.sql"
SELECT_BARS = (
    f"SELECT {', '.join(BAR_COLUMN_NAMES)}, _source_file FROM stockpipe.bronze.bars "
    "ORDER BY _source_file, symbol, window_start"
)


class Crash(RuntimeError):
    """Stands in for the process dying between COPY and the manifest commit."""


@pytest.fixture
def fake_snowflake() -> Iterator[None]:
    # The emulator cannot parse REMOVE: a no-op there (the real statement is asserted below).
    with fakesnow.patch(nop_regexes=["^REMOVE "]):
        yield


@pytest.fixture
def settings(tmp_path: Path, fake_snowflake: None) -> Settings:
    return emulated_loader_settings(lake_url=str(tmp_path / "lake"), snowflake_password=PASSWORD)


@pytest.fixture
def lake(settings: Settings) -> str:
    return settings.lake_url


query = emulator_query


def counts() -> tuple[int, int]:
    return (
        query("SELECT count(*) FROM stockpipe.bronze.bars")[0][0],
        query("SELECT count(*) FROM stockpipe.bronze.load_manifest")[0][0],
    )


def landing_rows() -> int:
    return query("SELECT count(*) FROM stockpipe.bronze.bars_landing")[0][0]


def test_put_copy_loads_every_row_with_source_file_and_manifest(
    settings: Settings, lake: str
) -> None:
    files = write_many(FS, lake, 3, rows_each=4)
    extra = bar_rows(2, symbol="BINANCE:BTCUSDT", seed=9)
    files[write_bars(FS, lake, extra, name="with-extra-col", extra_column=True)] = extra
    # a file of a writer from before the trade conditions: no condition counts, NULL loaded
    counts = ["excluded_count", "unmapped_count", "candle_count"]
    older = [{**r, **dict.fromkeys(counts)} for r in bar_rows(2, seed=7)]
    table = bars_table(older).drop_columns(counts)
    files[write_bars(FS, lake, older, name="older-writer", table=table)] = older

    summary = load(settings, progress=False)

    assert (summary.files_found, summary.files_loaded, summary.rows, summary.batches) == (
        5,
        5,
        16,
        1,
    )
    assert query(SELECT_BARS) == expected_rows(files)
    manifest = query(
        "SELECT path, target_table, size_bytes, row_count, batch_id, loaded_at "
        "FROM stockpipe.bronze.load_manifest ORDER BY path"
    )
    assert [m[0] for m in manifest] == sorted(key_of(p) for p in files)  # paths in the lake
    assert [m[2] for m in manifest] == [Path(p).stat().st_size for p in sorted(files)]
    assert [m[3] for m in manifest] == [len(files[p]) for p in sorted(files)]
    assert {m[1] for m in manifest} == {"bars"} and len({m[4] for m in manifest}) == 1
    assert query("SELECT DISTINCT _loaded_at FROM stockpipe.bronze.bars") == [(manifest[0][5],)]
    assert landing_rows() == 0


def test_rerun_skips_loaded_files(settings: Settings, lake: str) -> None:
    files = write_many(FS, lake, 2)
    load(settings, progress=False)

    again = load(settings, progress=False)

    assert again.nothing_new and again.files_found == 2 and again.rows == 0
    assert query(SELECT_BARS) == expected_rows(files)


def test_crash_between_copy_and_manifest_commit_then_rerun_loads_exactly_once(
    settings: Settings, lake: str
) -> None:
    files = write_many(FS, lake, 3)

    def crash() -> None:
        # COPY into landing ran; the INSERT into bars and the manifest rows are uncommitted.
        assert landing_rows() == 9
        raise Crash("simulated crash before COMMIT")

    with pytest.raises(Crash):
        load(settings, progress=False, before_commit=crash)

    assert counts() == (0, 0)
    assert landing_rows() == 0
    rerun = load(settings, progress=False)
    assert (rerun.files_loaded, rerun.rows) == (3, 9)
    assert query(SELECT_BARS) == expected_rows(files)
    assert counts() == (9, 3)


def test_backlog_loads_in_bounded_batches(settings: Settings, lake: str) -> None:
    files = write_many(FS, lake, 5)

    summary = load(settings, batch_files=2, progress=False)

    assert (summary.files_loaded, summary.batches) == (5, 3)
    per_batch = query(
        "SELECT count(*) AS n FROM stockpipe.bronze.load_manifest GROUP BY batch_id ORDER BY n DESC"
    )
    assert per_batch == [(2,), (2,), (1,)]
    assert query(SELECT_BARS) == expected_rows(files)


def test_stage_may_live_in_another_schema(settings: Settings, lake: str) -> None:
    files = write_many(FS, lake, 2)

    load(settings.model_copy(update={"snowflake_stage": "landing.lake_files"}), progress=False)

    assert query(SELECT_BARS) == expected_rows(files)
    stages = query("SHOW STAGES IN SCHEMA stockpipe.landing")
    assert [row[1] for row in stages] == ["LAKE_FILES"]


def test_pending_then_load_files(settings: Settings, lake: str) -> None:
    files = write_many(FS, lake, 3)

    pending = pending_files(settings)
    load_files(settings, pending[:1])
    retry = load_files(settings, pending[:1])

    assert retry.files_loaded == 0
    assert pending_files(settings) == pending[1:]
    load_files(settings, pending[1:])
    assert query(SELECT_BARS) == expected_rows(files)


def test_batch_refuses_files_another_run_loaded_meanwhile(settings: Settings, lake: str) -> None:
    write_many(FS, lake, 2)
    load(settings, progress=False)
    path = sorted(pending for pending in FS.find(lake) if pending.endswith(".parquet"))[0]

    warehouse = open_warehouse(settings)
    try:
        # as if a concurrent run loaded it between our manifest check and our commit
        with pytest.raises(LoadError, match="loaded by another run meanwhile"):
            warehouse.load_batch(
                [LakeFile(key=key_of(path), url=path, path=path, size=FS.size(path))]
            )
    finally:
        warehouse.close()
    assert counts() == (6, 2)
    assert landing_rows() == 0


def test_password_never_appears_in_logs_or_output(
    settings: Settings, lake: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    write_many(FS, lake, 2)
    caplog.set_level(logging.DEBUG)

    load(settings, progress=True)
    with pytest.raises(StockpipeError) as bad_stage:
        load(settings.model_copy(update={"snowflake_stage": "x;drop"}), progress=False)

    captured = capsys.readouterr()
    assert "loaded 2 file(s)" in caplog.text or "into Snowflake" in caplog.text
    for text in (caplog.text, captured.out, captured.err, str(bad_stage.value), repr(settings)):
        assert PASSWORD not in text


def test_identifiers_are_validated_before_connecting(tmp_path: Path) -> None:
    base = {
        "lake_url": str(tmp_path),
        "warehouse": "snowflake",
        "snowflake_account": "a",
        "snowflake_user": "u",
        "snowflake_password": PASSWORD,
    }
    for field, value, message in [
        (
            "snowflake_stage",
            'bronze."stage"',
            """SNOWFLAKE_STAGE='"stage"' is not a valid identifier""",
        ),
        (
            "snowflake_stage",
            "a.b.c.d",
            "SNOWFLAKE_STAGE='a.b.c.d': expected [database.][schema.]stage",
        ),
        ("snowflake_database", "db; DROP TABLE x", "SNOWFLAKE_DATABASE='db; DROP TABLE x' is not"),
        ("snowflake_role", "1role", "SNOWFLAKE_ROLE='1role' is not a valid identifier"),
    ]:
        with pytest.raises(StockpipeError, match=re.escape(message)):
            connect_kwargs(load_settings(**base, **{field: value}))


def test_missing_credentials_are_a_clear_error(tmp_path: Path) -> None:
    settings = load_settings(lake_url=str(tmp_path), warehouse="snowflake", snowflake_account="a")
    with pytest.raises(SettingsError, match="SNOWFLAKE_ACCOUNT and SNOWFLAKE_USER"):
        open_warehouse(settings)
    settings = settings.model_copy(update={"snowflake_user": "u"})
    with pytest.raises(SettingsError, match="SNOWFLAKE_PRIVATE_KEY_PATH .* or SNOWFLAKE_PASSWORD"):
        open_warehouse(settings)


def test_unreachable_snowflake_is_a_clear_error_without_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = load_settings(
        lake_url=str(tmp_path),
        warehouse="snowflake",
        snowflake_account="acme-unreachable",
        snowflake_user="loader",
        snowflake_password=PASSWORD,
        snowflake_host="127.0.0.1",
        snowflake_port=free_ports(1),  # nothing listens there
        snowflake_protocol="http",
        snowflake_login_timeout="5s",
    )

    with pytest.raises(ServiceUnavailable) as error:
        load(settings, progress=False)

    message = str(error.value)
    assert message.startswith(
        "cannot connect to Snowflake account 'acme-unreachable' as user 'loader'"
    )
    captured = capsys.readouterr()
    for text in (message, caplog.text, captured.out, captured.err):
        assert PASSWORD not in text


def test_key_pair_auth_reads_an_encrypted_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"open-sesame"),
    )
    (tmp_path / "rsa_key.p8").write_bytes(pem)
    base = {
        "lake_url": str(tmp_path),
        "warehouse": "snowflake",
        "snowflake_account": "a",
        "snowflake_user": "u",
        "snowflake_private_key_path": tmp_path / "rsa_key.p8",
    }

    kwargs = connect_kwargs(load_settings(**base, snowflake_private_key_passphrase="open-sesame"))

    assert "password" not in kwargs
    assert kwargs["private_key"] == key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(SettingsError, match="PASSPHRASE is wrong or missing") as wrong:
        connect_kwargs(load_settings(**base, snowflake_private_key_passphrase="guess"))
    assert "guess" not in str(wrong.value)
    with pytest.raises(SettingsError, match="cannot read it"):
        connect_kwargs(
            load_settings(**{**base, "snowflake_private_key_path": tmp_path / "nope.p8"})
        )


def _create_table_columns(sql: str, table: str, kind: str = "TABLE") -> list[tuple[str, str]]:
    body = re.search(rf"CREATE {kind} IF NOT EXISTS {table} \((.*?)\n\)[^;]*;", sql, re.S)
    assert body, f"no CREATE TABLE {table} in setup.sql"
    columns = re.findall(r"^\s+(\w+) (\w+),?$", body.group(1), re.M)
    return [(name.lower(), kind) for name, kind in columns if name != "PRIMARY"]


def test_setup_sql_tables_match_the_loader() -> None:
    sql = SETUP_SQL.read_text()

    assert _create_table_columns(sql, r"STOCKPIPE\.BRONZE\.BARS") == [
        (c.name, c.snowflake) for c in BAR_COLUMNS + LOAD_COLUMNS
    ]
    assert _create_table_columns(sql, r"STOCKPIPE\.BRONZE\.LOAD_MANIFEST") == [
        (c.name, c.snowflake) for c in MANIFEST_COLUMNS
    ]
    assert _create_table_columns(sql, r"STOCKPIPE\.BRONZE\.LOAD_STATE") == [
        (c.name, c.snowflake) for c in STATE_COLUMNS
    ]
    # The COPY's scratch table: the columns of BARS, transient (no Time Travel, no Fail-safe).
    assert _create_table_columns(
        sql, r"STOCKPIPE\.BRONZE\.BARS_LANDING", kind="TRANSIENT TABLE"
    ) == [(c.name, c.snowflake) for c in BAR_COLUMNS + LOAD_COLUMNS]
    grants = {
        table: set(re.split(r",\s*", privileges))
        for privileges, table in re.findall(
            r"^GRANT ([A-Z, ]+) ON TABLE STOCKPIPE\.BRONZE\.(\w+) TO ROLE STOCKPIPE_LOADER;",
            sql,
            re.M,
        )
    }
    # rows are written once; UPDATE on BARS and DELETE on the manifest serve only the
    # one-time rewrite of an older loader's URLs as lake keys, UPDATE on the manifest
    # the recording of a re-encoded file's new version
    assert grants["BARS"] == {"SELECT", "INSERT", "UPDATE"}
    assert grants["LOAD_MANIFEST"] == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert grants["BARS_LANDING"] == {"SELECT", "INSERT", "DELETE"}
    # the reference tables: MERGE inserts and updates, never deletes
    for ref in REFERENCE_TABLES.values():
        table = ref.name.upper()
        assert _create_table_columns(sql, rf"STOCKPIPE\.BRONZE\.{table}") == [
            (c.name, c.snowflake) for c in ref.all_columns
        ], table
        keys = ", ".join(k.upper() for k in ref.key)
        assert f"    PRIMARY KEY ({keys})\n);" in sql, table
        assert grants[table] == {"SELECT", "INSERT", "UPDATE"}, table


# ------------------------------------------------------- contract 3 on Snowflake

STAGE = '"STOCKPIPE"."BRONZE"."LAKE_STAGE"'
BARS = '"STOCKPIPE"."BRONZE"."BARS"'
LANDING = '"STOCKPIPE"."BRONZE"."BARS_LANDING"'


def test_the_copy_statement_is_snowflakes_documented_syntax() -> None:
    import sqlglot
    from sqlglot import exp

    sql = copy_statement(LANDING, f"@{STAGE}/batch_abc/")

    assert sql == (
        f"COPY INTO {LANDING} FROM @{STAGE}/batch_abc/ FILE_FORMAT = (TYPE = PARQUET) "
        "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE "
        'INCLUDE_METADATA = ("_SOURCE_FILE" = METADATA$FILENAME)'
    )
    parsed = sqlglot.parse_one(sql, read="snowflake")
    assert isinstance(parsed, exp.Copy)
    params = {p.this.name.upper(): p for p in parsed.args["params"]}
    assert set(params) == {"FILE_FORMAT", "MATCH_BY_COLUMN_NAME", "INCLUDE_METADATA"}
    assert "METADATA$FILENAME" in params["INCLUDE_METADATA"].sql("snowflake")


def test_bars_are_written_once_by_insert_select_from_the_batchs_landing_rows() -> None:
    import sqlglot
    from sqlglot import exp

    files = [
        LakeFile(key=f"bars/f{i}.parquet", url=f"s3://lake/bars/f{i}.parquet", path="", size=1)
        for i in range(2)
    ]
    staged = [type("S", (), {"name": f"f{i:05d}.parquet"})() for i in range(2)]
    sql, params = insert_statement(BARS, LANDING, "batch_abc", files, staged, 7, "T")  # type: ignore[arg-type]

    # The connector binds %s client-side; parse with the values' places marked by `?`.
    parsed = sqlglot.parse_one(sql.replace("%s", "?"), read="snowflake")
    assert isinstance(parsed, exp.Insert)
    assert parsed.this.this.sql("snowflake") == BARS
    target = [c.name.lower() for c in parsed.this.expressions]
    assert target == [c.name for c in BAR_COLUMNS + LOAD_COLUMNS]
    select = parsed.expression
    assert isinstance(select, exp.Select)
    assert select.find(exp.From).this.sql("snowflake") == LANDING
    assert len(select.expressions) == len(target)
    assert isinstance(select.expressions[len(BAR_COLUMNS)], exp.Case)
    assert "CONTAINS" in select.args["where"].sql("snowflake").upper()
    assert sql.count("%s") == len(params)
    assert params == [
        "f00000.parquet",
        "bars/f0.parquet",  # the key in the lake, not the URL
        "f00001.parquet",
        "bars/f1.parquet",
        "T",
        7,
        "batch_abc/",
    ]


class _Cursor:
    def __init__(self, log: list[str], sql: str, staged: list[str]) -> None:
        log.append(sql)
        head = sql.split()[0].upper()
        self.description: list[tuple[str]] = [("x",)]
        self.rows: list[tuple] = []
        self.rowcount = 1
        if head == "COPY":
            self.description = [("file",), ("status",), ("rows_loaded",)]
            self.rows = [(f"lake_stage/batch_x/{name}", "LOADED", 3) for name in staged]
        elif head == "INSERT" and '"BARS_LANDING"' in sql:
            self.rowcount = 3 * len(staged)
        elif "max(" in sql.lower() or "count(" in sql.lower():
            self.rows = [(7,)]

    def execute(self, *_: object) -> _Cursor:
        return self

    def fetchall(self) -> list[tuple]:
        return self.rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None


def _recording_warehouse(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, staged: list[str]
) -> tuple[SnowflakeWarehouse, list[str]]:
    """The real (not emulated) statement path, with every statement recorded."""
    sent: list[str] = []
    warehouse = SnowflakeWarehouse(settings, open_lake(settings))
    warehouse.emulated = False
    monkeypatch.setattr(warehouse, "_execute", lambda sql, params=None: _Cursor(sent, sql, staged))
    fake_conn = type("C", (), {"cursor": lambda self: _Cursor_factory(sent, staged)})()
    monkeypatch.setattr(warehouse, "conn", fake_conn)
    return warehouse, sent


def _Cursor_factory(sent: list[str], staged: list[str]) -> object:
    class _Lazy:
        def execute(self, sql: str, params: object = None) -> _Cursor:
            return _Cursor(sent, sql, staged)

    return _Lazy()


def test_real_path_sends_one_copy_per_batch_and_removes_the_stage_path(
    settings: Settings, lake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = sorted(write_many(FS, lake, 3))
    staged = [f"f{i:05d}.parquet" for i in range(3)]
    warehouse, sent = _recording_warehouse(settings, monkeypatch, staged)
    batch = [LakeFile(key=key_of(p), url=p, path=p, size=FS.size(p)) for p in files]

    result = warehouse.load_batch(batch)

    kinds = [s.split()[0].upper() for s in sent]
    assert kinds == ["PUT"] * 3 + [
        "COPY",  # into the landing table, outside the transaction
        "BEGIN",
        "UPDATE",  # load_state: the load lock
        "SELECT",
        "SELECT",
        "INSERT",  # bars ... SELECT FROM landing
        "INSERT",  # manifest
        "COMMIT",
        "DELETE",  # the batch's landing rows
        "REMOVE",
    ]
    batch_path = f"batch_{result.batch_id}/"
    assert sent[kinds.index("COPY")] == copy_statement(LANDING, f"@{STAGE}/{batch_path}")
    updates = [s for s in sent if s.split()[0].upper() == "UPDATE"]
    assert len(updates) == 1 and '"LOAD_STATE"' in updates[0]
    assert not any("BARS" in s for s in updates)
    bars_insert = sent[kinds.index("INSERT")]
    assert (
        bars_insert.startswith(f"INSERT INTO {BARS} (") and f"FROM {LANDING} WHERE" in bars_insert
    )
    assert sent[-2] == f'DELETE FROM {LANDING} WHERE contains("_SOURCE_FILE", %s)'
    assert sent[-1] == f"REMOVE @{STAGE}/{batch_path}"
    assert result.load_seq == 7 and result.rows == 9

    def crash() -> None:
        raise Crash("before COMMIT")

    sent.clear()
    with pytest.raises(Crash):
        warehouse.load_batch(batch, before_commit=crash)
    kinds = [s.split()[0].upper() for s in sent]
    assert kinds[-3:] == ["ROLLBACK", "DELETE", "REMOVE"] and kinds.count("COPY") == 1
    assert kinds.count("UPDATE") == 1 and LANDING in sent[-2]


def test_session_settings_and_loader_role(settings: Settings) -> None:
    kwargs = connect_kwargs(
        settings.model_copy(
            update={
                "snowflake_role": "STOCKPIPE_TRANSFORMER",
                "snowflake_loader_role": "STOCKPIPE_LOADER",
            }
        )
    )
    assert kwargs["role"] == "STOCKPIPE_LOADER"
    assert kwargs["session_parameters"] == {
        "TIMEZONE": "UTC",
        "LOCK_TIMEOUT": 300,
        "STATEMENT_TIMEOUT_IN_SECONDS": 3600,
    }
    assert connect_kwargs(settings.model_copy(update={"snowflake_role": "R"}))["role"] == "R"


def test_load_seq_increases_per_load_and_is_shared_by_its_rows(
    settings: Settings, lake: str
) -> None:
    write_many(FS, lake, 5)

    first = load(settings, batch_files=2, progress=False)
    write_bars(FS, lake, bar_rows(2, symbol="LATE"), name="later")
    second = load(settings, progress=False)

    assert first.load_seqs == (1, 2, 3) and second.load_seqs == (4,)
    rows = query(
        "SELECT b._source_file, min(b._load_seq), max(b._load_seq), min(m.load_seq) "
        "FROM stockpipe.bronze.bars b JOIN stockpipe.bronze.load_manifest m "
        "ON m.path = b._source_file GROUP BY 1"
    )
    assert len(rows) == 6 and all(lo == hi == seq for _, lo, hi, seq in rows)
    assert query("SELECT count(*) FROM stockpipe.bronze.bars WHERE _load_seq IS NULL") == [(0,)]


def test_concurrent_loaders_load_each_file_exactly_once(settings: Settings, lake: str) -> None:
    files = write_many(FS, lake, 4)
    other: list[object] = []

    def run_other() -> None:
        try:
            other.append(load(settings, progress=False))
        except Exception as exc:  # noqa: BLE001 - asserted below
            other.append(exc)

    thread = threading.Thread(target=run_other)

    def start_the_other_while_holding_the_lock() -> None:
        thread.start()
        time.sleep(0.5)

    first = load(settings, progress=False, before_commit=start_the_other_while_holding_the_lock)
    thread.join(60)

    assert first.files_loaded == 4
    assert not isinstance(other[0], Exception), other
    assert other[0].files_loaded == 0  # type: ignore[attr-defined]
    assert query(SELECT_BARS) == expected_rows(files)
    assert counts() == (12, 4)
    assert landing_rows() == 0


def test_same_name_identical_is_skipped_other_content_is_an_error(
    settings: Settings, lake: str
) -> None:
    rows = bar_rows(3)
    path = write_bars(FS, lake, rows, name="again")
    load(settings, progress=False)
    write_bars(FS, lake, rows, name="again")
    assert load(settings, progress=False).files_unchanged == 1

    write_bars(FS, lake, bar_rows(5, seed=2), name="again")
    with pytest.raises(
        ContentConflict,
        match=rf"{re.escape(path)} was loaded \(load 1, 3 row\(s\)\) with other rows: first diff",
    ):
        load(settings, progress=False)
    assert counts() == (3, 1)


def test_rows_in_a_file_loaded_empty_are_named_as_new_rows(settings: Settings, lake: str) -> None:
    """The rows bronze holds from a file loaded with none are an empty contract-2 table,
    so a rewrite with rows is a conflict naming its first row, not a schema error."""
    path = write_bars(FS, lake, [], name="was-empty")
    assert load(settings, progress=False).files_loaded == 1
    rows = bar_rows(2)
    write_bars(FS, lake, rows, name="was-empty")

    with pytest.raises(ContentConflict) as raised:
        load(settings, progress=False)

    first = min(rows, key=lambda r: (r["symbol"], r["window_start"], r["revision"]))
    assert f"{path} was loaded (load 1, 0 row(s)) with other rows" in str(raised.value)
    assert (
        f"symbol={first['symbol']} window_start={first['window_start'].isoformat()} "
        f"revision={first['revision']}: in the file now, not in what was loaded"
    ) in str(raised.value)


def test_status_reads_the_same_on_snowflake_as_on_duckdb(settings: Settings, lake: str) -> None:
    """status's queries (last load, newest file loaded, silver's load sequence and the
    oldest load it lacks) run on Snowflake's SQL too, and give what the manifest holds."""
    from test_status import _report

    from flows.ops.status import Limits, run_checks, warehouse_status

    write_bars(FS, lake, bar_rows(3, symbol="AAA"), name="a")
    load(settings, progress=False)
    query("CREATE SCHEMA IF NOT EXISTS stockpipe.silver")
    query(
        "CREATE TABLE stockpipe.silver.fct_bars_1m AS "
        "SELECT window_start, _load_seq FROM stockpipe.bronze.bars"
    )
    newest = write_bars(FS, lake, bar_rows(2, symbol="BBB", seed=1), name="b")
    load(settings, progress=False)
    seqs = dict(query("SELECT load_seq, loaded_at FROM stockpipe.bronze.load_manifest"))

    wh, marts = warehouse_status(settings, key_of(newest))
    assert wh.checked and wh.error is None and wh.newest_lake_file_loaded is True
    assert (wh.last_load.load_seq, wh.last_load.files, wh.last_load.rows) == (2, 1, 2)
    silver = marts[0]
    assert (silver.exists, silver.rows, silver.load_seq) == (True, 3, 1)
    assert silver.behind_since is not None
    behind = datetime.fromisoformat(silver.behind_since)
    want = seqs[2] if seqs[2].tzinfo else seqs[2].replace(tzinfo=UTC)
    assert behind.replace(tzinfo=behind.tzinfo or UTC) == want
    elsewhere, _ = warehouse_status(settings, "bars/interval_s=60/date=2024-11-26/x.parquet")
    assert elsewhere.newest_lake_file_loaded is False

    report = _report(settings)
    at = int(want.timestamp() * 1000)
    limits = Limits(10_000, 300.0, 600.0, 900.0, 900.0)
    checks = {c.name: c.status for c in run_checks(report, limits, at + 16 * 60_000)}
    assert (checks["warehouse"], checks["load"], checks["marts"]) == ("ok", "ok", "failed")
