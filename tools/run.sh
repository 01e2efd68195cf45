#!/usr/bin/env bash
# Try ipymini in a real client: make .venv if missing, install ipymini + jupyter-console and the kernelspec, open a console.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e . jupyter_console
.venv/bin/python -m ipymini install --sys-prefix >/dev/null
if [ -t 0 ] && [ -t 1 ]; then exec .venv/bin/jupyter console --kernel ipymini "$@"; fi
# no terminal: run a short demo through jupyter_client and print what the kernel sent back
exec .venv/bin/python - <<'PY'
from jupyter_client.manager import start_new_kernel
km,kc = start_new_kernel(kernel_name="ipymini")
try:
    print(kc.kernel_info_reply if hasattr(kc, "kernel_info_reply") else "", end="")
    for code in ["import sys; print('hello from', sys.implementation.name)", "21 * 2", "from IPython.display import HTML; HTML('<b>rich</b>')", "1/0"]:
        print(f">>> {code}")
        kc.execute_interactive(code, timeout=30, output_hook=lambda m: print(f"  {m['msg_type']}: {m['content'].get('text') or m['content'].get('data') or m['content'].get('ename') or ''}".rstrip()) if m["msg_type"] not in ("status", "execute_input") else None)
finally:
    kc.stop_channels()
    km.shutdown_kernel()
PY
