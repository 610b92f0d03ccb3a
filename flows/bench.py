"""`stockpipe bench`: the performance method of DESIGN.md, on the configured broker.

For each symbol count S it produces N simulated ticks (no faults, a fixed
past start, so every run of the same size reads the same data) into a fresh
topic, then runs four engines on that topic, each in a process of its own
(`benchmarks/`):

    raw       confluent-kafka batch consume, no decoding: the ceiling
    dataflow  the stockpipe dataflow (`run_stream`) into a fresh lake and recovery dir
    naive     a straightforward Bytewax flow, per-tick fold_window
    quix      a Quix Streams tumbling-window app

Producing is not measured. Each rate is N / busy seconds, from the first
message the engine's code sees to the last one handled; the dataflow's idle
wait (`--exit-when-idle`) is excluded, its final flush is not (see
`benchmarks/stockpipe_flow.py`). As a cheap correctness check the dataflow's
final bars must cover exactly the distinct (symbol, minute) windows of the
produced ticks, with every tick counted once. The bench topics are deleted
afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.errors import StockpipeError
from flows.settings import Settings, load_settings

ENGINES = ("raw", "dataflow", "naive", "quix")
RUNNERS = {
    "raw": "benchmarks.raw_consume",
    "dataflow": "benchmarks.stockpipe_flow",
    "naive": "benchmarks.naive_bytewax",
    "quix": "benchmarks.quix_app",
}
JSON_KEYS = (
    "symbols",
    "ticks",
    "raw_consume_tps",
    "dataflow_tps",
    "naive_bytewax_tps",
    "quix_tps",
    "dataflow_peak_rss_mb",
)
# Event time of the first simulated tick: Monday 2025-03-03, the NYSE open (09:30 EST).
BENCH_START_MS = 1_741_012_200_000
KNOWN_SYMBOLS = ("COIN", "MARA", "MSTR", "BLK", "AAPL")
REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH_RESULT "  # what benchmarks.common.emit prints

log = logging.getLogger(__name__)


@dataclass
class EngineResult:
    """One engine's measurement, as its runner reported it."""

    tps: float
    seconds: float
    ticks: int
    peak_rss_mb: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchRun:
    """Everything measured for one symbol count."""

    symbols: int
    ticks: int
    expected_bars: int  # distinct (symbol, window) in the produced ticks
    engines: dict[str, EngineResult] = field(default_factory=dict)
    bars: int | None = None  # final bars the dataflow wrote
    ticks_in_bars: int | None = None  # sum of their trade_count

    @property
    def bars_ok(self) -> bool | None:
        if self.bars is None:
            return None
        return self.bars == self.expected_bars and self.ticks_in_bars == self.ticks

    def tps(self, engine: str) -> float | None:
        result = self.engines.get(engine)
        return None if result is None else result.tps

    def ratio(self, engine: str) -> float | None:
        ours, theirs = self.tps("dataflow"), self.tps(engine)
        return None if ours is None or not theirs else ours / theirs

    def as_json(self) -> dict[str, Any]:
        dataflow = self.engines.get("dataflow")
        return {
            "symbols": self.symbols,
            "ticks": self.ticks,
            "raw_consume_tps": self.tps("raw"),
            "dataflow_tps": self.tps("dataflow"),
            "naive_bytewax_tps": self.tps("naive"),
            "quix_tps": self.tps("quix"),
            "dataflow_peak_rss_mb": None if dataflow is None else dataflow.peak_rss_mb,
        }


def bench_symbols(count: int) -> list[str]:
    """`count` symbols: the simulator's known profiles first, then generated names."""
    known = list(KNOWN_SYMBOLS[:count])
    return known + [f"B{i:04d}" for i in range(count - len(known))]


def produce_ticks(
    settings: Settings, topic: str, symbols: Sequence[str], ticks: int, seed: int = 0
) -> int:
    """Write `ticks` fault-free simulated ticks to `topic`; returns the distinct windows in them."""
    from flows.producers import TickWriter, simulate

    bar_ms = settings.bar_seconds * 1000
    windows: set[tuple[str, int]] = set()
    # No producer heartbeats: the engines' counts are over ticks only.
    with TickWriter(settings, topic, create_topics=False, heartbeat_interval=0) as out:
        for tick in simulate(symbols, seed=seed, start_ms=BENCH_START_MS, count=ticks):
            out.send(tick)  # no faults: every item is a Tick
            windows.add((tick.symbol, tick.ts // bar_ms))
    if out.acknowledged != ticks:
        raise StockpipeError(f"bench: the broker acknowledged {out.acknowledged} of {ticks} ticks")
    return len(windows)


def create_topic(settings: Settings, partitions: int, symbols: int) -> str:
    from flows.producers import ensure_topics

    topic = f"bench.{symbols}sym.{uuid.uuid4().hex[:10]}"
    ensure_topics(settings.model_copy(update={"topic_partitions": partitions}), topic)
    return topic


def delete_topics(settings: Settings, *needles: str) -> None:
    """Delete every topic whose name contains one of `needles` (the bench's own topics)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers, "logger": log})
    try:
        names = [t for t in admin.list_topics(timeout=10).topics if any(n in t for n in needles)]
        for future in admin.delete_topics(names, operation_timeout=30).values() if names else []:
            future.result(timeout=30)
    except KafkaException as exc:  # leftovers are harmless; say so and go on
        Console(stderr=True).print(f"bench: could not delete topics {needles}: {exc}")


def run_runner(
    engine: str, args: list[str], env: dict[str, str], log_path: Path, timeout: float
) -> EngineResult:
    """Run one engine's runner in its own process; its output goes to `log_path`."""
    cmd = [sys.executable, "-m", RUNNERS[engine], *args]
    with open(log_path, "w") as log_file:
        try:
            proc = subprocess.run(
                cmd,
                env=env,
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise StockpipeError(
                f"bench: {engine} did not finish within {timeout:.0f}s (log: {log_path})"
            ) from None
    with open(log_path, "a") as log_file:
        log_file.write(proc.stdout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise StockpipeError(
            f"bench: {engine} failed (exit {proc.returncode}); last lines of {log_path}:\n"
            + "\n".join(tail)
        )
    result = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    tps, seconds = result.pop("tps"), result.pop("seconds")
    if not tps:
        raise StockpipeError(f"bench: {engine} measured no time ({seconds}s); log: {log_path}")
    return EngineResult(tps, seconds, result.pop("ticks"), result.pop("peak_rss_mb"), result)


def lake_bar_counts(lake: Path) -> tuple[int, int]:
    """(final bars, sum of their trade_count) in a lake folder: highest revision per window."""
    import polars as pl

    files = sorted(lake.glob("bars/**/*.parquet"))
    if not files:
        return 0, 0
    rows = pl.read_parquet(files, columns=["symbol", "window_start", "revision", "trade_count"])
    final = rows.sort("revision").group_by(["symbol", "window_start"]).last()
    return final.height, int(final["trade_count"].sum())


def run_one(
    settings: Settings,
    symbols: int,
    ticks: int,
    *,
    skip: set[str],
    partitions: int,
    seed: int,
    exit_when_idle: float,
    workdir: Path,
    say: Callable[[str], None],
) -> BenchRun:
    """Produce, then measure every engine not in `skip`, for one symbol count."""
    topic = create_topic(settings, partitions, symbols)
    quix_group = f"bench-quix-{uuid.uuid4().hex[:8]}"
    try:
        say(f"[{symbols} symbols] producing {ticks:,} ticks into {topic} ...")
        started = time.monotonic()
        expected = produce_ticks(settings, topic, bench_symbols(symbols), ticks, seed)
        say(f"[{symbols} symbols] produced in {time.monotonic() - started:.1f}s")
        run = BenchRun(symbols, ticks, expected)
        lake, recovery = workdir / "lake", workdir / "recovery"
        pythonpath = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {
            **os.environ,
            **settings.to_env(),
            "STOCKPIPE_TOPIC": topic,
            "STOCKPIPE_LAKE_URL": str(lake),
            "STOCKPIPE_RECOVERY_DIR": str(recovery),
            "PYTHONPATH": os.pathsep.join(pythonpath),
        }
        env.pop("STOCKPIPE_EXIT_WHEN_IDLE", None)
        common = ["--bootstrap", settings.kafka_bootstrap_servers, "--topic", topic]
        common += ["--ticks", str(ticks), "--workdir", str(workdir)]
        extra = {
            "dataflow": ["--exit-when-idle", str(exit_when_idle)],
            "quix": ["--group", quix_group],
        }
        timeout = 300 + ticks / 1_000  # generous: a shared 2-core machine is slow, not stuck
        for engine in ENGINES:
            if engine in skip:
                continue
            say(f"[{symbols} symbols] {engine} ...")
            result = run_runner(
                engine,
                common + extra.get(engine, []),
                env,
                workdir / f"{engine}.log",
                timeout,
            )
            run.engines[engine] = result
            say(f"[{symbols} symbols] {engine}: {result.tps:,.0f} ticks/s ({result.seconds:.2f}s)")
        if "dataflow" in run.engines:
            run.bars, run.ticks_in_bars = lake_bar_counts(lake)
        return run
    finally:
        delete_topics(settings, topic, quix_group)


def run_bench(
    settings: Settings,
    *,
    ticks: int = 1_000_000,
    symbol_counts: Sequence[int] = (4, 500),
    skip: Sequence[str] = (),
    partitions: int | None = None,
    seed: int = 0,
    exit_when_idle: float = 2.0,
    workdir: Path | None = None,
    json_path: Path | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> list[BenchRun]:
    """Run the benchmark for each symbol count; optionally write the JSON report."""
    unknown = set(skip) - set(ENGINES)
    if unknown:
        raise StockpipeError(
            f"bench: cannot skip {', '.join(sorted(unknown))}: the engines are {', '.join(ENGINES)}"
        )
    if ticks < 1 or not symbol_counts or min(symbol_counts) < 1:
        raise StockpipeError("bench: --ticks and every --symbols count must be at least 1")
    partitions = partitions or settings.topic_partitions
    runs = []
    with tempfile.TemporaryDirectory(prefix="stockpipe-bench-") as tmp:
        root = workdir or Path(tmp)
        for symbols in symbol_counts:
            folder = root / f"{symbols}sym-{uuid.uuid4().hex[:6]}"
            folder.mkdir(parents=True)
            runs.append(
                run_one(
                    settings,
                    symbols,
                    ticks,
                    skip=set(skip),
                    partitions=partitions,
                    seed=seed,
                    exit_when_idle=exit_when_idle,
                    workdir=folder,
                    say=say,
                )
            )
    if json_path is not None:
        write_json(json_path, runs)
    return runs


def write_json(path: Path, runs: Sequence[BenchRun]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": [run.as_json() for run in runs]}, indent=2) + "\n")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def results_table(runs: Sequence[BenchRun]) -> Table:
    """One column per run, one row per measurement (fits a narrow terminal)."""
    table = Table(title="stockpipe bench")
    table.add_column("ticks/s unless said", justify="left")
    for run in runs:
        table.add_column(f"{run.symbols} symbols\n{run.ticks:,} ticks", justify="right")

    def row(label: str, cell: Callable[[BenchRun], str]) -> None:
        table.add_row(label, *(cell(run) for run in runs))

    row("raw consume", lambda r: _rate(r.tps("raw")))
    row("dataflow", lambda r: _rate(r.tps("dataflow")))
    row("naive bytewax", lambda r: _rate(r.tps("naive")))
    row("quix streams", lambda r: _rate(r.tps("quix")))
    row("dataflow / raw", lambda r: _ratio(r.ratio("raw")))
    row("dataflow / naive", lambda r: _ratio(r.ratio("naive")))
    row("dataflow / quix", lambda r: _ratio(r.ratio("quix")))
    for engine in ENGINES:
        row(f"{engine} peak RSS (MB)", lambda r, e=engine: _memory(r.engines.get(e)))
    row("dataflow bars check", lambda r: {None: "-", True: "ok", False: "MISMATCH"}[r.bars_ok])
    return table


def _memory(result: EngineResult | None) -> str:
    return "-" if result is None else f"{result.peak_rss_mb:,.0f}"


def print_report(runs: Sequence[BenchRun], console: Console) -> None:
    console.print(results_table(runs))
    for run in runs:
        if run.bars_ok is False:
            console.print(
                f"[bold yellow]warning:[/] {run.symbols} symbols: the dataflow wrote {run.bars} "
                f"final bars holding {run.ticks_in_bars} ticks; the produced ticks have "
                f"{run.expected_bars} (symbol, minute) windows and {run.ticks} ticks"
            )


def _counts(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise StockpipeError(f"bench: --symbols takes counts like 4,500, got {value!r}") from None
    if not counts:
        raise StockpipeError(f"bench: --symbols takes counts like 4,500, got {value!r}")
    return counts


def bench_command(
    ticks: Annotated[int, typer.Option("--ticks", min=1, help="Ticks per run.")] = 1_000_000,
    symbols: Annotated[
        str, typer.Option("--symbols", help="Symbol counts, one run each (e.g. 4,500).")
    ] = "4,500",
    skip: Annotated[
        str, typer.Option("--skip", help=f"Engines to leave out, of {','.join(ENGINES)}.")
    ] = "",
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON here.")
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option("--partitions", min=1, help="Bench topic partitions (default: settings)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Simulator seed.")] = 0,
    exit_when_idle: Annotated[
        float, typer.Option("--exit-when-idle", min=0.5, help="Dataflow idle stop, seconds.")
    ] = 2.0,
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="Keep lakes, engine state and logs here (default: temp)."),
    ] = None,
) -> None:
    """Benchmark the dataflow against raw consume, a naive Bytewax flow and Quix Streams."""
    console = Console()
    runs = run_bench(
        load_settings(),
        ticks=ticks,
        symbol_counts=_counts(symbols),
        skip=[s.strip() for s in skip.split(",") if s.strip()],
        partitions=partitions,
        seed=seed,
        exit_when_idle=exit_when_idle,
        workdir=workdir,
        json_path=json_path,
        say=lambda line: console.print(line, highlight=False),
    )
    print_report(runs, console)
    if json_path is not None:
        console.print(f"wrote {json_path}")
