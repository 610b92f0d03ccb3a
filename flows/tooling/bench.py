"""`stockpipe bench`: the performance method of docs/performance.md, on the configured broker.

For each symbol count S it produces N simulated ticks (no faults, a fixed
past start, so every run of the same size reads the same data) into a fresh
topic, then runs four engines on that topic, each in a process of its own
(`benchmarks/`):

    raw       confluent-kafka batch consume, no decoding: the ceiling
    dataflow  the stockpipe dataflow (`run_stream`) into a fresh lake and recovery dir
    naive     a straightforward Bytewax flow, per-tick fold_window
    quix      a Quix Streams tumbling-window app

The topic is produced once; then every engine runs `repeat` times on it,
interleaved (raw, dataflow, naive, quix, raw, dataflow, ...) so that noise on
the shared machine hits every engine alike, each repetition with fresh state
(lake and recovery folders, consumer group, state folder). Every figure is the
median of the repetitions, with their min and max beside it.

The simulator's intensity is chosen per run so that the N ticks span about
`span_hours` of event time per symbol (`intensity_for`): dedup and
restatement state then reach their steady size instead of growing through the
whole run, at 4 symbols as at 500.

Producing is not measured. Each rate is N / busy seconds, from the first
message the engine's code sees to the last one handled; the dataflow's idle
wait (`--exit-when-idle`) is excluded, its final flush is not (see
`flows/tooling/engines/stockpipe_flow.py`). As a cheap correctness check, every
repetition of the dataflow must write final bars covering exactly the distinct
(symbol, window) pairs of the produced ticks, with every tick counted once.

Then a live run (`flows.tooling.bench_live`) measures bar latency on a paced stream
and how long the stream takes to resume after a SIGKILL. The bench topics are
deleted afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer
from rich.console import Console
from rich.table import Table

from flows.errors import StockpipeError
from flows.settings import Settings, load_settings, parse_duration
from flows.tooling.bench_live import LiveResult, run_live

ENGINES = ("raw", "dataflow", "naive", "quix")
RUNNERS = {
    "raw": "flows.tooling.engines.raw_consume",
    "dataflow": "flows.tooling.engines.stockpipe_flow",
    "naive": "flows.tooling.engines.naive_bytewax",
    "quix": "flows.tooling.engines.quix_app",
}
RATE_KEYS = {
    "raw": "raw_consume_tps",
    "dataflow": "dataflow_tps",
    "naive": "naive_bytewax_tps",
    "quix": "quix_tps",
}
RSS_KEY = "dataflow_peak_rss_mb"
# The keys of a run in docs/performance.md's JSON (medians); the bench adds more after them.
JSON_KEYS = ("symbols", "ticks", *RATE_KEYS.values(), RSS_KEY)
# Event time of the first simulated tick: Monday 2025-03-03, the NYSE open (09:30 EST).
BENCH_START_MS = 1_741_012_200_000
KNOWN_SYMBOLS = ("COIN", "MARA", "MSTR", "BLK", "AAPL")
RESULT_PREFIX = "BENCH_RESULT "  # what flows.tooling.engines.common.emit prints
PROBE_TICKS = 20_000  # simulated to choose the intensity (not produced)
SHARED_NOTE = (
    "a shared machine: other work runs beside the bench, so every figure is the median of "
    "the repetitions, with their min and max"
)

log = logging.getLogger(__name__)


@dataclass
class EngineResult:
    """One engine's measurement in one repetition, as its runner reported it."""

    tps: float
    seconds: float
    ticks: int
    peak_rss_mb: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements, with their min and max."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values))


def _median(spread: Spread | None) -> float | None:
    return None if spread is None else spread.median


@dataclass
class BenchRun:
    """Everything measured for one symbol count, over every repetition."""

    symbols: int
    ticks: int
    expected_bars: int  # distinct (symbol, window) in the produced ticks
    repetitions: int = 0
    event_span_hours: float | None = None  # per symbol, median over the symbols
    results: dict[str, list[EngineResult]] = field(default_factory=dict)
    # (final bars, sum of their trade_count) the dataflow wrote, one per repetition
    bar_checks: list[tuple[int, int]] = field(default_factory=list)
    # the produced ticks that count in trade_count (None: all of them)
    trades: int | None = None

    def add(self, engine: str, result: EngineResult) -> None:
        self.results.setdefault(engine, []).append(result)

    @property
    def bars_ok(self) -> bool | None:
        """Whether every dataflow repetition wrote the expected bars (None: none ran)."""
        if not self.bar_checks:
            return None
        return all(check == self.expected_check for check in self.bar_checks)

    @property
    def expected_check(self) -> tuple[int, int]:
        """(bars, Σ trade_count): every window, every tick that counts in volume."""
        return self.expected_bars, self.ticks if self.trades is None else self.trades

    def rate(self, engine: str) -> Spread | None:
        return Spread.of([r.tps for r in self.results.get(engine, [])])

    def peak_rss(self, engine: str) -> Spread | None:
        return Spread.of([r.peak_rss_mb for r in self.results.get(engine, [])])

    def tps(self, engine: str) -> float | None:
        """The median rate of `engine` (None: it did not run)."""
        return _median(self.rate(engine))

    def ratio(self, engine: str) -> float | None:
        """Median dataflow rate over the median rate of `engine`."""
        ours, theirs = self.tps("dataflow"), self.tps(engine)
        return None if ours is None or not theirs else ours / theirs

    def as_json(self) -> dict[str, Any]:
        spreads = {key: self.rate(engine) for engine, key in RATE_KEYS.items()}
        spreads[RSS_KEY] = self.peak_rss("dataflow")
        out: dict[str, Any] = {"symbols": self.symbols, "ticks": self.ticks}
        out.update({key: _median(spread) for key, spread in spreads.items()})
        out["repetitions"] = self.repetitions
        for key, spread in spreads.items():
            out[f"{key}_min"] = None if spread is None else spread.low
            out[f"{key}_max"] = None if spread is None else spread.high
        out["event_span_hours"] = self.event_span_hours
        out["ratios"] = {f"dataflow/{e}": self.ratio(e) for e in ("raw", "naive", "quix")}
        out["bars_ok"] = self.bars_ok
        return out


@dataclass
class BenchReport:
    """A whole bench: one run per symbol count, the live run, and where it ran."""

    runs: list[BenchRun]
    live: LiveResult | None
    machine: dict[str, Any]
    repeat: int

    def as_json(self) -> dict[str, Any]:
        live = self.live
        resume = Spread.of(live.resumes) if live is not None else None
        lake = live.lake if live is not None else None
        return {
            "runs": [run.as_json() for run in self.runs],
            "bar_latency_p50_s": None if live is None else live.latency(50),
            "bar_latency_p99_s": None if live is None else live.latency(99),
            "bar_latency_max_s": None if live is None else live.latency_max,
            "bar_latency_bars": None if live is None else live.bars,
            "bar_latency_missing_bars": None if live is None else live.missing,
            "resume_s": _median(resume),
            "resume_s_min": None if resume is None else resume.low,
            "resume_s_max": None if resume is None else resume.high,
            "live_lake": None
            if lake is None
            else {
                "files": lake.files,
                "rows": lake.rows,
                "distinct_revisions": lake.distinct,
                "conflicting_revisions": lake.conflicting,
                "ok": lake.ok,
            },
            "machine": self.machine,
        }


def machine_info(repeat: int) -> dict[str, Any]:
    """What the figures were measured on: CPUs, the load when the bench began, and a caveat."""
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        nproc = os.cpu_count() or 1
    return {
        "nproc": nproc,
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "repetitions": repeat,
        "note": SHARED_NOTE,
    }


def bench_symbols(count: int) -> list[str]:
    """`count` symbols: the simulator's known profiles first, then generated names."""
    known = list(KNOWN_SYMBOLS[:count])
    return known + [f"B{i:04d}" for i in range(count - len(known))]


def intensity_for(symbols: Sequence[str], ticks: int, span_hours: float, seed: int = 0) -> float:
    """The simulator intensity at which `ticks` ticks over `symbols` span about `span_hours`.

    Trades arrive at a rate proportional to the intensity, shaped by the session
    (busier at the open and the close, thin before and after hours). So: a
    probe at intensity 1 gives a rough rate; a second probe, at the intensity
    that should put about `PROBE_TICKS` ticks in the span, counts the ticks
    actually in it (the session's shape included), and the intensity is scaled
    by the ratio. Both probes are simulated only, never produced.
    """
    from flows.ingest import simulate

    span_ms = span_hours * 3_600_000
    last = BENCH_START_MS
    for tick in simulate(symbols, seed=seed, start_ms=BENCH_START_MS, count=PROBE_TICKS):
        last = tick.ts  # no faults: every item is a Tick
    rough = PROBE_TICKS * span_ms / max(last - BENCH_START_MS, 1)  # ticks in the span at 1
    probe = PROBE_TICKS / rough
    in_span = sum(
        1
        for _ in simulate(
            symbols,
            seed=seed,
            start_ms=BENCH_START_MS,
            end_ms=BENCH_START_MS + int(span_ms),
            count=10 * PROBE_TICKS,  # a bound, should the rough rate be far off
            intensity=probe,
        )
    )
    return probe * ticks / max(in_span, 1)


class Produced(NamedTuple):
    """What `produce_ticks` wrote."""

    windows: int  # distinct (symbol, window) of the ticks
    event_span_hours: float  # last minus first event time per symbol, median over symbols
    # ticks that count in a bar's volume and trade_count under the trade-condition rules
    # (an official open or close report counts in neither)
    trades: int


def produce_ticks(
    settings: Settings,
    topic: str,
    symbols: Sequence[str],
    ticks: int,
    seed: int = 0,
    intensity: float = 1.0,
) -> Produced:
    """Write `ticks` fault-free simulated ticks to `topic`; returns their windows and span."""
    from flows.ingest import TickWriter, simulate
    from flows.tooling.chaos import trade_updates

    bar_ms = settings.bar_seconds * 1000
    windows: set[tuple[str, int]] = set()
    spans: dict[str, list[int]] = {}  # symbol -> [first ts, last ts]
    trades = 0
    # No producer heartbeats: the engines' counts are over ticks only.
    with TickWriter(settings, topic, create_topics=False, heartbeat_interval=0) as out:
        items = simulate(
            symbols, seed=seed, start_ms=BENCH_START_MS, count=ticks, intensity=intensity
        )
        for tick in items:
            out.send(tick)  # no faults: every item is a Tick
            windows.add((tick.symbol, tick.ts // bar_ms))
            trades += trade_updates(tick.source, tick.conditions)[2]
            span = spans.setdefault(tick.symbol, [tick.ts, tick.ts])
            span[1] = tick.ts  # the simulator yields each symbol's ticks in event-time order
    if out.acknowledged != ticks:
        raise StockpipeError(f"bench: the broker acknowledged {out.acknowledged} of {ticks} ticks")
    hours = statistics.median((last - first) / 3_600_000 for first, last in spans.values())
    return Produced(len(windows), hours, trades)


def create_topic(settings: Settings, partitions: int, label: str) -> str:
    """A fresh topic `bench.<label>.<random>` (and its `.dlq`)."""
    from flows.ingest import ensure_topics

    topic = f"bench.{label}.{uuid.uuid4().hex[:10]}"
    ensure_topics(settings.model_copy(update={"topic_partitions": partitions}), topic)
    return topic


def delete_topics(settings: Settings, *needles: str) -> None:
    """Delete every topic whose name contains one of `needles` (the bench's own topics)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**settings.kafka_config(), "logger": log})
    try:
        names = [t for t in admin.list_topics(timeout=10).topics if any(n in t for n in needles)]
        for future in admin.delete_topics(names, operation_timeout=30).values() if names else []:
            future.result(timeout=30)
    except KafkaException as exc:  # leftovers are harmless; say so and go on
        Console(stderr=True).print(f"bench: could not delete topics {needles}: {exc}")


def engine_env(settings: Settings, topic: str, lake: Path, recovery: Path) -> dict[str, str]:
    """An engine process's environment: the settings, pointed at `topic` and fresh folders."""
    env = {
        **os.environ,
        **settings.to_env(),
        "STOCKPIPE_TOPIC": topic,
        "STOCKPIPE_LAKE_URL": str(lake),
        "STOCKPIPE_RECOVERY_DIR": str(recovery),
    }
    env.pop("STOCKPIPE_EXIT_WHEN_IDLE", None)
    return env


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
    repeat: int,
    span_hours: float,
    partitions: int,
    seed: int,
    exit_when_idle: float,
    workdir: Path,
    say: Callable[[str], None],
) -> BenchRun:
    """Produce once, then measure every engine not in `skip` `repeat` times, interleaved."""
    topic = create_topic(settings, partitions, f"{symbols}sym")
    quix_groups: list[str] = []
    try:
        names = bench_symbols(symbols)
        intensity = intensity_for(names, ticks, span_hours, seed)
        say(f"[{symbols} symbols] producing {ticks:,} ticks into {topic} ...")
        started = time.monotonic()
        produced = produce_ticks(settings, topic, names, ticks, seed, intensity)
        say(
            f"[{symbols} symbols] produced in {time.monotonic() - started:.1f}s; event time "
            f"spans {produced.event_span_hours:.2f} h per symbol (intensity {intensity:.3g})"
        )
        run = BenchRun(symbols, ticks, produced.windows, repeat, produced.event_span_hours)
        run.trades = produced.trades
        timeout = 300 + ticks / 1_000  # generous: a shared 2-core machine is slow, not stuck
        for rep in range(1, repeat + 1):
            folder = workdir / f"rep{rep}"
            folder.mkdir()
            lake = folder / "lake"
            env = engine_env(settings, topic, lake, folder / "recovery")
            common = ["--bootstrap", settings.kafka_bootstrap_servers, "--topic", topic]
            common += ["--ticks", str(ticks), "--workdir", str(folder)]
            quix_groups.append(f"bench-quix-{uuid.uuid4().hex[:8]}")
            extra = {
                "dataflow": ["--exit-when-idle", str(exit_when_idle)],
                "quix": ["--group", quix_groups[-1]],
            }
            for engine in ENGINES:
                if engine in skip:
                    continue
                say(f"[{symbols} symbols, {rep}/{repeat}] {engine} ...")
                args = common + extra.get(engine, [])
                result = run_runner(engine, args, env, folder / f"{engine}.log", timeout)
                run.add(engine, result)
                say(
                    f"[{symbols} symbols, {rep}/{repeat}] {engine}: {result.tps:,.0f} ticks/s "
                    f"({result.seconds:.2f}s)"
                )
            if "dataflow" not in skip:
                run.bar_checks.append(lake_bar_counts(lake))
        return run
    finally:
        delete_topics(settings, topic, *quix_groups)


def run_live_bench(
    settings: Settings,
    *,
    seconds: float,
    rate: float,
    symbols: int,
    kills: int,
    partitions: int,
    seed: int,
    workdir: Path,
    say: Callable[[str], None],
) -> LiveResult:
    """The live run (bar latency, resume after kill) on a fresh topic, lake and recovery dir."""
    topic = create_topic(settings, partitions, "live")
    try:
        lake = workdir / "lake"
        env = engine_env(settings, topic, lake, workdir / "recovery")
        return run_live(
            settings,
            topic,
            env=env,
            lake=lake,
            partitions=partitions,
            symbols=bench_symbols(symbols),
            seconds=seconds,
            rate=rate,
            kills=kills,
            workdir=workdir,
            seed=seed,
            say=say,
        )
    finally:
        delete_topics(settings, topic)


def check_options(
    settings: Settings,
    *,
    ticks: int,
    symbol_counts: Sequence[int],
    skip: Sequence[str],
    repeat: int,
    span_hours: float,
    latency_seconds: float,
    latency_rate: float,
    latency_symbols: int,
) -> None:
    """Raise a `StockpipeError` naming the option, for options the bench cannot run with."""
    unknown = set(skip) - set(ENGINES)
    if unknown:
        raise StockpipeError(
            f"bench: cannot skip {', '.join(sorted(unknown))}: the engines are {', '.join(ENGINES)}"
        )
    if ticks < 1 or min(symbol_counts, default=0) < 1:
        raise StockpipeError("bench: --ticks and every --symbols count must be at least 1")
    if repeat < 1:
        raise StockpipeError(f"bench: --repeat must be at least 1, got {repeat}")
    if not span_hours > 0:
        raise StockpipeError(f"bench: --span must be > 0, got {span_hours:g}h")
    if latency_seconds < 0:
        raise StockpipeError(f"bench: --latency must be >= 0 (0 skips), got {latency_seconds:g}s")
    if latency_seconds and latency_seconds < settings.bar_seconds:
        raise StockpipeError(
            f"bench: --latency {latency_seconds:g}s is shorter than one bar "
            f"(STOCKPIPE_BAR_SECONDS={settings.bar_seconds}): no bar would be measured; "
            "give at least one bar, or 0 to skip the latency run"
        )
    if not latency_rate > 0:
        raise StockpipeError(f"bench: --latency-rate must be > 0 ticks/s, got {latency_rate}")
    if latency_symbols < 1:
        raise StockpipeError(f"bench: --latency-symbols must be at least 1, got {latency_symbols}")


def run_bench(
    settings: Settings,
    *,
    ticks: int = 1_000_000,
    symbol_counts: Sequence[int] = (4, 500),
    skip: Sequence[str] = (),
    repeat: int = 3,
    span_hours: float = 4.0,
    latency_seconds: float = 150.0,
    latency_rate: float = 2000.0,
    latency_symbols: int = 20,
    partitions: int | None = None,
    seed: int = 0,
    exit_when_idle: float = 2.0,
    workdir: Path | None = None,
    json_path: Path | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> BenchReport:
    """Run the benchmark for each symbol count, then the live run; optionally write the JSON."""
    check_options(
        settings,
        ticks=ticks,
        symbol_counts=symbol_counts,
        skip=skip,
        repeat=repeat,
        span_hours=span_hours,
        latency_seconds=latency_seconds,
        latency_rate=latency_rate,
        latency_symbols=latency_symbols,
    )
    partitions = partitions or settings.topic_partitions
    machine = machine_info(repeat)
    runs = []
    live = None
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
                    repeat=repeat,
                    span_hours=span_hours,
                    partitions=partitions,
                    seed=seed,
                    exit_when_idle=exit_when_idle,
                    workdir=folder,
                    say=say,
                )
            )
        if latency_seconds:
            folder = root / f"live-{uuid.uuid4().hex[:6]}"
            folder.mkdir(parents=True)
            live = run_live_bench(
                settings,
                seconds=latency_seconds,
                rate=latency_rate,
                symbols=latency_symbols,
                kills=repeat,
                partitions=partitions,
                seed=seed,
                workdir=folder,
                say=say,
            )
    report = BenchReport(runs, live, machine, repeat)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return report


def _rate(spread: Spread | None) -> str:
    if spread is None:
        return "-"
    return f"{spread.median:,.0f} ({spread.low:,.0f}–{spread.high:,.0f})"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _bars_check(run: BenchRun) -> str:
    if run.bars_ok is None:
        return "-"
    if run.bars_ok:
        return "ok"
    wrong = sum(1 for check in run.bar_checks if check != run.expected_check)
    return f"MISMATCH ({wrong} of {len(run.bar_checks)})"


def results_table(runs: Sequence[BenchRun], repeat: int) -> Table:
    """One column per run, one row per measurement: median (min–max) of the repetitions."""
    table = Table(title=f"stockpipe bench: median (min–max) of {repeat} repetitions")
    table.add_column("ticks/s unless said", justify="left")
    for run in runs:
        table.add_column(f"{run.symbols} symbols\n{run.ticks:,} ticks", justify="right")

    def row(label: str, cell: Callable[[BenchRun], str]) -> None:
        table.add_row(label, *(cell(run) for run in runs))

    row("raw consume", lambda r: _rate(r.rate("raw")))
    row("dataflow", lambda r: _rate(r.rate("dataflow")))
    row("naive bytewax", lambda r: _rate(r.rate("naive")))
    row("quix streams", lambda r: _rate(r.rate("quix")))
    row("dataflow / raw", lambda r: _ratio(r.ratio("raw")))
    row("dataflow / naive", lambda r: _ratio(r.ratio("naive")))
    row("dataflow / quix", lambda r: _ratio(r.ratio("quix")))
    for engine in ENGINES:
        row(f"{engine} peak RSS (MB)", lambda r, e=engine: _rate(r.peak_rss(e)))
    row("event time per symbol (h)", lambda r: _hours(r.event_span_hours))
    row("dataflow bars check", _bars_check)
    return table


def _hours(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def live_table(live: LiveResult) -> Table:
    """Bar latency and resume-after-kill figures of the live run."""
    table = Table(
        title=f"live stream: {live.rate:,.0f} ticks/s over {live.symbols} symbols, "
        f"{live.seconds:g}s"
    )
    table.add_column("measure", justify="left")
    table.add_column("seconds unless said", justify="right")
    table.add_row("bars measured", f"{live.bars} of {live.expected_bars}")
    table.add_row("bar latency p50", _seconds(live.latency(50)))
    table.add_row("bar latency p99", _seconds(live.latency(99)))
    table.add_row("bar latency max", _seconds(live.latency_max))
    resume = Spread.of(live.resumes)
    table.add_row(
        f"resume after kill ({len(live.resumes)}x)",
        "-" if resume is None else f"{resume.median:.2f} ({resume.low:.2f}–{resume.high:.2f})",
    )
    lake = live.lake
    if lake is not None:
        state = "ok" if lake.ok else "CONFLICT"
        table.add_row(
            "lake: rows / distinct revisions",
            f"{lake.rows:,} / {lake.distinct:,} {state}",
        )
    return table


def print_report(report: BenchReport, console: Console) -> None:
    """The tables, the warnings, and the caveat about the machine."""
    if report.runs:
        console.print(results_table(report.runs, report.repeat))
    for run in report.runs:
        bad = [c for c in run.bar_checks if c != run.expected_check]
        for bars, ticks_in_bars in bad:
            console.print(
                f"[bold yellow]warning:[/] {run.symbols} symbols: a dataflow repetition wrote "
                f"{bars} final bars holding {ticks_in_bars} ticks; the produced ticks have "
                f"{run.expected_bars} (symbol, window) windows and {run.expected_check[1]} "
                "ticks that count in volume"
            )
    live = report.live
    if live is not None:
        console.print(live_table(live))
        if live.missing:
            console.print(
                f"[bold yellow]warning:[/] {live.missing} of {live.expected_bars} bars of the "
                "paced period never showed up in the lake"
            )
        lake = live.lake
        if lake is not None and not lake.ok:
            console.print(
                f"[bold yellow]warning:[/] {lake.conflicting} (symbol, window, revision) appear "
                "in the lake with rows that differ: a replay after a kill wrote something else"
            )
        elif lake is not None and lake.duplicated:
            console.print(
                f"[bold yellow]warning:[/] {lake.duplicated} bar rows are in the lake twice "
                "(identical content, under different file names)"
            )
    machine = report.machine
    load = " ".join(f"{x:.2f}" for x in machine["load_average"])
    console.print(
        f"Figures are medians of {report.repeat} repetition(s), (min–max) beside them, on a "
        f"shared machine ({machine['nproc']} CPUs, load average {load} at the start): other "
        "work runs beside the bench, so they are noisy.",
        highlight=False,
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
    repeat: Annotated[
        int,
        typer.Option("--repeat", help="Repetitions of every engine per run (median, min, max)."),
    ] = 3,
    span: Annotated[
        str, typer.Option("--span", help="Event time the ticks span per symbol (a duration).")
    ] = "4h",
    latency: Annotated[
        str,
        typer.Option(
            "--latency",
            "--latency-seconds",
            help="Length of the paced live run that measures bar latency (a duration); 0 skips it.",
        ),
    ] = "150s",
    latency_rate: Annotated[
        float, typer.Option("--latency-rate", help="Ticks/s of the live run, over all symbols.")
    ] = 2000.0,
    latency_symbols: Annotated[
        int, typer.Option("--latency-symbols", help="Symbols of the live run.")
    ] = 20,
    skip: Annotated[
        str,
        typer.Option(
            "--skip", help=f"Engines to leave out, of {','.join(ENGINES)}.", show_default="none"
        ),
    ] = "",
    json_output: Annotated[
        bool,
        typer.Option("--json", help="Print the results as one JSON object (progress: stderr)."),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Also write the results as JSON to this file.", show_default="no file"
        ),
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option(
            "--partitions",
            min=1,
            help="Bench topic partitions.",
            show_default="STOCKPIPE_TOPIC_PARTITIONS, 4",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Simulator seed.")] = 0,
    exit_when_idle: Annotated[
        str,
        typer.Option("--exit-when-idle", help="The dataflow's idle stop (a duration, >= 500ms)."),
    ] = "2s",
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            help="Keep lakes, engine state and logs here.",
            show_default="a temporary folder, removed after",
        ),
    ] = None,
) -> None:
    """Benchmark the dataflow against raw consume, a naive Bytewax flow and Quix Streams.

    Then measure bar latency on a paced live stream, and how fast it resumes after a kill.
    """
    try:
        span_s, latency_s, idle_s = (parse_duration(v) for v in (span, latency, exit_when_idle))
    except ValueError as exc:
        raise StockpipeError(f"bench: --span/--latency/--exit-when-idle: {exc}") from None
    if idle_s < 0.5:
        raise StockpipeError(
            f"bench: --exit-when-idle must be at least 500ms, got {exit_when_idle!r}"
        )
    console = Console(stderr=json_output)
    report = run_bench(
        load_settings(),
        ticks=ticks,
        symbol_counts=_counts(symbols),
        skip=[s.strip() for s in skip.split(",") if s.strip()],
        repeat=repeat,
        span_hours=span_s / 3600,
        latency_seconds=latency_s,
        latency_rate=latency_rate,
        latency_symbols=latency_symbols,
        partitions=partitions,
        seed=seed,
        exit_when_idle=idle_s,
        workdir=workdir,
        json_path=out,
        say=lambda line: console.print(line, highlight=False, markup=False),
    )
    if json_output:
        typer.echo(json.dumps(report.as_json(), indent=2))
    else:
        print_report(report, console)
    if out is not None:
        console.print(f"wrote {out}")
