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


SECRETS = {
    name: info
    for name, info in __import__(
        "flows.settings", fromlist=["Settings"]
    ).Settings.model_fields.items()
    if "SecretStr" in str(info.annotation)
}


def test_every_secret_reads_from_a_file_named_by_its_FILE_variable(tmp_path, monkeypatch) -> None:
    """As Docker secrets are mounted: NAME_FILE holds a path, the file the value."""
    from flows.settings import _alias

    assert {"snowflake_password", "finnhub_api_key", "kafka_sasl_password"} <= set(SECRETS)
    monkeypatch.chdir(tmp_path)  # no developer's .env
    for name, info in SECRETS.items():
        alias = _alias(name, info)
        monkeypatch.delenv(alias, raising=False)
        (tmp_path / name).write_text(f"from-file-{name}\n")  # one trailing newline is dropped
        monkeypatch.setenv(f"{alias}_FILE", str(tmp_path / name))
    settings = load_settings()
    for name in SECRETS:
        assert getattr(settings, name).get_secret_value() == f"from-file-{name}", name


def test_a_secret_file_in_dotenv_works_and_a_clash_or_a_missing_file_is_named(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("SNOWFLAKE_PASSWORD", "SNOWFLAKE_PASSWORD_FILE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "pw").write_text("s3cret")
    (tmp_path / ".env").write_text(f"SNOWFLAKE_PASSWORD_FILE={tmp_path / 'pw'}\n")
    assert load_settings().snowflake_password.get_secret_value() == "s3cret"

    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "inline")
    with pytest.raises(
        SettingsError, match="set SNOWFLAKE_PASSWORD or SNOWFLAKE_PASSWORD_FILE, not both"
    ):
        load_settings()
    monkeypatch.delenv("SNOWFLAKE_PASSWORD")
    missing = tmp_path / "gone"
    monkeypatch.setenv("SNOWFLAKE_PASSWORD_FILE", str(missing))
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value) == (
        f"SNOWFLAKE_PASSWORD_FILE={str(missing)!r}: cannot read it (No such file or directory)"
    )


def test_a_command_with_an_unreadable_secret_file_stops_with_the_message(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "status"],
        env={"PATH": "/usr/bin:/bin", "FINNHUB_API_KEY_FILE": str(tmp_path / "nope")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    said = done.stderr.replace("\n", "")  # the console wraps long lines
    assert f"FINNHUB_API_KEY_FILE={str(tmp_path / 'nope')!r}: cannot read it" in said
    assert "Traceback" not in done.stderr
