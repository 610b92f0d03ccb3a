"""`stockpipe backfill-outages`: fetch again, through Finnhub's REST API, what the ledger says is missing.

For every entry of the outage ledger (`flows.ingest.ledger`: feed outages and
the Kafka producer's undelivered ranges) overlapping `--since`..`--until`, and
each of its symbols not yet repaired:

- trades first: `/stock/tick` (premium), one UTC day at a time, paged, kept
  inside the entry's range. They become ticks with the websocket producer's
  content-derived id (`tick_id`, the occurrence index counted over identical
  trades of the fetched range), so trades that did arrive are dropped again by
  the stream's dedup. `source` is `finnhub-tick`.
- when the plan has no access (HTTP 403), 1-minute candles (`/stock/candle`,
  resolution 1) instead, for this and every later symbol of the run. A candle
  becomes four ticks, `source` `finnhub-candle`, ids `candle:<symbol>:<minute
  ms>:<o|h|l|c>`: open at the minute's start, high at +1 ms, low at +2 ms, close
  at its last millisecond (+59 999 ms), the candle's volume on the close tick and
  0 on the other three. The stream lets a candle stand for its whole minute
  (trades of it that did arrive are inside the candle) and marks the bar
  (`candle_count` 4): it keeps the candle's open, high, low, close and volume;
  its vwap is the close and its trade_count 4 (a candle knows no better).

Ticks go through `TickWriter`; once a symbol's ticks are acknowledged by
Kafka, a `repaired` line is appended to the ledger for (entry, symbol), so a
re-run repairs nothing twice and a run that stopped half-way resumes where it
stopped. Calls share the quote poller's `FinnhubApi`: one rate limiter, one
429/5xx retry policy.

Exit codes: 0 all repaired (or nothing to do), 2 bad options or settings,
69 Finnhub kept failing (what was repaired stays repaired: run again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
import typer

from flows.errors import ServiceUnavailable, StockpipeError
from flows.ingest.finnhub_rest import FinnhubApi, GaveUp, NoAccess, Skipped
from flows.ingest.kafka_out import Item, TickWriter
from flows.ingest.ledger import append_repaired, read_ledger
from flows.ingest.pacing import checked
from flows.ingest.ticks import CANDLE_SOURCE, tick_id
from flows.settings import Settings, load_settings, parse_duration

log = logging.getLogger(__name__)

TRADES_SOURCE = "finnhub-tick"
TICK_PAGE = 25_000  # /stock/tick's largest `limit`
# (offset in the minute in ms, part): open first, close last, so the bar keeps both
CANDLE_PARTS = ((0, "o"), (1, "h"), (2, "l"), (59_999, "c"))
MINUTE_MS = 60_000


@dataclass
class Job:
    """One (ledger entry, symbol) to fetch: event time `start_ms`..`end_ms` inclusive."""

    entry: str
    symbol: str
    start_ms: int
    end_ms: int
    source: str
    reason: str
    via: str = ""  # trades | candles, once fetched
    ticks: int = 0
    error: str | None = None


@dataclass
class Report:
    ledger: str
    dry_run: bool
    jobs: list[Job] = field(default_factory=list)
    repaired: int = 0
    failed: int = 0
    calls: int = 0


def plan(settings: Settings, since_ms: int | None = None, until_ms: int | None = None) -> list[Job]:
    """The (entry, symbol) pairs of the ledger overlapping since..until and not yet repaired."""
    ledger = read_ledger(settings.outage_log)
    jobs = []
    for entry in ledger.entries:
        start = int(entry["start_ms"])
        end = int(entry.get("end_ms") or start)
        if (since_ms is not None and end < since_ms) or (until_ms is not None and start > until_ms):
            continue
        for symbol in entry["symbols"]:
            if (entry["id"], symbol) in ledger.repaired:
                continue
            jobs.append(
                Job(
                    entry["id"],
                    symbol,
                    start,
                    end,
                    entry.get("source", ""),
                    entry.get("reason", ""),
                )
            )
    return jobs


def trade_ticks(symbol: str, rows: list[dict[str, Any]], start_ms: int, end_ms: int) -> list[Item]:
    """`/stock/tick` pages as ticks inside start..end, with the websocket producer's ids."""
    seen: Counter[bytes] = Counter()
    items: list[Item] = []
    for page in rows:
        cols = [page.get(k) or [] for k in ("t", "p", "v", "x", "c")]
        for ts, price, volume, venue, raw in zip(*cols, strict=False):
            if not start_ms <= ts <= end_ms:
                continue
            conditions = [str(c) for c in raw] if isinstance(raw, list) else []
            price, volume = float(price), float(volume)
            identity = orjson.dumps([symbol, price, ts, volume, conditions])
            occurrence = seen[identity]
            seen[identity] += 1
            obj: dict[str, Any] = {"symbol": symbol, "price": price, "volume": volume, "ts": ts}
            obj["id"] = tick_id(symbol, ts, price, volume, conditions, occurrence)
            obj["source"] = TRADES_SOURCE
            if conditions:
                obj["conditions"] = conditions
            if venue:
                obj["exchange"] = str(venue)
            items.append(checked(obj, symbol))
    return items


def candle_ticks(symbol: str, candles: dict[str, Any], start_ms: int, end_ms: int) -> list[Item]:
    """`/stock/candle` (resolution 1) as four ticks a minute, for minutes overlapping start..end."""
    if candles.get("s") != "ok":
        return []
    items: list[Item] = []
    cols = [candles.get(k) or [] for k in ("t", "o", "h", "l", "c", "v")]
    for t, o, h, low, c, v in zip(*cols, strict=False):
        minute = int(t) * 1000
        if minute + MINUTE_MS <= start_ms or minute > end_ms:
            continue
        prices = {"o": o, "h": h, "l": low, "c": c}
        for offset, part in CANDLE_PARTS:
            obj = {
                "symbol": symbol,
                "price": float(prices[part]),
                "volume": float(v) if part == "c" else 0.0,
                "ts": minute + offset,
                "id": f"candle:{symbol}:{minute}:{part}",
                "source": CANDLE_SOURCE,
            }
            items.append(checked(obj, symbol))
    return items


def _days(start_ms: int, end_ms: int) -> list[str]:
    day = datetime.fromtimestamp(start_ms / 1000, UTC).date()
    last = datetime.fromtimestamp(end_ms / 1000, UTC).date()
    out = []
    while day <= last:
        out.append(day.isoformat())
        day += timedelta(days=1)
    return out


class Backfill:
    """Runs jobs against Finnhub (through `api`) into `writer`, marking each repair in the ledger."""

    def __init__(self, settings: Settings, api: FinnhubApi, writer: TickWriter):
        self.settings, self.api, self.writer = settings, api, writer
        self.trades_allowed = True

    async def _trades(self, job: Job) -> list[Item]:
        pages = []
        for day in _days(job.start_ms, job.end_ms):
            skip = 0
            while True:
                page = await self.api.call(
                    f"trades of {job.symbol} on {day}",
                    self.api.client.stock_tick,
                    job.symbol,
                    day,
                    TICK_PAGE,
                    skip,
                )
                pages.append(page)
                count = int(page.get("count") or 0)
                skip += count
                if count == 0 or skip >= int(page.get("total") or 0):
                    break
        return trade_ticks(job.symbol, pages, job.start_ms, job.end_ms)

    async def _candles(self, job: Job) -> list[Item]:
        first = job.start_ms // MINUTE_MS * 60
        last = job.end_ms // 1000
        answer = await self.api.call(
            f"candles of {job.symbol}",
            self.api.client.stock_candles,
            job.symbol,
            "1",
            first,
            last,
        )
        return candle_ticks(job.symbol, answer, job.start_ms, job.end_ms)

    async def repair(self, job: Job) -> None:
        items: list[Item] | None = None
        if self.trades_allowed:
            try:
                items, job.via = await self._trades(job), "trades"
            except NoAccess as exc:
                log.warning("no access to finnhub trades (%s): backfilling from candles", exc)
                self.trades_allowed = False
        if items is None:
            items, job.via = await self._candles(job), "candles"
        for item in items:
            self.writer.write(item)
            self.writer.poll(0)
        failed = self.writer.failed
        self.writer.flush()
        if self.writer.failed > failed:
            raise ServiceUnavailable(
                f"Kafka did not take the backfill of {job.symbol} (see {self.writer.outage_log})"
            )
        job.ticks = len(items)
        append_repaired(self.settings.outage_log, job.entry, job.symbol, job.via, job.ticks)


async def run_backfill(
    settings: Settings,
    jobs: list[Job],
    api: FinnhubApi,
    writer: TickWriter,
) -> Report:
    """Repair `jobs` in order; a job Finnhub keeps failing is reported and the rest go on."""
    report = Report(str(settings.outage_log), False, jobs)
    runner = Backfill(settings, api, writer)
    for job in jobs:
        try:
            await runner.repair(job)
            report.repaired += 1
        except (GaveUp, Skipped) as exc:
            job.error = str(exc)
            report.failed += 1
            log.error("backfill of %s (entry %s) failed: %s", job.symbol, job.entry, exc)
    report.calls = api.calls
    return report


def parse_when(value: str | None, option: str, now_ms: int) -> int | None:
    """Epoch ms of a duration before now (`2h`) or an ISO date / date-time (UTC if naive)."""
    if value is None:
        return None
    try:
        return now_ms - int(parse_duration(value) * 1000)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise StockpipeError(
            f"{option} {value!r} is neither a duration (2h, 3d) nor an ISO date (2025-03-04)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def backfill_outages(
    settings: Settings,
    since: str | None = None,
    until: str | None = None,
    dry_run: bool = False,
    api: FinnhubApi | None = None,
) -> Report:
    """The library call behind the command (and the backfill DAG's task)."""
    now = time.time_ns() // 1_000_000
    since_ms, until_ms = parse_when(since, "--since", now), parse_when(until, "--until", now)
    if since_ms is not None and until_ms is not None and since_ms > until_ms:
        raise StockpipeError(f"--since {since!r} is after --until {until!r}")
    jobs = plan(settings, since_ms, until_ms)
    if dry_run or not jobs:
        return Report(str(settings.outage_log), dry_run, jobs)
    api = api or FinnhubApi(settings)
    try:
        with TickWriter(settings) as writer:
            return asyncio.run(run_backfill(settings, jobs, api, writer))
    finally:
        api.close()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def backfill_command(
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            show_default="the whole ledger",
            help="Entries ending after this: a duration ago (2h) or a date.",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            show_default="no end",
            help="Entries starting before this: a duration ago or a date.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be fetched; fetch and write nothing.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Fetch again, through Finnhub's REST API, the ranges the outage ledger lists as missing."""
    report = backfill_outages(load_settings(), since, until, dry_run)
    if json_output:
        typer.echo(json.dumps(asdict(report), indent=2))
    else:
        verb = "would fetch" if dry_run else "fetched"
        for job in report.jobs:
            state = f"error: {job.error}" if job.error else f"{job.ticks} ticks via {job.via}"
            typer.echo(
                f"{verb} {job.symbol} {_iso(job.start_ms)} .. {_iso(job.end_ms)}"
                f" (entry {job.entry}, {job.source})" + ("" if dry_run else f": {state}")
            )
        if not report.jobs:
            typer.echo(f"nothing to backfill in {report.ledger}")
    if report.failed:
        raise ServiceUnavailable(
            f"{report.failed} of {len(report.jobs)} backfills failed (Finnhub kept failing): run again"
        )
