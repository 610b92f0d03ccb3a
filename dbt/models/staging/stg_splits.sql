{#- Stock splits: the seed `splits` (kept in the repository) and `bronze.splits`, which
    a fetcher fills. bronze.splits may be empty or not exist yet: the source is declared
    (so lineage shows it) and read only when the warehouse has it, so every model runs
    without it. Where both hold a (symbol, ex_date), the fetched row wins. A split of
    `split_from` shares into `split_to` (2-for-1: 1 -> 2) divides the prices before its
    ex-date by split_to / split_from and multiplies the volumes by it. -#}

{%- set fetched_relation = source('bronze', 'splits') -%}
{%- set has_fetched = execute and adapter.get_relation(
    database=fetched_relation.database,
    schema=fetched_relation.schema,
    identifier=fetched_relation.identifier,
) is not none -%}

with

seeded as (
    select
        symbol,
        cast(ex_date as date) as ex_date,
        cast(split_from as double) as split_from,
        cast(split_to as double) as split_to,
        source,
        1 as preference
    from {{ ref('splits') }}
),

{% if has_fetched %}

fetched as (
    select
        symbol,
        cast(ex_date as date) as ex_date,
        cast(split_from as double) as split_from,
        cast(split_to as double) as split_to,
        source,
        0 as preference
    from {{ fetched_relation }}
),

unioned as (
    select * from seeded
    union all
    select * from fetched
),

{% else %}

unioned as (
    select * from seeded
),

{% endif %}

final as (
    select
        symbol,
        ex_date,
        split_from,
        split_to,
        source
    from unioned
    where split_from > 0 and split_to > 0
    qualify row_number() over (partition by symbol, ex_date order by preference) = 1
)

select * from final
