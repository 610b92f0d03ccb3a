"""The recovery store: the rules it was written under, reading it, and starting a new one.

Bytewax snapshots the stream's state (source offsets, the bar state of each
Kafka partition) into SQLite partitions under `STOCKPIPE_RECOVERY_DIR/<topic>`.
A snapshot is only as good as the rules it was taken under: a 60 s window
restored under 300 s bars, or a micro-batch restored under other flush rules,
would be turned into rows the first run never wrote. So the store records the
rules that shape rows and files:

- in `stockpipe-store.json` beside the SQLite partitions, written when the
  store is created and compared by every process before Bytewax starts (a
  cluster whose hosts share the store, as compose's stream services do, thus
  checks every host against the same record);
- in every partition's bar-state snapshot (`PartitionBars.snapshot`), compared
  when that state is restored, so a host that keeps a store of its own is
  checked too.

A mismatch stops the stream with `RulesChanged`, naming each changed setting
with its old and new value and the ways on. The way to change a rule on
purpose is a drain point (`start_from_drain`): the old store is drained
(`stockpipe stream --exit-when-idle` under the old settings closes every
window and writes every file), moved aside, and a new store begins each
partition right after the drained offset, with an event-time cut: ticks of
windows the old rules may have written go to `late/`, so no (symbol, window)
gets a row under both.

Reading a store (bytewax 0.21, one SQLite file per recovery partition,
`part-N.sqlite3`): `snaps(step_id, state_key, snap_epoch, ser_change)` holds
pickled snapshots (`ser_change` NULL when the state was discarded);
`exs(ex_num, worker_count, resume_epoch)` one row per execution and
`fronts(ex_num, worker_index, worker_frontier)` each worker's progress. The
epoch a new run resumes from is what Bytewax computes on start: for the
latest execution, the smallest over its workers of max(frontier, the
execution's resume epoch); the committed state of a key is its snapshot of
the greatest epoch *below* that resume epoch (later rows belong to an epoch
not every worker finished). `commits(part_index, commit_epoch)` is only
garbage-collection bookkeeping.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import sqlite3
import tempfile
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.errors import StockpipeError
from flows.settings import Settings

log = logging.getLogger(__name__)

FLOW_ID = "stockpipe_ohlc"
SOURCE_STEP = f"{FLOW_ID}.kafka_in"  # state_key "<partition>-<topic>", value: next offset
BARS_STEP = f"{FLOW_ID}.bars"  # state_key "<topic>#<partition>", value: PartitionBars.snapshot()
STORE_FILE = "stockpipe-store.json"
STORE_FORMAT = 1

# The settings that shape rows and files: (setting, Settings attribute, unit of the value
# kept). Durations are kept in whole milliseconds, so a value compares exactly.
RULE_SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("STOCKPIPE_BAR_SECONDS", "bar_seconds", "ms"),
    ("STOCKPIPE_ALLOWED_LATENESS", "allowed_lateness", "ms"),
    ("STOCKPIPE_RESTATE_HORIZON", "restate_horizon", "ms"),
    ("STOCKPIPE_RESTATE_INTERVAL", "restate_interval", "ms"),
    ("STOCKPIPE_FLUSH_ROWS", "flush_rows", "rows"),
    ("STOCKPIPE_FLUSH_INTERVAL", "flush_interval", "ms"),
    ("STOCKPIPE_MAX_CLOCK_SKEW", "max_clock_skew", "ms"),
    ("STOCKPIPE_MAX_MESSAGE_BYTES", "max_message_bytes", "bytes"),
)
PARTITIONS_RULE = "partitions"  # the topic's partition count: state is keyed by partition
# The trade-condition rules (contract 1): on or off, what an unmapped code counts as, and
# a fingerprint of the rules table and feed mappings. The last two only shape rows while
# the rules are on, so they are kept as 0 while off; a store from before the rules
# existed made its rows as `off` does.
CONDITION_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("STOCKPIPE_CONDITIONS", ("off", "on")),
    ("STOCKPIPE_UNKNOWN_CONDITIONS", ("", "regular", "volume")),
)
CONDITION_TABLE_RULE = "condition table"
_CONDITIONS_OFF = {
    "STOCKPIPE_CONDITIONS": 0,
    "STOCKPIPE_UNKNOWN_CONDITIONS": 0,
    CONDITION_TABLE_RULE: 0,
}


def stream_rules(settings: Settings, partitions: int) -> dict[str, int]:
    """The rules a store is written under, by setting name (and `partitions`)."""
    rules: dict[str, int] = {}
    for name, attr, unit in RULE_SETTINGS:
        value = getattr(settings, attr)
        rules[name] = round(value * 1000) if unit == "ms" else int(value)
    rules[PARTITIONS_RULE] = partitions
    if settings.conditions == "on":
        from flows.stream.conditions import load_rules

        table = hashlib.sha256(
            load_rules(unknown=settings.unknown_conditions).fingerprint().encode()
        )
        rules["STOCKPIPE_CONDITIONS"] = 1
        rules["STOCKPIPE_UNKNOWN_CONDITIONS"] = CONDITION_RULES[1][1].index(
            settings.unknown_conditions
        )
        rules[CONDITION_TABLE_RULE] = int(table.hexdigest()[:12], 16)
    else:
        rules.update(_CONDITIONS_OFF)
    return rules


def _unit(name: str) -> str:
    return next((unit for setting, _, unit in RULE_SETTINGS if setting == name), "")


def show_rule(name: str, value: int | None) -> str:
    if value is None:
        return "unset"
    for setting, names in CONDITION_RULES:
        if name == setting:
            return names[value] if 0 <= value < len(names) and names[value] else "unset"
    if name == CONDITION_TABLE_RULE:
        return f"{value:012x}" if value else "none (the rules off)"
    unit = _unit(name)
    if unit == "ms":
        return f"{value}ms" if value % 1000 else f"{value // 1000}s"
    if unit == "bytes":
        return f"{value} bytes"
    return str(value)


def rule_changes(old: Mapping[str, int], new: Mapping[str, int], topic: str) -> list[str]:
    """One line per rule whose value differs, in the order of RULE_SETTINGS."""
    lines = []
    old = {**_CONDITIONS_OFF, **old}  # a store from before the rules: made as `off` makes rows
    names = [*(s for s, _, _ in RULE_SETTINGS), PARTITIONS_RULE, *_CONDITIONS_OFF]
    for name in names:
        before, after = old.get(name), new.get(name)
        if before != after:
            if name == PARTITIONS_RULE:
                label = f"partitions of topic {topic!r}"
            elif name == CONDITION_TABLE_RULE:
                label = "the trade-condition table (flows/stream/conditions/)"
            else:
                label = name
            lines.append(f"{label}: was {show_rule(name, before)}, now {show_rule(name, after)}")
    return lines


class RulesChanged(StockpipeError):
    """The recovery store was written under other rules than the settings now say."""

    def __init__(self, where: str, changes: list[str], topic: str):
        self.changes = changes
        ways = (
            "Either set these back to the store's values, or change them at a drain point: "
            "stop the producers, run `stockpipe stream --exit-when-idle 10s` under the old "
            "settings (it closes every window and writes every file), then start once with "
            "`stockpipe stream --from-drain` under the new ones (docs/operations.md, "
            '"Changing a rule or adding partitions").'
        )
        if any(c.startswith("partitions of") for c in changes):
            ways += (
                f" Add partitions to {topic!r} only between the drain and --from-drain: the "
                "bar state of a symbol lives in the partition its key hashes to."
            )
        super().__init__(
            f"{where} was written under other rules; restarting under these would write rows "
            "the first run did not:\n  " + "\n  ".join(changes) + "\n" + ways
        )


# --------------------------------------------------------------------------- the store record


@dataclass
class StoreRecord:
    """`stockpipe-store.json`: the rules of a store and where its partitions start."""

    topic: str
    rules: dict[str, int]
    # Set for a store started from a drain point: the next offset of each partition the old
    # store read, and the event-time cut (ms) below which ticks go to late/.
    start_offsets: dict[int, int] = field(default_factory=dict)
    not_before_ms: int = 0
    drained_from: str | None = None
    created_at: str = ""

    def to_json(self) -> bytes:
        doc = {
            "format": STORE_FORMAT,
            "topic": self.topic,
            "rules": self.rules,
            "start_offsets": {str(p): o for p, o in sorted(self.start_offsets.items())},
            "not_before_ms": self.not_before_ms,
            "drained_from": self.drained_from,
            "created_at": self.created_at,
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def read(cls, path: Path) -> StoreRecord | None:
        file = path / STORE_FILE
        try:
            doc = json.loads(file.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StockpipeError(f"cannot read {file}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != STORE_FORMAT:
            raise StockpipeError(
                f"{file} is not a format-{STORE_FORMAT} stockpipe store record: {str(doc)[:80]}"
            )
        return cls(
            topic=doc["topic"],
            rules={str(k): int(v) for k, v in doc["rules"].items()},
            start_offsets={int(p): int(o) for p, o in doc.get("start_offsets", {}).items()},
            not_before_ms=int(doc.get("not_before_ms", 0)),
            drained_from=doc.get("drained_from"),
            created_at=doc.get("created_at", ""),
        )

    def write(self, path: Path) -> None:
        """Atomically (a crash leaves the old record or the new one, never half of one)."""
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".{STORE_FILE}.{os.getpid()}.tmp"
        tmp.write_bytes(self.to_json())
        os.replace(tmp, path / STORE_FILE)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def recovery_path(settings: Settings) -> Path:
    """Recovery partitions of this topic (one topic's offsets never leak into another's)."""
    return settings.recovery_dir / settings.topic


def init_partitions(settings: Settings) -> Path:
    """The SQLite partitions of the topic's store, created when missing (compose's
    recovery-init, before the stream processes start and would race to create them).
    The first process to start records the rules (`open_store`)."""
    path = recovery_path(settings)
    if not has_store(path):
        _create_partitions(path, settings.recovery_partitions)
    return path


def has_store(path: Path) -> bool:
    return any(path.glob("part-*.sqlite3"))


def _create_partitions(path: Path, count: int) -> None:
    """Bytewax's empty partitions under `path`, each one appearing whole: they are made in
    a sibling directory and moved in, so a reader (`status`, another process starting)
    never opens a partition file whose tables are not there yet."""
    from bytewax.recovery import init_db_dir

    path.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.init-", dir=path.parent))
    try:
        init_db_dir(scratch, count)
        for part in sorted(scratch.glob("part-*.sqlite3")):
            os.replace(part, path / part.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def open_store(settings: Settings, path: Path, partitions: int) -> StoreRecord:
    """The store at `path` for these settings: created if absent, else checked.

    Raises `RulesChanged` when the store's record holds other rules. A store without
    a record (made by an older stockpipe, or the file was lost) gets one with the
    rules its bar-state snapshots recorded, or, when they are older than format 4
    and record none, the current rules.
    """
    rules = stream_rules(settings, partitions)
    record = StoreRecord.read(path)
    if not has_store(path):
        _create_partitions(path, settings.recovery_partitions)
        if record is None or record.rules != rules:
            record = StoreRecord(settings.topic, rules, created_at=_now())
            record.write(path)
        return record
    if record is None:
        recorded = snapshot_rules(path, settings.topic)
        if recorded is None and read_recovery_store(path).resume_epoch is not None:
            log.warning("recovery store %s records no rules: recording the current ones", path)
        record = StoreRecord(settings.topic, recorded or rules, created_at=_now())
        record.write(path)
    changes = rule_changes(record.rules, rules, settings.topic)
    if changes:
        raise RulesChanged(f"the recovery store {path}", changes, settings.topic)
    return record


# --------------------------------------------------------------------------- reading a store


@dataclass
class RecoveryStore:
    """What a restart would resume from (see the module docstring)."""

    files: int
    execution: int | None = None  # ex_num of the latest execution
    worker_count: int | None = None
    resume_epoch: int | None = None  # snapshots of epochs below this are committed
    commit_epochs: dict[int, int] = field(default_factory=dict)  # part_index -> commit_epoch
    snapshots: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)


def _connect_ro(path: str) -> sqlite3.Connection:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    con.execute("PRAGMA query_only = ON")
    return con


def read_recovery_store(
    path: Path, steps: tuple[str, ...] = (SOURCE_STEP, BARS_STEP)
) -> RecoveryStore:
    """Read the committed snapshots of `steps` from the SQLite partitions under `path`."""
    files = sorted(glob.glob(str(path / "part-*.sqlite3")))
    store = RecoveryStore(files=len(files))
    exs: list[tuple[int, int, int]] = []
    fronts: dict[tuple[int, int], int] = {}
    for f in files:
        with closing(_connect_ro(f)) as con:
            exs.extend(con.execute("SELECT ex_num, worker_count, resume_epoch FROM exs"))
            for ex, worker, frontier in con.execute(
                "SELECT ex_num, worker_index, worker_frontier FROM fronts"
            ):
                fronts[(ex, worker)] = max(frontier, fronts.get((ex, worker), frontier))
            for part, epoch in con.execute("SELECT part_index, commit_epoch FROM commits"):
                store.commit_epochs[part] = epoch
    if not exs:
        return store  # initialised, never run (or never got through its first epoch)
    ex, workers, resume = max(exs)
    store.execution, store.worker_count = ex, workers
    store.resume_epoch = min(max(fronts.get((ex, w), resume), resume) for w in range(workers))

    marks = ",".join("?" * len(steps))
    sql = (
        "WITH best AS (SELECT step_id, state_key, MAX(snap_epoch) AS snap_epoch FROM snaps "
        f"WHERE snap_epoch < ? AND step_id IN ({marks}) GROUP BY step_id, state_key) "
        "SELECT step_id, state_key, snap_epoch, ser_change FROM snaps "
        "JOIN best USING (step_id, state_key, snap_epoch)"
    )
    for f in files:
        with closing(_connect_ro(f)) as con:
            for step, key, epoch, blob in con.execute(sql, (store.resume_epoch, *steps)):
                known = store.snapshots.get((step, key))
                if known is None or epoch > known[0]:
                    value = None if blob is None else pickle.loads(blob)
                    store.snapshots[(step, key)] = (epoch, value)
    return store


def partition_snapshots(store: RecoveryStore, topic: str) -> tuple[dict[int, Any], dict[int, Any]]:
    """(next offset, bar-state snapshot) of each partition of `topic`, with their epochs."""
    offsets: dict[int, Any] = {}
    bars: dict[int, Any] = {}
    for (step, key), snap in store.snapshots.items():
        if step == SOURCE_STEP:
            idx, _, key_topic = key.partition("-")
            if key_topic == topic and idx.isdigit():
                offsets[int(idx)] = snap
        elif step == BARS_STEP:
            key_topic, _, idx = key.rpartition("#")
            if key_topic == topic and idx.isdigit():
                bars[int(idx)] = snap
    return offsets, bars


def snapshot_rules(path: Path, topic: str) -> dict[str, int] | None:
    """The rules the committed bar-state snapshots of `topic` record (format 4 and later), if any."""
    _, bars = partition_snapshots(read_recovery_store(path, (BARS_STEP,)), topic)
    for _, (_, snap) in sorted(bars.items()):
        if isinstance(snap, tuple) and len(snap) == 9 and snap[7] is not None:
            return dict(snap[7])
    return None


# --------------------------------------------------------------------------- a drain point


def start_from_drain(settings: Settings, path: Path, partitions: int) -> StoreRecord:
    """Move a drained store aside and start a new one, under the current rules, after it.

    The old store must be drained: every partition's committed bar state holds no
    open window and no unsealed row (what `stockpipe stream --exit-when-idle`
    leaves). The new store starts each partition at the old one's next offset
    (a partition the old store never read, e.g. one just added, at its
    beginning), and ticks with an event time below the cut go to `late/`: the
    cut is the first window boundary of both bar sizes after the latest event
    time the old store saw, so no window of the new rules overlaps one the old
    rules may have written.
    """
    from flows.stream.bars import BarRules, FileRules, PartitionBars

    if not has_store(path):
        raise StockpipeError(
            f"--from-drain: there is no recovery store at {path} to start from; run "
            "`stockpipe stream` without --from-drain"
        )
    old = StoreRecord.read(path)
    store = read_recovery_store(path)
    if store.resume_epoch is None:
        raise StockpipeError(f"--from-drain: the recovery store {path} has committed nothing")
    offsets, bars = partition_snapshots(store, settings.topic)
    old_bar_ms = old.rules["STOCKPIPE_BAR_SECONDS"] if old else None
    max_ts: int | None = None
    busy: list[str] = []
    for p, (_, snap) in sorted(bars.items()):
        if snap is None:
            continue
        state = PartitionBars.restore(BarRules(), FileRules(), snap)
        open_windows = sum(len(s.open) for s in state.symbols.values())
        unsealed = len(state._bars) + len(state._late)
        if open_windows or unsealed:
            busy.append(f"partition {p}: {open_windows} open windows, {unsealed} unsealed rows")
        if old_bar_ms is None and state.stamp is not None:
            old_bar_ms = state.stamp.get("STOCKPIPE_BAR_SECONDS")
        for symbol in state.symbols.values():
            if symbol.max_ts is not None and (max_ts is None or symbol.max_ts > max_ts):
                max_ts = symbol.max_ts
    if busy:
        raise StockpipeError(
            f"--from-drain: the recovery store {path} was not drained ("
            + "; ".join(busy)
            + "). Run `stockpipe stream --exit-when-idle 10s` under its old settings first, "
            "with the producers stopped, so every window is closed and every file written."
        )
    new_bar_ms = round(settings.bar_seconds * 1000)
    step = math.lcm(new_bar_ms, old_bar_ms or new_bar_ms)
    cut = 0 if max_ts is None else (max_ts // step + 1) * step
    start = {
        p: o
        for p, (_, o) in offsets.items()
        if isinstance(o, int) and o >= 0  # OFFSET_BEGINNING: it read nothing
    }
    aside = path.with_name(f"{path.name}.drained-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    os.replace(path, aside)
    log.info("moved the drained recovery store %s to %s", path, aside)
    path.mkdir(parents=True)
    _create_partitions(path, settings.recovery_partitions)
    record = StoreRecord(
        settings.topic,
        stream_rules(settings, partitions),
        start_offsets=start,
        not_before_ms=cut,
        drained_from=str(aside),
        created_at=_now(),
    )
    record.write(path)
    log.info(
        "new recovery store %s: partitions start at %s; ticks before %s go to late/",
        path,
        start or "their beginning",
        datetime.fromtimestamp(cut / 1000, UTC).isoformat() if cut else "-",
    )
    return record
