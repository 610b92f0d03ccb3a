{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['symbol', 'hour_start'],
        incremental_predicates=trade_date_bounds(),
        on_schema_change='fail',
    )
}}

{#- Incremental runs recompute the hours silver rebuilt since this model last ran
    (silver `_load_seq` above this model's max). The high-water mark and the changed
    trade dates are constants written in when the model compiles
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

changed_hours as (
    select distinct
        bars.symbol,
        bars.hour_start
    from bars
    where {{ changed_filter }}
),

hour_bars as (
    select bars.*
    from bars
    inner join changed_hours
        on changed_hours.symbol = bars.symbol
        and changed_hours.hour_start = bars.hour_start
),

{% else %}

hour_bars as (
    select * from bars
),

{% endif %}

-- returns between adjacent minutes only: a gap before a pre-market print is not one minute
minute_returns as (
    select
        *,
        case
            when lag(window_start) over (partition by symbol, hour_start order by window_start)
                = {{ dbt.dateadd('minute', -1, 'window_start') }}
                then ln(close / lag(close) over (partition by symbol, hour_start order by window_start))
        end as log_return
    from hour_bars
),

real_bar_summary as (
    select
        symbol,
        hour_start,
        min(trade_date) as trade_date,
        min_by(open, window_start) as open,
        max(high) as high,
        min(low) as low,
        max_by(close, window_start) as close,
        sum(volume) as volume,
        sum(vwap * volume) / nullif(sum(case when vwap is not null then volume end), 0) as vwap,
        count(*) as bar_count
    from hour_bars
    where not is_synthetic
    group by symbol, hour_start
),

return_summary as (
    select
        symbol,
        hour_start,
        sum(case when is_synthetic then 1 else 0 end) as synthetic_bar_count,
        sqrt(sum(log_return * log_return)) as realized_vol,
        max(_loaded_at) as _loaded_at,
        max(_load_seq) as _load_seq
    from minute_returns
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
        return_summary.synthetic_bar_count,
        return_summary.realized_vol,
        return_summary._loaded_at,
        return_summary._load_seq
    from real_bar_summary
    inner join return_summary
        on return_summary.symbol = real_bar_summary.symbol
        and return_summary.hour_start = real_bar_summary.hour_start
)

select * from final
-- stored in trade-date order: incremental runs and recent-day tests read a few blocks
order by trade_date
