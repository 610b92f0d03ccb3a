"""`stockpipe produce`: ticks into Kafka from the simulator, Finnhub, Coinbase, Binance or a replay file.

Ctrl-C / SIGTERM stop the source, flush everything queued or spooled to the
broker, print how many ticks were acknowledged per symbol, and exit 0 (non-zero,
with the outage log named, when some could not be delivered).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import Annotated

import typer

from flows.errors import StockpipeError
from flows.ingest.kafka_out import Item, TickWriter
from flows.ingest.pacing import Pacer, event_ts, stop_on_signals
from flows.settings import Settings, load_settings, parse_duration, parse_symbols

log = logging.getLogger(__name__)


class Source(StrEnum):
    sim = "sim"
    finnhub = "finnhub"
    coinbase = "coinbase"
    binance = "binance"
    replay = "replay"


# The crypto feeds' symbols when STOCKPIPE_SYMBOLS is left at its (equity) default.
CRYPTO_DEFAULTS = {
    Source.coinbase: ["COINBASE:BTC-USD", "COINBASE:ETH-USD"],
    Source.binance: ["BINANCE:BTCUSDT", "BINANCE:ETHUSDT"],
}


class Mode(StrEnum):
    ws = "ws"
    rest = "rest"


def _parse_start(value: str | None, option: str = "--start") -> int:
    """Epoch ms of an ISO date-time, of `now` (the default) or of `last-session`.

    `last-session`: the latest NYSE regular-session open at or before now (holidays
    skipped), so a stock simulator has a session to show at any hour.
    """
    now = time.time_ns() // 1_000_000
    if not value or value == "now":
        return now
    if value == "last-session":
        from flows.ingest.sim import last_open

        return last_open(now)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise StockpipeError(
            f"{option} {value!r} is not an ISO date-time (e.g. 2025-03-04T09:30:00-05:00)"
            + (", now or last-session" if option == "--start" else " or a duration (30d)")
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _warmup_from(value: str, start_ms: int) -> int:
    """Epoch ms of `--warmup-from`: an ISO date-time, or a duration before the start (30d)."""
    try:
        return start_ms - int(parse_duration(value) * 1000)
    except ValueError:
        return _parse_start(value, "--warmup-from")  # its error names both forms


def _probability(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise StockpipeError(f"{name} must be a probability between 0 and 1, got {value!r}")
    return value


def _positive(name: str, value: float) -> float:
    if value <= 0:
        raise StockpipeError(f"{name} must be > 0, got {value!r}")
    return value


def pump(items: Iterable[Item], writer: TickWriter, pacer: Pacer) -> None:
    """Write items to Kafka at the pacer's speed until they run out or a stop is asked for."""
    for item in items:
        if not pacer.wait(event_ts(item)):
            break
        writer.write(item)
        writer.poll(0)


def _print_summary(writer: TickWriter, started: float) -> None:
    ticks = sum(writer.delivered.values())
    raw = sum(writer.delivered_raw.values())
    elapsed = time.monotonic() - started
    typer.echo(
        f"sent {ticks + raw} messages to {writer.topic} in {elapsed:.1f}s: {ticks} ticks, {raw} raw records"
    )
    typer.echo("messages sent per symbol:")
    for key in sorted(set(writer.delivered) | set(writer.delivered_raw)):
        n_raw = writer.delivered_raw.get(key, 0)
        extra = f" ({n_raw} raw)" if n_raw else ""
        typer.echo(f"  {key or '(no key)'}: {writer.delivered.get(key, 0) + n_raw}{extra}")
    if writer.failed:
        typer.echo(
            f"{writer.failed} messages were NOT delivered (listed in the outage log {writer.outage_log})"
        )


async def _run_async(runner, stop_flag: threading.Event) -> None:  # noqa: ANN001
    from flows.ingest.ws_feed import stop_when

    stop = asyncio.Event()
    watcher = asyncio.create_task(stop_when(stop_flag, stop))
    try:
        await runner.run(stop)
    finally:
        stop.set()
        await watcher


def produce_command(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="Replay file (--source replay): JSON lines or Parquet of ticks.",
            show_default=False,
        ),
    ] = None,
    source: Annotated[Source, typer.Option("--source", help="Where ticks come from.")] = Source.sim,
    symbols: Annotated[
        str | None,
        typer.Option(
            "--symbols",
            help="Comma-separated symbols. coinbase and binance take their exchange's form "
            "(COINBASE:BTC-USD, BINANCE:BTCUSDT); left at the stock default they track BTC and "
            "ETH (COINBASE:BTC-USD,COINBASE:ETH-USD or BINANCE:BTCUSDT,BINANCE:ETHUSDT).",
            show_default="STOCKPIPE_SYMBOLS",
        ),
    ] = None,
    topic: Annotated[
        str | None,
        typer.Option("--topic", help="Kafka topic.", show_default="STOCKPIPE_TOPIC"),
    ] = None,
    # pacing
    speed: Annotated[
        float,
        typer.Option(
            "--speed",
            help="Event-time compression: 60 plays an hour of ticks in a minute; 0 = no pacing.",
        ),
    ] = 1.0,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            help="Fixed wall-clock rate in messages/s (overrides --speed).",
            show_default="none: --speed paces",
        ),
    ] = None,
    as_fast_as_possible: Annotated[
        bool, typer.Option("--as-fast-as-possible", help="No pacing at all (same as --speed 0).")
    ] = False,
    # simulator
    seed: Annotated[
        int, typer.Option("--seed", help="sim: random seed; the same seed gives the same messages.")
    ] = 0,
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            help="sim: event time of the first tick: ISO 8601 (UTC if no offset), now or "
            "last-session (the latest NYSE session open). Stocks wait for the next NYSE "
            "session, crypto pairs (X:Y) trade at once. Paced ticks never go out before their "
            "time: a start in the past catches up at --speed, then runs in real time.",
            show_default="now",
        ),
    ] = None,
    duration: Annotated[
        str | None,
        typer.Option(
            "--duration",
            help="sim: stop after this much EVENT time (e.g. 6.5h, 10m); at --speed S it takes "
            "duration/S of wall time.",
            show_default="until stopped",
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            min=1,
            help="Stop after N messages (faults included).",
            show_default="no limit",
        ),
    ] = None,
    duplicates: Annotated[
        float, typer.Option("--duplicates", help="sim: P(a trade is sent twice).")
    ] = 0.0,
    out_of_order: Annotated[
        float,
        typer.Option(
            "--out-of-order", help="sim: P(a trade swaps places with its symbol's next trade)."
        ),
    ] = 0.0,
    late: Annotated[
        float, typer.Option("--late", help="sim: P(a trade is 5-15 min late: restates a bar).")
    ] = 0.0,
    too_late: Annotated[
        float,
        typer.Option(
            "--too-late", help="sim: P(a trade is days late: beyond the restate horizon)."
        ),
    ] = 0.0,
    bad: Annotated[
        float,
        typer.Option(
            "--bad", help="sim: P(an extra record breaking contract 1, of every kind in turn)."
        ),
    ] = 0.0,
    intensity: Annotated[
        float,
        typer.Option(
            "--intensity", help="sim: scale every symbol's trade rate (0.01: a hundredth)."
        ),
    ] = 1.0,
    warmup_from: Annotated[
        str | None,
        typer.Option(
            "--warmup-from",
            help="sim: also simulate history from this ISO time, or this long before --start "
            "(30d), up to --start, at --warmup-intensity and without pacing, on the same price "
            "path.",
            show_default="no warm-up",
        ),
    ] = None,
    warmup_intensity: Annotated[
        float, typer.Option("--warmup-intensity", help="sim: trade-rate scale of the warm-up.")
    ] = 0.01,
    # finnhub
    mode: Annotated[
        Mode,
        typer.Option(
            "--mode", help="finnhub: websocket trades (ws) or REST /quote polling (rest)."
        ),
    ] = Mode.ws,
    stall_timeout: Annotated[
        str | None,
        typer.Option(
            "--stall-timeout",
            help="finnhub ws, coinbase, binance: reconnect after this long without any message "
            "(a duration).",
            show_default="finnhub: STOCKPIPE_FINNHUB_STALL_TIMEOUT, 30s; coinbase: 10s "
            "(heartbeats every second); binance: 60s",
        ),
    ] = None,
    calls_per_minute: Annotated[
        int | None,
        typer.Option(
            "--calls-per-minute",
            min=1,
            help="finnhub rest: requests per minute, at most.",
            show_default="STOCKPIPE_FINNHUB_CALLS_PER_MINUTE, 60",
        ),
    ] = None,
) -> None:
    """Produce ticks into Kafka (key = symbol, contract-1 JSON) until done or Ctrl-C."""
    from flows.logs import setup_logging

    setup_logging()
    settings = load_settings(**({"topic": topic} if topic else {}))
    try:
        wanted = parse_symbols(symbols) if symbols else settings.symbols
    except ValueError as exc:
        raise StockpipeError(f"--symbols {symbols!r}: {exc}") from None
    if source in CRYPTO_DEFAULTS and not symbols and wanted == _STOCK_DEFAULT:
        wanted = list(CRYPTO_DEFAULTS[source])
    if speed < 0:
        raise StockpipeError(f"--speed must be >= 0, got {speed!r}")
    if rate is not None and rate <= 0:
        raise StockpipeError(f"--rate must be > 0, got {rate!r}")
    if as_fast_as_possible:
        speed, rate = 0.0, None

    # everything that can be wrong with the options is checked before Kafka is touched
    job = _plan(source, settings, file, wanted, speed, rate, seed, start, duration, count,
                duplicates, out_of_order, late, too_late, bad, intensity, warmup_from,
                warmup_intensity, mode, stall_timeout, calls_per_minute)  # fmt: skip
    from flows.metrics import serve, write_textfile

    with stop_on_signals() as stop, TickWriter(settings) as writer:
        server = serve(settings.metrics_port, writer.health)
        started = time.monotonic()
        typer.echo(
            f"producing {source.value} ticks into {writer.topic} at {settings.kafka_bootstrap_servers} "
            "(Ctrl-C to stop)",
            err=True,
        )
        try:
            job(writer, stop)
        finally:
            try:  # drains (bounded), ledgers what Kafka never took, raises if anything was lost
                writer.close()
            finally:
                _print_summary(writer, started)
                write_textfile(settings.metrics_textfile)
                if server is not None:
                    server.shutdown()


Job = Callable[[TickWriter, threading.Event], None]
_STOCK_DEFAULT = Settings.model_fields["symbols"].default


def _crypto_job(
    source: Source, settings: Settings, symbols: list[str], stall_timeout: str | None
) -> Job:
    """The Coinbase or Binance stream for `symbols`, checked before Kafka is touched."""
    from flows.ingest.binance import BinanceStream, pairs
    from flows.ingest.coinbase import CoinbaseStream, product_ids

    check, feed = {
        Source.coinbase: (product_ids, CoinbaseStream),
        Source.binance: (pairs, BinanceStream),
    }[source]
    try:
        check(symbols)
    except ValueError as exc:
        raise StockpipeError(
            f"--symbols / STOCKPIPE_SYMBOLS for --source {source}: {exc}"
        ) from None
    try:
        stall = parse_duration(stall_timeout) if stall_timeout else None
    except ValueError as exc:
        raise StockpipeError(f"--stall-timeout: {exc}") from None
    if stall is not None and stall <= 0:
        raise StockpipeError(f"--stall-timeout must be > 0, got {stall_timeout!r}")

    def stream(writer: TickWriter, stop: threading.Event) -> None:
        runner = feed(settings, writer, symbols, stall_timeout=stall)
        asyncio.run(_run_async(runner, stop))

    return stream


def _plan(
    source: Source,
    settings: Settings,
    file: Path | None,
    symbols: list[str],
    speed: float,
    rate: float | None,
    seed: int,
    start: str | None,
    duration: str | None,
    count: int | None,
    duplicates: float,
    out_of_order: float,
    late: float,
    too_late: float,
    bad: float,
    intensity: float,
    warmup_from: str | None,
    warmup_intensity: float,
    mode: Mode,
    stall_timeout: str | None,
    calls_per_minute: int | None,
) -> Job:
    """Validate the options for `source` and return what produces its ticks into a writer."""
    if source is Source.sim:
        from flows.ingest.sim import simulate

        start_ms = _parse_start(start)
        sim_from_ms = start_ms
        if warmup_from is not None:
            sim_from_ms = _warmup_from(warmup_from, start_ms)
            if sim_from_ms >= start_ms:
                raise StockpipeError(f"--warmup-from {warmup_from!r} must be before --start")
        end_ms = None
        if duration is not None:
            try:
                end_ms = start_ms + int(parse_duration(duration) * 1000)
            except ValueError as exc:
                raise StockpipeError(f"--duration: {exc}") from None
        items = simulate(
            symbols,
            seed,
            sim_from_ms,
            count,
            end_ms,
            duplicates=_probability("--duplicates", duplicates),
            out_of_order=_probability("--out-of-order", out_of_order),
            late=_probability("--late", late),
            too_late=_probability("--too-late", too_late),
            bad=_probability("--bad", bad),
            intensity=_positive("--intensity", intensity),
            warmup_until_ms=start_ms if warmup_from is not None else None,
            warmup_intensity=_positive("--warmup-intensity", warmup_intensity),
        )
        # paced from the start time, so the quiet hours before a session take time too;
        # never ahead of the wall clock, so a start in the past catches up at --speed,
        # then runs in real time
        return lambda writer, stop: pump(
            items, writer, Pacer(stop, speed, rate, origin_ms=start_ms, live_edge=True)
        )
    if source in CRYPTO_DEFAULTS:
        return _crypto_job(source, settings, symbols, stall_timeout)
    if source is Source.replay:
        from flows.ingest.replay import read_replay

        if file is None:
            raise StockpipeError("--source replay needs a FILE argument (JSON lines or Parquet)")
        replayed = read_replay(file)
        if count:
            replayed = islice(replayed, count)
        return lambda writer, stop: pump(replayed, writer, Pacer(stop, speed, rate))

    from flows.ingest.finnhub_ws import api_key

    api_key(settings)
    if mode is Mode.ws:
        from flows.ingest.finnhub_ws import FinnhubStream

        try:
            stall = parse_duration(stall_timeout) if stall_timeout else None
        except ValueError as exc:
            raise StockpipeError(f"--stall-timeout: {exc}") from None

        def stream(writer: TickWriter, stop: threading.Event) -> None:
            runner = FinnhubStream(settings, writer, symbols, stall_timeout=stall)
            asyncio.run(_run_async(runner, stop))

        return stream

    from flows.ingest.finnhub_rest import QuotePoller

    def poll(writer: TickWriter, stop: threading.Event) -> None:
        runner = QuotePoller(settings, writer, symbols, calls_per_minute=calls_per_minute)
        asyncio.run(_run_async(runner, stop))

    return poll
