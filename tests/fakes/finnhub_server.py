"""Loopback stand-ins for Finnhub, speaking as Finnhub does (docs/contracts.md, contract 1).

`FakeFinnhubWS`: a real websocket server on 127.0.0.1 (port 0) that plays one
script per accepted connection: frames, pauses, a dropped TCP connection, a
silent stall. `FakeFinnhubREST`: a real HTTP server (aiohttp) answering
`/quote` from a per-symbol script of responses, recording when each call came,
and the history endpoints `/stock/candle`, `/stock/tick` and `/stock/split`.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

# websocket script steps
Frame = tuple[
    str, Any
]  # ("send", obj) | ("sleep", s) | ("drop", None) | ("stall", None) | ("hold", None)


def trade(s: str, p: float, t: int, v: float, c: list[str] | None = None) -> dict[str, Any]:
    return {"s": s, "p": p, "t": t, "v": v, "c": c or ["1"]}


def trades(*data: dict[str, Any]) -> Frame:
    return ("send", {"type": "trade", "data": list(data)})


PING: Frame = ("send", {"type": "ping"})


@dataclass
class WSConnection:
    subscriptions: list[str] = field(default_factory=list)
    opened_at: float = field(default_factory=time.time)
    closed_at: float | None = None


class FakeFinnhubWS:
    """Plays `scripts[i]` to the i-th connection; refuses a handshake without `token`.

    After the scripts run out, further connections just hold. `finished` is set
    once the last script reaches its end (a `hold`, or its last step).
    """

    def __init__(self, scripts: list[list[Frame]], token: str, subscriptions: int):
        self.scripts = scripts
        self.token = token
        self.subscriptions = subscriptions
        self.connections: list[WSConnection] = []
        self.refused = 0
        self.finished = asyncio.Event()
        self.url = ""

    def _check_token(self, _conn: ServerConnection, request: Request) -> Response | None:
        token = parse_qs(urlparse(request.path).query).get("token", [""])[0]
        if token != self.token:
            self.refused += 1
            return _conn.respond(401, "bad token\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        conn = WSConnection()
        index = len(self.connections)
        self.connections.append(conn)
        script = self.scripts[index] if index < len(self.scripts) else [("hold", None)]
        try:
            while len(conn.subscriptions) < self.subscriptions:  # Finnhub sends nothing before
                msg = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                if msg.get("type") == "subscribe":
                    conn.subscriptions.append(msg["symbol"])
            for step, arg in script:
                if step == "send":
                    await ws.send(orjson.dumps(arg).decode())
                elif step == "sleep":
                    await asyncio.sleep(arg)
                elif step == "drop":  # the TCP connection dies: no close frame
                    ws.transport.abort()
                    return
                elif step in ("stall", "hold"):  # connected, silent
                    if index == len(self.scripts) - 1:
                        self.finished.set()
                    await ws.wait_closed()
                    return
            if index == len(self.scripts) - 1:
                self.finished.set()
            await ws.wait_closed()
        finally:
            conn.closed_at = time.time()

    async def __aenter__(self) -> FakeFinnhubWS:
        self._server = await serve(
            self._handler, "127.0.0.1", 0, process_request=self._check_token, ping_interval=None
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()


@dataclass
class Call:
    symbol: str
    token: str
    at: float  # time.monotonic()
    status: int


class FakeFinnhubREST:
    """`GET /api/v1/quote?symbol=S&token=T` answered from `scripts[S]`, one response per call.

    A response is a quote dict (200), or `(status, headers)`. When a symbol's
    script runs out its last quote is repeated (a quiet market). Unknown
    symbols get Finnhub's all-zero quote.
    """

    def __init__(
        self,
        scripts: dict[str, list[Any]],
        token: str,
        *,
        candles: dict[str, list[tuple[int, float, float, float, float, float]]] | None = None,
        trades: dict[str, list[tuple[int, float, float, str, list[str]]]] | None = None,
        tick_access: bool = True,
        faults: list[Any] | None = None,
        splits: dict[str, list[tuple[str, float, float]]] | None = None,
    ):
        self.scripts = {s: list(r) for s, r in scripts.items()}
        self.last: dict[str, dict[str, Any]] = {}
        self.token = token
        self.calls: list[Call] = []
        self.base_url = ""
        # history: candles[S] = [(t_s, o, h, l, c, v)], trades[S] = [(t_ms, p, v, x, c)]
        self.candles = candles or {}
        self.trades = trades or {}
        self.tick_access = tick_access
        # splits[S] = [(date YYYY-MM-DD, fromFactor, toFactor)]
        self.splits = splits or {}
        # answers played before any history call, one per call: (status, headers) or "fail"
        # forever (a broken server from then on)
        self.faults = list(faults or [])
        self.requests: list[tuple[str, dict[str, str], int]] = []  # path, query, status

    @property
    def exhausted(self) -> bool:
        return all(not r for r in self.scripts.values())

    async def _quote(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        token = request.query.get("token", "")
        if token != self.token:
            self.calls.append(Call(symbol, token, time.monotonic(), 401))
            return web.json_response({"error": "Invalid API key"}, status=401)
        script = self.scripts.get(symbol)
        if script is None:
            reply: Any = {"c": 0, "d": None, "dp": None, "h": 0, "l": 0, "o": 0, "pc": 0, "t": 0}
        elif script:
            reply = script.pop(0)
        else:
            reply = self.last.get(symbol, {"c": 0, "t": 0})
        if isinstance(reply, tuple):
            status, headers = reply
            self.calls.append(Call(symbol, token, time.monotonic(), status))
            return web.json_response({"error": f"HTTP {status}"}, status=status, headers=headers)
        self.last[symbol] = reply
        self.calls.append(Call(symbol, token, time.monotonic(), 200))
        return web.json_response(reply)

    def _history_fault(self, request: web.Request) -> web.Response | None:
        path, query = request.path, dict(request.query)
        query.pop("token", None)
        if request.query.get("token", "") != self.token:
            self.requests.append((path, query, 401))
            return web.json_response({"error": "Invalid API key"}, status=401)
        fault = self.faults[0] if self.faults else None
        if fault == "fail":
            self.requests.append((path, query, 500))
            return web.json_response({"error": "internal"}, status=500)
        if fault is not None:
            self.faults.pop(0)
            status, headers = fault
            self.requests.append((path, query, status))
            return web.json_response({"error": f"HTTP {status}"}, status=status, headers=headers)
        return None

    async def _candle(self, request: web.Request) -> web.Response:
        """`/stock/candle?symbol&resolution=1&from&to` (UNIX seconds, inclusive)."""
        if (fault := self._history_fault(request)) is not None:
            return fault
        q = request.query
        lo, hi = int(q["from"]), int(q["to"])
        rows = [r for r in self.candles.get(q["symbol"], []) if lo <= r[0] <= hi]
        query = {k: v for k, v in q.items() if k != "token"}
        self.requests.append((request.path, query, 200))
        if not rows:
            return web.json_response({"s": "no_data"})
        cols = list(zip(*rows, strict=True))
        return web.json_response({"s": "ok", **{k: list(cols[i]) for i, k in enumerate("tohlcv")}})

    async def _tick(self, request: web.Request) -> web.Response:
        """`/stock/tick?symbol&date&limit&skip`: one day's trades, paged (premium)."""
        if (fault := self._history_fault(request)) is not None:
            return fault
        q = request.query
        query = {k: v for k, v in q.items() if k != "token"}
        if not self.tick_access:
            self.requests.append((request.path, query, 403))
            return web.json_response(
                {"error": "You don't have access to this resource."}, status=403
            )
        day = q["date"]
        rows = [
            r
            for r in self.trades.get(q["symbol"], [])
            if time.strftime("%Y-%m-%d", time.gmtime(r[0] / 1000)) == day
        ]
        skip, limit = int(q.get("skip", 0)), int(q.get("limit", 25000))
        page = rows[skip : skip + limit]
        self.requests.append((request.path, query, 200))
        return web.json_response(
            {
                "s": q["symbol"],
                "skip": skip,
                "count": len(page),
                "total": len(rows),
                "t": [r[0] for r in page],
                "p": [r[1] for r in page],
                "v": [r[2] for r in page],
                "x": [r[3] for r in page],
                "c": [r[4] for r in page],
            }
        )

    async def _split(self, request: web.Request) -> web.Response:
        """`/stock/split?symbol&from&to` (YYYY-MM-DD, inclusive): a list of splits."""
        if (fault := self._history_fault(request)) is not None:
            return fault
        q = request.query
        query = {k: v for k, v in q.items() if k != "token"}
        self.requests.append((request.path, query, 200))
        return web.json_response(
            [
                {"symbol": q["symbol"], "date": day, "fromFactor": f, "toFactor": t}
                for day, f, t in self.splits.get(q["symbol"], [])
                if q["from"] <= day <= q["to"]
            ]
        )

    @web.middleware
    async def _merge_slashes(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # finnhub-python joins API_URL and "/quote" with a slash: `/api/v1//quote`
        if "//" in request.path:
            path = re.sub("/+", "/", request.path)
            request = request.clone(
                rel_url=request.rel_url.with_path(path).with_query(request.query)
            )
            match = await request.app.router.resolve(request)
            request._match_info = match  # noqa: SLF001 - re-route the normalized path
            return await match.handler(request)
        return await handler(request)

    async def __aenter__(self) -> FakeFinnhubREST:
        app = web.Application(middlewares=[self._merge_slashes])
        app.router.add_get("/api/v1/quote", self._quote)
        app.router.add_get("/api/v1/stock/candle", self._candle)
        app.router.add_get("/api/v1/stock/tick", self._tick)
        app.router.add_get("/api/v1/stock/split", self._split)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/api/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()
