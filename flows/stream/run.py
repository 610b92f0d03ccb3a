"""`stockpipe stream`: run the dataflow with recovery, in one or several processes.

Recovery is always on: Bytewax snapshots the Kafka offsets and the bar state
of each Kafka partition (with the rows of its micro-batch not sealed yet)
every epoch into SQLite partitions under `STOCKPIPE_RECOVERY_DIR/<topic>`, so
a killed worker resumes where the last snapshot was taken and replays from
there. Every row is a function of the log, so the replay writes exactly the
rows (and files) the first run wrote.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from flows.errors import StockpipeError
from flows.net import free_ports, kafka_unusable
from flows.settings import Settings, load_settings, parse_duration
from flows.stream.recovery import open_store, recovery_path, start_from_drain

log = logging.getLogger(__name__)


def check_input(settings: Settings) -> int:
    """Fail early, with a message, when the broker or the topic is missing; returns partitions."""
    admin = AdminClient(settings.kafka_config())
    try:
        meta = admin.list_topics(timeout=10)  # all topics: asking for one may auto-create it
    except KafkaException:
        raise kafka_unusable(settings.kafka_config()) from None
    topic = meta.topics.get(settings.topic)
    if topic is None or topic.error is not None or not topic.partitions:
        raise StockpipeError(
            f"topic {settings.topic!r} does not exist on {settings.kafka_bootstrap_servers}: "
            "produce to it first (`stockpipe produce`) or set STOCKPIPE_TOPIC"
        )
    if settings.dlq_topic not in meta.topics:
        dlq = NewTopic(settings.dlq_topic, 1, config={"message.timestamp.type": "LogAppendTime"})
        for future in admin.create_topics([dlq]).values():
            try:
                future.result(timeout=30)
            except KafkaException as exc:  # created meanwhile by another worker: fine
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    return len(topic.partitions)


def run_stream(
    settings: Settings,
    *,
    workers: int = 1,
    exit_when_idle: float | None = None,
    reset_offsets: str | None = None,
    process_id: int | None = None,
    addresses: list[str] | None = None,
    from_drain: bool = False,
) -> int:
    """Run the dataflow until stopped (or idle, with `exit_when_idle`); returns an exit code.

    `workers > 1` starts that many worker processes on this host (real
    parallelism; Bytewax workers inside one process share the GIL).
    `process_id`/`addresses` join a cluster of processes on several hosts.
    `from_drain` first moves a drained recovery store aside and starts a new one
    under the current rules (`flows.stream.recovery.start_from_drain`).
    The store's rules are checked before anything runs (`RulesChanged`).
    """
    partitions = check_input(settings)
    recovery = recovery_path(settings)
    if from_drain:
        if process_id is not None:
            raise StockpipeError(
                "--from-drain starts a new recovery store, once: run it on one host alone "
                "(`stockpipe stream --from-drain --exit-when-idle 1s`), then start the cluster"
            )
        start_from_drain(settings, recovery, partitions)
    record = open_store(settings, recovery, partitions)
    if workers > 1 and process_id is None:
        return _run_local_cluster(settings, workers, exit_when_idle, reset_offsets)

    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    from flows.metrics import serve, write_textfile
    from flows.stream.dataflow import build_flow
    from flows.stream.kafka_source import WATCHER

    if settings.metrics_port:  # process i of a cluster on port + 1 + i (the producer: port)
        serve(settings.metrics_port + 1 + (process_id or 0), WATCHER.health)
    flow = build_flow(
        settings,
        exit_when_idle=exit_when_idle,
        reset_offsets=reset_offsets,
        partitions=partitions,
        start_offsets=record.start_offsets,
        not_before=record.not_before_ms,
    )
    tune_gc()
    previous = _stop_cleanly_on_signals()
    try:
        cli_main(
            flow,
            workers_per_process=1,
            process_id=process_id,
            addresses=addresses,
            epoch_interval=timedelta(seconds=settings.epoch_interval),
            recovery_config=RecoveryConfig(str(recovery), backup_interval=timedelta(0)),
        )
        write_textfile(_textfile(settings, process_id))
    except Exception as exc:
        user_error = _user_error(exc)
        if user_error is not None:  # Bytewax wraps it: show the user's error, not the chain
            raise user_error from None
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _textfile(settings: Settings, process_id: int | None) -> Path | None:
    """STOCKPIPE_METRICS_TEXTFILE, one file per process of a cluster (`name.<i>.prom`)."""
    path = settings.metrics_textfile
    if path is None or process_id is None:
        return path
    return path.with_name(f"{path.stem}.{process_id}{path.suffix}")


def _stop_cleanly_on_signals() -> dict[int, Any]:
    """SIGTERM and SIGINT end the input: the epoch closes with its files and snapshot, and
    the process exits 0. A second signal stops at once (a restart then re-reads at most
    one epoch, as after a crash). Returns the handlers to put back."""
    from flows.stream.kafka_source import request_stop

    def stop(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        log.info("%s: ending the input; the epoch closes with its files and snapshot", name)
        request_stop()
        for s in (signal.SIGINT, signal.SIGTERM):  # the next one is not waited out
            signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)

    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers; the caller handles its signals
    return {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}


def tune_gc() -> None:
    """Keep Python's cycle collector from rescanning the bar state over and over.

    The state is many long-lived objects without cycles (windows, their bars and
    dedup keys) and every tick allocates a few short-lived ones, so with the
    default thresholds full collections rescan the whole state every few
    thousand ticks: a third of the stream's time at 500 symbols (measured with
    `stockpipe bench`). Everything imported so far is frozen out of the scans,
    and collections run after 50,000 allocations instead of 700; cycles are
    still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1_000)


def _user_error(exc: BaseException) -> StockpipeError | None:
    """The `StockpipeError` (e.g. a vanished offset, a lake permanently failing) behind `exc`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, StockpipeError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _run_local_cluster(
    settings: Settings, workers: int, exit_when_idle: float | None, reset_offsets: str | None
) -> int:
    first = free_ports(workers)  # below the ephemeral range: no connection takes one first
    addresses = ";".join(f"127.0.0.1:{first + i}" for i in range(workers))
    env = {**os.environ, **settings.to_env()}
    # Each process is this same command joined to a cluster on loopback.
    args = [sys.executable, "-m", "flows.cli", "stream", "--addresses", addresses]
    if exit_when_idle is not None:
        args += ["--exit-when-idle", str(exit_when_idle)]
    if reset_offsets is not None:
        args += ["--reset-offsets", reset_offsets]
    procs = [subprocess.Popen([*args, "--process-id", str(i)], env=env) for i in range(workers)]

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if failed:
        raise StockpipeError(
            "worker process(es) failed: "
            + ", ".join(f"#{i} exited {c}" for i, c in failed)
            + " (see their output above)"
        )
    return 0


class ResetOffsets(StrEnum):
    earliest = "earliest"
    latest = "latest"


def stream_command(
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, max=64, help="Worker processes on this host.")
    ] = 1,
    exit_when_idle: Annotated[
        str | None,
        typer.Option(
            "--exit-when-idle",
            help="Stop after this long without new ticks (e.g. 10s), first closing every open "
            "window and writing every file, through a flush marker in the log.",
            show_default="never: run until stopped",
        ),
    ] = None,
    reset_offsets: Annotated[
        ResetOffsets | None,
        typer.Option(
            "--reset-offsets",
            help="Only when a partition no longer holds the offset to resume from: go on from "
            "its earliest or latest offset (earliest|latest).",
            show_default="stop, naming the partition",
        ),
    ] = None,
    process_id: Annotated[
        int | None,
        typer.Option(
            "--process-id",
            "-i",
            help="This process's index in a multi-host cluster.",
            show_default="none: one host",
        ),
    ] = None,
    addresses: Annotated[
        str | None,
        typer.Option(
            "--addresses",
            "-a",
            help="host:port of every cluster process, separated by ';'.",
            show_default="none: one host",
        ),
    ] = None,
    from_drain: Annotated[
        bool,
        typer.Option(
            "--from-drain",
            help="Once, after a drain (--exit-when-idle under the old settings): move the "
            "drained recovery store aside and start a new one under the current settings, "
            "right after the drained offsets.",
        ),
    ] = False,
) -> None:
    """Run the Bytewax dataflow: Kafka ticks -> OHLCV bars -> Parquet lake (with recovery)."""
    from flows.logs import setup_logging

    setup_logging()
    if (process_id is None) != (addresses is None):
        raise StockpipeError("--process-id and --addresses go together")
    settings = load_settings()
    try:
        idle = None if exit_when_idle is None else parse_duration(exit_when_idle)
    except ValueError as exc:
        raise StockpipeError(f"--exit-when-idle: {exc}") from None
    raise typer.Exit(
        run_stream(
            settings,
            workers=workers,
            exit_when_idle=idle,
            reset_offsets=reset_offsets.value if reset_offsets else None,
            process_id=process_id,
            addresses=addresses.split(";") if addresses else None,
            from_drain=from_drain,
        )
    )
