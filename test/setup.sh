#!/usr/bin/env bash
# Installs what etl_exec needs on Debian 12 (as root), then builds and
# installs the extension.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential postgresql-15 postgresql-server-dev-15 postgresql-15-cron
          libcurl4-openssl-dev libipc-run-perl python3 python3-pytest python3-psycopg2
          python3-requests curl nginx-light openssl)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

echo "== building etl_exec"
make -s PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
make -s install PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
