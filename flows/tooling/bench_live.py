"""The live part of `stockpipe bench`: bar latency on a paced stream, and resume after a kill.

The stream runs as it would in production (`flows/tooling/engines/live_flow.py`: the
real `run_stream`, its default settings, recovery on) on a fresh topic, lake
folder and recovery folder, while a producer thread writes ticks stamped with
the wall clock at a fixed rate, spread over the symbols (`TickWriter`, with
its heartbeats, paced by `flows.ingest.pacing.Pacer`):

- **Bar latency.** A watcher thread lists the lake's `bars/` files every
  100 ms and notes when each (symbol, window) first shows up with revision 0.
  A bar's latency is that wall time minus (window end + allowed lateness): how
  long after the earliest moment it could be final the bar was readable. Only
  windows wholly inside the paced period count. The producer starts once the
  stream reads its topic; the measured period starts at the next bar boundary
  (the ticks before it warm the stream up) and lasts `seconds`. Afterwards
  the producer stays connected (heartbeats only, like a quiet live feed) until
  every such bar is visible.
- **Resume after kill.** At spaced points of the measured period the stream's
  process group is SIGKILLed and the stream started again at once. Each run
  appends `<time> <partition> <last offset>` per decoded batch to a progress
  file of its own; the resume time is how long after the restart the new run
  had read again, on every partition, up to the offset the killed run had
  reached.
- **Exactly once.** Afterwards every (symbol, window, revision) must be in the
  lake once in content: a replay after a kill rewrites files under the same
  names, so duplicated rows would mean a file written twice under different
  names, and differing ones a replay that computed something else.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flows.errors import StockpipeError
from flows.settings import Settings

READY_TIMEOUT_S = 180.0  # a started stream reads its topic within this (a loaded machine is slow)
RESUME_TIMEOUT_S = 180.0  # a restarted stream catches up within this
VISIBLE_TIMEOUT_S = 300.0  # after the paced period, every bar of it is in the lake within this
POLL_S = 0.1
SOURCE = "bench"


def kill_fractions(kills: int) -> list[float]:
    """Where in the measured period the kills fall: evenly from 40% to 80% (one kill: 60%)."""
    if kills <= 0:
        return []
    if kills == 1:
        return [0.6]
    return [0.4 + 0.4 * i / (kills - 1) for i in range(kills)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class LakeCheck:
    """What the lake holds after the live run: every (symbol, window, revision) once in content."""

    files: int
    rows: int
    distinct: int  # distinct (symbol, window_start, revision)
    conflicting: int  # of those, how many appear with rows that differ

    @property
    def duplicated(self) -> int:
        return self.rows - self.distinct

    @property
    def ok(self) -> bool:
        return self.conflicting == 0


@dataclass
class LiveResult:
    """Bar latencies and resume times of one live run."""

    symbols: int
    rate: float
    seconds: float
    expected_bars: int  # (symbol, window) wholly inside the paced period
    latencies: list[float] = field(default_factory=list)  # seconds, one per bar that showed up
    resumes: list[float] = field(default_factory=list)  # seconds, one per kill
    lake: LakeCheck | None = None

    @property
    def bars(self) -> int:
        return len(self.latencies)

    @property
    def missing(self) -> int:
        return self.expected_bars - self.bars

    def latency(self, q: float) -> float | None:
        return percentile(self.latencies, q)

    @property
    def latency_max(self) -> float | None:
        return max(self.latencies, default=None)


class ProgressLog:
    """A stream run's progress file, read as it grows: the offsets read per partition, and when."""

    def __init__(self, path: Path):
        self.path = path
        self._pos = 0
        self.read: dict[int, int] = {}  # partition -> largest offset read so far
        self._targets: dict[int, int] = {}
        self._reached: dict[int, float] = {}  # partition -> time it reached its target

    def watch_for(self, targets: dict[int, int]) -> None:
        """From now on, note when each partition first reads up to its offset in `targets`."""
        self._targets = dict(targets)
        self._reached = {p: 0.0 for p, offset in targets.items() if self.read.get(p, -1) >= offset}

    def poll(self) -> None:
        """Take in the lines written since the last poll (a torn last line waits for the next)."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._pos)
                chunk = fh.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1
        self._pos += end
        for line in chunk[:end].splitlines():
            try:
                at, partition, offset = line.split()
                when, p, o = float(at), int(partition), int(offset)
            except ValueError:  # a line torn by a kill
                continue
            if o > self.read.get(p, -1):
                self.read[p] = o
            target = self._targets.get(p)
            if target is not None and o >= target and p not in self._reached:
                self._reached[p] = when

    def caught_up_at(self) -> float | None:
        """When every watched partition had read up to its target (None: not yet)."""
        if len(self._reached) < len(self._targets):
            return None
        return max(self._reached.values(), default=0.0)

    def reads(self, partitions: int) -> bool:
        """Polls; True once the run has read from `partitions` partitions."""
        self.poll()
        return len(self.read) >= partitions

    def caught_up(self) -> bool:
        """Polls; True once every watched partition has read up to its target."""
        self.poll()
        return self.caught_up_at() is not None


class LiveStream:
    """The stream under test as a subprocess in its own process group: start, SIGKILL, restart."""

    def __init__(self, env: dict[str, str], folder: Path):
        self.env, self.folder = env, folder
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.log_path: Path | None = None

    def start(self) -> tuple[float, ProgressLog]:
        """Start a run; returns its start (wall time) and its progress log."""
        self.runs += 1
        progress = self.folder / f"progress-{self.runs}.txt"
        self.log_path = self.folder / f"stream-{self.runs}.log"
        cmd = [sys.executable, "-m", "flows.tooling.engines.live_flow", "--progress", str(progress)]
        with self.log_path.open("wb") as log:
            started = time.time()
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return started, ProgressLog(progress)

    def kill(self) -> None:
        """SIGKILL the run's whole process group and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # gone meanwhile
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def check(self) -> None:
        """Raise, with the end of its log, if the run exited by itself."""
        if self.proc is None or self.proc.poll() is None:
            return
        tail = []
        if self.log_path is not None and self.log_path.exists():
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            tail = [line for line in lines if not line.startswith("%")][-15:]
        raise StockpipeError(
            f"bench: the live stream (run {self.runs}) exited {self.proc.returncode} by itself; "
            f"last lines of {self.log_path}:\n" + "\n".join(tail)
        )


class PacedFeed(threading.Thread):
    """Ticks stamped with the wall clock at `rate` per second over `symbols`, until `until`.

    Then it stays connected (heartbeats only) until `release` is set. Notes the
    (symbol, window start) of every tick and the event time of the first and last.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        symbols: Sequence[str],
        rate: float,
        until: float,
        seed: int = 0,
    ):
        super().__init__(name="bench-feed", daemon=True)
        self.settings, self.topic, self.symbols = settings, topic, list(symbols)
        self.rate, self.until = rate, until
        self.rng = random.Random(f"{seed}:live")
        self.abort = threading.Event()  # stop pacing at once (an error elsewhere)
        self.release = threading.Event()  # the run is over: disconnect
        self.paced = threading.Event()  # the paced period is over
        self.windows: set[tuple[str, int]] = set()
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        from flows.ingest import TickWriter
        from flows.ingest.pacing import Pacer, now_ms
        from flows.ingest.ticks import Tick, tick_id

        bar_ms = self.settings.bar_seconds * 1000
        prices = {s: 10.0 + 490.0 * self.rng.random() for s in self.symbols}
        last_ts: dict[str, int] = {}
        same_ms: dict[str, int] = {}
        try:
            with TickWriter(self.settings, self.topic, create_topics=False) as out:
                pacer = Pacer(self.abort, rate=self.rate)
                while time.time() < self.until and pacer.wait(None):
                    symbol = self.symbols[self.sent % len(self.symbols)]
                    ts = now_ms()
                    price = round(prices[symbol] * math.exp(self.rng.gauss(0.0, 5e-4)), 2)
                    prices[symbol] = price
                    volume = float(self.rng.choice((1, 10, 50, 100, 100, 200, 500)))
                    # occurrence: distinct ids for identical trades in one millisecond
                    if last_ts.get(symbol) == ts:
                        same_ms[symbol] += 1
                    else:
                        last_ts[symbol], same_ms[symbol] = ts, 0
                    tid = tick_id(symbol, ts, price, volume, (), same_ms[symbol])
                    out.send(Tick(symbol, ts, price, volume, tid, SOURCE))
                    self.windows.add((symbol, ts // bar_ms * bar_ms))
                    if self.first_ms is None:
                        self.first_ms = ts
                    self.last_ms = ts
                    self.sent += 1
                    if self.sent % 200 == 0:
                        out.poll(0)
                self.paced.set()
                self.release.wait()
        except BaseException as exc:  # reported by the orchestrator, which checks `error`
            self.error = exc
        finally:
            self.paced.set()

    def check(self) -> None:
        if self.error is not None:
            raise StockpipeError(f"bench: the live producer failed: {self.error}") from self.error

    def measured_windows(self, bar_ms: int) -> set[tuple[str, int]]:
        """(symbol, window start ms) of the windows wholly inside the paced period."""
        if self.first_ms is None or self.last_ms is None:
            return set()
        return {
            (symbol, start)
            for symbol, start in self.windows
            if start >= self.first_ms and start + bar_ms <= self.last_ms + 1
        }


class LakeWatcher(threading.Thread):
    """Lists the lake's bar files every `POLL_S` and notes when each revision-0 bar first shows."""

    def __init__(self, lake: Path):
        super().__init__(name="bench-lake-watcher", daemon=True)
        self.lake = lake
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.seen: set[Path] = set()
        # (symbol, window start ms) -> (wall time first visible, window end ms)
        self.visible: dict[tuple[str, int], tuple[float, int]] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.scan()
                self.stop.wait(POLL_S)
        except BaseException as exc:
            self.error = exc

    def scan(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = [p for p in self.lake.glob("bars/**/*.parquet") if p not in self.seen]
        now = time.time()  # right after the listing: the files were visible by then
        for path in sorted(files):
            try:
                table = pq.read_table(
                    path, columns=["symbol", "window_start", "window_end", "revision"]
                )
            except (OSError, pa.ArrowInvalid):  # vanished or not readable yet: next scan
                continue
            self.seen.add(path)
            columns = [
                table.column("symbol").to_pylist(),
                table.column("window_start").cast(pa.int64()).to_pylist(),
                table.column("window_end").cast(pa.int64()).to_pylist(),
                table.column("revision").to_pylist(),
            ]
            with self.lock:
                for symbol, start_us, end_us, revision in zip(*columns, strict=True):
                    if revision == 0:
                        self.visible.setdefault((symbol, start_us // 1000), (now, end_us // 1000))

    def missing(self, windows: set[tuple[str, int]]) -> int:
        with self.lock:
            return sum(1 for key in windows if key not in self.visible)


def check_lake(lake: Path) -> LakeCheck:
    """Count rows against distinct (symbol, window_start, revision) over every bar file."""
    import polars as pl

    files = sorted(lake.glob("bars/**/*.parquet"))
    if not files:
        return LakeCheck(0, 0, 0, 0)
    rows = pl.read_parquet(files)
    keys = ["symbol", "window_start", "revision"]
    distinct = rows.select(keys).unique().height
    conflicting = rows.unique().group_by(keys).len().filter(pl.col("len") > 1).height
    return LakeCheck(len(files), rows.height, distinct, conflicting)


def wait_until(
    done: Callable[[], bool],
    checks: Sequence[Callable[[], None]],
    timeout: float = math.inf,
    failure: str = "",
) -> None:
    """Poll `done` every `POLL_S` until it holds; raise if a check fails or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not done():
        for check in checks:
            check()
        if time.monotonic() > deadline:
            raise StockpipeError(f"bench: {failure} within {timeout:.0f}s")
        time.sleep(POLL_S)


def run_live(
    settings: Settings,
    topic: str,
    *,
    env: dict[str, str],
    lake: Path,
    partitions: int,
    symbols: Sequence[str],
    seconds: float,
    rate: float,
    kills: int,
    workdir: Path,
    seed: int = 0,
    say: Callable[[str], None] = lambda line: None,
) -> LiveResult:
    """The live run on `topic` (fresh, with `partitions` partitions).

    `env` is the stream's environment: it points STOCKPIPE_TOPIC at `topic`,
    STOCKPIPE_LAKE_URL at the local folder `lake` and STOCKPIPE_RECOVERY_DIR at
    a fresh folder. The stream's logs and progress files go to `workdir`.
    """
    bar_ms = settings.bar_seconds * 1000
    result = LiveResult(len(symbols), rate, seconds, 0)
    stream = LiveStream(env, workdir)
    watcher = LakeWatcher(lake)
    feed: PacedFeed | None = None
    try:
        _, progress = stream.start()
        say(f"[live] starting the stream on {topic} ...")
        wait_until(
            lambda: progress.reads(partitions),
            [stream.check],
            READY_TIMEOUT_S,
            "the live stream did not start reading its topic",
        )
        watcher.start()
        start = time.time()
        measured_from = math.ceil(start * 1000 / bar_ms) * bar_ms / 1000  # the next bar boundary
        feed = PacedFeed(settings, topic, symbols, rate, measured_from + seconds, seed)
        feed.start()
        say(
            f"[live] {rate:,.0f} ticks/s over {len(symbols)} symbols: {measured_from - start:.0f}s "
            f"of warm-up to a bar boundary, then {seconds:g}s measured, with {kills} kill(s)"
        )
        checks = [stream.check, feed.check, lambda: _raise_from(watcher.error)]
        for fraction in kill_fractions(kills):
            due = measured_from + fraction * seconds
            wait_until(lambda due=due: time.time() >= due, checks)
            stream.kill()
            progress.poll()
            targets = dict(progress.read)
            restarted, progress = stream.start()
            progress.watch_for(targets)
            wait_until(
                progress.caught_up,
                checks,
                RESUME_TIMEOUT_S,
                "the restarted stream did not read again what the killed one had read",
            )
            resume = max(0.0, (progress.caught_up_at() or restarted) - restarted)
            result.resumes.append(resume)
            say(f"[live] killed the stream and restarted it: caught up again in {resume:.2f}s")
        wait_until(feed.paced.is_set, checks)
        windows = feed.measured_windows(bar_ms)
        result.expected_bars = len(windows)
        say(f"[live] paced period over ({feed.sent:,} ticks); waiting for {len(windows)} bars ...")
        # Bars still missing at the deadline are a finding (reported), not a failed bench.
        deadline = time.monotonic() + VISIBLE_TIMEOUT_S
        wait_until(lambda: not watcher.missing(windows) or time.monotonic() > deadline, checks)
        lateness = settings.allowed_lateness
        with watcher.lock:
            for key in sorted(windows):
                if key in watcher.visible:
                    seen_at, end_ms = watcher.visible[key]
                    result.latencies.append(seen_at - (end_ms / 1000 + lateness))
    finally:
        watcher.stop.set()
        if feed is not None:
            feed.abort.set()
            feed.release.set()
            feed.join(timeout=60)
        stream.kill()
        if watcher.is_alive():
            watcher.join(timeout=10)
    result.lake = check_lake(lake)
    return result


def _raise_from(error: BaseException | None) -> None:
    if error is not None:
        raise StockpipeError(f"bench: the lake watcher failed: {error}") from error
