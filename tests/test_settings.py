"""Settings that would mislead are refused with the variable and the value named.

A lake URL of a scheme stockpipe does not speak would otherwise become a local
folder of that name (and `load` would say "nothing new"); byte sizes take the
binary units the docs write them in.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.settings import SettingsError, load_settings, parse_bytes


@pytest.mark.parametrize(
    "url,says",
    [
        ("gs://bucket/lake", "not a lake stockpipe can use: 'gs://bucket/lake'"),
        ("s3a://bucket/lake", "not a lake stockpipe can use: 's3a://bucket/lake'"),
        ("S3://bucket/lake", "(schemes are lower case)"),
        ("abfs://container/lake", "write a folder, file:///path or s3://bucket/prefix"),
        ("s3://", "an s3:// lake needs a bucket"),
    ],
)
def test_a_lake_url_of_another_scheme_is_refused(url: str, says: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(lake_url=url)
    assert f"STOCKPIPE_LAKE_URL={url!r}" in str(error.value)
    assert says in str(error.value)


@pytest.mark.parametrize(
    "url", ["./data/lake", "/srv/lake", "file:///srv/lake", "s3://bucket", "s3://bucket/a/b"]
)
def test_folders_file_and_s3_urls_are_lakes(url: str) -> None:
    assert load_settings(lake_url=url).lake_url == url


@pytest.mark.parametrize(
    "text,size",
    [
        ("65536", 65536),
        ("64KiB", 64 * 1024),
        ("256MiB", 256 * 1024 * 1024),
        (" 1 GiB ", 1024**3),
        ("300B", 300),
        (4096, 4096),
    ],
)
def test_byte_sizes_take_binary_units(text: object, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["256MB", "1.5MiB", "-1", "lots", "64kib", True])
def test_a_byte_size_that_is_not_one_says_how_to_write_it(text: object) -> None:
    with pytest.raises(ValueError, match=r"not a byte size"):
        parse_bytes(text)


def test_byte_size_settings_read_units_and_keep_their_bounds() -> None:
    settings = load_settings(spool_max_bytes="256MiB", max_message_bytes="64KiB")
    assert (settings.spool_max_bytes, settings.max_message_bytes) == (256 * 1024**2, 65536)
    with pytest.raises(
        SettingsError,
        match=r"STOCKPIPE_MAX_MESSAGE_BYTES=17825792: .*less than or equal to 16777216",
    ):
        load_settings(max_message_bytes="17MiB")  # above the 16 MiB bound
    with pytest.raises(SettingsError, match=r"STOCKPIPE_SPOOL_MAX_BYTES='256 MB'"):
        load_settings(spool_max_bytes="256 MB")


def test_load_with_an_unsupported_lake_stops_with_the_message(tmp_path) -> None:
    """Not "nothing new" and exit 0: the command names the setting and exits 2."""
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "load"],
        env={"PATH": "/usr/bin:/bin", "STOCKPIPE_LAKE_URL": "gs://bucket/lake"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "STOCKPIPE_LAKE_URL='gs://bucket/lake'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "gs:").exists()


@pytest.mark.parametrize(
    "url,path",
    [
        ("duckdb:///./data/warehouse.duckdb", "data/warehouse.duckdb"),
        ("duckdb:///tmp/w.duckdb", "tmp/w.duckdb"),  # three slashes: relative to the cwd
        ("duckdb:////srv/w.duckdb", "/srv/w.duckdb"),  # four: absolute
    ],
)
def test_duckdb_urls_follow_sqlalchemys_rule(url: str, path: str) -> None:
    assert load_settings(warehouse=url).duckdb_path == Path(path)
