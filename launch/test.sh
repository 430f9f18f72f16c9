#!/usr/bin/env bash
# Installs the project into .venv and runs the default (fast) test suite on
# $PYTEST_WORKERS processes (default 2: most test time is single-threaded XLA
# compilation). Slow tests: .venv/bin/python -m pytest -m slow -n 2
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
