{#- Each symbol's exchange calendar and the sessions a year of it, in one place.
    Crypto pairs (`EXCHANGE:PAIR`, e.g. BINANCE:BTCUSDT) trade on the `24/7` calendar,
    every other symbol on NYSE's (`XNYS`); stg_exchange_sessions holds both. -#}

{#- The calendar code of `symbol` (a SQL expression), as stg_exchange_sessions names it. -#}
{% macro calendar_code(symbol) -%}
    case when {{ symbol }} like '%:%' then '24/7' else 'XNYS' end
{%- endmacro %}

{#- Sessions a year of each calendar: what a daily volatility is annualised by
    (contract 3). Override with --vars '{sessions_per_year: {...}}'. -#}
{% macro sessions_per_year_by_calendar() -%}
    {{ return(var('sessions_per_year', {'XNYS': 252, '24/7': 365})) }}
{%- endmacro %}

{#- The annualisation factor of `symbol` (a SQL expression): √ of its calendar's
    sessions a year, so a daily variance × factor² is a yearly one. -#}
{% macro annualisation_factor(symbol) -%}
    sqrt(case {{ calendar_code(symbol) }}
        {%- for code, sessions in sessions_per_year_by_calendar().items() %}
        when '{{ code }}' then {{ sessions }}
        {%- endfor %}
    end)
{%- endmacro %}
