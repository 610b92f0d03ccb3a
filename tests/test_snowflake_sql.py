"""Every dbt model is valid on real Snowflake by its documentation (contract 3).

fakesnow runs the Snowflake target's SQL on DuckDB, so SQL that Snowflake rejects
but DuckDB accepts passes test_dbt_snowflake.py and fails the first production
`dbt build` (e.g. CORR(...) OVER (... ORDER BY ... ROWS BETWEEN ...)). Here the
project is compiled for the snowflake target (against fakesnow, for dbt's
introspection only), twice: on an empty database, and with the incremental
models' tables present, so both branches of every `is_incremental()` render.
Every compiled model and data test must parse as Snowflake SQL (sqlglot,
error level RAISE) and must use none of the constructs listed below, each with
the Snowflake documentation that rules it out.
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


def _compile(target_path: Path) -> dict[str, tuple[str, str, str, str]]:
    """`dbt compile` on the snowflake target: unique_id -> (materialization, schema, name, SQL)."""
    from flows.transform.dbt_runner import dbt_session, invoke

    settings = emulator_snowflake_settings(target_path)
    with dbt_session(settings, target_path) as common:
        # One thread: dbt's parallel connections would race to create the same schema
        # in the emulator (a DuckDB catalog write-write conflict), not in Snowflake.
        outcome = invoke(["compile", "--threads", "1"], common)
    assert outcome.success, f"dbt compile failed on the snowflake target: {outcome.exception}"
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


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every model and data test as compiled for Snowflake, first and incremental runs."""
    import fakesnow
    import snowflake.connector

    tmp = tmp_path_factory.mktemp("snowflake_sql")
    with fakesnow.patch():
        # One connection of our own for the whole session: fakesnow attaches the
        # database once, and dbt's connections come and go around it.
        con = snowflake.connector.connect(
            account="fakesnow", user="dbt", password="unused", database="STOCKPIPE"
        )
        first = _compile(tmp / "first")
        # With the incremental models' tables present, is_incremental() is true.
        incremental = {uid: node for uid, node in first.items() if node[0] == "incremental"}
        assert incremental, "no incremental models found: the second compile would test nothing"
        for _, schema, name, _ in incremental.values():
            con.cursor().execute(f"create schema if not exists {schema}")
            con.cursor().execute(f"create table if not exists {schema}.{name} (_unused integer)")
        second = _compile(tmp / "incremental")
        con.close()
    changed = [uid for uid, node in incremental.items() if second[uid][3] != node[3]]
    assert changed == list(incremental), (
        f"is_incremental() stayed false for {set(incremental) - set(changed)}: "
        "their incremental SQL was not compiled"
    )
    sql = {f"{uid} (first run)": node[3] for uid, node in first.items()}
    sql |= {f"{uid} (incremental run)": second[uid][3] for uid in changed}
    return sql


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
