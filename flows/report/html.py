"""`stockpipe report`: the analyst's report, one self-contained HTML file.

Per symbol: daily candlesticks with volume, SMA 20/50 and Bollinger bands; the
last session's one-minute candlesticks; RSI and MACD; the volatility estimators
over time and the intraday (hourly) realised volatility. Across symbols: a
summary table, the latest rolling 20-day correlations, and a data-quality panel
(ticks, DLQ records by reason, late ticks, restated and synthetic bars,
freshness). Everything comes from the DuckDB warehouse (opened read-only), the
lake's `late/` files and, when it answers, the Kafka DLQ topic.

plotly.js is embedded once, inline: the file opens without a network. Each
chart's figure is a JSON block the page draws on load; when every chart is
drawn the page sets `data-charts-rendered` on its body, which the tests (and
anyone scripting a browser) can wait for.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import jinja2
import markupsafe
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pyarrow.parquet as pq
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from flows.errors import StockpipeError
from flows.lake.store import LATE_PREFIX, open_lake
from flows.report import unsupported
from flows.settings import Settings

log = logging.getLogger(__name__)
# librdkafka's connection errors while probing a broker that is down: the report says it instead
_KAFKA_LOG = logging.getLogger(f"{__name__}.kafka")
_KAFKA_LOG.addHandler(logging.NullHandler())
_KAFKA_LOG.propagate = False

NO_BARS = "no bars loaded yet — run stockpipe load and stockpipe transform"
NOT_TRANSFORMED = "bars are loaded but the marts are not built yet — run stockpipe transform"
DLQ_REASON_HEADER = "stockpipe.reason"
STALE_AFTER_S = 86_400.0  # the same one day after which dbt's source freshness warns
INTRADAY_HOURLY_SESSIONS = 5  # sessions shown in the hourly realised-volatility chart
TEMPLATE = "template.html.j2"
_REQUIRED_TABLES = (
    "silver.fct_bars_1m",
    "gold.fct_bars_daily",
    "gold.mart_trend_daily",
    "gold.mart_volatility_daily",
    "gold.mart_intraday_hourly",
    "gold.mart_correlation_daily",
)
_COLORS = {
    "up": "#26a69a",
    "down": "#ef5350",
    "sma_20": "#1f77b4",
    "sma_50": "#ff7f0e",
    "bb": "rgba(120, 120, 160, 0.6)",
    "bb_fill": "rgba(120, 120, 160, 0.10)",
    "volume": "rgba(100, 110, 130, 0.45)",
}


# ----------------------------------------------------------------- sources


@dataclass(frozen=True)
class DlqCounts:
    """DLQ records by reason, or None when they could not be read; `source` says from where."""

    by_reason: dict[str, int] | None
    source: str
    complete: bool = True


def read_dlq_counts(settings: Settings, timeout: float = 5.0) -> DlqCounts:
    """Count the records of `<topic>.dlq` by their `stockpipe.reason` header.

    Reads every partition from its low to its high watermark without a consumer
    group commit. Returns `by_reason=None` when the broker does not answer within
    `timeout`; stops at `4 * timeout` on a huge topic and says the count is partial.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    topic = settings.dlq_topic
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": "stockpipe-report",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "allow.auto.create.topics": False,
            "socket.timeout.ms": max(int(timeout * 1000), 1000),
            "log_level": 0,
        },
        logger=_KAFKA_LOG,
    )
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout)
        except KafkaException:
            return DlqCounts(None, f"Kafka not reachable at {settings.kafka_bootstrap_servers}")
        topic_meta = meta.topics.get(topic)
        if topic_meta is None or topic_meta.error is not None or not topic_meta.partitions:
            return DlqCounts({}, f"Kafka topic {topic} (does not exist yet)")
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for partition in sorted(topic_meta.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout
            )
            if high > low:
                ends[partition] = high
                starts.append(TopicPartition(topic, partition, low))
        counts: Counter[str] = Counter()
        deadline = time.monotonic() + 4 * timeout
        if starts:
            consumer.assign(starts)
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ends.pop(msg.partition(), None)
                    continue
                reason = dict(msg.headers() or []).get(DLQ_REASON_HEADER)
                counts[reason.decode("utf-8", "replace") if reason else "(no reason)"] += 1
                if msg.offset() >= ends.get(msg.partition(), 0) - 1:
                    ends.pop(msg.partition(), None)
        return DlqCounts(dict(counts), f"Kafka topic {topic}", complete=not ends)
    except KafkaException as exc:
        return DlqCounts(None, f"Kafka not reachable at {settings.kafka_bootstrap_servers}: {exc}")
    finally:
        consumer.close()


@dataclass(frozen=True)
class LateCounts:
    """Too-late ticks (distinct ids) per symbol from the lake's `late/` files, or None."""

    by_symbol: dict[str, int] | None
    source: str


def count_late_ticks(settings: Settings) -> LateCounts:
    """Count distinct late tick ids per symbol in `late/`; None if the lake cannot be read."""
    lake = open_lake(settings)
    root = lake.path(LATE_PREFIX)
    where = lake.url(root)
    try:
        if not lake.fs.exists(root):
            return LateCounts({}, where)
        files = sorted(
            path
            for path in lake.fs.find(root)
            if path.endswith(".parquet") and not path.rsplit("/", 1)[-1].startswith(".")
        )
        if not files:
            return LateCounts({}, where)
        table = pq.ParquetDataset(files, filesystem=lake.fs, partitioning=None).read(
            columns=["symbol", "id"]
        )
    except Exception as exc:  # noqa: BLE001 - an unreadable lake is a note in the report, not a failure
        log.warning("could not read late ticks from %s: %s", where, exc)
        return LateCounts(None, f"{where} not readable: {exc}")
    distinct = (
        table.group_by(["symbol", "id"])
        .aggregate([])
        .group_by("symbol")
        .aggregate([([], "count_all")])
    )
    counts = dict(
        zip(distinct["symbol"].to_pylist(), distinct["count_all"].to_pylist(), strict=True)
    )
    return LateCounts({str(k): int(v) for k, v in counts.items()}, where)


def _connect(settings: Settings) -> duckdb.DuckDBPyConnection:
    reason = unsupported(settings)
    if reason:
        raise StockpipeError(reason)
    path = settings.duckdb_path.expanduser()
    if not path.exists():
        raise StockpipeError(f"{NO_BARS} (no warehouse file at {path})")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as exc:
        raise StockpipeError(
            f"cannot open the warehouse {path} read-only: {exc} "
            "(is a load or transform writing to it? try again when it is done)"
        ) from None
    con.execute("set TimeZone = 'UTC'")
    return con


def _check_built(con: duckdb.DuckDBPyConnection) -> None:
    """Raise a `StockpipeError` that says which command to run when bars or marts are missing."""
    present = {
        f"{schema}.{name}"
        for schema, name in con.execute(
            "select table_schema, table_name from information_schema.tables"
        ).fetchall()
    }
    bronze_rows = 0
    if "bronze.bars" in present:
        bronze_rows = con.execute("select count(*) from bronze.bars").fetchone()[0]
    if not bronze_rows:
        raise StockpipeError(NO_BARS)
    missing = [name for name in _REQUIRED_TABLES if name not in present]
    if missing:
        raise StockpipeError(f"{NOT_TRANSFORMED} (missing {', '.join(missing)})")
    if not con.execute("select count(*) from silver.fct_bars_1m").fetchone()[0]:
        raise StockpipeError(NOT_TRANSFORMED + " (silver.fct_bars_1m is empty)")


# -------------------------------------------------------------- report data


@dataclass
class SymbolData:
    """Everything the report shows for one symbol."""

    symbol: str
    daily: pd.DataFrame  # fct_bars_daily joined with the trend and volatility marts
    last_session: pd.DataFrame  # one-minute bars of the last trade date
    hourly: pd.DataFrame  # mart_intraday_hourly over the last few sessions

    @property
    def is_crypto(self) -> bool:
        return ":" in self.symbol

    @property
    def timezone(self) -> str:
        return "UTC" if self.is_crypto else "America/New_York"


@dataclass
class ReportData:
    symbols: list[SymbolData]
    summary: pd.DataFrame
    correlation: pd.DataFrame  # symbol_a, symbol_b, trade_date, correlation_20d (latest per pair)
    quality: pd.DataFrame  # one row per symbol
    late: LateCounts
    dlq: DlqCounts
    generated_at: datetime
    warehouse: str
    notes: list[str] = field(default_factory=list)


_DAILY_SQL = """
select
    daily.symbol, daily.trade_date,
    daily.open, daily.high, daily.low, daily.close, daily.volume, daily.vwap, daily.bar_count,
    trend.sma_20, trend.sma_50, trend.ema_12, trend.ema_26,
    trend.macd, trend.macd_signal, trend.macd_hist, trend.rsi_14,
    trend.bb_middle_20, trend.bb_upper_20, trend.bb_lower_20, trend.trend_regime,
    vol.log_return, vol.realized_vol_20d, vol.parkinson_vol_20d, vol.garman_klass_vol_20d,
    vol.atr_14, vol.intraday_realized_vol
from gold.fct_bars_daily as daily
left join gold.mart_trend_daily as trend using (symbol, trade_date)
left join gold.mart_volatility_daily as vol using (symbol, trade_date)
order by daily.symbol, daily.trade_date
"""

_LAST_SESSION_SQL = """
with last_day as (
    select symbol, max(trade_date) as trade_date
    from silver.fct_bars_1m
    where session <> 'closed'
    group by symbol
)
select bars.symbol, bars.trade_date, bars.session, bars.window_start,
    bars.open, bars.high, bars.low, bars.close, bars.volume, bars.is_synthetic
from silver.fct_bars_1m as bars
inner join last_day using (symbol, trade_date)
where bars.session <> 'closed'
order by bars.symbol, bars.window_start
"""

_HOURLY_SQL = f"""
with days as (
    select symbol, trade_date,
        dense_rank() over (partition by symbol order by trade_date desc) as age
    from (select distinct symbol, trade_date from gold.mart_intraday_hourly)
)
select hourly.symbol, hourly.hour_start, hourly.trade_date, hourly.realized_vol,
    hourly.bar_count, hourly.synthetic_bar_count
from gold.mart_intraday_hourly as hourly
inner join days using (symbol, trade_date)
where days.age <= {INTRADAY_HOURLY_SESSIONS}
order by hourly.symbol, hourly.hour_start
"""

_CORRELATION_SQL = """
select symbol_a, symbol_b, trade_date, correlation_20d
from gold.mart_correlation_daily
where correlation_20d is not null
qualify row_number() over (partition by symbol_a, symbol_b order by trade_date desc) = 1
order by symbol_a, symbol_b
"""

# Ticks are the distinct trades in the final bars; restated bars are the
# (symbol, minute) pairs that bronze holds a revision > 0 of.
_QUALITY_SQL = """
with silver as (
    select symbol,
        sum(trade_count) as ticks,
        count(*) filter (where not is_synthetic) as real_bars,
        count(*) filter (where is_synthetic) as synthetic_bars,
        max(window_end) filter (where not is_synthetic) as latest_window_end
    from silver.fct_bars_1m
    group by symbol
),
bronze as (
    select symbol,
        count(*) as bronze_rows,
        count(distinct window_start) filter (where revision > 0) as restated_bars,
        max(_loaded_at) as latest_loaded_at
    from bronze.bars
    group by symbol
)
select
    coalesce(silver.symbol, bronze.symbol) as symbol,
    coalesce(silver.ticks, 0) as ticks,
    coalesce(silver.real_bars, 0) as real_bars,
    coalesce(silver.synthetic_bars, 0) as synthetic_bars,
    coalesce(bronze.restated_bars, 0) as restated_bars,
    coalesce(bronze.bronze_rows, 0) as bronze_rows,
    silver.latest_window_end,
    bronze.latest_loaded_at
from silver
full outer join bronze using (symbol)
order by symbol
"""


def _query(con: duckdb.DuckDBPyConnection, sql: str) -> pd.DataFrame:
    frame = con.execute(sql).df()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            frame[column] = frame[column].dt.tz_convert("UTC")
    if "trade_date" in frame.columns:
        frame["trade_date"] = pd.to_datetime(frame["trade_date"]).dt.date
    return frame


def _summary(daily: pd.DataFrame, symbols: list[str]) -> pd.DataFrame:
    """The last day of each symbol: close, change against the previous close, vol, regime."""
    rows = []
    for symbol in symbols:
        days = daily[daily.symbol == symbol]
        if days.empty:
            rows.append({"symbol": symbol})
            continue
        last = days.iloc[-1]
        previous_close = days.close.iloc[-2] if len(days) > 1 else math.nan
        rows.append(
            {
                "symbol": symbol,
                "trade_date": last.trade_date,
                "close": last.close,
                "day_change": last.close / previous_close - 1,
                "realized_vol_20d": last.realized_vol_20d,
                "rsi_14": last.rsi_14,
                "trend_regime": last.trend_regime,
            }
        )
    return pd.DataFrame(rows)


def read_warehouse(settings: Settings) -> dict[str, pd.DataFrame]:
    """Query the warehouse (read-only) for every table the report shows."""
    with _connect(settings) as con:
        _check_built(con)
        return {
            "daily": _query(con, _DAILY_SQL),
            "last_session": _query(con, _LAST_SESSION_SQL),
            "hourly": _query(con, _HOURLY_SQL),
            "correlation": _query(con, _CORRELATION_SQL),
            "quality": _query(con, _QUALITY_SQL),
        }


def assemble(
    settings: Settings,
    frames: dict[str, pd.DataFrame],
    dlq: DlqCounts,
    late: LateCounts,
    now: datetime,
) -> ReportData:
    """Split the warehouse's tables per symbol and add the summary and the notes."""
    daily, last_session, hourly = frames["daily"], frames["last_session"], frames["hourly"]
    names = sorted(set(frames["quality"].symbol))
    symbols = [
        SymbolData(
            symbol=name,
            daily=daily[daily.symbol == name].reset_index(drop=True),
            last_session=last_session[last_session.symbol == name].reset_index(drop=True),
            hourly=hourly[hourly.symbol == name].reset_index(drop=True),
        )
        for name in names
    ]
    notes = []
    not_seen = [s for s in settings.symbols if s not in names]
    if not_seen:
        notes.append(f"No bars in the warehouse for {', '.join(not_seen)} (STOCKPIPE_SYMBOLS).")
    return ReportData(
        symbols=symbols,
        summary=_summary(daily, names),
        correlation=frames["correlation"],
        quality=frames["quality"],
        late=late,
        dlq=dlq,
        generated_at=now,
        warehouse=str(settings.duckdb_path),
        notes=notes,
    )


# ------------------------------------------------------------------ charts


@dataclass(frozen=True)
class Chart:
    """One chart slot: a figure to draw, or a note saying why there is none."""

    title: str
    figure: go.Figure | None = None
    note: str = ""


def _none_if_nan(values: pd.Series) -> list[Any]:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01, "font": {"size": 14}},
        template="plotly_white",
        height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        hovermode="x unified",
        font={"family": "-apple-system, 'Segoe UI', 'DejaVu Sans', Arial, sans-serif"},
    )
    return fig


def _trading_gaps(dates: pd.Series) -> list[dict[str, Any]]:
    """Range breaks hiding weekends and exchange holidays between daily bars."""
    if dates.empty:
        return []
    days = pd.to_datetime(dates)
    weekdays = pd.bdate_range(days.min(), days.max())
    holidays = weekdays.difference(pd.DatetimeIndex(days))
    breaks: list[dict[str, Any]] = [{"bounds": ["sat", "mon"]}]
    if len(holidays):
        breaks.append({"values": [d.strftime("%Y-%m-%d") for d in holidays]})
    return breaks


def _daily_chart(data: SymbolData) -> Chart:
    title = "Daily candlesticks, SMA 20/50, Bollinger bands (20, 2) and volume"
    d = data.daily
    if d.empty:
        return Chart(title, note="No regular-session day yet: daily bars need a regular session.")
    x = [day.isoformat() for day in d.trade_date]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25])
    fig.add_trace(
        go.Scatter(
            x=x,
            y=_none_if_nan(d.bb_upper_20),
            name="BB upper",
            line={"color": _COLORS["bb"], "width": 1},
            legendgroup="bb",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=_none_if_nan(d.bb_lower_20),
            name="BB lower",
            line={"color": _COLORS["bb"], "width": 1},
            fill="tonexty",
            fillcolor=_COLORS["bb_fill"],
            legendgroup="bb",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Candlestick(
            x=x,
            open=d.open,
            high=d.high,
            low=d.low,
            close=d.close,
            name=data.symbol,
            increasing_line_color=_COLORS["up"],
            decreasing_line_color=_COLORS["down"],
        ),
        row=1,
        col=1,
    )
    for column, label in (("sma_20", "SMA 20"), ("sma_50", "SMA 50")):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=_none_if_nan(d[column]),
                name=label,
                line={"color": _COLORS[column], "width": 1.5},
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Bar(x=x, y=d.volume, name="Volume", marker_color=_COLORS["volume"], showlegend=False),
        row=2,
        col=1,
    )
    fig.update_xaxes(rangeslider_visible=False)
    if not data.is_crypto:
        fig.update_xaxes(rangebreaks=_trading_gaps(d.trade_date))
    fig.update_yaxes(title_text="Price", row=1, col=1)
    fig.update_yaxes(title_text="Volume", row=2, col=1)
    return Chart(title, _layout(fig, title, 520))


def _intraday_chart(data: SymbolData) -> Chart:
    bars = data.last_session
    if bars.empty:
        return Chart("Last session, 1-minute bars", note="No session bars yet.")
    day = bars.trade_date.iloc[0]
    synthetic = int(bars.is_synthetic.sum())
    title = f"Last session {day.isoformat()}, 1-minute bars ({data.timezone} time"
    title += f", {synthetic} synthetic)" if synthetic else ")"
    local = bars.window_start.dt.tz_convert(data.timezone).dt.strftime("%Y-%m-%d %H:%M")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.78, 0.22])
    fig.add_trace(
        go.Candlestick(
            x=local,
            open=bars.open,
            high=bars.high,
            low=bars.low,
            close=bars.close,
            name=data.symbol,
            increasing_line_color=_COLORS["up"],
            decreasing_line_color=_COLORS["down"],
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(x=local, y=bars.volume, name="Volume", marker_color=_COLORS["volume"]),
        row=2,
        col=1,
    )
    fig.update_xaxes(rangeslider_visible=False)
    fig.update_layout(showlegend=False)
    fig.update_yaxes(title_text="Price", row=1, col=1)
    fig.update_yaxes(title_text="Volume", row=2, col=1)
    return Chart(title, _layout(fig, title, 420))


def _momentum_chart(data: SymbolData) -> Chart:
    title = "RSI 14 and MACD (12, 26, 9)"
    d = data.daily
    if d.empty:
        return Chart(title, note="No daily bars yet.")
    if d.rsi_14.isna().all() and d.macd.isna().all():
        return Chart(title, note=f"Not enough history yet: {len(d)} day(s); RSI needs 15, MACD 34.")
    x = [day.isoformat() for day in d.trade_date]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    fig.add_trace(
        go.Scatter(x=x, y=_none_if_nan(d.rsi_14), name="RSI 14", line={"color": "#6a3d9a"}),
        row=1,
        col=1,
    )
    for level in (30, 70):
        fig.add_hline(y=level, line={"dash": "dot", "color": "#999", "width": 1}, row=1, col=1)
    hist = d.macd_hist.to_numpy(dtype=float)
    fig.add_trace(
        go.Bar(
            x=x,
            y=_none_if_nan(d.macd_hist),
            name="MACD hist",
            marker_color=np.where(hist >= 0, _COLORS["up"], _COLORS["down"]).tolist(),
        ),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Scatter(x=x, y=_none_if_nan(d.macd), name="MACD", line={"color": "#1f77b4"}),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Scatter(x=x, y=_none_if_nan(d.macd_signal), name="Signal", line={"color": "#ff7f0e"}),
        row=2,
        col=1,
    )
    if not data.is_crypto:
        fig.update_xaxes(rangebreaks=_trading_gaps(d.trade_date))
    fig.update_yaxes(title_text="RSI", range=[0, 100], row=1, col=1)
    fig.update_yaxes(title_text="MACD", row=2, col=1)
    return Chart(title, _layout(fig, title, 420))


def _volatility_chart(data: SymbolData) -> Chart:
    title = "Volatility: 20-day realised, Parkinson, Garman–Klass, intraday (annualised) and ATR 14"
    d = data.daily
    if d.empty:
        return Chart(title, note="No daily bars yet.")
    x = [day.isoformat() for day in d.trade_date]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32])
    series = (
        ("realized_vol_20d", "Realised 20d", "#1f77b4", None),
        ("parkinson_vol_20d", "Parkinson 20d", "#2ca02c", None),
        ("garman_klass_vol_20d", "Garman–Klass 20d", "#d62728", None),
        ("intraday_realized_vol", "Intraday realised (1-min)", "#7f7f7f", "dot"),
    )
    for column, label, color, dash in series:
        fig.add_trace(
            go.Scatter(
                x=x,
                y=_none_if_nan(d[column]),
                name=label,
                line={"color": color, "width": 1.5, "dash": dash},
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Scatter(x=x, y=_none_if_nan(d.atr_14), name="ATR 14", line={"color": "#8c564b"}),
        row=2,
        col=1,
    )
    if not data.is_crypto:
        fig.update_xaxes(rangebreaks=_trading_gaps(d.trade_date))
    fig.update_yaxes(title_text="Annualised", tickformat=".0%", row=1, col=1)
    fig.update_yaxes(title_text="ATR (price)", row=2, col=1)
    return Chart(title, _layout(fig, title, 440))


def _hourly_chart(data: SymbolData) -> Chart:
    title = (
        f"Intraday realised volatility per hour, last {INTRADAY_HOURLY_SESSIONS} sessions "
        f"({data.timezone} time, not annualised)"
    )
    h = data.hourly
    if h.empty:
        return Chart(title, note="No hourly bars yet.")
    labels = h.hour_start.dt.tz_convert(data.timezone).dt.strftime("%m-%d %H:00")
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=_none_if_nan(h.realized_vol),
            name="Realised vol",
            marker_color="#17becf",
            customdata=np.stack([h.bar_count, h.synthetic_bar_count], axis=-1),
            hovertemplate="%{x}: %{y:.4%}<br>%{customdata[0]} bars, "
            "%{customdata[1]} synthetic<extra></extra>",
        )
    )
    fig.update_xaxes(type="category", nticks=12)
    fig.update_yaxes(tickformat=".2%")
    return Chart(title, _layout(fig, title, 320))


def _correlation_chart(data: ReportData) -> Chart:
    title = "Rolling 20-day correlation of daily log returns"
    names = [s.symbol for s in data.symbols]
    corr = data.correlation
    if len(names) < 2:
        return Chart(title, note="Correlations need at least two symbols.")
    if corr.empty:
        return Chart(title, note="Not enough common history yet: correlations need 21 shared days.")
    matrix = pd.DataFrame(np.nan, index=names, columns=names)
    for name in names:
        matrix.loc[name, name] = 1.0
    for row in corr.itertuples(index=False):
        if row.symbol_a in matrix.index and row.symbol_b in matrix.index:
            matrix.loc[row.symbol_a, row.symbol_b] = row.correlation_20d
            matrix.loc[row.symbol_b, row.symbol_a] = row.correlation_20d
    text = [["" if math.isnan(v) else f"{v:.2f}" for v in values] for values in matrix.to_numpy()]
    fig = go.Figure(
        go.Heatmap(
            z=[_none_if_nan(pd.Series(values)) for values in matrix.to_numpy()],
            x=names,
            y=names,
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            reversescale=True,
            text=text,
            texttemplate="%{text}",
            hovertemplate="%{y} / %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    as_of = max(corr.trade_date).isoformat()
    fig.update_layout(modebar={"orientation": "v"})
    return Chart(title, _layout(fig, f"Latest per pair, as of {as_of}", 150 + 70 * len(names)))


# ----------------------------------------------------------------- render


def _is_value(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, spec: str, scale: float = 1.0, suffix: str = "", empty: str = "—") -> str:
    if not _is_value(value):
        return empty
    return format(value if scale == 1 else value * scale, spec) + suffix


def _data_value(value: Any) -> str | None:
    """The exact value behind a table cell, for scripts and tests (None when NULL)."""
    if not _is_value(value) or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return repr(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _cell(metric: str, symbol: str, value: Any, text: str, css: str = "") -> dict[str, Any]:
    return {
        "metric": metric,
        "symbol": symbol,
        "value": _data_value(value),
        "text": text,
        "css": css,
    }


def _age(now: datetime, then: Any) -> tuple[str, bool]:
    """'3 d 4 h ago' and whether that is older than a day."""
    if not _is_value(then) or then is pd.NaT:
        return "—", True
    seconds = max((pd.Timestamp(now) - pd.Timestamp(then)).total_seconds(), 0.0)
    days, rest = divmod(int(seconds), 86_400)
    hours, rest = divmod(rest, 3600)
    text = f"{days} d {hours} h" if days else f"{hours} h {rest // 60} min"
    return f"{text} ago", seconds > STALE_AFTER_S


def _summary_rows(data: ReportData) -> list[list[dict[str, Any]]]:
    rows = []
    for row in data.summary.to_dict("records"):
        symbol = row["symbol"]
        change = row.get("day_change")
        regime = row.get("trend_regime")
        regime = regime if _is_value(regime) else None
        rows.append(
            [
                _cell("symbol", symbol, symbol, symbol),
                _cell("trade_date", symbol, row.get("trade_date"), _fmt(row.get("trade_date"), "")),
                _cell("close", symbol, row.get("close"), _fmt(row.get("close"), ",.2f")),
                _cell(
                    "day_change",
                    symbol,
                    change,
                    _fmt(change, "+.2f", 100, "%"),
                    ("up" if change >= 0 else "down") if _is_value(change) else "",
                ),
                _cell(
                    "realized_vol_20d",
                    symbol,
                    row.get("realized_vol_20d"),
                    _fmt(row.get("realized_vol_20d"), ".1f", 100, "%"),
                ),
                _cell("rsi_14", symbol, row.get("rsi_14"), _fmt(row.get("rsi_14"), ".1f")),
                _cell("trend_regime", symbol, regime, regime or "—", regime or ""),
            ]
        )
    return rows


def _quality_rows(data: ReportData) -> list[list[dict[str, Any]]]:
    late = data.late.by_symbol
    rows = []
    totals: Counter[str] = Counter()
    for row in data.quality.to_dict("records"):
        symbol = row["symbol"]
        late_ticks = late.get(symbol, 0) if late is not None else None
        bar_age, bar_stale = _age(data.generated_at, row["latest_window_end"])
        load_age, load_stale = _age(data.generated_at, row["latest_loaded_at"])
        counts = {
            "ticks": int(row["ticks"]),
            "real_bars": int(row["real_bars"]),
            "synthetic_bars": int(row["synthetic_bars"]),
            "restated_bars": int(row["restated_bars"]),
        }
        totals.update(counts)
        rows.append(
            [
                _cell("symbol", symbol, symbol, symbol),
                *(_cell(name, symbol, n, f"{n:,}") for name, n in counts.items()),
                _cell("late_ticks", symbol, late_ticks, _fmt(late_ticks, ",", empty="n/a")),
                _cell(
                    "latest_window_end",
                    symbol,
                    row["latest_window_end"],
                    f"{_fmt_ts(row['latest_window_end'])} ({bar_age})",
                    "stale" if bar_stale else "",
                ),
                _cell(
                    "latest_loaded_at",
                    symbol,
                    row["latest_loaded_at"],
                    f"{_fmt_ts(row['latest_loaded_at'])} ({load_age})",
                    "stale" if load_stale else "",
                ),
            ]
        )
    late_total = sum(late.values()) if late is not None else None
    rows.append(
        [
            _cell("symbol", "*", "all", "All symbols"),
            *(_cell(name, "*", n, f"{n:,}") for name, n in totals.items()),
            _cell("late_ticks", "*", late_total, _fmt(late_total, ",", empty="n/a")),
            _cell("latest_window_end", "*", None, ""),
            _cell("latest_loaded_at", "*", None, ""),
        ]
    )
    return rows


def _fmt_ts(value: Any) -> str:
    if not _is_value(value) or value is pd.NaT:
        return "—"
    return pd.Timestamp(value).tz_convert("UTC").strftime("%Y-%m-%d %H:%M UTC")


def _figure_json(figure: go.Figure) -> str:
    # Inside a <script> block: never let the data close it.
    return figure.to_json().replace("</", "<\\/")


def _chart_context(charts: list[Chart], counter: list[int]) -> list[dict[str, Any]]:
    out = []
    for chart in charts:
        entry: dict[str, Any] = {"title": chart.title, "note": chart.note, "id": None}
        if chart.figure is not None:
            counter[0] += 1
            entry["id"] = f"chart-{counter[0]}"
            entry["json"] = _figure_json(chart.figure)
        out.append(entry)
    return out


def render_html(data: ReportData) -> str:
    """The report as one HTML document with plotly.js inline."""
    counter = [0]
    overview = _chart_context([_correlation_chart(data)], counter)
    sections = []
    for symbol in data.symbols:
        charts = [
            _daily_chart(symbol),
            _intraday_chart(symbol),
            _momentum_chart(symbol),
            _volatility_chart(symbol),
            _hourly_chart(symbol),
        ]
        sections.append(
            {
                "symbol": symbol.symbol,
                "anchor": "symbol-" + "".join(c if c.isalnum() else "-" for c in symbol.symbol),
                "days": len(symbol.daily),
                "charts": _chart_context(charts, counter),
            }
        )
    dlq = data.dlq
    dlq_rows = sorted((dlq.by_reason or {}).items(), key=lambda item: (-item[1], item[0]))
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: (resources.files("flows.report") / name).read_text(encoding="utf-8")
        ),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE).render(
        generated_at=data.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        warehouse=data.warehouse,
        notes=data.notes,
        summary_rows=_summary_rows(data),
        quality_rows=_quality_rows(data),
        late=data.late,
        dlq=dlq,
        dlq_rows=dlq_rows,
        dlq_total=sum(n for _, n in dlq_rows),
        overview=overview,
        sections=sections,
        chart_count=counter[0],
        plotlyjs=markupsafe.Markup(get_plotlyjs().replace("</script", "<\\/script")),
    )


# ------------------------------------------------------------- entry points


def build_report(
    settings: Settings,
    *,
    dlq_counts: Mapping[str, int] | None = None,
    out_path: Path | None = None,
) -> Path:
    """Write the HTML report to `out_path` (default `STOCKPIPE_REPORT_PATH`); return its path.

    `dlq_counts` (DLQ records by reason) skips reading the Kafka DLQ topic; without
    it the topic is read with a short timeout and the report says when Kafka is
    not reachable. Raises `StockpipeError` when no bars are loaded or transformed.
    """
    now = datetime.now(UTC)
    frames = read_warehouse(settings)  # first: an empty warehouse fails before Kafka is tried
    if dlq_counts is not None:
        dlq = DlqCounts({str(k): int(v) for k, v in dlq_counts.items()}, "given by the caller")
    else:
        dlq = read_dlq_counts(settings)
    html = render_html(assemble(settings, frames, dlq, count_late_ticks(settings), now))
    path = (out_path or settings.report_path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)  # a browser tab reloading the report never sees half a file
    return path.resolve()
