"""`stockpipe status [--json]`: where every part of the pipeline stands (contract 4).

Six parts, each read on its own and each allowed to be missing:

- broker: reachable or not (`KAFKA_BOOTSTRAP_SERVERS`, short timeout, one-line error);
- topic: per partition its low and end offsets and its log time (the timestamp
  of its last record, read by a consumer assigned to `end - 1`);
- stream: what Bytewax's recovery store under `STOCKPIPE_RECOVERY_DIR/<topic>`
  holds as committed: per partition the next offset the stream will read (its
  lag is `end - committed`), and the bar state of that partition (its log time,
  per symbol the max event time and the watermark, open windows, pending
  restatements, counters). Bytewax keeps source offsets there, not in a
  consumer group, so the usual lag tools see nothing (docs/operations.md);
- lake: the newest `date=` folder of `bars/` (only that folder is listed), its
  file count and its newest file;
- warehouse: the last load (its load sequence when the warehouse has the
  column, else its batch), manifest files, bronze rows; DuckDB is opened read
  only, a locked or absent file is reported as such;
- marts: the latest event time in `silver.fct_bars_1m` (window_start) and
  `gold.fct_bars_daily` (trade_date), or that a table does not exist yet.

Reading the recovery store (bytewax 0.21, one SQLite file per recovery
partition, `part-N.sqlite3`): `snaps(step_id, state_key, snap_epoch, ser_change)`
holds pickled snapshots (`ser_change` NULL when the state was discarded);
`exs(ex_num, worker_count, resume_epoch)` one row per execution and
`fronts(ex_num, worker_index, worker_frontier)` each worker's progress. The
epoch a new run would resume from is what Bytewax computes on start: for the
latest execution, the smallest over its workers of max(frontier, the
execution's resume epoch); the committed state of a key is then its snapshot
of the greatest epoch *below* that resume epoch (later rows belong to an
epoch not every worker finished, and would be thrown away on resume).
`commits(part_index, commit_epoch)` is only garbage-collection bookkeeping
(snapshots at or below it are pruned to the newest) and is reported, not used.

Exit code: 0 when the settings are valid, whatever part is missing or
unreachable (each part says so): without `--check`, status is a report. With
`--check` it is a health check too: `run_checks` judges the report (below,
"Checks") and the command exits 3 when a check failed. A bad setting stops it
like every other command (exit 2, one line).

Checks (`--check`; each limit a setting, or an option of the same name):

- broker: Kafka answers. topic: the tick topic exists (not checked without a broker).
- stream: the recovery store exists and holds a committed epoch.
- consumer_lag: no partition is more than STOCKPIPE_CHECK_MAX_LAG records
  (10000) behind its end offset (the topic's end minus the committed offset).
- log_time_lag: no partition's committed log time is more than
  STOCKPIPE_CHECK_MAX_LOG_TIME_LAG (5m) behind the wall clock. A running stream
  keeps it within seconds, quiet feed or not: it appends heartbeats to quiet
  partitions and reads them back, so this is how a stopped, stuck or backlogged
  stream shows.
- lake: the lake can be listed, and its newest bar file is at most
  STOCKPIPE_CHECK_MAX_LAKE_DELAY (10m) older than the newest tick the stream has
  read (the log time of the record that brought a symbol's newest event time);
  with no bar file at all, that tick is at most that old. A quiet feed (no
  ticks) is never stale: heartbeats do not count.
- warehouse: it answers (a DuckDB file locked by a load or dbt is not checked;
  a missing file or manifest is "nothing loaded yet", judged by load).
- load: the lake's newest bar file is in the manifest, or was written at most
  STOCKPIPE_CHECK_MAX_LOAD_DELAY (15m) ago: a file waiting longer fails,
  however old the last load is, and an old last load with nothing waiting is fine.
- marts: silver.fct_bars_1m (the model every mart is built from) has taken in
  every load with rows (its largest `_bronze_load_seq`, `_load_seq` on a silver
  from before that column), or the oldest load it lacks
  was committed at most STOCKPIPE_CHECK_MAX_MART_DELAY (15m) ago.
- offset_gaps: the manifest shows no offset gap.

A check that cannot be judged (its part unreachable, or nothing to compare) is
`not_checked` and does not fail; the part's own check fails instead.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows.errors import CheckFailed, StockpipeError
from flows.net import kafka_refusal
from flows.settings import Settings, load_settings, parse_duration
from flows.stream.recovery import (
    partition_snapshots,
    read_recovery_store,
    recovery_path,
)

if TYPE_CHECKING:  # imported where used, so `stockpipe status --help` loads no [stream] library
    from flows.stream.bars import PartitionBars

KAFKA_TIMEOUT_S = 3.0
MARTS = (("silver", "fct_bars_1m", "window_start"), ("gold", "fct_bars_daily", "trade_date"))
MARTS_SILVER = "silver.fct_bars_1m"  # every mart is built from it: its freshness is theirs


def iso_ms(ms: int | None) -> str | None:
    """Epoch milliseconds as an ISO-8601 UTC string (millisecond precision)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def one_line(exc: BaseException | str) -> str:
    """An error as one short line (no traceback, no newlines)."""
    if not isinstance(exc, str):
        arg = exc.args[0] if getattr(exc, "args", None) else None
        text = arg.str() if hasattr(arg, "str") else str(exc)  # a KafkaError inside
        exc = text or type(exc).__name__
    line = " ".join(str(exc).split())
    return line if len(line) <= 300 else line[:297] + "..."


# ---------------------------------------------------------------------------------- Kafka


@dataclass
class BrokerStatus:
    bootstrap_servers: str
    reachable: bool
    error: str | None = None
    brokers: int | None = None


@dataclass
class TopicPartitionStatus:
    partition: int
    low: int | None
    end: int | None
    log_time_ms: int | None = None  # timestamp of the record at end - 1
    log_time: str | None = None
    error: str | None = None


@dataclass
class TopicStatus:
    name: str
    checked: bool  # False when the broker is unreachable
    exists: bool | None
    error: str | None = None
    partitions: list[TopicPartitionStatus] = field(default_factory=list)


def _quiet_logger() -> Any:
    import logging

    logger = logging.getLogger("stockpipe.status.rdkafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def kafka_status(
    settings: Settings, timeout: float = KAFKA_TIMEOUT_S
) -> tuple[BrokerStatus, TopicStatus]:
    """The broker and the topic's partitions: offsets and log time of the last record."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient

    servers = settings.kafka_bootstrap_servers
    quiet = {"logger": _quiet_logger()}
    broker = BrokerStatus(servers, reachable=False)
    topic = TopicStatus(settings.topic, checked=False, exists=None)
    admin = AdminClient({**settings.kafka_config(), **quiet})
    try:
        meta = admin.list_topics(timeout=timeout)  # all topics: asking for one may create it
    except KafkaException as exc:
        refusal = kafka_refusal(settings.kafka_config(), timeout)
        broker.error = refusal or f"cannot reach Kafka at {servers}: {one_line(exc)}"
        return broker, topic
    broker.reachable = True
    broker.brokers = len(meta.brokers)
    topic.checked = True
    found = meta.topics.get(settings.topic)
    if found is None or not found.partitions:
        topic.exists = False
        topic.error = f"topic {settings.topic!r} does not exist"
        return broker, topic
    if found.error is not None:
        topic.exists = True
        topic.error = one_line(found.error.str())
    topic.exists = True

    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"stockpipe-status-{uuid.uuid4().hex[:8]}",  # never committed
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "socket.timeout.ms": int(timeout * 1000),
            **quiet,
        }
    )
    try:
        parts: dict[int, TopicPartitionStatus] = {}
        for p in sorted(found.partitions):
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(settings.topic, p), timeout=timeout
                )
                parts[p] = TopicPartitionStatus(p, low, high)
            except KafkaException as exc:
                parts[p] = TopicPartitionStatus(p, None, None, error=one_line(exc))
        topic.partitions = list(parts.values())
        _read_log_times(consumer, settings.topic, parts, timeout)
    finally:
        consumer.close()
    return broker, topic


def _read_log_times(
    consumer: Any, topic: str, parts: dict[int, TopicPartitionStatus], timeout: float
) -> None:
    """The timestamp of each partition's last record (heartbeats and flush markers count)."""
    import time

    from confluent_kafka import TopicPartition

    wanted = {
        p: s.end - 1
        for p, s in parts.items()
        if s.low is not None and s.end is not None and s.end > s.low
    }
    if not wanted:
        return
    consumer.assign([TopicPartition(topic, p, off) for p, off in wanted.items()])
    deadline = time.monotonic() + timeout
    while wanted and time.monotonic() < deadline:
        for msg in consumer.consume(len(wanted), timeout=min(0.5, deadline - time.monotonic())):
            if msg.error() is not None:
                continue
            p = msg.partition()
            if wanted.get(p) == msg.offset():
                ts = msg.timestamp()[1]
                parts[p].log_time_ms = ts
                parts[p].log_time = iso_ms(ts)
                del wanted[p]
    for p in wanted:
        parts[p].error = f"no record read at offset {parts[p].end - 1} within {timeout:g}s"


# --------------------------------------------------------------------- recovery store


# --------------------------------------------------------------------------- stream


@dataclass
class SymbolStatus:
    symbol: str
    partition: int
    max_ts_ms: int | None  # largest event time seen
    max_ts: str | None
    max_ts_log_ms: int | None  # the partition's log time when that event time arrived
    watermark_ms: int | None  # max_ts - lateness, advanced by log time since it arrived
    watermark: str | None
    open_windows: int
    restatable_windows: int  # closed windows still inside the restate horizon
    pending_restatements: int  # closed windows with late ticks not emitted yet


@dataclass
class StreamPartitionStatus:
    partition: int
    committed: int | None  # next offset the stream reads; None: nothing read yet
    end: int | None
    lag: int | None  # end - committed (end - low when nothing was read yet)
    snapshot_epoch: int | None
    log_time_ms: int | None = None  # the bar state's log time
    log_time: str | None = None
    ticks: int | None = None
    duplicates: int | None = None
    too_late: int | None = None
    open_windows: int | None = None
    pending_restatements: int | None = None
    unsealed_rows: int | None = None  # rows of the micro-batch not written to the lake yet


@dataclass
class StreamStatus:
    recovery_path: str
    found: bool
    error: str | None = None
    execution: int | None = None
    worker_count: int | None = None
    resume_epoch: int | None = None
    commit_epochs: dict[str, int] = field(default_factory=dict)
    partitions: list[StreamPartitionStatus] = field(default_factory=list)
    symbols: list[SymbolStatus] = field(default_factory=list)


def stream_status(settings: Settings, topic: TopicStatus | None = None) -> StreamStatus:
    """Committed offsets, lag (with the topic's end offsets) and bar state, per partition."""
    from flows.stream.bars import BarRules, FileRules, PartitionBars

    path = recovery_path(settings)
    status = StreamStatus(str(path), found=False)
    if not any(path.glob("part-*.sqlite3")):
        status.error = "no recovery store: the stream has not run for this topic"
        return status
    status.found = True
    try:
        store = read_recovery_store(path)
    except (sqlite3.Error, pickle.UnpicklingError, EOFError) as exc:
        status.error = f"cannot read the recovery store: {one_line(exc)}"
        return status
    status.execution, status.worker_count = store.execution, store.worker_count
    status.resume_epoch = store.resume_epoch
    status.commit_epochs = {str(k): v for k, v in sorted(store.commit_epochs.items())}
    if store.resume_epoch is None:
        status.error = "the stream has not committed an epoch yet"

    offsets, bars = partition_snapshots(store, settings.topic)

    ends = {p.partition: p for p in (topic.partitions if topic else [])}
    rules = BarRules.from_settings(settings)
    for p in sorted(set(offsets) | set(bars) | set(ends)):
        epoch, next_offset = offsets.get(p, (None, None))
        committed = next_offset if isinstance(next_offset, int) and next_offset >= 0 else None
        tp = ends.get(p)
        end = tp.end if tp else None
        lag = None
        if end is not None:
            lag = end - committed if committed is not None else end - (tp.low or 0)
        part = StreamPartitionStatus(p, committed, end, lag, epoch)
        bar_epoch, snap = bars.get(p, (None, None))
        if snap is not None:
            _fill_bars(part, status.symbols, PartitionBars.restore(rules, FileRules(), snap))
            if part.snapshot_epoch is None:
                part.snapshot_epoch = bar_epoch
        status.partitions.append(part)
    status.symbols.sort(key=lambda s: s.symbol)
    return status


def _fill_bars(part: StreamPartitionStatus, out: list[SymbolStatus], state: PartitionBars) -> None:
    part.log_time_ms, part.log_time = state.log, iso_ms(state.log)
    part.ticks, part.duplicates, part.too_late = state.ticks, state.duplicates, state.too_late
    part.unsealed_rows = len(state._bars) + len(state._late)
    part.open_windows = part.pending_restatements = 0
    for symbol, bars in sorted(state.symbols.items()):
        pending = sum(1 for w in bars.closed.values() if w.dirty_since is not None)
        wm = bars.watermark(state.log)
        part.open_windows += len(bars.open)
        part.pending_restatements += pending
        out.append(
            SymbolStatus(
                symbol,
                part.partition,
                bars.max_ts,
                iso_ms(bars.max_ts),
                bars.max_log if bars.max_ts is not None else None,
                wm,
                iso_ms(wm),
                len(bars.open),
                len(bars.closed),
                pending,
            )
        )


# ----------------------------------------------------------------------------- lake


@dataclass
class LakeStatus:
    url: str
    found: bool
    error: str | None = None
    newest_partition: str | None = None  # the newest date=YYYY-MM-DD of bars/
    files_in_newest_partition: int | None = None
    newest_file: str | None = None
    newest_file_key: str | None = None  # its path inside the lake, as the manifest keys it
    newest_file_size: int | None = None
    newest_file_mtime: str | None = None


def _mtime(info: dict[str, Any]) -> datetime | None:
    value = info.get("mtime", info.get("LastModified"))
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return None


def lake_status(settings: Settings) -> LakeStatus:
    """The newest `date=` folder of bars/ and its newest file (lists only that folder)."""
    from flows.lake.store import BARS_PREFIX, list_partitions, open_lake

    status = LakeStatus(settings.lake_url, found=False)
    try:
        lake = open_lake(settings)
        parents = list_partitions(lake, BARS_PREFIX)
        newest = [ps[-1] for ps in parents.values() if ps]
        if not newest:
            status.error = "no bar files yet (no date= folder under bars/)"
            return status
        day = max(p.day for p in newest)
        status.found = True
        status.newest_partition = day.isoformat()
        files: list[dict[str, Any]] = []
        for p in newest:
            if p.day != day:
                continue
            lake.fs.invalidate_cache(p.path)
            for info in lake.fs.ls(p.path, detail=True):
                name = info["name"].rsplit("/", 1)[-1]
                if (
                    info.get("type") != "directory"
                    and name.endswith(".parquet")
                    and name[0] not in "._"
                ):
                    files.append(info)
        status.files_in_newest_partition = len(files)
        if files:
            epoch = datetime.fromtimestamp(0, UTC)
            best = max(files, key=lambda i: (_mtime(i) or epoch, i["name"]))
            status.newest_file = lake.url(best["name"])
            status.newest_file_key = lake.key(best["name"])
            status.newest_file_size = int(best.get("size") or 0)
            status.newest_file_mtime = _iso(_mtime(best))
    except Exception as exc:  # an unreachable store, bad credentials: report, never raise
        status.found = False
        status.error = f"cannot list the lake: {one_line(exc)}"
    return status


# ------------------------------------------------------------------------ warehouse


@dataclass
class LastLoad:
    load_seq: int | None  # None on a warehouse without the load sequence (or before it)
    batch_id: str | None
    loaded_at: str | None
    files: int
    rows: int


@dataclass
class WarehouseStatus:
    target: str
    checked: bool
    error: str | None = None
    # what the error is: "missing" (no DuckDB file, no manifest: nothing loaded yet),
    # "locked" (a load or dbt holds the DuckDB file), "unreachable", "query"
    error_kind: str | None = None
    has_load_seq: bool | None = None
    last_load: LastLoad | None = None
    manifest_files: int | None = None
    bronze_rows: int | None = None
    # None: not checked (a manifest without the offset columns of a newer loader)
    offset_gaps: list[OffsetGap] | None = None
    # whether the lake's newest bar file is in the manifest (None: no file, or not checked)
    newest_lake_file_loaded: bool | None = None


@dataclass
class OffsetGap:
    """Offsets of one source partition whose bar files the warehouse lacks, between two it has.

    The file `before_file` follows the bar batch ending at `through_offset`, and the
    batch before it in the warehouse ends at `after_offset`: the bars of the records
    after that, up to `through_offset`, were never loaded (`flows.lake.batches`).
    """

    topic: str
    partition: int
    after_offset: int
    through_offset: int
    before_file: str


@dataclass
class MartStatus:
    table: str
    exists: bool | None  # None: not checked (warehouse not reachable)
    latest_column: str
    latest: str | None = None  # latest event time (window_start) or trade_date
    rows: int | None = None
    # the newest load it has taken in: max(_bronze_load_seq) in silver, else max(_load_seq)
    load_seq: int | None = None
    # silver.fct_bars_1m only: when the oldest load with rows that it lacks was committed
    behind_since: str | None = None


def _open_duckdb(settings: Settings) -> tuple[Any, str | None, str | None]:
    import duckdb

    path = settings.duckdb_path
    if not path.exists():
        return None, f"no DuckDB file at {path} (nothing loaded yet: `stockpipe load`)", "missing"
    try:
        return duckdb.connect(str(path), read_only=True), None, None
    except duckdb.Error as exc:
        text = one_line(exc)
        if "lock" in text.lower():
            return (
                None,
                f"DuckDB file {path} is locked by another process (a load or dbt): {text}",
                "locked",
            )
        return None, f"cannot open DuckDB file {path} read-only: {text}", "unreachable"


def _open_snowflake(settings: Settings) -> tuple[Any, str | None, str | None]:
    try:
        import snowflake.connector

        from flows.warehouse.snowflake_warehouse import connect_kwargs

        kwargs = connect_kwargs(settings)
        kwargs["login_timeout"] = min(float(kwargs.get("login_timeout") or 10), 10.0)
        kwargs["network_timeout"] = 15
        return snowflake.connector.connect(**kwargs), None, None
    except Exception as exc:
        return None, f"cannot connect to Snowflake: {one_line(exc)}", "unreachable"


def warehouse_status(
    settings: Settings, lake_key: str | None = None
) -> tuple[WarehouseStatus, list[MartStatus]]:
    """Last load, manifest and bronze counts, and the marts' freshness (cheap queries only).

    The same SQL runs on DuckDB and Snowflake: a filtered read of the manifest's
    last load, and `count(*)`/`max()` over whole tables (metadata on Snowflake).
    `lake_key` (the lake's newest bar file) is looked up in the manifest.
    """
    marts = [MartStatus(f"{s}.{t}", None, col) for s, t, col in MARTS]
    status = WarehouseStatus(settings.warehouse, checked=False)
    opened = (_open_snowflake if settings.warehouse == "snowflake" else _open_duckdb)(settings)
    con, status.error, status.error_kind = opened
    if con is None:
        if status.error_kind == "missing" and lake_key is not None:
            status.newest_lake_file_loaded = False
        return status, marts
    try:
        status.checked = True
        _query_warehouse(con, status, marts, lake_key)
    except Exception as exc:
        status.error = f"warehouse query failed: {one_line(exc)}"
        status.error_kind = "query"
    finally:
        con.close()
    return status, marts


def _rows(con: Any, sql: str) -> list[tuple]:
    cur = con.cursor()
    try:
        cur.execute(sql)
        return cur.fetchall()
    finally:
        cur.close()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _query_warehouse(
    con: Any, status: WarehouseStatus, marts: list[MartStatus], lake_key: str | None = None
) -> None:
    columns: dict[str, set[str]] = {}
    for schema, table, column in _rows(
        con,
        "SELECT lower(table_schema), lower(table_name), lower(column_name) "
        "FROM information_schema.columns "
        "WHERE lower(table_schema) IN ('bronze', 'silver', 'gold')",
    ):
        columns.setdefault(f"{schema}.{table}", set()).add(column)

    manifest = columns.get("bronze.load_manifest")
    if manifest is None:
        status.error = "no bronze.load_manifest yet (nothing loaded: `stockpipe load`)"
        status.error_kind = "missing"
        if lake_key is not None:
            status.newest_lake_file_loaded = False
    else:
        status.has_load_seq = "load_seq" in manifest
        status.manifest_files = _rows(con, "SELECT count(*) FROM bronze.load_manifest")[0][0]
        status.last_load = _last_load(con, status.has_load_seq)
        if "follows_offset" in manifest:
            status.offset_gaps = _offset_gaps(con)
        if lake_key is not None:
            found = _rows(
                con, f"SELECT count(*) FROM bronze.load_manifest WHERE path = {_literal(lake_key)}"
            )
            status.newest_lake_file_loaded = found[0][0] > 0
    if "bronze.bars" in columns:
        status.bronze_rows = _rows(con, "SELECT count(*) FROM bronze.bars")[0][0]

    for mart, (schema, table, col) in zip(marts, MARTS, strict=True):
        have = columns.get(f"{schema}.{table}")
        mart.exists = have is not None
        if have is None:
            continue
        if col not in have:
            mart.latest_column = f"{col} (missing)"
            mart.rows = _rows(con, f"SELECT count(*) FROM {schema}.{table}")[0][0]
            continue
        # the newest bronze load taken in: silver's own bronze mark where it has one
        # (its _load_seq is a change mark, above the bronze loads once it reconciled
        # outage flags), else _load_seq
        seq = next((f"max({c})" for c in ("_bronze_load_seq", "_load_seq") if c in have), "NULL")
        latest, rows, load_seq = _rows(
            con, f"SELECT max({col}), count(*), {seq} FROM {schema}.{table}"
        )[0]
        mart.latest, mart.rows = _iso(latest), rows
        mart.load_seq = None if load_seq is None else int(load_seq)
    silver = marts[0]
    if status.has_load_seq and (silver.exists is False or "_load_seq" in columns[MARTS_SILVER]):
        # the oldest load with rows that silver has not taken in (NULL: none)
        above = -1 if silver.load_seq is None else silver.load_seq
        (since,) = _rows(
            con,
            "SELECT min(loaded_at) FROM bronze.load_manifest "
            f"WHERE row_count > 0 AND load_seq > {above}",
        )[0]
        silver.behind_since = _iso(since)


# A loaded batch whose predecessor in the warehouse, by offset, is not the batch it follows.
_GAPS_SQL = """
WITH b AS (
    SELECT source_topic, source_partition, last_offset,
           max(follows_offset) AS follows_offset, min(path) AS path
    FROM bronze.load_manifest
    WHERE source_topic IS NOT NULL AND last_offset IS NOT NULL
    GROUP BY source_topic, source_partition, last_offset
), o AS (
    SELECT source_topic, source_partition, follows_offset, path,
           lag(last_offset) OVER (
               PARTITION BY source_topic, source_partition ORDER BY last_offset
           ) AS before_last
    FROM b
)
SELECT source_topic, source_partition, before_last, follows_offset, path FROM o
WHERE follows_offset IS NOT NULL AND before_last IS NOT NULL AND before_last < follows_offset
ORDER BY source_topic, source_partition, follows_offset
LIMIT 100
"""


def _offset_gaps(con: Any) -> list[OffsetGap]:
    """The offset gaps of every source partition (at most 100), from the manifest."""
    return [
        OffsetGap(topic, int(partition), int(after), int(through), path)
        for topic, partition, after, through, path in _rows(con, _GAPS_SQL)
    ]


def _last_load(con: Any, has_seq: bool) -> LastLoad | None:
    cols = "max(batch_id), max(loaded_at), count(*), coalesce(sum(row_count), 0)"
    if has_seq:
        row = _rows(
            con,
            f"SELECT load_seq, {cols} FROM bronze.load_manifest "
            "WHERE load_seq = (SELECT max(load_seq) FROM bronze.load_manifest) GROUP BY load_seq",
        )
        if row:
            seq, batch, at, files, rows = row[0]
            return LastLoad(int(seq), batch, _iso(at), int(files), int(rows))
    # An older warehouse (or only loads from before the migration): the newest batch.
    row = _rows(
        con,
        f"SELECT NULL, {cols} FROM bronze.load_manifest WHERE batch_id = "
        "(SELECT max(batch_id) FROM bronze.load_manifest WHERE loaded_at = "
        "(SELECT max(loaded_at) FROM bronze.load_manifest))",
    )
    if not row or row[0][3] == 0:
        return None
    _, batch, at, files, rows = row[0]
    return LastLoad(None, batch, _iso(at), int(files), int(rows))


# ---------------------------------------------------------------------------- report


@dataclass
class StatusReport:
    generated_at: str
    topic: str
    broker: BrokerStatus
    topic_status: TopicStatus
    stream: StreamStatus
    lake: LakeStatus
    warehouse: WarehouseStatus
    marts: list[MartStatus]

    def to_dict(self) -> dict[str, Any]:
        """Stable keys: broker, topic, stream, lake, warehouse, marts (and generated_at)."""
        return {
            "generated_at": self.generated_at,
            "broker": asdict(self.broker),
            "topic": asdict(self.topic_status),
            "stream": asdict(self.stream),
            "lake": asdict(self.lake),
            "warehouse": asdict(self.warehouse),
            "marts": [asdict(m) for m in self.marts],
        }


def collect_status(settings: Settings) -> StatusReport:
    """Every part, each degrading to a message of its own."""
    broker, topic = kafka_status(settings)
    lake = lake_status(settings)
    warehouse, marts = warehouse_status(settings, lake.newest_file_key)
    return StatusReport(
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        topic=settings.topic,
        broker=broker,
        topic_status=topic,
        stream=stream_status(settings, topic if topic.checked else None),
        lake=lake,
        warehouse=warehouse,
        marts=marts,
    )


# ---------------------------------------------------------------------------- checks

OK, FAILED, NOT_CHECKED = "ok", "failed", "not_checked"


@dataclass(frozen=True)
class Limits:
    """How far behind each part may be before `status --check` fails (module docstring)."""

    max_lag: int  # records
    max_log_time_lag_s: float
    max_lake_delay_s: float
    max_load_delay_s: float
    max_mart_delay_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            settings.check_max_lag,
            settings.check_max_log_time_lag,
            settings.check_max_lake_delay,
            settings.check_max_load_delay,
            settings.check_max_mart_delay,
        )


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, failed or not_checked
    detail: str


def _ago(seconds: float) -> str:
    """A duration for a message: 850ms, 42s, 12m 5s, 3h 2m, 2d 4h."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    s = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if s >= size:
            rest = (s % size) // sub_size
            return f"{s // size}{unit}" + (f" {rest}{sub}" if rest else "")
    if s >= 60:
        return f"{s // 60}m" + (f" {s % 60}s" if s % 60 else "")
    return f"{s}s"


def _ms(iso: str | None) -> int | None:
    """Epoch milliseconds of an ISO time; one without a zone is UTC (a TIMESTAMP_NTZ)."""
    if iso is None:
        return None
    value = datetime.fromisoformat(iso)
    return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp() * 1000)


def run_checks(report: StatusReport, limits: Limits, now_ms: int) -> list[Check]:
    """Judge the report: one `Check` per part, in data-flow order (module docstring)."""
    b, t, s, wh = report.broker, report.topic_status, report.stream, report.warehouse
    checks = [
        Check("broker", OK, f"{b.bootstrap_servers} answers ({b.brokers} broker(s))")
        if b.reachable
        else Check("broker", FAILED, b.error or "unreachable"),
    ]
    if not t.checked:
        checks.append(Check("topic", NOT_CHECKED, "the broker did not answer"))
    elif not t.exists or t.error:
        checks.append(Check("topic", FAILED, t.error or f"topic {t.name!r} does not exist"))
    else:
        checks.append(Check("topic", OK, f"{t.name}: {len(t.partitions)} partition(s)"))

    if not s.found or s.error:
        checks.append(Check("stream", FAILED, s.error or "no recovery store"))
    else:
        checks.append(Check("stream", OK, f"resume epoch {s.resume_epoch}"))

    lags = [p for p in s.partitions if p.lag is not None]
    if not lags:
        checks.append(Check("consumer_lag", NOT_CHECKED, "no end offsets or no stream state"))
    else:
        behind = [p for p in lags if p.lag > limits.max_lag]
        worst = max(p.lag for p in lags)
        checks.append(
            Check(
                "consumer_lag",
                FAILED,
                "; ".join(f"partition {p.partition}: {p.lag} records behind" for p in behind)
                + f" (at most {limits.max_lag})",
            )
            if behind
            else Check(
                "consumer_lag", OK, f"at most {worst} records behind (limit {limits.max_lag})"
            )
        )

    logged = [p for p in s.partitions if p.log_time_ms is not None]
    if not logged:
        checks.append(Check("log_time_lag", NOT_CHECKED, "no committed bar state"))
    else:
        late = {p.partition: (now_ms - p.log_time_ms) / 1000 for p in logged}
        over = {p: lag for p, lag in late.items() if lag > limits.max_log_time_lag_s}
        limit = _ago(limits.max_log_time_lag_s)
        checks.append(
            Check(
                "log_time_lag",
                FAILED,
                "; ".join(
                    f"partition {p}: the stream's log time is {_ago(lag)} behind the clock"
                    for p, lag in sorted(over.items())
                )
                + f" (at most {limit}): the stream is stopped, stuck or catching up",
            )
            if over
            else Check(
                "log_time_lag",
                OK,
                f"at most {_ago(max(0.0, max(late.values())))} behind the clock (limit {limit})",
            )
        )

    checks.append(_lake_check(report, limits, now_ms))
    checks += _warehouse_checks(report, limits, now_ms)

    if wh.offset_gaps is None:
        checks.append(Check("offset_gaps", NOT_CHECKED, "the manifest has no offsets to compare"))
    elif wh.offset_gaps:
        checks.append(
            Check(
                "offset_gaps",
                FAILED,
                f"{len(wh.offset_gaps)} gap(s): "
                + "; ".join(
                    f"{g.topic}[{g.partition}] offsets {g.after_offset + 1}..{g.through_offset} "
                    "not loaded"
                    for g in wh.offset_gaps[:5]
                )
                + ("; ..." if len(wh.offset_gaps) > 5 else "")
                + " (docs/operations.md, 'Offset gaps')",
            )
        )
    else:
        checks.append(Check("offset_gaps", OK, "none"))
    return checks


def _lake_check(report: StatusReport, limits: Limits, now_ms: int) -> Check:
    lk, s = report.lake, report.stream
    if not lk.found and lk.error and lk.error.startswith("cannot list"):
        return Check("lake", FAILED, lk.error)
    ticks = [y.max_ts_log_ms for y in s.symbols if y.max_ts_log_ms is not None]
    if not ticks:
        return Check("lake", NOT_CHECKED, "the stream's committed state holds no tick to compare")
    newest_tick = max(ticks)
    limit = _ago(limits.max_lake_delay_s)
    mtime = _ms(lk.newest_file_mtime)
    if mtime is None:
        age = (now_ms - newest_tick) / 1000
        if age > limits.max_lake_delay_s:
            return Check(
                "lake",
                FAILED,
                f"the stream read ticks up to {_t(iso_ms(newest_tick))}, {_ago(age)} ago, and the "
                f"lake holds no bar file (at most {limit})",
            )
        return Check("lake", OK, f"no bar file yet; the newest tick was read {_ago(age)} ago")
    delay = (newest_tick - mtime) / 1000
    if delay > limits.max_lake_delay_s:
        return Check(
            "lake",
            FAILED,
            f"the stream read a tick at {_t(iso_ms(newest_tick))}, {_ago(delay)} after the lake's "
            f"newest file was written ({_t(lk.newest_file_mtime)}; at most {limit})",
        )
    return Check("lake", OK, f"the newest file follows the newest tick (limit {limit})")


def _warehouse_checks(report: StatusReport, limits: Limits, now_ms: int) -> list[Check]:
    lk, wh = report.lake, report.warehouse
    kind = wh.error_kind
    if kind == "locked":
        return [
            Check("warehouse", NOT_CHECKED, wh.error or "locked"),
            Check("load", NOT_CHECKED, "the warehouse is locked"),
            Check("marts", NOT_CHECKED, "the warehouse is locked"),
        ]
    if kind in ("unreachable", "query"):
        return [
            Check("warehouse", FAILED, wh.error or "unreachable"),
            Check("load", NOT_CHECKED, "the warehouse did not answer"),
            Check("marts", NOT_CHECKED, "the warehouse did not answer"),
        ]
    checks = [
        Check("warehouse", OK, "nothing loaded yet")
        if kind == "missing"
        else Check(
            "warehouse", OK, f"{wh.manifest_files} file(s) loaded, {wh.bronze_rows} bronze rows"
        )
    ]

    last = wh.last_load
    last_text = (
        f"last load {last.load_seq if last.load_seq is not None else last.batch_id} at "
        f"{_t(last.loaded_at)}"
        if last
        else "nothing loaded yet"
    )
    written = _ms(lk.newest_file_mtime)
    limit = _ago(limits.max_load_delay_s)
    if written is None or wh.newest_lake_file_loaded is None:
        checks.append(Check("load", NOT_CHECKED, f"no bar file in the lake; {last_text}"))
    elif wh.newest_lake_file_loaded:
        checks.append(Check("load", OK, f"the lake's newest file is loaded; {last_text}"))
    else:
        waited = (now_ms - written) / 1000
        state = FAILED if waited > limits.max_load_delay_s else OK
        checks.append(
            Check(
                "load",
                state,
                f"the lake's newest file {lk.newest_file_key} has waited {_ago(max(0.0, waited))} "
                f"to be loaded (at most {limit}); {last_text}",
            )
        )

    silver = report.marts[0]
    limit = _ago(limits.max_mart_delay_s)
    if kind == "missing" and wh.has_load_seq is None:
        checks.append(Check("marts", NOT_CHECKED, "nothing loaded yet"))
    elif not wh.has_load_seq or (silver.exists and silver.load_seq is None and silver.rows):
        checks.append(Check("marts", NOT_CHECKED, "the warehouse numbers no loads (_load_seq)"))
    elif silver.behind_since is None:
        checks.append(
            Check(
                "marts", OK, f"{silver.table} holds every load with rows (up to {silver.load_seq})"
            )
        )
    else:
        waited = (now_ms - (_ms(silver.behind_since) or now_ms)) / 1000
        checks.append(
            Check(
                "marts",
                FAILED if waited > limits.max_mart_delay_s else OK,
                f"{silver.table} lacks the loads since {_t(silver.behind_since)}, "
                f"{_ago(max(0.0, waited))} ago (at most {limit}; `stockpipe transform` builds it)",
            )
        )
    return checks


def _v(value: Any) -> str:
    return "-" if value is None else str(value)


def _t(iso: str | None) -> str:
    """A compact UTC time for the tables (the JSON keeps full ISO-8601)."""
    if iso is None:
        return "-"
    return iso.replace("T", " ").removesuffix("+00:00")[:23]


def render(report: StatusReport, console: Console) -> None:
    """A few compact tables: partitions, bar state per symbol, lake/warehouse/marts."""
    b, t, s = report.broker, report.topic_status, report.stream
    if b.reachable:
        console.print(f"[bold]broker[/] {b.bootstrap_servers}: [green]reachable[/]")
    else:
        console.print(f"[bold]broker[/] {b.bootstrap_servers}: [red]unreachable[/]: {b.error}")
    if t.error:
        console.print(f"[bold]topic[/] {t.name}: [yellow]{t.error}[/]")
    if s.error:
        console.print(f"[bold]stream[/] {s.recovery_path}: [yellow]{s.error}[/]")

    topic_parts = {p.partition: p for p in t.partitions}
    stream_parts = {p.partition: p for p in s.partitions}
    if topic_parts or stream_parts:
        parts = Table(
            box=box.SIMPLE_HEAD,
            title=f"{t.name}: offsets and lag (resume epoch {_v(s.resume_epoch)})",
        )
        for col in ("part", "low", "end", "committed", "lag", "log time (last record)"):
            parts.add_column(
                col,
                justify="left" if col.startswith("log") else "right",
                no_wrap=True,
                min_width=len(col),
            )
        for p in sorted(set(topic_parts) | set(stream_parts)):
            tp, sp = topic_parts.get(p), stream_parts.get(p)
            lag = _v(sp and sp.lag)
            parts.add_row(
                str(p),
                _v(tp and tp.low),
                _v(tp and tp.end),
                _v(sp and sp.committed),
                f"[red]{lag}[/]" if sp and sp.lag else lag,
                _t(tp and tp.log_time) if tp and not tp.error else _v(tp and tp.error),
            )
        console.print(parts)

    if any(p.log_time is not None for p in s.partitions):
        state = Table(
            pad_edge=False,
            box=box.SIMPLE_HEAD,
            title="bar state per partition (committed snapshot)",
        )
        for col in ("part", "log time", "ticks", "dup", "late", "open", "restate", "unsealed"):
            state.add_column(
                col,
                justify="left" if col == "log time" else "right",
                no_wrap=True,
                min_width=len(col),
            )
        for sp in s.partitions:
            if sp.log_time is None:
                continue
            state.add_row(
                str(sp.partition),
                _t(sp.log_time),
                *(
                    _v(x)
                    for x in (
                        sp.ticks,
                        sp.duplicates,
                        sp.too_late,
                        sp.open_windows,
                        sp.pending_restatements,
                        sp.unsealed_rows,
                    )
                ),
            )
        console.print(state)

    if s.symbols:
        syms = Table(pad_edge=False, box=box.SIMPLE_HEAD, title="watermarks (event time, UTC)")
        for col in ("symbol", "part", "max event time", "watermark", "open"):
            syms.add_column(
                col,
                justify="right" if col in ("part", "open") else "left",
                no_wrap=True,
                min_width=len(col),
            )
        for y in s.symbols:
            syms.add_row(
                y.symbol,
                str(y.partition),
                _t(y.max_ts),
                _t(y.watermark),
                str(y.open_windows),
            )
        console.print(syms)

    lk, wh = report.lake, report.warehouse
    rest = Table(
        pad_edge=False, box=box.SIMPLE, title="lake / warehouse / marts", show_header=False
    )
    rest.add_column("part", style="bold", no_wrap=True)
    rest.add_column("state", overflow="fold")
    if lk.found:
        rest.add_row(
            "lake",
            f"{lk.url}: date={lk.newest_partition} holds {lk.files_in_newest_partition} file(s)",
        )
        rest.add_row(
            "newest file",
            f"{lk.newest_file} ({lk.newest_file_size} B, {_t(lk.newest_file_mtime)})",
        )
    else:
        rest.add_row("lake", f"{lk.url}: {lk.error}")
    if wh.checked and wh.error is None:
        rest.add_row(
            "warehouse",
            f"{wh.target}: {_v(wh.manifest_files)} files loaded, {_v(wh.bronze_rows)} bronze rows",
        )
    else:
        rest.add_row("warehouse", f"{wh.target}: {wh.error}")
    if wh.last_load is not None:
        ll = wh.last_load
        seq = f"load {ll.load_seq}" if ll.load_seq is not None else f"batch {ll.batch_id}"
        rest.add_row("last load", f"{seq} at {_t(ll.loaded_at)}: {ll.files} files, {ll.rows} rows")
    if wh.offset_gaps is not None:
        rest.add_row(
            "offset gaps",
            "none"
            if not wh.offset_gaps
            else "\n".join(
                escape(
                    f"{g.topic}[{g.partition}]: offsets {g.after_offset + 1}..{g.through_offset} "
                    f"not loaded (before {g.before_file})"
                )
                for g in wh.offset_gaps
            ),
        )
    for m in report.marts:
        if m.exists is None:
            text = "not checked"
        elif not m.exists:
            text = "does not exist yet (`stockpipe transform`)"
        else:
            text = f"latest {m.latest_column} {_t(m.latest)} ({m.rows} rows)"
        rest.add_row(m.table, text)
    console.print(rest)


def render_checks(checks: list[Check], console: Console) -> None:
    table = Table(pad_edge=False, box=box.SIMPLE_HEAD, title="checks (--check)")
    table.add_column("check", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("detail", overflow="fold")
    colour = {OK: "green", FAILED: "red", NOT_CHECKED: "yellow"}
    for c in checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", escape(c.detail))
    console.print(table)


def _duration_option(name: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise StockpipeError(f"{name}: {exc}") from None


def _limit_option(what: str, variable: str, default: str) -> Any:
    return typer.Option(
        f"--{variable.removeprefix('STOCKPIPE_CHECK_').lower().replace('_', '-')}",
        help=f"With --check: {what}.",
        show_default=f"{variable}, {default}",
    )


def status_command(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Also judge every part (docs/contracts.md) and exit 3 when one is down or "
            "stale; the report says which checks failed.",
        ),
    ] = False,
    max_lag: Annotated[
        int | None,
        typer.Option(
            "--max-lag",
            min=0,
            help="With --check: records a partition may be behind its end offset.",
            show_default="STOCKPIPE_CHECK_MAX_LAG, 10000",
        ),
    ] = None,
    max_log_time_lag: Annotated[
        str | None,
        _limit_option(
            "how far the stream's log time may be behind the clock (a duration)",
            "STOCKPIPE_CHECK_MAX_LOG_TIME_LAG",
            "5m",
        ),
    ] = None,
    max_lake_delay: Annotated[
        str | None,
        _limit_option(
            "how much older the lake's newest file may be than the newest tick the stream read",
            "STOCKPIPE_CHECK_MAX_LAKE_DELAY",
            "10m",
        ),
    ] = None,
    max_load_delay: Annotated[
        str | None,
        _limit_option(
            "how long the lake's newest file may wait to be loaded",
            "STOCKPIPE_CHECK_MAX_LOAD_DELAY",
            "15m",
        ),
    ] = None,
    max_mart_delay: Annotated[
        str | None,
        _limit_option(
            "how long a load may wait to reach silver.fct_bars_1m",
            "STOCKPIPE_CHECK_MAX_MART_DELAY",
            "15m",
        ),
    ] = None,
) -> None:
    """Where every part stands: broker, offsets, stream lag and watermarks, lake, loads, marts.

    Exits 0 whatever part is missing or unreachable (each part says so); with --check,
    exits 3 when a check failed.
    """
    settings = load_settings()
    base = Limits.from_settings(settings)
    limits = Limits(
        base.max_lag if max_lag is None else max_lag,
        _duration_option("--max-log-time-lag", max_log_time_lag, base.max_log_time_lag_s),
        _duration_option("--max-lake-delay", max_lake_delay, base.max_lake_delay_s),
        _duration_option("--max-load-delay", max_load_delay, base.max_load_delay_s),
        _duration_option("--max-mart-delay", max_mart_delay, base.max_mart_delay_s),
    )
    report = collect_status(settings)
    checks = run_checks(report, limits, int(time.time() * 1000)) if check else []
    failed = [c for c in checks if c.status == FAILED]
    if json_output:
        doc = report.to_dict()
        if check:
            doc["check"] = {
                "ok": not failed,
                "failed": [c.name for c in failed],
                "limits": asdict(limits),
                "checks": [asdict(c) for c in checks],
            }
        typer.echo(json.dumps(doc, indent=2))
    else:
        console = Console()
        render(report, console)
        if check:
            render_checks(checks, console)
    if failed:
        raise CheckFailed(
            f"status --check: {len(failed)} check(s) failed: "
            + "; ".join(f"{c.name}: {c.detail}" for c in failed)
        )
