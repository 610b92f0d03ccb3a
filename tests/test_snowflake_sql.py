"""Every dbt model is valid on real Snowflake by its documentation (contract 3).

fakesnow runs the Snowflake target's SQL on DuckDB, so SQL that Snowflake rejects
but DuckDB accepts passes test_dbt_snowflake.py and fails the first production
`dbt build` (e.g. CORR(...) OVER (... ORDER BY ... ROWS BETWEEN ...)). Here the
project is compiled for the snowflake target (against fakesnow) three times: before
anything is built, after a build and a second load (the incremental branches, with
new rows, a new symbol among them), and after that incremental run (nothing new).
Every compiled model and data test, and the statements the incremental run sent
(its deletes and inserts), must parse as Snowflake SQL (sqlglot, error level RAISE)
and must use none of the constructs listed below, each with the Snowflake
documentation that rules it out.

Incremental cost on Snowflake rests on pruning, and Snowflake prunes on constants
only: "Snowflake does not prune micro-partitions based on a predicate with a
subquery, even if the subquery results in a constant"
(https://docs.snowflake.com/en/user-guide/tables-clustering-micropartitions). So the
incremental SQL must select new rows by `_load_seq` > a number, and each
delete+insert's delete must be bounded by constant trade dates
(`incremental_predicates`), both checked on the SQL dbt compiled and ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlglot
from helpers import emulator_snowflake_settings
from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError
from sqlglot.tokens import TokenType

SF = "https://docs.snowflake.com/en/sql-reference"
_NO_ORDER = "as a window function it supports no ORDER BY in OVER and no window frame"

# Functions whose window form takes only PARTITION BY: each function's "Usage
# notes", and the "Window frame syntax supported" column of {SF}/functions-window.
NO_ORDER_BY_IN_OVER: dict[str, str] = {
    "CORR": f"{SF}/functions/corr: {_NO_ORDER}",
    "COVAR_POP": f"{SF}/functions/covar_pop: {_NO_ORDER}",
    "COVAR_SAMP": f"{SF}/functions/covar_samp: {_NO_ORDER}",
    **{
        f"REGR_{kind}": f"{SF}/functions/regr_{kind.lower()}: {_NO_ORDER}"
        for kind in ("AVGX", "AVGY", "COUNT", "INTERCEPT", "R2", "SLOPE", "SXX", "SXY", "SYY")
    },
    "KURTOSIS": f"{SF}/functions/kurtosis: {_NO_ORDER}",
    "SKEW": f"{SF}/functions/skew: {_NO_ORDER}",
    "MEDIAN": f"{SF}/functions/median: {_NO_ORDER}",
    "MODE": f"{SF}/functions/mode: {_NO_ORDER}",
    "PERCENTILE_CONT": f"{SF}/functions/percentile_cont: OVER takes PARTITION BY only",
    "PERCENTILE_DISC": f"{SF}/functions/percentile_disc: OVER takes PARTITION BY only",
    "LISTAGG": f"{SF}/functions/listagg: the order goes in WITHIN GROUP; OVER takes no "
    "ORDER BY and no window frame",
    "ARRAY_AGG": f"{SF}/functions/array_agg: the order goes in WITHIN GROUP; OVER takes no "
    "ORDER BY and no window frame",
    "OBJECT_AGG": f"{SF}/functions/object_agg: OVER takes PARTITION BY only",
    "ANY_VALUE": f"{SF}/functions/any_value: OVER takes PARTITION BY only",
    "HASH_AGG": f"{SF}/functions/hash_agg: OVER takes PARTITION BY only",
    "APPROX_COUNT_DISTINCT": f"{SF}/functions/approx_count_distinct: OVER takes PARTITION BY only",
    "HLL": f"{SF}/functions/hll: OVER takes PARTITION BY only",
    "APPROX_PERCENTILE": f"{SF}/functions/approx_percentile: OVER takes PARTITION BY only",
    "APPROX_TOP_K": f"{SF}/functions/approx_top_k: OVER takes PARTITION BY only",
    "RATIO_TO_REPORT": f"{SF}/functions/ratio_to_report: no window frame",
    **{
        f"{kind}_AGG": f"{SF}/functions/{kind.lower()}_agg: OVER takes PARTITION BY only"
        for kind in ("BITAND", "BITOR", "BITXOR", "BOOLAND", "BOOLOR", "BOOLXOR")
    },
}

# The only functions that take an explicit window frame ({SF}/functions-window-syntax,
# "Window frame syntax"; {SF}/functions-window lists which functions support it).
# Rank-related functions (ROW_NUMBER, RANK, LAG, LEAD, NTILE, ...) need an ORDER BY
# and take no frame.
FRAME_FUNCTIONS = frozenset(
    {
        "AVG",
        "COUNT",
        "COUNT_IF",
        "MAX",
        "MIN",
        "SUM",
        "STDDEV",
        "STDDEV_POP",
        "STDDEV_SAMP",
        "VARIANCE",
        "VARIANCE_POP",
        "VARIANCE_SAMP",
        "VAR_POP",
        "VAR_SAMP",
        "FIRST_VALUE",
        "LAST_VALUE",
        "NTH_VALUE",
    }
)

# DuckDB functions that have no Snowflake function of that name ({SF}/functions-all),
# with the Snowflake spelling. Matched on the name as written, followed by "(".
DUCKDB_ONLY_FUNCTIONS: dict[str, str] = {
    "STRUCT_PACK": "no such function: OBJECT_CONSTRUCT",
    "STRUCT_EXTRACT": "no such function: GET / obj:field",
    "EPOCH": "no such function: DATE_PART(EPOCH_SECOND, ts)",
    "EPOCH_MS": "no such function: DATE_PART(EPOCH_MILLISECOND, ts) / TO_TIMESTAMP(n, 3)",
    "EPOCH_US": "no such function: DATE_PART(EPOCH_MICROSECOND, ts) / TO_TIMESTAMP(n, 6)",
    "EPOCH_NS": "no such function: DATE_PART(EPOCH_NANOSECOND, ts) / TO_TIMESTAMP(n, 9)",
    "STRFTIME": "no such function: TO_CHAR / TO_VARCHAR with a Snowflake format",
    "STRPTIME": "no such function: TO_TIMESTAMP with a Snowflake format",
    "MAKE_DATE": "no such function: DATE_FROM_PARTS",
    "MAKE_TIMESTAMP": "no such function: TIMESTAMP_FROM_PARTS",
    "TIMEZONE": "no such function (TIMEZONE is a session parameter): CONVERT_TIMEZONE",
    "TIME_BUCKET": "no such function: TIME_SLICE",
    "TODAY": "no such function: CURRENT_DATE",
    "GENERATE_SERIES": "no such table function: TABLE(GENERATOR(ROWCOUNT => n)) or a "
    "digits cross join (macro integer_series)",
    "RANGE": "no RANGE table function: TABLE(GENERATOR(ROWCOUNT => n))",
    "UNNEST": "no such function: LATERAL FLATTEN",
    "READ_PARQUET": "DuckDB file reader: COPY INTO / a stage",
    "READ_CSV": "DuckDB file reader: COPY INTO / a stage",
    "READ_CSV_AUTO": "DuckDB file reader: COPY INTO / a stage",
    "READ_JSON": "DuckDB file reader: COPY INTO / a stage",
    "STRING_AGG": "no such function: LISTAGG",
    "ARG_MIN": "no such function: MIN_BY",
    "ARG_MAX": "no such function: MAX_BY",
    "ARGMIN": "no such function: MIN_BY",
    "ARGMAX": "no such function: MAX_BY",
    "QUANTILE": "no such function: PERCENTILE_CONT / PERCENTILE_DISC",
    "QUANTILE_CONT": "no such function: PERCENTILE_CONT",
    "QUANTILE_DISC": "no such function: PERCENTILE_DISC",
    "REGEXP_MATCHES": "no such function: REGEXP_LIKE",
    "REGEXP_EXTRACT": "no such function: REGEXP_SUBSTR",
    "STRING_SPLIT": "no such function: SPLIT",
    "STR_SPLIT": "no such function: SPLIT",
    "ISNAN": "no such function: compare with 'NaN'::float",
    "ISINF": "no such function: compare with 'inf'::float",
    "ISFINITE": "no such function",
    "ARRAY_LENGTH": "no such function: ARRAY_SIZE",
    "COLUMNS": "DuckDB star expression: list the columns",
}
DUCKDB_ONLY_PREFIXES: dict[str, str] = {
    "LIST_": "DuckDB list functions: Snowflake's ARRAY_* functions",
}

# Data types Snowflake does not have ({SF}/intro-summary-data-types). TIMESTAMPTZ and
# TIMESTAMP WITH TIME ZONE are documented synonyms of TIMESTAMP_TZ, so they pass.
UNSUPPORTED_TYPES: dict[exp.DataType.Type, str] = {
    exp.DataType.Type.INT128: "HUGEINT: no 128-bit integer type (NUMBER(38, 0))",
    exp.DataType.Type.UINT128: "UHUGEINT: no unsigned types",
    exp.DataType.Type.UBIGINT: "UBIGINT: no unsigned types",
    exp.DataType.Type.UINT: "UINTEGER: no unsigned types",
    exp.DataType.Type.USMALLINT: "USMALLINT: no unsigned types",
    exp.DataType.Type.UTINYINT: "UTINYINT: no unsigned types",
    exp.DataType.Type.LIST: "LIST: no list type (ARRAY)",
    exp.DataType.Type.INTERVAL: "INTERVAL: no interval data type (only interval constants)",
}

# Other syntax DuckDB accepts and Snowflake does not.
FILTER_CLAUSE = (
    f"aggregate FILTER (WHERE ...): not in Snowflake's aggregate syntax ({SF}/functions-aggregation);"
    " use COUNT_IF / SUM(IFF(cond, x, NULL))"
)
ASOF_WITHOUT_MATCH_CONDITION = (
    f"ASOF JOIN without MATCH_CONDITION: {SF}/constructs/asof-join requires "
    "MATCH_CONDITION (t1.ts >= t2.ts) with the equalities in ON (DuckDB puts all in ON)"
)
NOT_SNOWFLAKE_SYNTAX = (
    "does not parse as Snowflake SQL (e.g. a named WINDOW clause, which "
    f"{SF}/functions-window-syntax does not have, or a DuckDB-only type)"
)


def _window_function_name(window: exp.Window) -> str:
    """The function an OVER clause applies to, spelled as Snowflake spells it."""
    func = window.this
    while isinstance(func, exp.WithinGroup | exp.IgnoreNulls | exp.RespectNulls):
        func = func.this
    return func.sql(dialect="snowflake").split("(", 1)[0].strip().upper()


def snowflake_violations(sql: str) -> list[str]:
    """Why Snowflake would reject `sql` (empty when it is valid as far as is checked)."""
    try:
        trees = sqlglot.parse(sql, read="snowflake", error_level=ErrorLevel.RAISE)
    except ParseError as error:
        return [f"{NOT_SNOWFLAKE_SYNTAX}: {str(error).splitlines()[0]}"]

    found: list[str] = []
    for tree in filter(None, trees):
        for node in tree.walk():
            if isinstance(node, exp.Window):
                name = _window_function_name(node)
                if node.args.get("order") and name in NO_ORDER_BY_IN_OVER:
                    found.append(
                        f"{name}(...) OVER (... ORDER BY ...): {NO_ORDER_BY_IN_OVER[name]}"
                    )
                elif node.args.get("spec") and name not in FRAME_FUNCTIONS:
                    found.append(
                        f"{name}(...) OVER (... ROWS/RANGE ...): only "
                        f"{', '.join(sorted(FRAME_FUNCTIONS))} take a window frame "
                        f"({SF}/functions-window)"
                    )
            elif isinstance(node, exp.Filter):
                found.append(f"{node.sql(dialect='duckdb')[:80]}: {FILTER_CLAUSE}")
            elif (
                isinstance(node, exp.Join)
                and str(node.args.get("method") or "").upper() == "ASOF"
                and not node.args.get("match_condition")
            ):
                found.append(ASOF_WITHOUT_MATCH_CONDITION)
            elif isinstance(node, exp.DataType) and node.this in UNSUPPORTED_TYPES:
                found.append(f"type {UNSUPPORTED_TYPES[node.this]}")

    tokens = sqlglot.tokenize(sql, read="snowflake")
    for token, following in zip(tokens, tokens[1:], strict=False):
        if following.token_type != TokenType.L_PAREN or token.token_type in (
            TokenType.STRING,
            TokenType.IDENTIFIER,  # a quoted name
        ):
            continue
        name = token.text.upper()
        if name in DUCKDB_ONLY_FUNCTIONS:
            found.append(f"{name}(: DuckDB only, {DUCKDB_ONLY_FUNCTIONS[name]}")
        for prefix, reason in DUCKDB_ONLY_PREFIXES.items():
            if name.startswith(prefix):
                found.append(f"{name}(: {reason}")
    return found


# --- the checker itself: it must fail on each known mistake and pass valid SQL ---------

OLD_ROLLING_CORR = """
select
    corr(log_return_a, log_return_b) over (
        partition by symbol_a, symbol_b order by trade_date
        rows between 19 preceding and current row
    ) as correlation
from pair_returns
"""

BAD_SNIPPETS = {
    "old rolling corr": (OLD_ROLLING_CORR, "CORR(...) OVER (... ORDER BY"),
    "covar_samp ordered": (
        "select covar_samp(x, y) over (partition by s order by d) from t",
        "COVAR_SAMP",
    ),
    "regr_slope framed": (
        "select regr_slope(y, x) over (partition by s order by d rows 5 preceding) from t",
        "REGR_SLOPE",
    ),
    "median framed": (
        "select median(x) over (partition by s order by d rows between 4 preceding and "
        "current row) from t",
        "MEDIAN",
    ),
    "percentile_cont ordered": (
        "select percentile_cont(0.5) within group (order by x) over (partition by s order by d) "
        "from t",
        "PERCENTILE_CONT",
    ),
    "listagg framed": (
        "select listagg(x, ',') within group (order by d) over (partition by s order by d "
        "rows between 2 preceding and current row) from t",
        "LISTAGG",
    ),
    "row_number framed": (
        "select row_number() over (partition by s order by d rows between unbounded preceding "
        "and current row) from t",
        "only AVG",
    ),
    "filter clause": ("select count(*) filter (where x > 0) from t", "FILTER"),
    "named window": (
        "select sum(x) over w from t window w as (partition by s order by d)",
        "does not parse",
    ),
    "duckdb asof join": (
        "select * from t asof join u on t.s = u.s and t.d >= u.d",
        "MATCH_CONDITION",
    ),
    "generate_series": ("select * from generate_series(1, 10)", "GENERATE_SERIES("),
    "range": ("select * from range(10)", "RANGE("),
    "strftime": ("select strftime(d, '%Y-%m') from t", "STRFTIME("),
    "epoch_ms": ("select epoch_ms(1700000000000) from t", "EPOCH_MS("),
    "list function": ("select list_sum(xs) from t", "LIST_SUM("),
    "struct_pack": ("select struct_pack(a := 1) from t", "STRUCT_PACK("),
    "timezone": ("select timezone('America/New_York', ts) from t", "TIMEZONE("),
    "hugeint": ("select cast(x as hugeint) from t", "HUGEINT"),
}

GOOD_SNIPPETS = {
    "rolling sums": """
        select
            count(x) over (partition by s order by d rows between 19 preceding and current row),
            sum(x * y) over (partition by s order by d rows between 19 preceding and current row),
            avg(x) over (partition by s order by d rows 4 preceding),
            stddev_samp(x) over (partition by s order by d rows between 19 preceding and current row)
        from t
    """,
    "corr without order": "select corr(x, y) over (partition by s) from t",
    "qualify": "select * from t qualify row_number() over (partition by s order by d desc) = 1",
    "snowflake functions": """
        select iff(a, 1, 2), min_by(a, b), max_by(a, b), count_if(a),
            dateadd(minute, 1, ts), datediff(day, ts, ts2), convert_timezone('UTC', ts),
            to_date(convert_timezone('America/New_York', ts)), ts::timestamptz,
            cast(ts as timestamp with time zone), first_value(x) over (partition by s order by d
            rows between unbounded preceding and current row), lag(x) over (partition by s order by d)
        from t
    """,
    "percentile_cont by partition": (
        "select percentile_cont(0.5) within group (order by x) over (partition by s) from t"
    ),
    "snowflake asof join": (
        "select * from t asof join u match_condition (t.d >= u.d) on t.s = u.s"
    ),
    "names in strings and columns": "select 'range(1)' as \"RANGE\", range from t",
}


@pytest.mark.parametrize("snippet,expected", BAD_SNIPPETS.values(), ids=list(BAD_SNIPPETS))
def test_checker_flags_sql_snowflake_rejects(snippet: str, expected: str) -> None:
    found = snowflake_violations(snippet)
    assert any(expected in violation for violation in found), found


@pytest.mark.dbt
@pytest.mark.parametrize("snippet", GOOD_SNIPPETS.values(), ids=list(GOOD_SNIPPETS))
def test_checker_passes_valid_snowflake_sql(snippet: str) -> None:
    assert snowflake_violations(snippet) == []


# --- the project, compiled for the snowflake target -----------------------------------


def _invoke(target_path: Path, command: list[str]):
    from flows.transform.dbt_runner import dbt_session, invoke

    settings = emulator_snowflake_settings(target_path)
    with dbt_session(settings, target_path) as common:
        # One thread: dbt's parallel connections would race to create the same schema
        # in the emulator (a DuckDB catalog write-write conflict), not in Snowflake.
        outcome = invoke([*command, "--threads", "1"], common)
    assert outcome.success, f"dbt {command[0]} failed on the snowflake target: {outcome.exception}"
    return outcome


def _compile(target_path: Path, command: str = "compile") -> dict[str, tuple[str, str, str, str]]:
    """`dbt compile` (or `build`: each node compiled when its turn comes, after what it
    reads was built) on the snowflake target: unique_id -> (materialization, schema,
    name, SQL)."""
    outcome = _invoke(target_path, [command])
    return {
        r.node.unique_id: (
            getattr(r.node.config, "materialized", ""),
            r.node.schema,
            r.node.alias,
            r.node.compiled_code,
        )
        for r in outcome.result.results
        if r.node.resource_type in ("model", "test") and r.node.compiled_code
    }


def _bronze_batches():
    """Two loads of bars: five sessions, then the sixth with a symbol new in it."""
    import pandas as pd
    from test_dbt_transform import BRONZE_COLUMNS, generate_loads, nyse_schedule

    schedule = nyse_schedule().iloc[:6]
    loads = generate_loads(schedule)
    rows = pd.concat([loads.first, loads.second])
    cut = schedule.market_open.iloc[-1] - pd.Timedelta(hours=6)
    first, second = rows[rows.window_start < cut], rows[rows.window_start >= cut]
    newcomer = second[second.symbol == "AAA"].assign(symbol="CCC")
    second = pd.concat([second, newcomer]).assign(_loaded_at=pd.Timestamp("2025-06-01", tz="UTC"))
    return [
        batch[BRONZE_COLUMNS].assign(_load_seq=seq) for seq, batch in enumerate((first, second), 1)
    ]


# The outage ledger, which arrives after the first build (its loader is newer than the
# warehouse): the first compile reads no bronze.outages, the later ones read it, and
# silver's incremental run reconciles the minutes inside its outages.
OUTAGES_DDL = """
create table if not exists bronze.outages (
    outage_id varchar, symbol varchar, start_ts timestamp_tz, end_ts timestamp_tz,
    source varchar, reason varchar, repaired boolean, repaired_via varchar,
    repaired_at timestamp_tz, _loaded_at timestamp_tz
)
"""


def _outage_rows() -> str:
    """An unrepaired outage of AAA's over its second session, an open one of BBB's."""
    import pandas as pd
    from test_dbt_transform import nyse_schedule

    opens = nyse_schedule().market_open
    start, end = opens.iloc[1], opens.iloc[1] + pd.Timedelta(minutes=390)
    loaded = "'2025-06-01 00:00:00+00:00'"
    return (
        "insert into bronze.outages values "
        f"('o1', 'AAA', '{start.isoformat()}', '{end.isoformat()}', 'finnhub-ws', "
        f"'disconnected', false, null, null, {loaded}), "
        f"('o2', 'BBB', '{opens.iloc[2].isoformat()}', null, 'kafka-producer', "
        f"'undelivered', false, null, null, {loaded})"
    )


@pytest.fixture(scope="module")
def snowflake_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Every model and data test as compiled for Snowflake (first, incremental and
    nothing-new runs), and the SQL the incremental run sent for each model."""
    import snowflake.connector
    from snowflake_emulator import emulated_snowflake
    from test_dbt_incremental import SNOWFLAKE_DDL

    tmp = tmp_path_factory.mktemp("snowflake_sql")
    first_batch, second_batch = _bronze_batches()
    with emulated_snowflake():
        from snowflake.connector.pandas_tools import write_pandas

        # One connection of our own for the whole session: fakesnow attaches the
        # database once, and dbt's connections come and go around it.
        con = snowflake.connector.connect(
            account="fakesnow", user="dbt", password="unused", database="STOCKPIPE"
        )
        con.cursor().execute("create schema if not exists bronze")
        con.cursor().execute(SNOWFLAKE_DDL)
        write_pandas(con, first_batch.rename(columns=str.upper), "BARS", schema="BRONZE")
        first = _compile(tmp / "first")
        _invoke(tmp / "build", ["build"])
        con.cursor().execute(OUTAGES_DDL)
        con.cursor().execute(_outage_rows())
        write_pandas(con, second_batch.rename(columns=str.upper), "BARS", schema="BRONZE")
        # With the incremental models' tables present, is_incremental() is true; each
        # model compiles as the models before it have taken the new rows in.
        second = _compile(tmp / "incremental", "build")
        nothing_new = _compile(tmp / "nothing-new")
        con.close()
    incremental = {uid: node for uid, node in first.items() if node[0] == "incremental"}
    assert incremental, "no incremental models found: the second compile would test nothing"
    changed = [uid for uid, node in incremental.items() if second[uid][3] != node[3]]
    assert changed == list(incremental), (
        f"is_incremental() stayed false for {set(incremental) - set(changed)}: "
        "their incremental SQL was not compiled"
    )
    compiled = {f"{uid} (first run)": node[3] for uid, node in first.items()}
    compiled |= {f"{uid} (incremental run)": second[uid][3] for uid in second}
    compiled |= {f"{uid} (nothing new)": nothing_new[uid][3] for uid in nothing_new}
    ran = {}
    for uid, (_, _, name, _) in incremental.items():
        (path,) = (tmp / "incremental" / "run").rglob(f"{name}.sql")
        ran[uid] = path.read_text()
    return {"compiled": compiled, "ran": ran, "incremental": sorted(incremental)}


@pytest.fixture(scope="module")
def compiled(snowflake_runs: dict) -> dict[str, str]:
    return snowflake_runs["compiled"]


@pytest.mark.slow
def test_every_model_compiles_for_snowflake(compiled: dict[str, str]) -> None:
    models = {name for name in compiled if name.startswith("model.")}
    for expected in ("fct_bars_1m", "fct_bars_daily", "mart_correlation_daily"):
        assert any(f".{expected} " in name for name in models), sorted(models)


@pytest.mark.slow
def test_every_compiled_model_and_test_is_valid_snowflake_sql(compiled: dict[str, str]) -> None:
    problems = {
        name: found for name, sql in compiled.items() if (found := snowflake_violations(sql))
    }
    assert not problems, "\n".join(
        f"{name}:\n  " + "\n  ".join(found) for name, found in sorted(problems.items())
    )


@pytest.mark.slow
def test_the_statements_an_incremental_run_sends_are_valid_snowflake_sql(
    snowflake_runs: dict,
) -> None:
    problems = {
        uid: found
        for uid, sql in snowflake_runs["ran"].items()
        if (found := snowflake_violations(sql))
    }
    assert not problems, problems


# --- incremental cost: constants where Snowflake prunes ---------------------------------


def _is_constant(node: exp.Expression) -> bool:
    """A literal, or casts / date arithmetic of literals only: no column, no subquery."""
    return not any(
        isinstance(n, exp.Column | exp.Subquery | exp.Select) for n in node.walk()
    ) and any(isinstance(n, exp.Literal) for n in node.walk())


def unbounded_deletes(sql: str, column: str = "trade_date") -> list[str]:
    """Each DELETE in `sql` whose WHERE does not bound the target's `column` by constants
    from below and from above (ANDed with the rest), with what it lacks."""
    found = []
    for tree in sqlglot.parse(sql, read="snowflake", error_level=ErrorLevel.RAISE):
        for delete in tree.find_all(exp.Delete) if tree else []:
            where = delete.args.get("where")
            conjuncts = (
                list(where.this.flatten())
                if where and isinstance(where.this, exp.And)
                else ([where.this] if where else [])
            )
            bounds = set()
            for node in conjuncts:
                for kind, ops in (("lower", (exp.GTE, exp.GT)), ("upper", (exp.LTE, exp.LT))):
                    if (
                        isinstance(node, ops)
                        and isinstance(node.this, exp.Column)
                        and (node.this.name.lower() == column)
                        and _is_constant(node.expression)
                    ):
                        bounds.add(kind)
            missing = {"lower", "upper"} - bounds
            if missing:
                found.append(
                    f"{delete.sql(dialect='snowflake')[:160]}...: no constant "
                    f"{' and '.join(sorted(missing))} bound on {column}"
                )
    return found


def non_constant_load_seq_filters(sql: str) -> tuple[int, list[str]]:
    """(how many `_load_seq > x` filters `sql` has, the ones whose x is not a constant)."""
    count, found = 0, []
    for tree in sqlglot.parse(sql, read="snowflake", error_level=ErrorLevel.RAISE):
        for node in tree.find_all(exp.GT, exp.GTE) if tree else []:
            if isinstance(node.this, exp.Column) and node.this.name.lower() == "_load_seq":
                count += 1
                if not _is_constant(node.expression):
                    found.append(node.sql(dialect="snowflake"))
    return count, found


OLD_DELETE = """
delete from STOCKPIPE.silver.fct_bars_1m as DBT_INTERNAL_DEST
where (symbol, window_start) in (
    select distinct symbol, window_start from STOCKPIPE.silver.fct_bars_1m__dbt_tmp as DBT_INTERNAL_SOURCE
);
"""
SUBQUERY_BOUND_DELETE = """
delete from t as DBT_INTERNAL_DEST
where (symbol, trade_date) in (select distinct symbol, trade_date from t__dbt_tmp)
    and DBT_INTERNAL_DEST.trade_date >= (select min(trade_date) from t__dbt_tmp)
    and DBT_INTERNAL_DEST.trade_date <= (select max(trade_date) from t__dbt_tmp);
"""
BOUNDED_DELETE = """
begin;
delete from t as DBT_INTERNAL_DEST
where (symbol, trade_date) in (select distinct symbol, trade_date from t__dbt_tmp)
    and DBT_INTERNAL_DEST.trade_date >= cast('2025-01-08' as date)
    and DBT_INTERNAL_DEST.trade_date <= cast('2025-01-10' as date);
insert into t (symbol, trade_date) (select symbol, trade_date from t__dbt_tmp);
commit;
"""
OLD_NEW_ROWS_FILTER = """
with previous_run as (select max(_load_seq) as load_seq from silver.fct_bars_1m)
select bars.symbol from stg as bars cross join previous_run
where previous_run.load_seq is null or bars._load_seq > previous_run.load_seq
"""


def test_the_delete_checker_flags_unbounded_and_subquery_bounded_deletes() -> None:
    assert unbounded_deletes(OLD_DELETE)
    assert unbounded_deletes(SUBQUERY_BOUND_DELETE)
    assert unbounded_deletes(BOUNDED_DELETE) == []
    assert non_constant_load_seq_filters(OLD_NEW_ROWS_FILTER) == (
        1,
        ["bars._load_seq > previous_run.load_seq"],
    )
    assert non_constant_load_seq_filters("select * from t where _load_seq > 41") == (1, [])


@pytest.mark.slow
def test_every_delete_insert_delete_is_bounded_by_constant_trade_dates(
    snowflake_runs: dict,
) -> None:
    ran = snowflake_runs["ran"]
    assert set(ran) == set(snowflake_runs["incremental"])
    problems = {}
    for uid, sql in ran.items():
        assert "delete from" in sql.lower(), f"{uid}: the incremental run sent no delete"
        if found := unbounded_deletes(sql):
            problems[uid] = found
    assert not problems, problems


@pytest.mark.slow
def test_incremental_runs_select_new_rows_by_a_constant_load_sequence(
    snowflake_runs: dict,
) -> None:
    compiled = snowflake_runs["compiled"]
    for uid in snowflake_runs["incremental"]:
        count, found = non_constant_load_seq_filters(compiled[f"{uid} (incremental run)"])
        assert count > 0, f"{uid}: its incremental SQL selects nothing by _load_seq"
        assert not found, f"{uid}: _load_seq compared with a non-constant: {found}"
