"""The Fernet key Airflow encrypts connections and variables with, in a file.

    python infra/airflow/fernet_key.py PATH

AIRFLOW_FERNET_KEY, when set, is written to PATH (a comma-separated list, newest
first, as `airflow rotate-fernet-key` takes it); otherwise a key already in PATH
is kept (a new one would make the stored secrets unreadable), and on the first
start one is generated. Every Airflow process then reads it with
AIRFLOW__CORE__FERNET_KEY_CMD="cat PATH", so no key sits in the compose file or
the environment. The file is written whole, mode 0600. A value that is not a
Fernet key stops with a message naming it, exit 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(path: Path) -> str:
    from cryptography.fernet import Fernet

    given = os.environ.get("AIRFLOW_FERNET_KEY", "").strip()
    if given:
        for part in given.split(","):
            try:
                Fernet(part.strip().encode())
            except ValueError:
                raise SystemExit(
                    "airflow-init: AIRFLOW_FERNET_KEY is not a Fernet key (32 url-safe "
                    'base64 bytes: python -c "from cryptography.fernet import Fernet; '
                    'print(Fernet.generate_key().decode())"), or a comma-separated list of them'
                ) from None
        key, said = given, "from AIRFLOW_FERNET_KEY"
    elif path.exists() and path.read_text().strip():
        return "kept"
    else:
        key, said = Fernet.generate_key().decode(), "generated"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(key + "\n")
    os.replace(tmp, path)
    return said


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: fernet_key.py PATH", file=sys.stderr)
        sys.exit(2)
    try:
        print(f"airflow-init: Fernet key {main(Path(sys.argv[1]))} in {sys.argv[1]}")
    except SystemExit as stop:
        print(stop, file=sys.stderr)
        sys.exit(2)
