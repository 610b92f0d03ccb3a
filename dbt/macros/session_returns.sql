{#- The one-minute log returns of each regular session, from the day's first real
    trade on: the realized variance of fct_bars_daily (per trade date) and of
    mart_intraday_hourly (per hour, so that a day's hours sum to the day's) is the
    sum of their squares. Two CTEs over `bars` (rows of fct_bars_1m; `where`: a
    filter on them, e.g. the regular session when `bars` holds others too):
    `session_minutes`, the minutes with the day's first real (priced, not
    synthetic) bar, and `minute_returns`, (symbol, `per`, log_return).

    Synthetic bars before the first real trade carry an earlier close (the day
    before, or pre-market), so a return across them would count the overnight move
    as intraday volatility; synthetic bars after it keep the minutes contiguous (a
    zero return each). The first return is the first real bar's own (open to close),
    then close to close over the whole session (across hours). -#}
{% macro session_minute_returns(bars, per='trade_date', where=none) -%}
session_minutes as (
    select
        symbol,
        trade_date,
        {%- if per != 'trade_date' %}
        {{ per }},
        {%- endif %}
        window_start,
        open,
        close,
        min(case when not is_synthetic and not is_price_carried then window_start end) over (
            partition by symbol, trade_date
        ) as first_real_start
    from {{ bars }}
    {%- if where is not none %}
    where {{ where }}
    {%- endif %}
),

minute_returns as (
    select
        symbol,
        {{ per }},
        case
            when window_start = first_real_start then ln(close / open)
            else ln(close / lag(close) over (partition by symbol, trade_date order by window_start))
        end as log_return
    from session_minutes
    where window_start >= first_real_start
)
{%- endmacro %}
