"""The lake as an fsspec filesystem: a local folder (default) or s3:// (MinIO, AWS).

Every part that touches the lake (the Parquet sink, the loader, the report)
opens it here, so credentials and the endpoint are handled in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from flows.settings import Settings

BARS_PREFIX = "bars"
LATE_PREFIX = "late"
_DATE_DIR_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class Lake:
    """A filesystem and the root path of the lake inside it (no protocol prefix)."""

    fs: fsspec.AbstractFileSystem
    root: str
    protocol: str  # "file" or "s3"

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def url(self, path: str) -> str:
        """A full URL for a path of this lake's filesystem (for messages and Airflow)."""
        return path if self.protocol == "file" else f"{self.protocol}://{path}"

    def key(self, path: str) -> str:
        """The path inside the lake of a path of its filesystem (what the manifest records):
        the same whichever mount, bucket, prefix or relative URL the lake is reached by."""
        root = self.root.rstrip("/") + "/"
        if not path.startswith(root):
            raise ValueError(f"{self.url(path)} is not inside the lake {self.url(self.root)}")
        return path[len(root) :]

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)


def open_lake(settings: Settings) -> Lake:
    """Open `STOCKPIPE_LAKE_URL` with the configured endpoint and credentials."""
    url = settings.lake_url
    if url.startswith("s3://"):
        # Short connect timeouts and few botocore retries: an unreachable store
        # surfaces quickly to the callers' own retry loops, which log it.
        fs = fsspec.filesystem(
            "s3",
            config_kwargs={
                "connect_timeout": 5,
                "read_timeout": 60,
                "retries": {"max_attempts": 2},
            },
            **settings.storage_options,
        )
        return Lake(fs, url.removeprefix("s3://").rstrip("/"), "s3")
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    fs = fsspec.filesystem("file", auto_mkdir=True)
    return Lake(fs, fs._strip_protocol(url), "file")


# ------------------------------------------------------------------ listing helpers
# The loader finds new files by listing only the `date=` folders at or after its
# high-water mark: these helpers list folder names (cheap, one call per parent)
# and the files of the chosen folders, never a whole tree.


@dataclass(frozen=True)
class Partition:
    """A `date=YYYY-MM-DD` folder of the lake (e.g. under bars/interval_s=60/)."""

    path: str  # path inside the lake filesystem
    day: date


@dataclass(frozen=True)
class LakeEntry:
    """A data file found in a partition, with what tells a rewrite: size and version."""

    path: str
    size: int
    version: str | None  # "etag:<S3 ETag>" or "mtime:<seconds>"


def _ls(lake: Lake, path: str) -> list[dict[str, Any]]:
    # s3fs caches listings per process; a long-lived worker must see new files.
    lake.fs.invalidate_cache(path)
    try:
        return list(lake.fs.ls(path, detail=True))
    except FileNotFoundError:
        return []


def _is_dir(info: dict[str, Any]) -> bool:
    return info.get("type") == "directory"


def list_partitions(lake: Lake, prefix: str = BARS_PREFIX) -> dict[str, list[Partition]]:
    """{parent folder: its `date=` folders, oldest first} for each folder directly under `prefix`.

    Lists folder names only (`bars/`, then each `bars/interval_s=N/`), never
    what a `date=` folder holds.
    """
    out: dict[str, list[Partition]] = {}
    for parent in sorted(i["name"].rstrip("/") for i in _ls(lake, lake.path(prefix)) if _is_dir(i)):
        found = []
        for info in _ls(lake, parent):
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            match = _DATE_DIR_RE.match(name)
            if match and _is_dir(info):
                try:
                    found.append(Partition(info["name"].rstrip("/"), date.fromisoformat(match[1])))
                except ValueError:  # date=2024-13-45: not a partition of ours
                    continue
        out[parent] = sorted(found, key=lambda p: p.day)
    return out


def partitions_from(partitions: Iterable[Partition], since: date | None) -> list[Partition]:
    """The partitions at or after `since` (all of them when `since` is None), oldest first."""
    return sorted((p for p in partitions if since is None or p.day >= since), key=lambda p: p.day)


def list_data_files(lake: Lake, folder: str, suffix: str = ".parquet") -> list[LakeEntry]:
    """The data files directly in `folder`, sorted by path.

    Writers may leave hidden or temporary files (".x.parquet.tmp", "_SUCCESS")
    beside the data: those are skipped.
    """
    files = []
    for info in _ls(lake, folder):
        name = info["name"].rsplit("/", 1)[-1]
        if _is_dir(info) or not name.endswith(suffix) or name[0] in "._":
            continue
        files.append(_entry(info))
    return sorted(files, key=lambda f: f.path)


def stat_file(lake: Lake, path: str) -> LakeEntry:
    """One file's size and version (raises FileNotFoundError)."""
    lake.fs.invalidate_cache(path)
    return _entry(lake.fs.info(path))


def _entry(info: dict[str, Any]) -> LakeEntry:
    etag = info.get("ETag") or info.get("etag")
    mtime = info.get("mtime") or info.get("LastModified")
    version = f"etag:{str(etag).strip(chr(34))}" if etag else (f"mtime:{mtime}" if mtime else None)
    return LakeEntry(info["name"], int(info.get("size") or 0), version)
