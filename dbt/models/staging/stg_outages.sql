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

{#- (name, type) of every column, in order; repaired is coalesced (NULL counts false) -#}
{%- set columns = [
    ('outage_id', 'varchar'), ('symbol', 'varchar'),
    ('start_ts', 'timestamp with time zone'), ('end_ts', 'timestamp with time zone'),
    ('source', 'varchar'), ('reason', 'varchar'), ('repaired', 'boolean'),
    ('repaired_via', 'varchar'), ('repaired_at', 'timestamp with time zone'),
    ('_loaded_at', 'timestamp with time zone'),
] -%}

with

{% if has_outages %}

source as (
    select * from {{ outages_relation }}
),

-- ids, the UTC instants [start_ts, end_ts), what it was and what became of it, lineage
renamed as (
    select
        {%- for name, type in columns %}
        {% if name == 'repaired' -%}
        coalesce(cast(repaired as boolean), false) as repaired
        {%- else -%}
        cast({{ name }} as {{ type }}) as {{ name }}
        {%- endif %}{{ ',' if not loop.last }}
        {%- endfor %}
    from source
    where outage_id is not null
        and symbol is not null
        and start_ts is not null
),

{% else %}

renamed as (
    select
        {%- for name, type in columns %}
        cast(null as {{ type }}) as {{ name }}{{ ',' if not loop.last }}
        {%- endfor %}
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
