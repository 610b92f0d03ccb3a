{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['symbol', 'trade_date'],
        on_schema_change='fail',
    )
}}

{#- Incremental runs recompute the (symbol, trade_date) pairs that silver rebuilt
    since this model last ran (silver `_load_seq` above this model's max); silver stamps
    every rebuilt row with the load it reflects. -#}

with

regular_bars as (
    select * from {{ ref('fct_bars_1m') }}
    where session = 'regular'
),

{% if is_incremental() %}

previous_run as (
    select max(_load_seq) as load_seq from {{ this }}
),

changed_days as (
    select distinct
        bars.symbol,
        bars.trade_date
    from {{ ref('fct_bars_1m') }} as bars
    cross join previous_run
    where previous_run.load_seq is null
        or bars._load_seq > previous_run.load_seq
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

-- open, high, low, close and volume come from real bars only
real_bar_summary as (
    select
        symbol,
        trade_date,
        min_by(open, window_start) as open,
        max(high) as high,
        min(low) as low,
        max_by(close, window_start) as close,
        sum(volume) as volume,
        sum(vwap * volume) / nullif(sum(case when vwap is not null then volume end), 0) as vwap,
        count(*) as bar_count
    from session_bars
    where not is_synthetic
    group by symbol, trade_date
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
        min(case when not is_synthetic then window_start end) over (
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
