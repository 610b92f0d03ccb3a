"""Finnhub's REST API through `finnhub-python`, and `/quote` polling -> Kafka.

`FinnhubApi` is the one way stockpipe calls Finnhub's REST API (the quote
poller here, the outage backfill in `flows.ingest.backfill`): a
`finnhub.Client` (synchronous, `requests`; each call runs in a thread so the
event loop keeps serving) behind an `aiolimiter` leaky bucket of one call, so
calls are spread evenly at the rate limit (60 a minute on the free tier,
configurable), never in bursts. HTTP 429 pauses all calls for `Retry-After`
seconds, or an exponential backoff without it, however often it comes; 5xx and
network errors are retried with backoff up to `max_retries` (both through
`tenacity`); 401 is fatal; 403 (the plan has no access) is `NoAccess`.

`QuotePoller` polls `/quote` round-robin: quote snapshots become ticks with
`volume` null. A quote identical to the symbol's previous one (a quiet market)
is dropped; `c == 0` (Finnhub's answer for an unknown symbol) is logged and
skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import finnhub
import requests
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


class NoAccess(Exception):
    """HTTP 403: the API key's plan does not include this endpoint."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class GaveUp(Exception):
    """A call still failed (5xx / network) after `max_retries` retries, or a stop was asked for."""

    def __init__(self, what: str, tries: int, reason: object):
        super().__init__(f"{what} failed {tries} times ({reason})")
        self.what, self.tries, self.reason = what, tries, reason


class Skipped(Exception):
    """Another 4xx answer (not 401/403/429): the call cannot succeed as asked."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status} {message}")
        self.status, self.message = status, message


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


class FinnhubApi:
    """Rate-limited, retried calls of a `finnhub.Client` pointed at `base_url`.

    calls_per_minute: the leaky bucket's limit (default settings.finnhub_calls_per_minute).
    backoff_initial, backoff_max: exponential backoff for 429 without Retry-After and for 5xx.
    max_retries: 5xx / network retries of one call before `GaveUp`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        calls_per_minute: float | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        max_retries: int = 5,
        base_url: str | None = None,
    ):
        self.client = finnhub.Client(api_key=api_key(settings))
        # the client's own attribute: every path is joined to it
        self.client.API_URL = (base_url or settings.finnhub_rest_url).rstrip("/")
        self.limiter = rate_limiter(calls_per_minute or settings.finnhub_calls_per_minute)
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.max_retries = max_retries
        self.calls = 0
        self.rate_limited = 0
        self.server_errors = 0

    def close(self) -> None:
        self.client.close()

    async def _sleep(self, stop: asyncio.Event | None, seconds: float) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def call(
        self,
        what: str,
        method: Callable[..., Any],
        *args: Any,
        stop: asyncio.Event | None = None,
        **kwargs: Any,
    ) -> Any:
        """`method(*args, **kwargs)` of the client, retrying 429 (always) and 5xx (max_retries).

        `what` names the call in logs (never the key). Raises `GaveUp`, `NoAccess`,
        `Skipped`, or `StockpipeError` for a rejected key.
        """
        tries = {_RateLimited: 0, _Failed: 0}  # counted as they happen, whatever tenacity's order

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _RateLimited) and exc.delay is not None:
                return exc.delay
            n = tries[_RateLimited if isinstance(exc, _RateLimited) else _Failed]
            return min(self.backoff_max, self.backoff_initial * 2 ** (n - 1))

        def give_up(state: RetryCallState) -> bool:
            return (stop is not None and stop.is_set()) or tries[_Failed] > self.max_retries

        def say(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _RateLimited):
                log.warning(
                    "finnhub rate limit (429) on %s; pausing %.2fs", what, state.upcoming_sleep
                )
            else:
                log.warning(
                    "finnhub %s: %s; retrying in %.2fs",
                    what,
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
                    if stop is not None and stop.is_set():
                        raise GaveUp(what, tries[_Failed], "stopped")
                    try:
                        return await self._ask(method, *args, **kwargs)
                    except (_RateLimited, _Failed) as exc:
                        tries[type(exc)] += 1
                        raise
        except _RateLimited:  # only when stopping
            raise GaveUp(what, tries[_Failed], "stopped") from None
        except _Failed as exc:
            raise GaveUp(what, tries[_Failed], exc.reason) from None
        raise GaveUp(what, tries[_Failed], "stopped")  # pragma: no cover - tenacity always returns

    async def _ask(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One call in a thread: its answer, or `_RateLimited` / `_Failed` / a final error."""
        await self.limiter.acquire()
        self.calls += 1
        try:
            return await asyncio.to_thread(method, *args, **kwargs)
        except finnhub.FinnhubAPIException as exc:
            status, message = exc.status_code, redact(str(exc.message))[:200]
            if status == 429:
                self.rate_limited += 1
                raise _RateLimited(
                    retry_after_seconds(exc.response.headers.get("Retry-After"))
                ) from None
            if status == 401:
                raise StockpipeError(
                    f"finnhub rejected FINNHUB_API_KEY (HTTP {status}): {message}"
                ) from None
            if status == 403:
                raise NoAccess(message) from None
            if status >= 500:
                self.server_errors += 1
                raise _Failed(status) from None
            raise Skipped(status, message) from None
        except (requests.RequestException, finnhub.FinnhubRequestException, ValueError) as exc:
            self.server_errors += 1
            raise _Failed(redact(f"{type(exc).__name__}: {exc}")[:200]) from None


class QuotePoller:
    """Polls `/quote?symbol=S` for `symbols` through `FinnhubApi` and writes the changes.

    calls_per_minute, backoff_initial, backoff_max, max_retries, base_url: see `FinnhubApi`
    (max_retries: 5xx / network retries for one symbol before moving on to the next).
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
        self.api = FinnhubApi(
            settings,
            calls_per_minute=calls_per_minute,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            max_retries=max_retries,
            base_url=base_url,
        )
        self.writer = writer
        self.symbols = list(symbols)
        self.last: dict[str, dict[str, Any]] = {}
        self.unknown: set[str] = set()
        self.sent = 0
        self.repeats_dropped = 0

    @property
    def calls(self) -> int:
        return self.api.calls

    @property
    def rate_limited(self) -> int:
        return self.api.rate_limited

    @property
    def server_errors(self) -> int:
        return self.api.server_errors

    async def run(self, stop: asyncio.Event) -> None:
        """Poll round-robin until `stop` is set."""
        try:
            while not stop.is_set():
                for symbol in self.symbols:
                    if stop.is_set():
                        break
                    quote = await self._fetch(symbol, stop)
                    if quote is not None:
                        self._handle(symbol, quote)
        finally:
            self.api.close()

    async def _fetch(self, symbol: str, stop: asyncio.Event) -> dict[str, Any] | None:
        """One quote, or None to skip the symbol this round."""
        try:
            quote = await self.api.call(
                f"quote for {symbol}", self.api.client.quote, symbol, stop=stop
            )
        except GaveUp as exc:
            if not stop.is_set():
                log.error(
                    "finnhub quote for %s failed %d times (%s); moving on",
                    symbol,
                    exc.tries,
                    exc.reason,
                )
            return None
        except (NoAccess, Skipped) as exc:
            log.error("finnhub quote for %s: %s; skipping", symbol, exc)
            return None
        return quote if isinstance(quote, dict) else None

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
