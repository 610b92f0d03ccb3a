{{ config(materialized='table') }}

{#- Rolling 20-day correlation of daily log returns for each pair of tracked symbols.
    Returns are taken between consecutive days on which both symbols traded, so a
    stock and a 24/7 crypto pair are compared over the same intervals. -#}

with

daily as (
    select symbol, trade_date, close from {{ ref('fct_bars_daily') }}
),

pairs as (
    select
        a.symbol as symbol_a,
        b.symbol as symbol_b,
        a.trade_date,
        a.close as close_a,
        b.close as close_b
    from daily as a
    inner join daily as b
        on b.trade_date = a.trade_date
        and b.symbol > a.symbol
),

pair_returns as (
    select
        symbol_a,
        symbol_b,
        trade_date,
        ln(close_a / lag(close_a) over (partition by symbol_a, symbol_b order by trade_date))
            as log_return_a,
        ln(close_b / lag(close_b) over (partition by symbol_a, symbol_b order by trade_date))
            as log_return_b,
        row_number() over (partition by symbol_a, symbol_b order by trade_date) - 1 as idx
    from pairs
),

rolling as (
    select
        *,
        corr(log_return_a, log_return_b) over (
            partition by symbol_a, symbol_b order by trade_date
            rows between 19 preceding and current row
        ) as correlation
    from pair_returns
),

final as (
    select
        symbol_a,
        symbol_b,
        trade_date,
        log_return_a,
        log_return_b,
        case when idx >= 20 then correlation end as correlation_20d
    from rolling
)

select * from final
