"""`stockpipe load` from an s3:// lake on a real S3 HTTP endpoint (moto server on loopback)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import fakesnow
import pytest
import s3fs
import snowflake.connector
from load_helpers import bar_rows, expected_rows, key_of, write_bars, write_many
from moto.server import ThreadedMotoServer

from flows.settings import Settings, load_settings
from flows.warehouse import load, pending_files
from flows.warehouse.base import BAR_COLUMN_NAMES

KEY, SECRET = "testing-key", "testing-secret"
SELECT_BARS = (
    f"SELECT {', '.join(BAR_COLUMN_NAMES)}, _source_file FROM {{table}} "
    "ORDER BY _source_file, symbol, window_start"
)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> tuple[s3fs.S3FileSystem, str]:
    """A fresh bucket per test; region left out as moto and s3fs expect."""
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key=KEY, secret=SECRET)
    name = f"lake-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return fs, name


def s3_settings(endpoint: str, bucket: str, **overrides: object) -> Settings:
    return load_settings(
        lake_url=f"s3://{bucket}/prod",
        s3_endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        **overrides,
    )


def test_s3_lake_loads_into_duckdb_exactly_once(
    s3_endpoint: str, bucket: tuple[s3fs.S3FileSystem, str], tmp_path: Path
) -> None:
    fs, name = bucket
    files = write_many(fs, f"{name}/prod", 3)
    settings = s3_settings(s3_endpoint, name, warehouse=f"duckdb:///{tmp_path / 'w.duckdb'}")

    assert pending_files(settings) == [f"s3://{p}" for p in sorted(files)]
    first = load(settings, batch_files=2, progress=False)
    second = load(settings, progress=False)

    assert (first.files_loaded, first.rows, first.batches) == (3, 9, 2)
    assert second.nothing_new
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        rows = con.execute(SELECT_BARS.format(table="bronze.bars")).fetchall()
        sizes = con.execute(
            "SELECT path, size_bytes FROM bronze.load_manifest ORDER BY path"
        ).fetchall()
    assert rows == expected_rows(files)  # _source_file: the key in the lake
    assert sizes == [(key_of(p), fs.size(p)) for p in sorted(files)]

    # the same lake copied to another bucket under another prefix: nothing is loaded twice
    fs.mkdir("moved-lake")
    for path in files:
        fs.copy(path, path.replace(f"{name}/prod/", "moved-lake/elsewhere/"))
    moved = s3_settings(s3_endpoint, "moved-lake", warehouse=f"duckdb:///{tmp_path / 'w.duckdb'}")
    moved = moved.model_copy(update={"lake_url": "s3://moved-lake/elsewhere"})
    after_move = load(moved, progress=False)
    assert after_move.nothing_new and after_move.files_unchanged == 3
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM bronze.bars").fetchone() == (9,)


def test_s3_lake_is_downloaded_and_put_to_snowflake(
    s3_endpoint: str, bucket: tuple[s3fs.S3FileSystem, str]
) -> None:
    fs, name = bucket
    files = write_many(fs, f"{name}/prod", 2)
    settings = s3_settings(
        s3_endpoint,
        name,
        warehouse="snowflake",
        snowflake_account="acme-test",
        snowflake_user="loader",
        snowflake_password="pw",
    )
    with fakesnow.patch():
        summary = load(settings, progress=False)
        late = bar_rows(4, symbol="BLK", seed=3)
        files[write_bars(fs, f"{name}/prod", late, name="late-arrival")] = late
        again = load(settings, progress=False)
        with snowflake.connector.connect(account="a", user="u", password="p") as conn:
            rows = (
                conn.cursor().execute(SELECT_BARS.format(table="stockpipe.bronze.bars")).fetchall()
            )

    assert (summary.files_loaded, summary.rows) == (2, 6)
    assert (again.files_found, again.files_loaded, again.rows) == (3, 1, 4)
    assert rows == expected_rows(files)
