"""The wheel is the product: built from the tree, installed into a fresh virtualenv.

One wheel is built for the module (`pip wheel`, as the Dockerfile builds it) and
installed, with the pins of constraints.txt, into a virtualenv that has never seen
the checkout: first the base install alone (the CLI, settings, the Kafka client),
then `[warehouse]` on top. Every command runs with its working directory outside
the repository, so nothing can be found by accident in a checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
from load_helpers import write_sessions
from test_dependencies import requirement_name

from flows.cli import COMMANDS, INCLUDES, MODULE_EXTRAS

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

pytestmark = [pytest.mark.slow, pytest.mark.dbt]

# Distribution of each import name whose distribution is named differently.
DISTRIBUTION = {
    "yaml": "PyYAML",
    "dbt": "dbt-core",
    "snowflake": "snowflake-connector-python",
    "airflow": "apache-airflow",
    "cosmos": "astronomer-cosmos",
    "jinja2": "Jinja2",
    "markupsafe": "MarkupSafe",
    "exchange_calendars": "exchange-calendars",
    "moto": "moto",
}


def requirement_names(requirements: list[str]) -> set[str]:
    return {requirement_name(r) for r in requirements}


@dataclass
class Venv:
    root: Path
    wheel: Path
    work: Path  # a working directory outside the checkout

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 900):
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKPIPE_", "KAFKA_"))}
        clean.pop("PYTHONPATH", None)
        return subprocess.run(
            [str(self.root / "bin" / args[0]), *args[1:]],
            cwd=self.work,
            env={**clean, "VIRTUAL_ENV": str(self.root), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def pip_install(self, requirement: str) -> None:
        done = self.run(
            "python", "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), requirement
        )
        assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("stockpipe-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    work = tmp_path_factory.mktemp("work")
    env = Venv(root, wheel, work)
    env.pip_install(str(wheel))
    return env


def test_the_wheel_holds_every_module_and_the_bundled_projects(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(REPO)) for p in (REPO / "flows").rglob("*.py")}
    assert modules - names == set()
    assert "flows/report/template.html.j2" in names
    bundled = {
        "dbt": [p for p in (REPO / "dbt").rglob("*") if p.is_file() and not _ignored(p)],
        "dags": list((REPO / "dags").glob("*.py")),
        "infra/kafka": [REPO / "infra/kafka/pom.xml", *(REPO / "infra/kafka").glob("*.properties")],
    }
    for folder, files in bundled.items():
        assert files, folder
        want = {f"flows/_bundled/{p.relative_to(REPO)}" for p in files}
        assert want - names == set(), folder
    assert not any(n.startswith("flows/_bundled/dbt/target/") for n in names)


def _ignored(path: Path) -> bool:
    parts = path.relative_to(REPO / "dbt").parts
    return parts[0] in {"target", "logs", "dbt_packages"} or "__pycache__" in parts


def test_every_module_an_extra_names_is_a_distribution_that_extra_declares() -> None:
    """flows.cli's map of modules to extras (what a missing extra's message names)
    agrees with pyproject.toml."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, extra in MODULE_EXTRAS.items():
        distribution = DISTRIBUTION.get(module, module.replace("_", "-")).lower()
        declared = requirement_names(extras[extra])
        assert distribution in declared, (module, extra, sorted(declared))
        holders = [e for e, reqs in extras.items() if distribution in requirement_names(reqs)]
        assert holders == [extra], f"{module} comes with {holders}: name the command's extras"
    for extra, included in INCLUDES.items():
        assert f"stockpipe[{','.join(included)}]" in extras[extra], extra
    for name, entry in COMMANDS.items():
        assert set(entry.extras) <= set(extras), name


def test_the_base_install_prints_help_and_names_the_extra_a_command_needs(venv: Venv) -> None:
    done = venv.run("stockpipe", "--help")
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert name in done.stdout
    done = venv.run("stockpipe", "report", "--out", str(venv.work / "r.html"))
    assert done.returncode == 1
    assert "stockpipe report needs the [report] extra" in done.stderr, done.stderr
    assert "pip install 'stockpipe[report]'" in done.stderr
    assert "Traceback" not in done.stderr
    done = venv.run("stockpipe", "load")
    assert done.returncode == 1 and "[warehouse]" in done.stderr, done.stderr


def test_kafka_fetch_from_the_wheel_reads_its_bundled_pom(venv: Venv) -> None:
    cache = venv.work / "kafka-cache"
    done = venv.run("stockpipe", "kafka", "fetch", env={"STOCKPIPE_KAFKA_CACHE_DIR": str(cache)})
    assert done.returncode == 0, done.stdout + done.stderr
    pom = (REPO / "infra/kafka/pom.xml").read_text(encoding="utf-8")
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)
    libs = cache / version / "libs"
    assert (libs / f"kafka_2.13-{version}.jar").is_file()
    assert (libs / f"kafka-clients-{version}.jar").is_file()


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` (bytecode aside) with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.suffix != ".pyc"
    }


def test_load_and_transform_from_the_wheel_build_the_marts(venv: Venv) -> None:
    venv.pip_install(f"stockpipe[warehouse] @ {venv.wheel.as_uri()}")
    lake = venv.work / "lake"
    days = [datetime(2026, 3, 2, 14, 30), datetime(2026, 3, 3, 14, 30)]
    written = write_sessions(str(lake), days, ["COIN", "BLK"], minutes=390)
    db = venv.work / "w.duckdb"
    env = {"STOCKPIPE_LAKE_URL": str(lake), "STOCKPIPE_WAREHOUSE": f"duckdb:///{db}"}

    bundled = Path(
        venv.run("python", "-c", "import flows.assets as a; print(a.BUNDLED_DIR)").stdout.strip()
    )
    before = tree_state(bundled)
    assert any(path.endswith("dbt_project.yml") for path in before)

    done = venv.run("stockpipe", "load", "--no-progress", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    done = venv.run("stockpipe", "transform", env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (venv.work / "data" / "dbt-target" / "manifest.json").is_file()
    # the package stays as installed (in the image it is read-only): dbt wrote nothing there
    assert tree_state(bundled) == before

    with duckdb.connect(str(db), read_only=True) as con:
        bronze = con.execute("select count(*) from bronze.bars").fetchone()[0]
        daily = con.execute(
            "select symbol, count(*) from gold.mart_volatility_daily group by 1 order by 1"
        ).fetchall()
    assert bronze == written
    assert daily == [("BLK", len(days)), ("COIN", len(days))]
