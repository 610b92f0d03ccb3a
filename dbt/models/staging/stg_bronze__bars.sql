{#- The one-minute bar revisions exactly as loaded, repeats and restatements included. -#}
with

source as (
    select * from {{ source('bronze', 'bars') }}
),

renamed as (
    select
        -- ids
        symbol,
        revision,

        -- timestamps
        window_start,
        window_end,
        first_ts,
        last_ts,
        emitted_at,

        -- numerics
        open,
        high,
        low,
        close,
        volume,
        vwap,
        trade_count,

        -- lineage
        _source_file,
        _loaded_at
    from source
    where interval_s = 60
)

select * from renamed
