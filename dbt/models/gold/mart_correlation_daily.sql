{{ config(materialized='table') }}

{#- Rolling 20-day correlation of daily log returns for each pair of tracked symbols.
    Returns are taken between consecutive days on which both symbols traded, so a
    stock and a 24/7 crypto pair are compared over the same intervals. -#}

with

daily as (
    select symbol, trade_date, close from {{ ref('fct_bars_daily') }}
),

pairs as (
    select
        a.symbol as symbol_a,
        b.symbol as symbol_b,
        a.trade_date,
        a.close as close_a,
        b.close as close_b
    from daily as a
    inner join daily as b
        on b.trade_date = a.trade_date
        and b.symbol > a.symbol
),

pair_returns as (
    select
        symbol_a,
        symbol_b,
        trade_date,
        ln(close_a / lag(close_a) over (partition by symbol_a, symbol_b order by trade_date))
            as log_return_a,
        ln(close_b / lag(close_b) over (partition by symbol_a, symbol_b order by trade_date))
            as log_return_b,
        row_number() over (partition by symbol_a, symbol_b order by trade_date) - 1 as idx
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
        symbol_a,
        symbol_b,
        trade_date,
        log_return_a,
        log_return_b,
        {#- NULL until 20 returns exist, and where either variance is zero: below 1e-12 of
            n·Σx², a difference of sums that small is rounding (it can even come out
            negative). Each square root is taken apart so their product cannot underflow. #}
        case
            when idx >= 20
                and moment_x > 1e-12 * pair_count * sum_xx
                and moment_y > 1e-12 * pair_count * sum_yy
                then greatest(-1.0, least(1.0,
                    co_moment / nullif(sqrt(moment_x) * sqrt(moment_y), 0)
                ))
        end as correlation_20d
    from moments
)

select * from final
