"""Run one Airflow DAG in-process with `dag.test()`: `python -m flows.transform.run_dag DAG_ID`.

For the demo (and anyone without a scheduler): AIRFLOW_HOME must point at an
initialised metadata database (`airflow db migrate`) and
AIRFLOW__CORE__DAGS_FOLDER at this repo's `dags/`. As a deployment would beforehand,
it first creates the stockpipe pools this Airflow lacks (infra/airflow/pools.sh's)
and builds the dbt manifest the DAG files render dbt from, if it is not current
(`python -m flows.transform.orchestration manifest`). Exits 0 only when the run
succeeded, after printing each task's state.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m flows.transform.run_dag DAG_ID", file=sys.stderr)
        return 2
    from airflow.dag_processing.dagbag import DagBag

    from flows.errors import StockpipeError
    from flows.settings import load_settings
    from flows.transform import orchestration

    for pool in orchestration.create_missing_pools():
        print(f"created the Airflow pool {pool} ({orchestration.pool_command(pool)})")
    try:
        print(f"dbt manifest: {orchestration.build_manifest(load_settings())}")
    except StockpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bag = DagBag()  # examples are off via AIRFLOW__CORE__LOAD_EXAMPLES
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"DAG import error in {path}: {error}", file=sys.stderr)
        return 1
    if argv[0] not in bag.dags:
        print(f"no DAG {argv[0]!r} in the DAG folder (found {sorted(bag.dags)})", file=sys.stderr)
        return 2
    run = bag.dags[argv[0]].test()
    for ti in sorted(run.get_task_instances(), key=lambda t: (t.task_id, t.map_index)):
        index = "" if ti.map_index < 0 else f"[{ti.map_index}]"
        print(f"task {ti.task_id}{index}: {ti.state}")
    print(f"dag run {run.run_id}: {run.state}")
    return 0 if str(run.state) in ("success", "DagRunState.SUCCESS") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
