"""Trade conditions: which trades may set a bar's open/close, high/low and volume.

The rules are data, shipped in the package beside this module:

- `conditions/rules.csv`: one row per (scheme, code) of the consolidated tapes'
  sale-condition matrices (`cta` for NYSE/Cboe-listed Tape A/B, `utp` for
  Nasdaq-listed Tape C), with the three consolidated update flags, the matrix's
  note as decided for a one-minute bar, and the published source of the row.
- `conditions/feeds.csv`: how each feed's own codes (the tick's `source`) map
  into that table.

`docs/conditions.md` says where every rule comes from and what each note means
for a bar. This module imports only the standard library, so the bar logic and
the tests use it without Bytewax or Kafka.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

HIGH_LOW = 1  # the trade may set the bar's high and low
OPEN_CLOSE = 2  # ... its open and close
VOLUME = 4  # ... counts in volume, vwap and trade_count
REGULAR = HIGH_LOW | OPEN_CLOSE | VOLUME
UNMAPPED = 8  # one or more of its codes has no mapping (counted in the bar)
# Not a condition: the tick is part of a 1-minute candle (source `finnhub-candle`), which
# stands for its whole window (flows.stream.bars.PartialBar)
CANDLE = 16

SCHEMES = frozenset({"cta", "utp"})
RULES_COLUMNS = (
    "scheme",
    "code",
    "name",
    "updates_open_close",
    "updates_high_low",
    "updates_volume",
    "note",
    "source",
)
FEEDS_COLUMNS = ("source", "feed_code", "scheme", "code")
_BOOLEANS = {"true": True, "false": False}

# Ticks repeat a handful of (source, codes) combinations; the bound only stops a
# feed that sends ever-new codes from growing the memo without limit.
_MEMO_LIMIT = 4096


class UnknownConditions(StrEnum):
    """How a trade counts when one of its codes has no mapping."""

    regular = "regular"  # like a regular trade (prices and volume)
    volume = "volume"  # in volume only


@dataclass(frozen=True)
class Rule:
    """One (scheme, code) row of the rules table."""

    scheme: str
    code: str
    name: str
    updates_open_close: bool
    updates_high_low: bool
    updates_volume: bool
    note: str
    source: str

    @property
    def flags(self) -> int:
        """The row as classifier bits (HIGH_LOW | OPEN_CLOSE | VOLUME)."""
        return (
            (HIGH_LOW if self.updates_high_low else 0)
            | (OPEN_CLOSE if self.updates_open_close else 0)
            | (VOLUME if self.updates_volume else 0)
        )


class ConditionRules:
    """The loaded table and feed map; `classify` turns a tick's codes into bits."""

    def __init__(
        self,
        rules: Sequence[Rule],
        feeds: dict[str, dict[str, Rule]],
        *,
        enabled: bool,
        unknown: UnknownConditions,
    ) -> None:
        self._rules = tuple(rules)
        self._feeds = {
            source: {code: rule.flags for code, rule in codes.items()}
            for source, codes in feeds.items()
        }
        self._enabled = enabled
        self._unknown = UnknownConditions(unknown)
        self._unknown_flags = REGULAR if self._unknown is UnknownConditions.regular else VOLUME
        self._memo: dict[tuple[str | None, tuple[str, ...]], int] = {}
        self._fingerprint = _fingerprint(self._rules, feeds, enabled, self._unknown)

    def classify(self, source: str | None, codes: tuple[str, ...]) -> int:
        """The bits a trade from `source` with condition `codes` may update.

        No codes is a regular trade. Otherwise a field's bit is set only if every
        mapped code allows it; a code `source` does not map (or a source with no
        mapping at all) sets UNMAPPED and counts as `unknown` says.
        """
        if not codes or not self._enabled:
            return REGULAR
        if type(codes) is not tuple:
            codes = tuple(codes)
        key = (source, codes)
        found = self._memo.get(key)
        if found is not None:
            return found
        mapping = self._feeds.get(source) if source is not None else None
        result = REGULAR
        for code in codes:
            flags = mapping.get(code) if mapping is not None else None
            if flags is None:
                result = (result & self._unknown_flags) | UNMAPPED
            else:
                result &= flags | UNMAPPED
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = result
        return result

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def unknown(self) -> UnknownConditions:
        return self._unknown

    def fingerprint(self) -> str:
        """A short stable hash of the table, the feed map, `unknown` and `enabled`."""
        return self._fingerprint


def load_rules(
    *, enabled: bool = True, unknown: UnknownConditions = UnknownConditions.regular
) -> ConditionRules:
    """The packaged rules (`flows/stream/conditions/*.csv`), validated.

    `enabled=False` turns the rules off: every trade classifies as REGULAR.
    A bad row raises ValueError naming the file, the line and the value.
    """
    folder = resources.files("flows.stream").joinpath("conditions")
    return _load(
        folder.joinpath("rules.csv"), folder.joinpath("feeds.csv"), enabled=enabled, unknown=unknown
    )


def _load(
    rules_path: Path | Traversable,
    feeds_path: Path | Traversable,
    *,
    enabled: bool = True,
    unknown: UnknownConditions = UnknownConditions.regular,
) -> ConditionRules:
    """Load and validate a rules table and a feed map from these two files."""
    if unknown not in set(UnknownConditions):
        raise ValueError(
            f"unknown conditions setting {unknown!r}: choose one of "
            + ", ".join(repr(u.value) for u in UnknownConditions)
        )
    table = _read_rules(rules_path)
    feeds = _read_feeds(feeds_path, table)
    return ConditionRules(
        tuple(table.values()), feeds, enabled=enabled, unknown=UnknownConditions(unknown)
    )


def _rows(path: Path | Traversable, columns: tuple[str, ...]) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) of each data row, after checking the header."""
    text = path.read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or tuple(header) != columns:
        raise ValueError(f"{path}:1: header {header!r}: expected the columns {','.join(columns)}")
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue  # a blank line
        if len(fields) != len(columns):
            raise ValueError(
                f"{path}:{line}: {len(fields)} fields {fields!r}: expected {len(columns)} "
                f"({','.join(columns)}); quote a value that holds a comma"
            )
        yield line, fields


def _read_rules(path: Path | Traversable) -> dict[tuple[str, str], Rule]:
    table: dict[tuple[str, str], Rule] = {}
    lines: dict[tuple[str, str], int] = {}
    for line, fields in _rows(path, RULES_COLUMNS):
        scheme, code, name, open_close, high_low, volume, note, source = fields
        where = f"{path}:{line}"
        _check_scheme(where, scheme)
        if len(code) != 1:
            raise ValueError(
                f"{where}: code {code!r}: a sale condition is one character as the SIP sends it"
            )
        if not name.strip():
            raise ValueError(f"{where}: name {name!r}: every row needs the condition's name")
        if not source.strip():
            raise ValueError(
                f"{where}: source {source!r}: every row names the published document it comes from"
            )
        key = (scheme, code)
        if key in table:
            raise ValueError(
                f"{where}: duplicate key {scheme},{code!r}: already on line {lines[key]}"
            )
        table[key] = Rule(
            scheme=scheme,
            code=code,
            name=name,
            updates_open_close=_boolean(where, "updates_open_close", open_close),
            updates_high_low=_boolean(where, "updates_high_low", high_low),
            updates_volume=_boolean(where, "updates_volume", volume),
            note=note,
            source=source,
        )
        lines[key] = line
    return table


def _read_feeds(
    path: Path | Traversable, table: dict[tuple[str, str], Rule]
) -> dict[str, dict[str, Rule]]:
    feeds: dict[str, dict[str, Rule]] = {}
    lines: dict[tuple[str, str], int] = {}
    for line, (source, feed_code, scheme, code) in _rows(path, FEEDS_COLUMNS):
        where = f"{path}:{line}"
        if not source.strip():
            raise ValueError(
                f"{where}: source {source!r}: name the tick source the codes come from"
            )
        if not feed_code:
            raise ValueError(f"{where}: feed_code {feed_code!r}: the feed's own code is required")
        _check_scheme(where, scheme)
        rule = table.get((scheme, code))
        if rule is None:
            raise ValueError(
                f"{where}: mapping to {scheme},{code!r}: the rules table has no such row"
            )
        key = (source, feed_code)
        if key in lines:
            raise ValueError(
                f"{where}: duplicate key {source},{feed_code!r}: already on line {lines[key]}"
            )
        lines[key] = line
        feeds.setdefault(source, {})[feed_code] = rule
    return feeds


def _check_scheme(where: str, scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(
            f"{where}: scheme {scheme!r}: expected one of {', '.join(sorted(SCHEMES))}"
        )


def _boolean(where: str, column: str, value: str) -> bool:
    try:
        return _BOOLEANS[value]
    except KeyError:
        raise ValueError(f"{where}: {column} {value!r}: write true or false") from None


def _fingerprint(
    rules: Sequence[Rule],
    feeds: dict[str, dict[str, Rule]],
    enabled: bool,
    unknown: UnknownConditions,
) -> str:
    # Over the parsed values, not the bytes, so line endings or quoting do not
    # change it; names, notes and sources are included (a snapshot records the
    # table as a whole).
    digest = hashlib.sha256()
    digest.update(f"stockpipe.conditions/1\nenabled={enabled}\nunknown={unknown.value}\n".encode())
    for rule in sorted(rules, key=lambda r: (r.scheme, r.code)):
        fields = (
            rule.scheme,
            rule.code,
            rule.name,
            str(rule.updates_open_close),
            str(rule.updates_high_low),
            str(rule.updates_volume),
            rule.note,
            rule.source,
        )
        digest.update(("rule\x1f" + "\x1f".join(fields) + "\n").encode())
    for source in sorted(feeds):
        for feed_code in sorted(feeds[source]):
            rule = feeds[source][feed_code]
            line = "\x1f".join(("feed", source, feed_code, rule.scheme, rule.code))
            digest.update((line + "\n").encode())
    return digest.hexdigest()[:16]
