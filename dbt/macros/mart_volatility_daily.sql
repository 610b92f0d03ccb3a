{#- The SQL of mart_volatility_daily on the daily bars of `daily` (fct_bars_daily, or
    fct_bars_daily_adjusted for its split-adjusted twin). `restate`: recompute every
    row as a full build does (the adjusted twin when its splits changed); with
    `splits_version`, each row records it in `_splits_version`. -#}
{% macro volatility_daily_sql(daily='fct_bars_daily', restate=false, splits_version=none) -%}
{%- set incremental = is_incremental() and not restate -%}
{#- Yang–Zhang's weight of the open-to-close variance, k = 0.34 / (1.34 + (n+1)/(n−1)),
    for its window of n days (Yang and Zhang 2000, eq. 10). -#}
{%- set yang_zhang_days = 20 -%}
{%- set yang_zhang_k = 0.34 / (1.34 + (yang_zhang_days + 1) / (yang_zhang_days - 1)) %}

with

{{ warm_start_series(
    incremental,
    columns=['open', 'high', 'low', 'close', 'realized_variance_1m', 'is_session_complete'],
    state_columns=['atr_14'],
    warm_column='realized_vol_20d',
    warm_rows_before=20,
    daily=daily,
) }},

daily as (
    select
        *,
        lag(close) over (partition by symbol order by idx) as previous_close
    from series
),

terms as (
    select
        *,
        ln(close / previous_close) as log_return,
        ln(high / low) * ln(high / low) as log_range_squared,
        0.5 * ln(high / low) * ln(high / low)
            - (2 * ln(2) - 1) * ln(close / open) * ln(close / open) as garman_klass_term,
        -- Yang–Zhang's parts: the overnight move (open against the previous close), the
        -- open-to-close move, and Rogers–Satchell's drift-free range term
        ln(open / previous_close) as overnight_return,
        ln(close / open) as open_close_return,
        ln(high / open) * (ln(high / open) - ln(close / open))
            + ln(low / open) * (ln(low / open) - ln(close / open)) as rogers_satchell_term,
        case
            when previous_close is not null then greatest(
                high - low, abs(high - previous_close), abs(low - previous_close)
            )
        end as true_range
    from daily
),

-- the recursive indicator's input: from idx 0 (the carried state, or the series' start)
recursive_input as (
    select * from terms where idx >= 0
),

-- Wilder's ATR: seeded with the mean of the first 14 true ranges, alpha = 1/14
{{ ema_ctes('atr_14', 'recursive_input', 'true_range', 14, alpha=1/14, seed_index=14, state='state_atr_14') }},

rolling as (
    select
        symbol,
        trade_date,
        idx,
        is_warm,
        log_return,
        realized_variance_1m,
        is_session_complete,
        -- √(sessions a year) of the symbol's calendar: 252 for NYSE, 365 for 24/7 crypto
        {{ annualisation_factor('symbol') }} as annualisation,
        stddev_samp(log_return) over (
            partition by symbol order by idx rows between 19 preceding and current row
        ) as log_return_stddev_20,
        avg(log_range_squared) over (
            partition by symbol order by idx rows between 19 preceding and current row
        ) as log_range_squared_mean_20,
        avg(garman_klass_term) over (
            partition by symbol order by idx rows between 19 preceding and current row
        ) as garman_klass_mean_20,
        var_samp(overnight_return) over (
            partition by symbol order by idx rows between 19 preceding and current row
        ) as overnight_variance_20,
        var_samp(open_close_return) over (
            partition by symbol order by idx rows between 19 preceding and current row
        ) as open_close_variance_20,
        avg(rogers_satchell_term) over (
            partition by symbol order by idx rows between 19 preceding and current row
        ) as rogers_satchell_mean_20
    from terms
),

final as (
    select
        rolling.symbol,
        rolling.trade_date,
        rolling.log_return,
        case when rolling.is_warm or rolling.idx >= 20 then rolling.log_return_stddev_20 * rolling.annualisation end
            as realized_vol_20d,
        case
            when rolling.is_warm or rolling.idx >= 19
                then sqrt(rolling.log_range_squared_mean_20 / (4 * ln(2))) * rolling.annualisation
        end as parkinson_vol_20d,
        case
            when (rolling.is_warm or rolling.idx >= 19) and rolling.garman_klass_mean_20 >= 0
                then sqrt(rolling.garman_klass_mean_20) * rolling.annualisation
        end as garman_klass_vol_20d,
        -- Yang–Zhang: σ²_overnight + k σ²_open-close + (1 − k) mean(Rogers–Satchell) over
        -- the 20 days that each have an overnight move (the previous close)
        case
            when rolling.is_warm or rolling.idx >= 20 then sqrt(
                rolling.overnight_variance_20
                + {{ yang_zhang_k }} * rolling.open_close_variance_20
                + {{ 1 - yang_zhang_k }} * rolling.rogers_satchell_mean_20
            ) * rolling.annualisation
        end as yang_zhang_vol_20d,
        atr_14.atr_14,
        -- each regular session's realized variance from its first real trade on
        -- (fct_bars_daily.realized_variance_1m, kept incrementally there)
        sqrt(coalesce(rolling.realized_variance_1m, 0)) * rolling.annualisation as intraday_realized_vol,
        -- false on a provisional or partly covered day (fct_bars_daily)
        rolling.is_session_complete,
        -- the fct_bars_daily load this row reflects: the next incremental run starts after it
        load_seq.load_seq as _load_seq
        {%- if splits_version is not none %},
        -- the splits this row was adjusted by (a change restates the table)
        '{{ splits_version }}' as _splits_version
        {%- endif %}
    from rolling
    inner join written
        on written.symbol = rolling.symbol
        and written.trade_date = rolling.trade_date
    inner join atr_14
        on atr_14.symbol = rolling.symbol
        and atr_14.idx = rolling.idx
    cross join load_seq
)

select * from final
-- stored in trade-date order: incremental runs and recent-day tests read a few blocks
order by trade_date
{%- endmacro %}
