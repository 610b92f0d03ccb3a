{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['symbol', 'trade_date'],
        incremental_predicates=trade_date_bounds(),
        on_schema_change='fail',
    )
}}

{#- Incremental runs recompute the (symbol, trade_date) pairs that silver rebuilt
    since this model last ran (silver `_load_seq` above this model's max); silver stamps
    every rebuilt row with the load it reflects. The high-water mark and the changed
    trade dates are read when the model compiles and written in as constants
    (macros/incremental.sql), so silver is read for those dates only, on both targets.

    is_session_complete: the session is over in the data and none of its minutes up
    to the day's last real bar is missing. Over in the data: the newest bar of
    silver (any symbol, any calendar; macros/calendars.sql data_clock) ends at or
    after the session's close, so today's provisional row is false and no model
    reads the wall clock. No minute missing: every regular-session minute from the
    open to the day's last real bar has a silver row, real or synthetic (silver
    fills only between a symbol's first and last bar, so a day that starts before
    the symbol's history or a gap silver could not fill is false); minutes after
    the last real bar of a session the data has passed are "no trade". Rows that
    are false only because the data had not reached their close are rechecked by
    later runs: the incomplete rows from the day before this table's last date on
    (every such row is there: a session not yet closed in the data has no later
    trade date), their _load_seq raised to the clock's load when they turn true so
    the marts take the change.

    no_data_minutes: the regular-session minutes of the day that silver marks
    is_no_data (gap-filled inside an unrepaired outage: the data is missing, not the
    trades); has_gaps: there is one, and the session is not complete (its repair
    makes it so). Silver stamps a minute whose flag changes (an
    outage loaded or repaired) with a new `_load_seq`, so its day is rebuilt here like
    any other change. A day without any real bar has no row, however many of its
    minutes had no data. -#}

{%- set clock = data_clock(ref('fct_bars_1m')) -%}
{%- if is_incremental() -%}
    {%- set changed = changed_since(ref('fct_bars_1m')) -%}
    {%- set changed_filter = changed['filter'] -%}
    {%- set last_row = compile_time_row('select max(trade_date) from ' ~ this) -%}
    {%- set recheck_from = date_literal(last_row[0] if last_row is not none else none, -1) -%}
    {%- set dates_filter -%}
        ((trade_date >= {{ date_literal(changed['first']) }}
            and trade_date <= {{ date_literal(changed['last']) }})
            or trade_date >= {{ recheck_from }})
    {%- endset -%}
{%- endif %}

with

regular_bars as (
    select * from {{ ref('fct_bars_1m') }}
    where session = 'regular'
    {%- if is_incremental() %}
        and {{ dates_filter }}
    {%- endif %}
),

{% if is_incremental() %}

-- the days still waiting for their close in the data, rechecked against the clock
rechecked_days as (
    select
        symbol,
        trade_date
    from {{ this }}
    where trade_date >= {{ recheck_from }}
        and not is_session_complete
),

changed_days as (
    select distinct
        symbol,
        trade_date
    from {{ ref('fct_bars_1m') }}
    where {{ changed_filter }}
        and {{ dates_filter }}
    union
    select symbol, trade_date from rechecked_days
),

session_bars as (
    select regular_bars.*
    from regular_bars
    inner join changed_days
        on changed_days.symbol = regular_bars.symbol
        and changed_days.trade_date = regular_bars.trade_date
),

{% else %}

session_bars as (
    select * from regular_bars
),

{% endif %}

-- open, high, low and close come from the real bars with prices of their own, volume
-- from every real bar (a bar whose trades could set no price still traded)
real_bar_summary as (
    select
        symbol,
        trade_date,
        min_by(open, priced_start) as open,
        max(case when not is_price_carried then high end) as high,
        min(case when not is_price_carried then low end) as low,
        max_by(close, priced_start) as close,
        sum(volume) as volume,
        sum(vwap * volume) / nullif(sum(case when vwap is not null then volume end), 0) as vwap,
        count(*) as bar_count
    from (
        select
            *,
            case when not is_price_carried then window_start end as priced_start
        from session_bars
        where not is_synthetic
    ) as real_bars
    group by symbol, trade_date
    having count(priced_start) > 0
),

-- each regular session's one-minute returns from its first real trade on
{{ session_minute_returns('session_bars') }},

-- is every regular minute from the open to the day's last silver row (at or after its
-- last real bar) there? Silver holds each minute once, so: the first row at the open,
-- and as many rows as minutes from the open to the last
coverage as (
    select
        session_bars.symbol,
        session_bars.trade_date,
        min(session_bars.window_start) = max(sessions.market_open)
            and count(*) = {{ dbt.datediff('max(sessions.market_open)', 'max(session_bars.window_start)', 'minute') }} + 1
            as is_covered,
        max(sessions.market_close) as market_close,
        count(case when session_bars.is_no_data then 1 end) as no_data_minutes
    from session_bars
    inner join {{ ref('stg_exchange_sessions') }} as sessions
        on sessions.calendar_code = {{ calendar_code('session_bars.symbol') }}
        and sessions.trade_date = session_bars.trade_date
    group by session_bars.symbol, session_bars.trade_date
),

completeness as (
    select
        symbol,
        trade_date,
        -- a day with minutes of no data (an unrepaired outage) is not complete either
        coalesce(
            is_covered and market_close <= {{ clock['ts'] }} and no_data_minutes = 0, false
        ) as is_session_complete,
        no_data_minutes
    from coverage
),

variance_summary as (
    select
        symbol,
        trade_date,
        sum(log_return * log_return) as realized_variance_1m
    from minute_returns
    group by symbol, trade_date
),

lineage as (
    select
        symbol,
        trade_date,
        max(_loaded_at) as _loaded_at,
        max(_load_seq) as _load_seq
    from session_bars
    group by symbol, trade_date
),

final as (
    select
        real_bar_summary.symbol,
        real_bar_summary.trade_date,
        real_bar_summary.open,
        real_bar_summary.high,
        real_bar_summary.low,
        real_bar_summary.close,
        real_bar_summary.volume,
        real_bar_summary.vwap,
        real_bar_summary.bar_count,
        coalesce(variance_summary.realized_variance_1m, 0) as realized_variance_1m,
        coalesce(completeness.is_session_complete, false) as is_session_complete,
        coalesce(completeness.no_data_minutes, 0) as no_data_minutes,
        coalesce(completeness.no_data_minutes, 0) > 0 as has_gaps,
        lineage._loaded_at,
        {%- if is_incremental() and clock['load_seq'] is not none %}
        -- a rechecked day that turned complete reflects the load that brought the clock
        case
            when rechecked_days.symbol is not null and completeness.is_session_complete
                then greatest(lineage._load_seq, {{ clock['load_seq'] }})
            else lineage._load_seq
        end as _load_seq
        {%- else %}
        lineage._load_seq
        {%- endif %}
    from real_bar_summary
    inner join lineage
        on lineage.symbol = real_bar_summary.symbol
        and lineage.trade_date = real_bar_summary.trade_date
    left join variance_summary
        on variance_summary.symbol = real_bar_summary.symbol
        and variance_summary.trade_date = real_bar_summary.trade_date
    left join completeness
        on completeness.symbol = real_bar_summary.symbol
        and completeness.trade_date = real_bar_summary.trade_date
    {%- if is_incremental() and clock['load_seq'] is not none %}
    left join rechecked_days
        on rechecked_days.symbol = real_bar_summary.symbol
        and rechecked_days.trade_date = real_bar_summary.trade_date
    {%- endif %}
)

select * from final
-- stored in trade-date order: incremental runs and recent-day tests read a few blocks
order by trade_date
