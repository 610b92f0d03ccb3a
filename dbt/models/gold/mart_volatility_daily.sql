{{ config(materialized='table') }}

{#- Daily volatility estimators over 20 trading days (annualised with 252), TA-Lib's
    ATR(14), and the realised volatility of each regular session's minutes. -#}

with

-- each regular session's realized variance from its first real trade on
-- (fct_bars_daily.realized_variance_1m, kept incrementally there)
intraday as (
    select
        symbol,
        trade_date,
        realized_variance_1m
    from {{ ref('fct_bars_daily') }}
),

daily as (
    select
        symbol,
        trade_date,
        open,
        high,
        low,
        close,
        lag(close) over (partition by symbol order by trade_date) as previous_close,
        row_number() over (partition by symbol order by trade_date) - 1 as idx
    from {{ ref('fct_bars_daily') }}
),

terms as (
    select
        *,
        ln(close / previous_close) as log_return,
        ln(high / low) * ln(high / low) as log_range_squared,
        0.5 * ln(high / low) * ln(high / low)
            - (2 * ln(2) - 1) * ln(close / open) * ln(close / open) as garman_klass_term,
        case
            when previous_close is not null then greatest(
                high - low, abs(high - previous_close), abs(low - previous_close)
            )
        end as true_range
    from daily
),

-- Wilder's ATR: seeded with the mean of the first 14 true ranges, alpha = 1/14
{{ ema_ctes('atr_14', 'terms', 'true_range', 14, alpha=1/14, seed_index=14) }},

rolling as (
    select
        symbol,
        trade_date,
        idx,
        log_return,
        stddev_samp(log_return) over (
            partition by symbol order by idx rows between 19 preceding and current row
        ) as log_return_stddev_20,
        avg(log_range_squared) over (
            partition by symbol order by idx rows between 19 preceding and current row
        ) as log_range_squared_mean_20,
        avg(garman_klass_term) over (
            partition by symbol order by idx rows between 19 preceding and current row
        ) as garman_klass_mean_20
    from terms
),

final as (
    select
        rolling.symbol,
        rolling.trade_date,
        rolling.log_return,
        case when rolling.idx >= 20 then rolling.log_return_stddev_20 * sqrt(252) end
            as realized_vol_20d,
        case
            when rolling.idx >= 19 then sqrt(252 * rolling.log_range_squared_mean_20 / (4 * ln(2)))
        end as parkinson_vol_20d,
        case
            when rolling.idx >= 19 and rolling.garman_klass_mean_20 >= 0
                then sqrt(252 * rolling.garman_klass_mean_20)
        end as garman_klass_vol_20d,
        atr_14.atr_14,
        sqrt(coalesce(intraday.realized_variance_1m, 0)) * sqrt(252) as intraday_realized_vol
    from rolling
    inner join atr_14
        on atr_14.symbol = rolling.symbol
        and atr_14.idx = rolling.idx
    left join intraday
        on intraday.symbol = rolling.symbol
        and intraday.trade_date = rolling.trade_date
)

select * from final
