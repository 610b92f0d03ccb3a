"""Coinbase Advanced Trade public market data -> Kafka (`--source coinbase`).

Subscribes on `COINBASE_WS_URL` (default `wss://advanced-trade-ws.coinbase.com`,
no key) to the `market_trades` channel for the product ids and to `heartbeats`
(one message a second, which also keeps quiet subscriptions open). Messages:

    {"channel": "market_trades", "sequence_num": 7, "timestamp": "...",
     "events": [{"type": "snapshot" | "update",
                 "trades": [{"trade_id": "…", "product_id": "BTC-USD", "price": "…",
                             "size": "…", "side": "BUY", "time": "2026-…Z"}]}]}
    {"channel": "heartbeats", "sequence_num": 8, "events": [{"heartbeat_counter": …}]}

Every message of a connection carries `sequence_num`, counting up from 0 across
channels: a jump is a missed message, logged, counted
(`stockpipe_feed_sequence_gaps_total`) and written to the outage ledger as a gap.
A trade becomes the tick `COINBASE:<product_id>` with id = Coinbase's `trade_id`;
the `snapshot` event after each (re)subscribe repeats recent trades under their
ids, so the stream's dedup drops the repeats (and they fill part of a reconnect's gap).
"""

from __future__ import annotations

import calendar
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from flows.ingest.kafka_out import Item, TickWriter
from flows.ingest.pacing import checked, now_ms
from flows.ingest.ws_feed import WsFeed, decimal
from flows.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "coinbase"
EXCHANGE = "COINBASE"
PREFIX = "COINBASE:"
DEFAULT_SYMBOLS = ("COINBASE:BTC-USD", "COINBASE:ETH-USD")
PRODUCT_RE = re.compile(r"^[A-Z0-9]{1,12}-[A-Z0-9]{1,12}$")
# Heartbeats come every second: ten seconds of silence is a stalled connection.
STALL_TIMEOUT = 10.0

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))$"
)


def product_ids(symbols: Sequence[str]) -> list[str]:
    """The Coinbase product ids of `COINBASE:<product>` symbols; ValueError naming a bad one."""
    out = []
    for symbol in symbols:
        product = symbol[len(PREFIX) :] if symbol.startswith(PREFIX) else None
        if product is None or not PRODUCT_RE.fullmatch(product):
            raise ValueError(
                f"{symbol!r} is not a Coinbase symbol: write COINBASE:<product id>, "
                "e.g. COINBASE:BTC-USD"
            )
        out.append(product)
    return out


def rfc3339_ms(text: Any) -> int | None:
    """Epoch milliseconds of an RFC 3339 time (any number of fraction digits), or None."""
    match = _RFC3339.match(text) if isinstance(text, str) else None
    if match is None:
        return None
    y, mo, d, h, mi, s, frac, z, sign, oh, om = match.groups()
    try:
        seconds = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s), 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if not z:
        offset = (int(oh) * 60 + int(om)) * 60
        seconds -= offset if sign == "+" else -offset
    millis = int((frac or "0")[:3].ljust(3, "0"))
    return seconds * 1000 + millis


def trades_from_message(message: dict[str, Any], now: int | None = None) -> list[Item]:
    """The ticks of one `market_trades` message, in message order (snapshot and update alike).

    A trade that breaks contract 1 is sent on raw, for the DLQ to record.
    """
    now = now or now_ms()
    items: list[Item] = []
    for event in message.get("events") or ():
        if not isinstance(event, dict):
            continue
        for trade in event.get("trades") or ():
            if not isinstance(trade, dict):
                log.warning("coinbase: skipping a trade that is not an object: %r", trade)
                continue
            product = trade.get("product_id")
            symbol = f"{PREFIX}{product}" if isinstance(product, str) else None
            trade_id = trade.get("trade_id")
            obj: dict[str, Any] = {
                "symbol": symbol,
                "price": decimal(trade.get("price")),
                "volume": decimal(trade.get("size")),
                "ts": rfc3339_ms(trade.get("time")),
                "id": str(trade_id) if isinstance(trade_id, str | int) else trade_id,
                "source": SOURCE,
                "exchange": EXCHANGE,
            }
            items.append(checked(obj, symbol, now))
    return items


class CoinbaseStream(WsFeed):
    """Coinbase Advanced Trade `market_trades` + `heartbeats` for `COINBASE:` symbols."""

    source = SOURCE
    name = "coinbase"
    url_setting = "COINBASE_WS_URL"

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
        self.products = product_ids(symbols)
        super().__init__(
            writer,
            symbols,
            url=url or settings.coinbase_ws_url,
            stall_timeout=stall_timeout or STALL_TIMEOUT,
            outage_log=outage_log or settings.outage_log,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            seed=seed,
        )
        self.gaps = 0  # messages missed, by the sequence numbers
        self._sequence: int | None = None
        self._sequence_seen_ms = 0

    async def subscribe(self, ws: ClientConnection) -> None:
        for message in (
            {"type": "subscribe", "product_ids": self.products, "channel": "market_trades"},
            {"type": "subscribe", "channel": "heartbeats"},
        ):
            await ws.send(orjson.dumps(message).decode())

    def on_connected(self) -> None:
        self._sequence = None  # sequence numbers count per connection

    def handle(self, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("coinbase sent a message that is not JSON: %r", raw[:200])
            return
        if not isinstance(message, dict):
            log.warning("coinbase sent a message that is not an object: %r", raw[:200])
            return
        self._check_sequence(message.get("sequence_num"))
        channel = message.get("channel")
        if channel == "market_trades":
            self.frames += 1
            for item in trades_from_message(message):
                self.writer.write(item)
                self.trades += 1
            self.writer.poll(0)
        elif message.get("type") == "error":
            log.error("coinbase error: %s", message.get("message", message))
        elif channel not in ("heartbeats", "subscriptions"):
            log.debug("ignoring coinbase message on channel %r", channel)
        if self.on_frame is not None:
            self.on_frame(message)

    def _check_sequence(self, sequence: Any) -> None:
        if isinstance(sequence, bool) or not isinstance(sequence, int):
            return
        now = now_ms()
        last, self._sequence = self._sequence, sequence
        previous_ms, self._sequence_seen_ms = self._sequence_seen_ms, now
        if last is None:
            return
        if sequence <= last:  # a repeat or reordering: nothing was lost
            self._sequence = last
            self._sequence_seen_ms = previous_ms
            log.debug("coinbase: sequence_num %d after %d", sequence, last)
            return
        missed = sequence - last - 1
        if missed:
            self.gaps += missed
            reason = f"sequence gap: {missed} message(s) missed (sequence_num {last} -> {sequence})"
            log.warning("coinbase: %s", reason)
            self.record_gap(previous_ms, now, reason, missed)
