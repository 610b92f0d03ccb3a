"""`stockpipe load` into the embedded DuckDB warehouse, from a local-folder lake."""

from __future__ import annotations

import threading
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
import fsspec
import pyarrow.parquet as pq
import pytest
import typer
from helpers import run_stockpipe_json
from load_helpers import (
    T0,
    CountingLocalFS,
    bar_rows,
    bars_table,
    day_folder,
    expected_rows,
    key_of,
    write_bars,
    write_many,
)
from typer.testing import CliRunner

from flows.lake.store import Lake, open_lake
from flows.settings import Settings, SettingsError, load_settings
from flows.warehouse import ContentConflict, LoadError, load, load_files, pending_files
from flows.warehouse.base import BAR_COLUMN_NAMES, LakeFile, ManifestEntry
from flows.warehouse.command import load_command
from flows.warehouse.loader import content_difference, high_water_mark

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
    # a file of a writer from before the trade conditions: no condition counts, NULL loaded
    counts = ["excluded_count", "unmapped_count", "candle_count"]
    older = [{**r, **dict.fromkeys(counts)} for r in bar_rows(2, seed=7)]
    table = bars_table(older).drop_columns(counts)
    files[write_bars(FS, lake, older, name="older-writer", table=table)] = older

    summary = load(settings, progress=False)

    assert (summary.files_found, summary.files_new, summary.files_loaded) == (5, 5, 5)
    assert (summary.rows, summary.batches) == (16, 1)
    assert query(settings, SELECT_BARS) == expected_rows(files)
    manifest = query(
        settings,
        "SELECT path, target_table, size_bytes, row_count, batch_id, loaded_at FROM bronze.load_manifest ORDER BY path",
    )
    assert [m[0] for m in manifest] == sorted(key_of(p) for p in files)  # paths in the lake
    assert [m[1] for m in manifest] == ["bars"] * 5
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


def test_load_json_is_one_document_of_what_the_warehouse_now_holds(
    settings: Settings, lake: str
) -> None:
    files = write_many(FS, lake, 5, rows_each=4)
    conflicting = write_bars(FS, lake, bar_rows(2, symbol="OLD", seed=3), name="conflicting")

    code, doc, err = run_stockpipe_json(settings, "load", "--batch-files", "2")

    assert code == 0, err
    manifest = query(
        settings,
        "SELECT load_seq, count(*), sum(row_count) FROM bronze.load_manifest "
        "GROUP BY load_seq ORDER BY load_seq",
    )
    assert [(b["load_seq"], b["files"], b["rows"]) for b in doc["batches"]] == manifest
    assert len(manifest) == 3  # 6 files, 2 a batch
    assert all(b["seconds"] >= 0 for b in doc["batches"]) and doc["seconds"] >= 0
    bars, loaded = counts(settings)
    assert (doc["files_loaded"], doc["rows"]) == (loaded, bars) == (6, 22)
    assert sum(len(r) for r in files.values()) + 2 == bars
    assert {k: doc[k] for k in ("files_found", "files_new", "files_unchanged", "files_linked")} == {
        "files_found": 6,
        "files_new": 6,
        "files_unchanged": 0,
        "files_linked": 0,
    }
    assert (doc["nothing_new"], doc["files_left"], doc["offset_gaps"], doc["conflicts"]) == (
        False,
        0,
        [],
        [],
    )
    assert doc["warehouse"] == settings.warehouse and doc["lake"] == settings.lake_url

    # again: nothing new; then a loaded file with other rows: the rest loads, the document
    # says what did, and the command fails naming the file
    code, doc, _ = run_stockpipe_json(settings, "load")
    assert code == 0
    assert (doc["nothing_new"], doc["files_unchanged"], doc["batches"]) == (True, 6, [])
    write_bars(FS, lake, bar_rows(2, symbol="NEW", seed=8), name="new")
    write_bars(FS, lake, bar_rows(2, symbol="OLD", seed=4), name="conflicting")
    code, doc, err = run_stockpipe_json(settings, "load", "--max-batches", "1")
    assert code == 2
    assert (doc["files_loaded"], doc["rows"], doc["files_unchanged"]) == (1, 2, 5)
    [conflict] = doc["conflicts"]
    assert key_of(conflicting) in conflict and key_of(conflicting) in err
    assert counts(settings) == (24, 7)


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


# ---------------------------------------------------------- contract 3: load sequence


def test_each_load_gets_the_next_sequence_number_on_all_its_rows(
    settings: Settings, lake: str
) -> None:
    files = write_many(FS, lake, 5)

    first = load(settings, batch_files=2, progress=False)
    later = write_bars(FS, lake, bar_rows(2, symbol="LATE", seed=5), name="later")
    second = load(settings, progress=False)

    assert first.load_seqs == (1, 2, 3) and second.load_seqs == (4,)
    # one sequence number per load, the same on every row and manifest entry of that load
    per_file = query(
        settings,
        "SELECT b._source_file, min(b._load_seq), max(b._load_seq), any_value(m.load_seq) "
        "FROM bronze.bars b JOIN bronze.load_manifest m ON m.path = b._source_file "
        "GROUP BY 1 ORDER BY 1",
    )
    assert [p for p, *_ in per_file] == sorted(key_of(p) for p in [*files, later])
    assert all(lo == hi == seq for _, lo, hi, seq in per_file)
    per_load = query(
        settings,
        "SELECT load_seq, count(DISTINCT batch_id), count(*) FROM bronze.load_manifest "
        "GROUP BY 1 ORDER BY 1",
    )
    assert per_load == [(1, 1, 2), (2, 1, 2), (3, 1, 1), (4, 1, 1)]
    assert query(settings, "SELECT last_seq FROM bronze.load_state") == [(4,)]


def test_a_crashed_load_does_not_use_up_a_sequence_number(settings: Settings, lake: str) -> None:
    write_many(FS, lake, 2)
    with pytest.raises(Crash):
        load(settings, progress=False, before_commit=crash_on_call(1))

    assert load(settings, progress=False).load_seqs == (1,)


def test_concurrent_loaders_load_each_file_exactly_once(settings: Settings, lake: str) -> None:
    files = write_many(FS, lake, 6)
    results: list[object] = []

    def slow_commit() -> None:
        time.sleep(0.2)  # hold the transaction open while the other loader runs

    def run() -> None:
        try:
            results.append(load(settings, batch_files=2, progress=False, before_commit=slow_commit))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert all(not isinstance(r, Exception) for r in results), results
    assert sum(r.files_loaded for r in results) == 6  # type: ignore[attr-defined]
    assert query(settings, SELECT_BARS) == expected_rows(files)
    seqs = query(
        settings, "SELECT load_seq, count(DISTINCT batch_id) FROM bronze.load_manifest GROUP BY 1"
    )
    assert sorted(s for s, _ in seqs) == list(range(1, len(seqs) + 1))
    assert all(batches == 1 for _, batches in seqs)


# ---------------------------------------------------- contract 3: a name seen again


def test_same_name_rewritten_with_identical_content_is_skipped_quietly(
    settings: Settings, lake: str
) -> None:
    rows = bar_rows(3)
    path = write_bars(FS, lake, rows, name="replayed")
    load(settings, progress=False)
    time.sleep(0.01)
    assert write_bars(FS, lake, rows, name="replayed") == path  # a crash replay rewrites it

    again = load(settings, progress=False)

    assert again.nothing_new and again.files_unchanged == 1
    assert counts(settings) == (3, 1)


def test_same_name_with_other_content_is_an_error_naming_the_file(
    settings: Settings, lake: str
) -> None:
    path = write_bars(FS, lake, bar_rows(3), name="rewritten")
    load(settings, progress=False)
    write_bars(FS, lake, bar_rows(4, seed=1), name="rewritten")
    other = write_bars(FS, lake, bar_rows(2, symbol="MSTR"), name="fresh")

    with pytest.raises(ContentConflict) as raised:
        load(settings, progress=False)

    # the file, and its first row that differs, loaded -> now (an independent reading)
    was, now = bar_rows(3), bar_rows(4, seed=1)
    assert was[0]["symbol"] == now[0]["symbol"] and was[0]["window_start"] == now[0]["window_start"]
    changed = [c for c in BAR_COLUMN_NAMES if was[0][c] != now[0][c]]
    assert changed
    message = str(raised.value)
    assert f"{path} was loaded (load 1, 3 row(s)) with other rows: first difference at" in message
    assert f"symbol={now[0]['symbol']} window_start={now[0]['window_start'].isoformat()}" in message
    assert f"{changed[0]} {was[0][changed[0]]!r} -> {now[0][changed[0]]!r}" in message
    # the conflicting file is never loaded again; every other new file is
    assert query(settings, "SELECT path FROM bronze.load_manifest ORDER BY path") == sorted(
        [(key_of(path),), (key_of(other),)]
    )
    with pytest.raises(ContentConflict, match="rewritten.parquet"):
        pending_files(settings)


def test_a_moved_lake_loads_nothing_twice(
    settings: Settings, lake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest keys files by their path in the lake: a lake moved (copied, mtimes
    and all new), reached through a symlink, or by a relative URL from another folder is
    the same lake."""
    files = write_many(FS, lake, 3)
    load(settings, progress=False)
    moved = tmp_path / "mnt" / "other-name"
    moved.parent.mkdir()
    FS.copy(lake, str(moved), recursive=True)  # new mtimes: the bytes are compared
    link = tmp_path / "link-to-lake"
    link.symlink_to(lake)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    for url in (str(moved), str(link), "../mnt/other-name", f"file://{moved}"):
        summary = load(settings.model_copy(update={"lake_url": url}), progress=False)
        assert summary.nothing_new and summary.files_unchanged == 3, url
    assert counts(settings) == (sum(len(r) for r in files.values()), 3)
    # a file new in the moved lake is loaded once, under its key
    extra = write_bars(FS, str(moved), bar_rows(2, symbol="MOVED"), name="after-move")
    moved_settings = settings.model_copy(update={"lake_url": str(moved)})
    assert load(moved_settings, progress=False).files_loaded == 1
    assert load(settings.model_copy(update={"lake_url": str(link)}), progress=False).nothing_new
    assert query(
        settings,
        "SELECT count(*) FROM bronze.load_manifest WHERE path = ?".replace(
            "?", f"'{key_of(extra)}'"
        ),
    ) == [(1,)]


def test_a_file_re_encoded_with_the_same_rows_is_unchanged_and_its_version_recorded(
    settings: Settings, lake: str
) -> None:
    """Rows, not bytes: a replay under another compression and row order is the same file."""
    rows = bar_rows(5)
    path = write_bars(FS, lake, rows, name="re-encoded")
    load(settings, progress=False)
    before = FS.cat_file(path)
    table = pq.read_table(path)
    pq.write_table(table.take(list(reversed(range(table.num_rows)))), path, compression="gzip")
    assert FS.cat_file(path) != before  # other bytes, other size

    again = load(settings, progress=False)

    assert again.nothing_new and again.files_unchanged == 1
    assert counts(settings) == (5, 1)
    # the new size and version are recorded, so the next run reads nothing
    recorded = query(settings, "SELECT size_bytes, source_version FROM bronze.load_manifest")
    assert recorded == [(FS.size(path), f"mtime:{FS.info(path)['mtime']}")]
    lake_fs = open_lake(settings)
    file = LakeFile(key_of(path), path, path, FS.size(path), f"mtime:{FS.info(path)['mtime']}")
    entry = ManifestEntry(key_of(path), FS.size(path), 5, None, file.version, 1)
    assert content_difference(lake_fs, None, file, entry) == (None, None)  # type: ignore[arg-type]


# -------------------------------------------------- contract 3: what the loader lists


def test_high_water_mark_covers_the_restate_horizon(settings: Settings) -> None:
    newest = "/lake/bars/interval_s=60/date=2024-11-26/a.parquet"
    today = date(2025, 1, 1)
    assert high_water_mark(None, settings, today) is None  # nothing loaded: list everything
    assert high_water_mark(newest, settings, today) == date(2024, 11, 24)  # 1h horizon + 1 day
    longer = settings.model_copy(update={"restate_horizon": 3 * 86400, "load_lookback_days": 0})
    assert high_water_mark(newest, longer, today) == date(2024, 11, 23)
    # a far-future partition cannot hide the present
    future = "/lake/bars/interval_s=60/date=2099-01-01/a.parquet"
    assert high_water_mark(future, settings, today) == date(2024, 12, 30)


def test_listing_touches_only_partitions_at_or_after_the_high_water_mark(
    settings: Settings, lake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = date(2024, 10, 1)
    for n in range(40):  # 40 old days, loaded
        write_bars(FS, lake, bar_rows(1, start=T0.replace(month=10, day=1) + timedelta(days=n)))
    assert load(settings, progress=False).files_loaded == 40
    newest = start + timedelta(days=39)
    write_bars(FS, lake, bar_rows(2, start=T0.replace(month=10, day=1) + timedelta(days=41)))
    counting = CountingLocalFS(auto_mkdir=True)
    monkeypatch.setattr(
        "flows.warehouse.loader.open_lake",
        lambda s: Lake(counting, counting._strip_protocol(s.lake_url), "file"),
    )

    summary = load(settings, progress=False)

    assert (summary.files_loaded, summary.files_found, summary.files_unchanged) == (1, 4, 3)
    listed_days = sorted(p.rsplit("date=", 1)[1] for p in counting.listed if "date=" in p)
    hwm = newest - timedelta(days=2)
    assert listed_days == [
        d.isoformat() for d in (hwm, hwm + timedelta(days=1), newest, newest + timedelta(days=2))
    ]
    # folder names are listed once per level, never the old partitions' contents
    assert counting.listed.count(day_folder(lake, "x").rsplit("/", 1)[0]) == 1


def test_a_backfill_of_old_dates_is_loaded_with_since(settings: Settings, lake: str) -> None:
    write_bars(FS, lake, bar_rows(1, start=T0 + timedelta(days=30)))
    load(settings, progress=False)
    old = write_bars(FS, lake, bar_rows(2, start=T0 - timedelta(days=300)), name="backfill")

    assert load(settings, progress=False).nothing_new  # below the high-water mark
    summary = load(settings, progress=False, since=(T0 - timedelta(days=300)).date())
    assert summary.files_loaded == 1
    assert query(
        settings,
        "SELECT count(*) FROM bronze.bars WHERE _source_file = ?".replace("?", f"'{key_of(old)}'"),
    ) == [(2,)]


def test_a_run_commits_at_most_max_batches(settings: Settings, lake: str) -> None:
    write_many(FS, lake, 5)

    first = load(settings, batch_files=2, max_batches=2, progress=False)
    second = load(settings, batch_files=2, max_batches=2, progress=False)

    assert (first.files_loaded, first.batches, first.files_left) == (4, 2, 1)
    assert (second.files_loaded, second.files_left) == (1, 0)


def test_an_older_warehouse_is_migrated_in_place(settings: Settings, lake: str) -> None:
    path = write_bars(FS, lake, bar_rows(2), name="old")
    settings.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(settings.duckdb_path)) as con:  # the tables as they were
        con.execute("CREATE SCHEMA bronze")
        con.execute(
            "CREATE TABLE bronze.load_manifest (path VARCHAR, target_table VARCHAR, "
            "size_bytes BIGINT, row_count BIGINT, batch_id VARCHAR, loaded_at TIMESTAMPTZ, "
            "PRIMARY KEY (path))"
        )
        con.execute(
            "INSERT INTO bronze.load_manifest VALUES (?, 'bars', ?, 2, 'b0', now())",
            [path, FS.size(path)],
        )
        # its rows, recorded under the URL, as loaders before the lake keys did
        con.execute(
            f"CREATE TABLE bronze.bars AS SELECT {', '.join(BAR_COLUMN_NAMES)}, "
            "?::VARCHAR AS _source_file, now() AS _loaded_at FROM read_parquet(?)",
            [path, path],
        )
    new = write_bars(FS, lake, bar_rows(1, symbol="NEW"), name="new")

    summary = load(settings, progress=False)

    # old: migrated to its key, and the same rows (no MD5 was recorded then)
    assert (summary.files_loaded, summary.files_unchanged) == (1, 1)
    assert query(
        settings, "SELECT _source_file, _load_seq FROM bronze.bars ORDER BY _source_file"
    ) == [(key_of(new), 1), (key_of(path), None), (key_of(path), None)]
    assert query(settings, "SELECT path FROM bronze.load_manifest ORDER BY path") == [
        (key_of(new),),
        (key_of(path),),
    ]
    assert query(settings, "SELECT manifest_format FROM bronze.load_state") == [(2,)]
    load(settings, progress=False)  # idempotent
