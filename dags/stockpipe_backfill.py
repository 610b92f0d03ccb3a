"""stockpipe_backfill: load a date range's missing lake files, then rebuild the models.

Triggered by hand with `start_date` and `end_date` (inclusive, YYYY-MM-DD, lake
partition dates in UTC) and optionally `full_refresh`:

    check_range ─┬─► backfill_outages ─┬─► load_outages ──────────────────────────────┐
                 │                     └─► find_missing_files ─► load_batch (mapped) ─┼─► dbt_build ─► publish_marts
                 └─► fetch_splits ────────────────────────────────────────────────────┘

backfill_outages first refetches from Finnhub's REST API what the outage
ledger lists as missing inside the range (`stockpipe backfill-outages`, the
same code): the ticks go to Kafka, so they reach the lake through the stream
(a later run or the scheduled load picks up those files). Without
FINNHUB_API_KEY it only logs what it would fetch. load_outages then loads the
whole ledger, its repairs included, into bronze.outages (`stockpipe
load-outages`; upserted by outage and symbol, so entries rotated out of the file
stay), and fetch_splits fetches every configured symbol's splits from Finnhub's
`/stock/split` into bronze.splits (`stockpipe fetch-splits`; crypto pairs
skipped), which stg_splits prefers to the seed. Splits are fetched here, whenever
a backfill is triggered, and by `stockpipe fetch-splits` (e.g. from cron): no
scheduled DAG fetches them. Without FINNHUB_API_KEY the task logs that and
fetches nothing. The dbt build waits for all three, so silver and the adjusted
marts see them.

It loads only the files of those partitions that bronze.load_manifest does not
hold (files already loaded are never loaded twice). The models then rebuild what
the range changed: they are incremental on the bronze *load time*, so silver
rebuilds each affected symbol from the last real bar before the earliest newly
loaded bar, and gold recomputes the affected days and the indicators after them,
however old the range is. `full_refresh=true` rebuilds every model from all of
bronze instead (`dbt build --full-refresh`), e.g. after a model's logic changed.
dbt runs even when no file was missing, so a backfill is also a way to re-run dbt.

On DuckDB every task that opens the warehouse (load_outages, fetch_splits,
find_missing_files, load_batch, each dbt node) runs in the one-slot pool `stockpipe_duckdb` it shares with
stockpipe_load, so the two DAGs can run together without fighting over the file
lock (why a pool and not one dbt task, and what a missing dbt manifest does:
see stockpipe_load). Limits: task
`execution_timeout`s, `dagrun_timeout` BACKFILL_DAGRUN_TIMEOUT, one active run,
and at most STOCKPIPE_LOAD_MAX_BATCHES (and max_map_length) mapped load tasks
(larger batches rather than fewer files). One run loads at most the loader's
run's worth of files (STOCKPIPE_LOAD_MAX_BATCHES x STOCKPIPE_LOAD_BATCH_FILES,
oldest first; a warning in find_missing_files says so): run it again for more.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import Asset, Param, dag, get_current_context, task

from flows.settings import load_settings
from flows.transform import orchestration

SETTINGS = load_settings()
GOLD_MARTS = Asset(orchestration.GOLD_MARTS_URI)


@dag(
    dag_id="stockpipe_backfill",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=orchestration.BACKFILL_DAGRUN_TIMEOUT,
    default_args=orchestration.default_args(SETTINGS),
    on_failure_callback=orchestration.on_failure,
    params={
        "start_date": Param(
            type="string", format="date", description="First lake partition date (YYYY-MM-DD)."
        ),
        "end_date": Param(
            type="string", format="date", description="Last lake partition date, inclusive."
        ),
        "full_refresh": Param(
            False, type="boolean", description="Rebuild every model from all of bronze."
        ),
    },
    doc_md=__doc__,
    tags=["stockpipe"],
)
def stockpipe_backfill() -> None:
    @task(retries=0)
    def check_range(start: str, end: str) -> list[str]:
        """The range as [first, last] ISO dates; a bad range fails here with what to fix."""
        first, last = orchestration.parse_date_range(start, end)
        return [first.isoformat(), last.isoformat()]

    @task(retries=1)
    def backfill_outages(day_range: list[str]) -> dict[str, Any]:
        """The ledger's unrepaired outages inside the range, refetched into Kafka."""
        from dataclasses import asdict

        from flows.ingest.backfill import backfill_outages as run

        settings = load_settings()
        first, last = day_range
        dry_run = settings.finnhub_api_key is None
        report = run(settings, since=first, until=f"{last}T23:59:59.999+00:00", dry_run=dry_run)
        if report.failed:
            raise RuntimeError(f"{report.failed} outage backfills failed: see the task log")
        return {k: v for k, v in asdict(report).items() if k != "jobs"} | {"jobs": len(report.jobs)}

    @task(**orchestration.warehouse_task_args(SETTINGS, orchestration.REFERENCE_TIMEOUT))
    def load_outages() -> dict[str, Any]:
        """The outage ledger, repairs included, into bronze.outages (safe to re-run)."""
        return orchestration.load_outages(load_settings())

    @task(**orchestration.warehouse_task_args(SETTINGS, orchestration.REFERENCE_TIMEOUT))
    def fetch_splits() -> dict[str, Any]:
        """Finnhub's splits of the configured symbols into bronze.splits (skipped without a key)."""
        return orchestration.fetch_splits(load_settings())

    @task(**orchestration.warehouse_task_args(SETTINGS, orchestration.FIND_TIMEOUT))
    def find_missing_files(day_range: list[str]) -> list[list[str]]:
        first, last = orchestration.parse_date_range(*day_range)
        return orchestration.missing_batches(load_settings(), first, last)

    @task(
        max_active_tis_per_dag=1,
        **orchestration.warehouse_task_args(SETTINGS, orchestration.LOAD_BATCH_TIMEOUT),
    )
    def load_batch(files: list[str]) -> dict[str, Any]:
        return orchestration.load_batch(load_settings(), files)

    @task(outlets=[GOLD_MARTS])
    def publish_marts(day_range: list[str]) -> None:
        """Announce the rebuilt gold marts to Asset-scheduled DAGs, naming the range."""
        context = get_current_context()
        context["outlet_events"][GOLD_MARTS].extra = {
            "backfill": day_range,
            "full_refresh": str(context["params"]["full_refresh"]).lower() == "true",
        }

    day_range = check_range("{{ params.start_date }}", "{{ params.end_date }}")
    missing = find_missing_files(day_range)
    backfilled = backfill_outages(day_range)
    outages = load_outages()
    splits = fetch_splits()
    backfilled >> [missing, outages]
    day_range >> splits
    loaded = load_batch.expand(files=missing)
    dbt_build = orchestration.dbt_task_group(
        SETTINGS,
        group_id="dbt_build",
        full_refresh="{{ params.full_refresh }}",
        # also when no file was missing (the mapped load is then skipped)
        trigger_rule="none_failed",
    )
    [loaded, outages, splits] >> dbt_build
    dbt_build >> publish_marts(day_range)


stockpipe_backfill()
