"""What the Airflow DAGs in `dags/` call: light at import, heavy only inside the calls.

The scheduler and the DAG processor import the DAG files over and over, so this
module imports nothing beyond the settings at module level: the loader (DuckDB,
pyarrow), dbt and cosmos are imported inside the functions that need them, which
run in task processes (or once per parse, for the cosmos task group).

dbt runs inside Airflow as an astronomer-cosmos `DbtTaskGroup`: one `dbt build
--select <node>` task per seed and model (its tests included), run in the task
process through dbtRunner. Cosmos reads the project graph from a dbt manifest.json
that is built ahead of time, never while a DAG file is parsed: by `make install` in a
checkout, by the image build (infra/docker/Dockerfile), or by hand with
`python -m flows.transform.orchestration manifest` (MANIFEST_COMMAND). Its file name
carries a fingerprint of the dbt project's files, so parsing only checks that the
file for the current project exists (hashing the project's few files, no dbt, no
subprocess) and fails with that command when it is missing or stale.

Under a real scheduler (LocalExecutor, parallelism > 1) a DuckDB warehouse is
one file that takes one process at a time (reader or writer): every task of
either DAG that opens it (finding, loading, every dbt node, source freshness)
runs in the one-slot pool DUCKDB_POOL (`duckdb_pool`), so two of them never
overlap, within a run, across runs or across the two DAGs. The pool must exist
before the scheduler can queue those tasks: the stockpipe Airflow plugin
(flows/transform/airflow_plugin.py, the package's `airflow.plugins` entry point)
creates any that is missing when the scheduler starts and when a run of a DAG
that needs it starts; `infra/airflow/pools.sh` sets them explicitly
(`airflow pools set stockpipe_duckdb 1 …`, see POOLS). On Snowflake there is no
pool and independent dbt nodes run in parallel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.assets import BUNDLED_DIR, asset_dir
from flows.errors import StockpipeError
from flows.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from airflow.sdk import TaskGroup

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = asset_dir("dbt")
GOLD_MARTS_URI = "stockpipe://gold/marts"
ALERT_TIMEOUT_SECONDS = 5.0
BACKFILL_MAX_DAYS = 366
MAX_RETRY_DELAY = timedelta(minutes=10)
DUCKDB_POOL = "stockpipe_duckdb"
# Every pool a stockpipe task names, with its slots and description: what
# infra/airflow/pools.sh creates (compose's airflow-init runs it), what run_dag
# creates for dag.test() and what the stockpipe Airflow plugin creates when missing.
POOLS = {DUCKDB_POOL: (1, "one task at a time opens the stockpipe DuckDB warehouse file")}
MANIFEST_COMMAND = "python -m flows.transform.orchestration manifest"
DEFAULT_MAX_MAP_LENGTH = 1024  # Airflow's [core] max_map_length default
# Task and run time limits: generous for years of history, short enough that a hung
# task (a stalled object store, a lock never released) frees the pool and alerts.
TASK_TIMEOUT = timedelta(hours=1)  # any task without a limit of its own
FIND_TIMEOUT = timedelta(minutes=15)  # listing the lake and the manifest
LOAD_BATCH_TIMEOUT = timedelta(minutes=30)  # one bounded batch
DBT_NODE_TIMEOUT = timedelta(hours=1)  # one `dbt build --select <node>` (full refresh included)
FRESHNESS_TIMEOUT = timedelta(minutes=15)
REFERENCE_TIMEOUT = timedelta(minutes=15)  # bronze.outages, bronze.splits
PUBLISH_TIMEOUT = timedelta(minutes=30)  # dbt docs generate; the report
LOAD_DAGRUN_TIMEOUT = timedelta(hours=3)  # includes waiting for the pool behind a backfill
BACKFILL_DAGRUN_TIMEOUT = timedelta(hours=12)
_DATE_PARTITION = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/")


# ------------------------------------------------------------------ alerts


def send_alert(settings: Settings, message: Mapping[str, Any]) -> bool:
    """POST `message` as JSON to STOCKPIPE_ALERT_WEBHOOK; True if it was accepted.

    The payload is Slack-compatible: a `text` line (made from the event when the
    message has none) beside the structured fields. Every secret of the settings is
    masked in it. Never raises: an alert that cannot be delivered is logged, and the
    pipeline goes on. The webhook URL may carry a token, so it is never logged.
    """
    if settings.alert_webhook is None:
        return False
    url = settings.alert_webhook.get_secret_value()
    payload = {"text": _alert_text(message), **message}
    try:
        body = _redact(json.dumps(payload, default=str), settings).encode()
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=ALERT_TIMEOUT_SECONDS) as response:
            return 200 <= response.status < 300
    except Exception as exc:  # any failure to alert must not become a second failure
        # The URL is a secret, and error texts quote it or its path: say only the kind of
        # error, and the network's own reason (refused, timed out) where there is one.
        cause = getattr(exc, "reason", None)
        detail = type(exc).__name__
        if isinstance(cause, OSError):
            detail += f" ({type(cause).__name__}, errno {cause.errno})"
        elif isinstance(exc, urllib.error.HTTPError):
            detail += f" (HTTP {exc.code})"
        log.warning("could not deliver the alert to STOCKPIPE_ALERT_WEBHOOK: %s", detail)
        return False


def _secrets(settings: Settings) -> list[str]:
    values = []
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if hasattr(value, "get_secret_value"):
            secret = str(value.get_secret_value() or "")
            if len(secret) >= 4:  # masking a 1-3 character "secret" would mangle the text
                values.append(secret)
    return sorted(values, key=len, reverse=True)


def _redact(text: str, settings: Settings) -> str:
    """`text` with every secret of the settings (webhook URL included) replaced by ***."""
    for secret in _secrets(settings):
        text = text.replace(secret, "***")
        text = text.replace(json.dumps(secret)[1:-1], "***")  # as escaped inside JSON
    return text


def _alert_text(message: Mapping[str, Any]) -> str:
    """One human line for chat (Slack's `text`), from the message's fields."""
    if message.get("text"):
        return str(message["text"])
    if message.get("event") == "stockpipe.failure":
        where = ".".join(str(p) for p in (message.get("dag_id"), message.get("task_id")) if p)
        text = f":red_circle: stockpipe {message.get('level', 'task')} failed: {where or '?'}"
        if message.get("run_id"):
            text += f" (run {message['run_id']}, try {message.get('try_number')})"
        if message.get("exception"):
            text += f": {message['exception']}"
        if message.get("log_url"):
            text += f" <{message['log_url']}|logs>"
        return text
    return f"stockpipe: {message.get('event', 'alert')}"


def failure_message(context: Mapping[str, Any]) -> dict[str, Any]:
    """What failed and where to look, from an Airflow callback context (task or DAG level)."""
    ti = context.get("task_instance") or context.get("ti")
    dag = context.get("dag")
    dag_run = context.get("dag_run")
    exception = context.get("exception") or context.get("reason")
    return {
        "event": "stockpipe.failure",
        # DAG-level callbacks get the run's failure reason; task-level ones the exception
        "level": "dag" if "reason" in context else "task",
        "dag_id": getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "map_index": getattr(ti, "map_index", None),
        "run_id": context.get("run_id") or getattr(dag_run, "run_id", None),
        "try_number": getattr(ti, "try_number", None),
        "exception": _describe(exception),
        "log_url": _log_url(ti),
    }


def _describe(error: Any) -> str | None:
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return None if error is None else str(error)


def _log_url(ti: Any) -> str | None:
    try:
        return str(ti.log_url) if ti is not None else None
    except Exception:  # a TI without an API base URL configured
        return None


def on_failure(context: Mapping[str, Any]) -> None:
    """Airflow `on_failure_callback` (task and DAG level): log what failed, then alert.

    Never raises, whatever the context holds or the webhook does.
    """
    try:
        message = failure_message(context)
        log.error(
            "stockpipe failure: dag=%s task=%s run=%s try=%s: %s (logs: %s)",
            message["dag_id"],
            message["task_id"],
            message["run_id"],
            message["try_number"],
            message["exception"],
            message["log_url"],
        )
        send_alert(load_settings(), message)
    except Exception:
        log.exception("the stockpipe failure callback itself failed")


def on_dbt_failure(context: Mapping[str, Any]) -> None:
    """`on_failure` of a dbt node's task, which also marks the transform failed.

    The marts are then short of what was loaded, and the source_freshness task that
    writes a success will not run: `transform.prom` says failed, keeping the last
    success before it (flows/transform/metrics.py). Never raises.
    """
    on_failure(context)
    try:
        from flows.transform.metrics import record_transform

        record_transform(load_settings(), None, failed=True)
    except Exception:
        log.exception("writing the failed transform's gauges failed")


def default_args(settings: Settings) -> dict[str, Any]:
    """Every task's retries (exponential backoff), time limit and failure callback."""
    return {
        "owner": "stockpipe",
        "retries": settings.task_retries,
        "retry_delay": timedelta(seconds=settings.retry_delay),
        "retry_exponential_backoff": True,
        "max_retry_delay": MAX_RETRY_DELAY,
        "execution_timeout": TASK_TIMEOUT,
        "on_failure_callback": on_failure,
    }


def duckdb_pool(settings: Settings) -> str | None:
    """The one-slot pool of the tasks that open the warehouse: DUCKDB_POOL on DuckDB, else None.

    DuckDB allows one process per database file, so those tasks must take turns;
    Snowflake takes any number of sessions, so there they run in the default pool.
    """
    return DUCKDB_POOL if settings.warehouse != "snowflake" else None


def warehouse_task_args(settings: Settings, timeout: timedelta) -> dict[str, Any]:
    """Operator arguments of a task that opens the warehouse: its pool (on DuckDB), its limit."""
    pool = duckdb_pool(settings)
    return {"execution_timeout": timeout, **({"pool": pool} if pool else {})}


# ------------------------------------------------------------------ pools


def pool_command(name: str) -> str:
    """The Airflow CLI command that creates pool `name` as stockpipe needs it."""
    slots, description = POOLS.get(name, (1, "stockpipe"))
    return f'airflow pools set {name} {slots} "{description}"'


def missing_pools(names: Iterable[str] | None = None, *, session: Any = None) -> list[str]:
    """Which of `names` (default: every pool of POOLS) this Airflow's metadata lacks.

    Needs Airflow's metadata database (a scheduler, `run_dag`, the CLI), never a task
    or a DAG-parse process. Without `session`, reads in a session of its own that is
    not Airflow's thread-scoped one, so it never commits or closes a caller's.
    """
    from airflow.models.pool import Pool

    wanted = list(POOLS) if names is None else [name for name in names if name in POOLS]
    if session is None:
        from airflow.utils.session import create_session

        with create_session(scoped=False) as own:
            return missing_pools(wanted, session=own)
    return [name for name in wanted if Pool.get_pool(name, session=session) is None]


def create_missing_pools(names: Iterable[str] | None = None, *, session: Any = None) -> list[str]:
    """Create each of `names` (default: every pool of POOLS) this Airflow lacks, as POOLS says.

    Pools that exist are left as they are (an operator may have given one other
    slots). For `run_dag` (dag.test() in a scratch AIRFLOW_HOME) and the stockpipe
    Airflow plugin's scheduler listener (flows/transform/airflow_plugin.py): processes
    of Airflow's own, with its database. Without `session`, in a session of its own
    (not the thread-scoped one) committed before returning. Returns the pools created.
    """
    from airflow.models.pool import Pool

    if session is None:
        from airflow.utils.session import create_session

        with create_session(scoped=False) as own:
            return create_missing_pools(names, session=own)
    created = missing_pools(names, session=session)
    for name in created:
        slots, description = POOLS[name]
        Pool.create_or_update_pool(
            name, slots, description, include_deferred=False, session=session
        )
    return created


# ------------------------------------------------------------------ loading


def chunked(items: Sequence[str], size: int) -> list[list[str]]:
    """`items` in consecutive batches of at most `size` (each batch one mapped load task)."""
    if size < 1:
        raise SettingsError(f"STOCKPIPE_LOAD_BATCH_FILES must be at least 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def max_mapped_tasks(settings: Settings) -> int:
    """How many mapped load tasks one run may make: STOCKPIPE_LOAD_MAX_BATCHES, and never
    more than Airflow's [core] max_map_length (past it the whole mapping fails)."""
    limit = DEFAULT_MAX_MAP_LENGTH
    try:
        from airflow.configuration import conf

        limit = conf.getint("core", "max_map_length", fallback=DEFAULT_MAX_MAP_LENGTH)
    except Exception:  # outside Airflow (the CLI, tests): its default
        pass
    return max(1, min(limit, int(getattr(settings, "load_max_batches", limit))))


def pending_batches(settings: Settings) -> list[list[str]]:
    """The lake files not loaded yet, in batches of STOCKPIPE_LOAD_BATCH_FILES.

    At most `max_mapped_tasks` batches: the files past them wait for the next run.
    """
    from flows.warehouse import pending_files
    from flows.warehouse.metrics import record_load

    started = time.monotonic()
    try:
        files = pending_files(settings)
    except Exception as exc:
        record_load(
            settings,
            None,
            failed=True,
            seconds=time.monotonic() - started,
            conflicts=getattr(exc, "count", 0),
        )
        raise
    if not files:  # the lake checked and all of it loaded: a load that succeeded
        record_load(settings, None, seconds=time.monotonic() - started)
    batches = chunked(files, settings.load_batch_files)
    limit = max_mapped_tasks(settings)
    if len(batches) > limit:
        left = sum(len(batch) for batch in batches[limit:])
        log.info("%d lake files wait for the next run (%d batches per run)", left, limit)
        batches = batches[:limit]
    log.info(
        "%d lake files are not in the load manifest yet, in %d batches",
        sum(len(batch) for batch in batches),
        len(batches),
    )
    return batches


def batches_within(files: Sequence[str], size: int, limit: int) -> list[list[str]]:
    """`files` in batches of `size`, made larger if needed so there are at most `limit`."""
    if len(files) > size * limit:
        size = math.ceil(len(files) / limit)
    return chunked(files, size)


def parse_date_range(start: Any, end: Any) -> tuple[date, date]:
    """The backfill's `start_date` and `end_date` params as dates, checked.

    Both are inclusive `YYYY-MM-DD` dates (lake partition dates, UTC), start ≤ end,
    at most BACKFILL_MAX_DAYS apart.
    """
    days = []
    for name, value in (("start_date", start), ("end_date", end)):
        try:
            days.append(date.fromisoformat(str(value).strip()))
        except ValueError:
            raise StockpipeError(
                f"backfill param {name}={value!r} is not a date: write YYYY-MM-DD, e.g. 2024-11-26"
            ) from None
    first, last = days
    if first > last:
        raise StockpipeError(
            f"backfill start_date {first} is after end_date {last}: swap them or fix one"
        )
    if (last - first).days + 1 > BACKFILL_MAX_DAYS:
        raise StockpipeError(
            f"backfill range {first}..{last} spans more than {BACKFILL_MAX_DAYS} days: split it"
        )
    return first, last


def partition_date(url: str) -> date | None:
    """The `date=YYYY-MM-DD` partition of a lake bar file, or None if it has none."""
    match = _DATE_PARTITION.search(url)
    return date.fromisoformat(match.group(1)) if match else None


def missing_batches(settings: Settings, first: date, last: date) -> list[list[str]]:
    """Files of partitions first..last (inclusive) missing from the load manifest, batched.

    Lists the lake from `first` on (older than the loader's high-water mark is the
    point of a backfill). At most `max_mapped_tasks` batches: larger ones rather
    than fewer files. The loader itself returns at most one run's worth
    (STOCKPIPE_LOAD_MAX_BATCHES x STOCKPIPE_LOAD_BATCH_FILES) per call, from the
    oldest partition on; a warning says when the range may hold more.
    """
    from flows.warehouse import pending_files

    found = pending_files(settings, since=first)
    files = [
        url for url in found if (day := partition_date(url)) is not None and first <= day <= last
    ]
    if len(found) >= settings.load_batch_files * getattr(settings, "load_max_batches", 0):
        log.warning(
            "the loader finds at most one run's worth of files per call (%d): the range may"
            " hold more missing files, run the backfill again once this run is done",
            len(found),
        )
    log.info("%d lake files of %s..%s are missing from the load manifest", len(files), first, last)
    return batches_within(files, settings.load_batch_files, max_mapped_tasks(settings))


def load_batch(settings: Settings, files: Sequence[str]) -> dict[str, Any]:
    """Load one batch (exactly once, safe to retry) and return its summary for XCom."""
    from flows.warehouse import load_files
    from flows.warehouse.metrics import record_load

    started = time.monotonic()
    try:
        summary = load_files(settings, files, progress=False)
    except Exception as exc:
        summary = getattr(exc, "summary", None)
        seconds = time.monotonic() - started
        record_load(
            settings, summary, failed=True, seconds=seconds, conflicts=getattr(exc, "count", 0)
        )
        raise
    record_load(settings, summary)
    return {
        "files": summary.files_loaded,
        "rows": summary.rows,
        "skipped_already_loaded": summary.files_found - summary.files_new,
        "seconds": round(summary.seconds, 3),
    }


# ------------------------------------------------------------------ reference tables


def load_outages(settings: Settings) -> dict[str, Any]:
    """The outage ledger into bronze.outages (`stockpipe load-outages`): safe to re-run."""
    from flows.warehouse.outages import load_outages as run

    return run(settings)


def fetch_splits(settings: Settings) -> dict[str, Any]:
    """Finnhub's splits of the settings' symbols into bronze.splits (`stockpipe fetch-splits`).

    Without FINNHUB_API_KEY it logs that and does nothing (as the outage backfill runs dry);
    a symbol Finnhub kept failing fails the task (its retry asks again)."""
    from dataclasses import asdict

    from flows.warehouse.splits import fetch_splits as run

    if settings.finnhub_api_key is None or not settings.finnhub_api_key.get_secret_value():
        log.warning("FINNHUB_API_KEY is not set: no splits fetched (bronze.splits unchanged)")
        return {"skipped": "FINNHUB_API_KEY is not set"}
    report = run(settings)
    if report.failed:
        raise StockpipeError(
            f"Finnhub kept failing for {', '.join(report.failed)}: see the task log"
        )
    return {k: v for k, v in asdict(report).items() if k != "splits"} | {
        "splits": len(report.splits)
    }


# ------------------------------------------------------------------ publish


def publish_docs(settings: Settings) -> str:
    """`dbt docs generate` into the dbt target path (what the docs server serves)."""
    from flows.transform.dbt_runner import generate_docs

    return str(generate_docs(settings) / "index.html")


# ------------------------------------------------------------------ dbt


def dbt_target_path(settings: Settings) -> Path:
    """Where dbt writes its artifacts (STOCKPIPE_DBT_TARGET_PATH, default dbt/target)."""
    from flows.transform.dbt_runner import dbt_target_path as target_path

    return target_path(settings)


def dbt_executable() -> Path:
    """The dbt beside this interpreter (the project's virtualenv), else the one on PATH."""
    beside = Path(sys.executable).parent / "dbt"
    return beside if beside.exists() else Path("dbt")


def dbt_profile_env(settings: Settings) -> dict[str, str]:
    """The non-secret variables dbt/profiles.yml reads, enough for `dbt parse`."""
    env = {"STOCKPIPE_DBT_TARGET": settings.dbt_target}
    if settings.dbt_target == "duckdb":
        env["STOCKPIPE_DUCKDB_PATH"] = str(settings.duckdb_path.expanduser().resolve())
    return env


# What `dbt parse` reads besides the paths dbt_project.yml names (dbt's defaults for those).
_PROJECT_FILES = ("dbt_project.yml", "packages.yml", "dependencies.yml", "selectors.yml")
_PROJECT_PATHS = {
    "model-paths": ["models"],
    "seed-paths": ["seeds"],
    "macro-paths": ["macros"],
    "test-paths": ["tests"],
    "snapshot-paths": ["snapshots"],
    "analysis-paths": ["analyses"],
}


class ManifestError(StockpipeError):
    """The dbt manifest the DAGs render dbt from is missing or was built from another project."""


def _project_files(project: Path) -> list[Path]:
    import yaml

    config = yaml.safe_load((project / "dbt_project.yml").read_text()) or {}
    files = [project / name for name in _PROJECT_FILES if (project / name).is_file()]
    for key, default in _PROJECT_PATHS.items():
        for folder in config.get(key) or default:
            root = project / folder
            if root.is_dir():
                files += [
                    path
                    for path in root.rglob("*")
                    if path.is_file() and not path.name.startswith(".")
                ]
    return sorted(set(files))


def project_fingerprint(target: str, project: Path = DBT_PROJECT_DIR) -> str:
    """A digest of what the manifest of `project` for `target` is made from: every file
    `dbt parse` reads (by path inside the project, and content), the target and dbt-core's
    version. Cheap enough to compute at each DAG parse (a few small files, no dbt)."""
    from importlib import metadata

    try:
        dbt_version = metadata.version("dbt-core")
    except metadata.PackageNotFoundError:
        dbt_version = "none"
    digest = hashlib.sha256(f"dbt-core {dbt_version}\0target {target}\0".encode())
    for path in _project_files(project):
        content = path.read_bytes()
        digest.update(f"{path.relative_to(project).as_posix()}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:16]


def manifest_dir(settings: Settings) -> Path:
    """Where the DAGs' dbt manifests are kept.

    An installed package's dbt project is read-only and changes only with the package,
    so its manifests sit beside it (`<project>/target/airflow/`, written by the image
    build); a checkout keeps them under its dbt target path (STOCKPIPE_DBT_TARGET_PATH,
    default dbt/target), in `airflow/`.
    """
    if DBT_PROJECT_DIR.is_relative_to(BUNDLED_DIR):
        return DBT_PROJECT_DIR / "target" / "airflow"
    return dbt_target_path(settings) / "airflow"


def manifest_path(settings: Settings) -> Path:
    """The manifest of the dbt project as it is now, for the settings' dbt target."""
    target = settings.dbt_target
    return manifest_dir(settings) / f"manifest.{target}.{project_fingerprint(target)}.json"


def current_manifest(settings: Settings) -> Path:
    """The manifest cosmos renders the task group from; never runs dbt.

    Raises ManifestError, naming MANIFEST_COMMAND, when there is no manifest for the
    project as it is now: none at all, or one of another version of the project.
    """
    path = manifest_path(settings)
    if path.is_file():
        return path
    target = settings.dbt_target
    others = sorted(path.parent.glob(f"manifest.{target}.*.json")) if path.parent.is_dir() else []
    build = (
        f"build it with `{MANIFEST_COMMAND}`"
        + ("" if DBT_PROJECT_DIR.is_relative_to(BUNDLED_DIR) else " (`make install` runs it)")
        + "; the DAG files never run dbt while Airflow parses them"
    )
    if others:
        raise ManifestError(
            f"the dbt manifest in {path.parent} ({others[-1].name}) is stale: the dbt project"
            f" {DBT_PROJECT_DIR} (or dbt-core) changed since it was built; {build}"
        )
    raise ManifestError(
        f"no dbt manifest for the {target} target of {DBT_PROJECT_DIR} in {path.parent}: {build}"
    )


def build_manifest(settings: Settings) -> Path:
    """Make the manifest `current_manifest` looks for with `dbt parse`, unless it exists.

    For `make install`, the image build, run_dag and tests (MANIFEST_COMMAND), never
    for a DAG parse. dbt runs in a subprocess writing into a scratch folder; the new
    manifest replaces the old one atomically, and manifests of older versions of the
    project for the same target are removed.
    """
    manifest = manifest_path(settings)
    if manifest.is_file():
        return manifest
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=manifest.parent) as scratch:
        command = [
            str(dbt_executable()),
            "parse",
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target",
            settings.dbt_target,
            "--target-path",
            scratch,
            "--log-path",
            scratch,
        ]
        done = subprocess.run(
            command,
            env={**os.environ, **dbt_profile_env(settings)},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise StockpipeError(
                f"dbt parse failed (exit {done.returncode}) for {DBT_PROJECT_DIR}: "
                + " ".join((done.stdout + done.stderr).split())[-2000:]
            )
        os.replace(Path(scratch) / "manifest.json", manifest)
    for old in manifest.parent.glob(f"manifest.{settings.dbt_target}.*.json"):
        if old != manifest:
            old.unlink(missing_ok=True)
    return manifest


def dbt_targets() -> list[str]:
    """The targets dbt/profiles.yml defines (the values STOCKPIPE_DBT_TARGET takes)."""
    import yaml

    profiles = yaml.safe_load((DBT_PROJECT_DIR / "profiles.yml").read_text())
    return sorted(profiles["stockpipe"]["outputs"])


def _export_profile_env(context: Any, operator: Any) -> None:
    """Cosmos interceptor: the variables dbt/profiles.yml reads, from the settings at run time.

    It runs inside the task's execute, after Airflow recorded the rendered template
    fields, so the values (secrets from `.env` included) reach dbt's environment and
    nothing else: not the DAG's serialized form, not the UI.
    """
    from flows.transform.dbt_runner import dbt_environment

    operator.env = {**(operator.env or {}), **dbt_environment(load_settings())}


def _release_dbt_duckdb(*_args: Any, **_kwargs: Any) -> None:
    """Cosmos callback: close dbt-duckdb's cached database so the loader can open the file."""
    from flows.transform.dbt_runner import release_duckdb

    release_duckdb()


def dbt_task_group(
    settings: Settings,
    *,
    group_id: str = "dbt_build",
    full_refresh: bool | str = False,
    trigger_rule: str = "all_success",
    default_args: Mapping[str, Any] | None = None,
) -> TaskGroup:
    """The dbt project as an Airflow task group: one `dbt build --select <node>` per seed/model.

    Built with astronomer-cosmos (ExecutionMode.LOCAL, InvocationMode.DBT_RUNNER,
    TestBehavior.BUILD): each task builds its node and runs its tests in the task
    process, with dbt/profiles.yml. Must be called inside a DAG definition. The graph
    comes from `current_manifest`, which raises ManifestError (the DAG file's import
    error, naming MANIFEST_COMMAND) when the manifest is missing or stale: dbt never
    runs while a DAG file is parsed.
    """
    from cosmos import (
        DbtTaskGroup,
        ExecutionConfig,
        ProfileConfig,
        ProjectConfig,
        RenderConfig,
    )
    from cosmos.constants import ExecutionMode, InvocationMode, LoadMode, TestBehavior

    project = ProjectConfig(
        dbt_project_path=DBT_PROJECT_DIR,
        manifest_path=current_manifest(settings),
        install_dbt_deps=False,  # the project has no packages (dbt's hub is unreachable)
    )
    profile = ProfileConfig(
        profile_name="stockpipe",
        target_name=settings.dbt_target,
        profiles_yml_filepath=DBT_PROJECT_DIR / "profiles.yml",
    )
    execution = ExecutionConfig(
        execution_mode=ExecutionMode.LOCAL,
        invocation_mode=InvocationMode.DBT_RUNNER,
        dbt_executable_path=str(dbt_executable()),
    )
    render = RenderConfig(
        load_method=LoadMode.DBT_MANIFEST,
        test_behavior=TestBehavior.BUILD,
        emit_datasets=False,  # the DAG emits one Asset for the gold marts instead
        # only used by `dbt ls`, which the manifest spares us; never dbtRunner at parse time
        invocation_mode=InvocationMode.SUBPROCESS,
        dbt_executable_path=str(dbt_executable()),
    )
    return DbtTaskGroup(
        group_id=group_id,
        project_config=project,
        profile_config=profile,
        execution_config=execution,
        render_config=render,
        operator_args={
            "full_refresh": full_refresh,
            "trigger_rule": trigger_rule,
            "interceptors": [_export_profile_env],
            "callback": _release_dbt_duckdb,
            "on_failure_callback": on_dbt_failure,
            # on DuckDB every node takes the one warehouse slot: see the module docstring
            **warehouse_task_args(settings, DBT_NODE_TIMEOUT),
        },
        default_args=dict(default_args or {}),
    )


# ------------------------------------------------------------------ freshness alerts

# Alerts go out once per state change, not every run: the last alerted state of each
# source is kept in a small JSON file beside dbt's artifacts (STOCKPIPE_DBT_TARGET_PATH).
# It is read and written once per freshness check (cheap, no metadata-DB round trip),
# survives restarts, and works the same under Airflow and the CLI; on DuckDB the
# freshness task holds the one-slot warehouse pool, so two writers never overlap, and
# the file is replaced atomically. Losing it (`dbt clean`) costs at most one repeated
# alert. No secret is ever written to it.
ALERT_STATE_FILE = "alert_state.json"


def alert_state_path(settings: Settings) -> Path:
    return dbt_target_path(settings) / ALERT_STATE_FILE


def read_alert_state(settings: Settings) -> dict[str, Any]:
    path = alert_state_path(settings)
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # unreadable: start over (one repeated alert at most)
        log.warning("ignoring the unreadable alert state %s: %s", path, exc)
        return {}


def write_alert_state(settings: Settings, state: Mapping[str, Any]) -> None:
    path = alert_state_path(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=".alert_state.", delete=False
        ) as fh:
            json.dump(state, fh, indent=2, sort_keys=True, default=str)
        os.replace(fh.name, path)
    except OSError as exc:
        log.warning("could not save the alert state %s: %s", path, exc)


def freshness_message(result: Any, previous: str | None) -> dict[str, Any]:
    """The alert for a source whose state changed (`result` is a transform.SourceFreshness)."""
    state = "stale" if result.stale else "fresh"
    icon = ":warning:" if result.stale else ":white_check_mark:"
    text = f"{icon} stockpipe: {result.describe()}"
    if not result.stale and previous == "stale":
        text = f"{icon} stockpipe: recovered: {result.describe()}"
    return {
        "text": text,
        "event": "stockpipe.stale_source" if result.stale else "stockpipe.source_fresh",
        "state": state,
        "previous_state": previous,
        "source": result.source,
        "calendar": result.calendar,
        "newest_window_end": result.newest_window_end.isoformat(),
        "checked_at": result.checked_at.isoformat(),
        "trading_lag_seconds": round(result.trading_lag.total_seconds()),
        "stale_after_seconds": round(result.stale_after.total_seconds()),
        "stale": [f"{result.source}: warn"] if result.stale else [],
    }


def alert_freshness_changes(settings: Settings, results: Sequence[Any]) -> list[dict[str, Any]]:
    """Alert each source whose state changed since its last alert; returns the alerts sent.

    A source first seen fresh is recorded without an alert; first seen stale, it alerts.
    A state is only recorded once its alert was delivered (or when no webhook is set),
    so an alert lost to a webhook outage is sent again on the next run.
    """
    state = read_alert_state(settings)
    sources = state.setdefault("sources", {})
    sent = []
    for result in results:
        now = "stale" if result.stale else "fresh"
        previous = (sources.get(result.key) or {}).get("state")
        if now == previous or (previous is None and now == "fresh"):
            sources.setdefault(result.key, {"state": now, "since": result.checked_at.isoformat()})
            continue
        message = freshness_message(result, previous)
        if send_alert(settings, message) or settings.alert_webhook is None:
            sources[result.key] = {"state": now, "since": result.checked_at.isoformat()}
            sent.append(message)
    write_alert_state(settings, state)
    return sent


def source_freshness(
    settings: Settings, *, now: datetime | None = None, after_dbt: bool = False
) -> list[str]:
    """Session-aware source freshness (event time, trading time): stale sources are logged,
    alerted once per change of state (stale, then fresh again), and never raise.

    `after_dbt`: this runs after the run's dbt task group had no failure, so it records
    a transform that succeeded (`transform.prom`, flows/transform/metrics.py).
    Returns the stale sources as `unique_id: warn` lines. `now` is for tests.
    """
    from flows.transform.dbt_runner import check_freshness, dbt_session, stale_lines
    from flows.transform.metrics import record_dag_transform

    with dbt_session(settings, dbt_target_path(settings) / "freshness") as common:
        results = check_freshness(settings, common, now=now)
    if after_dbt:
        record_dag_transform(settings, results)
    stale = stale_lines(results)
    if stale:
        log.warning("stale sources: %s", "; ".join(r.describe() for r in results if r.stale))
    else:
        log.info("every source is fresh")
    alert_freshness_changes(settings, results)
    return stale


# ------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m flows.transform.orchestration manifest [--all-targets]` (MANIFEST_COMMAND)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m flows.transform.orchestration",
        description="Build what the Airflow DAGs need before Airflow parses them.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    manifest = commands.add_parser(
        "manifest",
        help="dbt parse the project into the manifest the DAGs render dbt from (a no-op when"
        " it is current), for STOCKPIPE_DBT_TARGET",
    )
    manifest.add_argument(
        "--all-targets",
        action="store_true",
        help="for every target of dbt/profiles.yml (what the image build runs)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        for target in dbt_targets() if args.all_targets else [settings.dbt_target]:
            print(build_manifest(load_settings(dbt_target=target)))
    except StockpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
