{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['symbol_a', 'symbol_b', 'trade_date'],
        on_schema_change='append_new_columns',
    )
}}

{#- Rolling 20-day correlation of daily log returns for each pair of tracked symbols.
    Returns are taken between consecutive days on which both symbols traded, so a
    stock and a 24/7 crypto pair are compared over the same intervals.

    Incremental runs rebuild, per pair with a daily bar rebuilt since this model's
    last run (fct_bars_daily `_load_seq` above this table's), the pair's days from
    its first changed day D0 through the 20th pair day after its last changed day
    D1: a close on day D enters the returns of D and of the pair's next day, hence
    the 20-row windows of D .. D + 20 pair days, and nothing later. The 20 pair days
    before D0 are read as input only (a window reaches 19 rows back, a return one
    more). Pair days outside the changed span are all in this table already (both
    daily rows are unchanged), so they are found here, within `correlation_scan_days`
    calendar days of the span; a pair with fewer there is read from its start, or
    to its end. Earlier rows built before `_load_seq` existed here (NULL) count as
    nothing processed: the first incremental run rebuilds everything. -#}

{%- set scan_days = var('correlation_scan_days', 60) | int %}

with

daily as (
    select symbol, trade_date, close, _load_seq from {{ ref('fct_bars_daily') }}
),

{% if is_incremental() %}

previous_run as (
    select max(_load_seq) as load_seq from {{ this }}
),

changed_days as (
    select daily.symbol, daily.trade_date, daily._load_seq
    from daily
    cross join previous_run
    where previous_run.load_seq is null
        or daily._load_seq > previous_run.load_seq
),

changed_symbols as (
    select
        symbol,
        min(trade_date) as first_changed,
        max(trade_date) as last_changed
    from changed_days
    group by symbol
),

symbols as (
    select distinct symbol from daily
),

-- every pair with a changed symbol, and the span of both symbols' changes
changed_pairs as (
    select
        symbol_a,
        symbol_b,
        min(first_changed) as first_changed,
        max(last_changed) as last_changed
    from (
        select
            least(changed_symbols.symbol, symbols.symbol) as symbol_a,
            greatest(changed_symbols.symbol, symbols.symbol) as symbol_b,
            changed_symbols.first_changed,
            changed_symbols.last_changed
        from changed_symbols
        inner join symbols
            on symbols.symbol <> changed_symbols.symbol
    ) as both_ways
    group by symbol_a, symbol_b
),

days_before as (
    select
        changed_pairs.symbol_a,
        changed_pairs.symbol_b,
        existing.trade_date,
        row_number() over (
            partition by changed_pairs.symbol_a, changed_pairs.symbol_b
            order by existing.trade_date desc
        ) as days_back
    from changed_pairs
    inner join {{ this }} as existing
        on existing.symbol_a = changed_pairs.symbol_a
        and existing.symbol_b = changed_pairs.symbol_b
        and existing.trade_date < changed_pairs.first_changed
        and existing.trade_date >= {{ dbt.dateadd('day', -scan_days, 'changed_pairs.first_changed') }}
),

days_after as (
    select
        changed_pairs.symbol_a,
        changed_pairs.symbol_b,
        existing.trade_date,
        row_number() over (
            partition by changed_pairs.symbol_a, changed_pairs.symbol_b
            order by existing.trade_date
        ) as days_ahead
    from changed_pairs
    inner join {{ this }} as existing
        on existing.symbol_a = changed_pairs.symbol_a
        and existing.symbol_b = changed_pairs.symbol_b
        and existing.trade_date > changed_pairs.last_changed
        and existing.trade_date <= {{ dbt.dateadd('day', scan_days, 'changed_pairs.last_changed') }}
),

pair_ranges as (
    select
        changed_pairs.symbol_a,
        changed_pairs.symbol_b,
        changed_pairs.first_changed as rebuild_start,
        -- null: fewer than 20 pair days in the scan, read from the pair's start / to its end
        days_before.trade_date as read_start,
        days_after.trade_date as rebuild_end
    from changed_pairs
    left join days_before
        on days_before.symbol_a = changed_pairs.symbol_a
        and days_before.symbol_b = changed_pairs.symbol_b
        and days_before.days_back = 20
    left join days_after
        on days_after.symbol_a = changed_pairs.symbol_a
        and days_after.symbol_b = changed_pairs.symbol_b
        and days_after.days_ahead = 20
),

pairs as (
    select
        pair_ranges.symbol_a,
        pair_ranges.symbol_b,
        a.trade_date,
        a.close as close_a,
        b.close as close_b,
        a.trade_date >= pair_ranges.rebuild_start as is_rebuilt
    from pair_ranges
    inner join daily as a
        on a.symbol = pair_ranges.symbol_a
        and (pair_ranges.read_start is null or a.trade_date >= pair_ranges.read_start)
        and (pair_ranges.rebuild_end is null or a.trade_date <= pair_ranges.rebuild_end)
    inner join daily as b
        on b.symbol = pair_ranges.symbol_b
        and b.trade_date = a.trade_date
),

load_seq as (
    select max(_load_seq) as load_seq from changed_days
),

{% else %}

pairs as (
    select
        a.symbol as symbol_a,
        b.symbol as symbol_b,
        a.trade_date,
        a.close as close_a,
        b.close as close_b,
        true as is_rebuilt
    from daily as a
    inner join daily as b
        on b.trade_date = a.trade_date
        and b.symbol > a.symbol
),

load_seq as (
    select max(_load_seq) as load_seq from daily
),

{% endif %}

pair_returns as (
    select
        symbol_a,
        symbol_b,
        trade_date,
        is_rebuilt,
        ln(close_a / lag(close_a) over (partition by symbol_a, symbol_b order by trade_date))
            as log_return_a,
        ln(close_b / lag(close_b) over (partition by symbol_a, symbol_b order by trade_date))
            as log_return_b
    from pairs
),

rolling as (
    {#- Snowflake's CORR takes no ORDER BY or window frame, so the rolling Pearson
        correlation is built from rolling sums: SUM and COUNT take a ROWS frame on
        every target. Like CORR, only rows where both returns exist count.
        (Snowflake has no named WINDOW clause, hence the Jinja variable.) -#}
    {%- set last_20 -%}
        partition by symbol_a, symbol_b order by trade_date rows between 19 preceding and current row
    {%- endset %}
    select
        *,
        count(xy_pair) over ({{ last_20 }}) as pair_count,
        sum(x) over ({{ last_20 }}) as sum_x,
        sum(y) over ({{ last_20 }}) as sum_y,
        sum(x * y) over ({{ last_20 }}) as sum_xy,
        sum(x * x) over ({{ last_20 }}) as sum_xx,
        sum(y * y) over ({{ last_20 }}) as sum_yy
    from (
        select
            *,
            case when log_return_b is not null then log_return_a end as x,
            case when log_return_a is not null then log_return_b end as y,
            case when log_return_a is not null and log_return_b is not null then 1 end as xy_pair
        from pair_returns
    ) as paired
),

moments as (
    select
        *,
        pair_count * sum_xy - sum_x * sum_y as co_moment,
        pair_count * sum_xx - sum_x * sum_x as moment_x,
        pair_count * sum_yy - sum_y * sum_y as moment_y
    from rolling
),

final as (
    select
        moments.symbol_a,
        moments.symbol_b,
        moments.trade_date,
        moments.log_return_a,
        moments.log_return_b,
        {#- NULL until 20 return pairs exist (every day but a pair's first has both
            returns, so that is from its 21st day on, wherever the rows read start),
            and where either variance is zero: below 1e-12 of n·Σx², a difference of
            sums that small is rounding (it can even come out negative). Each square
            root is taken apart so their product cannot underflow. #}
        case
            when moments.pair_count = 20
                and moments.moment_x > 1e-12 * moments.pair_count * moments.sum_xx
                and moments.moment_y > 1e-12 * moments.pair_count * moments.sum_yy
                then greatest(-1.0, least(1.0,
                    moments.co_moment / nullif(sqrt(moments.moment_x) * sqrt(moments.moment_y), 0)
                ))
        end as correlation_20d,
        -- the fct_bars_daily load this row reflects: the next incremental run starts after it
        load_seq.load_seq as _load_seq
    from moments
    cross join load_seq
    where moments.is_rebuilt
)

select * from final
