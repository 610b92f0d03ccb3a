"""Finnhub REST `/quote` polling -> Kafka: quote snapshots as ticks with `volume` null.

Symbols are polled round-robin, as fast as the rate limit allows (60 calls a
minute on the free tier, configurable; an `aiolimiter` leaky bucket of one
call, so calls are spread evenly, never bursts). A quote identical to the
symbol's previous one (a quiet market) is dropped. HTTP 429 pauses all
polling for `Retry-After` seconds, or an exponential backoff without it,
however often it comes; 5xx and network errors are retried with backoff up to
`max_retries` (both through `tenacity`); `c == 0` (Finnhub's answer for an
unknown symbol) is logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from flows.errors import StockpipeError
from flows.ingest.finnhub_ws import api_key, redact
from flows.ingest.kafka_out import TickWriter
from flows.ingest.pacing import checked
from flows.ingest.ticks import tick_id
from flows.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "finnhub-rest"


def rate_limiter(per_minute: float) -> AsyncLimiter:
    """At most `per_minute` calls a minute, spread evenly (a bucket of one call: no bursts)."""
    if per_minute <= 0:
        raise ValueError(f"per_minute must be > 0, got {per_minute!r}")
    return AsyncLimiter(1, 60.0 / per_minute)


class _RateLimited(Exception):
    """HTTP 429: wait `delay` (Retry-After) or back off, and ask again."""

    def __init__(self, delay: float | None):
        self.delay = delay


class _Failed(Exception):
    """A 5xx answer or a network error: back off and ask again, `max_retries` times."""

    def __init__(self, reason: object):
        self.reason = reason


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
        self.limiter = rate_limiter(calls_per_minute or settings.finnhub_calls_per_minute)
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
        tries = {_RateLimited: 0, _Failed: 0}  # counted as they happen, whatever tenacity's order

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _RateLimited) and exc.delay is not None:
                return exc.delay
            n = tries[_RateLimited if isinstance(exc, _RateLimited) else _Failed]
            return min(self.backoff_max, self.backoff_initial * 2 ** (n - 1))

        def give_up(state: RetryCallState) -> bool:
            return stop.is_set() or tries[_Failed] > self.max_retries

        def say(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _RateLimited):
                log.warning(
                    "finnhub rate limit (429) on %s; pausing %.2fs", symbol, state.upcoming_sleep
                )
            else:
                log.warning(
                    "finnhub quote for %s: %s; retrying in %.2fs",
                    symbol,
                    getattr(exc, "reason", exc),
                    state.upcoming_sleep,
                )

        retrying = AsyncRetrying(
            retry=retry_if_exception_type((_RateLimited, _Failed)),
            wait=wait,
            stop=give_up,
            sleep=lambda seconds: self._sleep(stop, seconds),
            before_sleep=say,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if stop.is_set():
                        return None
                    try:
                        return await self._ask(session, symbol)
                    except (_RateLimited, _Failed) as exc:
                        tries[type(exc)] += 1
                        raise
        except _RateLimited:  # only when stopping
            return None
        except _Failed as exc:
            if not stop.is_set():
                log.error(
                    "finnhub quote for %s failed %d times (%s); moving on",
                    symbol,
                    tries[_Failed],
                    exc.reason,
                )
            return None
        return None

    async def _ask(self, session: aiohttp.ClientSession, symbol: str) -> dict[str, Any] | None:
        """One call: the quote, None to skip the symbol, or `_RateLimited` / `_Failed`."""
        await self.limiter.acquire()
        self.calls += 1
        params = {"symbol": symbol, "token": self._token}
        try:
            async with session.get(f"{self.base_url}/quote", params=params) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                body = await resp.json(content_type=None) if status == 200 else await resp.text()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.server_errors += 1
            raise _Failed(redact(f"{type(exc).__name__}: {exc}")) from None
        if status == 200:
            return body if isinstance(body, dict) else None
        if status == 429:
            self.rate_limited += 1
            raise _RateLimited(retry_after_seconds(retry_after))
        if status == 401:
            raise StockpipeError(
                f"finnhub rejected FINNHUB_API_KEY (HTTP {status}): {str(body)[:200]}"
            )
        if status >= 500:
            self.server_errors += 1
            raise _Failed(status)
        log.error("finnhub quote for %s: HTTP %s %s; skipping", symbol, status, str(body)[:200])
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
