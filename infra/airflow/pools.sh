#!/usr/bin/env bash
# Create (or update) the Airflow pools the stockpipe DAGs use. Idempotent; run it
# once after `airflow db migrate` (with the deployment's AIRFLOW_HOME / metadata DB).
#
# stockpipe_duckdb (1 slot): on a DuckDB warehouse every task of stockpipe_load and
# stockpipe_backfill that opens the warehouse file takes this one slot, because
# DuckDB lets one process at a time open a database file. Without the pool those
# tasks would never be scheduled ("Tasks using non-existent pool"); the stockpipe
# Airflow plugin (flows/transform/airflow_plugin.py) makes the scheduler create it
# when missing, and never changes one that exists. On Snowflake the DAGs use no
# pool and the pool is harmless.
set -euo pipefail

airflow pools set stockpipe_duckdb 1 \
    "one task at a time opens the stockpipe DuckDB warehouse file"
