"""stockpipe_publish: the dbt docs and the HTML report, each time the marts change.

    generate_docs ─► build_report

Scheduled on the Asset stockpipe://gold/marts, which stockpipe_load emits when it
loaded new files and stockpipe_backfill after every backfill, so the docs and
the report follow the marts without rebuilding them when nothing changed.
`generate_docs` runs `dbt docs generate` into STOCKPIPE_DBT_TARGET_PATH (what
compose's dbt-docs server serves); `build_report` writes STOCKPIPE_REPORT_PATH
(compose's report server), replacing the file whole. On DuckDB both open the
warehouse, so they run in the one-slot pool `stockpipe_duckdb` with the loads;
on Snowflake the report, which reads DuckDB only, is skipped with the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Asset, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from flows.settings import load_settings
from flows.transform import orchestration

SETTINGS = load_settings()
GOLD_MARTS = Asset(orchestration.GOLD_MARTS_URI)


@dag(
    dag_id="stockpipe_publish",
    schedule=[GOLD_MARTS],
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=orchestration.default_args(SETTINGS),
    on_failure_callback=orchestration.on_failure,
    doc_md=__doc__,
    tags=["stockpipe"],
)
def stockpipe_publish() -> None:
    @task(**orchestration.warehouse_task_args(SETTINGS, orchestration.PUBLISH_TIMEOUT))
    def generate_docs() -> str:
        """`dbt docs generate`: lineage and the catalog of the marts as they now are."""
        return orchestration.publish_docs(load_settings())

    @task(**orchestration.warehouse_task_args(SETTINGS, orchestration.PUBLISH_TIMEOUT))
    def build_report() -> str:
        """The HTML report: candlesticks, trend, volatility, correlations, data quality."""
        from flows.report import unsupported

        settings = load_settings()
        reason = unsupported(settings)
        if reason:
            raise AirflowSkipException(reason)
        from flows.report.html import build_report  # the report's libraries: only here

        return str(build_report(settings))  # replaced whole: readers never see half a file

    generate_docs() >> build_report()


stockpipe_publish()
