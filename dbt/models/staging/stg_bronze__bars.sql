{#- The bar revisions of the configured bar size exactly as loaded, repeats and
    restatements included. `stockpipe load` adds `_load_seq` to an older bronze table
    before it loads anything (its rows count as load 0). -#}
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

        -- lineage: _load_seq numbers loads in commit order (incremental models select
        -- by it); rows loaded before the loader numbered loads count as load 0
        _source_file,
        _loaded_at,
        coalesce(_load_seq, 0) as _load_seq
    from source
    where interval_s = {{ env_var('STOCKPIPE_BAR_SECONDS', '60') | int }}
)

select * from renamed
