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

{#- The data's clock, read when the model compiles: the end of the newest bar in
    `relation` (silver: every symbol, every calendar) as a timestamp literal (`ts`;
    NULL when empty, not built yet or at parse time), and the load that brought it (`load_seq`).
    Never the wall clock (contract 3): a replayed or years-old history gives the same
    answer as when it was live. -#}
{% macro data_clock(relation) -%}
    {#- `dbt compile` before the first build: the relation is not there yet -#}
    {%- set row = compile_time_row('select max(window_end), max(_load_seq) from ' ~ relation)
        if execute and load_relation(relation) is not none else none -%}
    {%- if row is none or row[0] is none -%}
        {{ return({'ts': 'cast(null as timestamp with time zone)', 'load_seq': none}) }}
    {%- endif -%}
    {%- set ts = row[0] -%}
    {%- if ts is string -%}
        {%- set ts = modules.datetime.datetime.fromisoformat(ts) -%}
    {%- endif -%}
    {%- if ts.tzinfo is none -%}
        {%- set ts = ts.replace(tzinfo=modules.pytz.utc) -%}
    {%- endif -%}
    {%- set text = ts.astimezone(modules.pytz.utc).strftime('%Y-%m-%d %H:%M:%S') -%}
    {{ return({
        'ts': "cast('" ~ text ~ "+00:00' as timestamp with time zone)",
        'load_seq': row[1] | int if row[1] is not none else none,
    }) }}
{%- endmacro %}
