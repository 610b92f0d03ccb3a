"""Contract 4: secrets are never logged or written to files.

Recognisable fake secrets (`sp-secret-<name>-<uuid>`) go into the environment of
a run; then every byte the run printed or wrote is searched for each of them, raw
and encoded (base64 at every byte alignment, URL-encoded, hex, UTF-16, `\\/`
escaped), inside compressed containers too (Parquet, DuckDB, SQLite, gzip are
decoded and searched as well as their raw bytes).

- the demo: `tests/test_demo.py` sets the secrets on its one module-scoped demo
  run and scans it with `scan_run` (one demo run serves the demo tests and this scan);
- here: a Snowflake-target `stockpipe transform` on the fakesnow emulator (in-process,
  `fakesnow.patch()`), with the same secrets set;
- here: a self-check that plants a secret and shows the scanner finds it, so the
  scans above can fail.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
SECRET_VARIABLES = (
    "SNOWFLAKE_PASSWORD",
    "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE",
    "AWS_SECRET_ACCESS_KEY",
    "FINNHUB_API_KEY",
    "STOCKPIPE_ALERT_WEBHOOK",
)
# never searched: the project's virtualenv and git objects, and the tool harness's own files
SKIP_DIRS = {".venv", ".git", "node_modules", "__pycache__", ".ruff_cache"}
SKIP_PREFIXES = ("bash_jobs", "bash_tool_")
MAX_FILE_BYTES = 256 * 1024 * 1024
MARKER = "sp-secret-"  # in every fake secret: what makes them recognisable


def fake_secrets() -> dict[str, str]:
    """A unique, recognisable value for every secret setting (contract 4).

    The alert webhook is a URL whose path carries the token, on a loopback port
    nothing listens on (9, discard), so a run that does alert fails fast and quietly.
    """
    out = {
        name: f"{MARKER}{name.lower().replace('_', '-')}-{uuid.uuid4()}"
        for name in SECRET_VARIABLES
        if name != "STOCKPIPE_ALERT_WEBHOOK"
    }
    token = f"{MARKER}webhook-token-{uuid.uuid4()}"
    out["STOCKPIPE_ALERT_WEBHOOK"] = f"http://127.0.0.1:9/hooks/{token}"
    return out


def _needles_for(value: str) -> dict[str, bytes]:
    raw = value.encode()
    variants: dict[str, bytes] = {
        "raw": raw,
        "url-encoded": quote(value, safe="").encode(),
        "url-encoded (+)": quote_plus(value).encode(),
        "hex": binascii.hexlify(raw),
        "HEX": binascii.hexlify(raw).upper(),
        "utf-16-le": value.encode("utf-16-le"),
        "json \\/": value.replace("/", "\\/").encode(),
    }
    # base64 of the secret inside any longer base64 text: one variant per byte alignment,
    # keeping only the characters the secret's bits alone determine
    for shift in range(3):
        for alphabet, encode in (
            ("base64", base64.b64encode),
            ("base64url", base64.urlsafe_b64encode),
        ):
            encoded = encode(b"\0" * shift + raw)
            first = -(-8 * shift // 6)
            last = (8 * (shift + len(raw))) // 6
            variants[f"{alphabet}@{shift}"] = encoded[first:last]
    unique: dict[str, bytes] = {}
    for name, needle in variants.items():
        if needle not in unique.values():
            unique[name] = needle
    return unique


def needles(secrets: dict[str, str]) -> list[tuple[str, str, bytes]]:
    """(secret name, encoding, bytes) for every secret; a URL's path token also on its own."""
    values = dict(secrets)
    for name, value in secrets.items():
        parts = urlsplit(value)
        if parts.scheme and parts.path.strip("/"):
            values[f"{name} (path token)"] = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return [
        (name, encoding, needle)
        for name, value in values.items()
        for encoding, needle in _needles_for(value).items()
    ]


@dataclass(frozen=True)
class Hit:
    secret: str
    encoding: str
    where: str
    context: str

    def __str__(self) -> str:
        return f"{self.secret} ({self.encoding}) in {self.where}: …{self.context}…"


def _string_bytes(array) -> bytes:
    """Every text or binary value in an Arrow array (nested and dictionary types too)."""
    import pyarrow as pa

    kind = array.type
    if pa.types.is_dictionary(kind):
        return _string_bytes(array.dictionary)
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        array = array.cast(pa.large_binary())
        kind = array.type
    if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind):
        data = array.buffers()[2]
        return b"" if data is None else data.to_pybytes()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _string_bytes(array.flatten())
    if pa.types.is_struct(kind):
        return b"\n".join(_string_bytes(array.field(i)) for i in range(kind.num_fields))
    if pa.types.is_map(kind):
        return _string_bytes(array.keys) + b"\n" + _string_bytes(array.items)
    return b""  # numbers, timestamps, booleans cannot hold a secret


def _parquet_text(path: Path) -> bytes:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    out = [repr(table.schema.metadata or {}).encode()]
    out += [_string_bytes(chunk) for column in table.columns for chunk in column.chunks]
    return b"\n".join(out)


def _duckdb_text(path: Path) -> bytes:
    """Every text-like value of every table and view definition, aggregated inside DuckDB."""
    import duckdb

    out = []
    with duckdb.connect(str(path), read_only=True) as con:
        columns = con.execute(
            "select table_schema, table_name, column_name from information_schema.columns "
            "where data_type not in ('BOOLEAN','TINYINT','SMALLINT','INTEGER','BIGINT','HUGEINT',"
            "'UTINYINT','USMALLINT','UINTEGER','UBIGINT','FLOAT','DOUBLE','DATE','TIME',"
            "'TIMESTAMP','TIMESTAMP WITH TIME ZONE','INTERVAL','UUID') "
            "and data_type not like 'DECIMAL%'"
        ).fetchall()
        for schema, table, column in columns:
            (text,) = con.execute(
                f'select string_agg(distinct "{column}"::varchar, chr(10)) '
                f'from "{schema}"."{table}"'
            ).fetchone()
            out.append((text or "").encode("utf-8", "backslashreplace"))
        out.append(repr(con.execute("select sql from duckdb_views()").fetchall()).encode())
    return b"\n".join(out)


def _views(path: Path, data: bytes) -> Iterator[tuple[str, bytes]]:
    """The file's bytes, then its decoded contents when it is a container that compresses."""
    yield str(path), data
    try:
        if data[:4] == b"PAR1" and data[-4:] == b"PAR1":
            yield f"{path} (Parquet, decoded)", _parquet_text(path)
        elif data[8:12] == b"DUCK":
            yield f"{path} (DuckDB, every table)", _duckdb_text(path)
        elif data[:16] == b"SQLite format 3\0":
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                dump = "\n".join(con.iterdump())
            finally:
                con.close()
            yield f"{path} (SQLite, dumped)", dump.encode("utf-8", "backslashreplace")
        elif data[:2] == b"\x1f\x8b":
            yield f"{path} (gunzipped)", gzip.decompress(data)
    except Exception as exc:  # a file being written, locked or truncated: say so, keep going
        yield f"{path} (could not decode: {type(exc).__name__})", b""


def files_under(roots: Iterable[Path], *, since: float | None = None) -> Iterator[Path]:
    """Regular files under roots (or roots themselves), optionally only those changed since."""
    seen: set[Path] = set()
    for root in roots:
        root = Path(root)
        if root.is_file():
            candidates: Iterable[Path] = [root]
        elif root.is_dir():
            candidates = _walk(root)
        else:
            continue
        for path in candidates:
            try:
                st = path.lstat()
            except OSError:
                continue
            if not path.is_file() or path.is_symlink() or st.st_size > MAX_FILE_BYTES:
                continue
            if since is not None and max(st.st_mtime, st.st_ctime) < since:
                continue
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                yield path


def _walk(root: Path) -> Iterator[Path]:
    for folder, dirs, names in os.walk(root, onerror=lambda _e: None):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(SKIP_PREFIXES)]
        for name in names:
            yield Path(folder) / name


def scan(
    secrets: dict[str, str],
    *,
    texts: dict[str, str | bytes] | None = None,
    paths: Iterable[Path] = (),
    changed_since: tuple[float, Iterable[Path]] | None = None,
) -> tuple[list[Hit], int]:
    """Search printed output (`texts`), every file under `paths`, and files changed since a
    time under other roots (`changed_since`), for every secret in every encoding.

    Returns the hits and the number of files searched.
    """
    wanted = needles(secrets)
    hits: list[Hit] = []
    # Fast path: every fake secret holds MARKER, so every needle holds one of the marker's
    # own encodings; a view without any of those cannot hold a secret. Needles that hold
    # no anchor (a secret without the marker) are searched for everywhere.
    anchors = list(_needles_for(MARKER).values())
    anchored = [w for w in wanted if any(a in w[2] for a in anchors)]
    always = [w for w in wanted if w not in anchored]

    def search(where: str, data: bytes) -> None:
        candidates = always
        if any(a in data for a in anchors):
            candidates = wanted
        for secret, encoding, needle in candidates:
            at = data.find(needle)
            if at >= 0:
                context = data[max(0, at - 60) : at + len(needle) + 20]
                context = context.replace(needle, b"<" + secret.encode() + b">")
                hits.append(Hit(secret, encoding, where, context.decode("utf-8", "replace")))

    for label, text in (texts or {}).items():
        search(label, text.encode() if isinstance(text, str) else text)
    files = list(files_under(paths))
    if changed_since is not None:
        since, roots = changed_since
        files += list(files_under(roots, since=since))
    searched = 0
    for path in dict.fromkeys(files):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        searched += 1
        for where, view in _views(path, data):
            search(where, view)
    return hits, searched


def scan_run(
    secrets: dict[str, str],
    *,
    started: float,
    texts: dict[str, str | bytes],
    paths: Iterable[Path] = (),
) -> tuple[list[Hit], int]:
    """Everything a run could have printed or written: its output, the given paths, every
    file of the repo (data/, dbt/target, dbt/logs, logs/, the outage ledger and spool by
    default), and anything changed in the temp dir or the home dir since the run started."""
    from flows.settings import load_settings

    settings = load_settings()
    configured = [
        settings.outage_log,
        settings.spool_dir,
        settings.recovery_dir,
        settings.report_path,
        settings.dbt_target_path or REPO / "dbt" / "target",
        REPO / "dbt" / "logs",
        REPO / "logs",
    ]
    if not settings.lake_url.startswith("s3://"):
        configured.append(Path(settings.lake_url))
    if settings.warehouse != "snowflake":
        configured.append(settings.duckdb_path)
    configured = [p if p.is_absolute() else REPO / p for p in map(Path, configured)]
    return scan(
        secrets,
        texts=texts,
        paths=[*paths, *configured, REPO],
        changed_since=(started - 1, [Path(tempfile.gettempdir()), Path.home()]),
    )


def assert_no_leak(hits: list[Hit], searched: int) -> None:
    for hit in hits:
        print(f"SECRET LEAK: {hit}")
    assert not hits, (
        f"{len(hits)} secret leak(s) in {searched} files and the output:\n"
        + "\n".join(map(str, hits))
    )


# ------------------------------------------------------------------ the scanner can fail


def test_the_scanner_finds_a_planted_secret_in_every_encoding(tmp_path: Path) -> None:
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    secrets = fake_secrets()
    password, webhook = secrets["SNOWFLAKE_PASSWORD"], secrets["STOCKPIPE_ALERT_WEBHOOK"]
    token = webhook.rsplit("/", 1)[-1]
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "ok.log").write_text("nothing to see: ********** and sp-secret-other\n")
    assert scan(secrets, paths=[clean], texts={"stdout": "all fine"}) == ([], 1)

    planted = tmp_path / "planted"
    (planted / "logs").mkdir(parents=True)
    (planted / "logs" / "run.log").write_text(f"connecting with password={password}\n")
    blob = base64.b64encode(b"xx" + f'{{"pw": "{password}"}}'.encode()).decode()
    (planted / "auth.json").write_text(f'{{"basic": "{blob}"}}')
    (planted / "access.log").write_text(f"POST /?next={quote(webhook, safe='')} 500\n")
    (planted / "token.txt").write_text(f"alert sent to …/{token}\n")
    (planted / "rotated.log.gz").write_bytes(gzip.compress(f"key {password}\n".encode() * 50))
    pq.write_table(
        pa.table({"note": [f"k={password}"] * 1000}),
        planted / "part.parquet",
        compression="zstd",
    )
    with duckdb.connect(str(planted / "w.duckdb")) as con:
        con.execute(
            "create table t as select 'pw ' || ? || ' ' || i as s from range(5000) r(i)", [password]
        )
    hits, searched = scan(
        secrets,
        paths=[planted],
        texts={"captured stderr": f"AWS {secrets['AWS_SECRET_ACCESS_KEY']}"},
    )
    assert searched == 7
    found = {(Path(h.where.split(" (")[0]).name or h.where, h.secret.split(" (")[0]) for h in hits}
    for expected in [
        ("run.log", "SNOWFLAKE_PASSWORD"),
        ("auth.json", "SNOWFLAKE_PASSWORD"),  # base64, off by one byte
        ("access.log", "STOCKPIPE_ALERT_WEBHOOK"),  # URL-encoded
        ("token.txt", "STOCKPIPE_ALERT_WEBHOOK"),  # only the path token
        ("rotated.log.gz", "SNOWFLAKE_PASSWORD"),
        ("part.parquet", "SNOWFLAKE_PASSWORD"),
        ("w.duckdb", "SNOWFLAKE_PASSWORD"),
        ("captured stderr", "AWS_SECRET_ACCESS_KEY"),
    ]:
        assert expected in found, (expected, [str(h) for h in hits])
    assert {h.encoding for h in hits} >= {"raw", "url-encoded", "base64@1"}
    assert not any("FINNHUB" in h.secret for h in hits)
    with pytest.raises(AssertionError, match="secret leak"):
        assert_no_leak(hits, searched)


# ------------------------------------------------------------------ Snowflake transform


@pytest.mark.slow
@pytest.mark.dbt
def test_snowflake_transform_on_the_emulator_leaks_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog
) -> None:
    """`stockpipe transform` on the Snowflake target (fakesnow in-process), every secret set."""
    import fakesnow
    import pandas as pd
    import snowflake.connector
    from test_dbt_snowflake import SNOWFLAKE_DDL
    from test_dbt_transform import CRYPTO, generate_loads, nyse_schedule

    from flows.transform.dbt_runner import transform_command

    secrets = fake_secrets()
    target = tmp_path / "dbt-target"
    env = {
        **secrets,
        "STOCKPIPE_WAREHOUSE": "snowflake",
        "STOCKPIPE_DBT_TARGET": "snowflake",
        "STOCKPIPE_DBT_TARGET_PATH": str(target),
        "SNOWFLAKE_ACCOUNT": "fakesnow",
        "SNOWFLAKE_USER": "dbt",
        "SNOWFLAKE_DATABASE": "STOCKPIPE",
        "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    loads = generate_loads(nyse_schedule().iloc[:10])
    rows = pd.concat([loads.first, loads.second])
    rows = rows[
        (rows.symbol != CRYPTO)
        | (rows.window_start < rows.window_start.min() + pd.Timedelta(days=3))
    ]
    started = time.time()
    with fakesnow.patch():
        from snowflake.connector.pandas_tools import write_pandas

        con = snowflake.connector.connect(
            account="fakesnow",
            user="loader",
            password=secrets["SNOWFLAKE_PASSWORD"],
            database="STOCKPIPE",
        )
        con.cursor().execute("create schema if not exists bronze")
        con.cursor().execute(SNOWFLAKE_DDL)
        numbered = rows.assign(_load_seq=rows._loaded_at.rank(method="dense").astype("int64"))
        write_pandas(con, numbered.rename(columns=str.upper), "BARS", schema="BRONZE")
        transform_command(select=None)  # `stockpipe transform`, in this process
    out, err = capfd.readouterr()
    assert "dbt build on snowflake" in out, out[-2000:] + err[-2000:]
    assert (target / "catalog.json").exists() and (target / "logs" / "dbt.log").exists()

    hits, searched = scan_run(
        secrets,
        started=started,
        texts={"stdout": out, "stderr": err, "log records": caplog.text},
        paths=[target, tmp_path],
    )
    print(f"searched the output and {searched} files")
    assert searched > 5
    assert_no_leak(hits, searched)
