#!/usr/bin/env bash
# Validate docker-compose.yml without a Docker engine: `docker-compose config`
# parses the file, checks it against the Compose schema and interpolates every
# ${VAR} from .env.example (so a placeholder missing there fails here too).
# Installs Debian's docker-compose when no compose is on PATH (CI runs as root).
# Exits non-zero on an invalid file.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v docker-compose > /dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null 2>&1; then
        echo "validate-compose: docker-compose is not installed (apt-get install -y docker-compose)" >&2
        exit 1
    fi
    echo "validate-compose: installing docker-compose from Debian" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq > /dev/null
    apt-get install -y -qq docker-compose > /dev/null
fi

# `config` reads no engine; keep any DOCKER_HOST out of it all the same.
# The services' env_file is .env.example too (STOCKPIPE_ENV_FILE), as a clone has no .env.
export STOCKPIPE_ENV_FILE=.env.example
env -u DOCKER_HOST docker-compose -f docker-compose.yml --env-file .env.example config -q
# The ad-hoc `cli` service sits in a profile: validate with it enabled as well.
env -u DOCKER_HOST docker-compose -f docker-compose.yml --env-file .env.example --profile tools config -q
echo "validate-compose: docker-compose.yml is valid ($(docker-compose version --short 2>/dev/null || echo '?'))"
