"""Binance spot public trades -> Kafka (`--source binance`).

Connects to the combined stream `BINANCE_WS_URL/stream?streams=btcusdt@trade/…`
(default `wss://stream.binance.com:9443`, no key): the URL is the subscription,
so every reconnect subscribes again. Messages:

    {"stream": "btcusdt@trade",
     "data": {"e": "trade", "E": 1672515782136, "s": "BTCUSDT", "t": 12345,
              "p": "0.001", "q": "100", "T": 1672515782136, "m": true, "M": true}}

A trade becomes the tick `BINANCE:<s>` with id = Binance's trade id `t`, ts = the
trade time `T`. Binance sends a protocol ping frame every 20 s and drops a
connection that does not answer within a minute: the websockets library answers
each with a pong carrying the ping's payload. A connection lives at most 24 hours,
so the feed renews it before that (`MAX_CONNECTION_AGE`), and at once when
Binance announces a `serverShutdown` event: make-before-break (`flows.ingest.ws_feed`),
the next connection subscribed before the old one closes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from flows.ingest.kafka_out import Item, TickWriter
from flows.ingest.pacing import checked, now_ms
from flows.ingest.ws_feed import Reconnect, WsFeed, decimal
from flows.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "binance"
EXCHANGE = "BINANCE"
PREFIX = "BINANCE:"
DEFAULT_SYMBOLS = ("BINANCE:BTCUSDT", "BINANCE:ETHUSDT")
PAIR_RE = re.compile(r"^[A-Z0-9]{2,20}$")
# Binance cuts every connection at 24 hours: renew it well before, at a moment we choose.
MAX_CONNECTION_AGE = 23.5 * 3600.0
# Binance has no heartbeat message (its pings are protocol frames, which never reach
# the application), so silence means no trades: give a quiet pair a minute.
STALL_TIMEOUT = 60.0
MAX_STREAMS = 1024  # per connection, by Binance's limits


def pairs(symbols: Sequence[str]) -> list[str]:
    """The Binance pairs of `BINANCE:<pair>` symbols; ValueError naming a bad one."""
    out = []
    for symbol in symbols:
        pair = symbol[len(PREFIX) :] if symbol.startswith(PREFIX) else None
        if pair is None or not PAIR_RE.fullmatch(pair):
            raise ValueError(
                f"{symbol!r} is not a Binance symbol: write BINANCE:<pair>, e.g. BINANCE:BTCUSDT"
            )
        out.append(pair)
    if len(out) > MAX_STREAMS:
        raise ValueError(
            f"Binance allows at most {MAX_STREAMS} streams a connection, got {len(out)}"
        )
    return out


def stream_url(base: str, pair_names: Sequence[str]) -> str:
    """The combined-stream URL for the trade streams of `pair_names`."""
    streams = "/".join(f"{p.lower()}@trade" for p in pair_names)
    return f"{base.rstrip('/')}/stream?streams={streams}"


def _event(message: dict[str, Any]) -> dict[str, Any] | None:
    """The event of a message: the combined stream wraps it in `data`, the API in `event`."""
    for inner in (message.get("data"), message.get("event")):
        if isinstance(inner, dict):
            return inner
    return message if "e" in message else None


def trade_tick(event: dict[str, Any], now: int | None = None) -> Item:
    """The tick of one `trade` event (raw, for the DLQ, if it breaks contract 1)."""
    pair = event.get("s")
    symbol = f"{PREFIX}{pair}" if isinstance(pair, str) else None
    trade_id = event.get("t")
    obj: dict[str, Any] = {
        "symbol": symbol,
        "price": decimal(event.get("p")),
        "volume": decimal(event.get("q")),
        "ts": event.get("T"),
        "id": str(trade_id) if isinstance(trade_id, int | str) and not isinstance(trade_id, bool)
        else trade_id,
        "source": SOURCE,
        "exchange": EXCHANGE,
    }  # fmt: skip
    return checked(obj, symbol, now or now_ms())


class BinanceStream(WsFeed):
    """Binance spot `<pair>@trade` streams for `BINANCE:` symbols, on one connection."""

    source = SOURCE
    name = "binance"
    url_setting = "BINANCE_WS_URL"

    def __init__(
        self,
        settings: Settings,
        writer: TickWriter,
        symbols: Sequence[str],
        *,
        stall_timeout: float | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        max_connection_age: float = MAX_CONNECTION_AGE,
        url: str | None = None,
        outage_log: Path | None = None,
        seed: int | None = None,
    ):
        self.pairs = pairs(symbols)
        super().__init__(
            writer,
            symbols,
            url=stream_url(url or settings.binance_ws_url, self.pairs),
            stall_timeout=stall_timeout or STALL_TIMEOUT,
            outage_log=outage_log or settings.outage_log,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            max_connection_age=max_connection_age,
            seed=seed,
        )

    async def subscribe(self, ws: ClientConnection) -> None:
        pass  # the combined-stream URL subscribes

    def handle(self, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("binance sent a message that is not JSON: %r", raw[:200])
            return
        if not isinstance(message, dict):
            log.warning("binance sent a message that is not an object: %r", raw[:200])
            return
        if self.on_frame is not None:
            self.on_frame(message)
        event = _event(message)
        kind = event.get("e") if event is not None else None
        if kind == "trade":
            self.frames += 1
            self.writer.write(trade_tick(event))  # type: ignore[arg-type]
            self.trades += 1
            self.writer.poll(0)
        elif kind == "serverShutdown":
            raise Reconnect("server announced a shutdown (serverShutdown): reconnecting at once")
        elif "error" in message or "code" in message:
            log.error("binance error: %s", message.get("error", message))
        else:
            log.debug("ignoring binance message %r", raw[:200])
