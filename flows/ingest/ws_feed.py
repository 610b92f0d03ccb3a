"""The connection loop every websocket trade feed shares: reconnect, stall detection, ledger.

A `WsFeed` subclass says how to subscribe (`subscribe`) and what a message
means (`handle`); this module keeps the connection alive around them. When the
connection drops or stays silent for `stall_timeout` (not even a heartbeat), it
reconnects with capped exponential backoff and jitter, and subscribes again.
When the feed asks for a fresh connection (`Reconnect`: a server shutdown
notice, a connection-age limit) it renews make-before-break: the next connection
is subscribed before the old one closes, so a planned renewal loses nothing.
Every stretch without a working connection is appended to the outage ledger
(`flows.ingest.ledger`) as one line (start, end, symbols, reasons), so it can
be backfilled; feeds with sequence numbers add their gaps through `record_gap`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from flows.errors import StockpipeError
from flows.ingest.kafka_out import TickWriter
from flows.ingest.ledger import Outage, append_outage
from flows.ingest.pacing import now_ms

log = logging.getLogger(__name__)

CONNECTED = Gauge(
    "stockpipe_feed_connected",
    "1 while the feed's websocket is connected and subscribed.",
    ["source"],
)
RECONNECTS = MetricCounter(
    "stockpipe_feed_reconnects_total",
    "Times the feed's websocket dropped, stalled or was renewed, and was reconnected.",
    ["source"],
)
MESSAGES = MetricCounter(
    "stockpipe_feed_messages_total",
    "Websocket messages the feed received (trades, heartbeats, control), by source.",
    ["source"],
)
SEQUENCE_GAPS = MetricCounter(
    "stockpipe_feed_sequence_gaps_total",
    "Upstream messages the feed's sequence numbers say were missed, by source.",
    ["source"],
)


def decimal(value: Any) -> Any:
    """A decimal the exchange sent as a string ("0.001") as a float; anything unparsable
    unchanged, so the tick breaks contract 1 and reaches the DLQ instead of vanishing."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


class Stalled(Exception):
    """No message for `stall_timeout` seconds on an open connection."""


class Reconnect(Exception):
    """The feed wants a fresh connection now (no backoff): the message says why.

    `seamless` is set once the next connection was opened before this one closed.
    """

    seamless = False


RENEW_OVERLAP_SECONDS = 1.0  # a renewal reads the old connection at most this long more

# What a reconnect can cure: a drop, a stall, a planned renewal, a refused handshake, the network.
RECONNECT_ON = (Stalled, Reconnect, ConnectionClosed, InvalidHandshake, OSError, TimeoutError)


class WsFeed:
    """One websocket subscription for `symbols`, its ticks written to `writer`.

    Subclasses set `source` (the ticks' `source` and the metrics' label), `name`
    (for log lines and errors) and `url_setting` (the setting that gives the URL),
    and implement `subscribe` and `handle`.

    stall_timeout: reconnect after this many seconds without any message.
    backoff_initial, backoff_max: reconnect delays double from the first to the cap,
        each scaled by a random factor in [0.5, 1) so many clients do not reconnect in step.
    max_connection_age: renew the connection after this many seconds (None: never),
        for servers that cut connections at a fixed age.
    outage_log: where outages and gaps are appended.
    """

    source = ""
    name = ""
    url_setting = ""

    def __init__(
        self,
        writer: TickWriter,
        symbols: Sequence[str],
        *,
        url: str,
        stall_timeout: float,
        outage_log: Path,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        max_connection_age: float | None = None,
        seed: int | None = None,
    ):
        self.writer = writer
        self.symbols = list(symbols)
        self.url = url
        self.stall_timeout = stall_timeout
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.max_connection_age = max_connection_age
        self.outage_log = outage_log
        self.rng = random.Random(seed)
        self.connections = 0
        self.frames = 0  # messages carrying trades
        self.trades = 0
        self.outages: list[Outage] = []
        self.on_frame: Callable[[Any], None] | None = None
        self._next: ClientConnection | None = None  # opened early by a planned renewal

    # ------------------------------------------------------------------ what a feed says

    async def subscribe(self, ws: ClientConnection) -> None:
        """Send the subscription messages on a new connection."""
        raise NotImplementedError

    def handle(self, raw: str | bytes) -> None:
        """Handle one message; raise `Reconnect` when the server asks for a new connection."""
        raise NotImplementedError

    def on_connected(self) -> None:
        """Called once a new connection is subscribed (reset per-connection state here)."""

    def redact(self, text: str) -> str:
        """`text` safe to log (feeds with secrets in the URL override this)."""
        return text

    def describe_refusal(self, status: int) -> str:
        return f"handshake refused with HTTP {status}"

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until `stop` is set; reconnect on drops, stalls and renewals (through `tenacity`).

        Reconnect delays double from `backoff_initial` to `backoff_max` while
        connections keep failing, and start again from the first once a
        connection delivered messages; a planned reconnect (`Reconnect`) waits not at all.
        """
        self._failures = 0
        self._outage: Outage | None = None
        self._last_seen = now_ms()

        async def pause(seconds: float) -> None:
            if seconds > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), seconds)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RECONNECT_ON),
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
        except RECONNECT_ON:
            pass  # a drop while stopping
        finally:
            if self._next is not None:  # renewed just as the stop came
                await self._next.close()
                self._next = None
        CONNECTED.labels(self.source).set(0)
        if self._outage is not None:  # still down when asked to stop: the gap ends now
            self._outage.reason += " (still down at shutdown)"
            self._close_outage(self._outage, now_ms())

    async def _open(self) -> ClientConnection:
        """A new connection, subscribed."""
        ws = await connect(
            self.url,
            open_timeout=10,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
            max_size=2**22,  # a Coinbase snapshot of many products is larger than 1 MiB
        )
        try:
            await self.subscribe(ws)
        except BaseException:
            await ws.close()
            raise
        return ws

    async def _session(self, stop: asyncio.Event) -> None:
        """One connection: subscribe, then stream until stopped (return) or dropped (raise).

        A planned renewal (`Reconnect`) is make-before-break: the next connection is
        opened and subscribed while the old one still runs, what the old one already
        received is handled, and only then is it closed, so no trade falls between
        the two (the overlap repeats trades under their ids, which the stream's dedup drops).
        """
        try:
            ws, self._next = self._next or await self._open(), None
        except InvalidURI as exc:
            raise StockpipeError(
                f"bad {self.url_setting} {self.redact(self.url)!r}: {self.redact(str(exc))}"
            ) from None
        try:
            self.connections += 1
            self.on_connected()
            CONNECTED.labels(self.source).set(1)
            log.info(
                "%s: subscribed to %s on %s",
                self.name,
                ",".join(self.symbols),
                self.redact(self.url),
            )
            if self._outage is not None:
                self._close_outage(self._outage, now_ms())
                self._outage = None
            self._last_seen = now_ms()
            try:
                async for _ in self._messages(ws, stop):
                    self._last_seen = now_ms()
                    self._failures = 0  # the connection works: the next drop backs off afresh
            except Reconnect as planned:
                await self._renew(ws, planned)
                raise
            if not stop.is_set():
                raise ConnectionClosed(None, None)  # the iterator ended: the server closed
        finally:
            await ws.close()

    async def _renew(self, old: ClientConnection, planned: Reconnect) -> None:
        """Open the next connection before `old` closes, then handle what `old` still holds."""
        try:
            self._next = await self._open()
        except RECONNECT_ON as exc:  # the next one is not there yet: an ordinary reconnect
            log.warning("%s: could not open the next connection early: %s", self.name, exc)
            return
        planned.seamless = True
        # Messages `old` received while the next one opened, and a moment more (a busy
        # stream never goes quiet): the next connection's subscription is live by then.
        deadline = time.monotonic() + RENEW_OVERLAP_SECONDS
        try:
            while (left := deadline - time.monotonic()) > 0:
                raw = await asyncio.wait_for(old.recv(), min(left, 0.05))
                with contextlib.suppress(Reconnect):
                    self.handle(raw)
        except (TimeoutError, ConnectionClosed):
            pass

    def _reconnect_delay(self, state: RetryCallState) -> float:
        if state.outcome is not None and isinstance(state.outcome.exception(), Reconnect):
            return 0.0  # planned: the old connection was healthy, the new one should be too
        delay = min(self.backoff_max, self.backoff_initial * 2**self._failures)
        self._failures += 1
        return delay * (0.5 + 0.5 * self.rng.random())  # jitter: clients do not reconnect in step

    def _note_drop(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        RECONNECTS.labels(self.source).inc()
        reason = self._describe(exc)
        if isinstance(exc, Reconnect) and exc.seamless:
            log.info(
                "%s websocket: %s; the next connection is already subscribed", self.name, reason
            )
            return  # no gap: nothing for the ledger
        CONNECTED.labels(self.source).set(0)
        if self._outage is None:
            # a planned renewal leaves a healthy connection: the gap starts now, not at the
            # last message (a quiet pair's last trade may be long ago)
            start = now_ms() if isinstance(exc, Reconnect) else self._last_seen
            self._outage = Outage(
                start_ms=start,
                symbols=list(self.symbols),
                reason=reason,
                source=self.source,
            )
        self._outage.attempts += 1
        self._outage.reasons.append(reason)
        log.warning(
            "%s websocket: %s; reconnecting in %.2fs", self.name, reason, state.upcoming_sleep
        )

    async def _messages(self, ws: ClientConnection, stop: asyncio.Event):  # noqa: ANN202
        """Yield after each handled message; raise `Stalled` after `stall_timeout` of silence,
        `Reconnect` once the connection is `max_connection_age` old."""
        stopping = asyncio.ensure_future(stop.wait())
        renew_at = time.monotonic() + self.max_connection_age if self.max_connection_age else None
        try:
            while not stop.is_set():
                timeout = self.stall_timeout
                if renew_at is not None:
                    timeout = min(timeout, max(renew_at - time.monotonic(), 0.0))
                receiving = asyncio.ensure_future(ws.recv())
                done, _ = await asyncio.wait(
                    {receiving, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if receiving not in done:
                    receiving.cancel()
                    if stopping in done:
                        return
                    if renew_at is not None and time.monotonic() >= renew_at:
                        raise Reconnect(
                            f"renewing the connection after {self.max_connection_age:g}s "
                            "(before the server's connection age limit)"
                        )
                    raise Stalled()
                MESSAGES.labels(self.source).inc()
                self.handle(receiving.result())
                yield
        finally:
            stopping.cancel()

    # ------------------------------------------------------------------ the ledger

    def record_gap(self, start_ms: int, end_ms: int, reason: str, count: int | None) -> None:
        """A stretch of missed upstream messages on a live connection (a sequence gap)."""
        SEQUENCE_GAPS.labels(self.source).inc(count or 1)
        outage = Outage(
            start_ms=start_ms,
            symbols=list(self.symbols),
            reason=reason,
            source=self.source,
            count=count,
            reasons=[reason],
        )
        self._close_outage(outage, end_ms)

    def _close_outage(self, outage: Outage, end: int) -> None:
        outage.end_ms = max(end, outage.start_ms + 1)
        self.outages.append(outage)
        append_outage(self.outage_log, outage)
        log.warning(
            "%s outage %s -> %s (%s) recorded in %s",
            self.name,
            datetime.fromtimestamp(outage.start_ms / 1000, UTC).isoformat(),
            datetime.fromtimestamp(outage.end_ms / 1000, UTC).isoformat(),
            outage.reason,
            self.outage_log,
        )

    def _describe(self, exc: BaseException | None) -> str:
        if isinstance(exc, Stalled):
            return f"stalled: no message for {self.stall_timeout:g}s"
        if isinstance(exc, Reconnect):
            return str(exc)
        if isinstance(exc, InvalidStatus):
            return self.describe_refusal(exc.response.status_code)
        if isinstance(exc, ConnectionClosed):
            if exc.rcvd is None:
                return "connection dropped"
            return f"server closed the connection ({exc.rcvd.code} {exc.rcvd.reason})".strip()
        return self.redact(f"{type(exc).__name__}: {exc}")


async def stop_when(flag: Any, stop: asyncio.Event, every: float = 0.1) -> None:
    """Bridge a signal-set threading.Event to an asyncio.Event."""
    while not flag.is_set() and not stop.is_set():
        await asyncio.sleep(every)
    stop.set()
