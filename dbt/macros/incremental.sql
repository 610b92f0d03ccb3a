{#-
    What the incremental models need to cost in proportion to new data on both
    targets (contract 3): bounds known when the model is compiled, written into its
    SQL as literals. Snowflake prunes micro-partitions on a predicate with a
    constant, never on one with a subquery, "even if the subquery results in a
    constant" (docs.snowflake.com/en/user-guide/tables-clustering-micropartitions);
    DuckDB skips row groups by their min/max on either. So each incremental model
    asks, while it compiles, for its high-water mark and the dates its new rows
    reach (small queries on pruned data, or on metadata), then filters with those
    values. On a full build, and at parse time, none of this runs.
-#}

{#- The first row of `sql` (agate row: row[0], row['name']) when the model runs, else none. -#}
{% macro compile_time_row(sql) -%}
    {%- if not execute -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set result = run_query(sql) -%}
    {{ return(result.rows[0] if result.rows | length > 0 else none) }}
{%- endmacro %}

{#- The highest value of `column` in `relation` (default: the model's own table, its
    load-sequence high-water mark), as an integer; none when the table is empty. -#}
{% macro high_water_mark(relation=none, column='_load_seq') -%}
    {%- set relation = relation if relation is not none else this -%}
    {%- set row = compile_time_row('select max(' ~ column ~ ') from ' ~ relation) -%}
    {{ return(none if row is none or row[0] is none else row[0] | int) }}
{%- endmacro %}

{#- A date as a SQL literal both targets read the same way (NULL for none). Takes a
    date, a datetime or a 'YYYY-MM-DD...' string (what run_query gives for a date). -#}
{% macro date_literal(value, days=0) -%}
    {%- if value is none -%}
        cast(null as date)
    {%- else -%}
        {%- set text = (value | string)[:10] -%}
        {%- if days == 0 -%}
            cast('{{ text }}' as date)
        {%- else -%}
            {{ dbt.dateadd('day', days, "cast('" ~ text ~ "' as date)") }}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}

{#- Midnight UTC starting a date (from date_literal's inputs), as a timestamp literal
    to compare with a TIMESTAMP_TZ / timestamptz column (`timestamp with time zone`
    is that type on both targets). -#}
{% macro timestamp_literal(value, days=0) -%}
    {%- if value is none -%}
        cast(null as timestamp with time zone)
    {%- else -%}
        {%- set day = modules.datetime.date.fromisoformat((value | string)[:10])
            + modules.datetime.timedelta(days=days) -%}
        cast('{{ day.isoformat() }} 00:00:00+00:00' as timestamp with time zone)
    {%- endif -%}
{%- endmacro %}

{#-
    delete+insert with bounded deletes. dbt's delete+insert deletes the target's rows
    whose unique key is among the new rows' keys: without more, Snowflake (and DuckDB)
    reads the whole target to find them. A model's `incremental_predicates` may say
    `DBT_INTERNAL_DEST.<column> >= __new_rows_min__(<column>)` (or `<=
    __new_rows_max__(...)`): when the run's new rows are in their temporary table,
    each placeholder becomes that column's minimum (maximum) over them, as a date
    literal (the columns bounded are dates: trade_date), so the delete prunes to the
    new rows' dates. A unique key determines its row's trade_date in every model
    that does this, so the bound deletes exactly the rows the keys alone would.
    No new rows: the bounds are NULL and nothing is deleted.
    `DBT_INTERNAL_DEST` is the target's alias in dbt's delete (dbt-duckdb names it
    DBT_INCREMENTAL_TARGET; the DuckDB override renames it).
-#}
{% macro bounded_incremental_predicates(arg_dict, target_alias) -%}
    {%- set predicates = arg_dict.get('incremental_predicates') or [] -%}
    {%- if predicates is string -%}
        {%- set predicates = [predicates] -%}
    {%- endif -%}
    {%- set found = [] -%}
    {%- for predicate in predicates -%}
        {%- for kind in ('min', 'max') -%}
            {%- for part in predicate.split('__new_rows_' ~ kind ~ '__(')[1:] -%}
                {%- do found.append((kind, part.split(')')[0] | trim)) -%}
            {%- endfor -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- set values = {} -%}
    {%- if found and execute -%}
        {%- set selects = [] -%}
        {%- for kind, column in found -%}
            {%- do selects.append(kind ~ '(' ~ column ~ ')') -%}
        {%- endfor -%}
        {%- set row = run_query('select ' ~ selects | join(', ') ~ ' from ' ~ arg_dict['temp_relation']).rows[0] -%}
        {%- for kind, column in found -%}
            {%- do values.update({kind ~ ':' ~ column: row[loop.index0]}) -%}
        {%- endfor -%}
    {%- endif -%}
    {%- set rendered = [] -%}
    {%- for predicate in predicates -%}
        {%- set text = namespace(value=predicate | replace('DBT_INTERNAL_DEST.', target_alias ~ '.')) -%}
        {%- for kind, column in found -%}
            {%- set text.value = text.value | replace(
                '__new_rows_' ~ kind ~ '__(' ~ column ~ ')', date_literal(values.get(kind ~ ':' ~ column))
            ) -%}
        {%- endfor -%}
        {%- do rendered.append(text.value) -%}
    {%- endfor -%}
    {{ return(rendered) }}
{%- endmacro %}

{% macro snowflake__get_incremental_delete_insert_sql(arg_dict) -%}
    {%- do arg_dict.update({'incremental_predicates': bounded_incremental_predicates(arg_dict, 'DBT_INTERNAL_DEST')}) -%}
    {{ return(default__get_incremental_delete_insert_sql(arg_dict)) }}
{%- endmacro %}

{% macro duckdb__get_incremental_delete_insert_sql(arg_dict) -%}
    {%- do arg_dict.update({'incremental_predicates': bounded_incremental_predicates(arg_dict, 'DBT_INCREMENTAL_TARGET')}) -%}
    {{ return(default__get_incremental_delete_insert_sql(arg_dict)) }}
{%- endmacro %}

{#- The bounded delete's predicates for a model keyed within trade dates. -#}
{% macro trade_date_bounds() -%}
    {{ return([
        "DBT_INTERNAL_DEST.trade_date >= __new_rows_min__(trade_date)",
        "DBT_INTERNAL_DEST.trade_date <= __new_rows_max__(trade_date)",
    ]) }}
{%- endmacro %}
