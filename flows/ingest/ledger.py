"""The outage ledger: one JSON line per stretch of data that did not reach Kafka.

Every producer writes the same format to `STOCKPIPE_OUTAGE_LOG`, so a backfill
job reads one file to learn what to fetch again:

    {"start_ms": ..., "end_ms": ..., "symbols": [...], "reason": "...",
     "attempts": 0, "source": "...", "reasons": [...], "count": ..., "topic": ...,
     "start": "<ISO of start_ms>", "end": "<ISO of end_ms>"}

`start_ms`..`end_ms` is the event-time range (epoch ms UTC) to backfill for
`symbols`: for a feed outage (`source` = `finnhub-ws`) the silent stretch of the
connection, for ticks the Kafka producer finally could not deliver
(`source` = `kafka-producer`) the first and last event ts of those ticks, with
`count` of them and the `topic` they were bound for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson


@dataclass
class Outage:
    """A stretch without data, for one or more symbols."""

    start_ms: int
    symbols: list[str]
    reason: str
    end_ms: int | None = None
    attempts: int = 0
    source: str = ""
    reasons: list[str] = field(default_factory=list)
    count: int | None = None  # records lost, when known (a feed outage cannot know)
    topic: str | None = None

    def line(self) -> bytes:
        obj = asdict(self)
        obj["start"] = datetime.fromtimestamp(self.start_ms / 1000, UTC).isoformat()
        obj["end"] = datetime.fromtimestamp((self.end_ms or self.start_ms) / 1000, UTC).isoformat()
        return orjson.dumps(obj) + b"\n"


def append_outage(path: Path, outage: Outage) -> None:
    """Append one outage as a JSON line (the file is what backfill jobs read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        fh.write(outage.line())
