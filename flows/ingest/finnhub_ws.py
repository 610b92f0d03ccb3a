"""Finnhub websocket trades -> Kafka, surviving drops and silent stalls.

The stream subscribes to each symbol, turns `trade` frames into ticks (an
identical trade repeated inside one frame gets the next occurrence index, so
ids stay unique within a frame and stable when Finnhub re-sends a frame),
ignores `ping`, logs `error`. The connection loop (`flows.ingest.ws_feed`, shared
with the crypto feeds): when the connection drops, or stays silent for
`stall_timeout` (not even a ping), it reconnects with capped exponential
backoff and jitter, and appends the outage (start, end, symbols, reason) as one
JSON line to the outage log, so the gap can be backfilled later.

The API key travels only in the URL's query string; every URL that is logged
goes through `redact`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import ClientConnection

from flows.errors import StockpipeError
from flows.ingest.kafka_out import Item, TickWriter
from flows.ingest.pacing import as_float, checked, now_ms
from flows.ingest.ticks import tick_id
from flows.ingest.ws_feed import CONNECTED, RECONNECTS, WsFeed, stop_when
from flows.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["CONNECTED", "RECONNECTS", "FinnhubStream", "stop_when", "trades_from_frame"]

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


class FinnhubStream(WsFeed):
    """One websocket subscription to Finnhub trades for `symbols`, written to `writer`.

    stall_timeout: reconnect after this many seconds without any message (pings included).
    backoff_initial, backoff_max: reconnect delays double from the first to the cap,
        each scaled by a random factor in [0.5, 1) so many clients do not reconnect in step.
    url: the full websocket URL with the token (default: from the settings).
    outage_log: where outages are appended (default: settings.outage_log).
    """

    source = SOURCE
    name = "finnhub"
    url_setting = "FINNHUB_WS_URL"

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
        super().__init__(
            writer,
            symbols,
            url=url or ws_url(settings),
            stall_timeout=stall_timeout or settings.finnhub_stall_timeout,
            outage_log=outage_log or settings.outage_log,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            seed=seed,
        )

    async def subscribe(self, ws: ClientConnection) -> None:
        for symbol in self.symbols:
            await ws.send(orjson.dumps({"type": "subscribe", "symbol": symbol}).decode())

    def redact(self, text: str) -> str:
        return redact(text)

    def describe_refusal(self, status: int) -> str:
        hint = " (is FINNHUB_API_KEY right?)" if status in (401, 403) else ""
        return f"handshake refused with HTTP {status}{hint}"

    def handle(self, raw: str | bytes) -> None:
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
