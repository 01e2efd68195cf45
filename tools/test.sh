#!/usr/bin/env bash
# Run the test suite: make the venv if missing, install ipymini with its test extras and kernelspecs, run pytest.
# PYTHON picks the interpreter (default python3), VENV the venv folder (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/python" -m ipymini install --sys-prefix >/dev/null
"$VENV/bin/python" -m ipykernel install --sys-prefix >/dev/null
export PATH="$PWD/$VENV/bin:$PATH"
exec "$VENV/bin/python" -m pytest "$@"
