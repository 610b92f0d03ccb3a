"""`stockpipe load` into the embedded DuckDB warehouse, from a local-folder lake."""

from __future__ import annotations

from pathlib import Path

import duckdb
import fsspec
import pytest
import typer
from load_helpers import bar_rows, bars_table, expected_rows, write_bars, write_many
from typer.testing import CliRunner

from flows.settings import Settings, SettingsError, load_settings
from flows.warehouse import LoadError, load, load_files, pending_files
from flows.warehouse.base import BAR_COLUMN_NAMES
from flows.warehouse.command import load_command

FS = fsspec.filesystem("file", auto_mkdir=True)
SELECT_BARS = (
    f"SELECT {', '.join(BAR_COLUMN_NAMES)}, _source_file FROM bronze.bars "
    "ORDER BY _source_file, symbol, window_start"
)


class Crash(RuntimeError):
    """Stands in for the process dying between writing rows and committing."""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        lake_url=str(tmp_path / "lake"),
        warehouse=f"duckdb:///{tmp_path / 'wh' / 'warehouse.duckdb'}",
    )


@pytest.fixture
def lake(settings: Settings) -> str:
    return settings.lake_url


def query(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        return con.execute(sql).fetchall()


def counts(settings: Settings) -> tuple[int, int]:
    bars = query(settings, "SELECT count(*) FROM bronze.bars")[0][0]
    manifest = query(settings, "SELECT count(*) FROM bronze.load_manifest")[0][0]
    return bars, manifest


def crash_on_call(*calls: int):
    """A before_commit hook that raises on the given 1-based batch numbers."""
    seen = {"n": 0}

    def hook() -> None:
        seen["n"] += 1
        if seen["n"] in calls:
            raise Crash(f"simulated crash before commit of batch {seen['n']}")

    return hook


def test_load_copies_every_row_and_value_with_source_file(settings: Settings, lake: str) -> None:
    files = write_many(FS, lake, 3, rows_each=4)
    extra = bar_rows(2, symbol="BINANCE:BTCUSDT", seed=9)
    files[write_bars(FS, lake, extra, name="with-extra-col", extra_column=True)] = extra

    summary = load(settings, progress=False)

    assert (summary.files_found, summary.files_new, summary.files_loaded) == (4, 4, 4)
    assert (summary.rows, summary.batches) == (14, 1)
    assert query(settings, SELECT_BARS) == expected_rows(files)
    manifest = query(
        settings,
        "SELECT path, target_table, size_bytes, row_count, batch_id, loaded_at FROM bronze.load_manifest ORDER BY path",
    )
    assert [m[0] for m in manifest] == sorted(files)
    assert [m[1] for m in manifest] == ["bars"] * 4
    assert [m[2] for m in manifest] == [Path(p).stat().st_size for p in sorted(files)]
    assert [m[3] for m in manifest] == [len(files[p]) for p in sorted(files)]
    assert len({m[4] for m in manifest}) == 1
    # every bar row carries its batch's load time, the same one the manifest records
    assert query(settings, "SELECT DISTINCT _loaded_at FROM bronze.bars") == [(manifest[0][5],)]


def test_second_run_loads_nothing(settings: Settings, lake: str) -> None:
    write_many(FS, lake, 2)
    load(settings, progress=False)

    again = load(settings, progress=False)

    assert again.nothing_new
    assert (again.files_found, again.files_new, again.files_loaded, again.rows, again.batches) == (
        2,
        0,
        0,
        0,
        0,
    )
    assert counts(settings) == (6, 2)


def test_new_files_after_a_load_are_picked_up(settings: Settings, lake: str) -> None:
    first = write_many(FS, lake, 2)
    load(settings, progress=False)
    later = bar_rows(5, symbol="MSTR", seed=7)
    path = write_bars(FS, lake, later, name="later")

    summary = load(settings, progress=False)

    assert (summary.files_found, summary.files_loaded, summary.rows) == (3, 1, 5)
    assert query(settings, SELECT_BARS) == expected_rows({**first, path: later})


def test_crash_before_commit_leaves_nothing_and_rerun_loads_each_file_once(
    settings: Settings, lake: str
) -> None:
    files = write_many(FS, lake, 3)

    with pytest.raises(Crash):
        load(settings, progress=False, before_commit=crash_on_call(1))

    assert counts(settings) == (0, 0)
    rerun = load(settings, progress=False)
    assert (rerun.files_loaded, rerun.rows) == (3, 9)
    assert query(settings, SELECT_BARS) == expected_rows(files)
    assert query(settings, "SELECT count(*), count(DISTINCT path) FROM bronze.load_manifest") == [
        (3, 3)
    ]


def test_crash_in_a_later_batch_keeps_the_committed_batches(settings: Settings, lake: str) -> None:
    files = write_many(FS, lake, 5)

    with pytest.raises(Crash):
        load(settings, batch_files=2, progress=False, before_commit=crash_on_call(2))

    assert counts(settings) == (6, 2)  # batch 1 committed, batch 2 rolled back
    rerun = load(settings, batch_files=2, progress=False)
    assert (rerun.files_new, rerun.files_loaded, rerun.batches) == (3, 3, 2)
    assert query(settings, SELECT_BARS) == expected_rows(files)


def test_large_backlog_loads_in_bounded_batches(settings: Settings, lake: str) -> None:
    write_many(FS, lake, 5)

    summary = load(settings, batch_files=2, progress=False)

    assert (summary.files_loaded, summary.batches) == (5, 3)
    per_batch = query(
        settings, "SELECT count(*) AS n FROM bronze.load_manifest GROUP BY batch_id ORDER BY n DESC"
    )
    assert per_batch == [(2,), (2,), (1,)]


def test_batch_size_comes_from_settings(tmp_path: Path, lake: str) -> None:
    settings = load_settings(
        lake_url=lake, warehouse=f"duckdb:///{tmp_path / 'w.duckdb'}", load_batch_files=4
    )
    write_many(FS, lake, 5)

    assert load(settings, progress=False).batches == 2


def test_pending_then_load_files_is_idempotent_per_batch(settings: Settings, lake: str) -> None:
    files = write_many(FS, lake, 5)

    pending = pending_files(settings)
    assert pending == sorted(files)

    first = load_files(settings, pending[:2])
    retried = load_files(settings, pending[:2])  # an Airflow retry after a commit

    assert (first.files_loaded, first.rows) == (2, 6)
    assert (retried.files_new, retried.files_loaded) == (0, 0)
    assert pending_files(settings) == pending[2:]
    load_files(settings, pending[2:])
    assert query(settings, SELECT_BARS) == expected_rows(files)


def test_load_files_rejects_a_path_outside_the_lake(
    settings: Settings, lake: str, tmp_path: Path
) -> None:
    write_many(FS, lake, 1)
    outsider = write_bars(FS, str(tmp_path / "elsewhere"), bar_rows(1))

    with pytest.raises(LoadError, match="is not a file under"):
        load_files(settings, [outsider])


def test_file_missing_a_contract_column_fails_clearly_and_loads_nothing(
    settings: Settings, lake: str
) -> None:
    write_many(FS, lake, 2)
    rows = bar_rows(2)
    broken = write_bars(
        FS, lake, rows, name="zz-broken", table=bars_table(rows).drop_columns(["revision"])
    )

    with pytest.raises(
        LoadError,
        match=r"zz-broken\.parquet is not a contract-2 bar file: missing column\(s\) revision",
    ):
        load(settings, progress=False)

    assert counts(settings) == (0, 0)
    assert broken in pending_files(settings)


def test_hidden_temporary_and_other_files_are_ignored(settings: Settings, lake: str) -> None:
    files = write_many(FS, lake, 1)
    folder = Path(next(iter(files))).parent
    (folder / ".part-9.parquet.tmp").write_bytes(b"half written")
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / "notes.txt").write_text("not data")

    summary = load(settings, progress=False)

    assert (summary.files_found, summary.files_loaded) == (1, 1)


def test_empty_lake_loads_nothing(settings: Settings) -> None:
    summary = load(settings, progress=False)

    assert summary.nothing_new and summary.files_found == 0
    assert counts(settings) == (0, 0)


def test_bad_warehouse_setting_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"STOCKPIPE_WAREHOUSE='postgres://db/x'.*duckdb:///"):
        load_settings(lake_url=str(tmp_path), warehouse="postgres://db/x")


def test_load_command_prints_a_summary_then_nothing_new(
    settings: Settings, lake: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_many(FS, lake, 3)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("STOCKPIPE_LAKE_URL", settings.lake_url)
    monkeypatch.setenv("STOCKPIPE_WAREHOUSE", settings.warehouse)
    app = typer.Typer()
    app.command()(load_command)
    runner = CliRunner()

    first = runner.invoke(app, ["--no-progress", "--batch-files", "2"])
    second = runner.invoke(app, ["--no-progress"])

    assert first.exit_code == 0, first.output
    assert "loaded 3 file(s), 9 row(s) in 2 batch(es)" in first.output
    assert second.exit_code == 0, second.output
    assert "nothing new to load" in second.output
    assert counts(settings) == (9, 3)


def test_load_command_with_a_bad_warehouse_raises_a_settings_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STOCKPIPE_WAREHOUSE", "sqlite:///x.db")
    app = typer.Typer()
    app.command()(load_command)

    result = CliRunner().invoke(app, [])

    assert isinstance(result.exception, SettingsError)
    assert "STOCKPIPE_WAREHOUSE='sqlite:///x.db'" in str(result.exception)
