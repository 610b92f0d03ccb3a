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

{#- What an incremental model's upstream changed since the model last ran: the rows
    above the model's load-sequence high-water mark. Returns the filter that selects
    them (`filter`, '1 = 1' on an empty table) and, read when the model compiles,
    their first and last trade_date (`first`, `last`; none when nothing changed or
    at parse time) and their count (`rows`). -#}
{% macro changed_since(upstream) -%}
    {%- set previous_seq = high_water_mark() -%}
    {%- set filter = '_load_seq > ' ~ previous_seq if previous_seq is not none else '1 = 1' -%}
    {%- set row = compile_time_row(
        'select min(trade_date), max(trade_date), count(*) from ' ~ upstream ~ ' where ' ~ filter
    ) -%}
    {{ return({
        'filter': filter,
        'first': row[0] if row is not none else none,
        'last': row[1] if row is not none else none,
        'rows': row[2] | int if row is not none else 0,
    }) }}
{%- endmacro %}

{#- The CTEs a daily mart continuing recursions from its own rows starts from
    (mart_trend_daily, mart_volatility_daily and their split-adjusted twins):
    `changed_symbols` (each symbol of the daily model `daily` changed since the mart last ran, its first changed day D0),
    `window_rows` (their `window_columns` from `window_from` on), `history` (per
    symbol, its days before D0 and the last of them), `states` (the mart's row for
    that day with its `state_columns`, when `warm_column` is set there: past every
    lookback) and `warm_symbols` (the symbols with a state and `warm_rows_before`
    days before D0, which continue; the rest are recomputed from their start). -#}
{% macro warm_start_inputs(changed, window_from, window_columns, state_columns, warm_column, warm_rows_before, daily='fct_bars_daily') -%}
changed_symbols as (
    select
        symbol,
        min(trade_date) as first_changed,
        max(_load_seq) as load_seq
    from {{ ref(daily) }}
    where {{ changed['filter'] }}
    group by symbol
),

-- each changed symbol's days from the lookback window on
window_rows as (
    select
        daily.symbol,
        daily.trade_date,
        {%- for column in window_columns %}
        daily.{{ column }},
        {%- endfor %}
        changed_symbols.first_changed
    from {{ ref(daily) }} as daily
    inner join changed_symbols
        on changed_symbols.symbol = daily.symbol
    where daily.trade_date >= {{ window_from }}
),

history as (
    select
        symbol,
        count(case when trade_date < first_changed then 1 end) as rows_before,
        max(case when trade_date < first_changed then trade_date end) as state_date
    from window_rows
    group by symbol
),

-- this table's row for the day before D0, past every lookback ({{ warm_column }} is set)
states as (
    select
        existing.symbol,
        existing.trade_date,
        {%- for column in state_columns %}
        existing.{{ column }}{{ ',' if not loop.last }}
        {%- endfor %}
    from {{ this }} as existing
    inner join history
        on history.symbol = existing.symbol
        and history.state_date = existing.trade_date
    where existing.trade_date >= {{ window_from }}
        and existing.{{ warm_column }} is not null
),

warm_symbols as (
    select history.symbol, history.rows_before
    from history
    inner join states
        on states.symbol = history.symbol
    where history.rows_before >= {{ warm_rows_before }}
)
{%- endmacro %}

{#- Everything a daily mart continuing recursions from its own rows needs when it
    compiles incrementally: the `warm_start_inputs` CTEs (`sql`) over the days from
    `indicator_lookback_days` (100) before the first changed one, whether anything
    changed (`has_changes`) and whether any changed symbol must be recomputed from
    its start (`has_cold`). -#}
{% macro warm_start(window_columns, state_columns, warm_column, warm_rows_before, daily='fct_bars_daily') -%}
    {%- set changed = changed_since(ref(daily)) -%}
    {%- set has_changes = changed['rows'] > 0 -%}
    {%- set lookback_days = var('indicator_lookback_days', 100) | int -%}
    {%- set sql = warm_start_inputs(
        changed,
        date_literal(changed['first'], -lookback_days),
        window_columns=window_columns,
        state_columns=state_columns,
        warm_column=warm_column,
        warm_rows_before=warm_rows_before,
        daily=daily,
    ) -%}
    {%- set cold = compile_time_row(
        'with ' ~ sql ~ ' select count(*) from changed_symbols'
        ~ ' where symbol not in (select symbol from warm_symbols)'
    ) if has_changes else none -%}
    {{ return({
        'sql': sql,
        'has_changes': has_changes,
        'has_cold': cold is not none and cold[0] | int > 0,
    }) }}
{%- endmacro %}

{#- The CTEs a daily mart continuing recursions from its own rows starts from, on
    every kind of run (`incremental`: is_incremental(), and no restatement):
    `series` (each symbol's days with its `columns` of `daily`, their `idx`,
    `is_warm`, and `state_<column>` for each of `state_columns`: the stored state on
    a warm symbol's idx 0, else NULL), `written` (the days the run writes) and
    `load_seq` (the `daily` load they reflect). Incrementally, after the
    `warm_start` CTEs (its other arguments): each warm symbol's days from the window
    on, idx 0 the day before D0 (it carries the stored states) and the earlier days
    negative (they only feed the rolling windows); each cold symbol's whole series,
    as a full build computes it; only the days from D0 on are written. With nothing
    changed: no rows. A full build: every day of `daily`, every row written. -#}
{% macro warm_start_series(incremental, columns, state_columns, warm_column, warm_rows_before, daily='fct_bars_daily') -%}
{%- set stored = [] -%}
{%- for column in state_columns -%}
    {%- do stored.append({'column': column, 'name': 'state_' ~ column.lstrip('_')}) -%}
{%- endfor -%}
{%- if incremental -%}
    {%- set warm = warm_start(
        daily=daily,
        window_columns=columns,
        state_columns=state_columns,
        warm_column=warm_column,
        warm_rows_before=warm_rows_before,
    ) -%}
{%- endif -%}

{% if incremental and warm.has_changes %}

{{ warm.sql }},

-- warm symbols: idx 0 is the day before D0 (it carries the stored states), the
-- window's earlier days have negative idx and only feed the rolling windows
series as (
    select
        window_rows.symbol,
        window_rows.trade_date,
        {%- for column in columns %}
        window_rows.{{ column }},
        {%- endfor %}
        row_number() over (partition by window_rows.symbol order by window_rows.trade_date)
            - warm_symbols.rows_before as idx,
        true as is_warm,
        {%- for state in stored %}
        states.{{ state.column }} as {{ state.name }}{{ ',' if not loop.last }}
        {%- endfor %}
    from window_rows
    inner join warm_symbols
        on warm_symbols.symbol = window_rows.symbol
    left join states
        on states.symbol = window_rows.symbol
        and states.trade_date = window_rows.trade_date
    {%- if warm.has_cold %}

    union all

    -- cold symbols: the whole series, as a full build computes it
    select
        daily.symbol,
        daily.trade_date,
        {%- for column in columns %}
        daily.{{ column }},
        {%- endfor %}
        row_number() over (partition by daily.symbol order by daily.trade_date) - 1 as idx,
        false as is_warm,
        {%- for state in stored %}
        cast(null as double) as {{ state.name }}{{ ',' if not loop.last }}
        {%- endfor %}
    from {{ ref(daily) }} as daily
    inner join changed_symbols
        on changed_symbols.symbol = daily.symbol
    where daily.symbol not in (select symbol from warm_symbols)
    {%- endif %}
),

-- rows written: each changed symbol's days from D0 on
written as (
    select
        series.symbol,
        series.trade_date
    from series
    inner join changed_symbols
        on changed_symbols.symbol = series.symbol
    where series.trade_date >= changed_symbols.first_changed
),

load_seq as (
    select max(load_seq) as load_seq from changed_symbols
)

{%- else %}

{%- if incremental %}

-- nothing changed since the last run: nothing to write
{%- endif %}
series as (
    select
        symbol,
        trade_date,
        {%- for column in columns %}
        {{ column }},
        {%- endfor %}
        {%- if incremental %}
        0 as idx,
        {%- else %}
        row_number() over (partition by symbol order by trade_date) - 1 as idx,
        {%- endif %}
        false as is_warm,
        {%- for state in stored %}
        cast(null as double) as {{ state.name }}{{ ',' if not loop.last }}
        {%- endfor %}
    from {{ ref(daily) }}
    {%- if incremental %}
    where 1 = 0
    {%- endif %}
),

written as (
    select symbol, trade_date from series
),

load_seq as (
    {%- if incremental %}
    select cast(null as bigint) as load_seq
    {%- else %}
    select max(_load_seq) as load_seq from {{ ref(daily) }}
    {%- endif %}
)

{%- endif %}
{%- endmacro %}
