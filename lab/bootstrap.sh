#!/usr/bin/env bash
# Install everything ccdr and its lab need on a Debian/Ubuntu machine, then bring
# the two-site lab up. Idempotent: run it again at any time. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then echo "lab/bootstrap.sh: run as root (sudo)" >&2; exit 1; fi

APT_PACKAGES=(debootstrap sip-tester iproute2 util-linux procps psmisc postgresql-client kamailio)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then missing+=(python3-venv); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# A virtual environment: Debian's system Python refuses pip installs (PEP 668).
PY=${CCDR_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[dev]'

# PostgreSQL and Redis are started by `ccdr lab up` where not already running.
.venv/bin/ccdr lab up "$@"
echo "lab is up; topology: ${CCDR_LAB_DIR:-/var/lib/ccdr/lab}/topology.yaml" >&2
