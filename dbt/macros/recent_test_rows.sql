{#-
    Data tests on the big tables check recent data only: a test configured with
    `where: "__recent__(trade_date)"` (one such placeholder; dbt_project.yml sets
    it for the silver and gold folders) reads only the rows whose trade_date is within
    var('test_since_days', 7) days of the table's latest trade_date: relative to
    the data, never to the wall clock, so old or paused history tests the same.
    Where the model names its load-sequence column (`meta: {latest_run_column:
    _load_seq}` in dbt_project.yml), the rows the latest run wrote are tested too,
    whatever their date: a backfill's rows are checked by the run that wrote them.
    They are a second branch of a UNION ALL, bounded by the dates that run wrote
    (and a third for its rows without a date), each branch a conjunction of
    constants the engine prunes on: one OR of the two columns pruned nothing, and
    the silver uniqueness test grouped all 242M rows of the scale benchmark
    (7.7 s against 0.1 s; docs/performance.md).

    The full history is tested with `--vars '{test_full_history: true}'` (or the
    environment variable STOCKPIPE_TEST_FULL_HISTORY=1, e.g. for `stockpipe transform`):
        dbt build --project-dir dbt --profiles-dir dbt --vars '{test_full_history: true}'

    Any other `where` works as dbt's own does (this overrides dbt's
    get_where_subquery, the documented hook for it).
-#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {%- if where and '__recent__(' in where -%}
        {%- set full_history = var('test_full_history', false) | string | lower in ('true', '1', 'yes')
            or env_var('STOCKPIPE_TEST_FULL_HISTORY', '') | lower in ('true', '1', 'yes') -%}
        {%- set column = where.split('__recent__(')[1].split(')')[0] | trim -%}
        {#- and the rows the latest run wrote, whatever their date (a backfill's) -#}
        {#- (the model's `meta: {latest_run_column: ...}`, set in dbt_project.yml) -#}
        {%- set found = namespace(column=none, bounds_from=none) -%}
        {%- for node in graph.nodes.values() if execute and node.resource_type == 'model'
            and (node.alias or node.name) | lower == (relation.identifier or '') | lower
            and node.schema | lower == (relation.schema or '') | lower -%}
            {%- set found.column = node.config.meta.get('latest_run_column') -%}
            {#- a view over a big table (stg_bronze__bars) takes its bounds from the
                table itself (`meta: {recent_bounds_source: [bronze, bars]}`): a max over
                a whole table is metadata on Snowflake, over a filtered view a scan -#}
            {%- set bounds_source = node.config.meta.get('recent_bounds_source') -%}
            {%- if bounds_source -%}
                {%- set found.bounds_from = source(bounds_source[0], bounds_source[1]) -%}
            {%- endif -%}
        {%- endfor -%}
        {#- the bounds are constants (read when the test compiles), so the test reads
            the recent blocks of the table, not all of it, on Snowflake too
            (macros/incremental.sql says why) -#}
        {%- set latest = none -%}
        {%- if not full_history and execute and load_relation(relation) is not none -%}
            {%- set latest = compile_time_row(
                'select cast(max(' ~ column ~ ') as date)'
                ~ (', max(' ~ found.column ~ ')' if found.column else '')
                ~ ' from ' ~ (found.bounds_from or relation)
            ) -%}
        {%- endif -%}
        {%- set recent -%}
            {{ column }} >= {{ date_literal(latest[0] if latest else none, -(var('test_since_days', 7) | int)) }}
        {%- endset -%}
        {%- if full_history and where | trim == '__recent__(' ~ column ~ ')' -%}
            {%- do return(relation) -%}
        {%- elif full_history -%}
            {%- do return('(select * from ' ~ relation ~ ' where '
                ~ where | replace('__recent__(' ~ column ~ ')', '(1 = 1)') ~ ') dbt_subquery') -%}
        {%- endif -%}
        {#- the latest run's rows outside the recent days, by the trade dates that run wrote
            (constants again): one branch of a UNION ALL each, never an OR of the two
            columns, which prunes nothing (an `or _load_seq = …` made the silver uniqueness
            test group every row of the table) -#}
        {%- set run_dates = none -%}
        {%- if found.column and latest and latest[1] is not none -%}
            {%- set latest_run = found.column ~ ' = ' ~ latest[1] -%}
            {%- set run_dates = compile_time_row(
                'select cast(min(' ~ column ~ ') as date), cast(max(' ~ column ~ ') as date), count(*)'
                ~ ' from ' ~ (found.bounds_from or relation) ~ ' where ' ~ latest_run
            ) -%}
        {%- endif -%}
        {%- set branches = [recent] -%}
        {%- if run_dates and run_dates[2] | int > 0 -%}
            {%- if run_dates[0] is not none -%}
                {%- do branches.append(latest_run
                    ~ ' and ' ~ column ~ ' >= ' ~ date_literal(run_dates[0])
                    ~ ' and ' ~ column ~ ' < ' ~ date_literal(run_dates[1], 1)
                    ~ ' and not (' ~ recent ~ ')') -%}
            {%- endif -%}
            {#- (a row without a date is the not_null test's to find) -#}
            {%- do branches.append(latest_run ~ ' and ' ~ column ~ ' is null') -%}
        {%- endif -%}
        {%- set selects = [] -%}
        {%- for branch in branches -%}
            {%- do selects.append('select * from ' ~ relation ~ ' where '
                ~ where | replace('__recent__(' ~ column ~ ')', '(' ~ branch ~ ')')) -%}
        {%- endfor -%}
        {%- do return('(' ~ selects | join(' union all ') ~ ') dbt_subquery') -%}
    {%- elif where -%}
        {%- do return('(select * from ' ~ relation ~ ' where ' ~ where ~ ') dbt_subquery') -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
