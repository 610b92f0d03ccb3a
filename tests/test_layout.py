"""The house by stage (docs/architecture.md): imports run one way, down the stages.

Each module of `flows/` (and each Airflow DAG file) belongs to one stage, and may
import only the stages listed for it below: never a later stage, never the local
tooling (broker launcher, demo, bench, chaos), never the CLI. The imports are read
from the source (every `import` and `from ... import`, also those inside
functions), so a lazy import cannot slip past.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FOUNDATION = {
    "flows",
    "flows.settings",
    "flows.errors",
    "flows.net",
    "flows.assets",
    "flows.metrics",
    "flows.logs",
}

# What each stage may import, besides itself. Data flows ingest -> stream -> lake ->
# warehouse -> transform -> report; the lake package is the object-store code that
# the stream's sink and the warehouse's loader share, so both stand on it.
ALLOWED: dict[str, set[str]] = {
    "foundation": set(),
    "ingest": {"foundation"},
    "lake": {"foundation"},
    "stream": {"foundation", "ingest", "lake"},
    # the warehouse loads what ingest records beside the ticks: the outage ledger, and
    # the splits fetched through the producers' Finnhub client
    "warehouse": {"foundation", "ingest", "lake"},
    "transform": {"foundation", "lake", "warehouse"},
    "report": {"foundation", "lake", "warehouse", "transform"},
    "ops": {"foundation", "ingest", "lake", "stream", "warehouse", "transform"},
    "entry": {"foundation", "stream"},  # flows/ohlc.py: `python -m bytewax.run flows.ohlc:flow`
    # thin DAG files over flows.transform; stockpipe_publish also builds the report, and
    # stockpipe_backfill refetches outages through the producers' backfill (ingest)
    "dags": {"foundation", "transform", "report", "ingest"},
    "cli": {"foundation"},  # names its commands as strings, imported when one runs
    "tooling": {
        "foundation",
        "ingest",
        "lake",
        "stream",
        "warehouse",
        "transform",
        "report",
        "ops",
    },
}
STAGE_PACKAGES = {"ingest", "stream", "lake", "warehouse", "transform", "report", "ops", "tooling"}


def stage_of(module: str) -> str:
    """The stage of a dotted module name under `flows` (or a DAG file's `dags.*`)."""
    parts = module.split(".")
    if parts[0] == "dags":
        return "dags"
    if module in FOUNDATION:
        return "foundation"
    if module == "flows.ohlc":
        return "entry"
    if module == "flows.cli":
        return "cli"
    if len(parts) > 1 and parts[1] in STAGE_PACKAGES:
        return parts[1]
    raise AssertionError(
        f"{module} is in no stage: put it in one of flows/{{{','.join(sorted(STAGE_PACKAGES))}}}/ "
        "or, if every stage needs it, among the foundation modules of tests/test_layout.py"
    )


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import of a `flows` module in `source`, whose package
    (for relative imports) is `package`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from flows.x import y` may import the submodule flows.x.y
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "flows"]


def violations(root: Path, sources: list[Path], known: set[str]) -> list[str]:
    """Every import in `sources` that its stage may not make, as readable lines."""
    problems = []
    for path in sources:
        module = module_name(path, root)
        stage = stage_of(module)
        seen: set[tuple[int, str]] = set()
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for line, target in imported_modules(path.read_text(encoding="utf-8"), package):
            if target not in known:  # `from flows.x import name`: a name, not a module
                continue
            other = stage_of(target)
            if other != stage and other not in ALLOWED[stage] and (line, other) not in seen:
                seen.add((line, other))  # `from flows.x import y`: one finding, not two
                problems.append(
                    f"{path.relative_to(root)}:{line}: {module} ({stage}) imports {target} "
                    f"({other}); {stage} may import only {sorted(ALLOWED[stage]) or 'nothing'}"
                )
    return problems


def sources_of(root: Path) -> list[Path]:
    return sorted((root / "flows").rglob("*.py")) + sorted((root / "dags").glob("*.py"))


def test_every_import_runs_down_the_stages() -> None:
    sources = sources_of(REPO)
    known = {module_name(p, REPO) for p in sources}
    assert len(sources) > 40, "the scan found too few modules to be reading the tree"
    assert violations(REPO, sources, known) == []


def test_the_top_of_flows_holds_only_the_foundation_the_cli_and_the_entry() -> None:
    top = {p.stem for p in (REPO / "flows").glob("*.py")}
    assert top == {
        "__init__",
        "settings",
        "errors",
        "net",
        "assets",
        "metrics",
        "logs",
        "cli",
        "ohlc",
    }
    packages = {p.name for p in (REPO / "flows").iterdir() if (p / "__init__.py").exists()}
    assert packages == STAGE_PACKAGES


def test_the_stages_are_in_data_flow_order() -> None:
    """A stage may use only stages before it in data-flow order (lake shared beneath)."""
    order = ["foundation", "ingest", "lake", "stream", "warehouse", "transform", "report", "ops"]
    for stage in order:
        assert ALLOWED[stage] <= set(order[: order.index(stage)]), stage
    assert all("tooling" not in allowed for allowed in ALLOWED.values())
    assert all("cli" not in allowed for allowed in ALLOWED.values())


@pytest.mark.parametrize(
    "module,line,says",
    [
        (
            "flows/stream/bars.py",
            "from flows.tooling import kafka",
            "(stream) imports flows.tooling",
        ),
        (
            "flows/ingest/sim.py",
            "from flows.stream.bars import Bar",
            "(ingest) imports flows.stream.bars",
        ),
        ("flows/lake/store.py", "import flows.warehouse.loader", "(lake) imports flows.warehouse"),
        ("flows/warehouse/loader.py", "from flows.transform import orchestration", "(warehouse)"),
        ("flows/stream/run.py", "from flows import cli", "(stream) imports flows.cli (cli)"),
        ("dags/load.py", "from flows.stream import bars", "(dags) imports flows.stream"),
        (
            "flows/report/html.py",
            "    from ..tooling.bench import x",
            "(report) imports flows.tooling",
        ),
    ],
)
def test_an_import_against_the_stages_is_named(
    tmp_path: Path, module: str, line: str, says: str
) -> None:
    """The checker itself: a tree with one forbidden import (lazy or relative too) fails."""
    for name in [
        "flows/__init__.py",
        "flows/tooling/__init__.py",
        "flows/tooling/kafka.py",
        "flows/tooling/bench.py",
        "flows/stream/__init__.py",
        "flows/stream/bars.py",
        "flows/stream/run.py",
        "flows/ingest/__init__.py",
        "flows/ingest/sim.py",
        "flows/lake/__init__.py",
        "flows/lake/store.py",
        "flows/warehouse/__init__.py",
        "flows/warehouse/loader.py",
        "flows/transform/__init__.py",
        "flows/transform/orchestration.py",
        "flows/report/__init__.py",
        "flows/report/html.py",
        "flows/cli.py",
        "dags/load.py",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("from flows.settings import load_settings\n")
    (tmp_path / "flows/settings.py").write_text("")
    body = f"def f():\n{line}\n" if line.startswith(" ") else f"{line}\n"
    (tmp_path / module).write_text(body)
    sources = sources_of(tmp_path)
    known = {module_name(p, tmp_path) for p in sources}
    found = violations(tmp_path, sources, known)
    assert len(found) == 1 and says in found[0], found
