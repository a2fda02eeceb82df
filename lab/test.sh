#!/usr/bin/env bash
# The whole test suite, lab tests required (they fail, never skip). Needs root.
# Brings the lab up first (idempotent); leaves it up afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
# 1,000 lab phones per site: the login and fleet lab tests register that many.
bash lab/bootstrap.sh --phones 1000
export CCDR_REQUIRE_LAB=1
.venv/bin/ruff check .
.venv/bin/mypy
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
# pytest's 5 means "no test ran": never a pass.
if [ "$rc" = 5 ]; then echo "no tests ran" >&2; exit 1; fi
exit "$rc"
