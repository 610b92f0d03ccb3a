"""The trade-condition rules table, its feed map and the classifier.

Expected values are the consolidated-tape rules as docs/conditions.md cites them
(the UTP matrix's consolidated columns, the CTA rows' vendor sources, Polygon/
Massive's conditions listing), not whatever the table happens to say.
"""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path

import pytest

from flows.stream.conditions import (
    HIGH_LOW,
    OPEN_CLOSE,
    REGULAR,
    UNMAPPED,
    VOLUME,
    UnknownConditions,
    _load,
    load_rules,
)

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "flows" / "stream" / "conditions"
RULES = FOLDER / "rules.csv"
FEEDS = FOLDER / "feeds.csv"

# The sale-condition code sets as the specifications list them (UTP Binary Output
# Specification's sale-condition table; CTS Pillar Output Specification's, where a
# regular sale is a space, written "@" here). Placeholders with no rule yet (UTP E
# and 8, "TBD" in the matrix; CTA 8, "Reserved") are left out on purpose.
UTP_CODES = set("@ABCDFGHIKLMNOPQRSTUVWXYZ145679")
CTA_CODES = set("@BCEFHIKLMNOPQRTUVXZ45679")

PRICES_NEVER_OPEN_CLOSE = HIGH_LOW | VOLUME  # the matrices' "first or only last sale" notes


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _copy(tmp_path: Path, name: str, edit) -> Path:
    """A copy of a packaged CSV with `edit(text) -> text` applied."""
    target = tmp_path / name
    target.write_text(edit((FOLDER / name).read_text(encoding="utf-8")), encoding="utf-8")
    return target


# --- real combinations as the UTP SIP sends them (sim and replay speak UTP) ---


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        # regular way, and conditions that change nothing
        (("@",), REGULAR),
        (("@", "F"), REGULAR),  # intermarket sweep
        (("O",), REGULAR),  # opening prints
        (("6",), REGULAR),  # closing prints
        (("@", "X"), REGULAR),  # cross
        # odd lots: volume only (UTP matrix I: high/low No, last No, volume Yes)
        (("@", "I"), VOLUME),
        (("@", "F", "I"), VOLUME),
        # extended hours, average price, contingent: volume only
        (("T",), VOLUME),
        (("@", "T", "I"), VOLUME),
        (("U",), VOLUME),
        (("W",), VOLUME),
        (("7",), VOLUME),
        (("C",), VOLUME),  # cash settlement
        # note 1 (first or only last-sale-eligible trade of the day): high/low, never open/close
        (("Z",), PRICES_NEVER_OPEN_CLOSE),
        (("4",), PRICES_NEVER_OPEN_CLOSE),
        (("P",), PRICES_NEVER_OPEN_CLOSE),
        (("@", "F", "4"), PRICES_NEVER_OPEN_CLOSE),
        (("L",), PRICES_NEVER_OPEN_CLOSE),  # note 2, decided like note 1
        # official open/close values are not trades: nothing at all
        (("M",), 0),
        (("Q",), 0),
        # corrected consolidated close: prices but never volume
        (("9",), HIGH_LOW | OPEN_CLOSE),
    ],
)
def test_utp_combinations_update_what_the_matrix_allows(rules, codes, expected):
    assert rules.classify("sim", codes) == expected
    assert rules.classify("replay", codes) == expected


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (("Z", "T"), VOLUME),  # out of sequence in extended hours
        (("9", "Z"), HIGH_LOW),  # no volume from 9, no open/close from Z
        (("M", "@"), 0),
        (("4", "I"), VOLUME),
        (("W", "M"), 0),
    ],
)
def test_several_conditions_allow_only_what_every_one_allows(rules, codes, expected):
    assert rules.classify("sim", codes) == expected


def test_no_codes_is_a_regular_trade_from_any_source(rules):
    for source in ("sim", "finnhub-ws", "finnhub-rest", "replay", "no-such-feed", None):
        assert rules.classify(source, ()) == REGULAR


# --- Finnhub's numeric codes ---


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (("1",), REGULAR),  # Regular
        (("1", "8"), REGULAR),  # + Intermarket Sweep Order
        (("1", "12"), VOLUME),  # + Odd Lot Trade: the most common Finnhub pair
        (("1", "8", "24", "12"), VOLUME),  # + Form-T: a post-market odd lot
        (("1", "24"), VOLUME),
        (("30",), PRICES_NEVER_OPEN_CLOSE),  # Sold (Out of Sequence)
        (("16",), 0),  # Market Center Official Close
        (("18",), REGULAR),  # Market Center Opening Trade, CTA O
        (("22",), VOLUME),  # Seller, mapped to the stricter CTA row
        (("39",), HIGH_LOW | OPEN_CLOSE),  # Corrected Consolidated Close
    ],
)
def test_finnhub_codes_classify_through_their_mapping(rules, codes, expected):
    assert rules.classify("finnhub-ws", codes) == expected


def test_finnhub_codes_without_a_verified_rule_are_unmapped(rules):
    # 11 CAP Election (retired), 38 611-exempt placeholder, 40 Opened, 41 trade-through exempt
    for code in ("11", "38", "40", "41"):
        assert rules.classify("finnhub-ws", ("1", code)) == REGULAR | UNMAPPED


# --- unmapped codes ---


def test_an_unmapped_code_counts_like_a_regular_trade_by_default(rules):
    assert rules.classify("sim", ("@", "%")) == REGULAR | UNMAPPED
    assert rules.classify("sim", ("E",)) == REGULAR | UNMAPPED  # UTP placeholder, no rule
    # the mapped codes beside it still restrict the trade
    assert rules.classify("sim", ("T", "%")) == VOLUME | UNMAPPED
    assert rules.classify("sim", ("M", "%")) == UNMAPPED


def test_an_unmapped_code_counts_in_volume_only_when_unknown_is_volume():
    rules = load_rules(unknown=UnknownConditions.volume)
    assert rules.classify("sim", ("@", "%")) == VOLUME | UNMAPPED
    assert rules.classify("sim", ("Z", "%")) == VOLUME | UNMAPPED
    assert rules.classify("sim", ("M", "%")) == UNMAPPED
    assert rules.classify("sim", ("@", "I")) == VOLUME  # mapped codes are unaffected
    assert rules.classify("sim", ("@",)) == REGULAR


def test_a_source_without_a_mapping_leaves_every_code_unmapped(rules):
    assert rules.classify("coinbase", ("@",)) == REGULAR | UNMAPPED
    assert rules.classify(None, ("I",)) == REGULAR | UNMAPPED
    assert rules.classify("finnhub-rest", ("1",)) == REGULAR | UNMAPPED
    volume = load_rules(unknown="volume")
    assert volume.classify("coinbase", ("@",)) == VOLUME | UNMAPPED


def test_rules_turned_off_classify_everything_as_regular():
    off = load_rules(enabled=False)
    assert off.classify("sim", ("M",)) == REGULAR
    assert off.classify("sim", ("@", "I")) == REGULAR
    assert off.classify("no-such-feed", ("?",)) == REGULAR


def test_results_are_memoised_and_lists_are_accepted(rules):
    first = rules.classify("sim", ("@", "I"))
    assert rules.classify("sim", ("@", "I")) == first
    assert rules.classify("sim", ["@", "I"]) == first  # type: ignore[arg-type]
    assert ("sim", ("@", "I")) in rules._memo


# --- the table itself ---


def test_every_sim_and_replay_mapping_resolves_to_its_own_utp_row(rules):
    utp = {r.code: r for r in rules.rules if r.scheme == "utp"}
    mapped = {}
    for row in _rows(FEEDS):
        if row["source"] in ("sim", "replay"):
            assert (row["scheme"], row["code"]) == ("utp", row["feed_code"]), row
            mapped.setdefault(row["source"], set()).add(row["feed_code"])
    assert mapped == {"sim": set(utp), "replay": set(utp)}
    for code, rule in utp.items():
        assert rules.classify("sim", (code,)) == rule.flags
        assert rules.classify("replay", (code,)) == rule.flags


def test_the_table_covers_the_published_utp_and_cta_code_sets(rules):
    codes = {"utp": set(), "cta": set()}
    for rule in rules.rules:
        codes[rule.scheme].add(rule.code)
    assert codes["utp"] == UTP_CODES
    assert codes["cta"] == CTA_CODES


def test_every_conditional_row_says_what_its_note_means_for_a_bar(rules):
    for rule in rules.rules:
        if rule.updates_high_low and not rule.updates_open_close:
            assert "open/close no" in rule.note, rule
        assert rule.source.strip(), rule


def test_every_source_key_is_explained_in_the_docs(rules):
    docs = (REPO / "docs" / "conditions.md").read_text(encoding="utf-8")
    keys = {key.strip() for rule in rules.rules for key in rule.source.split(";")}
    assert keys
    for key in keys:
        assert f"`{key}`" in docs, key


def test_the_csvs_ship_as_package_data():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["flows.stream"]
    shipped = {p.name for pattern in patterns for p in (REPO / "flows" / "stream").glob(pattern)}
    assert {"rules.csv", "feeds.csv"} <= shipped


# --- the validator ---


@pytest.mark.parametrize(
    ("edit", "line", "message"),
    [
        (lambda t: t.replace("utp,@,Regular", "nyse,@,Regular", 1), 2, "scheme 'nyse'"),
        (
            lambda t: t.replace("utp,A,Acquisition,true", "utp,A,Acquisition,yes"),
            3,
            "updates_open_close 'yes'",
        ),
        (
            lambda t: t.replace("utp,A,Acquisition", "utp,@,Acquisition", 1),
            3,
            "duplicate key utp,'@': already on line 2",
        ),
        (lambda t: t.replace("utp,A,Acquisition", "utp,AB,Acquisition", 1), 3, "code 'AB'"),
        (lambda t: t.replace("scheme,code", "scheme,kode", 1), 1, "header"),
        (lambda t: t.replace("utp,A,Acquisition,true,", "utp,A,Acquisition,", 1), 3, "7 fields"),
    ],
)
def test_a_broken_rules_table_is_refused_naming_file_line_and_value(tmp_path, edit, line, message):
    broken = _copy(tmp_path, "rules.csv", edit)
    with pytest.raises(ValueError) as refused:
        _load(broken, FEEDS)
    assert f"{broken}:{line}: " in str(refused.value)
    assert message in str(refused.value)


def test_a_broken_rules_row_names_its_line(tmp_path):
    broken = _copy(
        tmp_path,
        "rules.csv",
        lambda t: t.replace("utp,D,Distribution,true", "utp,D,Distribution,TRUE"),
    )
    lines = RULES.read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.startswith("utp,D,"))
    with pytest.raises(ValueError, match=rf"rules\.csv:{line}: updates_open_close 'TRUE'"):
        _load(broken, FEEDS)


def test_a_feed_mapping_to_a_row_the_table_lacks_is_refused(tmp_path):
    broken = _copy(tmp_path, "feeds.csv", lambda t: t + "finnhub-ws,99,utp,&\n")
    line = len(FEEDS.read_text(encoding="utf-8").splitlines()) + 1
    with pytest.raises(ValueError) as refused:
        _load(RULES, broken)
    assert f"{broken}:{line}: mapping to utp,'&'" in str(refused.value)


def test_a_feed_mapping_with_an_unknown_scheme_or_a_duplicate_is_refused(tmp_path):
    scheme = _copy(tmp_path, "feeds.csv", lambda t: t + "finnhub-ws,99,opra,@\n")
    with pytest.raises(ValueError, match="scheme 'opra'"):
        _load(RULES, scheme)
    again = tmp_path / "again.csv"
    again.write_text(FEEDS.read_text(encoding="utf-8") + "finnhub-ws,1,utp,I\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"duplicate key finnhub-ws,'1': already on line 2"):
        _load(RULES, again)


def test_an_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="'sometimes'"):
        _load(RULES, FEEDS, unknown="sometimes")  # type: ignore[arg-type]


# --- the fingerprint ---


def test_the_fingerprint_is_stable_and_short(rules):
    again = load_rules()
    assert rules.fingerprint() == again.fingerprint() == _load(RULES, FEEDS).fingerprint()
    assert len(rules.fingerprint()) == 16
    int(rules.fingerprint(), 16)


def test_the_fingerprint_ignores_line_endings(tmp_path):
    crlf_rules = _copy(tmp_path, "rules.csv", lambda t: t.replace("\n", "\r\n"))
    crlf_feeds = _copy(tmp_path, "feeds.csv", lambda t: t.replace("\n", "\r\n"))
    assert _load(crlf_rules, crlf_feeds).fingerprint() == load_rules().fingerprint()


def test_the_fingerprint_changes_with_a_flag_a_mapping_and_each_setting(tmp_path, rules):
    base = rules.fingerprint()
    flipped = _copy(
        tmp_path,
        "rules.csv",
        lambda t: t.replace("utp,I,Odd Lot Trade,false,false", "utp,I,Odd Lot Trade,false,true"),
    )
    changed = _load(flipped, FEEDS)
    assert changed.classify("sim", ("I",)) == HIGH_LOW | VOLUME
    assert changed.fingerprint() != base
    remapped = _copy(
        tmp_path, "feeds.csv", lambda t: t.replace("finnhub-ws,22,cta,R", "finnhub-ws,22,utp,R")
    )
    assert _load(RULES, remapped).fingerprint() != base
    assert load_rules(unknown=UnknownConditions.volume).fingerprint() != base
    assert load_rules(enabled=False).fingerprint() != base


# --- CTA rows, through a feed that speaks CTA codes as they are ---


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (("@",), REGULAR),
        (("@", "F"), REGULAR),
        (("E",), REGULAR),  # automatic execution
        (("6",), REGULAR),  # market center closing trade
        (("B",), VOLUME),  # CTA B is average price (UTP B is bunched)
        (("@", "I"), VOLUME),  # odd lot
        (("T",), VOLUME),  # extended hours
        (("R",), VOLUME),  # seller: stricter than UTP R, see the row's note
        (("O",), REGULAR),  # opening trade: the day's first qualifying last sale
        (("Z",), PRICES_NEVER_OPEN_CLOSE),
        (("L",), PRICES_NEVER_OPEN_CLOSE),
        (("M",), 0),
        (("Q",), 0),
        (("9",), HIGH_LOW | OPEN_CLOSE),
        (("F", "T", "I"), VOLUME),
    ],
)
def test_cta_combinations_update_what_the_rules_allow(tmp_path, codes, expected):
    feeds = tmp_path / "feeds.csv"
    cta = [row["code"] for row in _rows(RULES) if row["scheme"] == "cta"]
    feeds.write_text(
        "source,feed_code,scheme,code\n" + "".join(f"cts,{c},cta,{c}\n" for c in cta),
        encoding="utf-8",
    )
    assert _load(RULES, feeds).classify("cts", codes) == expected
