{#- Splits for the split-adjusted daily models (fct_bars_daily_adjusted and the marts
    on it). A change in the splits (a new or corrected split) restates a symbol's
    whole history before it, so the adjusted models record which splits each row
    was adjusted by (`_splits_version`, an md5 of stg_splits read when the model
    compiles) and, when the splits differ from those, rebuild every row as a full
    build does; otherwise they run incrementally like their raw twins. -#}

{#- The version of the splits stg_splits holds now (none at parse time or before it is built). -#}
{% macro splits_version() -%}
    {#- at parse time, and in `dbt compile` before stg_splits is built -#}
    {%- if not execute or load_relation(ref('stg_splits')) is none -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set rows = run_query(
        'select symbol, ex_date, split_from, split_to from ' ~ ref('stg_splits')
        ~ ' order by symbol, ex_date'
    ).rows -%}
    {%- set parts = [] -%}
    {%- for row in rows -%}
        {%- do parts.append(row[0] ~ '|' ~ (row[1] | string)[:10] ~ '|' ~ (row[2] | float) ~ '|' ~ (row[3] | float)) -%}
    {%- endfor -%}
    {{ return(local_md5(parts | join(';'))) }}
{%- endmacro %}

{#- Whether this (incremental) table holds rows adjusted by other splits than `version`. -#}
{% macro splits_changed(version) -%}
    {%- if not execute or not is_incremental() -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set row = compile_time_row(
        'select min(_splits_version), max(_splits_version) from ' ~ this
    ) -%}
    {{ return(row is not none and row[0] is not none and (row[0] != version or row[1] != version)) }}
{%- endmacro %}
