#!/usr/bin/env bash
# Run the test suite: make .venv if missing, install ipymini with its test extras and kernelspec, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m ipymini install --sys-prefix >/dev/null
.venv/bin/python -m ipykernel install --sys-prefix >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
