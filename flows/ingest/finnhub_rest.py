"""Finnhub REST `/quote` polling -> Kafka: quote snapshots as ticks with `volume` null.

Symbols are polled round-robin, as fast as a token bucket allows (60 calls a
minute on the free tier, configurable). A quote identical to the symbol's
previous one (a quiet market) is dropped. HTTP 429 pauses all polling for
`Retry-After` seconds, or an exponential backoff without it; 5xx and network
errors are retried with backoff; `c == 0` (Finnhub's answer for an unknown
symbol) is logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from flows.errors import StockpipeError
from flows.ingest.finnhub_ws import api_key, redact
from flows.ingest.kafka_out import TickWriter
from flows.ingest.pacing import checked
from flows.ingest.ticks import tick_id
from flows.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "finnhub-rest"


class TokenBucket:
    """At most `per_minute` acquisitions a minute, spread evenly (capacity 1: no bursts)."""

    def __init__(self, per_minute: float, capacity: float = 1.0):
        if per_minute <= 0:
            raise ValueError(f"per_minute must be > 0, got {per_minute!r}")
        self.rate = per_minute / 60.0  # tokens per second
        self.capacity = capacity
        self.tokens = capacity
        self.updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    async def acquire(self) -> None:
        self._refill()
        while self.tokens < 1.0:
            await asyncio.sleep((1.0 - self.tokens) / self.rate)
            self._refill()
        self.tokens -= 1.0


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent/unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class QuotePoller:
    """Polls `GET {rest_url}/quote?symbol=S&token=KEY` for `symbols` and writes the changes.

    calls_per_minute: the token bucket's limit (default settings.finnhub_calls_per_minute).
    backoff_initial, backoff_max: exponential backoff for 429 without Retry-After and for 5xx.
    max_retries: 5xx / network retries for one symbol before moving on to the next.
    """

    def __init__(
        self,
        settings: Settings,
        writer: TickWriter,
        symbols: Sequence[str],
        *,
        calls_per_minute: float | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        max_retries: int = 5,
        base_url: str | None = None,
    ):
        self._token = api_key(settings)
        self.writer = writer
        self.symbols = list(symbols)
        self.base_url = (base_url or settings.finnhub_rest_url).rstrip("/")
        self.bucket = TokenBucket(calls_per_minute or settings.finnhub_calls_per_minute)
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.max_retries = max_retries
        self.last: dict[str, dict[str, Any]] = {}
        self.unknown: set[str] = set()
        self.calls = 0
        self.sent = 0
        self.repeats_dropped = 0
        self.rate_limited = 0
        self.server_errors = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Poll round-robin until `stop` is set."""
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                for symbol in self.symbols:
                    if stop.is_set():
                        break
                    quote = await self._fetch(session, symbol, stop)
                    if quote is not None:
                        self._handle(symbol, quote)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def _fetch(
        self, session: aiohttp.ClientSession, symbol: str, stop: asyncio.Event
    ) -> dict[str, Any] | None:
        """One quote, retrying 429 (always) and 5xx / network errors (up to max_retries)."""
        url = f"{self.base_url}/quote"
        params = {"symbol": symbol, "token": self._token}
        limited = 0
        failures = 0
        while not stop.is_set():
            await self.bucket.acquire()
            if stop.is_set():
                return None
            self.calls += 1
            try:
                async with session.get(url, params=params) as resp:
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
                    body = (
                        await resp.json(content_type=None) if status == 200 else await resp.text()
                    )
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                status, body, retry_after = None, redact(f"{type(exc).__name__}: {exc}"), None
            if status == 200:
                return body if isinstance(body, dict) else None
            if status == 429:
                self.rate_limited += 1
                delay = retry_after_seconds(retry_after)
                if delay is None:
                    delay = min(self.backoff_max, self.backoff_initial * 2**limited)
                limited += 1
                log.warning("finnhub rate limit (429) on %s; pausing %.2fs", symbol, delay)
                await self._sleep(stop, delay)
                continue
            if status == 401:
                raise StockpipeError(
                    f"finnhub rejected FINNHUB_API_KEY (HTTP {status}): {str(body)[:200]}"
                )
            if status is None or status >= 500:
                self.server_errors += 1
                failures += 1
                if failures > self.max_retries:
                    log.error(
                        "finnhub quote for %s failed %d times (%s); moving on",
                        symbol,
                        failures,
                        body,
                    )
                    return None
                delay = min(self.backoff_max, self.backoff_initial * 2 ** (failures - 1))
                log.warning(
                    "finnhub quote for %s: %s; retrying in %.2fs", symbol, status or body, delay
                )
                await self._sleep(stop, delay)
                continue
            log.error("finnhub quote for %s: HTTP %s %s; skipping", symbol, status, str(body)[:200])
            return None
        return None

    def _handle(self, symbol: str, quote: dict[str, Any]) -> None:
        price = quote.get("c")
        if not price:  # Finnhub answers an unknown symbol with all zeros
            if symbol not in self.unknown:
                log.warning(
                    "finnhub has no quote for %s (c=%r): is the symbol right?", symbol, price
                )
                self.unknown.add(symbol)
            return
        if quote == self.last.get(symbol):
            self.repeats_dropped += 1
            return
        self.last[symbol] = quote
        seconds = quote.get("t")
        ts = int(seconds) * 1000 if isinstance(seconds, int | float) else seconds
        price = float(price) if isinstance(price, int | float) else price
        obj = {"symbol": symbol, "price": price, "volume": None, "ts": ts, "source": SOURCE}
        obj["id"] = tick_id(symbol, ts, price, None)  # type: ignore[arg-type]
        self.writer.write(checked(obj, symbol))
        self.writer.poll(0)
        self.sent += 1
