"""The lake as an fsspec filesystem: a local folder (default) or s3:// (MinIO, AWS).

Every part that touches the lake (the Parquet sink, the loader, the report)
opens it here, so credentials and the endpoint are handled in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

from flows.settings import Settings

BARS_PREFIX = "bars"
LATE_PREFIX = "late"


@dataclass(frozen=True)
class Lake:
    """A filesystem and the root path of the lake inside it (no protocol prefix)."""

    fs: fsspec.AbstractFileSystem
    root: str
    protocol: str  # "file" or "s3"

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def url(self, path: str) -> str:
        """A full URL for a path inside this lake (what the manifest records)."""
        return path if self.protocol == "file" else f"{self.protocol}://{path}"

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
