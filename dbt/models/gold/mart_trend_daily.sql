{{ config(materialized='table') }}

{#- TA-Lib's SMA, EMA, MACD(12, 26, 9), RSI(14) and BBANDS(20, 2, 2) on daily closes;
    NULL wherever TA-Lib returns NaN (its lookback). -#}

with

daily as (
    select
        symbol,
        trade_date,
        close,
        row_number() over (partition by symbol order by trade_date) - 1 as idx
    from {{ ref('fct_bars_daily') }}
),

{{ ema_ctes('ema_12', 'daily', 'close', 12) }},

{{ ema_ctes('ema_26', 'daily', 'close', 26) }},

-- TA-Lib's MACD starts both EMAs where the slow one starts (index 25): the fast
-- EMA is seeded there with the mean of the 12 closes ending at index 25.
{{ ema_ctes('macd_fast', 'daily', 'close', 12, seed_index=25) }},

macd_line as (
    select
        ema_26.symbol,
        ema_26.idx,
        macd_fast.macd_fast - ema_26.ema_26 as macd
    from ema_26
    inner join macd_fast
        on macd_fast.symbol = ema_26.symbol
        and macd_fast.idx = ema_26.idx
),

{{ ema_ctes('macd_signal', 'macd_line', 'macd', 9, seed_index=33) }},

price_changes as (
    select
        symbol,
        idx,
        close - lag(close) over (partition by symbol order by idx) as change
    from daily
),

gains_and_losses as (
    select
        symbol,
        idx,
        case when change > 0 then change when change is not null then 0 end as gain,
        case when change < 0 then -change when change is not null then 0 end as loss
    from price_changes
),

-- Wilder smoothing: seeded with the mean of the first 14 changes, alpha = 1/14
{{ ema_ctes('average_gain', 'gains_and_losses', 'gain', 14, alpha=1/14, seed_index=14) }},

{{ ema_ctes('average_loss', 'gains_and_losses', 'loss', 14, alpha=1/14, seed_index=14) }},

rolling as (
    select
        symbol,
        trade_date,
        close,
        idx,
        avg(close) over (
            partition by symbol order by idx rows between 19 preceding and current row
        ) as mean_20,
        stddev_pop(close) over (
            partition by symbol order by idx rows between 19 preceding and current row
        ) as stddev_20,
        avg(close) over (
            partition by symbol order by idx rows between 49 preceding and current row
        ) as mean_50
    from daily
),

indicators as (
    select
        rolling.symbol,
        rolling.trade_date,
        rolling.close,
        case when rolling.idx >= 19 then rolling.mean_20 end as sma_20,
        case when rolling.idx >= 49 then rolling.mean_50 end as sma_50,
        ema_12.ema_12,
        ema_26.ema_26,
        case when rolling.idx >= 33 then macd_line.macd end as macd,
        macd_signal.macd_signal,
        case when rolling.idx >= 33 then macd_line.macd - macd_signal.macd_signal end as macd_hist,
        case
            when rolling.idx < 14 then null
            when abs(average_gain.average_gain + average_loss.average_loss) < 1e-14 then 0
            else 100 * average_gain.average_gain
                / (average_gain.average_gain + average_loss.average_loss)
        end as rsi_14,
        case when rolling.idx >= 19 then rolling.mean_20 end as bb_middle_20,
        case when rolling.idx >= 19 then rolling.mean_20 + 2 * rolling.stddev_20 end as bb_upper_20,
        case when rolling.idx >= 19 then rolling.mean_20 - 2 * rolling.stddev_20 end as bb_lower_20
    from rolling
    inner join ema_12 on ema_12.symbol = rolling.symbol and ema_12.idx = rolling.idx
    inner join ema_26 on ema_26.symbol = rolling.symbol and ema_26.idx = rolling.idx
    inner join macd_line on macd_line.symbol = rolling.symbol and macd_line.idx = rolling.idx
    inner join macd_signal on macd_signal.symbol = rolling.symbol and macd_signal.idx = rolling.idx
    inner join average_gain on average_gain.symbol = rolling.symbol and average_gain.idx = rolling.idx
    inner join average_loss on average_loss.symbol = rolling.symbol and average_loss.idx = rolling.idx
),

final as (
    select
        *,
        case
            when sma_50 is null then null
            when close > sma_50 and sma_20 > sma_50 then 'uptrend'
            when close < sma_50 and sma_20 < sma_50 then 'downtrend'
            else 'sideways'
        end as trend_regime
    from indicators
)

select * from final
