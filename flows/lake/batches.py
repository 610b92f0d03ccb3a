"""How the bar files of one source partition link into a chain (contract 2).

The stream seals micro-batches per Kafka partition; a batch with bar rows
writes one file per `date=` partition, all under the batch's name,

    <topic>+<partition>+<first offset>-<last offset>.parquet

and its first offset is the one after the previous bar batch's last, so a
partition's bar files cover its offsets without a gap. Each bar file also
carries, in its Parquet key-value metadata under `stockpipe.batch`, the dates
of its own batch (where its sibling files are) and the first and last offset
and dates of the bar batch it follows (where that batch's files are):

    {"dates": ["2026-03-02", "2026-03-03"],
     "follows": {"first": 100, "last": 180, "dates": ["2026-03-02"]}}

`follows` is null for the first batch of a chain: a new recovery store, a
state restored from a snapshot older than format 5, or files written outside
the stream (`LakeWriter.write_bars`). A file without the key (older writers)
links nothing.

The loader reads the link of every new file, so it finds a file written into
a `date=` partition older than the ones it lists at a cost in proportion to the
new files, and it and `stockpipe status` report a batch the chain names that
the lake does not hold: an offset gap of that partition.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

META_KEY = b"stockpipe.batch"

_NAME_RE = re.compile(
    r"^(?P<topic>.+)\+(?P<partition>[0-9]+)\+(?P<first>-?[0-9]+)-(?P<last>-?[0-9]+)\.parquet$"
)
_KEY_RE = re.compile(
    r"^(?P<prefix>.*)/interval_s=(?P<interval>[0-9]+)/date=(?P<date>[0-9-]{10})/(?P<name>[^/]+)$"
)


def file_name(topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    """The name every file of one sealed batch has, in each folder it writes to."""
    return f"{topic}+{partition}+{first_offset:019d}-{last_offset:019d}.parquet"


@dataclass(frozen=True)
class BatchName:
    """What a file's name says: the source partition and offset range of its batch."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int


def parse_name(name: str) -> BatchName | None:
    """The batch of a file name, or None for a name not written by `file_name`."""
    match = _NAME_RE.match(name)
    if not match:
        return None
    return BatchName(
        match["topic"], int(match["partition"]), int(match["first"]), int(match["last"])
    )


@dataclass(frozen=True)
class Follows:
    """The bar batch a batch follows: its offsets and the dates of its files."""

    first_offset: int
    last_offset: int
    dates: tuple[str, ...]


def encode_link(dates: list[str] | tuple[str, ...], follows: Follows | None) -> bytes:
    """The `stockpipe.batch` metadata value of a batch's bar files (deterministic bytes)."""
    value = {
        "dates": list(dates),
        "follows": None
        if follows is None
        else {
            "first": follows.first_offset,
            "last": follows.last_offset,
            "dates": list(follows.dates),
        },
    }
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Link:
    """A bar file's place in its partition's chain, from its key and metadata."""

    key: str
    batch: BatchName
    dates: tuple[str, ...]  # of its own batch: its sibling files' folders
    follows: Follows | None  # None: the first batch of a chain

    def sibling_keys(self) -> list[str]:
        """The keys of the other files of its batch (the same name in its other dates)."""
        folder, name = _split(self.key)
        return [_key(folder, d, name) for d in self.dates if _key(folder, d, name) != self.key]

    def follows_keys(self) -> list[str]:
        """The keys of the files of the batch it follows (none for a chain's first)."""
        if self.follows is None:
            return []
        folder, _ = _split(self.key)
        b, f = self.batch, self.follows
        name = file_name(b.topic, b.partition, f.first_offset, f.last_offset)
        return [_key(folder, d, name) for d in f.dates]

    def describe_gap(self, missing: str) -> str:
        """One line for a file this one names that the lake does not hold."""
        b = self.batch
        gone = parse_name(missing.rsplit("/", 1)[-1])
        offsets = f"offsets {gone.first_offset}..{gone.last_offset}" if gone else "a batch"
        return (
            f"{b.topic}[{b.partition}]: {offsets} missing from the lake: {missing} "
            f"is named by {self.key} but not there"
        )


def read_link(key: str, metadata: dict[bytes, bytes] | None) -> Link | None:
    """The link of the bar file `key`, from its Parquet key-value metadata (None: no link)."""
    raw = (metadata or {}).get(META_KEY)
    batch = parse_name(key.rsplit("/", 1)[-1])
    if raw is None or batch is None or not _KEY_RE.match(key):
        return None
    try:
        value = json.loads(raw)
        follows = value.get("follows")
        return Link(
            key,
            batch,
            tuple(value["dates"]),
            None
            if follows is None
            else Follows(int(follows["first"]), int(follows["last"]), tuple(follows["dates"])),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{key}: unreadable {META_KEY.decode()} metadata {raw[:80]!r}: {exc}"
        ) from None


def _split(key: str) -> tuple[str, str]:
    """(`bars/interval_s=N`, name) of a bar file key."""
    match = _KEY_RE.match(key)
    if not match:
        raise ValueError(f"not a bar file key: {key}")
    return f"{match['prefix']}/interval_s={match['interval']}", match["name"]


def _key(folder: str, date: str, name: str) -> str:
    return f"{folder}/date={date}/{name}"
