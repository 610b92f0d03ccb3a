"""`stockpipe fetch-splits`: stock splits from Finnhub's REST API into `bronze.splits`.

For each symbol (STOCKPIPE_SYMBOLS, or `--symbols`), one call of Finnhub's
`/stock/split?symbol=S&from=DATE&to=DATE` through finnhub-python
(`client.stock_splits(symbol, _from=..., to=...)`), which answers a list of
`{"symbol", "date", "fromFactor", "toFactor"}`. Crypto symbols (`EXCHANGE:PAIR`)
are skipped with a log line: splits are for equities. Each split becomes a row
of `bronze.splits`: `symbol`, `ex_date` (`date`), `split_from` (`fromFactor`),
`split_to` (`toFactor`: Apple's 7-for-1 of 2014-06-09 answers fromFactor 1,
toFactor 7 in public clients' fixtures of this endpoint, so `fromFactor` shares
became `toFactor`), `source` = `finnhub`, `_loaded_at`, upserted by (symbol,
ex_date) (`Warehouse.upsert_reference`), so a re-run changes nothing and a
corrected split replaces its row. dbt's `stg_splits` prefers these rows to the
repository's seed for the same (symbol, ex_date).

Calls go through the backfill's `FinnhubApi`: one rate limiter, HTTP 429 waits
(Retry-After) and asks again, 5xx and network errors are retried with backoff;
a symbol Finnhub keeps failing is reported and the others go on (what was
fetched is still written). A split with a factor that is not a positive number
is logged and left out.

Exit codes: 0 done, 2 bad options or settings (FINNHUB_API_KEY not set, a key
Finnhub rejects or whose plan lacks the endpoint), 69 Finnhub kept failing for
some symbol (run again) or the warehouse is unavailable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Annotated, Any

import typer

from flows.errors import ServiceUnavailable, StockpipeError
from flows.ingest.backfill import parse_when
from flows.ingest.finnhub_rest import FinnhubApi, GaveUp, NoAccess, Skipped
from flows.settings import Settings, load_settings, parse_symbols

log = logging.getLogger(__name__)

SOURCE = "finnhub"
SPLIT_KEY = ("symbol", "ex_date")
DEFAULT_SINCE = date(2000, 1, 1)  # the calendars start there


def is_crypto(symbol: str) -> bool:
    """`COINBASE:BTC-USD`, `BINANCE:BTCUSDT`: an exchange-prefixed pair (contract 1)."""
    return ":" in symbol


@dataclass
class SplitsReport:
    warehouse: str
    dry_run: bool
    since: str
    until: str
    symbols: list[str]
    skipped: list[str] = field(default_factory=list)  # crypto
    splits: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    changed: int = 0
    calls: int = 0


def split_rows(symbol: str, answer: Any) -> list[dict[str, Any]]:
    """Finnhub's `/stock/split` answer for `symbol` as `bronze.splits` rows (bad ones logged)."""
    rows = []
    for item in answer if isinstance(answer, list) else []:
        try:
            ex_date = date.fromisoformat(str(item["date"])[:10])
            split_from, split_to = float(item["fromFactor"]), float(item["toFactor"])
        except (KeyError, TypeError, ValueError):
            log.warning("finnhub split of %s is not readable, left out: %r", symbol, item)
            continue
        if not all(math.isfinite(f) and f > 0 for f in (split_from, split_to)):
            log.warning("finnhub split of %s has a factor <= 0, left out: %r", symbol, item)
            continue
        # the symbol asked for: Finnhub echoes it, but the key must be ours
        rows.append(
            {
                "symbol": symbol,
                "ex_date": ex_date,
                "split_from": split_from,
                "split_to": split_to,
                "source": SOURCE,
            }
        )
    return rows


def _day(value: str | None, option: str, default: date) -> date:
    if value is None:
        return default
    ms = parse_when(value, option, time.time_ns() // 1_000_000)
    assert ms is not None
    return datetime.fromtimestamp(ms / 1000, UTC).date()


async def _fetch(
    api: FinnhubApi, symbols: list[str], since: date, until: date, report: SplitsReport
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for symbol in symbols:
        try:
            answer = await api.call(
                f"splits of {symbol}",
                api.client.stock_splits,
                symbol,
                _from=since.isoformat(),
                to=until.isoformat(),
            )
        except (GaveUp, Skipped) as exc:
            report.failed[symbol] = str(exc)
            log.error("finnhub splits of %s failed: %s", symbol, exc)
            continue
        except NoAccess as exc:
            raise StockpipeError(
                f"FINNHUB_API_KEY's plan has no access to Finnhub's /stock/split: {exc}"
            ) from None
        found = split_rows(symbol, answer)
        log.info("finnhub: %d split(s) of %s in %s..%s", len(found), symbol, since, until)
        rows += found
    return rows


def fetch_splits(
    settings: Settings,
    symbols: list[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    dry_run: bool = False,
    api: FinnhubApi | None = None,
) -> SplitsReport:
    """The library call behind the command (and the backfill DAG's task)."""
    first = _day(since, "--since", DEFAULT_SINCE)
    last = _day(until, "--until", datetime.now(UTC).date())
    if first > last:
        raise StockpipeError(f"--since {since!r} is after --until {until!r}")
    wanted = list(symbols or settings.symbols)
    equities = [s for s in wanted if not is_crypto(s)]
    report = SplitsReport(settings.warehouse, dry_run, str(first), str(last), equities)
    report.skipped = [s for s in wanted if is_crypto(s)]
    for symbol in report.skipped:
        log.info("fetch-splits: %s is a crypto pair, skipped (splits are for equities)", symbol)
    if not equities:
        return report
    key = settings.finnhub_api_key
    if key is None or not key.get_secret_value():  # a clear error before anything else
        raise StockpipeError(
            "fetch-splits needs FINNHUB_API_KEY (Finnhub's /stock/split): get a free key at "
            "https://finnhub.io/register and export it"
        )
    api = api or FinnhubApi(settings)
    try:
        rows = asyncio.run(_fetch(api, equities, first, last, report))
    finally:
        report.calls = api.calls
        api.close()
    report.splits = [{**r, "ex_date": r["ex_date"].isoformat()} for r in rows]
    if dry_run or not rows:
        return report
    import pyarrow as pa

    from flows.warehouse.base import REFERENCE_TABLES, SPLITS_TABLE
    from flows.warehouse.loader import open_warehouse

    table = pa.Table.from_pylist(rows, schema=REFERENCE_TABLES[SPLITS_TABLE].arrow)
    warehouse = open_warehouse(settings)
    try:
        warehouse.ensure_schema()
        result = warehouse.upsert_reference(SPLITS_TABLE, table, SPLIT_KEY)
    finally:
        warehouse.close()
    report.rows, report.changed = result.rows, result.changed
    return report


def _symbols(value: str | None) -> list[str] | None:
    if value is None:
        return None
    try:
        return parse_symbols(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--symbols") from None


def fetch_splits_command(
    symbols: Annotated[
        str | None,
        typer.Option(
            "--symbols",
            help="Comma-separated symbols (crypto pairs are skipped).",
            show_default="STOCKPIPE_SYMBOLS",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Splits from this ex-date on: a date (2020-01-01) or a duration ago (30d).",
            show_default="2000-01-01",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            help="Splits up to this ex-date: a date or a duration ago.",
            show_default="today",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Fetch and print the splits; write nothing."),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Fetch stock splits from Finnhub's REST API into the warehouse (bronze.splits)."""
    report = fetch_splits(load_settings(), _symbols(symbols), since, until, dry_run)
    if json_output:
        typer.echo(json.dumps(asdict(report), indent=2))
    else:
        for symbol in report.skipped:
            typer.echo(f"skipped {symbol}: a crypto pair (splits are for equities)")
        for split in report.splits:
            typer.echo(
                f"{split['symbol']} {split['ex_date']}: {split['split_from']:g} -> "
                f"{split['split_to']:g}"
            )
        for symbol, error in report.failed.items():
            typer.echo(f"failed {symbol}: {error}")
        where = (
            "nothing written (--dry-run)"
            if dry_run
            else (f"{report.rows} row(s) in bronze.splits, {report.changed} inserted or changed")
        )
        typer.echo(
            f"{len(report.splits)} split(s) of {len(report.symbols)} symbol(s) "
            f"in {report.since}..{report.until}: {where}"
        )
    if report.failed:
        raise ServiceUnavailable(
            f"{len(report.failed)} of {len(report.symbols)} symbols failed (Finnhub kept "
            "failing): run again"
        )
