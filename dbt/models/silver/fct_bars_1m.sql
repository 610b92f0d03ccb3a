{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['symbol', 'window_start'],
        incremental_predicates=trade_date_bounds(),
        on_schema_change='fail',
    )
}}

{#-
    Incremental runs rebuild, per symbol, one range [S, E]: E is the first real bar
    with prices after the latest bar loaded since the previous run (the end of the
    symbol's history when there is none); S is the last real bar with prices before
    the earliest new bar (the earliest new bar itself when none is near), which is
    read for its close but not written again (it does not change, and rewriting it
    would mark its day changed downstream). "Real bar" below means one with prices:
    a bar whose trades could set none (trade conditions) carries the close before
    it, as a synthetic minute does, so it is never an end of a range.
    Why that is enough: a synthetic bar carries the close of the last real bar
    before it, so a new or restated bar changes itself and the synthetic bars after
    it up to the next real bar, and nothing else; a bar inserted into a gap turns
    that synthetic minute real and re-bases the synthetic minutes after it up to the
    same next real bar; a bar before the symbol's first bar widens the gap-filled
    span up to the old first bar, which is E; a bar after its last bar L fills the
    minutes from L on, carrying L's close, hence S = L there. Rows outside the range
    are left as they are (delete+insert by key only touches the keys written, and
    every key written was in the table or is new: bars never leave bronze). E, and
    S when it is not a new bar, are unchanged real bars, rebuilt identically, so the
    gap-filling runs exactly as the full build's does; S may also be any unchanged
    real bar earlier than that, or midnight before one, with the same result.
    Where the range ends at a real bar E (restated or filled-in bars, a backfill),
    only the minutes the new bars change are written: each new bar, the synthetic
    minutes carrying its close, and the first real bar after it (unchanged, like
    E); the real bars between and their synthetic minutes are read for the
    gap-filling, not written again, so a few bars restated across a day rewrite
    those bars and the minutes after each, not the day.

    Cost in proportion to the new rows, on both targets: the bronze load sequence
    (`_load_seq`, numbered in commit order; not event time, not the loader's clock,
    never the wall clock) decides what is new, against this table's high-water mark,
    read when the model compiles and written in as a constant (Snowflake prunes on
    constants only, macros/incremental.sql), so restatements of any age are picked
    up and no late commit is missed. The real bars around the new ones are looked
    for within `silver_search_days` (7) days of them, which holds every weekend and
    holiday closure of the NYSE since 2000; only a symbol whose new bars follow a
    longer silence with no real bar after them, or that is new, has its earlier
    rows read (once). Bronze is read from the earliest S on, the table within the
    search window, the delete bounded by the rebuilt trade dates; rebuilt rows carry
    the new rows' load sequence (the downstream models' change marker).

    No data is not no trade: a synthetic minute inside an unrepaired outage of its
    symbol (stg_outages, the ledger as loaded into bronze.outages: start_ts <=
    window_start < end_ts, end_ts NULL while open) has is_no_data = true, every other
    row false. A rebuilt range takes the flag from stg_outages as the full build does.
    Outages are loaded and repaired on their own clock, after silver built their
    minutes, so every incremental run also reconciles: the synthetic rows of this
    table inside any outage's range, repaired or not, whose flag differs from what
    stg_outages says now are written again with the right flag (not when the rebuilt
    range writes that key already). That read is bounded by the outages' own dates,
    merged and written in as constants (an open outage from its start on), so it
    costs in proportion to the outages' spans, not to the history.

    Two load sequences per row. `_bronze_load_seq` is the latest bronze load the row
    reflects: its maximum is this model's high-water mark on bronze (what is new).
    `_load_seq` is the change marker downstream models select by (their own
    high-water marks are at most this table's maximum `_load_seq`): every row a run
    writes gets greatest(the newest bronze load it read, the table's maximum
    `_load_seq` before the run + 1). A bronze load alone gives its own number, as it
    always did (the two columns are equal until a reconcile runs); a run that only
    reconciles (no bronze load since) still writes rows above every downstream
    high-water mark, so they take the change; and a later bronze load, whose number
    may be below that, is still found (by `_bronze_load_seq`) and its rows again
    stamped above everything written before. max(_load_seq) + 1 used as the bronze
    mark instead would skip the next bronze load; the newest bronze load's number
    would not reach downstream when no bronze load came.
-#}

{#- bronze is read through ref() at each use, never through one shared CTE: DuckDB
    materializes a CTE used twice whole (every column of every bronze row), which
    would make every incremental run cost in proportion to bronze. -#}

{%- set bar_seconds = env_var('STOCKPIPE_BAR_SECONDS', '60') | int -%}
{%- set search_days = var('silver_search_days', 7) | int -%}

{%- set unioned_columns = [
    'symbol', 'trade_date', 'session', 'window_start', 'window_end',
    'open', 'high', 'low', 'close', 'volume', 'vwap',
    'trade_count', 'excluded_count', 'unmapped_count', 'candle_count',
    'is_synthetic', 'is_price_carried', 'is_from_candles', 'revision',
] -%}

{%- if is_incremental() -%}
    {#- the bronze high-water mark (`_load_seq` on a table from before the column: dbt
        then fails on the schema change, asking for a full refresh) and the change
        marker's -#}
    {%- set existing_columns = adapter.get_columns_in_relation(this)
        | map(attribute='name') | map('lower') | list -%}
    {%- set previous_seq = high_water_mark(column='_bronze_load_seq'
        if '_bronze_load_seq' in existing_columns else '_load_seq') -%}
    {%- set previous_mark = high_water_mark() -%}
    {#- the outages' trade dates, a day or two of margin (UTC instants, local dates),
        overlapping ones merged: the minutes a reconcile reads -#}
    {%- set outage_ranges = [] -%}
    {%- if execute -%}
        {%- set outage_rows = run_query(
            "select cast(start_ts as date), max(cast(end_ts as date)), count(*) - count(end_ts) from "
            ~ ref('stg_outages') ~ " group by cast(start_ts as date) order by 1"
        ).rows -%}
        {%- for row in outage_rows -%}
            {%- set start = modules.datetime.date.fromisoformat((row[0] | string)[:10])
                - modules.datetime.timedelta(days=2) -%}
            {%- set end = none if row[2] | int > 0 or row[1] is none
                else modules.datetime.date.fromisoformat((row[1] | string)[:10])
                    + modules.datetime.timedelta(days=2) -%}
            {%- if outage_ranges and (outage_ranges[-1][1] is none or outage_ranges[-1][1] >= start) -%}
                {%- set last = outage_ranges.pop() -%}
                {%- do outage_ranges.append((last[0],
                    none if last[1] is none or end is none else [last[1], end] | max)) -%}
            {%- else -%}
                {%- do outage_ranges.append((start, end)) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {#- (a table from before is_no_data is not reconciled: dbt fails on the schema
        change with its own message, not on a missing column) -#}
    {%- set has_outages = outage_ranges | length > 0 and 'is_no_data' in existing_columns -%}
    {%- set outage_dates = [] -%}
    {%- for start, end in outage_ranges -%}
        {%- do outage_dates.append(
            "(existing.trade_date >= cast('" ~ start.isoformat() ~ "' as date)"
            ~ (" and existing.trade_date <= cast('" ~ end.isoformat() ~ "' as date))" if end is not none else ")")
        ) -%}
    {%- endfor -%}
    {%- set outage_dates_filter = '(' ~ outage_dates | join(' or ') ~ ')' if has_outages else '1 = 0' -%}
    {#- every row this run writes: above the table's change marks (see the header) -#}
    {%- set next_mark = previous_mark + 1 if previous_mark is not none else none -%}
    {#- bronze rows loaded since this table's last run, on the raw column (a constant
        bound, nothing wrapped around it): rows loaded before loads were numbered
        (NULL) count as load 0, which no high-water mark is below -#}
    {%- set new_rows_filter -%}
        interval_s = {{ bar_seconds }}
        {%- if previous_seq is not none %} and _load_seq > {{ previous_seq }}{% endif %}
    {%- endset -%}
    {%- set new = compile_time_row(
        "select cast(min(window_start) as date), cast(max(window_start) as date), count(*) from "
        ~ source('bronze', 'bars') ~ " where " ~ new_rows_filter
    ) -%}
    {%- set has_new = new is not none and new[2] | int > 0 -%}
    {#- the table's rows near the new ones: trade dates are New York's or UTC's, a day
        off at most from the UTC dates above -#}
    {%- set search_from = date_literal(new[0], -search_days - 1) if has_new else none -%}
    {%- set search_to = date_literal(new[1], search_days + 1) if has_new else none -%}

{%- set neighbours_sql -%}
newly_loaded as (
    select
        symbol,
        min(window_start) as first_new_start,
        max(window_start) as last_new_start,
        max(_load_seq) as load_seq,
        max(_loaded_at) as loaded_at
    from {{ source('bronze', 'bars') }}
    where {{ new_rows_filter }}
    group by symbol
),

-- the table's real bars within the search window, of the symbols with new bars
nearby as (
    select
        existing.symbol,
        existing.window_start
    from {{ this }} as existing
    inner join newly_loaded
        on newly_loaded.symbol = existing.symbol
    where existing.trade_date >= {{ search_from }}
        and existing.trade_date <= {{ search_to }}
        and not existing.is_synthetic
        and not existing.is_price_carried
),

neighbours as (
    select
        newly_loaded.symbol,
        newly_loaded.first_new_start,
        newly_loaded.last_new_start,
        max(case when nearby.window_start < newly_loaded.first_new_start
            then nearby.window_start end) as previous_near,
        min(case when nearby.window_start > newly_loaded.last_new_start
            then nearby.window_start end) as next_near
    from newly_loaded
    left join nearby
        on nearby.symbol = newly_loaded.symbol
    group by newly_loaded.symbol, newly_loaded.first_new_start, newly_loaded.last_new_start
)
{%- endset -%}

{%- set far_sql -%}
-- symbols whose new bars have no real bar after them nearby nor before them: the
-- last real bar before them is further back, if there is one (a long silence; none
-- for a new symbol)
far_previous as (
    select
        existing.symbol,
        max(existing.window_start) as previous_far
    from {{ this }} as existing
    inner join neighbours
        on neighbours.symbol = existing.symbol
        and neighbours.next_near is null
        and neighbours.previous_near is null
    where existing.trade_date < {{ search_from }}
        and not existing.is_synthetic
        and not existing.is_price_carried
    group by existing.symbol
)
{%- endset -%}
{%- endif -%}

{%- if is_incremental() and has_new -%}
    {%- set plan = compile_time_row(
        "with " ~ neighbours_sql ~ " select "
        ~ "count(case when next_near is null and previous_near is null then 1 end), "
        ~ "cast(min(coalesce(previous_near, first_new_start)) as date), "
        ~ "count(case when next_near is null then 1 end), "
        ~ "cast(max(next_near) as date), "
        ~ "count(case when next_near is not null then 1 end) "
        ~ "from neighbours"
    ) -%}
    {%- set needs_far = plan[0] | int > 0 -%}
    {%- set read_from = plan[1] -%}
    {%- if needs_far -%}
        {%- set far = compile_time_row(
            "with " ~ neighbours_sql ~ ", " ~ far_sql
            ~ " select cast(min(previous_far) as date) from far_previous"
        ) -%}
        {%- if far[0] is not none and (far[0] | string)[:10] < (read_from | string)[:10] -%}
            {%- set read_from = far[0] -%}
        {%- endif -%}
    {%- endif -%}
    {#- bronze's window_start is UTC, these dates are the engine's: a day of margin -#}
    {%- set read_from_literal = timestamp_literal(read_from, -1) -%}
    {%- set read_to_literal = timestamp_literal(plan[3], 2) if plan[2] | int == 0 else none -%}
    {#- some symbol's range ends at a real bar: only the minutes its new bars change are written -#}
    {%- set has_bounded = plan[4] | int > 0 -%}
{%- endif -%}

with

sessions as (
    select * from {{ ref('stg_exchange_sessions') }}
),

minutes_of_day as (
    {{ integer_series(1440) }}
),

{% if is_incremental() and has_new %}

{{ neighbours_sql }},

{% if needs_far %}
{{ far_sql }},
{% endif %}

rebuild_range as (
    select
        neighbours.symbol,
        -- from the priced bar before the new ones when there is one nearby: a new bar
        -- without prices of its own, or the minutes after it, carry that bar's close
        case
            when neighbours.next_near is not null
                then coalesce(neighbours.previous_near, neighbours.first_new_start)
            else coalesce(
                neighbours.previous_near,
                {%- if needs_far %}
                far_previous.previous_far,
                {%- endif %}
                neighbours.first_new_start
            )
        end as rebuild_start,
        -- null: no real bar after the new ones nearby, the range runs to the end
        neighbours.next_near as rebuild_end,
        -- an old bar the range starts from only carries its close into the minutes
        -- after it: it is read, not written (its day is not changed by a new session)
        case
            when neighbours.next_near is null then coalesce(
                neighbours.previous_near
                {%- if needs_far %},
                far_previous.previous_far
                {%- endif %}
            )
        end as write_after
    from neighbours
    {%- if needs_far %}
    left join far_previous
        on far_previous.symbol = neighbours.symbol
    {%- endif %}
),

bars_to_rebuild as (
    select bars.*
    from {{ ref('stg_bronze__bars') }} as bars
    inner join rebuild_range
        on rebuild_range.symbol = bars.symbol
        and bars.window_start >= rebuild_range.rebuild_start
        and (rebuild_range.rebuild_end is null or bars.window_start <= rebuild_range.rebuild_end)
    where bars.window_start >= {{ read_from_literal }}
        {%- if read_to_literal is not none %}
        and bars.window_start < {{ read_to_literal }}
        {%- endif %}
),

{% if has_bounded %}
-- each new bar's start (the bars loaded since the last run, repeats once)
new_bar_starts as (
    select distinct
        symbol,
        window_start
    from {{ source('bronze', 'bars') }}
    where {{ new_rows_filter }}
),
{% endif %}

-- the newest load among the new rows: rebuilt rows reflect it
lineage as (
    select
        {%- if next_mark is not none %}
        greatest(max(load_seq), {{ next_mark }}) as _load_seq,
        {%- else %}
        max(load_seq) as _load_seq,
        {%- endif %}
        max(load_seq) as _bronze_load_seq,
        max(loaded_at) as _loaded_at
    from newly_loaded
),

{% elif is_incremental() %}

-- nothing loaded since the last run: nothing to rebuild
bars_to_rebuild as (
    select * from {{ ref('stg_bronze__bars') }}
    where 1 = 0
),

-- (a reconciled row keeps its bronze lineage and takes the next change mark)
lineage as (
    select
        cast({{ next_mark if next_mark is not none else 'null' }} as bigint) as _load_seq,
        cast(null as bigint) as _bronze_load_seq,
        cast(null as timestamp with time zone) as _loaded_at
),

{% else %}

bars_to_rebuild as (
    select * from {{ ref('stg_bronze__bars') }}
),

lineage as (
    select
        max(_load_seq) as _load_seq,
        max(_load_seq) as _bronze_load_seq,
        max(_loaded_at) as _loaded_at
    from {{ ref('stg_bronze__bars') }}
),

{% endif %}

-- highest revision wins; replayed repeats of a revision are identical
deduplicated as (
    select *
    from bars_to_rebuild
    qualify row_number() over (
        partition by symbol, window_start
        order by revision desc, emitted_at desc, _load_seq desc, _source_file
    ) = 1
),

with_trade_date as (
    select
        *,
        case when symbol like '%:%' then '24/7' else 'XNYS' end as calendar_code,
        case
            when symbol like '%:%' then {{ to_local_date('window_start', 'UTC') }}
            else {{ to_local_date('window_start', 'America/New_York') }}
        end as trade_date
    from deduplicated
),

real_bars as (
    select
        bars.*,
        case
            when bars.window_start >= sessions.market_open
                and bars.window_start < sessions.market_close then 'regular'
            when bars.window_start >= sessions.pre_open
                and bars.window_start < sessions.market_open then 'pre'
            when bars.window_start >= sessions.market_close
                and bars.window_start < sessions.post_close then 'post'
            else 'closed'
        end as session
    from with_trade_date as bars
    left join sessions
        on sessions.calendar_code = bars.calendar_code
        and sessions.trade_date = bars.trade_date
),

-- regular-session minutes between each symbol's first and last bar
symbol_spans as (
    select
        symbol,
        calendar_code,
        min(window_start) as first_start,
        max(window_start) as last_start
    from real_bars
    group by symbol, calendar_code
),

session_minutes as (
    select
        symbol_spans.symbol,
        sessions.trade_date,
        {{ dbt.dateadd('minute', 'minutes_of_day.n', 'sessions.market_open') }} as window_start,
        symbol_spans.first_start,
        symbol_spans.last_start
    from symbol_spans
    inner join sessions
        on sessions.calendar_code = symbol_spans.calendar_code
        and sessions.market_close > symbol_spans.first_start
        and sessions.market_open <= symbol_spans.last_start
    inner join minutes_of_day
        on minutes_of_day.n < sessions.session_minutes
),

missing_minutes as (
    select
        session_minutes.symbol,
        session_minutes.trade_date,
        session_minutes.window_start
    from session_minutes
    left join real_bars
        on real_bars.symbol = session_minutes.symbol
        and real_bars.window_start = session_minutes.window_start
    where real_bars.symbol is null
        and session_minutes.window_start > session_minutes.first_start
        and session_minutes.window_start < session_minutes.last_start
),

-- each outage of the ledger on each session it overlaps (synthetic minutes are
-- regular-session minutes): joined by (symbol, trade_date), so finding the minutes
-- inside outages costs in proportion to the outages' days
outage_days as (
    select
        outages.symbol,
        sessions.trade_date,
        outages.start_ts,
        outages.end_ts,
        outages.repaired
    from {{ ref('stg_outages') }} as outages
    inner join sessions
        on sessions.calendar_code = {{ calendar_code('outages.symbol') }}
        and sessions.market_close > outages.start_ts
        and (outages.end_ts is null or sessions.market_open < outages.end_ts)
),

-- missing minutes inside an unrepaired outage of their symbol: no data, not no trade
no_data_minutes as (
    select distinct
        missing_minutes.symbol,
        missing_minutes.window_start
    from missing_minutes
    inner join outage_days
        on outage_days.symbol = missing_minutes.symbol
        and outage_days.trade_date = missing_minutes.trade_date
        and outage_days.start_ts <= missing_minutes.window_start
        and (outage_days.end_ts is null or missing_minutes.window_start < outage_days.end_ts)
    where not outage_days.repaired
),

all_minutes as (
    select symbol, window_start, close is not null as is_priced
    from real_bars
    union all
    select symbol, window_start, false as is_priced
    from missing_minutes
),

-- the real bar whose close a synthetic bar, or a bar no trade of which could set its
-- prices (trade conditions), carries forward: the last bar with prices
carried_from as (
    select
        symbol,
        window_start,
        max(case when is_priced then window_start end) over (
            partition by symbol order by window_start
            rows between unbounded preceding and current row
        ) as previous_real_start
    from all_minutes
),

-- bars whose trades all had conditions that keep them out of the prices (an average-
-- price print alone, say): their volume is real, their prices the previous close
carried_bars as (
    select
        unpriced.symbol,
        unpriced.trade_date,
        unpriced.session,
        unpriced.window_start,
        unpriced.window_end,
        previous_bar.close as open,
        previous_bar.close as high,
        previous_bar.close as low,
        previous_bar.close as close,
        unpriced.volume,
        unpriced.vwap,
        unpriced.trade_count,
        unpriced.excluded_count,
        unpriced.unmapped_count,
        unpriced.candle_count,
        false as is_synthetic,
        true as is_price_carried,
        coalesce(unpriced.candle_count > 0, false) as is_from_candles,
        unpriced.revision
    from real_bars as unpriced
    inner join carried_from
        on carried_from.symbol = unpriced.symbol
        and carried_from.window_start = unpriced.window_start
    left join real_bars as previous_bar
        on previous_bar.symbol = carried_from.symbol
        and previous_bar.window_start = carried_from.previous_real_start
    where unpriced.close is null
),

synthetic_bars as (
    select
        -- ids
        missing_minutes.symbol,
        missing_minutes.trade_date,
        'regular' as session,

        -- timestamps
        missing_minutes.window_start,
        {{ dbt.dateadd('minute', 1, 'missing_minutes.window_start') }} as window_end,

        -- numerics
        previous_bar.close as open,
        previous_bar.close as high,
        previous_bar.close as low,
        previous_bar.close as close,
        cast(0 as double) as volume,
        cast(null as double) as vwap,
        cast(0 as bigint) as trade_count,
        cast(0 as bigint) as excluded_count,
        cast(0 as bigint) as unmapped_count,
        cast(0 as bigint) as candle_count,

        -- provenance
        true as is_synthetic,
        false as is_price_carried,
        false as is_from_candles,
        cast(null as integer) as revision
    from missing_minutes
    inner join carried_from
        on carried_from.symbol = missing_minutes.symbol
        and carried_from.window_start = missing_minutes.window_start
    inner join real_bars as previous_bar
        on previous_bar.symbol = carried_from.symbol
        and previous_bar.window_start = carried_from.previous_real_start
),

unioned as (
    select
        symbol,
        trade_date,
        session,
        window_start,
        window_end,
        open,
        high,
        low,
        close,
        volume,
        vwap,
        trade_count,
        excluded_count,
        unmapped_count,
        candle_count,
        false as is_synthetic,
        false as is_price_carried,
        -- made from a vendor's 1-minute candle (the outage backfill), not from trades
        coalesce(candle_count > 0, false) as is_from_candles,
        revision
    from real_bars
    where close is not null
    union all
    select * from carried_bars
    union all
    select * from synthetic_bars
),

{%- if is_incremental() and has_new and has_bounded %}

-- the minutes a new bar changes: itself and the synthetic (and price-carried) minutes
-- carrying its close (the real bar they carry is new), and the first real bar after it
-- (the real bar before that one is new)
changed_minutes as (
    select
        carried_from.symbol,
        carried_from.window_start
    from carried_from
    inner join new_bar_starts
        on new_bar_starts.symbol = carried_from.symbol
        and new_bar_starts.window_start = carried_from.previous_real_start

    union

    -- a new bar without prices of its own (it carries an older bar's close)
    select
        symbol,
        window_start
    from new_bar_starts

    union

    select
        real_sequence.symbol,
        real_sequence.window_start
    from (
        select
            symbol,
            window_start,
            lag(window_start) over (partition by symbol order by window_start) as previous_start
        from real_bars
    ) as real_sequence
    inner join new_bar_starts
        on new_bar_starts.symbol = real_sequence.symbol
        and new_bar_starts.window_start = real_sequence.previous_start
),
{%- endif %}

rebuilt as (
    select
        {%- for column in unioned_columns %}
        unioned.{{ column }},
        {%- endfor %}
        -- a gap-filled minute inside an unrepaired outage: the data is missing, not the trades
        unioned.is_synthetic and no_data_minutes.symbol is not null as is_no_data,
        -- the bronze load this row reflects, and the change mark downstream incremental
        -- models rebuild by (equal unless a reconcile ran: see the header)
        lineage._loaded_at,
        lineage._bronze_load_seq,
        lineage._load_seq
    from unioned
    cross join lineage
    left join no_data_minutes
        on no_data_minutes.symbol = unioned.symbol
        and no_data_minutes.window_start = unioned.window_start
    {%- if is_incremental() and has_new %}
    inner join rebuild_range
        on rebuild_range.symbol = unioned.symbol
        and (rebuild_range.write_after is null or unioned.window_start > rebuild_range.write_after)
    {%- if has_bounded %}
    -- a range ending at a real bar: only the minutes its new bars change
    left join changed_minutes
        on changed_minutes.symbol = unioned.symbol
        and changed_minutes.window_start = unioned.window_start
    where rebuild_range.rebuild_end is null
        or changed_minutes.symbol is not null
    {%- endif %}
    {%- endif %}
),

{%- if is_incremental() and has_outages %}

-- this table's synthetic minutes inside some outage (repaired or not) and whether one
-- that is still unrepaired holds them now
outage_flags as (
    select
        existing.symbol,
        existing.window_start,
        max(case when outage_days.repaired then 0 else 1 end) = 1 as is_no_data
    from {{ this }} as existing
    inner join outage_days
        on outage_days.symbol = existing.symbol
        and outage_days.trade_date = existing.trade_date
        and outage_days.start_ts <= existing.window_start
        and (outage_days.end_ts is null or existing.window_start < outage_days.end_ts)
    where existing.is_synthetic
        and {{ outage_dates_filter }}
    group by existing.symbol, existing.window_start
),

-- those whose flag is out of date (an outage loaded or repaired since the row was
-- written), unless the rebuilt range writes the key anyway
reconciled as (
    select
        {%- for column in unioned_columns %}
        existing.{{ column }},
        {%- endfor %}
        outage_flags.is_no_data,
        existing._loaded_at,
        existing._bronze_load_seq,
        lineage._load_seq
    from {{ this }} as existing
    inner join outage_flags
        on outage_flags.symbol = existing.symbol
        and outage_flags.window_start = existing.window_start
    cross join lineage
    left join rebuilt
        on rebuilt.symbol = existing.symbol
        and rebuilt.window_start = existing.window_start
    where existing.is_synthetic
        and {{ outage_dates_filter }}
        and existing.is_no_data <> outage_flags.is_no_data
        and rebuilt.symbol is null
),

final as (
    select * from rebuilt
    union all
    select * from reconciled
)

{%- else %}

final as (
    select * from rebuilt
)

{%- endif %}

select * from final
-- stored in trade-date order (full builds and every run's new rows), so that
-- incremental runs, their deletes and the data tests of recent days read a few
-- days' blocks of the table (DuckDB row groups, Snowflake micro-partitions)
order by trade_date, symbol, window_start
