{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['symbol', 'trade_date'],
        incremental_predicates=trade_date_bounds(),
        on_schema_change='fail',
    )
}}

{#- mart_trend_daily on the split-adjusted daily bars (fct_bars_daily_adjusted), the same
    SQL (macros/mart_trend_daily.sql). Incremental like mart_trend_daily; when the splits
    differ from those its rows were adjusted by (`_splits_version`), every row is
    rebuilt, since a split restates the history before it. -#}

-- depends_on: {{ ref('stg_splits') }}
{%- set version = splits_version() -%}
{{ trend_daily_sql('fct_bars_daily_adjusted', restate=splits_changed(version), splits_version=version) }}
