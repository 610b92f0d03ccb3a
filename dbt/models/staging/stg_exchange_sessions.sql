{#- Trading sessions of each calendar: NYSE from the seed, and `24/7` (crypto,
    symbols like BINANCE:BTCUSDT) open every UTC day from midnight to midnight. -#}
with

calendar as (
    select * from {{ ref('xnys_calendar') }}
),

nyse as (
    select
        'XNYS' as calendar_code,
        calendar_date as trade_date,
        is_half_day,
        pre_open_utc as pre_open,
        market_open_utc as market_open,
        market_close_utc as market_close,
        post_close_utc as post_close
    from calendar
    where is_trading_day
),

always_open as (
    select
        '24/7' as calendar_code,
        calendar_date as trade_date,
        false as is_half_day,
        utc_day_start as pre_open,
        utc_day_start as market_open,
        {{ dbt.dateadd('day', 1, 'utc_day_start') }} as market_close,
        {{ dbt.dateadd('day', 1, 'utc_day_start') }} as post_close
    from calendar
),

unioned as (
    select * from nyse
    union all
    select * from always_open
),

final as (
    select
        *,
        cast({{ dbt.datediff('market_open', 'market_close', 'minute') }} as integer) as session_minutes
    from unioned
)

select * from final
