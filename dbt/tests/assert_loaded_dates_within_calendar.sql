{{ config(severity='error') }}

{#- The calendar never silently runs out (contract 3, docs/contracts.md): every loaded bar's
    trade date must lie within the calendar seed, whose rows give both the NYSE
    sessions (plain tickers) and the 24/7 ones (crypto). A bar dated outside it
    would otherwise just become `closed`. Fails with the dates outside it, and, at
    run time, with a message that names them and says how to extend the seed. -#}

{%- set calendar = ref('xnys_calendar') -%}
{%- set bars = ref('fct_bars_1m') -%}

{#- The calendar's first and last dates are constants in the check (read from the small
    seed when the test compiles), so it reads only silver's blocks outside the calendar
    (none, normally), on Snowflake too (macros/incremental.sql says why). -#}
{%- set calendar_bounds = compile_time_row(
    'select min(calendar_date), max(calendar_date) from ' ~ calendar
) if execute and load_relation(calendar) is not none else none -%}

{%- set outside_sql -%}
with

calendar_range as (
    {%- if calendar_bounds is not none %}
    select
        {{ date_literal(calendar_bounds[0]) }} as first_date,
        {{ date_literal(calendar_bounds[1]) }} as last_date
    {%- else %}
    select
        min(calendar_date) as first_date,
        max(calendar_date) as last_date
    from {{ calendar }}
    {%- endif %}
),

outside as (
    select
        bars.trade_date,
        calendar_range.first_date,
        calendar_range.last_date,
        min(bars.symbol) as symbol,
        count(*) as bar_count
    from {{ bars }} as bars
    cross join calendar_range
    where
        {%- if calendar_bounds is not none %}
        bars.trade_date < {{ date_literal(calendar_bounds[0]) }}
        or bars.trade_date > {{ date_literal(calendar_bounds[1]) }}
        {%- else %}
        bars.trade_date < calendar_range.first_date
        or bars.trade_date > calendar_range.last_date
        {%- endif %}
    group by bars.trade_date, calendar_range.first_date, calendar_range.last_date
)

select * from outside
{%- endset -%}

{%- if execute and load_relation(bars) is not none and load_relation(calendar) is not none -%}
    {%- set found = run_query(outside_sql ~ ' order by trade_date limit 5') -%}
    {%- if found.rows | length > 0 -%}
        {%- set first = found.rows[0] -%}
        {%- set dates = [] -%}
        {%- for row in found.rows -%}
            {%- do dates.append(row['trade_date'] ~ ' (' ~ row['symbol'] ~ ', ' ~ row['bar_count'] ~ ' bars)') -%}
        {%- endfor -%}
        {{ exceptions.raise_compiler_error(
            'loaded bars dated ' ~ dates | join(', ')
            ~ ' are outside the calendar seed xnys_calendar ('
            ~ first['first_date'] ~ ' to ' ~ first['last_date']
            ~ '): their sessions would silently be `closed`. Extend the seed with'
            ~ ' `python -m flows.calendar_seed [END_YEAR]` and run the transform again.'
        ) }}
    {%- endif -%}
{%- endif %}

{%- if execute and load_relation(bars) is none %}
{#- building the seed alone (one Airflow task per node): nothing is loaded into silver yet -#}
select cast(null as date) as trade_date where 1 = 0
{%- else %}
{{ outside_sql }}
{%- endif %}
