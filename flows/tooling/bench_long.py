"""A long backlog through the real stream: memory as it goes, and resume after a late kill.

    python -m flows.tooling.bench_long --ticks 4000000 --symbols 500 --span-hours 16

Produces N fault-free simulated ticks whose event times span `--span-hours`
per symbol (several restate horizons) into a fresh topic, then runs the real
stream over that backlog (`flows.tooling.engines.live_flow`: `run_stream` with the
default settings, recovery on) and samples the worker's resident memory
against the records it has read. Memory must level off once the first
horizon is behind it: state is bounded by the horizons, not by the run.

Each time the stream has read one of the `--kill-at` fractions of the ticks
it is SIGKILLed and started again at once; the resume time is how long the
restarted stream takes to read again everything the killed one had read, with
all that history in the topic and in the recovery store, so the kills show
whether resume grows with the history. Then it reads to the end. Prints
memory at each tenth of the run, every resume time, and a `LONG_RUN {json}`
line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flows.settings import Settings
from flows.tooling.bench import (
    bench_symbols,
    create_topic,
    delete_topics,
    engine_env,
    intensity_for,
    produce_ticks,
)
from flows.tooling.bench_live import RESUME_TIMEOUT_S, LiveStream, ProgressLog, wait_until

DEADLINE_S = 1800.0  # generous: a shared 2-core machine is slow, not stuck


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process now, MiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def records_read(progress: ProgressLog) -> int:
    progress.poll()
    return sum(offset + 1 for offset in progress.read.values())


def follow(
    stream: LiveStream, progress: ProgressLog, until: int, samples: list[tuple[int, float]]
) -> None:
    """Sample (records read, RSS) every half second until `until` records are read."""
    deadline = time.monotonic() + DEADLINE_S
    while (read := records_read(progress)) < until:
        stream.check()
        if time.monotonic() > deadline:
            raise SystemExit(f"long run: only {read} of {until} records read in {DEADLINE_S:.0f}s")
        rss = rss_mb(stream.proc.pid) if stream.proc is not None else None
        if rss is not None:
            samples.append((read, rss))
        time.sleep(0.5)


def long_run(
    settings: Settings,
    ticks: int,
    symbols: int,
    span_hours: float,
    kill_at: Sequence[float] = (0.25, 0.5, 0.75),
    partitions: int | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Produce, stream with kills and restarts; returns what `main` prints as JSON."""
    names = bench_symbols(symbols)
    topic = create_topic(settings, partitions or settings.topic_partitions, "long")
    try:
        started = time.monotonic()
        intensity = intensity_for(names, ticks, span_hours)
        produced = produce_ticks(settings, topic, names, ticks, intensity=intensity)
        say(
            f"produced {ticks:,} ticks over {symbols} symbols into {topic} "
            f"({produced.event_span_hours:.1f} h of event time per symbol) "
            f"in {time.monotonic() - started:.0f}s"
        )
        with tempfile.TemporaryDirectory(prefix="stockpipe-long-") as tmp:
            folder = Path(tmp)
            env = engine_env(settings, topic, folder / "lake", folder / "recovery")
            stream = LiveStream(env, folder)
            samples: list[tuple[int, float]] = []
            resume_s: list[float] = []
            try:
                _, progress = stream.start()
                for fraction in sorted(kill_at):
                    follow(stream, progress, int(ticks * fraction), samples)
                    targets = dict(progress.read)
                    stream.kill()
                    restarted, progress = stream.start()
                    progress.watch_for(targets)
                    follow(stream, progress, sum(o + 1 for o in targets.values()), samples)
                    wait_until(
                        progress.caught_up,
                        [stream.check],
                        RESUME_TIMEOUT_S,
                        "the restarted stream did not read again what the killed one had read",
                    )
                    resume_s.append(progress.caught_up_at() - restarted)  # type: ignore[operator]
                follow(stream, progress, ticks, samples)
            finally:
                stream.kill()
    finally:
        delete_topics(settings, topic)
    by_tenth = []
    for k in range(1, 11):
        seen = [rss for read, rss in samples if read <= ticks * k // 10]
        by_tenth.append(max(seen, default=None))
    return {
        "ticks": ticks,
        "symbols": symbols,
        "event_span_hours": produced.event_span_hours,
        "peak_rss_mb_by_tenth": by_tenth,
        "kill_at": sorted(kill_at),
        "resume_s": resume_s,
    }


def fractions(text: str) -> list[float]:
    """`--kill-at`: comma-separated fractions of the run, each above 0 and below 1."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None
    wrong = [v for v in values if not 0 < v < 1]
    if wrong:
        raise argparse.ArgumentTypeError(f"each must be above 0 and below 1, got {wrong[0]:g}")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=4_000_000)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--span-hours", type=float, default=16.0)
    parser.add_argument(
        "--kill-at",
        type=fractions,
        default=[0.25, 0.5, 0.75],
        help="Fractions read at each kill, comma-separated (default 0.25,0.5,0.75).",
    )
    parser.add_argument("--partitions", type=int, default=None)
    args = parser.parse_args(argv)
    from flows.settings import load_settings

    result = long_run(
        load_settings(),
        args.ticks,
        args.symbols,
        args.span_hours,
        kill_at=args.kill_at,
        partitions=args.partitions,
        say=lambda line: print(line, flush=True),
    )
    for k, rss in enumerate(result["peak_rss_mb_by_tenth"], start=1):
        shown = "-" if rss is None else f"{rss:,.0f} MB"
        print(f"  up to {args.ticks * k // 10:>10,} records read: peak RSS {shown}")
    for fraction, seconds in zip(result["kill_at"], result["resume_s"], strict=True):
        print(f"resume after a SIGKILL at {fraction:.0%} of the run: {seconds:.2f}s")
    print("LONG_RUN " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
