"""The Fernet key compose's airflow-init keeps, and that Airflow reads it through _CMD.

`infra/airflow/fernet_key.py` runs in airflow-init before `airflow db migrate`; every
Airflow process then reads the key with AIRFLOW__CORE__FERNET_KEY_CMD="cat PATH".
Real Airflow reads the configuration here, in a subprocess with its own AIRFLOW_HOME.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infra" / "airflow" / "fernet_key.py"
VENV_BIN = Path(sys.executable).parent


def keep(path: Path, given: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_FERNET_KEY"}
    if given is not None:
        env["AIRFLOW_FERNET_KEY"] = given
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_key_is_generated_once_then_kept_and_a_given_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "fernet.key"
    first = keep(path)
    assert first.returncode == 0, first.stderr
    assert "generated" in first.stdout
    key = path.read_text().strip()
    token = Fernet(key.encode()).encrypt(b"connection password")  # a usable key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    again = keep(path)
    assert again.returncode == 0 and "kept" in again.stdout
    assert path.read_text().strip() == key  # what was encrypted stays readable
    assert Fernet(path.read_text().strip().encode()).decrypt(token) == b"connection password"

    mine = Fernet.generate_key().decode()
    rotated = keep(path, f"{mine},{key}")  # newest first, as rotate-fernet-key takes them
    assert rotated.returncode == 0 and "from AIRFLOW_FERNET_KEY" in rotated.stdout
    assert path.read_text().strip() == f"{mine},{key}"


def test_a_bad_key_stops_with_the_message_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fernet.key"
    done = keep(path, "not-a-key")
    assert done.returncode == 2
    assert "AIRFLOW_FERNET_KEY is not a Fernet key" in done.stderr
    assert "Traceback" not in done.stderr and not path.exists()


def test_airflow_reads_the_key_through_the_cmd_setting(tmp_path: Path) -> None:
    path = tmp_path / "fernet.key"
    assert keep(path).returncode == 0
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__CORE__FERNET_KEY_CMD": f"cat {path}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    code = "from airflow.configuration import conf; print(conf.get('core', 'fernet_key'))"
    done = subprocess.run(
        [str(VENV_BIN / "python"), "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == path.read_text().strip()
