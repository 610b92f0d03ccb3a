"""Every library the code imports is declared in pyproject.toml, and nothing else is.

Imports are read from the source of `flows/` and `dags/` (also those inside
functions); each third-party module is matched to the distributions that
install it in this environment.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]

# Declared though never imported by name: each is loaded by another library.
PLUGINS = {
    "dbt-duckdb": "dbt's DuckDB adapter, loaded by dbt-core for the duckdb target",
    "dbt-snowflake": "dbt's Snowflake adapter, loaded by dbt-core for the snowflake target",
    "psycopg2-binary": "Airflow's PostgreSQL metadata database driver (SQLAlchemy)",
    "asyncpg": "Airflow 3's async PostgreSQL engine",
}
# Distributions that stand for a module whose installed distributions have other names.
META = {"airflow": "apache-airflow"}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normal(re.split(r"[\[<>=!~; @]", requirement, maxsplit=1)[0])


def declared() -> dict[str, set[str]]:
    """Distribution -> the groups declaring it ("base" or an extra's name)."""
    groups = {"base": PROJECT["dependencies"], **PROJECT["optional-dependencies"]}
    out: dict[str, set[str]] = {}
    for group, requirements in groups.items():
        for requirement in requirements:
            out.setdefault(requirement_name(requirement), set()).add(group)
    out.pop("stockpipe", None)
    return out


def third_party_imports() -> dict[str, list[str]]:
    """Top-level third-party module -> the files importing it."""
    found: dict[str, list[str]] = {}
    for path in [*(REPO / "flows").rglob("*.py"), *(REPO / "dags").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in {"flows", "__future__"}:
                    found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


@functools.cache
def installed() -> dict[str, list[str]]:
    """Top-level module -> the installed distributions providing it (read once: slow)."""
    return importlib.metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    names = installed().get(module, [])
    return {normal(n) for n in names} | ({META[module]} if module in META else set())


def test_every_imported_library_is_declared() -> None:
    declarations = declared()
    imports = third_party_imports()
    assert {"bytewax", "duckdb", "plotly", "confluent_kafka"} <= set(imports)
    undeclared = {
        module: files
        for module, files in imports.items()
        if not distributions_of(module) & set(declarations)
    }
    assert undeclared == {}


def test_every_declared_library_is_imported_or_a_named_plugin() -> None:
    used = set().union(*(distributions_of(m) for m in third_party_imports()))
    declarations = set(declared()) - {"pytest", "pytest-timeout", "hypothesis", "fakesnow"}
    declarations -= {"ta-lib", "ruff"}  # test and lint tools of [dev]
    unused = declarations - used - set(PLUGINS)
    assert unused == set()
    assert set(PLUGINS) <= set(declared())


def test_the_base_install_is_what_every_command_needs() -> None:
    """The modules the CLI, the settings and the producers import at the top of
    their files are all in the base dependencies."""
    base = {requirement_name(r) for r in PROJECT["dependencies"]}
    front = [REPO / "flows" / name for name in ("cli.py", "settings.py", "errors.py", "assets.py")]
    front += sorted((REPO / "flows" / "ingest").glob("*.py"))
    for path in front:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only: lazy imports belong to a command's extra
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in {"flows", "__future__"}:
                    continue
                assert distributions_of(top) & base, f"{path.name} imports {top} at module level"
