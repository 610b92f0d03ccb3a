{#- The SQL of mart_trend_daily on the daily bars of `daily` (fct_bars_daily, or
    fct_bars_daily_adjusted for its split-adjusted twin). `restate`: recompute every
    row as a full build does (the adjusted twin when its splits changed); with
    `splits_version`, each row records it in `_splits_version`. -#}
{% macro trend_daily_sql(daily='fct_bars_daily', restate=false, splits_version=none) -%}
{%- set incremental = is_incremental() and not restate %}

with

{{ warm_start_series(
    incremental,
    columns=['close', 'is_session_complete'],
    state_columns=['ema_12', 'ema_26', '_macd_fast', 'macd_signal', '_average_gain', '_average_loss'],
    warm_column='sma_50',
    warm_rows_before=49,
    daily=daily,
) }},

-- the recursive indicators' input: from idx 0 (the carried state, or the series' start)
recursive_input as (
    select * from series where idx >= 0
),

{{ ema_ctes('ema_12', 'recursive_input', 'close', 12, state='state_ema_12') }},

{{ ema_ctes('ema_26', 'recursive_input', 'close', 26, state='state_ema_26') }},

-- TA-Lib's MACD starts both EMAs where the slow one starts (index 25): the fast
-- EMA is seeded there with the mean of the 12 closes ending at index 25.
{{ ema_ctes('macd_fast', 'recursive_input', 'close', 12, seed_index=25, state='state_macd_fast') }},

macd_line as (
    select
        ema_26.symbol,
        ema_26.idx,
        macd_fast.macd_fast,
        macd_fast.macd_fast - ema_26.ema_26 as macd,
        recursive_input.state_macd_signal
    from ema_26
    inner join macd_fast
        on macd_fast.symbol = ema_26.symbol
        and macd_fast.idx = ema_26.idx
    inner join recursive_input
        on recursive_input.symbol = ema_26.symbol
        and recursive_input.idx = ema_26.idx
),

{{ ema_ctes('macd_signal', 'macd_line', 'macd', 9, seed_index=33, state='state_macd_signal') }},

price_changes as (
    select
        symbol,
        idx,
        state_average_gain,
        state_average_loss,
        close - lag(close) over (partition by symbol order by idx) as change
    from series
),

gains_and_losses as (
    select
        symbol,
        idx,
        state_average_gain,
        state_average_loss,
        case when change > 0 then change when change is not null then 0 end as gain,
        case when change < 0 then -change when change is not null then 0 end as loss
    from price_changes
    where idx >= 0
),

-- Wilder smoothing: seeded with the mean of the first 14 changes, alpha = 1/14
{{ ema_ctes('average_gain', 'gains_and_losses', 'gain', 14, alpha=1/14, seed_index=14, state='state_average_gain') }},

{{ ema_ctes('average_loss', 'gains_and_losses', 'loss', 14, alpha=1/14, seed_index=14, state='state_average_loss') }},

rolling as (
    select
        symbol,
        trade_date,
        close,
        is_session_complete,
        idx,
        is_warm,
        avg(close) over (
            partition by symbol order by idx rows between 19 preceding and current row
        ) as mean_20,
        stddev_pop(close) over (
            partition by symbol order by idx rows between 19 preceding and current row
        ) as stddev_20,
        avg(close) over (
            partition by symbol order by idx rows between 49 preceding and current row
        ) as mean_50
    from series
),

-- past a lookback: a warm symbol's rows all are
indicators as (
    select
        rolling.symbol,
        rolling.trade_date,
        rolling.close,
        rolling.is_session_complete,
        case when rolling.is_warm or rolling.idx >= 19 then rolling.mean_20 end as sma_20,
        case when rolling.is_warm or rolling.idx >= 49 then rolling.mean_50 end as sma_50,
        ema_12.ema_12,
        ema_26.ema_26,
        case when rolling.is_warm or rolling.idx >= 33 then macd_line.macd end as macd,
        macd_signal.macd_signal,
        case when rolling.is_warm or rolling.idx >= 33
            then macd_line.macd - macd_signal.macd_signal end as macd_hist,
        case
            when not rolling.is_warm and rolling.idx < 14 then null
            when abs(average_gain.average_gain + average_loss.average_loss) < 1e-14 then 0
            else 100 * average_gain.average_gain
                / (average_gain.average_gain + average_loss.average_loss)
        end as rsi_14,
        case when rolling.is_warm or rolling.idx >= 19 then rolling.mean_20 end as bb_middle_20,
        case when rolling.is_warm or rolling.idx >= 19
            then rolling.mean_20 + 2 * rolling.stddev_20 end as bb_upper_20,
        case when rolling.is_warm or rolling.idx >= 19
            then rolling.mean_20 - 2 * rolling.stddev_20 end as bb_lower_20,
        -- the recursions' states no public column holds, for the next incremental run
        macd_line.macd_fast as _macd_fast,
        average_gain.average_gain as _average_gain,
        average_loss.average_loss as _average_loss
    from rolling
    inner join written
        on written.symbol = rolling.symbol
        and written.trade_date = rolling.trade_date
    inner join ema_12 on ema_12.symbol = rolling.symbol and ema_12.idx = rolling.idx
    inner join ema_26 on ema_26.symbol = rolling.symbol and ema_26.idx = rolling.idx
    inner join macd_line on macd_line.symbol = rolling.symbol and macd_line.idx = rolling.idx
    inner join macd_signal on macd_signal.symbol = rolling.symbol and macd_signal.idx = rolling.idx
    inner join average_gain on average_gain.symbol = rolling.symbol and average_gain.idx = rolling.idx
    inner join average_loss on average_loss.symbol = rolling.symbol and average_loss.idx = rolling.idx
),

final as (
    select
        indicators.symbol,
        indicators.trade_date,
        indicators.close,
        indicators.sma_20,
        indicators.sma_50,
        indicators.ema_12,
        indicators.ema_26,
        indicators.macd,
        indicators.macd_signal,
        indicators.macd_hist,
        indicators.rsi_14,
        indicators.bb_middle_20,
        indicators.bb_upper_20,
        indicators.bb_lower_20,
        case
            when indicators.sma_50 is null then null
            when indicators.close > indicators.sma_50 and indicators.sma_20 > indicators.sma_50
                then 'uptrend'
            when indicators.close < indicators.sma_50 and indicators.sma_20 < indicators.sma_50
                then 'downtrend'
            else 'sideways'
        end as trend_regime,
        -- false on a provisional or partly covered day (fct_bars_daily)
        indicators.is_session_complete,
        indicators._macd_fast,
        indicators._average_gain,
        indicators._average_loss,
        -- the fct_bars_daily load this row reflects: the next incremental run starts after it
        load_seq.load_seq as _load_seq
        {%- if splits_version is not none %},
        -- the splits this row was adjusted by (a change restates the table)
        '{{ splits_version }}' as _splits_version
        {%- endif %}
    from indicators
    cross join load_seq
)

select * from final
-- stored in trade-date order: incremental runs and recent-day tests read a few blocks
order by trade_date
{%- endmacro %}
