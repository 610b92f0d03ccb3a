"""stockpipe_load: new lake files into the warehouse every few minutes, then dbt.

    find_new_files ─► load_batch (mapped: one task per batch of STOCKPIPE_LOAD_BATCH_FILES) ─┐
    load_outages (the outage ledger into bronze.outages) ────────────────────────────────────┴─►
        check_changes (skips what follows when neither loaded anything)
        ─► dbt_build (cosmos task group: one `dbt build --select <node>` task per seed/model)
        ─► source_freshness (stale sources warn and alert, never fail the run)
        ─► publish_marts (outlet: Asset stockpipe://gold/marts)

load_outages upserts the outage ledger (STOCKPIPE_OUTAGE_LOG), its repairs
included, into bronze.outages on every run (`stockpipe load-outages`; cheap, and
a no-op when nothing changed), so silver tells "no data" from "no trade" without a
manual backfill; a repair's backfilled ticks come back as new lake files, so the
dbt build that follows sees both. An outage loaded or repaired with no new lake
file (a repair that found no trade) still runs dbt, which reconciles silver's
no-data minutes, and announces the marts.

Loading is exactly once (the manifest and the rows commit together), so any run,
retry or overlap with `stockpipe load` is safe. When the lake has nothing new and
no outage changed, the load and dbt tasks are skipped, freshness is still checked,
and no asset event is emitted. Everything heavy is imported inside the tasks (see flows/transform/orchestration.py).

Under a real scheduler (LocalExecutor, parallelism > 1), on DuckDB: every task
that opens the warehouse file (find_new_files, load_batch, load_outages, each
dbt node, source_freshness) runs in the one-slot pool `stockpipe_duckdb`, shared with
stockpipe_backfill. DuckDB takes one process per file, so without it parallel dbt
nodes and the other DAG's tasks fail with "Could not set lock on file" and only
get through by retries. A pool, rather than collapsing dbt into one task, because
it also orders the loads and the other DAG's tasks (a single dbt task would
still collide with them), keeps one task, log and retry per model, and costs
nothing on Snowflake, where no pool is set and independent models run in
parallel. The scheduler creates the pool when it is missing (the stockpipe
Airflow plugin); `infra/airflow/pools.sh` sets it explicitly. The dbt task group is
rendered from a manifest built ahead of time
(`make install`, the image build, or `python -m flows.transform.orchestration
manifest`): a missing or stale one is this file's import error naming that
command, and dbt never runs while the file is parsed.

Limits: each task has an `execution_timeout` (orchestration.*_TIMEOUT), a run
`dagrun_timeout` (LOAD_DAGRUN_TIMEOUT, which counts time waiting for the pool),
one active run (`max_active_runs=1`), and at most STOCKPIPE_LOAD_MAX_BATCHES
mapped load tasks, never more than Airflow's max_map_length (the rest waits for
the next run).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from flows.settings import load_settings
from flows.transform import orchestration

SETTINGS = load_settings()
GOLD_MARTS = Asset(orchestration.GOLD_MARTS_URI)


def _skip_if_unchanged(batches: list[list[str]], outages: dict[str, Any]) -> None:
    """Skip the task when no lake file was new and bronze.outages did not change."""
    if not batches and not outages.get("changed"):
        raise AirflowSkipException("no new lake files, no outage change: the marts are current")


@dag(
    dag_id="stockpipe_load",
    schedule=timedelta(seconds=SETTINGS.load_interval),
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=orchestration.LOAD_DAGRUN_TIMEOUT,
    default_args=orchestration.default_args(SETTINGS),
    on_failure_callback=orchestration.on_failure,
    doc_md=__doc__,
    tags=["stockpipe"],
)
def stockpipe_load() -> None:
    @task(**orchestration.warehouse_task_args(SETTINGS, orchestration.FIND_TIMEOUT))
    def find_new_files() -> list[list[str]]:
        """Lake files missing from bronze.load_manifest, in bounded batches."""
        return orchestration.pending_batches(load_settings())

    # One batch at a time: DuckDB takes one writing process, and batches commit oldest first.
    @task(
        max_active_tis_per_dag=1,
        **orchestration.warehouse_task_args(SETTINGS, orchestration.LOAD_BATCH_TIMEOUT),
    )
    def load_batch(files: list[str]) -> dict[str, Any]:
        """Load one batch into bronze.bars (a retry skips files its first try committed)."""
        return orchestration.load_batch(load_settings(), files)

    @task(**orchestration.warehouse_task_args(SETTINGS, orchestration.REFERENCE_TIMEOUT))
    def load_outages() -> dict[str, Any]:
        """The outage ledger into bronze.outages (upserted: a re-run changes nothing)."""
        return orchestration.load_outages(load_settings())

    @task(
        trigger_rule="none_failed",
        **orchestration.warehouse_task_args(SETTINGS, orchestration.FRESHNESS_TIMEOUT),
    )
    def source_freshness() -> list[str]:
        """`dbt source freshness`; runs even when nothing was loaded, since that is when it matters."""
        # none_failed: it runs only when no dbt task failed, so the transform succeeded
        return orchestration.source_freshness(load_settings(), after_dbt=True)

    @task(trigger_rule="none_failed")
    def check_changes(batches: list[list[str]], outages: dict[str, Any]) -> None:
        """Go on to dbt when new lake files were loaded or bronze.outages changed, else skip it."""
        _skip_if_unchanged(batches, outages)

    @task(outlets=[GOLD_MARTS], trigger_rule="none_failed")
    def publish_marts(batches: list[list[str]], outages: dict[str, Any]) -> None:
        """Announce rebuilt gold marts to Asset-scheduled DAGs; skipped when nothing was new."""
        _skip_if_unchanged(batches, outages)
        extra: dict[str, Any] = {"files_loaded": sum(len(batch) for batch in batches)}
        if outages.get("changed"):
            extra["outages_changed"] = outages["changed"]
        get_current_context()["outlet_events"][GOLD_MARTS].extra = extra

    batches = find_new_files()
    loaded = load_batch.expand(files=batches)
    outages = load_outages()
    changes = check_changes(batches, outages)
    dbt_build = orchestration.dbt_task_group(SETTINGS, group_id="dbt_build")
    freshness = source_freshness()
    loaded >> changes >> dbt_build
    dbt_build >> freshness >> publish_marts(batches, outages)


stockpipe_load()
