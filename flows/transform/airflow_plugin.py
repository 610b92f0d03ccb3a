"""The stockpipe Airflow plugin: the scheduler creates the pools the DAGs need.

The DuckDB tasks of both DAGs run in the pool `stockpipe_duckdb`
(orchestration.POOLS). In an Airflow where nobody created it, the scheduler never
queues them: the run waits forever behind a scheduler warning ("Tasks using
non-existent pool"). Neither a task nor a DAG file can look at the pools, because
Airflow 3 gives task and DAG-parse processes no metadata database
(AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is `airflow-db-not-allowed:///` there). The
scheduler has one, so this plugin's listener does the work there:

- `on_starting(component)`, called by every Airflow Job as it is built
  (airflow/jobs/job.py: scheduler, triggerer, dag processor) and by every task
  process (task_runner.py, with a `TaskRunnerMarker`): for the scheduler's Job
  only, it creates each pool of POOLS that does not exist and logs a WARNING per
  pool created, naming it and the `airflow pools set …` command that sets it by
  hand. Airflow 3.3 calls the hook in `Job.__init__`, before the SchedulerJobRunner
  stamps `job_type` on the Job, so the scheduler is recognised by `job_type ==
  "SchedulerJob"` or, while it is still unset, by the scheduler command
  (airflow.cli.commands.scheduler_command) being on the call stack. Anything that
  is not an `airflow.jobs.job.Job` (a task process) returns at once, touching no
  database and importing nothing.
- `on_dag_run_running(dag_run, msg)`, called by the scheduler as it starts a
  queued run (SchedulerJobRunner._start_queued_dagruns): if the run's DAG has a
  task in a pool of POOLS that no longer exists (deleted while the scheduler
  ran), it creates it, with the same WARNING. DAGs that use none of those pools
  cost nothing (no query). The hook runs inside the scheduler's scheduling
  transaction (a `prohibit_commit` guard on the thread-scoped session, dag_run
  rows locked), so it never uses that session: Airflow's `create_session()`
  would hand back the same scoped session, and committing or closing it would
  break the scheduler's transaction. It reads and writes in a session of its own
  (`create_session(scoped=False)`, another connection) and commits that. On
  PostgreSQL and MySQL that cannot deadlock with the scheduler's transaction:
  inserting a new `slot_pool` row waits on no lock the scheduler holds (it locks
  dag_run and dag rows here, and pool rows only later, in its critical section).
  On SQLite (one writer per file) the insert waits at most SQLite's busy timeout
  if the scheduler's transaction has already written, then fails: that is caught
  and logged as an ERROR naming the pool and its command, the scheduler goes on,
  and the next run's start (or the scheduler's restart) creates the pool.

Two schedulers (HA) may both find a pool missing: one insert wins, the other fails
on the unique pool name, which is caught; a re-read then finds the pool and logs
that another process created it. No error of this module ever reaches Airflow (a
failure is logged with the pool and the command), so it cannot crash the scheduler.

Registered through the package's entry point (pyproject.toml,
`[project.entry-points."airflow.plugins"]`): an installed stockpipe is loaded by
every Airflow component without configuration. `infra/airflow/pools.sh` still sets
the pools explicitly, and a pool that exists is never changed here.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)

SCHEDULER_JOB_TYPE = "SchedulerJob"
SCHEDULER_COMMAND_MODULE = "airflow.cli.commands.scheduler_command"
NO_DATABASE_PREFIX = "airflow-db-not-allowed"


def is_scheduler(component: Any) -> bool:
    """True only for the scheduler's Job (see the module docstring for how)."""
    job_module = sys.modules.get("airflow.jobs.job")  # never imported by a task process
    job_class = getattr(job_module, "Job", None)
    if job_class is None or not isinstance(component, job_class):
        return False
    job_type = getattr(component, "job_type", None)
    if job_type:
        return job_type == SCHEDULER_JOB_TYPE
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == SCHEDULER_COMMAND_MODULE:
            return True
        frame = frame.f_back
    return False


def has_database() -> bool:
    """Whether this process may use Airflow's metadata database."""
    from airflow.configuration import conf

    url = conf.get("database", "sql_alchemy_conn", fallback="") or ""
    return bool(url) and not url.startswith(NO_DATABASE_PREFIX)


def ensure_pools(names: Iterable[str], where: str) -> list[str]:
    """Create those of `names` that are missing; log each created or failed. Never raises."""
    from flows.transform import orchestration

    wanted = [name for name in names if name in orchestration.POOLS]
    try:
        created = orchestration.create_missing_pools(wanted)
    except Exception as exc:
        try:
            missing = orchestration.missing_pools(wanted)
        except Exception:
            missing = wanted
        if not missing:
            log.info("stockpipe (%s): the pools %s were created by another process", where, wanted)
            return []
        for name in missing:
            log.error(
                "stockpipe (%s): could not create the missing Airflow pool %s (%s: %s); its tasks"
                " will not be scheduled until it exists. Create it with: %s",
                where,
                name,
                type(exc).__name__,
                exc,
                orchestration.pool_command(name),
            )
        return []
    for name in created:
        log.warning(
            "stockpipe (%s): created the missing Airflow pool %s with %s slot(s); without it its"
            " tasks would never be scheduled. To set it by hand: %s",
            where,
            name,
            orchestration.POOLS[name][0],
            orchestration.pool_command(name),
        )
    return created


def pools_of(dag: Any) -> list[str]:
    """The pools of POOLS that tasks of `dag` (a DAG or SerializedDAG) run in."""
    from flows.transform.orchestration import POOLS

    return sorted({task.pool for task in dag.tasks if getattr(task, "pool", None) in POOLS})


@hookimpl
def on_starting(component: Any) -> None:
    try:
        if not is_scheduler(component):
            return
        from flows.transform.orchestration import POOLS

        ensure_pools(POOLS, "scheduler start")
    except Exception:
        log.exception("stockpipe: the pool check at scheduler start failed")


@hookimpl
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    try:
        dag = getattr(dag_run, "dag", None)
        needed = pools_of(dag) if dag is not None else []
        if not needed or not has_database():
            return
        ensure_pools(needed, f"run {dag_run.run_id} of {dag_run.dag_id}")
    except Exception:
        log.exception(
            "stockpipe: the pool check of run %s of %s failed",
            getattr(dag_run, "run_id", "?"),
            getattr(dag_run, "dag_id", "?"),
        )


class StockpipePlugin(AirflowPlugin):
    """Creates the Airflow pools the stockpipe DAGs need, from the scheduler."""

    name = "stockpipe"
    listeners = [sys.modules[__name__]]
