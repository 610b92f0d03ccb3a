"""The fault campaign's lake checks (`flows.tooling.chaos`), fed crafted lake contents.

No broker: real Parquet files are written with the stream's own lake writer into
a temporary folder (and, for the file-version check, into a versioned bucket of
a moto S3 server in this process), read back the way the campaign reads them,
and handed to the pure check functions. Each test says what the lake holds and
what the checks must find, so a check that compares too little (a column left
out, whole rows instead of keys, bytes instead of rows) fails here in seconds.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.lake.store import Lake
from flows.stream.bars import FileBatch
from flows.stream.lake_sink import BAR_SCHEMA, LATE_SCHEMA, LakeWriter, batch_name, table_of
from flows.tooling import chaos

T0 = 1_741_095_000_000  # 2025-03-04T13:30:00Z, a window start (ms)
MIN = 60_000
TOPIC = "chaos.ticks"


def bar(
    symbol: str,
    ws: int,
    revision: int,
    emitted: int,
    prices: tuple[float, ...] = (10.0, 12.0, 9.0, 11.0),
    volume: float = 30.0,
    trades: int = 3,
) -> tuple:
    """A bar row in the lake schema (timestamps in microseconds); ws/emitted in ms."""
    o, h, low, c = prices
    return (
        symbol, 60, ws * 1000, (ws + MIN) * 1000, o, h, low, c, volume, 10.5, trades,
        (ws + 1_000) * 1000, (ws + 50_000) * 1000, revision, emitted * 1000, 1, 0, 0,
    )  # fmt: skip


def late(symbol: str, ts: int, price: float, received: int, tid: str = "x") -> tuple:
    ws = ts - ts % MIN
    return (symbol, ts * 1000, price, 1.0, tid, "chaos", ws * 1000, ws * 1000, received * 1000)


def clean_batches() -> list[FileBatch]:
    """What a healthy stream writes: restatements in later files, two late rows in one."""
    return [
        FileBatch(TOPIC, 0, 0, 99, [bar("COIN", T0, 0, T0 + 66_000), bar("MARA", T0, 0, T0 + 66_100)], []),
        FileBatch(
            TOPIC, 0, 100, 180,
            [
                bar("COIN", T0, 1, T0 + 70_000, trades=4, volume=40.0),
                bar("COIN", T0 + MIN, 0, T0 + 126_000),
            ],
            # a too-late tick and its duplicate read in the same log millisecond: two rows
            [late("COIN", T0 - 7_200_000, 9.5, T0 + 71_000)] * 2,
        ),
        FileBatch(TOPIC, 1, 0, 40, [bar("COIN", T0, 2, T0 + 80_000, trades=5, volume=50.0)], []),
    ]  # fmt: skip


def write(lake: Lake, batches: list[FileBatch]) -> None:
    writer = LakeWriter(lake)
    for batch in batches:
        writer.write_batch(batch)


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    fs = fsspec.filesystem("file", auto_mkdir=True)
    return Lake(fs, str(tmp_path / "lake"), "file")


def read(lake: Lake) -> tuple[list, list]:
    return chaos.read_lake(lake.fs, lake.root)


def counts(findings: dict[str, list]) -> dict[str, int]:
    return {name: len(found) for name, found in findings.items()}


NOTHING = {
    "held more than once": 0,
    "two contents": 0,
    "missing revision": 0,
    "rewritten file": 0,
    "rewritten bytes only": 0,
}


def expected_for(batches: list[FileBatch]) -> chaos.Expected:
    """The campaign's expected outcome that these batches' final bars and late rows satisfy."""
    final: dict[tuple, tuple] = {}
    for b in batches:
        for row in b.bars:
            key = (row[0], row[2] // 1000)
            if key not in final or row[13] > final[key][13]:
                final[key] = row
    bars = {}
    for key, r in final.items():
        bar = chaos.new_bar(r[11] // 1000)
        bar[chaos.B_LAST] = r[12] // 1000
        bar[chaos.B_OPEN], bar[chaos.B_CLOSE] = r[4], r[7]
        bar[chaos.B_HIGH], bar[chaos.B_LOW] = r[5], r[6]
        bar[chaos.B_VOLUME], bar[chaos.B_PV], bar[chaos.B_COUNT] = r[8], r[9] * r[8], r[10]
        bar[chaos.B_EXCLUDED], bar[chaos.B_UNMAPPED] = r[15], r[16]
        bars[key] = bar
    late_rows = Counter((r[0], r[1] // 1000, r[2]) for b in batches for r in b.late)
    return chaos.Expected(bars, set(), late_rows, 0, 0, 0)


# ----------------------------------------------------------------------------- a clean lake


def test_a_clean_lake_gives_no_finding(lake: Lake) -> None:
    batches = clean_batches()
    write(lake, batches)
    bar_rows, late_rows = read(lake)
    assert len(bar_rows) == 5 and len(late_rows) == 2
    assert counts(chaos.lake_findings(bar_rows, late_rows, {})) == NOTHING
    figures = chaos.compare(expected_for(batches), bar_rows, late_rows, {})
    assert figures["lost"] == figures["duplicated"] == 0
    assert figures["repeated_rows"] == figures["two_contents"] == 0
    assert figures["missing_revisions"] == figures["rewritten_files"] == 0
    assert figures["exact_pct"] == 100.0 and figures["late_match"]
    assert figures["mismatches"] == []


def test_a_replay_rewriting_the_same_files_with_the_same_rows_gives_no_finding(
    lake: Lake,
) -> None:
    batches = clean_batches()
    write(lake, batches)
    before = versions_of(lake)
    write(lake, batches)  # a replay: same names, same rows
    versions = merge(before, versions_of(lake))
    assert all(len(v) == 1 for v in versions.values())  # the same bytes, too
    assert counts(chaos.lake_findings(*read(lake), versions)) == NOTHING


# ----------------------------------------------------------------------------- held twice


def test_a_bar_repeated_under_another_file_name_with_only_emitted_at_changed_is_caught(
    lake: Lake,
) -> None:
    """The replay the old checks let through: same bar, other file, other emitted_at."""
    batches = clean_batches()
    original = batches[0].bars[0]
    replayed = (*original[:14], original[14] + 1_000, *original[15:])  # 1 ms later, only that
    assert [i for i, (a, b) in enumerate(zip(original, replayed, strict=True)) if a != b] == [14]
    copy = FileBatch(TOPIC, 0, 0, 98, [replayed], [])  # other offsets: another file name
    assert batch_name(copy) != batch_name(batches[0])
    write(lake, [*batches, copy])
    bar_rows, late_rows = read(lake)
    found = chaos.lake_findings(bar_rows, late_rows, {})
    assert counts(found) == {**NOTHING, "held more than once": 1, "two contents": 1}
    assert "('COIN', ('ts', 1741095000000000), 0)" in str(found["held more than once"][0])
    assert "['emitted_at'] differ" in str(found["two contents"][0])
    figures = chaos.compare(expected_for(batches), bar_rows, late_rows, {})
    assert figures["repeated_rows"] == 1 and figures["two_contents"] == 1
    # the final bars alone would not tell: the copy is an older revision, same trades
    assert figures["lost"] == figures["duplicated"] == 0 and figures["exact_pct"] == 100.0


def test_a_bar_copied_unchanged_into_another_file_is_held_more_than_once(lake: Lake) -> None:
    batches = clean_batches()
    copy = FileBatch(TOPIC, 1, 41, 60, [batches[1].bars[1]], [])
    write(lake, [*batches, copy])
    found = chaos.lake_findings(*read(lake), {})
    assert counts(found) == {**NOTHING, "held more than once": 1}


def test_a_bar_held_twice_in_one_file_is_held_more_than_once(lake: Lake) -> None:
    batches = clean_batches()
    twice = FileBatch(TOPIC, 0, 0, 99, [*batches[0].bars, batches[0].bars[0]], [])
    write(lake, [twice, *batches[1:]])
    found = chaos.lake_findings(*read(lake), {})
    assert counts(found) == {**NOTHING, "held more than once": 1}


def test_each_column_of_a_bar_counts_in_two_contents(lake: Lake) -> None:
    """A key held twice with any one column different (every schema column but the key)."""
    key_cols = {"symbol", "window_start", "revision"}
    original = clean_batches()[0].bars[0]
    for i, field in enumerate(BAR_SCHEMA):
        if field.name in key_cols:
            continue
        other = list(original)
        if isinstance(other[i], float):
            other[i] = other[i] + 0.5
        else:
            other[i] = other[i] + 1
        rows = [(dict(zip(BAR_SCHEMA.names, original, strict=True)), "a.parquet"),
                (dict(zip(BAR_SCHEMA.names, other, strict=True)), "b.parquet")]  # fmt: skip
        found = chaos.two_contents(rows)
        assert len(found) == 1, field.name
        assert f"[{field.name!r}] differ" in str(found[0]), found


def test_a_column_added_after_the_schema_counts_in_two_contents(tmp_path: Path) -> None:
    """More columns may follow the contract's (the condition counts): they are compared too."""
    fs = fsspec.filesystem("file", auto_mkdir=True)
    root = tmp_path / "lake"
    folder = root / "bars" / "interval_s=60" / "date=2025-03-04"
    folder.mkdir(parents=True)
    row = bar("COIN", T0, 0, T0 + 66_000)
    for name, source in (("a.parquet", "sim"), ("b.parquet", "replay")):
        table = table_of([row], BAR_SCHEMA).append_column("source", pa.array([source]))
        pq.write_table(table, folder / name)
    bar_rows, late_rows = chaos.read_lake(fs, str(root))
    found = chaos.lake_findings(bar_rows, late_rows, {})
    assert counts(found) == {**NOTHING, "held more than once": 1, "two contents": 1}
    assert "['source'] differ" in str(found["two contents"][0])


def test_a_late_row_copied_into_another_file_is_held_more_than_once(lake: Lake) -> None:
    batches = clean_batches()
    copy = FileBatch(TOPIC, 1, 41, 60, [], [batches[1].late[0]])
    write(lake, [*batches, copy])
    found = chaos.lake_findings(*read(lake), {})
    assert counts(found) == {**NOTHING, "held more than once": 1}


def test_a_too_late_tick_sent_again_later_is_a_row_of_its_own_not_a_copy(lake: Lake) -> None:
    """The same too-late tick read again at a later log time: late/ holds it once per read."""
    batches = clean_batches()
    again = FileBatch(TOPIC, 1, 41, 60, [], [late("COIN", T0 - 7_200_000, 9.5, T0 + 95_000)])
    write(lake, [*batches, again])
    bar_rows, late_rows = read(lake)
    assert counts(chaos.lake_findings(bar_rows, late_rows, {})) == NOTHING
    figures = chaos.compare(expected_for([*batches, again]), bar_rows, late_rows, {})
    assert figures["late_match"] and figures["late_rows"] == 3


# ----------------------------------------------------------------------------- lost rows


def test_a_missing_revision_is_caught(lake: Lake) -> None:
    """Revision 1 of COIN's first window never reached the lake; 0 and 2 did."""
    batches = clean_batches()
    batches[1] = batches[1]._replace(bars=[batches[1].bars[1]])
    write(lake, batches)
    bar_rows, late_rows = read(lake)
    found = chaos.lake_findings(bar_rows, late_rows, {})
    assert counts(found) == {**NOTHING, "missing revision": 1}
    assert "revisions [1] missing" in str(found["missing revision"][0])
    figures = chaos.compare(expected_for(clean_batches()), bar_rows, late_rows, {})
    assert figures["missing_revisions"] == 1
    assert figures["lost"] == 0 and figures["exact_pct"] == 100.0  # the final bar is right


def test_a_missing_revision_zero_is_caught(lake: Lake) -> None:
    batches = clean_batches()
    batches[0] = batches[0]._replace(bars=[batches[0].bars[1]])  # COIN's revision 0 lost
    write(lake, batches)
    found = chaos.lake_findings(*read(lake), {})
    assert counts(found) == {**NOTHING, "missing revision": 1}
    assert "revisions [0] missing" in str(found["missing revision"][0])


def test_a_lost_final_revision_shows_as_lost_ticks_and_a_wrong_bar(lake: Lake) -> None:
    batches = clean_batches()
    want = expected_for(batches)
    write(lake, batches[:2])  # the file with COIN's revision 2 (5 trades) never written
    figures = chaos.compare(want, *read(lake), {})
    assert figures["lost"] == 1  # revision 1 holds 4 of the 5 trades
    assert figures["duplicated"] == 0
    assert figures["exact_pct"] == pytest.approx(100.0 * 2 / 3)
    assert figures["missing_revisions"] == 0


def test_a_late_row_missing_from_late_is_caught(lake: Lake) -> None:
    batches = clean_batches()
    want = expected_for(batches)
    batches[1] = batches[1]._replace(late=batches[1].late[:1])
    write(lake, batches)
    figures = chaos.compare(want, *read(lake), {})
    assert not figures["late_match"]
    assert (figures["late_rows"], figures["late_expected"]) == (1, 2)


# ----------------------------------------------------------------------------- file names


def versions_of(lake: Lake) -> dict[str, chaos.FileVersion]:
    """What every Parquet file of a local lake holds now."""
    return {
        path: chaos.file_version(lake.fs.cat_file(path))
        for path in lake.fs.find(lake.root)
        if path.endswith(".parquet")
    }


def merge(*listings: dict[str, chaos.FileVersion]) -> dict[str, list[chaos.FileVersion]]:
    """Listings taken one after the other as versions: a file's bytes changed, a new one."""
    out: dict[str, list[chaos.FileVersion]] = {}
    for listing in listings:
        for path, version in listing.items():
            seen = out.setdefault(path, [])
            if not seen or seen[-1].digest != version.digest:
                seen.append(version)
    return out


def test_the_same_file_name_rewritten_with_other_rows_is_caught(lake: Lake) -> None:
    """A replay that rewrote a file under its name with another emitted_at: only versions show it."""
    batches = clean_batches()
    write(lake, batches)
    before = versions_of(lake)
    first = batches[0]
    row = first.bars[0]
    changed = first._replace(bars=[(*row[:14], row[14] + 1_000, *row[15:]), first.bars[1]])
    assert batch_name(changed) == batch_name(first)
    write(lake, [changed])
    bar_rows, late_rows = read(lake)
    # the lake as it is now is consistent: one row per key, revisions complete
    assert counts(chaos.lake_findings(bar_rows, late_rows, {})) == NOTHING
    versions = merge(before, versions_of(lake))
    found = chaos.lake_findings(bar_rows, late_rows, versions)
    assert counts(found) == {**NOTHING, "rewritten file": 1}
    assert batch_name(first) in str(found["rewritten file"][0])
    figures = chaos.compare(expected_for(batches), bar_rows, late_rows, versions)
    assert figures["rewritten_files"] == 1 and figures["files_written_again"] == 1


def test_the_same_file_name_rewritten_with_a_row_less_is_caught(lake: Lake) -> None:
    batches = clean_batches()
    write(lake, batches)
    before = versions_of(lake)
    write(lake, [batches[0]._replace(bars=batches[0].bars[:1])])
    found, bytes_only = chaos.rewritten_files(merge(before, versions_of(lake)))
    assert len(found) == 1 and bytes_only == []
    assert "(2, 1 rows)" in str(found[0])


def test_the_same_rows_in_other_bytes_are_reported_apart_not_as_a_finding(lake: Lake) -> None:
    batches = clean_batches()
    write(lake, batches)
    before = versions_of(lake)
    path = next(p for p in before if batch_name(batches[0]) in p)
    buf = io.BytesIO()
    pq.write_table(pq.read_table(io.BytesIO(lake.fs.cat_file(path))), buf, compression="none")
    lake.fs.pipe_file(path, buf.getvalue())
    versions = merge(before, versions_of(lake))
    assert versions[path][0].digest != versions[path][1].digest
    found, bytes_only = chaos.rewritten_files(versions)
    assert found == [] and bytes_only == [path]


def test_late_files_rewritten_with_other_rows_are_caught(lake: Lake) -> None:
    batches = clean_batches()
    write(lake, batches)
    before = versions_of(lake)
    write(lake, [batches[1]._replace(late=[late("COIN", T0 - 7_200_000, 9.5, T0 + 71_001)] * 2)])
    found, _ = chaos.rewritten_files(merge(before, versions_of(lake)))
    assert len(found) == 1 and "/late/" in str(found[0])


def test_versions_are_read_from_a_versioned_bucket(tmp_path: Path) -> None:
    """The campaign's reader: a versioned moto bucket written through the stream's writer."""
    import boto3
    import s3fs

    store = chaos._Store()
    try:
        client = boto3.client(
            "s3", endpoint_url=store.endpoint, region_name="us-east-1",
            aws_access_key_id="k", aws_secret_access_key="s",
        )  # fmt: skip
        client.create_bucket(Bucket="lakeb")
        client.put_bucket_versioning(Bucket="lakeb", VersioningConfiguration={"Status": "Enabled"})
        fs = s3fs.S3FileSystem(endpoint_url=store.endpoint, key="k", secret="s")
        lake = Lake(fs, "lakeb/lake", "s3")
        batches = clean_batches()
        write(lake, batches)
        write(lake, batches[:1])  # the same bytes again
        first = batches[1]
        write(
            lake,
            [first._replace(bars=[first.bars[0], (*first.bars[1][:14], 1, *first.bars[1][15:])])],
        )
        versions = chaos.read_versions(client, "lakeb", "lake/")
        bar_rows, late_rows = chaos.read_lake(fs, "lakeb/lake")
        assert set(versions) == {p for _, p in bar_rows} | {p for _, p in late_rows}
        assert sorted(len(v) for v in versions.values()) == [1, 2, 2, 2]
        found = chaos.lake_findings(bar_rows, late_rows, versions)
        assert counts(found) == {**NOTHING, "rewritten file": 1}
        assert batch_name(first) in str(found["rewritten file"][0])
        assert "/bars/" in str(found["rewritten file"][0])
    finally:
        store.stop()


def test_late_schema_rows_read_back_whole() -> None:
    """The late rows the checks compare carry every column of the late/ schema."""
    row = late("COIN", T0, 1.0, T0 + 1)
    data = io.BytesIO()
    pq.write_table(table_of([row], LATE_SCHEMA), data)
    version = chaos.file_version(data.getvalue())
    assert list(version.rows[0]) == LATE_SCHEMA.names
