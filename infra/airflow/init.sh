#!/usr/bin/env bash
# One-shot job of docker-compose.yml (stockpipe image): migrate Airflow's
# metadata database, give the admin user its password, and keep the Fernet key.
# Idempotent.
#
# Airflow 3's default SimpleAuthManager takes its users from
# AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS and their passwords from the JSON file
# AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE; it only generates (and
# prints) a password for users missing from that file. Writing the file here
# makes the login the one in AIRFLOW_ADMIN_PASSWORD instead of a random one.
set -euo pipefail

: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD (see .env.example)}"
passwords_file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"
admin="${AIRFLOW_ADMIN_USERNAME:-admin}"

# Before anything reads Airflow's configuration: the Fernet key its processes read
# through AIRFLOW__CORE__FERNET_KEY_CMD (AIRFLOW_FERNET_KEY, else kept or generated).
python "$(dirname "$0")/fernet_key.py" "${AIRFLOW_FERNET_KEY_FILE:-/opt/airflow/auth/fernet.key}"

airflow db migrate
# The one-slot pool the DAGs' DuckDB tasks share (see infra/airflow/pools.sh)
bash "$(dirname "$0")/pools.sh"

mkdir -p "$(dirname "$passwords_file")"
python - "$passwords_file" "$admin" <<'PY'
import json
import os
import sys

path, user = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        passwords = json.load(f)
except (FileNotFoundError, ValueError):
    passwords = {}
passwords[user] = os.environ["AIRFLOW_ADMIN_PASSWORD"]
tmp = f"{path}.tmp"
with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    json.dump(passwords, f)
    f.write("\n")
os.replace(tmp, path)
PY
echo "airflow-init: metadata database migrated; user '$admin' (admin) signs in with AIRFLOW_ADMIN_PASSWORD"
