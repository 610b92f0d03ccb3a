{#- The calendar date, in time zone `tz` (an IANA name), of a UTC instant `ts`. -#}
{% macro to_local_date(ts, tz) -%}
    {{ return(adapter.dispatch('to_local_date', 'stockpipe')(ts, tz)) }}
{%- endmacro %}

{% macro default__to_local_date(ts, tz) -%}
    cast(timezone('{{ tz }}', {{ ts }}) as date)
{%- endmacro %}

{% macro snowflake__to_local_date(ts, tz) -%}
    to_date(convert_timezone('{{ tz }}', {{ ts }}))
{%- endmacro %}
