"""The real dataflow (consume -> validate -> dedup -> bars -> Parquet), timed from inside.

Runs `flows.stream.run.run_stream(settings, exit_when_idle=...)` exactly as
`stockpipe stream --exit-when-idle` does, on the settings in the environment
(the orchestrator points STOCKPIPE_TOPIC, STOCKPIPE_LAKE_URL and
STOCKPIPE_RECOVERY_DIR at the bench topic and fresh folders).

How the time is measured. `--exit-when-idle` makes the flow wait that long
after the last message before it stops, so wall time would understate the
rate (by a lot on small runs). Instead, `Probe` wraps three steps of the
flow, without changing what they do, and adds up the busy time:

    first decode  ->  the bar step has handled the N-th tick       (the stream)
  + Parquet writes that happened between then and end of input     (age flushes)
  + end of input  ->  run_stream returned                          (emitting every
                       still open window, final Parquet files, shutdown)

Only the idle wait itself is left out. The wrapping costs one clock read per
batch. Peak memory is this process's ru_maxrss: with one worker the whole
dataflow runs in it.
"""

from __future__ import annotations

import time
from typing import Any

from flows.tooling.engines.common import emit, runner_args


class Probe:
    """Timestamps of the flow's first decode, N-th tick, end of input, and lake writes."""

    def __init__(self, ticks: int):
        self.ticks = ticks
        self.first: float | None = None
        self.last: float | None = None
        self.eof: float | None = None
        self.seen = 0
        self.writes: list[tuple[float, float]] = []  # (start, end) of each Parquet file write

    def install(self) -> None:
        """Wrap decode, the bar logic and the lake writer; call before the flow is built."""
        import flows.stream.dataflow as ohlc
        import flows.stream.lake_sink as lake
        from flows.stream.bars import TICK

        probe = self
        make_decoder = ohlc.make_decoder

        def timed_make_decoder(*args: Any) -> Any:
            decode = make_decoder(*args)

            def timed_decode(item: Any) -> Any:
                if probe.first is None:
                    probe.first = time.perf_counter()
                return decode(item)

            return timed_decode

        class TimedBarLogic(ohlc.BarLogic):
            def on_batch(self, values: list) -> Any:
                out = super().on_batch(values)
                probe.seen += sum(d.kinds.count(TICK) for d in values)
                if probe.last is None and probe.seen >= probe.ticks:
                    probe.last = time.perf_counter()
                return out

            def on_eof(self) -> Any:
                if probe.eof is None:
                    probe.eof = time.perf_counter()
                return super().on_eof()

        write = lake.LakeWriter._write

        def timed_write(writer: Any, folder: str, name: str, table: Any) -> str:
            start = time.perf_counter()
            try:
                return write(writer, folder, name, table)
            finally:
                probe.writes.append((start, time.perf_counter()))

        # build_flow looks these names up when it runs, so the flow gets the wrapped ones.
        ohlc.make_decoder = timed_make_decoder
        ohlc.BarLogic = TimedBarLogic
        lake.LakeWriter._write = timed_write

    def busy_seconds(self, ended: float) -> float:
        if self.first is None or self.last is None:
            raise SystemExit(
                f"dataflow handled {self.seen} of {self.ticks} ticks: the topic holds fewer "
                "valid, distinct ticks than asked for"
            )
        eof = self.eof if self.eof is not None else ended
        while_idle = sum(end - start for start, end in self.writes if self.last <= start < eof)
        return (self.last - self.first) + while_idle + (ended - eof)


def main(argv: list[str] | None = None) -> None:
    args = runner_args(__doc__.splitlines()[0], argv)
    from flows.settings import load_settings
    from flows.stream.run import run_stream

    settings = load_settings(topic=args.topic, kafka_bootstrap_servers=args.bootstrap)
    probe = Probe(args.ticks)
    probe.install()
    started = time.perf_counter()
    run_stream(settings, exit_when_idle=args.exit_when_idle)
    ended = time.perf_counter()
    emit(
        probe.seen,
        probe.busy_seconds(ended),
        wall_seconds=ended - started,
        files_written=len(probe.writes),
    )


if __name__ == "__main__":
    main()
