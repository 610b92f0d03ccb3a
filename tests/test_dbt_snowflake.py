"""The same dbt project on the Snowflake target, against fakesnow in-process.

dbt-snowflake connects through `snowflake.connector.connect`, which
`fakesnow.patch()` replaces, so every statement dbt sends to "Snowflake" (the
seed's TIMESTAMP_TZ columns, CONVERT_TIMEZONE, DATEADD/DATEDIFF, QUALIFY,
MIN_BY, window functions and the non-recursive EMA SQL) is parsed as Snowflake
SQL and run. One load is built on both targets from the same bronze rows and
every silver and gold table must agree; the DuckDB results are pinned against
pandas and TA-Lib in test_dbt_transform.py.

Only full builds run here. Incremental runs on the emulator (dbt-snowflake's
delete+insert, through tests/snowflake_emulator.py, which lets fakesnow create
dbt's qualified temporary tables) are compared with full refreshes in
test_dbt_incremental.py, and their SQL is checked against Snowflake's rules in
test_snowflake_sql.py.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import fakesnow
import numpy as np
import pandas as pd
import pytest
import snowflake.connector
from helpers import emulator_snowflake_settings
from test_dbt_transform import CRYPTO, TABLES, generate_loads, load_bronze, nyse_schedule

from flows.settings import load_settings
from flows.transform.dbt_runner import transform

pytestmark = [pytest.mark.slow, pytest.mark.dbt]

SESSIONS = 45
SNOWFLAKE_DDL = """
create table bronze.bars (
    symbol varchar, interval_s integer, window_start timestamp_tz, window_end timestamp_tz,
    open double, high double, low double, close double, volume double, vwap double,
    trade_count bigint, first_ts timestamp_tz, last_ts timestamp_tz, revision integer,
    emitted_at timestamp_tz, _source_file varchar, _loaded_at timestamp_tz, _load_seq bigint
)
"""


def _smaller(rows: pd.DataFrame) -> pd.DataFrame:
    """Fewer crypto minutes: fakesnow is slower than DuckDB, and 40 days cover every indicator."""
    crypto_end = rows.window_start.min() + pd.Timedelta(days=40)
    return rows[(rows.symbol != CRYPTO) | (rows.window_start < crypto_end)]


def _normalized(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    frame = frame.rename(columns=str.lower)
    for col in frame.columns:
        if isinstance(frame[col].dtype, pd.DatetimeTZDtype):
            frame[col] = frame[col].dt.tz_convert("UTC").dt.tz_localize(None)
        elif col == "trade_date":
            frame[col] = pd.to_datetime(frame[col])
    return frame.sort_values(keys).reset_index(drop=True)


@pytest.fixture(scope="module")
def both_targets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, pd.DataFrame]]:
    tmp = tmp_path_factory.mktemp("dbt_snowflake")
    loads = generate_loads(nyse_schedule().iloc[:SESSIONS])
    batches = [_smaller(pd.concat([loads.first, loads.second]))]

    db = tmp / "warehouse.duckdb"
    duck_settings = load_settings(warehouse=f"duckdb:///{db}", dbt_target_path=tmp / "duck")
    for batch in batches:
        load_bronze(db, batch)
        transform(duck_settings)
    with duckdb.connect(str(db), read_only=True) as con:
        duck = {
            t: _normalized(con.execute(f"select * from {t}").df(), k) for t, k in TABLES.items()
        }

    sf_settings = emulator_snowflake_settings(tmp / "snowflake")
    with fakesnow.patch():
        from snowflake.connector.pandas_tools import write_pandas

        con = snowflake.connector.connect(
            account="fakesnow", user="loader", password="unused", database="STOCKPIPE"
        )
        con.cursor().execute("create schema if not exists bronze")
        con.cursor().execute(SNOWFLAKE_DDL)
        results = []
        for batch in batches:
            # numbered as load_bronze numbers the DuckDB side's loads: one per _loaded_at
            numbered = batch.assign(_load_seq=batch._loaded_at.rank(method="dense").astype("int64"))
            write_pandas(con, numbered.rename(columns=str.upper), "BARS", schema="BRONZE")
            results.append(transform(sf_settings))
        snow = {
            t: _normalized(con.cursor().execute(f"select * from {t}").fetch_pandas_all(), k)
            for t, k in TABLES.items()
        }
    for result in results:
        assert set(result.status_counts) <= {"success", "pass", "no-op"}, result.status_counts
        print(f"snowflake (fakesnow) dbt build: {result.build_seconds:.1f}s")
    assert (Path(results[-1].target_path) / "catalog.json").exists()
    return {"duckdb": duck, "snowflake": snow}


@pytest.mark.parametrize("table", list(TABLES))
def test_snowflake_target_builds_the_same_table_as_duckdb(
    both_targets: dict[str, dict[str, pd.DataFrame]], table: str
) -> None:
    duck, snow = both_targets["duckdb"][table], both_targets["snowflake"][table]
    assert list(snow.columns) == list(duck.columns)
    assert len(snow) == len(duck) > 0
    for col in duck.columns:
        if pd.api.types.is_numeric_dtype(duck[col]):
            a, b = snow[col].to_numpy(float), duck[col].to_numpy(float)
            assert (np.isnan(a) == np.isnan(b)).all(), col
            assert np.allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-9, atol=1e-12), col
        else:
            a, b = snow[col].astype(object), duck[col].astype(object)
            assert (a.isna() == b.isna()).all(), col
            assert (a[a.notna()].astype(str) == b[b.notna()].astype(str)).all(), col
