"""Producers: ticks into Kafka from the market simulator, Finnhub, Coinbase, Binance or a replay file.

Every producer yields `flows.ingest.ticks.Tick` values (or, for deliberately broken
records, `(key, raw bytes)` pairs) and hands them to `TickWriter`, the one
place that talks to Kafka.
"""

from __future__ import annotations

from flows.ingest.kafka_out import Item, TickWriter, ensure_topics
from flows.ingest.sim import simulate

__all__ = ["Item", "TickWriter", "ensure_topics", "simulate"]
