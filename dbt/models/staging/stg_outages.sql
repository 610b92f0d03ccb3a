{#- The outage ledger as loaded into bronze.outages: one row per (outage_id, symbol), a
    stretch of event time [start_ts, end_ts) in which the symbol's data did not reach
    the lake (end_ts NULL while the outage is still open), and whether the backfill has
    repaired it since. bronze.outages may not exist yet (its loader is newer than the
    warehouse): the source is declared (so lineage shows it) and read only when the
    warehouse has it, else this is an empty relation with the same columns, so every
    model runs without it. Where the table holds a (outage_id, symbol) more than once
    (an append-only load of the ledger's repair lines), the latest load wins, and
    within one load a repaired row. -#}

{%- set outages_relation = source('bronze', 'outages') -%}
{%- set has_outages = execute and adapter.get_relation(
    database=outages_relation.database,
    schema=outages_relation.schema,
    identifier=outages_relation.identifier,
) is not none -%}

with

{% if has_outages %}

source as (
    select * from {{ outages_relation }}
),

renamed as (
    select
        -- ids
        cast(outage_id as varchar) as outage_id,
        cast(symbol as varchar) as symbol,

        -- timestamps (UTC instants)
        cast(start_ts as timestamp with time zone) as start_ts,
        cast(end_ts as timestamp with time zone) as end_ts,

        -- what it was and what became of it
        cast(source as varchar) as source,
        cast(reason as varchar) as reason,
        coalesce(cast(repaired as boolean), false) as repaired,
        cast(repaired_via as varchar) as repaired_via,
        cast(repaired_at as timestamp with time zone) as repaired_at,

        -- lineage
        cast(_loaded_at as timestamp with time zone) as _loaded_at
    from source
    where outage_id is not null
        and symbol is not null
        and start_ts is not null
),

{% else %}

renamed as (
    select
        cast(null as varchar) as outage_id,
        cast(null as varchar) as symbol,
        cast(null as timestamp with time zone) as start_ts,
        cast(null as timestamp with time zone) as end_ts,
        cast(null as varchar) as source,
        cast(null as varchar) as reason,
        cast(null as boolean) as repaired,
        cast(null as varchar) as repaired_via,
        cast(null as timestamp with time zone) as repaired_at,
        cast(null as timestamp with time zone) as _loaded_at
    from (select 1 as one) as nothing
    where 1 = 0
),

{% endif %}

final as (
    select *
    from renamed
    qualify row_number() over (
        partition by outage_id, symbol
        order by _loaded_at desc nulls last, repaired desc, repaired_at desc nulls last
    ) = 1
)

select * from final
