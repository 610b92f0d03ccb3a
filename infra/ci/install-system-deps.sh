#!/usr/bin/env bash
# Debian packages the test suite needs beyond Python, Java and Maven (`make demo`
# needs none of them):
#   chromium        headless browser for the report test (no downloaded browser)
#   docker-compose  `docker-compose config` validates docker-compose.yml (no engine needed)
#   postgresql      a private PostgreSQL server for the Airflow scheduler test's metadata
#   prometheus      promtool, which checks and unit-tests the alert rules
# Idempotent: does nothing when they are there. On a machine without apt-get it
# names what to install and exits 1 (`make test-fast` needs none of them).
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
{ compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1; } || need+=(postgresql)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
((${#need[@]})) || exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  cat >&2 <<MSG
make test needs programs this machine does not have: ${need[*]}
  chromium        the report's browser test (any Chromium or Chrome named 'chromium' on PATH)
  docker-compose  validating docker-compose.yml (the v1-compatible 'docker-compose' command)
  postgresql      the Airflow scheduler test's metadata database (initdb and postgres)
  prometheus      promtool, for the alert rules' checks and unit tests
Install them with your package manager (macOS: brew install chromium docker-compose postgresql@15 prometheus),
or run 'make test-fast', which needs none of them.
MSG
  exit 1
fi
echo "installing Debian packages the tests use: ${need[*]}"
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
