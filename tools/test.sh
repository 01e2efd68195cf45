#!/usr/bin/env bash
# Run the test suite: make the venv if missing, install ipymini with its test extras and kernelspecs, run pytest.
# PYTHON picks the interpreter (default python3), VENV the venv folder (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# GUI tests (pytests/test_gui.py) need a virtual X display, xwd, and the X libraries PyQt6's xcb plugin loads
# (under a lock: CI runs several Pythons' test.sh at once)
flock /tmp/ipymini-apt.lock bash -c 'command -v Xvfb >/dev/null && command -v xwd >/dev/null || { [ "$(id -u)" = 0 ] &&
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb x11-apps libxcb-icccm4 \
  libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0 libegl1 libgl1 libfontconfig1 libdbus-1-3 >/dev/null; }' ||
  echo "test.sh: could not install Xvfb" >&2
# gateway tests (pytests/test_gateway.py) log in over SSH to a private sshd on 127.0.0.2, and drive EG and Kernel Gateway + GP
flock /tmp/ipymini-apt.lock bash -c '[ -x /usr/sbin/sshd ] || { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null; }' || echo "test.sh: could not install sshd" >&2
tools/gateways.sh >/dev/null || echo "test.sh: could not build the gateways (tools/gateways.sh)" >&2
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# uv puts the test set in from its cache in seconds (pip takes 30-90 s a venv, and its HTTP cache stays empty on this
# machine), so the pip line after it only checks; where uv cannot be had, pip does it all. Bytecode as pip writes it: with
# PYTHONDONTWRITEBYTECODE=1 (set here) every kernel start would compile IPython again
"$VENV/bin/python" -m pip install -q uv && "$VENV/bin/python" -m uv pip install -q --compile-bytecode --python "$VENV/bin/python" -e ".[test,gateway]" ||
  "$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test,gateway]"
"$VENV/bin/python" -m ipymini install --sys-prefix >/dev/null
"$VENV/bin/python" -m ipykernel install --sys-prefix >/dev/null
export PATH="$PWD/$VENV/bin:$PATH"
exec "$VENV/bin/python" -m pytest "$@"
