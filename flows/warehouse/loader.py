"""Find lake files the warehouse has not loaded yet and load them in bounded batches.

Finding new files costs time in proportion to the new files, not to the lake:
per `bars/interval_s=N/` folder the loader lists only the `date=` partitions
at or after its high-water mark,

    min(newest loaded date there, today UTC) - (ceil(STOCKPIPE_RESTATE_HORIZON / 1 day)
                                               + STOCKPIPE_LOAD_LOOKBACK_DAYS) days,

(every partition when nothing is loaded there yet; `since`/`full_scan` for
backfills of older dates), and asks the manifest about just the files it
found, by their key: the path inside the lake, so a lake moved or reached by
another URL loads nothing twice. A file already in the manifest is skipped when
it holds the same rows (same size + version, else the same MD5 of its bytes,
else the same rows as bronze holds from it: re-encoded) and is an error naming
it and its first differing row otherwise. A run commits at most
STOCKPIPE_LOAD_MAX_BATCHES batches; the rest waits.

No file is left behind: every new bar file names the other files of its batch
and the batch it follows in its source partition (`flows.lake.batches`), so
the loader reads each new file's link and follows it to files in `date=`
partitions older than the ones it listed, as far back as the warehouse lacks
them (a slow partition's files written days late), at a cost in proportion to
the new files. Those are loaded before the files that named them, so a crash
between batches leaves nothing the next run cannot find again. A file named
but not in the lake is an offset gap of its partition: logged, reported by
the run (`LoadSummary.gaps`) and by `stockpipe status` (from the manifest's
offsets), and the rest still loads.
"""

from __future__ import annotations

import io
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from flows.errors import ServiceUnavailable
from flows.lake.batches import Link, parse_name, read_link
from flows.lake.store import (
    BARS_PREFIX,
    Lake,
    LakeEntry,
    list_data_files,
    list_partitions,
    open_lake,
    partitions_from,
    stat_file,
)
from flows.settings import Settings, SettingsError
from flows.warehouse.base import (
    BeforeCommit,
    ConcurrentLoad,
    ContentConflict,
    LakeFile,
    LoadError,
    ManifestEntry,
    Warehouse,
    canonical_rows,
    first_difference,
    md5_hex,
)

log = logging.getLogger(__name__)

_DATE_RE = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/")
_ATTEMPTS = 4  # per batch, when another load holds the lock or loaded some files meanwhile


@dataclass(frozen=True)
class MissingFile:
    """A bar file its partition's chain names that the lake does not hold: an offset gap."""

    topic: str
    partition: int
    first_offset: int | None  # the offsets of the missing batch (None: a name not ours)
    last_offset: int | None
    key: str  # the missing file's path inside the lake
    named_by: str  # the file whose link names it
    description: str

    def __str__(self) -> str:
        return self.description


@dataclass(frozen=True)
class LoadedBatch:
    """One committed load transaction."""

    load_seq: int | None  # None on a warehouse without load sequences
    files: int
    rows: int
    seconds: float


@dataclass(frozen=True)
class LoadSummary:
    """What one `load` (or `load_files`) run found and loaded."""

    files_found: int  # files in the partitions listed (or given)
    files_new: int
    files_loaded: int
    rows: int
    batches: int
    seconds: float
    files_unchanged: int = 0  # in the manifest already, same content
    files_left: int = 0  # new, left for the next run (STOCKPIPE_LOAD_MAX_BATCHES)
    load_seqs: tuple[int, ...] = ()
    files_linked: int = 0  # of the new files, found by following links to older partitions
    gaps: tuple[MissingFile, ...] = ()  # files the chain names that the lake does not hold
    loaded: tuple[LoadedBatch, ...] = ()  # the committed batches, in order

    @property
    def nothing_new(self) -> bool:
        return self.files_new == 0


@dataclass
class Scan:
    """Lake files sorted into new, unchanged and conflicting (loaded with other rows)."""

    found: int = 0
    new: list[LakeFile] = field(default_factory=list)
    unchanged: int = 0
    conflicts: list[str] = field(default_factory=list)
    # unchanged rows under a new size or version (copied, re-encoded): to record, with MD5s
    refreshed: list[tuple[LakeFile, str]] = field(default_factory=list)
    linked: int = 0  # new files found by following links (`follow_links`), not listed
    gaps: list[MissingFile] = field(default_factory=list)


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


def lookback_days(settings: Settings) -> int:
    """Days before the newest loaded date that may still receive files."""
    return math.ceil(settings.restate_horizon / 86400) + settings.load_lookback_days


def high_water_mark(
    newest_loaded: str | None, settings: Settings, today: date | None = None
) -> date | None:
    """The oldest `date=` partition to list, from the newest loaded path (None: list all).

    Capped by today (UTC), so one file of a far-future date cannot hide the present.
    """
    match = _DATE_RE.search(newest_loaded or "")
    if not match:
        return None
    newest = min(date.fromisoformat(match[1]), today or datetime.now(UTC).date())
    return newest - timedelta(days=lookback_days(settings))


def list_new_candidates(
    lake: Lake,
    warehouse: Warehouse,
    settings: Settings,
    *,
    since: date | None = None,
    full_scan: bool = False,
) -> list[LakeFile]:
    """The files of the partitions at or after the high-water mark (or `since`), by path."""
    try:
        partitions = list_partitions(lake, BARS_PREFIX)
        files: list[LakeFile] = []
        for parent, found in partitions.items():
            if full_scan:
                start = None
            elif since is not None:
                start = since
            else:
                start = high_water_mark(warehouse.max_loaded_path(lake.key(parent) + "/"), settings)
            for partition in partitions_from(found, start):
                files += [_lake_file(lake, e) for e in list_data_files(lake, partition.path)]
    except OSError as exc:
        raise ServiceUnavailable(f"cannot list the lake at {lake.url(lake.root)}: {exc}") from None
    return sorted(files, key=lambda f: f.path)


def _lake_file(lake: Lake, entry: LakeEntry) -> LakeFile:
    return LakeFile(
        key=lake.key(entry.path),
        url=lake.url(entry.path),
        path=entry.path,
        size=entry.size,
        version=entry.version,
    )


def scan(lake: Lake, warehouse: Warehouse, files: Sequence[LakeFile]) -> Scan:
    """Sort `files` by what the manifest says of just them (and record refreshed versions)."""
    out = Scan(found=len(files))
    entries = warehouse.manifest_entries([f.key for f in files])
    for file in files:
        entry = entries.get(file.key)
        if entry is None:
            out.new.append(file)
            continue
        difference, md5 = content_difference(lake, warehouse, file, entry)
        if difference:
            out.conflicts.append(difference)
            continue
        out.unchanged += 1
        if md5 is not None:
            out.refreshed.append((file, md5))
    if out.refreshed:
        warehouse.record_versions([f for f, _ in out.refreshed], [m for _, m in out.refreshed])
        log.info(
            "%d loaded file(s) seen under a new size or version, same rows", len(out.refreshed)
        )
    return out


def follow_links(
    lake: Lake,
    warehouse: Warehouse,
    found: Scan,
    seen: set[str],
    *,
    since: date | None = None,
) -> Scan:
    """`found` with the links of its new files read, and the files they name added.

    A new file names the other files of its batch and the batch it follows; each
    one not in `seen` (the keys this run listed), not in the manifest and in the
    lake is new too, and its own links are followed in turn, so a chain is
    followed back to where the warehouse has it. Files found that way come first,
    the deepest first, so a batch that commits holds no file whose links a later
    run could not find again. A named file the lake lacks is a gap (logged and
    kept in `found.gaps`); one dated before `since` is not followed.
    """
    known = set(seen) | {f.key for f in found.new}
    rounds = [[_with_link(lake, f) for f in found.new]]
    while True:
        named: dict[str, Link] = {}
        for file in rounds[-1]:
            if file.link is None:
                continue
            for key in [*file.link.sibling_keys(), *file.link.follows_keys()]:
                if key not in known and not _before(key, since):
                    named.setdefault(key, file.link)
        if not named:
            break
        known |= named.keys()
        loaded = warehouse.manifest_entries(list(named))
        more = []
        for key, linker in sorted(named.items()):
            if key in loaded:
                continue
            path = lake.path(key)
            try:
                entry = stat_file(lake, path)
            except FileNotFoundError:
                found.gaps.append(_missing(linker, key))
                log.warning("offset gap: %s", found.gaps[-1])
                continue
            more.append(
                _with_link(lake, _lake_file(lake, LakeEntry(path, entry.size, entry.version)))
            )
        if not more:
            break
        log.info("%d file(s) of older date= partitions found by following links", len(more))
        found.linked += len(more)
        rounds.append(more)
    found.new = [f for files in reversed(rounds) for f in files]
    return found


def _missing(linker: Link, key: str) -> MissingFile:
    gone = parse_name(key.rsplit("/", 1)[-1])
    return MissingFile(
        linker.batch.topic,
        linker.batch.partition,
        gone.first_offset if gone else None,
        gone.last_offset if gone else None,
        key,
        linker.key,
        linker.describe_gap(key),
    )


def _with_link(lake: Lake, file: LakeFile) -> LakeFile:
    """`file` with its link read from its Parquet footer (none when unreadable: the load says)."""
    try:
        with lake.fs.open(file.path, "rb") as fh:
            metadata = pq.read_schema(fh).metadata
    except FileNotFoundError:
        raise LoadError(f"{file.url} vanished from the lake while it was checked") from None
    except (OSError, ValueError):  # not Parquet: load_batch names the problem
        return file
    try:
        return replace(file, link=read_link(file.key, metadata))
    except ValueError as exc:
        raise LoadError(f"{file.url}: {exc}") from None


def _before(key: str, since: date | None) -> bool:
    match = _DATE_RE.search(key)
    return since is not None and match is not None and date.fromisoformat(match[1]) < since


def content_difference(
    lake: Lake, warehouse: Warehouse, file: LakeFile, entry: ManifestEntry
) -> tuple[str | None, str | None]:
    """(None, MD5 to record or None) when `file` holds the rows loaded under its key, else
    (what differs, None).

    Cheap first: the same size and version (S3 ETag, local mtime) is unchanged
    without reading. Otherwise (copied, rewritten by a replay, re-encoded) the
    bytes are read: the same MD5 is unchanged; else its rows are compared with the
    rows bronze holds from it, so the same rows under another compression, pyarrow
    version or row order are unchanged, and other rows name the first that differs.
    """
    if entry.size == file.size and file.version and file.version == entry.source_version:
        return None, None
    data = _read(lake, file)
    md5 = md5_hex(data)
    if md5 == entry.content_md5:
        return None, md5
    try:
        now = canonical_rows(pq.read_table(io.BytesIO(data)), file.url)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        what = f"it is no longer a readable Parquet file ({exc})"
    else:
        loaded = canonical_rows(warehouse.loaded_rows(file.key), file.url)
        difference = first_difference(now, loaded)
        if difference is None:
            return None, md5
        what = f"first difference at {difference}"
    return (
        f"{file.url} was loaded (load {entry.load_seq}, {entry.rows} row(s)) with other rows:"
        f" {what}",
        None,
    )


def _read(lake: Lake, file: LakeFile) -> bytes:
    try:
        return lake.fs.cat_file(file.path)
    except FileNotFoundError:
        raise LoadError(f"{file.url} vanished from the lake while it was checked") from None


def _path_of(lake: Lake, name: str) -> str:
    """The filesystem path of a file named by its URL or its key (`bars/…`), under bars/."""
    scheme = "" if lake.protocol == "file" else f"{lake.protocol}://"
    if name.startswith(BARS_PREFIX + "/"):
        path = lake.path(name)
    elif name.startswith(scheme):
        path = name.removeprefix(scheme)
    else:
        path = ""
    if not path.startswith(lake.path(BARS_PREFIX) + "/"):
        raise LoadError(f"{name} is not a file under {lake.url(lake.path(BARS_PREFIX))}")
    return path


def _stat(lake: Lake, names: Sequence[str]) -> list[LakeFile]:
    files = []
    for name in names:
        path = _path_of(lake, name)
        try:
            entry = stat_file(lake, path)
        except FileNotFoundError:
            raise LoadError(f"{name} is not in the lake") from None
        files.append(_lake_file(lake, LakeEntry(path, entry.size, entry.version)))
    return files


def _bound(settings: Settings, batch_files: int | None, max_batches: int | None) -> tuple[int, int]:
    per_batch = batch_files or settings.load_batch_files
    batches = max_batches or settings.load_max_batches
    if per_batch < 1 or batches < 1:
        raise SettingsError(
            f"batch size and batches per run must be at least 1, got {per_batch} and {batches}"
        )
    return per_batch, batches


def pending_files(
    settings: Settings, *, since: date | None = None, full_scan: bool = False
) -> list[str]:
    """URLs of new bar files, oldest partition first, at most one run's worth.

    A run's worth is STOCKPIPE_LOAD_MAX_BATCHES x STOCKPIPE_LOAD_BATCH_FILES; the
    rest is found by the next call. Raises `ContentConflict` for files loaded
    before with other content.
    """
    per_batch, batches = _bound(settings, None, None)
    lake = open_lake(settings)
    with _warehouse(settings, lake) as warehouse:
        listed = list_new_candidates(lake, warehouse, settings, since=since, full_scan=full_scan)
        found = follow_links(
            lake, warehouse, scan(lake, warehouse, listed), {f.key for f in listed}, since=since
        )
    _raise_conflicts(found.conflicts)
    return [f.url for f in found.new[: per_batch * batches]]


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
    per_batch, _ = _bound(settings, batch_files, None)
    lake = open_lake(settings)
    with _warehouse(settings, lake) as warehouse:
        given = _stat(lake, list(dict.fromkeys(files)))
        found = follow_links(lake, warehouse, scan(lake, warehouse, given), {f.key for f in given})
        return _load(
            lake,
            warehouse,
            found,
            batch_files=per_batch,
            max_batches=None,
            progress=progress,
            before_commit=before_commit,
            started=started,
        )


def load(
    settings: Settings,
    *,
    batch_files: int | None = None,
    max_batches: int | None = None,
    since: date | None = None,
    full_scan: bool = False,
    progress: bool = True,
    before_commit: BeforeCommit | None = None,
) -> LoadSummary:
    """Load new bar files of the lake, oldest first, in batches of `batch_files`.

    At most `max_batches` (STOCKPIPE_LOAD_MAX_BATCHES) batches commit per run.
    Each batch commits its rows and manifest entries together; `before_commit`
    runs inside each batch's transaction just before COMMIT (tests inject crashes there).
    `since` lists the partitions from that date on instead of from the
    high-water mark (for backfills of old dates); `full_scan` lists them all.
    """
    started = time.monotonic()
    per_batch, batches = _bound(settings, batch_files, max_batches)
    lake = open_lake(settings)
    with _warehouse(settings, lake) as warehouse:
        candidates = list_new_candidates(
            lake, warehouse, settings, since=since, full_scan=full_scan
        )
        found = scan(lake, warehouse, candidates)
        return _load(
            lake,
            warehouse,
            follow_links(lake, warehouse, found, {f.key for f in candidates}, since=since),
            batch_files=per_batch,
            max_batches=batches,
            progress=progress,
            before_commit=before_commit,
            started=started,
        )


def _load(
    lake: Lake,
    warehouse: Warehouse,
    found: Scan,
    *,
    batch_files: int,
    max_batches: int | None,
    progress: bool,
    before_commit: BeforeCommit | None,
    started: float,
) -> LoadSummary:
    new = found.new
    batches = [new[i : i + batch_files] for i in range(0, len(new), batch_files)]
    left = sum(len(b) for b in batches[max_batches:]) if max_batches else 0
    batches = batches[:max_batches] if max_batches else batches
    files_loaded = rows = committed = 0
    seqs: list[int] = []
    loaded: list[LoadedBatch] = []
    unchanged = found.unchanged
    conflicts = list(found.conflicts)
    with _progress(progress and bool(new), len(new) - left, warehouse.name) as advance:
        for batch in batches:
            # Another load holding the lock, or committing some of these files meanwhile,
            # is retried after a backoff with the batch scanned again (tenacity).
            retrying = Retrying(
                retry=retry_if_exception_type(ConcurrentLoad),
                stop=stop_after_attempt(_ATTEMPTS),
                wait=wait_exponential(multiplier=0.2, max=5),
                before_sleep=lambda state: log.info(
                    "a batch was not loaded: %s; checking it again", state.outcome.exception()
                ),
                reraise=True,
            )
            batch_started = time.monotonic()
            for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        again = scan(lake, warehouse, batch)
                        unchanged += again.unchanged
                        conflicts += again.conflicts
                        batch = again.new
                        if not batch:
                            break
                    result = warehouse.load_batch(batch, before_commit=before_commit)
                    files_loaded += result.files
                    rows += result.rows
                    committed += 1
                    if result.load_seq is not None:
                        seqs.append(result.load_seq)
                    loaded.append(
                        LoadedBatch(
                            result.load_seq,
                            result.files,
                            result.rows,
                            time.monotonic() - batch_started,
                        )
                    )
                    advance(result.files)
    summary = LoadSummary(
        files_found=found.found,
        files_new=len(new),
        files_loaded=files_loaded,
        rows=rows,
        batches=committed,
        seconds=time.monotonic() - started,
        files_unchanged=unchanged,
        files_left=left,
        load_seqs=tuple(seqs),
        files_linked=found.linked,
        gaps=tuple(found.gaps),
        loaded=tuple(loaded),
    )
    log.info("load into %s: %s", warehouse.name, summary)
    try:
        _raise_conflicts(conflicts)
    except ContentConflict as exc:
        exc.summary = summary  # what did load, for `stockpipe load --json`
        raise
    return summary


def _raise_conflicts(conflicts: Sequence[str]) -> None:
    if conflicts:
        error = ContentConflict(
            f"{len(conflicts)} lake file(s) were loaded before under the same name with other "
            "content, so they were not loaded again (every other file was): "
            + "; ".join(conflicts[:10])
            + ("; ..." if len(conflicts) > 10 else "")
            + ". A file name must always hold the same rows: move the file out of the lake "
            "and write its rows under a new name."
        )
        error.count = len(conflicts)
        raise error


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
