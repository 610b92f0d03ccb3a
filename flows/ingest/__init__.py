"""Producers: ticks into Kafka from the market simulator, Finnhub, Coinbase, Binance or a replay file.

Every producer yields `flows.ingest.ticks.Tick` values (or, for deliberately broken
records, `(key, raw bytes)` pairs) and hands them to `TickWriter`, the one
place that talks to Kafka.
"""

from __future__ import annotations

from typing import Any

from flows.ingest.kafka_out import Item, TickWriter, ensure_topics

__all__ = ["Item", "TickWriter", "ensure_topics", "simulate"]


def __getattr__(name: str) -> Any:
    # the simulator (numpy, exchange-calendars) loads when first asked for, so a
    # command's --help that imports this package stays light
    if name == "simulate":
        from flows.ingest.sim import simulate

        return simulate
    raise AttributeError(f"module 'flows.ingest' has no attribute {name!r}")
