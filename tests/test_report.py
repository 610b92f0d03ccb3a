"""`stockpipe report` on a real warehouse: real dbt transform, real DuckDB, real Chromium.

One module-scoped warehouse: two stocks over 60 NYSE sessions, a 24/7 crypto
pair, and a stock with three sessions only (every indicator NULL), with missing
minutes (synthetic bars), restated revisions and too-late ticks in the lake's
`late/`. The report built from it is checked three ways: its HTML (self-contained,
a section per symbol, table values equal to the marts and to SQL counts), the
page in headless Chromium (every chart drawn, no console error) and a screenshot
that is not blank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pytest
from test_dbt_transform import load_bronze, random_bars

from flows.errors import StockpipeError
from flows.lake.store import open_lake
from flows.report.html import NO_BARS, NOT_TRANSFORMED, build_report, read_dlq_counts
from flows.settings import Settings, load_settings
from flows.stream.lake_sink import LakeWriter
from flows.transform.dbt_runner import transform

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
STOCKS = ["AAA", "BBB"]
CRYPTO = "BINANCE:BTCUSDT"
NEWCOMER = "NEWCO"  # three sessions: too little history for any indicator
SYMBOLS = [*STOCKS, CRYPTO, NEWCOMER]
SESSIONS = 60
CHARTS_PER_SYMBOL = 5
DLQ = {"bad_json": 3, "bad_price": 2, "ts_out_of_range": 1}
LATE = {"AAA": 3, "BBB": 1}  # distinct too-late tick ids per symbol
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "report.png"


# ---------------------------------------------------------------- test data


def generate_bronze(seed: int = 11) -> pd.DataFrame:
    """bronze.bars rows: regular sessions plus a few pre/post prints, gaps and restatements."""
    rng = np.random.default_rng(seed)
    schedule = xcals.get_calendar("XNYS", start="2025-01-01", end="2025-12-31").schedule
    schedule = schedule.loc["2025-01-02":].iloc[:SESSIONS]
    parts = []
    for symbol in [*STOCKS, NEWCOMER]:
        days = schedule if symbol != NEWCOMER else schedule.iloc[-3:]
        minutes = []
        for market_open, market_close in days[["open", "close"]].itertuples(index=False):
            minutes.append(pd.date_range(market_open, market_close, freq="1min", inclusive="left"))
            minutes.append(market_open - pd.Timedelta(minutes=int(rng.integers(5, 60))))
            minutes.append(market_close + pd.Timedelta(minutes=int(rng.integers(5, 60))))
        starts = pd.DatetimeIndex(np.sort(np.concatenate([np.atleast_1d(m) for m in minutes])))
        parts.append(random_bars(symbol, starts.tz_convert("UTC"), rng))
    crypto_days = pd.date_range(schedule.index[0], periods=SESSIONS, freq="D", tz="UTC")
    crypto = pd.date_range(crypto_days[0], crypto_days[-1] + pd.Timedelta(days=1), freq="1min")
    parts.append(random_bars(CRYPTO, crypto[:-1], rng))
    bars = pd.concat(parts, ignore_index=True)

    # minutes without a trade (never a symbol's first or last bar): synthetic in silver
    position = bars.groupby("symbol").cumcount()
    size = bars.groupby("symbol").symbol.transform("size")
    missing = position.between(3, size - 4) & (rng.uniform(0, 1, len(bars)) < 0.02)
    bars = bars[~missing].reset_index(drop=True)

    # restated bars: a revision 0 with other prices precedes the final revision 1
    restated = rng.uniform(0, 1, len(bars)) < 0.004
    bars.loc[restated, "revision"] = 1
    superseded = bars[restated].copy()
    superseded["revision"] = 0
    for column in ("open", "high", "low", "close", "vwap"):
        superseded[column] *= 0.995
    rows = pd.concat([bars, superseded], ignore_index=True)
    rows["_source_file"] = "bars/test/0.parquet"
    rows["_loaded_at"] = pd.Timestamp("2025-04-01 00:00", tz="UTC")
    return rows


def write_late_ticks(settings: Settings) -> None:
    """Too-late ticks in the lake's late/, one of them written twice (a replay)."""
    writer = LakeWriter(open_lake(settings))
    base_us = int(pd.Timestamp("2025-02-03 15:00", tz="UTC").value // 1000)
    rows = []
    for symbol, n in LATE.items():
        for i in range(n):
            ts = base_us + i * 1_000_000
            rows.append((symbol, ts, 100.0, 5.0, f"{symbol}-late-{i}", "sim", ts, ts, ts))
    writer.write_late(rows)
    writer.write_late(rows[:1])


@dataclass
class Built:
    settings: Settings
    db: Path
    html_path: Path
    html: str
    seconds: float

    def query(self, sql: str) -> pd.DataFrame:
        with duckdb.connect(str(self.db), read_only=True) as con:
            con.execute("set TimeZone = 'UTC'")
            return con.execute(sql).df()


def build_test_warehouse(tmp: Path) -> Settings:
    """A transformed warehouse and a lake with late ticks under `tmp`."""
    db = tmp / "warehouse.duckdb"
    settings = load_settings(
        warehouse=f"duckdb:///{db}",
        dbt_target_path=tmp / "target",
        lake_url=str(tmp / "lake"),
        report_path=tmp / "reports" / "stockpipe.html",
        symbols=[*SYMBOLS, "ZZZ"],
    )
    load_bronze(db, generate_bronze())
    transform(settings)
    write_late_ticks(settings)
    return settings


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    settings = build_test_warehouse(tmp_path_factory.mktemp("report"))
    started = time.perf_counter()
    path = build_report(settings, dlq_counts=DLQ)
    seconds = time.perf_counter() - started
    print(f"build_report: {seconds:.1f}s, {path.stat().st_size / 1e6:.1f} MB")
    return Built(settings, settings.duckdb_path, path, path.read_text(encoding="utf-8"), seconds)


# ----------------------------------------------------------- HTML reading


class Cells(HTMLParser):
    """Every element with a data-metric, with the id of its table and its row's symbol."""

    def __init__(self) -> None:
        super().__init__()
        self.table: str | None = None
        self.row_symbol: str | None = None
        self.cells: list[dict[str, str | None]] = []
        self.sections: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id")
        elif tag == "tr":
            self.row_symbol = a.get("data-symbol")
        elif tag == "section" and "symbol" in (a.get("class") or "").split():
            self.sections.append(a["data-symbol"] or "")
        if "data-metric" in a:
            self.cells.append({**a, "table": self.table, "row": self.row_symbol})

    def values(self, table: str) -> dict[tuple[str, str], str | None]:
        return {
            (c["row"], c["data-metric"]): c.get("data-value")
            for c in self.cells
            if c["table"] == table
        }


def parse(html: str) -> Cells:
    cells = Cells()
    cells.feed(html)
    return cells


def as_float(value: str | None) -> float:
    return float("nan") if value is None else float(value)


def assert_same(actual: str | None, expected: object, what: str) -> None:
    if expected is None or (isinstance(expected, float) and np.isnan(expected)):
        assert actual is None, f"{what}: expected NULL, the report shows {actual}"
    elif isinstance(expected, str):
        assert actual == expected, what
    else:
        assert actual is not None, f"{what}: the report shows nothing, expected {expected}"
        assert float(actual) == pytest.approx(float(expected), rel=1e-12, abs=1e-15), what


# ---------------------------------------------------------------- Chromium


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Run Debian's headless Chromium once; fail (never skip) when it is not installed."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the report tests need Debian's Chromium; run "
            "infra/ci/install-system-deps.sh (apt-get install chromium fonts-dejavu-core)"
        )
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=30000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to the console, including uncaught errors."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def rendered(url: str, profile: Path) -> tuple[str, list[str]]:
    result = chromium("--dump-dom", url, profile=profile)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, console_messages(result.stderr)


def png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB(A) non-interlaced PNG (what Chromium writes) into height×width×3."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None, "no IHDR chunk"
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unexpected PNG format {header}"
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind, line = int(raw[y, 0]), raw[y, 1:]
        if kind == 0:
            out[y] = line
        elif kind == 1:  # sub: a running sum along each channel
            out[y] = (line.reshape(width, bpp).astype(np.int64).cumsum(axis=0) % 256).ravel()
        elif kind == 2:
            out[y] = line + prior  # uint8 arithmetic wraps modulo 256
        else:  # average and paeth depend on the decoded left byte: one byte at a time
            cur, up, row = line.tolist(), prior.tolist(), [0] * stride
            for x in range(stride):
                left = row[x - bpp] if x >= bpp else 0
                if kind == 3:
                    pred = (left + up[x]) >> 1
                else:
                    upper_left = up[x - bpp] if x >= bpp else 0
                    p = left + up[x] - upper_left
                    pa, pb, pc = abs(p - left), abs(p - up[x]), abs(p - upper_left)
                    pred = left if pa <= pb and pa <= pc else (up[x] if pb <= pc else upper_left)
                row[x] = (cur[x] + pred) & 0xFF
            out[y] = row
        prior = out[y]
    return out.reshape(height, width, bpp)[:, :, :3]


# -------------------------------------------------------------------- tests


def test_report_is_one_self_contained_file(built: Built) -> None:
    html = built.html
    assert built.html_path == built.settings.report_path.resolve()
    tags = re.findall(r"<(?:script|link|img|iframe|source)\b[^>]*>", html, flags=re.IGNORECASE)
    external = [t for t in tags if re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", t)]
    assert external == [], external
    assert "<link" not in html.lower()
    assert not re.search(r"@import|@font-face|url\(\s*['\"]?(?:https?:)?//", html)
    assert html.count("Plotly.newPlot") == 1 or "plotly.js" in html.lower()
    assert html.count("<script>") >= 2  # plotly.js inline, then the drawing script


def test_report_has_a_section_per_symbol(built: Built) -> None:
    assert parse(built.html).sections == sorted(SYMBOLS)
    # a configured symbol without bars is named, not silently dropped
    assert "No bars in the warehouse for ZZZ" in built.html


def test_summary_table_equals_the_last_values_of_the_marts(built: Built) -> None:
    expected = built.query(
        """
        select trend.symbol, trend.trade_date::varchar as trade_date, trend.close,
            trend.close / lag(trend.close) over (partition by trend.symbol order by trend.trade_date)
                - 1 as day_change,
            vol.realized_vol_20d, trend.rsi_14, trend.trend_regime
        from gold.mart_trend_daily as trend
        inner join gold.mart_volatility_daily as vol using (symbol, trade_date)
        qualify row_number() over (partition by symbol order by trade_date desc) = 1
        """
    )
    shown = parse(built.html).values("summary-table")
    assert {symbol for symbol, _ in shown} == set(SYMBOLS)
    for row in expected.to_dict("records"):
        symbol = row["symbol"]
        for metric in ("trade_date", "close", "day_change", "realized_vol_20d", "rsi_14"):
            assert_same(shown[symbol, metric], row[metric], f"{symbol} {metric}")
        regime = row["trend_regime"]
        assert_same(shown[symbol, "trend_regime"], regime, f"{symbol} trend_regime")
    # the long histories have every value; the newcomer has a close and a change only
    for symbol in (*STOCKS, CRYPTO):
        assert shown[symbol, "realized_vol_20d"] is not None
        assert shown[symbol, "trend_regime"] in {"uptrend", "downtrend", "sideways"}
    assert shown[NEWCOMER, "realized_vol_20d"] is None
    assert shown[NEWCOMER, "trend_regime"] is None
    assert "not enough history yet" in built.html


def test_data_quality_panel_equals_sql_counts(built: Built) -> None:
    silver = built.query(
        """
        select symbol, sum(trade_count) as ticks,
            count(*) filter (where not is_synthetic) as real_bars,
            count(*) filter (where is_synthetic) as synthetic_bars,
            max(window_end) filter (where not is_synthetic) as latest_window_end
        from silver.fct_bars_1m group by symbol
        """
    ).set_index("symbol")
    bronze = built.query(
        """
        select symbol, count(distinct window_start) filter (where revision > 0) as restated_bars,
            max(_loaded_at) as latest_loaded_at
        from bronze.bars group by symbol
        """
    ).set_index("symbol")
    shown = parse(built.html).values("quality-table")
    for symbol in SYMBOLS:
        for metric in ("ticks", "real_bars", "synthetic_bars"):
            assert int(shown[symbol, metric]) == silver.loc[symbol, metric], (symbol, metric)
        assert int(shown[symbol, "restated_bars"]) == bronze.loc[symbol, "restated_bars"]
        assert int(shown[symbol, "late_ticks"]) == LATE.get(symbol, 0)
        assert pd.Timestamp(shown[symbol, "latest_window_end"]) == silver.loc[
            symbol, "latest_window_end"
        ].tz_convert("UTC")
        assert pd.Timestamp(shown[symbol, "latest_loaded_at"]) == bronze.loc[
            symbol, "latest_loaded_at"
        ].tz_convert("UTC")
    assert int(shown["*", "ticks"]) == silver.ticks.sum()
    assert int(shown["*", "synthetic_bars"]) == silver.synthetic_bars.sum() > 0
    assert int(shown["*", "restated_bars"]) == bronze.restated_bars.sum() > 0
    assert int(shown["*", "late_ticks"]) == sum(LATE.values())
    # the data is from 2025: both freshness columns are flagged stale
    assert built.html.count('class="stale"') == 2 * len(SYMBOLS)

    dlq = {
        c["data-reason"]: int(c["data-value"])
        for c in parse(built.html).cells
        if c["data-metric"] == "dlq"
    }
    assert dlq == DLQ
    assert int(parse(built.html).values("dlq-table")[None, "dlq_total"]) == sum(DLQ.values())


def test_correlation_heatmap_shows_the_latest_rolling_correlations(built: Built) -> None:
    latest = built.query(
        """
        select symbol_a, symbol_b, correlation_20d from gold.mart_correlation_daily
        where correlation_20d is not null
        qualify row_number() over (partition by symbol_a, symbol_b order by trade_date desc) = 1
        """
    )
    assert len(latest) == 3  # the three long histories pairwise; the newcomer has too few days
    figure = re.search(r'data-chart="chart-1">(.*?)</script>', built.html, flags=re.DOTALL)
    assert figure is not None
    heatmap = json.loads(figure.group(1).replace("<\\/", "</"))["data"][0]
    assert heatmap["type"] == "heatmap"
    names, z = heatmap["x"], heatmap["z"]
    assert names == sorted(SYMBOLS)
    for row in latest.itertuples(index=False):
        i, j = names.index(row.symbol_a), names.index(row.symbol_b)
        assert z[i][j] == pytest.approx(row.correlation_20d, rel=1e-12)
        assert z[j][i] == pytest.approx(row.correlation_20d, rel=1e-12)
    newcomer = names.index(NEWCOMER)
    assert [z[newcomer][k] for k in range(len(names)) if k != newcomer] == [None] * 3


@pytest.mark.browser
def test_every_chart_renders_in_headless_chromium_without_console_errors(
    built: Built, tmp_path: Path
) -> None:
    expected = int(re.search(r'data-charts-expected="(\d+)"', built.html).group(1))
    # correlation, plus five per symbol except the newcomer's RSI/MACD (too little history)
    assert expected == 1 + CHARTS_PER_SYMBOL * len(SYMBOLS) - 1
    started = time.perf_counter()
    dom, console = rendered(built.html_path.as_uri(), tmp_path / "profile")
    print(f"chromium --dump-dom: {time.perf_counter() - started:.1f}s")
    assert console == [], console
    assert "data-report-error" not in dom
    assert f'data-charts-rendered="{expected}"' in dom
    assert dom.count('class="main-svg"') >= expected  # plotly drew an SVG per chart


@pytest.mark.browser
def test_a_javascript_error_fails_the_render_check(built: Built, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text(
        built.html.replace("Plotly.newPlot(", "Plotly.noSuchFunction(", 1), encoding="utf-8"
    )
    dom, console = rendered(broken.as_uri(), tmp_path / "profile")
    assert "data-charts-rendered" not in dom
    assert any("Uncaught" in line for line in console), console


@pytest.mark.browser
def test_screenshot_of_the_report_is_not_blank(built: Built, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    started = time.perf_counter()
    result = chromium(
        f"--screenshot={shot}",
        "--window-size=1400,2000",
        "--hide-scrollbars",
        built.html_path.as_uri(),
        profile=tmp_path / "profile",
    )
    print(f"chromium --screenshot: {time.perf_counter() - started:.1f}s")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    assert shot.stat().st_size > 50_000, shot.stat().st_size
    pixels = png_pixels(shot)
    assert pixels.shape == (2000, 1400, 3)
    assert pixels.reshape(-1, 3).std(axis=0).min() > 10  # not one colour
    colours = np.unique(pixels[::4, ::4].reshape(-1, 3), axis=0)
    assert len(colours) > 200, len(colours)  # text, candles, a heatmap: many colours
    if os.environ.get("STOCKPIPE_SAVE_REPORT_SCREENSHOT"):  # refresh docs/report.png
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)


def test_report_says_when_kafka_is_not_reachable(built: Built, tmp_path: Path) -> None:
    settings = built.settings.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:9"})
    started = time.perf_counter()
    path = build_report(settings, out_path=tmp_path / "no-kafka.html")
    assert time.perf_counter() - started < 30
    html = path.read_text(encoding="utf-8")
    assert "Kafka not reachable" in html
    assert 'id="dlq-table"' not in html


@pytest.mark.kafka
def test_dlq_counts_come_from_the_dlq_topic_headers(
    built: Built, kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    from confluent_kafka import Producer

    topic = new_topic("report")
    settings = built.settings.model_copy(
        update={"kafka_bootstrap_servers": kafka_bootstrap, "topic": topic}
    )
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for reason, n in DLQ.items():
        for i in range(n):
            producer.produce(
                settings.dlq_topic,
                value=b"{bad",
                key=f"k{i}".encode(),
                headers=[("stockpipe.reason", reason.encode())],
            )
    producer.produce(settings.dlq_topic, value=b"?")  # no reason header at all
    assert producer.flush(30) == 0
    counts = read_dlq_counts(settings)
    assert counts.by_reason == {**DLQ, "(no reason)": 1}
    assert counts.complete


# ---------------------------------------------------------- empty warehouses


def test_no_warehouse_file_says_to_load_and_transform(tmp_path: Path) -> None:
    settings = load_settings(warehouse=f"duckdb:///{tmp_path / 'none.duckdb'}")
    with pytest.raises(StockpipeError, match=re.escape(NO_BARS)):
        build_report(settings, dlq_counts={}, out_path=tmp_path / "r.html")
    assert not (tmp_path / "none.duckdb").exists()  # read-only: never creates the warehouse


def test_a_snowflake_warehouse_is_refused_by_name_before_anything_is_read(tmp_path: Path) -> None:
    from flows.report import unsupported

    settings = load_settings(warehouse="snowflake")
    reason = unsupported(settings)
    assert reason and "STOCKPIPE_WAREHOUSE=snowflake" in reason
    with pytest.raises(StockpipeError, match=re.escape(reason)):
        build_report(settings, dlq_counts={}, out_path=tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    assert unsupported(load_settings(warehouse=f"duckdb:///{tmp_path / 'w.duckdb'}")) is None


def test_empty_bronze_says_to_load_and_transform(tmp_path: Path) -> None:
    db = tmp_path / "empty.duckdb"
    load_bronze(db, generate_bronze().iloc[:0])
    settings = load_settings(warehouse=f"duckdb:///{db}")
    with pytest.raises(StockpipeError, match=re.escape(NO_BARS)):
        build_report(settings, dlq_counts={}, out_path=tmp_path / "r.html")


def test_loaded_but_untransformed_says_to_transform(tmp_path: Path) -> None:
    db = tmp_path / "loaded.duckdb"
    load_bronze(db, generate_bronze().iloc[:100])
    settings = load_settings(warehouse=f"duckdb:///{db}")
    with pytest.raises(StockpipeError, match=re.escape(NOT_TRANSFORMED)):
        build_report(settings, dlq_counts={}, out_path=tmp_path / "r.html")


def test_report_command_exits_2_with_the_message_on_an_empty_warehouse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows import cli

    monkeypatch.setenv("STOCKPIPE_WAREHOUSE", f"duckdb:///{tmp_path / 'none.duckdb'}")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setattr(sys, "argv", ["stockpipe", "report", "--out", str(tmp_path / "r.html")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "no bars loaded yet" in capsys.readouterr().err
