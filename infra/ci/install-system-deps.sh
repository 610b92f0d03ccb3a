#!/usr/bin/env bash
# Debian packages the test suite needs beyond Python, Java and Maven:
#   chromium        headless browser for the report test (no downloaded browser)
#   docker-compose  `docker-compose config` validates docker-compose.yml (no engine needed)
#   postgresql      a private PostgreSQL server for the Airflow scheduler test's metadata
# Idempotent: does nothing when they are already installed.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
if ((${#need[@]})); then
  echo "installing Debian packages the tests use: ${need[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
