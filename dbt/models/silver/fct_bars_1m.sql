{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['symbol', 'window_start'],
        on_schema_change='fail',
    )
}}

{#-
    Incremental runs rebuild, per symbol, one range: from the last real bar before
    the earliest bar loaded since the previous run, up to the first real bar after
    the latest one (to the end of the symbol's history when there is none).
    Why that is enough: a synthetic bar carries the close of the last real bar
    before it, so a new or restated bar changes itself and the synthetic bars
    after it up to the next real bar, and nothing else; a bar inserted into a gap
    turns that synthetic minute real and re-bases the synthetic minutes after it
    up to the same next real bar; a bar before the symbol's first or after its
    last bar widens the gap-filled span up to the old first or from the old last
    bar, which are the range's ends. Rows outside the range are left as they are
    (delete+insert by key only touches the range's keys, and every key of the
    range in the table comes back: bars never leave bronze). Both ends are
    unchanged real bars, rebuilt identically, so the gap-filling between them
    runs exactly as the full build's does.
    The bronze load sequence (`_load_seq`, numbered in commit order; not event
    time, not the loader's clock, never the wall clock) decides what is new, so
    restatements of any age are picked up and no late commit is missed; rebuilt
    rows carry the new sequence number (the downstream models' change marker).
-#}

{#- bronze is read through ref() at each use, never through one shared CTE: DuckDB
    materializes a CTE used twice whole (every column of every bronze row), which
    would make every incremental run cost in proportion to bronze. -#}

with

sessions as (
    select * from {{ ref('stg_exchange_sessions') }}
),

minutes_of_day as (
    {{ integer_series(1440) }}
),

{% if is_incremental() %}

previous_run as (
    select max(_load_seq) as load_seq from {{ this }}
),

newly_loaded as (
    select
        bars.symbol,
        min(bars.window_start) as first_new_start,
        max(bars.window_start) as last_new_start
    from {{ ref('stg_bronze__bars') }} as bars
    cross join previous_run
    where previous_run.load_seq is null
        or bars._load_seq > previous_run.load_seq
    group by bars.symbol
),

-- the real bars of the table just outside the new bars, per symbol
rebuild_range as (
    select
        newly_loaded.symbol,
        coalesce(
            max(case when existing.window_start < newly_loaded.first_new_start
                then existing.window_start end),
            min(newly_loaded.first_new_start)
        ) as rebuild_start,
        -- null: no real bar after the new ones, the range runs to the end
        min(case when existing.window_start > newly_loaded.last_new_start
            then existing.window_start end) as rebuild_end
    from newly_loaded
    left join {{ this }} as existing
        on existing.symbol = newly_loaded.symbol
        and not existing.is_synthetic
        and (
            existing.window_start < newly_loaded.first_new_start
            or existing.window_start > newly_loaded.last_new_start
        )
    group by newly_loaded.symbol
),

bars_to_rebuild as (
    select bars.*
    from {{ ref('stg_bronze__bars') }} as bars
    inner join rebuild_range
        on rebuild_range.symbol = bars.symbol
        and bars.window_start >= rebuild_range.rebuild_start
        and (rebuild_range.rebuild_end is null or bars.window_start <= rebuild_range.rebuild_end)
),

{% else %}

bars_to_rebuild as (
    select * from {{ ref('stg_bronze__bars') }}
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

all_minutes as (
    select symbol, window_start, false as is_synthetic
    from real_bars
    union all
    select symbol, window_start, true as is_synthetic
    from missing_minutes
),

-- the real bar whose close a synthetic bar carries forward
carried_from as (
    select
        symbol,
        window_start,
        max(case when not is_synthetic then window_start end) over (
            partition by symbol order by window_start
            rows between unbounded preceding and current row
        ) as previous_real_start
    from all_minutes
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

        -- provenance
        true as is_synthetic,
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
        false as is_synthetic,
        revision
    from real_bars
    union all
    select * from synthetic_bars
),

final as (
    select
        unioned.*,
        -- the bronze load this row reflects: downstream incremental models rebuild what changed
        (select max(_loaded_at) from {{ ref('stg_bronze__bars') }}) as _loaded_at,
        (select max(_load_seq) from {{ ref('stg_bronze__bars') }}) as _load_seq
    from unioned
)

select * from final
