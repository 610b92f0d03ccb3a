{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['symbol', 'trade_date'],
        incremental_predicates=trade_date_bounds(),
        on_schema_change='fail',
    )
}}

{#- Incremental runs recompute the (symbol, trade_date) pairs that silver rebuilt
    since this model last ran (silver `_load_seq` above this model's max); silver stamps
    every rebuilt row with the load it reflects. The high-water mark and the changed
    trade dates are read when the model compiles and written in as constants
    (macros/incremental.sql), so silver is read for those dates only, on both targets. -#}

{%- if is_incremental() -%}
    {%- set changed = changed_since(ref('fct_bars_1m')) -%}
    {%- set changed_filter = changed['filter'] -%}
    {%- set dates_filter -%}
        trade_date >= {{ date_literal(changed['first']) }}
        and trade_date <= {{ date_literal(changed['last']) }}
    {%- endset -%}
{%- endif %}

with

regular_bars as (
    select * from {{ ref('fct_bars_1m') }}
    where session = 'regular'
    {%- if is_incremental() %}
        and {{ dates_filter }}
    {%- endif %}
),

{% if is_incremental() %}

changed_days as (
    select distinct
        symbol,
        trade_date
    from {{ ref('fct_bars_1m') }}
    where {{ changed_filter }}
        and {{ dates_filter }}
),

session_bars as (
    select regular_bars.*
    from regular_bars
    inner join changed_days
        on changed_days.symbol = regular_bars.symbol
        and changed_days.trade_date = regular_bars.trade_date
),

{% else %}

session_bars as (
    select * from regular_bars
),

{% endif %}

-- open, high, low and close come from the real bars with prices of their own, volume
-- from every real bar (a bar whose trades could set no price still traded)
real_bar_summary as (
    select
        symbol,
        trade_date,
        min_by(open, priced_start) as open,
        max(case when not is_price_carried then high end) as high,
        min(case when not is_price_carried then low end) as low,
        max_by(close, priced_start) as close,
        sum(volume) as volume,
        sum(vwap * volume) / nullif(sum(case when vwap is not null then volume end), 0) as vwap,
        count(*) as bar_count
    from (
        select
            *,
            case when not is_price_carried then window_start end as priced_start
        from session_bars
        where not is_synthetic
    ) as real_bars
    group by symbol, trade_date
    having count(priced_start) > 0
),

-- the regular session's minutes from the day's first real trade on: synthetic bars
-- before it carry an earlier close (the day before, or pre-market), so a return across
-- them would count the overnight move as intraday volatility; synthetic bars after it
-- keep the minutes contiguous (a zero return each)
session_minutes as (
    select
        symbol,
        trade_date,
        window_start,
        open,
        close,
        min(case when not is_synthetic and not is_price_carried then window_start end) over (
            partition by symbol, trade_date
        ) as first_real_start
    from session_bars
),

-- the first return is the first real bar's own (open to close), then close to close
minute_returns as (
    select
        symbol,
        trade_date,
        case
            when window_start = first_real_start then ln(close / open)
            else ln(close / lag(close) over (partition by symbol, trade_date order by window_start))
        end as log_return
    from session_minutes
    where window_start >= first_real_start
),

variance_summary as (
    select
        symbol,
        trade_date,
        sum(log_return * log_return) as realized_variance_1m
    from minute_returns
    group by symbol, trade_date
),

lineage as (
    select
        symbol,
        trade_date,
        max(_loaded_at) as _loaded_at,
        max(_load_seq) as _load_seq
    from session_bars
    group by symbol, trade_date
),

final as (
    select
        real_bar_summary.symbol,
        real_bar_summary.trade_date,
        real_bar_summary.open,
        real_bar_summary.high,
        real_bar_summary.low,
        real_bar_summary.close,
        real_bar_summary.volume,
        real_bar_summary.vwap,
        real_bar_summary.bar_count,
        coalesce(variance_summary.realized_variance_1m, 0) as realized_variance_1m,
        lineage._loaded_at,
        lineage._load_seq
    from real_bar_summary
    inner join lineage
        on lineage.symbol = real_bar_summary.symbol
        and lineage.trade_date = real_bar_summary.trade_date
    left join variance_summary
        on variance_summary.symbol = real_bar_summary.symbol
        and variance_summary.trade_date = real_bar_summary.trade_date
)

select * from final
-- stored in trade-date order: incremental runs and recent-day tests read a few blocks
order by trade_date
