{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['symbol', 'trade_date'],
        incremental_predicates=trade_date_bounds(),
        on_schema_change='fail',
    )
}}

{#- Daily volatility estimators over 20 trading days: close-to-close (realized),
    Parkinson and Garman–Klass from each day's own range and open/close (they leave
    the overnight move out), Yang–Zhang with the overnight move (open against the
    previous close) as well, all annualised by √ of the sessions a year of the
    symbol's calendar (macros/calendars.sql); TA-Lib's ATR(14), and the realised
    volatility of each regular session's minutes.

    Incremental over the symbol-days fct_bars_daily rebuilt since this model last ran,
    as mart_trend_daily is: each such symbol from its first changed day D0 on, the
    20-day windows reading the 20 days before D0, Wilder's ATR continuing from the
    value this table holds for the day before D0; a symbol with fewer than 21 days
    of history there, or whose 20 earlier days are not within
    `indicator_lookback_days` (100) days, is recomputed from its start. -#}

{{ volatility_daily_sql('fct_bars_daily') }}
