"""The Parquet side of the lake (contract 2): schemas, atomic file writes, the Bytewax sink.

Files are immutable and appear atomically: a local file is written under a
hidden temporary name and renamed; an S3 object only exists once its upload
completed. Names are unique (time, sink partition, random suffix), so a replay
after a crash adds files and never overwrites one. A failing object store is
retried with backoff for as long as it takes: the dataflow waits (back
pressure) rather than skipping a batch.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
import zlib
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from flows.lakefs import BARS_PREFIX, LATE_PREFIX, Lake

log = logging.getLogger(__name__)

TS = pa.timestamp("us", tz="UTC")

BAR_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("interval_s", pa.int32(), nullable=False),
        pa.field("window_start", TS, nullable=False),
        pa.field("window_end", TS, nullable=False),
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("vwap", pa.float64(), nullable=True),
        pa.field("trade_count", pa.int64(), nullable=False),
        pa.field("first_ts", TS, nullable=False),
        pa.field("last_ts", TS, nullable=False),
        pa.field("revision", pa.int32(), nullable=False),
        pa.field("emitted_at", TS, nullable=False),
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
        pa.field("received_at", TS, nullable=False),
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
        self.name_tag = name_tag
        self.retry_cap_s = retry_cap_s
        self.failed_attempts = 0  # store failures survived so far (retried, never skipped)

    def write_bars(self, rows: list[BarRow], interval_s: int) -> list[str]:
        """One file per `date` partition of window_start; returns the paths written."""
        by_date: dict[str, list[tuple]] = defaultdict(list)
        for row in rows:
            by_date[_date_of(row[2])].append(row)
        return [
            self._write(
                self.lake.path(BARS_PREFIX, f"interval_s={interval_s}", f"date={date}"),
                table_of(part, BAR_SCHEMA),
            )
            for date, part in sorted(by_date.items())
        ]

    def write_late(self, rows: list[LateRow]) -> list[str]:
        by_date: dict[str, list[tuple]] = defaultdict(list)
        for row in rows:
            by_date[_date_of(row[1])].append(row)
        return [
            self._write(self.lake.path(LATE_PREFIX, f"date={date}"), table_of(part, LATE_SCHEMA))
            for date, part in sorted(by_date.items())
        ]

    def _write(self, folder: str, table: pa.Table) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{self.name_tag}-{uuid.uuid4().hex[:12]}.parquet"
        path = f"{folder}/{name}"
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        delay = 0.5
        attempt = 1
        while True:
            try:
                self._put_atomically(folder, name, data)
                return path
            except Exception as exc:  # noqa: BLE001 - any store failure is retried, never skipped
                self.failed_attempts += 1
                log.warning(
                    "lake write of %s failed (attempt %d): %s; retrying in %.1fs",
                    path,
                    attempt,
                    exc,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, self.retry_cap_s)
                attempt += 1

    def _put_atomically(self, folder: str, name: str, data: bytes) -> None:
        fs = self.lake.fs
        final = f"{folder}/{name}"
        if self.lake.is_local:
            fs.makedirs(folder, exist_ok=True)
            tmp = f"{folder}/.{name}.tmp"
            with fs.open(tmp, "wb") as fh:
                fh.write(data)
            fs.mv(tmp, final)  # a rename inside one folder: atomic
        else:
            fs.pipe_file(final, data)  # an object store shows an object only once complete


class _SinkPartition(StatefulSinkPartition[tuple, tuple]):
    """Buffers bar and late rows; flushes by row count or age, whichever comes first.

    The buffer is part of the recovery snapshot, so a row accepted by the sink
    is written even if the worker dies before the next flush.
    """

    def __init__(
        self,
        writer: LakeWriter,
        interval_s: int,
        flush_rows: int,
        flush_interval: float,
        resume: tuple | None,
    ):
        self._writer = writer
        self._interval_s = interval_s
        self._flush_rows = flush_rows
        self._flush_interval = flush_interval
        self._bars: list[tuple] = list(resume[0]) if resume else []
        self._late: list[tuple] = list(resume[1]) if resume else []
        self._oldest: float | None = time.monotonic() if (self._bars or self._late) else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._age_flusher, daemon=True)
        self._timer.start()

    def write_batch(self, items: list[tuple]) -> None:
        with self._lock:
            for kind, row in items:
                (self._bars if kind == "bar" else self._late).append(row)
            if items and self._oldest is None:
                self._oldest = time.monotonic()
            if len(self._bars) + len(self._late) >= self._flush_rows or self._too_old():
                self._flush()

    def _too_old(self) -> bool:
        return self._oldest is not None and time.monotonic() - self._oldest >= self._flush_interval

    def _age_flusher(self) -> None:
        # Without new items write_batch is not called; the age bound must hold anyway.
        while not self._stop.wait(min(1.0, self._flush_interval / 2)):
            with self._lock:
                if self._too_old():
                    self._flush()

    def _flush(self) -> None:
        if self._bars:
            self._writer.write_bars(self._bars, self._interval_s)
            self._bars = []
        if self._late:
            self._writer.write_late(self._late)
            self._late = []
        self._oldest = None

    def snapshot(self) -> tuple:
        with self._lock:
            return (list(self._bars), list(self._late))

    def close(self) -> None:
        self._stop.set()
        self._timer.join(timeout=5)
        with self._lock:
            self._flush()


class LakeSink(FixedPartitionedSink[tuple, tuple]):
    """`(symbol, ("bar"|"late", row))` items into Parquet files; partitioned by symbol."""

    def __init__(
        self,
        lake: Lake,
        *,
        interval_s: int,
        flush_rows: int,
        flush_interval: float,
        partitions: int = 4,
    ):
        self._lake = lake
        self._interval_s = interval_s
        self._flush_rows = flush_rows
        self._flush_interval = flush_interval
        self._partitions = partitions

    def list_parts(self) -> list[str]:
        return [f"p{i}" for i in range(self._partitions)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())  # stable across processes, unlike hash()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _SinkPartition:
        return _SinkPartition(
            LakeWriter(self._lake, name_tag=for_part),
            self._interval_s,
            self._flush_rows,
            self._flush_interval,
            resume_state,
        )
