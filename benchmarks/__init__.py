"""Standalone warehouse benchmarks, run from a checkout: `python -m benchmarks.<script>`.

    warehouse_scale   incremental load + dbt cost against a year of history
    warehouse_month   a month of 1-minute bars at hundreds of symbols through load + dbt

The stream's benchmark is `stockpipe bench` (its engines live in
`flows.tooling.engines`, so it runs from an installed wheel too).
"""
