"""Where the project's non-Python parts are: the dbt project, the Airflow DAGs, infra files.

A wheel carries them inside the package (`flows/_bundled/`, mapped there by
pyproject.toml), so an installed stockpipe runs `transform`, `kafka fetch` and
the demo without a checkout; an editable checkout reads them where they live,
at the top of the repository.
"""

from __future__ import annotations

from pathlib import Path

from flows.errors import StockpipeError

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DIR = PACKAGE_DIR / "_bundled"
CHECKOUT_DIR = PACKAGE_DIR.parent


def asset_dir(name: str) -> Path:
    """The folder `name` (`dbt`, `dags`, `infra/kafka`, ...) of this installation."""
    for root in (BUNDLED_DIR, CHECKOUT_DIR):
        path = root / name
        if path.is_dir():
            return path
    raise StockpipeError(
        f"the {name}/ folder is missing: it ships inside the stockpipe wheel (flows/_bundled/) "
        f"and sits at the top of a checkout, and neither {BUNDLED_DIR / name} nor "
        f"{CHECKOUT_DIR / name} exists; reinstall stockpipe"
    )
