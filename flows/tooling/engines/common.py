"""What every runner shares: its arguments and how it reports a result."""

from __future__ import annotations

import argparse
import json
import resource
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "


def runner_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers.")
    parser.add_argument("--topic", required=True, help="The topic holding the bench ticks.")
    parser.add_argument("--ticks", type=int, required=True, help="Messages to handle, then stop.")
    parser.add_argument("--workdir", default=None, help="A fresh folder for engine state.")
    parser.add_argument("--group", default=None, help="Consumer group (engines that need one).")
    parser.add_argument(
        "--exit-when-idle", type=float, default=2.0, help="The dataflow's idle stop (seconds)."
    )
    return parser.parse_args(argv)


def kafka_security() -> dict[str, str]:
    """librdkafka's security settings from the environment the bench gave this runner."""
    from flows.settings import load_settings

    return load_settings().kafka_security_config()


def peak_rss_mb() -> float:
    """Peak resident set size of this process since it started, in MiB.

    VmHWM, not ru_maxrss: ru_maxrss survives exec, so a runner would inherit
    the peak of the orchestrator it was forked from.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best effort


def emit(ticks: int, seconds: float, **extra: Any) -> None:
    """Print the result line the orchestrator parses: rate, busy time, peak memory."""
    result = {
        "ticks": ticks,
        "seconds": seconds,
        "tps": ticks / seconds if seconds > 0 else None,
        "peak_rss_mb": peak_rss_mb(),
        **extra,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)
