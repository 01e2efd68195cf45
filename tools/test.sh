#!/usr/bin/env bash
# Run the test suite: make .venv if missing, install ipymini with its test extras and kernelspec, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# GUI tests (pytests/test_gui.py) need a virtual X display, xwd, and the X libraries PyQt6's xcb plugin loads
command -v Xvfb >/dev/null && command -v xwd >/dev/null || { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb x11-apps libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 \
  libxkbcommon-x11-0 libegl1 libgl1 libfontconfig1 libdbus-1-3 >/dev/null; } || echo "test.sh: could not install Xvfb" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m ipymini install --sys-prefix >/dev/null
.venv/bin/python -m ipykernel install --sys-prefix >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
