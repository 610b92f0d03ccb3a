{#- The bar revisions of the configured bar size exactly as loaded, repeats and
    restatements included. `stockpipe load` adds `_load_seq` to an older bronze table
    before it loads anything (its rows count as load 0). -#}
{%- set bronze_columns = [] -%}
{%- if execute -%}
    {%- set bronze_columns = adapter.get_columns_in_relation(source('bronze', 'bars'))
        | map(attribute='name') | map('lower') | list -%}
{%- endif %}

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
        -- trade conditions: ticks kept out of some price (open/high/low/close are null
        -- when no tick of the window could set them), ticks with unmapped codes; null on
        -- bars written before the stream counted them (and in a bronze table no load
        -- has migrated yet); candle_count: ticks of a vendor's 1-minute candle the
        -- outage backfill produced (> 0: the bar was made from a candle, not from
        -- trades), null in files of older writers
        {%- for name in ['excluded_count', 'unmapped_count', 'candle_count'] %}
        {% if name in bronze_columns %}{{ name }}{% else %}cast(null as bigint) as {{ name }}{% endif %},
        {%- endfor %}

        -- lineage: _load_seq numbers loads in commit order (incremental models select
        -- by it); rows loaded before the loader numbered loads count as load 0
        _source_file,
        _loaded_at,
        coalesce(_load_seq, 0) as _load_seq
    from source
    where interval_s = {{ env_var('STOCKPIPE_BAR_SECONDS', '60') | int }}
)

select * from renamed
