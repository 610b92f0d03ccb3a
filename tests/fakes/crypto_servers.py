"""Loopback stand-ins for the Coinbase Advanced Trade and Binance spot trade websockets.

`ScriptedWS` is a real websocket server on 127.0.0.1 (port 0) that plays one
script per accepted connection, after reading the subscription messages the
venue expects (Coinbase: a `subscribe` per channel; Binance: none, the URL's
`streams=` is the subscription). It records, per connection, the request path,
the subscriptions, the pongs it got and whether the client closed it.

Handshake attempts listed in `refuse` get HTTP 503 (an endpoint briefly away).

Script steps: ("send", obj) a JSON message, ("sleep", s), ("drop", None) the TCP
connection dies without a close frame, ("stall", None) connected and silent,
("ping", payload) a protocol ping whose pong is awaited, ("hold", None) silent
until the client closes.

The message builders speak the venues' documented shapes (docs/feeds.md).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson
from websockets.asyncio.server import ServerConnection, serve

Step = tuple[str, Any]


# ---------------------------------------------------------------------- Coinbase messages


def cb_trade(trade_id: str, product: str, price: str, size: str, time_: str, side: str = "BUY"):
    return {
        "trade_id": trade_id,
        "product_id": product,
        "price": price,
        "size": size,
        "side": side,
        "time": time_,
    }


def cb_trades(seq: int, kind: str, *trades: dict[str, Any]) -> Step:
    """A `market_trades` message (`kind`: snapshot or update) with `sequence_num` seq."""
    return (
        "send",
        {
            "channel": "market_trades",
            "client_id": "",
            "timestamp": "2026-12-07T18:00:00.000000Z",
            "sequence_num": seq,
            "events": [{"type": kind, "trades": list(trades)}],
        },
    )


def cb_heartbeat(seq: int, counter: int) -> Step:
    return (
        "send",
        {
            "channel": "heartbeats",
            "client_id": "",
            "timestamp": "2026-12-07T18:00:00.000000Z",
            "sequence_num": seq,
            "events": [
                {
                    "current_time": "2026-12-07 18:00:00.000000000 +0000 UTC",
                    "heartbeat_counter": counter,
                }
            ],
        },
    )


def cb_subscriptions(seq: int, products: list[str]) -> Step:
    return (
        "send",
        {
            "channel": "subscriptions",
            "client_id": "",
            "timestamp": "2026-12-07T18:00:00.000000Z",
            "sequence_num": seq,
            "events": [
                {"subscriptions": {"market_trades": products, "heartbeats": ["heartbeats"]}}
            ],
        },
    )


# ---------------------------------------------------------------------- Binance messages


def bn_trade(pair: str, t: int, p: str, q: str, when: int, maker: bool = True) -> Step:
    """A combined-stream trade event."""
    data = {
        "e": "trade",
        "E": when + 3,
        "s": pair,
        "t": t,
        "p": p,
        "q": q,
        "T": when,
        "m": maker,
        "M": True,
    }
    return ("send", {"stream": f"{pair.lower()}@trade", "data": data})


def bn_server_shutdown(when: int) -> Step:
    return ("send", {"event": {"e": "serverShutdown", "E": when}})


# ---------------------------------------------------------------------- the server


@dataclass
class Connection:
    path: str = ""
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    closed_by_client: bool = False
    opened_at: float = field(default_factory=time.time)
    closed_at: float | None = None

    @property
    def streams(self) -> list[str]:
        return parse_qs(urlparse(self.path).query).get("streams", [""])[0].split("/")


class ScriptedWS:
    """Plays `scripts[i]` to the i-th connection, after `subscribe_messages` subscriptions.

    Connections beyond the scripts hold. `finished` is set once the last script
    reaches its end (or its `hold`/`stall`).
    """

    def __init__(
        self, scripts: list[list[Step]], subscribe_messages: int = 0, refuse: set[int] = frozenset()
    ):
        self.scripts = scripts
        self.subscribe_messages = subscribe_messages
        self.refuse = refuse  # handshake attempts (0, 1, ...) answered with HTTP 503
        self.handshakes = 0
        self.connections: list[Connection] = []
        self.finished = asyncio.Event()
        self.url = ""

    def _process_request(self, conn: ServerConnection, _request: Any) -> Any:
        attempt, self.handshakes = self.handshakes, self.handshakes + 1
        return conn.respond(503, "try again later\n") if attempt in self.refuse else None

    async def _handler(self, ws: ServerConnection) -> None:
        conn = Connection(path=ws.request.path if ws.request else "")
        index = len(self.connections)
        self.connections.append(conn)
        script = self.scripts[index] if index < len(self.scripts) else [("hold", None)]
        last = index == len(self.scripts) - 1
        try:
            while len(conn.subscriptions) < self.subscribe_messages:
                msg = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                if msg.get("type") == "subscribe":
                    conn.subscriptions.append(msg)
            for step, arg in script:
                if step == "send":
                    await ws.send(orjson.dumps(arg).decode())
                elif step == "sleep":
                    await asyncio.sleep(arg)
                elif step == "ping":
                    pong = await ws.ping(arg)
                    await asyncio.wait_for(pong, 5)
                    conn.pongs.append(arg)
                elif step == "drop":  # the TCP connection dies: no close frame
                    ws.transport.abort()
                    return
                elif step in ("stall", "hold"):
                    break
            if last:
                self.finished.set()
            await ws.wait_closed()
            conn.closed_by_client = ws.protocol.close_rcvd is not None
        finally:
            conn.closed_at = time.time()

    async def __aenter__(self) -> ScriptedWS:
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            ping_interval=None,
            process_request=self._process_request,
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()


class ServerThread:
    """A `ScriptedWS` on an event loop of its own thread (for tests that run the CLI)."""

    def __init__(self, scripts: list[list[Step]], subscribe_messages: int = 0):
        self.scripts, self.subscribe_messages = scripts, subscribe_messages
        self.server: ScriptedWS | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> ScriptedWS:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the loopback server did not start"
        assert self.server is not None
        return self.server

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ScriptedWS(self.scripts, self.subscribe_messages) as server:
            self.server = server
            self._ready.set()
            await self._stop.wait()

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)  # type: ignore[union-attr]
        self._thread.join(10)
