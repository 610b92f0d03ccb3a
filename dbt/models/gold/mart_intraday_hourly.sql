{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['symbol', 'hour_start'],
        incremental_predicates=trade_date_bounds(),
        on_schema_change='fail',
    )
}}

{#- Each hour's realized variance is its share of the day's: the one-minute log
    returns are taken over the regular session (partitioned by symbol and trade
    date, from the first real trade on, the first return from that bar's open, as
    fct_bars_daily.realized_variance_1m takes them) and only then grouped into
    hours, so the first return of an hour is the one from the previous hour's last
    close and Σ over a day's hours equals the day's. Pre- and post-market minutes
    count in the hour's OHLCV, not in its returns.

    Incremental runs recompute every hour of the (symbol, trade_date) days silver
    rebuilt since this model last ran (silver `_load_seq` above this model's max):
    an hour's first return reads the hour before it. The high-water mark and the
    changed trade dates are constants written in when the model compiles
    (macros/incremental.sql). An hour's trade date is a function of the hour (New
    York is a whole number of hours off UTC), so the delete is bounded by it. -#}

{%- if is_incremental() -%}
    {%- set changed = changed_since(ref('fct_bars_1m')) -%}
    {%- set changed_filter = changed['filter'] -%}
{%- endif %}

with

bars as (
    select
        *,
        {{ dbt.date_trunc('hour', 'window_start') }} as hour_start
    from {{ ref('fct_bars_1m') }}
    {%- if is_incremental() %}
    where trade_date >= {{ date_literal(changed['first']) }}
        and trade_date <= {{ date_literal(changed['last']) }}
    {%- endif %}
),

{% if is_incremental() %}

changed_days as (
    select distinct
        bars.symbol,
        bars.trade_date
    from bars
    where {{ changed_filter }}
),

hour_bars as (
    select bars.*
    from bars
    inner join changed_days
        on changed_days.symbol = bars.symbol
        and changed_days.trade_date = bars.trade_date
),

{% else %}

hour_bars as (
    select * from bars
),

{% endif %}

-- the regular session's one-minute returns (as fct_bars_daily's), then grouped by hour
{{ session_minute_returns('hour_bars', per='hour_start', where="session = 'regular'") }},

variance_summary as (
    select
        symbol,
        hour_start,
        sum(log_return * log_return) as realized_variance_1m
    from minute_returns
    group by symbol, hour_start
),

real_bar_summary as (
    select
        symbol,
        hour_start,
        min(trade_date) as trade_date,
        -- prices from the bars with prices of their own; an hour of price-carried bars
        -- only (trades none of which could set a price) shows the close they carry
        coalesce(min_by(open, priced_start), min_by(open, window_start)) as open,
        coalesce(max(case when priced_start is not null then high end), max(high)) as high,
        coalesce(min(case when priced_start is not null then low end), min(low)) as low,
        coalesce(max_by(close, priced_start), max_by(close, window_start)) as close,
        sum(volume) as volume,
        sum(vwap * volume) / nullif(sum(case when vwap is not null then volume end), 0) as vwap,
        count(*) as bar_count
    from (
        select
            *,
            case when not is_price_carried then window_start end as priced_start
        from hour_bars
        where not is_synthetic
    ) as real_bars
    group by symbol, hour_start
),

lineage as (
    select
        symbol,
        hour_start,
        sum(case when is_synthetic then 1 else 0 end) as synthetic_bar_count,
        max(_loaded_at) as _loaded_at,
        max(_load_seq) as _load_seq
    from hour_bars
    group by symbol, hour_start
),

final as (
    select
        real_bar_summary.symbol,
        real_bar_summary.hour_start,
        real_bar_summary.trade_date,
        real_bar_summary.open,
        real_bar_summary.high,
        real_bar_summary.low,
        real_bar_summary.close,
        real_bar_summary.volume,
        real_bar_summary.vwap,
        real_bar_summary.bar_count,
        lineage.synthetic_bar_count,
        variance_summary.realized_variance_1m,
        sqrt(variance_summary.realized_variance_1m) as realized_vol,
        lineage._loaded_at,
        lineage._load_seq
    from real_bar_summary
    inner join lineage
        on lineage.symbol = real_bar_summary.symbol
        and lineage.hour_start = real_bar_summary.hour_start
    left join variance_summary
        on variance_summary.symbol = real_bar_summary.symbol
        and variance_summary.hour_start = real_bar_summary.hour_start
)

select * from final
-- stored in trade-date order: incremental runs and recent-day tests read a few blocks
order by trade_date
