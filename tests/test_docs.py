"""The README and docs/ stay inside the repository and true to the code.

Every relative link resolves to a file of the repository (nothing links outside
it), every setting and every command is documented in docs/contracts.md, the
README's table of extras is pyproject.toml's, and the layout the README draws is
the tree's.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import AliasChoices

from flows.cli import COMMANDS
from flows.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def markdown_files() -> list[Path]:
    skip = {".venv", ".git", "target", "dbt_packages", "node_modules", "data"}
    return [p for p in REPO.rglob("*.md") if not skip & set(p.relative_to(REPO).parts)]


def test_docs_hold_the_architecture_contracts_operations_and_performance() -> None:
    names = {p.name for p in DOCS}
    assert {"architecture.md", "contracts.md", "operations.md", "performance.md"} <= names


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves_inside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "../shared" not in text
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:|#", target):
            continue
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(REPO), f"{path.name} links outside the repository: {target}"
        assert resolved.exists(), f"{path.name} links to a missing file: {target}"


def environment_names() -> list[str]:
    names = []
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.append(str(alias.choices[0]))
        elif alias:
            names.append(str(alias))
    return names


def test_every_setting_is_documented_in_the_contracts() -> None:
    contracts = (REPO / "docs" / "contracts.md").read_text(encoding="utf-8")
    names = environment_names()
    assert len(names) > 40
    missing = [name for name in names if f"`{name}`" not in contracts and name not in contracts]
    assert missing == []


def test_every_command_is_documented_in_the_contracts() -> None:
    contracts = (REPO / "docs" / "contracts.md").read_text(encoding="utf-8")
    assert [c for c in COMMANDS if f"`stockpipe {c}" not in contracts] == []


def test_the_readmes_extras_are_pyprojects() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    rows = set(re.findall(r"^\| `(\w+)` \|", readme, flags=re.MULTILINE))
    assert set(extras) <= rows


def test_the_readmes_layout_names_every_stage_folder() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    folders = {p.name for p in (REPO / "flows").iterdir() if (p / "__init__.py").exists()}
    drawn = set(re.findall(r"^  (\w+)/ ", readme, flags=re.MULTILINE))
    assert drawn == folders
