{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['symbol', 'trade_date'],
        incremental_predicates=trade_date_bounds(),
        on_schema_change='fail',
    )
}}

{#- TA-Lib's SMA, EMA, MACD(12, 26, 9), RSI(14) and BBANDS(20, 2, 2) on daily closes;
    NULL wherever TA-Lib returns NaN (its lookback).

    Incremental over the symbol-days fct_bars_daily rebuilt since this model last ran
    (its `_load_seq` above this table's): each such symbol is recomputed from its
    first changed day D0 to its last day (a changed close moves every later EMA), and
    nothing else is touched. The windows (SMA 50, BBANDS 20) read the 49 closes
    before D0; the recursive indicators (the EMAs, MACD's lines, RSI's Wilder
    averages) continue from the values this table holds for the day before D0
    (`_macd_fast`, `_average_gain` and `_average_loss` keep the ones no public
    column holds), the same recursion a full build runs from the series' start. So a
    new day costs a few rows per symbol, not its history. A symbol whose day before
    D0 is still inside a lookback (fewer than 50 days of history), or whose 49 earlier
    closes are not within `indicator_lookback_days` (100) days (a new symbol, or one
    back from a long halt), is recomputed from its start, as a full build does.
    Bounds are constants written in when the model compiles (macros/incremental.sql). -#}

{{ trend_daily_sql('fct_bars_daily') }}
