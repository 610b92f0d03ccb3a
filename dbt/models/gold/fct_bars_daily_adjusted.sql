{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['symbol', 'trade_date'],
        incremental_predicates=trade_date_bounds(),
        on_schema_change='fail',
    )
}}

{#- fct_bars_daily adjusted for splits (stg_splits): each day's prices divided, and its
    volume multiplied, by split_factor, the product of split_to / split_from of the
    symbol's splits after that day, so a 2-for-1 split is not a −50% day. Incremental
    over the days fct_bars_daily rebuilt since this model last ran; when the splits
    differ from those the rows were adjusted by (`_splits_version`,
    macros/splits.sql), every row is rebuilt. -#}

{%- set version = splits_version() -%}
{%- set incremental = is_incremental() and not splits_changed(version) -%}
{%- if incremental -%}
    {%- set changed = changed_since(ref('fct_bars_daily')) -%}
{%- endif %}

with

daily as (
    select * from {{ ref('fct_bars_daily') }}
    {%- if incremental %}
    where {{ changed['filter'] }}
        and trade_date >= {{ date_literal(changed['first']) }}
        and trade_date <= {{ date_literal(changed['last']) }}
    {%- endif %}
),

splits as (
    select
        symbol,
        ex_date,
        ln(split_to / split_from) as log_ratio
    from {{ ref('stg_splits') }}
),

-- the product of the ratios of the splits after each day (1 with none)
factors as (
    select
        daily.symbol,
        daily.trade_date,
        exp(coalesce(sum(splits.log_ratio), 0)) as split_factor
    from daily
    left join splits
        on splits.symbol = daily.symbol
        and splits.ex_date > daily.trade_date
    group by daily.symbol, daily.trade_date
),

final as (
    select
        daily.symbol,
        daily.trade_date,
        daily.open / factors.split_factor as open,
        daily.high / factors.split_factor as high,
        daily.low / factors.split_factor as low,
        daily.close / factors.split_factor as close,
        daily.volume * factors.split_factor as volume,
        daily.vwap / factors.split_factor as vwap,
        daily.bar_count,
        -- a day's own log returns do not move with a later split
        daily.realized_variance_1m,
        daily.is_session_complete,
        factors.split_factor,
        daily._loaded_at,
        daily._load_seq,
        '{{ version }}' as _splits_version
    from daily
    inner join factors
        on factors.symbol = daily.symbol
        and factors.trade_date = daily.trade_date
)

select * from final
-- stored in trade-date order: incremental runs and recent-day tests read a few blocks
order by trade_date
