"""No file left behind: the loader follows each source partition's chain of bar files.

A slow partition writes files into a `date=` folder older than the ones a scheduled
load lists (after an outage, its bars are days old when they are written). The
files are real: a partition's bar state (`PartitionBars`) seals the batches and the
lake sink's writer writes them, so the links are the ones the stream writes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import s3fs
from helpers import run_stockpipe, run_stockpipe_json
from test_load_s3 import KEY, SECRET, s3_endpoint  # noqa: F401 - the moto server fixture

from flows.ingest.ticks import Tick
from flows.lake.store import BARS_PREFIX, open_lake
from flows.ops.status import warehouse_status
from flows.settings import Settings, load_settings
from flows.stream.bars import FLUSH, TICK, BarRules, FileBatch, FileRules, PartitionBars, Record
from flows.stream.lake_sink import BAR_SCHEMA, LakeWriter, batch_name
from flows.warehouse import load, load_files, pending_files

TOPIC = "ticks"
TODAY = datetime.now(UTC).date()
NEW = TODAY - timedelta(days=1)  # the newest date the warehouse has: what the loader lists
OLD = NEW - timedelta(days=5)  # outside the listed window (restate horizon + 1 day lookback)
BARS = ", ".join(BAR_SCHEMA.names)


class Crash(RuntimeError):
    pass


def ms(day: date, hour: int, minute: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC).timestamp() * 1000)


class Partition:
    """One source partition: records in offset order into its bar state, batches out."""

    def __init__(self, partition: int):
        self.state = PartitionBars(BarRules(), FileRules(10**6, 10**12), TOPIC, partition)
        self.offset = 0
        self.log = ms(TODAY, 0)

    def ticks(self, *at: int, symbol: str = "COIN") -> None:
        for n, ts in enumerate(at):
            self._record(TICK, Tick(symbol, ts, 100.0 + n, 1.0, f"{symbol}-{ts}"))

    def flush(self) -> FileBatch:
        """A flush marker: every open window closes and the batch is sealed."""
        sealed = self._record(FLUSH)
        assert len(sealed) == 1
        return sealed[0]

    def _record(self, kind: int, tick: Tick | None = None) -> list[FileBatch]:
        self.log += 1
        sealed = self.state.on_record(Record(self.offset, self.log, kind, tick))
        self.offset += 1
        return sealed


@pytest.fixture(params=["local", "s3"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """A local-folder lake, and a bucket on a real S3 endpoint (moto server on loopback)."""
    warehouse = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    if request.param == "local":
        return load_settings(lake_url=str(tmp_path / "lake"), warehouse=warehouse)
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=endpoint, key=KEY, secret=SECRET).mkdir(bucket)
    return load_settings(
        lake_url=f"s3://{bucket}/prod",
        s3_endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        warehouse=warehouse,
    )


@pytest.fixture
def lake(settings: Settings):
    """A lake with a loaded partition 0 and a partition 1 whose chain began on OLD,
    then batches B (bars of OLD) and C (bars of OLD and NEW) of partition 1, not loaded yet."""
    writer = LakeWriter(open_lake(settings))
    fast, slow = Partition(0), Partition(1)
    fast.ticks(ms(NEW, 15), ms(NEW, 15, 1), symbol="MARA")
    a = slow.ticks(ms(OLD, 15)) or slow.flush()
    batches = {"fast": fast.flush(), "A": a}
    for batch in batches.values():
        writer.write_batch(batch)
    first = load(settings, progress=False)
    assert first.files_loaded == 2  # nothing was loaded: every date= folder is listed

    slow.ticks(ms(OLD, 16), ms(OLD, 16, 1))
    batches["B"] = slow.flush()  # the slow partition's bars, days old when written
    slow.ticks(ms(OLD, 17), ms(NEW, 14))
    batches["C"] = slow.flush()  # a batch with bars of both dates
    for name in "BC":
        writer.write_batch(batches[name])
    assert batches["B"].follows[:2] == (a.first_offset, a.last_offset)
    return batches


def bronze(settings: Settings, where: str = "true") -> list[tuple]:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        return sorted(con.execute(f"SELECT {BARS} FROM bronze.bars WHERE {where}").fetchall())


def rows_of(*batches: FileBatch) -> list[tuple]:
    """The rows the sealed batches hold, as the warehouse returns them (straight from the
    batches, not from the files)."""
    stamps = [pa.types.is_timestamp(field.type) for field in BAR_SCHEMA]
    return sorted(
        tuple(
            datetime.fromtimestamp(v / 1e6, UTC) if ts else v
            for v, ts in zip(row, stamps, strict=True)
        )
        for batch in batches
        for row in batch.bars
    )


def old_files(settings: Settings, batch: FileBatch) -> list[str]:
    lake = open_lake(settings)
    lake.fs.invalidate_cache()
    return sorted(
        lake.fs.glob(lake.path(BARS_PREFIX, "interval_s=60", f"date={OLD}", batch_name(batch)))
    )


def test_a_scheduled_load_finds_files_written_into_old_partitions_by_their_links(settings, lake):
    assert len(old_files(settings, lake["B"])) == 1 and len(old_files(settings, lake["C"])) == 1
    summary = load(settings, progress=False)
    # listed: C's file of NEW (and the fast partition's, loaded); linked: C's file of OLD, B's
    assert (summary.files_loaded, summary.files_linked, summary.gaps) == (3, 2, ())
    assert bronze(settings) == rows_of(*lake.values())
    # the manifest records each file's batch, so status can see the chain: no gap
    gaps = warehouse_status(settings)[0].offset_gaps
    assert gaps == []
    assert load(settings, progress=False).nothing_new


def test_a_crash_between_batches_leaves_nothing_the_next_run_cannot_find(settings, lake):
    def crash_second() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise Crash("the load dies before its second batch commits")

    calls: list[int] = []
    with pytest.raises(Crash):
        load(settings, batch_files=1, progress=False, before_commit=crash_second)
    assert len(bronze(settings)) == len(rows_of(lake["fast"], lake["A"], lake["B"]))
    again = load(settings, progress=False)
    assert again.files_loaded == 2  # C's two files: B committed before the crash
    assert bronze(settings) == rows_of(*lake.values())


def test_airflow_lists_the_linked_files_and_loads_them(settings, lake):
    urls = pending_files(settings)
    assert len(urls) == 3 and sum(f"date={OLD}" in u for u in urls) == 2
    assert urls[-1].endswith(f"date={NEW}/{batch_name(lake['C'])}")  # the linker comes last
    assert load_files(settings, urls).files_loaded == 3
    assert bronze(settings) == rows_of(*lake.values())


def test_a_file_missing_from_the_chain_is_an_offset_gap_in_the_load_and_in_status(settings, lake):
    [b_file] = old_files(settings, lake["B"])
    fs = open_lake(settings).fs
    kept = fs.cat_file(b_file)
    fs.rm(b_file)  # lost: deleted by hand, or a bucket lifecycle rule
    result = run_stockpipe(settings, "load", "--no-progress")
    assert result.returncode == 0, result.stdout
    b = lake["B"]
    assert f"offset gap: {TOPIC}[1]: offsets {b.first_offset}..{b.last_offset} missing" in (
        result.stdout
    )
    assert batch_name(b) in result.stdout
    # everything else loaded: C's two files
    assert bronze(settings) == rows_of(lake["fast"], lake["A"], lake["C"])
    [gap] = warehouse_status(settings)[0].offset_gaps
    assert (gap.topic, gap.partition) == (TOPIC, 1)
    assert (gap.after_offset, gap.through_offset) == (lake["A"].last_offset, b.last_offset)
    assert gap.before_file.endswith(batch_name(lake["C"]))
    status = run_stockpipe(
        settings.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:9"}), "status"
    )
    assert f"{TOPIC}[1]: offsets {lake['A'].last_offset + 1}..{b.last_offset} not loaded" in (
        status.stdout
    ), status.stdout

    fs.pipe_file(b_file, kept)  # restored from a backup: a backfill of its date loads it
    assert load(settings, since=OLD, progress=False).files_loaded == 1
    assert bronze(settings) == rows_of(*lake.values())
    assert warehouse_status(settings)[0].offset_gaps == []


def test_load_json_and_status_check_name_the_offset_gap(settings, lake):
    [b_file] = old_files(settings, lake["B"])
    fs = open_lake(settings).fs
    kept = fs.cat_file(b_file)
    fs.rm(b_file)
    a, b, c = lake["A"], lake["B"], lake["C"]
    folder = f"{BARS_PREFIX}/interval_s=60"

    code, doc, err = run_stockpipe_json(settings, "load")

    assert code == 0, err
    # C's file of NEW (listed) names B's file of OLD, which the lake lacks
    assert doc["offset_gaps"] == [
        {
            "topic": TOPIC,
            "partition": 1,
            "first_offset": b.first_offset,
            "last_offset": b.last_offset,
            "key": f"{folder}/date={OLD}/{batch_name(b)}",
            "named_by": f"{folder}/date={NEW}/{batch_name(c)}",
            "detail": f"{TOPIC}[1]: offsets {b.first_offset}..{b.last_offset} missing from the "
            f"lake: {folder}/date={OLD}/{batch_name(b)} is named by "
            f"{folder}/date={NEW}/{batch_name(c)} but not there",
        }
    ]
    assert (doc["files_loaded"], doc["files_linked"], doc["rows"]) == (2, 1, len(rows_of(c)))
    assert bronze(settings) == rows_of(lake["fast"], a, c)

    offline = settings.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:9"})
    code, doc, err = run_stockpipe_json(offline, "status", "--check")
    assert code == 3
    assert doc["check"]["failed"] == ["broker", "stream", "offset_gaps"]
    [gap] = doc["warehouse"]["offset_gaps"]
    assert (gap["after_offset"], gap["through_offset"]) == (a.last_offset, b.last_offset)
    [check] = [x for x in doc["check"]["checks"] if x["name"] == "offset_gaps"]
    assert check["detail"].startswith(
        f"1 gap(s): {TOPIC}[1] offsets {a.last_offset + 1}..{b.last_offset} not loaded"
    )

    fs.pipe_file(b_file, kept)
    code, doc, _ = run_stockpipe_json(settings, "load", "--since", OLD.isoformat())
    assert (code, doc["files_loaded"], doc["offset_gaps"]) == (0, 1, [])
    code, doc, _ = run_stockpipe_json(offline, "status", "--check")
    assert doc["check"]["failed"] == ["broker", "stream"]
