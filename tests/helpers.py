"""Test helpers: the straightforward batch computation of bars, reading the lake, Kafka I/O."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import polars as pl
from confluent_kafka import Consumer, Producer, TopicPartition
from streamgen import expected_ticks

from flows.settings import Settings
from flows.tooling.chaos import trade_updates

BAR_COLUMNS = ["open", "high", "low", "close", "volume", "vwap", "trade_count"]
CONDITION_COUNTS = ["excluded_count", "unmapped_count", "candle_count"]
CANDLE_SOURCE = "finnhub-candle"  # contract 1: ticks of a 1-minute candle (written out here)


def batch_bars(
    ticks: Iterable[dict], bar_ms: int = 60_000, *, conditions: bool = True
) -> pl.DataFrame:
    """Bars over valid, already deduplicated ticks, the obvious way (polars group-by).

    Each tick dict has symbol, ts (ms), seq (partition order), price, volume (or None),
    and optionally source and conditions: with `conditions` the trade-condition tables
    decide (read here on their own) which ticks set the prices and count in volume.
    A window with ticks of a candle (source `finnhub-candle`) is made of those alone,
    but for first_ts/last_ts, which span every tick.
    """
    rows = []
    for t in ticks:
        oc, hl, vol, unmapped = (
            trade_updates(t.get("source"), t.get("conditions"))
            if conditions
            else (True, True, True, False)
        )
        rows.append({**{k: t[k] for k in ("symbol", "ts", "seq", "price", "volume")},
                     "oc": oc, "hl": hl, "vol": vol, "unmapped": unmapped,
                     "candle": t.get("source") == CANDLE_SOURCE})  # fmt: skip
    df = pl.DataFrame(
        rows,
        schema={
            "symbol": pl.String,
            "ts": pl.Int64,
            "seq": pl.Int64,
            "price": pl.Float64,
            "volume": pl.Float64,
            "oc": pl.Boolean,
            "hl": pl.Boolean,
            "vol": pl.Boolean,
            "unmapped": pl.Boolean,
            "candle": pl.Boolean,
        },
    )
    # a tick counts unless its window has candle ticks and it is not one of them
    keep = pl.col("keep")
    oc, hl, vol = pl.col("oc") & keep, pl.col("hl") & keep, pl.col("vol") & keep
    v = pl.col("volume").fill_null(0.0).filter(vol)
    window = ["symbol", "window_start"]
    return (
        df.sort(["symbol", "ts", "seq"])
        .with_columns(window_start=pl.col("ts") - pl.col("ts") % bar_ms)
        .with_columns(keep=pl.col("candle") | ~pl.col("candle").any().over(window))
        .group_by(window, maintain_order=True)
        .agg(
            open=pl.col("price").filter(oc).first(),
            high=pl.col("price").filter(hl).max(),
            low=pl.col("price").filter(hl).min(),
            close=pl.col("price").filter(oc).last(),
            volume=v.sum(),
            pv=(pl.col("price").filter(vol) * v).sum(),
            trade_count=vol.sum().cast(pl.Int64),
            first_ts=pl.col("ts").min(),
            last_ts=pl.col("ts").max(),
            excluded_count=(keep & ~(oc & hl)).sum().cast(pl.Int64),
            unmapped_count=(keep & pl.col("unmapped")).sum().cast(pl.Int64),
            candle_count=pl.col("candle").sum().cast(pl.Int64),
        )
        .with_columns(
            vwap=pl.when(pl.col("volume") > 0).then(pl.col("pv") / pl.col("volume")).otherwise(None)
        )
        .drop("pv")
        .sort(["symbol", "window_start"])
    )


def read_lake_bars(lake: Path | str, storage_options: dict | None = None) -> pl.DataFrame:
    """Every bar row in the lake (all revisions), window_start as epoch ms."""
    import pyarrow.dataset as ds

    fs = None
    root = str(lake)
    if root.startswith("s3://"):
        import s3fs

        fs = s3fs.S3FileSystem(**(storage_options or {}))
        root = root.removeprefix("s3://")
    dataset = ds.dataset(f"{root}/bars", format="parquet", filesystem=fs, partitioning="hive")
    table = dataset.to_table()
    df = pl.from_arrow(table)
    return df.with_columns(
        window_start=pl.col("window_start").dt.epoch("ms"),
        first_ts=pl.col("first_ts").dt.epoch("ms"),
        last_ts=pl.col("last_ts").dt.epoch("ms"),
    )


def final_bars(all_rows: pl.DataFrame) -> pl.DataFrame:
    """Highest revision per (symbol, window_start)."""
    return (
        all_rows.sort(["symbol", "window_start", "revision"])
        .group_by(["symbol", "window_start"], maintain_order=True)
        .last()
        .sort(["symbol", "window_start"])
    )


def assert_bars_equal(got: pl.DataFrame, want: pl.DataFrame, rel: float = 1e-9) -> None:
    """Every bar, every column: exact for prices and counts; volume and vwap to `rel`."""
    keys = ["symbol", "window_start"]
    counts = [c for c in CONDITION_COUNTS if c in got.columns and c in want.columns]
    g = got.select([*keys, *BAR_COLUMNS, *counts]).sort(keys)
    w = want.select([*keys, *BAR_COLUMNS, *counts]).sort(keys)
    assert g.select(keys).to_dicts() == w.select(keys).to_dicts(), "bar keys differ"
    for col in ["open", "high", "low", "close", "trade_count", *counts]:
        assert g[col].to_list() == w[col].to_list(), f"column {col} differs"
    for col in ["volume", "vwap"]:
        for a, b, key in zip(
            g[col].to_list(), w[col].to_list(), g.select(keys).rows(), strict=True
        ):
            if a is None or b is None:
                assert a is None and b is None, f"{col} null mismatch at {key}: {a} vs {b}"
            else:
                assert abs(a - b) <= rel * max(abs(a), abs(b)), f"{col} at {key}: {a} != {b}"


def produce_raw(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    n = 0
    for key, value in messages:
        producer.produce(topic, key=key, value=value)
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0, "messages left unflushed"
    return n


def consume_all(bootstrap: str, topic: str, timeout: float = 10.0) -> list:
    """Every message currently in `topic` (all partitions), in partition order."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False}
    )
    meta = consumer.list_topics(topic, timeout=timeout)
    out = []
    for p in sorted(meta.topics[topic].partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        if high <= low:
            continue
        consumer.assign([TopicPartition(topic, p, low)])
        got = 0
        while got < high - low:
            for msg in consumer.consume(1000, timeout):
                if msg.error():
                    continue
                out.append(msg)
                got += 1
    consumer.close()
    return out


# The golden file's label of a bad record -> the reason code its DLQ record carries.
GOLDEN_REASONS = {
    "bad:negative-price": "negative-price",
    "bad:ts-in-seconds-float": "ts-not-integer",
    "bad:bad-symbol": "bad-symbol",
    "bad:future-ts": "future-ts",
    "bad:ts-before-2000": "ts-before-2000",
    "bad:price-not-number": "price-not-number",
    "bad:zero-price": "zero-price",
    "bad:missing-price": "missing-price",
    "bad:negative-volume": "negative-volume",
    "bad:nan-price": "non-finite-price",
}


def golden_messages(golden_dir: Path) -> list[dict]:
    with open(golden_dir / "ticks_golden.jsonl") as fh:
        return [json.loads(line) for line in fh]


def golden_bars(golden_dir: Path) -> pl.DataFrame:
    df = pl.read_csv(golden_dir / "bars_golden.csv", schema_overrides={"vwap": pl.Float64})
    return df.with_columns(
        window_start=pl.col("window_start").str.to_datetime(time_zone="UTC").dt.epoch("ms"),
        volume=pl.col("volume").cast(pl.Float64),
    )


# -- running the real command -------------------------------------------------------------


def stockpipe(settings: Settings, *args: str, **popen: object) -> subprocess.Popen:
    """The real console command, with these settings in its environment."""
    env = {**os.environ, **settings.to_env()}
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], env=env, **popen)


def run_stockpipe(
    settings: Settings, *args: str, timeout: float = 180
) -> subprocess.CompletedProcess:
    proc = stockpipe(settings, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


def run_stockpipe_json(
    settings: Settings, *args: str, timeout: float = 180
) -> tuple[int, object, str]:
    """The command with `--json`: its exit code, the one JSON document that is its whole
    stdout, and its stderr (where progress and dbt's log go)."""
    proc = stockpipe(
        settings, *args, "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err[-3000:]
    try:
        return proc.returncode, json.loads(out), err
    except json.JSONDecodeError:
        raise AssertionError(f"stdout is not one JSON document: {out[:2000]!r}") from None


def stream_messages(stream: list[tuple[str, dict]]) -> list[tuple[bytes, bytes]]:
    return [(symbol.encode(), orjson.dumps(msg)) for symbol, msg in stream]


def expected_bars(stream: list[tuple[str, dict]]) -> pl.DataFrame:
    good, _late = expected_ticks(stream)
    return batch_bars(good)


def assert_revisions_never_change(rows: pl.DataFrame) -> None:
    """A replay may repeat a bar revision, never change it (emitted_at included: log time)."""
    content = [
        "open",
        "high",
        "low",
        "close",
        "volume",
        "trade_count",
        "first_ts",
        "last_ts",
        "emitted_at",
    ]
    distinct = rows.select(["symbol", "window_start", "revision", *content]).unique()
    dupes = (
        distinct.group_by(["symbol", "window_start", "revision"]).len().filter(pl.col("len") > 1)
    )
    assert dupes.height == 0, f"revisions with two contents: {dupes}"


def assert_each_row_once(rows: pl.DataFrame) -> None:
    """The lake holds every (symbol, window, revision) once: a replay rewrote, never added."""
    held = rows.group_by(["symbol", "window_start", "revision"]).len().filter(pl.col("len") > 1)
    assert held.height == 0, f"rows held more than once: {held}"


# -- local services -------------------------------------------------------------------------


def free_port_pair() -> int:
    """A loopback port p for a broker of its own: p, p + 1 (its controller) and p + 2 (a
    secured broker's internal listener) free, below the OS's ephemeral range, so no
    connection of another test takes one before the broker binds it."""
    from flows.net import free_ports

    return free_ports(3)


class _Recorder(BaseHTTPRequestHandler):
    received: list[dict]

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        self.received.append(
            {
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "body": body,
                "json": parsed,
            }
        )
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def recording_webhook(path: str) -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP endpoint on a free port: (its URL ending in `path`, the POSTs it got)."""
    received: list[dict] = []
    handler = type("Recorder", (_Recorder,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{path}", received
    finally:
        server.shutdown()
        server.server_close()


def emulator_snowflake_settings(target_path: Path, **overrides: object) -> Settings:
    """Settings for dbt's snowflake target on the fakesnow emulator (inside `fakesnow.patch()`)."""
    from flows.settings import load_settings

    values: dict[str, object] = {
        "warehouse": "snowflake",
        "dbt_target": "snowflake",
        "snowflake_account": "fakesnow",
        "snowflake_user": "dbt",
        "snowflake_password": "unused",
        "snowflake_database": "STOCKPIPE",
        "dbt_target_path": target_path,
    }
    return load_settings(**(values | overrides))


def _end_offset(consumer: Consumer, tp: TopicPartition, timeout: float) -> int:
    """The partition's end offset; a topic created a moment ago may not have its leader yet
    (NOT_LEADER_FOR_PARTITION, LEADER_NOT_AVAILABLE): ask again until `timeout`."""
    import time

    from confluent_kafka import KafkaError, KafkaException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=timeout)[1]
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            retriable = code in (
                KafkaError.NOT_LEADER_FOR_PARTITION,
                KafkaError.LEADER_NOT_AVAILABLE,
            )
            if not retriable or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def read_records(
    bootstrap: str, topic: str, timeout: float = 30.0, config: dict[str, str] | None = None
) -> list[tuple[str | None, bytes | None, int, dict[str, bytes]]]:
    """Every record in `topic` as (key, value, partition, headers), in partition order.

    Reads up to each partition's end offset as it was when called, within `timeout`.
    `config`: more client settings (a secured broker's).
    """
    import time

    from confluent_kafka import OFFSET_BEGINNING

    consumer = Consumer(
        {
            **(config or {}),
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{time.time_ns()}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        high = {p: _end_offset(consumer, TopicPartition(topic, p), timeout) for p in partitions}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: list[tuple[str | None, bytes | None, int, dict[str, bytes]]] = []
        done = {p: high[p] == 0 for p in partitions}
        deadline = time.monotonic() + timeout
        while not all(done.values()) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                assert msg.error() is None, msg.error()
                key = msg.key().decode() if msg.key() is not None else None
                headers = dict(msg.headers() or [])
                out.append((key, msg.value(), msg.partition(), headers))
                if msg.offset() + 1 >= high[msg.partition()]:
                    done[msg.partition()] = True
        assert all(done.values()), f"could not read all of {topic} within {timeout}s"
        return out
    finally:
        consumer.close()
