"""Find lake files the warehouse has not loaded yet and load them in bounded batches."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flows.errors import ServiceUnavailable
from flows.lakefs import BARS_PREFIX, Lake, open_lake
from flows.settings import Settings, SettingsError
from flows.warehouse.base import BeforeCommit, LakeFile, LoadError, Warehouse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadSummary:
    """What one `load` (or `load_files`) run found and loaded."""

    files_found: int
    files_new: int
    files_loaded: int
    rows: int
    batches: int
    seconds: float

    @property
    def nothing_new(self) -> bool:
        return self.files_new == 0


def open_warehouse(settings: Settings, lake: Lake | None = None) -> Warehouse:
    """The warehouse named by `STOCKPIPE_WAREHOUSE`, connected, schema not yet ensured."""
    lake = lake or open_lake(settings)
    target = settings.warehouse
    if target == "snowflake":
        from flows.warehouse.snowflake_warehouse import SnowflakeWarehouse

        return SnowflakeWarehouse(settings, lake)
    if target.startswith("duckdb://"):
        from flows.warehouse.duckdb_warehouse import DuckDBWarehouse

        path = settings.duckdb_path
        if not str(path) or str(path) == ".":
            raise SettingsError(
                f"STOCKPIPE_WAREHOUSE={target!r}: write duckdb:///path/to/file.duckdb"
            )
        return DuckDBWarehouse(path, lake)
    raise SettingsError(
        f"STOCKPIPE_WAREHOUSE={target!r}: expected duckdb:///path/to/file.duckdb or snowflake"
    )


@contextmanager
def _warehouse(settings: Settings, lake: Lake) -> Iterator[Warehouse]:
    warehouse = open_warehouse(settings, lake)
    try:
        warehouse.ensure_schema()
        yield warehouse
    finally:
        warehouse.close()


def list_lake_files(lake: Lake, prefix: str = BARS_PREFIX) -> list[LakeFile]:
    """Every Parquet file under `prefix`, sorted by path (so by partition date, then name)."""
    root = lake.path(prefix)
    try:
        # s3fs caches listings per process; a long-lived worker must see new files.
        lake.fs.invalidate_cache(root)
        if not lake.fs.exists(root):
            return []
        found = lake.fs.find(root, detail=True)
    except OSError as exc:
        raise ServiceUnavailable(f"cannot list the lake at {lake.url(root)}: {exc}") from None
    files = []
    for path, info in found.items():
        name = path.rsplit("/", 1)[-1]
        # Writers may leave hidden or temporary files (".x.parquet.tmp", "_SUCCESS") beside the data.
        if info.get("type") == "directory" or not name.endswith(".parquet") or name[0] in "._":
            continue
        files.append(LakeFile(url=lake.url(path), path=path, size=int(info.get("size") or 0)))
    return sorted(files, key=lambda f: f.path)


def _path_of(lake: Lake, url: str) -> str:
    """The filesystem path of a manifest URL, which must lie under the lake's bars/ folder."""
    scheme = "" if lake.protocol == "file" else f"{lake.protocol}://"
    path = url.removeprefix(scheme)
    if not url.startswith(scheme) or not path.startswith(lake.path(BARS_PREFIX) + "/"):
        raise LoadError(f"{url} is not a file under {lake.url(lake.path(BARS_PREFIX))}")
    return path


def _stat(lake: Lake, urls: Sequence[str]) -> list[LakeFile]:
    files = []
    for url in urls:
        path = _path_of(lake, url)
        try:
            info = lake.fs.info(path)
        except FileNotFoundError:
            raise LoadError(f"{url} is not in the lake") from None
        files.append(LakeFile(url=url, path=path, size=int(info.get("size") or 0)))
    return files


def pending_files(settings: Settings) -> list[str]:
    """URLs of the lake's bar files that are not in the manifest yet, oldest partition first."""
    lake = open_lake(settings)
    with _warehouse(settings, lake) as warehouse:
        loaded = warehouse.loaded_files()
    return [f.url for f in list_lake_files(lake) if f.url not in loaded]


def load_files(
    settings: Settings,
    files: Sequence[str],
    *,
    batch_files: int | None = None,
    progress: bool = False,
    before_commit: BeforeCommit | None = None,
) -> LoadSummary:
    """Load these file URLs (from `pending_files`), skipping any that are loaded already.

    Safe to retry: an Airflow task that died after its commit loads nothing the second time.
    """
    started = time.monotonic()
    lake = open_lake(settings)
    with _warehouse(settings, lake) as warehouse:
        loaded = warehouse.loaded_files()
        new = [url for url in dict.fromkeys(files) if url not in loaded]
        return _load(
            warehouse,
            _stat(lake, new),
            found=len(files),
            batch_files=batch_files or settings.load_batch_files,
            progress=progress,
            before_commit=before_commit,
            started=started,
        )


def load(
    settings: Settings,
    *,
    batch_files: int | None = None,
    progress: bool = True,
    before_commit: BeforeCommit | None = None,
) -> LoadSummary:
    """Load every new bar file of the lake, in batches of `batch_files` (STOCKPIPE_LOAD_BATCH_FILES).

    Each batch commits its rows and manifest entries together; `before_commit`
    runs inside each batch's transaction just before COMMIT (tests inject crashes there).
    """
    started = time.monotonic()
    lake = open_lake(settings)
    with _warehouse(settings, lake) as warehouse:
        found = list_lake_files(lake)
        loaded = warehouse.loaded_files()
        return _load(
            warehouse,
            [f for f in found if f.url not in loaded],
            found=len(found),
            batch_files=batch_files or settings.load_batch_files,
            progress=progress,
            before_commit=before_commit,
            started=started,
        )


def _load(
    warehouse: Warehouse,
    new: list[LakeFile],
    *,
    found: int,
    batch_files: int,
    progress: bool,
    before_commit: BeforeCommit | None,
    started: float,
) -> LoadSummary:
    if batch_files < 1:
        raise SettingsError(f"batch size must be at least 1, got {batch_files}")
    batches = [new[i : i + batch_files] for i in range(0, len(new), batch_files)]
    files_loaded = rows = 0
    with _progress(progress and bool(new), len(new), warehouse.name) as advance:
        for batch in batches:
            result = warehouse.load_batch(batch, before_commit=before_commit)
            files_loaded += result.files
            rows += result.rows
            advance(result.files)
    summary = LoadSummary(
        files_found=found,
        files_new=len(new),
        files_loaded=files_loaded,
        rows=rows,
        batches=len(batches),
        seconds=time.monotonic() - started,
    )
    log.info("load into %s: %s", warehouse.name, summary)
    return summary


@contextmanager
def _progress(enabled: bool, total: int, target: str) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n: None
        return
    columns = (
        TextColumn(f"loading into {target}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("load", total=total)
        yield lambda n: bar.advance(task, n)
