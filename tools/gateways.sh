#!/usr/bin/env bash
# Build the gateways pytests/test_gateway.py drives (Enterprise Gateway; Kernel Gateway + gateway_provisioners), one venv each, once.
# Venvs go in $IPYMINI_GATEWAYS (default ~/.cache/ipymini-gateways); GATEWAY_PYTHON picks their interpreter (default python3).
set -euo pipefail
D=${IPYMINI_GATEWAYS:-$HOME/.cache/ipymini-gateways}
PY=${GATEWAY_PYTHON:-python3}
mkdir -p "$D"
exec 9>"$D/.lock"
flock 9  # CI runs several Pythons' test.sh at once
mk() {  # mk NAME PIP-ARGS...: a venv with exactly these requirements; rebuilt only when they change
  local v="$D/$1"; shift
  local want="$*"
  [ -x "$v/bin/python" ] && [ "$(cat "$v/.reqs" 2>/dev/null)" = "$want" ] && return 0
  rm -rf "$v"
  "$PY" -m venv "$v"
  "$v/bin/python" -m pip install -q --disable-pip-version-check "$@"
  echo "$want" > "$v/.reqs"
}
# EG 3.x breaks on jupyter_client 7+ (its kernel manager subclasses 6.x internals)
mk eg "jupyter_enterprise_gateway>=3.2,<4" "jupyter_client==6.1.12" paramiko pycryptodomex
mk gp "jupyter_kernel_gateway>=3" "gateway_provisioners>=0.4" paramiko pycryptodomex
echo "$D"
