{#-
    Exponential moving average the way TA-Lib computes it, without recursion.

    Emits four CTEs; the last, `<name>`, has one row per (partition_by, idx)
    with the column `<name>`:
        ema[i] = NULL                                   for i < seed_index
        ema[seed_index] = mean of `value` over the `period` rows ending there
        ema[i] = alpha * value[i] + (1 - alpha) * ema[i - 1]   after that
    `relation` needs `partition_by`, a gap-free `idx` (0-based) and `value`.
    alpha defaults to 2 / (period + 1) (TA-Lib's EMA); Wilder smoothing (RSI,
    ATR) is alpha = 1 / period.

    A carried state: with `state` (a column of `relation`), a partition whose
    row at idx 0 has a non-NULL `state` starts there from that value instead:
        ema[0] = state,  ema[i] = alpha * value[i] + (1 - alpha) * ema[i - 1]
    which is how incremental runs continue a series from the value they stored
    for the row before the first changed one (the recursion is the same, so the
    values are those of a full build up to floating-point rounding); partitions
    without one are computed from their start as above.

    The recursion unrolls to ema[i] = (1-alpha)^(i-s) * seed
    + sum over s < k <= i of alpha * (1-alpha)^(i-k) * value[k]. Weights older
    than `block` rows are below e^-40 and are dropped; within blocks of that
    many rows the powers are taken relative to the block start, so they stay
    within e^±45 and the sums are plain window sums (no recursive CTE, which
    Snowflake caps, and no overflow on decades of history).
-#}
{% macro ema_ctes(name, relation, value, period, alpha=none, seed_index=none, partition_by='symbol', state=none) -%}
    {%- set alpha = alpha if alpha is not none else 2.0 / (period + 1) -%}
    {%- set seed_index = seed_index if seed_index is not none else period - 1 -%}
    {%- set block = (40.0 / alpha) | round(0, 'ceil') | int -%}
    {%- set log_decay = '(ln(cast(1 as double) - ' ~ alpha ~ '))' -%}
{{ name }}__seeded as (
    select
        {{ partition_by }},
        idx,
        {{ value }} as ema_input,
        {%- if state %}
        max(case when idx = 0 then {{ state }} end) over (partition by {{ partition_by }}) as carried,
        {%- else %}
        cast(null as double) as carried,
        {%- endif %}
        avg({{ value }}) over (
            partition by {{ partition_by }} order by idx
            rows between {{ period - 1 }} preceding and current row
        ) as seed_mean
    from {{ relation }}
),

{{ name }}__terms as (
    select
        {{ partition_by }},
        idx,
        cast(floor(idx / {{ block }}) as integer) as block_no,
        case when carried is not null then 0 else {{ seed_index }} end as seed_at,
        coalesce(carried, seed_mean) as seed_value,
        case
            when idx > (case when carried is not null then 0 else {{ seed_index }} end)
                then {{ alpha }} * ema_input
                    * exp(-(idx - floor(idx / {{ block }}) * {{ block }}) * {{ log_decay }})
            else 0
        end as term
    from {{ name }}__seeded
),

{{ name }}__blocks as (
    select
        {{ partition_by }},
        block_no + 1 as next_block_no,
        sum(term) as block_total
    from {{ name }}__terms
    group by {{ partition_by }}, block_no
),

{{ name }} as (
    select
        terms.{{ partition_by }},
        terms.idx,
        case
            when terms.idx >= terms.seed_at then
                case
                    when terms.idx - terms.seed_at < {{ 2 * block }}
                        then exp((terms.idx - terms.seed_at) * {{ log_decay }}) * seed.seed_value
                    else 0
                end
                + exp((terms.idx - terms.block_no * {{ block }}) * {{ log_decay }}) * (
                    exp({{ block }} * {{ log_decay }}) * coalesce(previous_block.block_total, 0)
                    + sum(terms.term) over (
                        partition by terms.{{ partition_by }}, terms.block_no order by terms.idx
                        rows between unbounded preceding and current row
                    )
                )
        end as {{ name }}
    from {{ name }}__terms as terms
    left join {{ name }}__blocks as previous_block
        on previous_block.{{ partition_by }} = terms.{{ partition_by }}
        and previous_block.next_block_no = terms.block_no
    left join {{ name }}__terms as seed
        on seed.{{ partition_by }} = terms.{{ partition_by }}
        and seed.idx = terms.seed_at
)
{%- endmacro %}
