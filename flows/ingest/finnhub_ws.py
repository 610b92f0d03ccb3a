"""Finnhub websocket trades -> Kafka, surviving drops and silent stalls.

The stream subscribes to each symbol, turns `trade` frames into ticks (an
identical trade repeated inside one frame gets the next occurrence index, so
ids stay unique within a frame and stable when Finnhub re-sends a frame),
ignores `ping`, logs `error`. When the connection drops, or stays silent for
`stall_timeout` (not even a ping), it reconnects with capped exponential
backoff and jitter, and appends the outage (start, end, symbols, reason) as one
JSON line to the outage log, so the gap can be backfilled later.

The API key travels only in the URL's query string; every URL that is logged
goes through `redact`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from flows.errors import StockpipeError
from flows.ingest.kafka_out import Item, TickWriter
from flows.ingest.ledger import Outage, append_outage
from flows.ingest.pacing import as_float, checked, now_ms
from flows.ingest.ticks import tick_id
from flows.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "finnhub-ws"
_TOKEN_RE = re.compile(r"(token=)[^&#\s]*")


def redact(url: str) -> str:
    """The URL with its token replaced by `***` (safe to log)."""
    return _TOKEN_RE.sub(r"\1***", url)


def api_key(settings: Settings) -> str:
    """The Finnhub API key; raises a `StockpipeError` saying what to do when it is not set."""
    if settings.finnhub_api_key is None or not settings.finnhub_api_key.get_secret_value():
        raise StockpipeError(
            "FINNHUB_API_KEY is not set: get a free key at https://finnhub.io/register "
            "and export it, or use `--source sim`"
        )
    return settings.finnhub_api_key.get_secret_value()


def ws_url(settings: Settings) -> str:
    """`FINNHUB_WS_URL?token=KEY`; raises when FINNHUB_API_KEY is not set."""
    sep = "&" if "?" in settings.finnhub_ws_url else "?"
    token = urlencode({"token": api_key(settings)})
    return f"{settings.finnhub_ws_url}{sep}{token}"


def trades_from_frame(message: dict[str, Any], now: int | None = None) -> list[Item]:
    """The ticks of one `{"type":"trade","data":[...]}` frame, in frame order.

    Trades that break contract 1 (Finnhub does send p = 0 now and then) come
    back as raw records for the DLQ.
    """
    seen: Counter[bytes] = Counter()
    items: list[Item] = []
    now = now or now_ms()
    for trade in message.get("data") or ():
        if not isinstance(trade, dict):
            log.warning("skipping a trade that is not an object: %r", trade)
            continue
        symbol, price, ts = trade.get("s"), as_float(trade.get("p")), trade.get("t")
        volume = as_float(trade.get("v"))
        raw_conditions = trade.get("c")
        conditions = [str(c) for c in raw_conditions] if isinstance(raw_conditions, list) else []
        identity = orjson.dumps([symbol, price, ts, volume, conditions])
        occurrence = seen[identity]
        seen[identity] += 1
        obj: dict[str, Any] = {"symbol": symbol, "price": price, "volume": volume, "ts": ts}
        obj["id"] = tick_id(str(symbol), ts, price, volume, conditions, occurrence)  # type: ignore[arg-type]
        obj["source"] = SOURCE
        if conditions:
            obj["conditions"] = conditions
        items.append(checked(obj, symbol if isinstance(symbol, str) else None, now))
    return items


class _Stalled(Exception):
    pass


CONNECTED = Gauge(
    "stockpipe_feed_connected",
    "1 while the feed's websocket is connected and subscribed.",
    ["source"],
)
RECONNECTS = MetricCounter(
    "stockpipe_feed_reconnects_total",
    "Times the feed's websocket dropped or stalled and was reconnected.",
    ["source"],
)

# What a reconnect can cure: a drop, a stall, a refused handshake, the network.
_RECONNECT_ON = (_Stalled, ConnectionClosed, InvalidHandshake, OSError, TimeoutError)


class FinnhubStream:
    """One websocket subscription to Finnhub trades for `symbols`, written to `writer`.

    stall_timeout: reconnect after this many seconds without any message (pings included).
    backoff_initial, backoff_max: reconnect delays double from the first to the cap,
        each scaled by a random factor in [0.5, 1) so many clients do not reconnect in step.
    url: the full websocket URL with the token (default: from the settings).
    outage_log: where outages are appended (default: settings.outage_log).
    """

    def __init__(
        self,
        settings: Settings,
        writer: TickWriter,
        symbols: Sequence[str],
        *,
        stall_timeout: float | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        url: str | None = None,
        outage_log: Path | None = None,
        seed: int | None = None,
    ):
        self.writer = writer
        self.symbols = list(symbols)
        self.url = url or ws_url(settings)
        self.stall_timeout = stall_timeout or settings.finnhub_stall_timeout
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.outage_log = outage_log or settings.outage_log
        self.rng = random.Random(seed)
        self.connections = 0
        self.frames = 0
        self.trades = 0
        self.outages: list[Outage] = []
        self.on_frame: Callable[[dict[str, Any]], None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until `stop` is set; reconnect on drops and stalls (through `tenacity`).

        Reconnect delays double from `backoff_initial` to `backoff_max` while
        connections keep failing, and start again from the first once a
        connection delivered messages.
        """
        self._failures = 0
        self._outage: Outage | None = None
        self._last_seen = now_ms()

        async def pause(seconds: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_RECONNECT_ON),
            wait=self._reconnect_delay,
            stop=lambda _state: stop.is_set(),
            sleep=pause,
            before_sleep=self._note_drop,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._session(stop)
        except _RECONNECT_ON:
            pass  # a drop while stopping
        CONNECTED.labels(SOURCE).set(0)
        if self._outage is not None:  # still down when asked to stop: the gap ends now
            self._outage.reason += " (still down at shutdown)"
            self._close_outage(self._outage, now_ms())

    async def _session(self, stop: asyncio.Event) -> None:
        """One connection: subscribe, then stream until stopped (return) or dropped (raise)."""
        try:
            async with connect(
                self.url, open_timeout=10, ping_interval=20, ping_timeout=20, close_timeout=2
            ) as ws:
                for symbol in self.symbols:
                    await ws.send(orjson.dumps({"type": "subscribe", "symbol": symbol}).decode())
                self.connections += 1
                CONNECTED.labels(SOURCE).set(1)
                log.info("subscribed to %s on %s", ",".join(self.symbols), redact(self.url))
                if self._outage is not None:
                    self._close_outage(self._outage, now_ms())
                    self._outage = None
                self._last_seen = now_ms()
                async for _ in self._messages(ws, stop):
                    self._last_seen = now_ms()
                    self._failures = 0  # the connection works: the next drop backs off afresh
                if not stop.is_set():
                    raise ConnectionClosed(None, None)  # the iterator ended: the server closed
        except InvalidURI as exc:
            raise StockpipeError(
                f"bad FINNHUB_WS_URL {redact(self.url)!r}: {redact(str(exc))}"
            ) from None

    def _reconnect_delay(self, _state: RetryCallState) -> float:
        delay = min(self.backoff_max, self.backoff_initial * 2**self._failures)
        self._failures += 1
        return delay * (0.5 + 0.5 * self.rng.random())  # jitter: clients do not reconnect in step

    def _note_drop(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        CONNECTED.labels(SOURCE).set(0)
        RECONNECTS.labels(SOURCE).inc()
        reason = _describe(exc, self.stall_timeout)
        if self._outage is None:
            self._outage = Outage(
                start_ms=self._last_seen, symbols=list(self.symbols), reason=reason, source=SOURCE
            )
        self._outage.attempts += 1
        self._outage.reasons.append(reason)
        log.warning("finnhub websocket: %s; reconnecting in %.2fs", reason, state.upcoming_sleep)

    async def _messages(self, ws: ClientConnection, stop: asyncio.Event):  # noqa: ANN202
        """Yield after each handled message; raise `_Stalled` after `stall_timeout` of silence."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                receiving = asyncio.ensure_future(ws.recv())
                done, _ = await asyncio.wait(
                    {receiving, stopping},
                    timeout=self.stall_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if receiving not in done:
                    receiving.cancel()
                    if stopping in done:
                        return
                    raise _Stalled()
                self._handle(receiving.result())
                yield
        finally:
            stopping.cancel()

    def _handle(self, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("finnhub sent a frame that is not JSON: %r", raw[:200])
            return
        if not isinstance(message, dict):
            log.warning("finnhub sent a frame that is not an object: %r", raw[:200])
            return
        kind = message.get("type")
        if kind == "trade":
            self.frames += 1
            for item in trades_from_frame(message):
                self.writer.write(item)
                self.trades += 1
            self.writer.poll(0)
        elif kind == "error":
            log.error("finnhub error: %s", message.get("msg", message))
        elif kind != "ping":
            log.debug("ignoring finnhub message of type %r", kind)
        if self.on_frame is not None:
            self.on_frame(message)

    def _close_outage(self, outage: Outage, end: int) -> None:
        outage.end_ms = max(end, outage.start_ms + 1)
        self.outages.append(outage)
        append_outage(self.outage_log, outage)
        log.warning(
            "finnhub outage %s -> %s (%s) recorded in %s",
            datetime.fromtimestamp(outage.start_ms / 1000, UTC).isoformat(),
            datetime.fromtimestamp(outage.end_ms / 1000, UTC).isoformat(),
            outage.reason,
            self.outage_log,
        )


def _describe(exc: BaseException, stall_timeout: float) -> str:
    if isinstance(exc, _Stalled):
        return f"stalled: no message for {stall_timeout:g}s"
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        hint = " (is FINNHUB_API_KEY right?)" if status in (401, 403) else ""
        return f"handshake refused with HTTP {status}{hint}"
    if isinstance(exc, ConnectionClosed):
        if exc.rcvd is None:
            return "connection dropped"
        return f"server closed the connection ({exc.rcvd.code} {exc.rcvd.reason})".strip()
    return redact(f"{type(exc).__name__}: {exc}")


async def stop_when(flag: threading.Event, stop: asyncio.Event, every: float = 0.1) -> None:
    """Bridge a signal-set threading.Event to an asyncio.Event."""
    while not flag.is_set() and not stop.is_set():
        await asyncio.sleep(every)
    stop.set()
