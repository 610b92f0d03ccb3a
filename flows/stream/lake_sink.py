"""The Parquet side of the lake (contract 2): schemas, atomic file writes, the Bytewax sink.

Files appear atomically: a local file is written under a hidden temporary name
and renamed; an S3 object only exists once its upload completed. A file is
named after what it holds, the source topic, partition and offset range of the
records that caused its rows (`flows.stream.bars.FileBatch`), and the bar state cuts
batches from the log alone, so a replay after a crash rewrites the same file
with the same rows instead of adding a copy (Kafka Connect's S3 sink works the
same way). Rows inside a file are sorted, so the bytes are the same too.

A transient store error is retried with backoff for as long as it takes (the
dataflow waits rather than skipping a batch); a permanent one (no bucket,
access denied, a path through a file) stops the worker at once with a message
naming the URL: recovery makes that safe (`flows.lake.retry`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter, Histogram

from flows.lake.batches import META_KEY, Follows, encode_link, file_name
from flows.lake.retry import put_with_retry
from flows.lake.store import BARS_PREFIX, LATE_PREFIX, Lake
from flows.stream.bars import DAY_US, FileBatch

log = logging.getLogger(__name__)

TS = pa.timestamp("us", tz="UTC")

FILES_WRITTEN = Counter(
    "stockpipe_lake_files_written_total", "Parquet files written to the lake, by kind.", ["kind"]
)
ROWS_WRITTEN = Counter(
    "stockpipe_lake_rows_written_total",
    "Rows in the Parquet files written to the lake, by kind (bars: every revision).",
    ["kind"],
)
BAR_LATENCY = Histogram(
    "stockpipe_bar_latency_seconds",
    "Wall-clock time from a window's end until its first bar (revision 0) is in the lake: "
    "the live pipeline's latency (a replay of old ticks reads as very late).",
    buckets=(1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300, 900, 3600),
)
WRITE_SECONDS = Histogram(
    "stockpipe_lake_write_seconds",
    "Time to encode and write one lake file, retries included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

BAR_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("interval_s", pa.int32(), nullable=False),
        pa.field("window_start", TS, nullable=False),
        pa.field("window_end", TS, nullable=False),
        pa.field("open", pa.float64(), nullable=True),
        pa.field("high", pa.float64(), nullable=True),
        pa.field("low", pa.float64(), nullable=True),
        pa.field("close", pa.float64(), nullable=True),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("vwap", pa.float64(), nullable=True),
        pa.field("trade_count", pa.int64(), nullable=False),
        pa.field("first_ts", TS, nullable=False),
        pa.field("last_ts", TS, nullable=False),
        pa.field("revision", pa.int32(), nullable=False),
        pa.field("emitted_at", TS, nullable=False),
        # Trade conditions (contract 1): ticks kept out of some price of the bar, and ticks
        # with a condition code no feed mapping knows (counted as the settings say).
        pa.field("excluded_count", pa.int64(), nullable=False),
        pa.field("unmapped_count", pa.int64(), nullable=False),
        # Ticks of a vendor's 1-minute candle (the outage backfill's): > 0 marks a bar made
        # from a candle, not from trades.
        pa.field("candle_count", pa.int64(), nullable=False),
    ]
)

LATE_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=True),
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=True),
        pa.field("window_start", TS, nullable=False),
        pa.field("watermark", TS, nullable=False),
        pa.field("received_at", TS, nullable=False),  # log time of the tick's record
    ]
)

# Row tuples in schema order; timestamps as integer microseconds since the epoch.
BarRow = tuple
LateRow = tuple


def table_of(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
    return pa.Table.from_arrays(
        [pa.array(col, type=field.type) for col, field in zip(columns, schema, strict=True)],
        schema=schema,
    )


def _date_of(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%d")


class LakeWriter:
    """Writes row batches as Parquet files into the lake layout of contract 2."""

    def __init__(self, lake: Lake, name_tag: str = "w", retry_cap_s: float = 30.0):
        self.lake = lake
        self.name_tag = name_tag  # names files written outside the stream (write_bars)
        self.retry_cap_s = retry_cap_s
        self.failed_attempts = 0  # store failures so far (transient ones are retried)

    def write_bars(self, rows: list[BarRow], interval_s: int | None = None) -> list[str]:
        """Bar rows from outside the stream (tests, benchmarks, backfills), one file per date.

        Named after a hash of their content, so writing the same rows twice
        gives the same file.
        """
        return self.write_batch(self._manual_batch(rows, []))

    def write_late(self, rows: list[LateRow]) -> list[str]:
        return self.write_batch(self._manual_batch([], rows))

    def _manual_batch(self, bars: list[tuple], late: list[tuple]) -> FileBatch:
        digest = hashlib.blake2b(repr((bars, late)).encode(), digest_size=8).hexdigest()
        return FileBatch(f"{self.name_tag}-{digest}", 0, 0, 0, bars, late)

    def write_batch(self, batch: FileBatch) -> list[str]:
        """The files of one sealed micro-batch: one per `date` partition and kind."""
        name = batch_name(batch)
        paths = []
        groups = _by_date(batch.bars, ts_col=2, interval_col=1)
        follows = _follows(batch)
        for interval_s, date, rows in groups:
            # every bar file names its batch's other dates and the batch it follows
            dates = [d for i, d, _ in groups if i == interval_s]
            table = table_of(rows, BAR_SCHEMA)
            paths.append(self.write_bar_table(table, name, interval_s, date, dates, follows))
            now_us = time.time() * 1e6
            for row in rows:
                if row[13] == 0:  # revision 0: the first time the window is in the lake
                    BAR_LATENCY.observe(max(now_us - row[3], 0.0) / 1e6)
        for _, date, rows in _by_date(batch.late, ts_col=1, interval_col=None):
            folder = self.lake.path(LATE_PREFIX, f"date={date}")
            paths.append(self._write(folder, name, table_of(rows, LATE_SCHEMA)))
            FILES_WRITTEN.labels("late").inc()
            ROWS_WRITTEN.labels("late").inc(len(rows))
        return paths

    def write_bar_table(
        self,
        table: pa.Table,
        name: str,
        interval_s: int,
        date: str,
        dates: list[str] | None = None,
        follows: Follows | None = None,
    ) -> str:
        """One bar file: `table` (BAR_SCHEMA, every row of `interval_s` and UTC `date`) as
        `name` in its partition folder. `dates` are its batch's dates (just `date` when
        it is alone), `follows` the batch it follows. The stream's batches and the
        benchmarks that build a lake from Arrow columns both write through here."""
        folder = self.lake.path(BARS_PREFIX, f"interval_s={interval_s}", f"date={date}")
        link = {META_KEY: encode_link(dates or [date], follows)}
        path = self._write(folder, name, table.replace_schema_metadata(link))
        FILES_WRITTEN.labels("bars").inc()
        ROWS_WRITTEN.labels("bars").inc(table.num_rows)
        return path

    def _write(self, folder: str, name: str, table: pa.Table) -> str:
        started = time.perf_counter()
        path = f"{folder}/{name}"
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()

        def attempt() -> None:
            try:
                self._put_atomically(folder, name, data)
            except Exception:
                self.failed_attempts += 1  # counted as they happen, for lag and tests
                raise

        put_with_retry(attempt, self.lake.url(path), retry_cap_s=self.retry_cap_s)
        WRITE_SECONDS.observe(time.perf_counter() - started)
        return path

    def _put_atomically(self, folder: str, name: str, data: bytes) -> None:
        fs = self.lake.fs
        final = f"{folder}/{name}"
        if self.lake.is_local:
            fs.makedirs(folder, exist_ok=True)
            tmp = f"{folder}/.{name}.tmp"
            with fs.open(tmp, "wb") as fh:
                fh.write(data)
            fs.mv(tmp, final)  # a rename inside one folder: atomic, and replaces a replay's copy
        else:
            fs.pipe_file(final, data)  # an object store shows an object only once complete


def batch_name(batch: FileBatch) -> str:
    """`<topic>+<partition>+<first offset>-<last offset>.parquet`: what the file holds."""
    return file_name(batch.topic, batch.partition, batch.first_offset, batch.last_offset)


def _follows(batch: FileBatch) -> Follows | None:
    if batch.follows is None:
        return None
    first, last, days = batch.follows
    return Follows(first, last, tuple(_date_of(day * DAY_US) for day in days))


def _by_date(rows: list[tuple], ts_col: int, interval_col: int | None):
    """(interval, date, rows) groups of rows by the UTC date of `ts_col`, in date order."""
    if not rows:
        return []
    days = [row[ts_col] // DAY_US for row in rows]
    intervals = [row[interval_col] for row in rows] if interval_col is not None else [None]
    first, last = min(days), max(days)
    if first == last and min(intervals) == max(intervals):  # the usual case: one group
        return [(intervals[0], _date_of(first * DAY_US), rows)]
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for row, day in zip(rows, days, strict=True):
        interval = row[interval_col] if interval_col is not None else None
        groups[(day, interval)].append(row)
    return [(k[1], _date_of(k[0] * DAY_US), v) for k, v in sorted(groups.items(), key=_day_key)]


def _day_key(item: tuple) -> int:
    return item[0][0]


class _SinkPartition(StatelessSinkPartition[tuple[str, FileBatch]]):
    def __init__(self, writer: LakeWriter):
        self._writer = writer

    def write_batch(self, items: list[tuple[str, FileBatch]]) -> None:
        for _key, batch in items:
            paths = self._writer.write_batch(batch)
            log.debug("wrote %s", paths)


class LakeSink(DynamicSink[tuple[str, FileBatch]]):
    """Sealed micro-batches (`flows.stream.bars.FileBatch`) into Parquet files, written at once.

    The sink holds no state: the rows of a batch not sealed yet live in the bar
    state's snapshot, and a sealed batch is written before its epoch ends.
    """

    def __init__(self, lake: Lake, retry_cap_s: float = 30.0):
        self._lake = lake
        self._retry_cap_s = retry_cap_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SinkPartition:
        return _SinkPartition(LakeWriter(self._lake, self._retry_cap_s))
