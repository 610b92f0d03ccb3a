{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['symbol_a', 'symbol_b', 'trade_date'],
        incremental_predicates=trade_date_bounds(),
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
    more). They are found in fct_bars_daily, not in this table: pair days are days
    both symbols traded, so the 20th pair day before D0 is at or before each
    symbol's own 20th day before it, and the pair is read from the earlier of the
    two (a symbol's days within `correlation_scan_days` (60) days of the changes;
    likewise after D1). A pair with fewer than 20 pair days there (its symbols trade
    on different days), or a symbol with fewer than 20 days there, is read from its
    start, or to its end. Earlier rows built before `_load_seq` existed here (NULL)
    count as nothing processed: the first incremental run rebuilds everything.
    The high-water mark and the changed dates are constants written in when the
    model compiles (macros/incremental.sql), so fct_bars_daily is read around the
    changed dates only, on both targets. -#}

{%- set scan_days = var('correlation_scan_days', 60) | int %}

{%- if is_incremental() -%}
    {%- set changed = changed_since(ref('fct_bars_daily')) -%}
    {%- set changed_filter = changed['filter'] -%}
    {%- set first_changed = changed['first'] -%}
    {%- set last_changed = changed['last'] -%}
{%- endif %}

with

daily as (
    select symbol, trade_date, close, _load_seq from {{ ref('fct_bars_daily') }}
    {%- if is_incremental() %}
    -- the days around the changes; all_daily (the whole table) only where a pair
    -- must be read from its start
    where trade_date >= {{ date_literal(first_changed, -scan_days) }}
    {%- endif %}
),

{%- if is_incremental() %}

all_daily as (
    select symbol, trade_date, close from {{ ref('fct_bars_daily') }}
),
{%- endif %}

{% if is_incremental() %}

changed_days as (
    select daily.symbol, daily.trade_date, daily._load_seq
    from daily
    where {{ changed_filter }}
),

changed_symbols as (
    select
        symbol,
        min(trade_date) as first_changed,
        max(trade_date) as last_changed
    from changed_days
    group by symbol
),

-- a symbol with no day from the first changed one on has no pair day to rebuild
symbols as (
    select distinct symbol from daily
    where trade_date >= {{ date_literal(first_changed) }}
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

-- each symbol's own days around the changes, numbered
own_days as (
    select
        symbol,
        trade_date,
        close,
        row_number() over (partition by symbol order by trade_date) as day_no
    from daily
    where trade_date >= {{ date_literal(first_changed, -scan_days) }}
        and trade_date <= {{ date_literal(last_changed, scan_days) }}
),

-- each symbol's own returns (day to day) and their sums over its last 20 days
own_returns as (
    select
        *,
        sum(log_return) over (
            partition by symbol order by day_no rows between 19 preceding and current row
        ) as sum_r_20,
        sum(log_return * log_return) over (
            partition by symbol order by day_no rows between 19 preceding and current row
        ) as sum_rr_20
    from (
        select
            own_days.symbol,
            own_days.trade_date,
            own_days.day_no,
            ln(own_days.close / previous.close) as log_return
        from own_days
        left join own_days as previous
            on previous.symbol = own_days.symbol
            and previous.day_no = own_days.day_no - 1
    ) as returns
),

-- each symbol's last day of all (daily is bounded below only), and whether the
-- scan reaches it
symbol_last_days as (
    select
        last_day.symbol,
        last_day.last_day,
        max(own_days.day_no) as last_day_no,
        last_day.last_day <= {{ date_literal(last_changed, scan_days) }}
            and max(own_days.trade_date) = last_day.last_day as ends_in_scan
    from (
        select symbol, max(trade_date) as last_day
        from daily
        group by symbol
    ) as last_day
    inner join own_days
        on own_days.symbol = last_day.symbol
    group by last_day.symbol, last_day.last_day
),

{#- The common case, a new day, without a window per pair: when both symbols of a
    pair end on its one changed day D and their last 21 days are the same dates,
    those are the pair's last 21 pair days, its 20 returns in D's window are each
    symbol's own, and the window's sums are each symbol's sums and one sum of
    products over those days. Other pairs take the general way below. -#}
symbol_tails as (
    select
        own_days.symbol,
        own_days.trade_date,
        ln(own_days.close / previous.close) as log_return,
        last_days.last_day_no - own_days.day_no as days_back
    from own_days
    inner join (
        select symbol, max(day_no) as last_day_no
        from own_days
        group by symbol
    ) as last_days
        on last_days.symbol = own_days.symbol
    left join own_days as previous
        on previous.symbol = own_days.symbol
        and previous.day_no = own_days.day_no - 1
    where own_days.day_no > last_days.last_day_no - 21
),

symbol_tail_sums as (
    select
        symbol_tails.symbol,
        count(*) as tail_days,
        min(symbol_tails.trade_date) as tail_start,
        max(symbol_tails.trade_date) as tail_end,
        -- the symbol's last day of all (daily is bounded below only)
        max(last_day.last_day) as last_day,
        sum(case when symbol_tails.days_back < 20 then symbol_tails.log_return end) as sum_r,
        sum(case when symbol_tails.days_back < 20
            then symbol_tails.log_return * symbol_tails.log_return end) as sum_rr,
        max(case when symbol_tails.days_back = 0 then symbol_tails.log_return end) as last_return
    from symbol_tails
    inner join (
        select symbol, max(trade_date) as last_day
        from daily
        group by symbol
    ) as last_day
        on last_day.symbol = symbol_tails.symbol
    group by symbol_tails.symbol
),

fast_candidates as (
    select
        changed_pairs.symbol_a,
        changed_pairs.symbol_b,
        changed_pairs.last_changed as trade_date
    from changed_pairs
    inner join symbol_tail_sums as tail_a
        on tail_a.symbol = changed_pairs.symbol_a
    inner join symbol_tail_sums as tail_b
        on tail_b.symbol = changed_pairs.symbol_b
    where changed_pairs.first_changed = changed_pairs.last_changed
        and tail_a.tail_days = 21
        and tail_b.tail_days = 21
        and tail_a.tail_end = changed_pairs.last_changed
        and tail_b.tail_end = changed_pairs.last_changed
        and tail_a.last_day = changed_pairs.last_changed
        and tail_b.last_day = changed_pairs.last_changed
        and tail_a.tail_start = tail_b.tail_start
),

fast_pairs as (
    select
        fast_candidates.symbol_a,
        fast_candidates.symbol_b,
        fast_candidates.trade_date,
        sum(case when tail_a.days_back < 20 then tail_a.log_return * tail_b.log_return end) as sum_xy
    from fast_candidates
    inner join symbol_tails as tail_a
        on tail_a.symbol = fast_candidates.symbol_a
    inner join symbol_tails as tail_b
        on tail_b.symbol = fast_candidates.symbol_b
        and tail_b.trade_date = tail_a.trade_date
    group by fast_candidates.symbol_a, fast_candidates.symbol_b, fast_candidates.trade_date
    -- the same 21 dates
    having count(*) = 21
),

fast_moments as (
    select
        fast_pairs.symbol_a,
        fast_pairs.symbol_b,
        fast_pairs.trade_date,
        tail_a.last_return as log_return_a,
        tail_b.last_return as log_return_b,
        true as is_rebuilt,
        20 as pair_count,
        tail_a.sum_r as sum_x,
        tail_b.sum_r as sum_y,
        fast_pairs.sum_xy,
        tail_a.sum_rr as sum_xx,
        tail_b.sum_rr as sum_yy
    from fast_pairs
    inner join symbol_tail_sums as tail_a
        on tail_a.symbol = fast_pairs.symbol_a
    inner join symbol_tail_sums as tail_b
        on tail_b.symbol = fast_pairs.symbol_b
),

-- every other changed pair
rest_pairs as (
    select changed_pairs.*
    from changed_pairs
    left join fast_pairs
        on fast_pairs.symbol_a = changed_pairs.symbol_a
        and fast_pairs.symbol_b = changed_pairs.symbol_b
    where fast_pairs.symbol_a is null
),

-- the dates pairs start and end their changes at (a few distinct ones)
anchors as (
    select distinct first_changed as anchor, 'before' as side from rest_pairs
    union all
    select distinct last_changed as anchor, 'after' as side from rest_pairs
),

-- per symbol and anchor: its 20th own day before the anchor, or after it (none: fewer
-- than 20 there)
own_bounds as (
    select
        counted.symbol,
        counted.anchor,
        counted.side,
        bound.trade_date,
        bound.day_no
    from (
        select
            own_days.symbol,
            anchors.anchor,
            anchors.side,
            count(case when own_days.trade_date < anchors.anchor then 1 end) as days_before,
            count(case when own_days.trade_date <= anchors.anchor then 1 end) as days_through
        from own_days
        cross join anchors
        group by own_days.symbol, anchors.anchor, anchors.side
    ) as counted
    left join own_days as bound
        on bound.symbol = counted.symbol
        and bound.day_no = case
            when counted.side = 'before' then counted.days_before - 19
            else counted.days_through + 20
        end
),

-- each remaining pair with its symbols' own bounds
bounded_pairs as (
    select
        rest_pairs.symbol_a,
        rest_pairs.symbol_b,
        rest_pairs.first_changed,
        rest_pairs.last_changed,
        start_a.trade_date as start_a,
        start_b.trade_date as start_b,
        end_a.trade_date as end_a,
        end_b.trade_date as end_b,
        -- own days from the start bound through the end bound (or the last day)
        coalesce(end_a.day_no, last_a.last_day_no) - start_a.day_no + 1 as days_a,
        coalesce(end_b.day_no, last_b.last_day_no) - start_b.day_no + 1 as days_b,
        last_a.ends_in_scan and last_b.ends_in_scan as both_end_in_scan
    from rest_pairs
    left join own_bounds as start_a
        on start_a.symbol = rest_pairs.symbol_a
        and start_a.anchor = rest_pairs.first_changed
        and start_a.side = 'before'
    left join own_bounds as start_b
        on start_b.symbol = rest_pairs.symbol_b
        and start_b.anchor = rest_pairs.first_changed
        and start_b.side = 'before'
    left join own_bounds as end_a
        on end_a.symbol = rest_pairs.symbol_a
        and end_a.anchor = rest_pairs.last_changed
        and end_a.side = 'after'
    left join own_bounds as end_b
        on end_b.symbol = rest_pairs.symbol_b
        and end_b.anchor = rest_pairs.last_changed
        and end_b.side = 'after'
    left join symbol_last_days as last_a
        on last_a.symbol = rest_pairs.symbol_a
    left join symbol_last_days as last_b
        on last_b.symbol = rest_pairs.symbol_b
),

{#- The common case of a restated old day, again without windows over the pairs'
    own rows: when both symbols have the same days from their 20th day before D0
    through their 20th after D1 (or their common last day), those are the pair's
    days, its returns each symbol's own, and only the sum of products needs a
    window per pair. -#}
aligned_candidates as (
    select *
    from bounded_pairs
    where start_a = start_b
        and days_a = days_b
        and (end_a = end_b or (end_a is null and end_b is null and both_end_in_scan))
),

-- symbols numbered, so that the per-pair rows below are keyed by integers
symbol_ids as (
    select symbol, row_number() over (order by symbol) as symbol_id
    from (select distinct symbol from own_days) as symbols
),

{#- a symbol's day as one number, the key the second side is joined on: from the pair's
    first symbol and its date, so that no planner can pair the two sides on the date
    alone (all pairs of symbols, not the candidates', which it keeps afterwards) -#}
{%- set day_number = dbt.datediff("cast('1970-01-01' as date)", '__date__', 'day') -%}
{%- set day_key = 'cast(__id__ as bigint) * 1000000 + ' ~ day_number %}

aligned_returns as (
    select
        symbol_ids.symbol_id,
        own_returns.trade_date,
        own_returns.log_return,
        own_returns.sum_r_20,
        own_returns.sum_rr_20,
        {{ day_key | replace('__id__', 'symbol_ids.symbol_id') | replace('__date__', 'own_returns.trade_date') }} as day_key
    from own_returns
    inner join symbol_ids
        on symbol_ids.symbol = own_returns.symbol
),

aligned_keys as (
    select
        candidates.symbol_a,
        candidates.symbol_b,
        ids_a.symbol_id as id_a,
        ids_b.symbol_id as id_b,
        candidates.first_changed,
        candidates.start_a,
        candidates.end_a,
        candidates.days_a
    from aligned_candidates as candidates
    inner join symbol_ids as ids_a
        on ids_a.symbol = candidates.symbol_a
    inner join symbol_ids as ids_b
        on ids_b.symbol = candidates.symbol_b
),

aligned_products as (
    select
        keys.id_a,
        keys.id_b,
        keys.first_changed,
        keys.days_a,
        returns_a.trade_date,
        returns_a.log_return as log_return_a,
        returns_b.log_return as log_return_b,
        returns_a.sum_r_20 as sum_x,
        returns_b.sum_r_20 as sum_y,
        returns_a.sum_rr_20 as sum_xx,
        returns_b.sum_rr_20 as sum_yy,
        returns_a.log_return * returns_b.log_return as product
    from aligned_keys as keys
    inner join aligned_returns as returns_a
        on returns_a.symbol_id = keys.id_a
        and returns_a.trade_date >= keys.start_a
        and (keys.end_a is null or returns_a.trade_date <= keys.end_a)
    inner join aligned_returns as returns_b
        on returns_b.day_key
            = {{ day_key | replace('__id__', 'keys.id_b') | replace('__date__', 'returns_a.trade_date') }}
),

-- the same days: as many shared as each symbol has there
aligned_pairs as (
    select aligned_keys.symbol_a, aligned_keys.symbol_b, aligned_keys.id_a, aligned_keys.id_b
    from (
        select id_a, id_b
        from aligned_products
        group by id_a, id_b
        having count(*) = min(days_a)
    ) as shared
    inner join aligned_keys
        on aligned_keys.id_a = shared.id_a
        and aligned_keys.id_b = shared.id_b
),

aligned_moments as (
    select
        aligned_pairs.symbol_a,
        aligned_pairs.symbol_b,
        rolled.trade_date,
        rolled.log_return_a,
        rolled.log_return_b,
        true as is_rebuilt,
        20 as pair_count,
        rolled.sum_x,
        rolled.sum_y,
        rolled.sum_xy,
        rolled.sum_xx,
        rolled.sum_yy
    from (
        select
            *,
            sum(product) over (
                partition by id_a, id_b order by trade_date
                rows between 19 preceding and current row
            ) as sum_xy
        from aligned_products
    ) as rolled
    inner join aligned_pairs
        on aligned_pairs.id_a = rolled.id_a
        and aligned_pairs.id_b = rolled.id_b
    where rolled.trade_date >= rolled.first_changed
),

-- the general way: every other changed pair
general_pairs as (
    select bounded_pairs.*
    from bounded_pairs
    left join aligned_pairs
        on aligned_pairs.symbol_a = bounded_pairs.symbol_a
        and aligned_pairs.symbol_b = bounded_pairs.symbol_b
    where aligned_pairs.symbol_a is null
),

-- what each pair reads: from the earlier of its symbols' 20th days before D0, to the
-- later of their 20th days after D1 (null: from its start / to its end)
pair_ranges as (
    select
        symbol_a,
        symbol_b,
        first_changed,
        last_changed,
        case
            when start_a is null or start_b is null then null
            when start_a <= start_b then start_a
            else start_b
        end as read_start,
        case
            when end_a is null or end_b is null then null
            when end_a >= end_b then end_a
            else end_b
        end as read_end
    from general_pairs
),

{#- the pair days of `ranges` within each pair's read range: the days on which both
    symbols have a row, one select per kind of range (an end within the scan bounds
    every row read by a constant too). Each symbol's rows are joined to the pairs on
    the symbol alone and the two sides are paired by grouping on the date: joined on
    the date, planners pair the two symbols' days of every pair first. -#}
{%- set scan_from = date_literal(first_changed, -scan_days) -%}
{%- set scan_to = date_literal(last_changed, scan_days) -%}
{%- set pair_days_branches = [] -%}
{%- for has_start, has_end in [(true, true), (true, false), (false, true), (false, false)] -%}
{%- set branch %}
    select
        symbol_a,
        symbol_b,
        trade_date,
        max(case when side = 'a' then close end) as close_a,
        max(case when side = 'b' then close end) as close_b,
        min(first_changed) as first_changed,
        min(last_changed) as last_changed,
        min(read_start) as read_start,
        min(read_end) as read_end
    from (
        {%- for side in ('a', 'b') %}
        select
            ranges.symbol_a,
            ranges.symbol_b,
            '{{ side }}' as side,
            days.trade_date,
            days.close,
            ranges.first_changed,
            ranges.last_changed,
            ranges.read_start,
            ranges.read_end
        from __ranges__ as ranges
        inner join {{ 'daily' if has_start else 'all_daily' }} as days
            on days.symbol = ranges.symbol_{{ side }}
            {%- if has_start %}
            and days.trade_date >= ranges.read_start
            and days.trade_date >= {{ scan_from }}
            {%- endif %}
            {%- if has_end %}
            and days.trade_date <= ranges.read_end
            and days.trade_date <= {{ scan_to }}
            {%- endif %}
        where ranges.read_start is {{ 'not ' if has_start }}null
            and ranges.read_end is {{ 'not ' if has_end }}null
        {{- '\n        union all' if side == 'a' }}
        {%- endfor %}
    ) as sides
    group by symbol_a, symbol_b, trade_date
    having count(*) = 2
{%- endset -%}
{%- do pair_days_branches.append(branch) -%}
{%- endfor %}

scanned_pair_days as (
    {{ pair_days_branches | join('\n\n    union all\n') | replace('__ranges__', 'pair_ranges') }}
),

-- pairs with fewer than 20 pair days before D0 (or after D1) in what they read,
-- although their range was cut there: their symbols trade on different days
short_pairs as (
    select
        pair_ranges.symbol_a,
        pair_ranges.symbol_b,
        pair_ranges.first_changed,
        pair_ranges.last_changed,
        cast(null as date) as read_start,
        cast(null as date) as read_end
    from pair_ranges
    left join (
        select
            symbol_a,
            symbol_b,
            count(case when trade_date < first_changed then 1 end) as days_before,
            count(case when trade_date > last_changed then 1 end) as days_after
        from scanned_pair_days
        group by symbol_a, symbol_b
    ) as scanned
        on scanned.symbol_a = pair_ranges.symbol_a
        and scanned.symbol_b = pair_ranges.symbol_b
    where (pair_ranges.read_start is not null and coalesce(scanned.days_before, 0) < 20)
        or (pair_ranges.read_end is not null and coalesce(scanned.days_after, 0) < 20)
),

pairs as (
    select scanned_pair_days.*
    from scanned_pair_days
    left join short_pairs
        on short_pairs.symbol_a = scanned_pair_days.symbol_a
        and short_pairs.symbol_b = scanned_pair_days.symbol_b
    where short_pairs.symbol_a is null

    union all

    -- those read whole
    {{ pair_days_branches[-1] | replace('__ranges__', 'short_pairs') }}
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
        cast(null as date) as first_changed,
        cast(null as date) as last_changed,
        cast(null as date) as read_start,
        cast(null as date) as read_end
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
        first_changed,
        last_changed,
        row_number() over (partition by symbol_a, symbol_b order by trade_date) as pair_day,
        ln(close_a / lag(close_a) over (partition by symbol_a, symbol_b order by trade_date))
            as log_return_a,
        ln(close_b / lag(close_b) over (partition by symbol_a, symbol_b order by trade_date))
            as log_return_b
    from pairs
),

-- rebuilt: from D0 through the 20th pair day after D1 (a full build: every row)
rebuilt_returns as (
    select
        *,
        first_changed is null or (
            trade_date >= first_changed
            and pair_day <= coalesce(max(case when trade_date <= last_changed then pair_day end)
                over (partition by symbol_a, symbol_b), 0) + 20
        ) as is_rebuilt
    from pair_returns
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
        from rebuilt_returns
    ) as paired
),

moments as (
    select
        symbol_a,
        symbol_b,
        trade_date,
        log_return_a,
        log_return_b,
        is_rebuilt,
        pair_count,
        sum_xx,
        sum_yy,
        pair_count * sum_xy - sum_x * sum_y as co_moment,
        pair_count * sum_xx - sum_x * sum_x as moment_x,
        pair_count * sum_yy - sum_y * sum_y as moment_y
    from (
        select
            symbol_a, symbol_b, trade_date, log_return_a, log_return_b, is_rebuilt,
            pair_count, sum_x, sum_y, sum_xy, sum_xx, sum_yy
        from rolling
        {%- if is_incremental() %}
        union all
        select
            symbol_a, symbol_b, trade_date, log_return_a, log_return_b, is_rebuilt,
            pair_count, sum_x, sum_y, sum_xy, sum_xx, sum_yy
        from fast_moments
        union all
        select
            symbol_a, symbol_b, trade_date, log_return_a, log_return_b, is_rebuilt,
            pair_count, sum_x, sum_y, sum_xy, sum_xx, sum_yy
        from aligned_moments
        {%- endif %}
    ) as sums
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
-- stored in trade-date order: incremental runs and recent-day tests read a few blocks
order by trade_date
