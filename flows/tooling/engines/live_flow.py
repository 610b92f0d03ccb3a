"""The real stream for the bench's live run, telling the bench how far it has read.

    python -m flows.tooling.engines.live_flow --progress PATH

Runs `flows.stream.run.run_stream(settings)` exactly as `stockpipe stream` does
(one worker, recovery on, no idle stop), on the settings in the environment:
the bench points STOCKPIPE_TOPIC, STOCKPIPE_LAKE_URL and STOCKPIPE_RECOVERY_DIR
at a fresh topic and fresh folders. Before the flow is built, the decode step
is wrapped the way `flows.tooling.engines.stockpipe_flow.Probe` wraps it, without
changing what it does: after each partition batch it appends one line

    <time.time()> <partition> <offset of the batch's last record>

to PATH and flushes it, so the bench sees from outside which records a run has
read, and when (e.g. how long a restarted run takes to read again everything
the killed one had read). A run killed with SIGKILL leaves at most a torn last
line, which the reader skips.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import IO, Any


def last_offset(batch: Any) -> int | None:
    """The offset of the last record of a `flows.stream.kafka_source.PartitionBatch` (None: empty)."""
    return batch.offsets[-1] if batch.offsets else None


def report_progress(out: IO[str]) -> None:
    """Wrap `flows.stream.dataflow.make_decoder` so every decoded batch writes a progress line to `out`."""
    import flows.stream.dataflow as ohlc

    make_decoder = ohlc.make_decoder

    def reporting_make_decoder(*args: Any) -> Any:
        decode = make_decoder(*args)

        def reporting_decode(item: Any) -> Any:
            out_items = decode(item)
            batch = item[1]
            last = last_offset(batch)
            if last is not None:
                out.write(f"{time.time():.6f} {batch.partition} {last}\n")
                out.flush()
            return out_items

        return reporting_decode

    # build_flow looks the name up when it runs, so the flow gets the wrapped decoder.
    ohlc.make_decoder = reporting_make_decoder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--progress", type=Path, required=True, help="Append progress lines here.")
    args = parser.parse_args(argv)
    from flows.logs import setup_logging

    setup_logging()
    from flows.settings import load_settings
    from flows.stream.run import run_stream

    settings = load_settings()
    with args.progress.open("a", encoding="utf-8") as out:
        report_progress(out)
        raise SystemExit(run_stream(settings))


if __name__ == "__main__":
    main()
