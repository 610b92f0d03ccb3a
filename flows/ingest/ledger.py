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

Each entry carries `id`, a hash of its content (`entry_id`); entries written
before it existed get the same id derived from their content when read. The
backfill (`stockpipe backfill-outages`) appends, append-only, one line per
(entry, symbol) it repaired:

    {"repaired": "<entry id>", "symbol": "...", "via": "trades|candles",
     "ticks": ..., "at": "<ISO>"}

so a re-run repairs nothing twice and a run that stopped half-way resumes.
Readers of outages skip lines with a `repaired` key; `read_ledger` keeps each
(entry, symbol)'s first repair line in `Ledger.repairs` (its `via` and `at`), which
`stockpipe load-outages` loads into the warehouse as `bronze.outages`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

# the fields that make an entry what it is (its id is their hash)
_ID_FIELDS = ("start_ms", "end_ms", "symbols", "reason", "source", "count", "topic")


def entry_id(obj: dict[str, Any]) -> str:
    """The stable id of a ledger entry: a hash of its content (old entries get the same)."""
    content = {k: obj.get(k) for k in _ID_FIELDS}
    return hashlib.blake2b(
        orjson.dumps(content, option=orjson.OPT_SORT_KEYS), digest_size=8
    ).hexdigest()


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
        obj["id"] = entry_id(obj)
        obj["start"] = datetime.fromtimestamp(self.start_ms / 1000, UTC).isoformat()
        obj["end"] = datetime.fromtimestamp((self.end_ms or self.start_ms) / 1000, UTC).isoformat()
        return orjson.dumps(obj) + b"\n"


def append_outage(path: Path, outage: Outage) -> None:
    """Append one outage as a JSON line (the file is what backfill jobs read)."""
    _append_line(path, outage.line())


def _append_line(path: Path, line: bytes) -> None:
    """Append one line; after a torn last line (a crash mid-write) start a new line first,
    so the torn line stays the only one lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as fh:
        if fh.tell():
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                line = b"\n" + line
        fh.write(line)


@dataclass
class Ledger:
    """What a ledger file holds: its outage entries (each with `id`) and what was repaired."""

    entries: list[dict[str, Any]]
    repaired: set[tuple[str, str]]  # (entry id, symbol)
    # (entry id, symbol) -> its first repair line ({"repaired", "symbol", "via", "ticks", "at"})
    repairs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


def read_ledger(path: Path) -> Ledger:
    """Every entry and repair of the ledger at `path` (a missing file is an empty ledger).

    A line that is not a JSON object (a torn last line after a crash) is skipped.
    """
    entries: list[dict[str, Any]] = []
    repaired: set[tuple[str, str]] = set()
    repairs: dict[tuple[str, str], dict[str, Any]] = {}
    if not path.exists():
        return Ledger(entries, repaired, repairs)
    for raw in path.read_bytes().splitlines():
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        if "repaired" in obj:
            pair = (str(obj["repaired"]), str(obj.get("symbol")))
            repaired.add(pair)
            repairs.setdefault(pair, obj)
        elif isinstance(obj.get("start_ms"), int) and isinstance(obj.get("symbols"), list):
            obj.setdefault("id", entry_id(obj))
            entries.append(obj)
    return Ledger(entries, repaired, repairs)


def append_repaired(path: Path, entry: str, symbol: str, via: str, ticks: int) -> None:
    """Record that `symbol` of the entry `entry` was backfilled (`via` trades or candles)."""
    line = {
        "repaired": entry,
        "symbol": symbol,
        "via": via,
        "ticks": ticks,
        "at": datetime.now(UTC).isoformat(),
    }
    _append_line(path, orjson.dumps(line) + b"\n")
