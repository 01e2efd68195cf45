"Helpers that drive a kernel through jupyter_client the way a front end does."
import os, queue, signal, subprocess, sys, tempfile, time
from contextlib import contextmanager
from jupyter_client import KernelManager

TIMEOUT = float(os.environ.get("IPYMINI_TEST_TIMEOUT", "30"))  # only turns a hang into a failure

@contextmanager
def start_kernel(name="ipymini", **kw):
    """A started kernel and a ready client; both shut down afterwards. jupyter_client picks free ports and frees them before
    the kernel binds, so with many kernels starting at once (CI runs two suites side by side) another process can take one
    first and the kernel dies at bind ("Address already in use"): such a start is tried again with fresh ports, twice at most
    (a kernel that dies at every start still fails)."""
    for attempt in range(3):
        km = KernelManager(kernel_name=name)
        km.start_kernel(**kw)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            break
        except RuntimeError:  # "Kernel died before replying to kernel_info"
            kc.stop_channels()
            km.cleanup_resources()
            if attempt == 2: raise
    live.append(km)
    try: yield km,kc
    finally:
        live.remove(km)
        kc.stop_channels()
        km.shutdown_kernel(now=False)

@contextmanager
def logged_kernel(name, **kw):
    "`start_kernel` with the kernel's stderr in a file, `km.log_file`, so tests can read what it logs."
    with tempfile.TemporaryFile("w+") as log, start_kernel(name, stderr=log, **kw) as (km,kc):
        km.log_file = log
        yield km,kc

def other_client(km):
    "A second client with a session (so a routing identity) of its own; `km.client()` would share the first one's."
    from jupyter_client import BlockingKernelClient
    kc = BlockingKernelClient(connection_file=km.connection_file)
    kc.load_connection_file()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return kc

live = []  # the kernels start_kernel has running

def dump_stacks():
    "A reply that does not come: every live kernel writes its threads' stacks to its stderr (SIGUSR1), which pytest shows."
    for km in live:
        if "ipymini" not in " ".join(km.kernel_spec.argv): continue  # SIGUSR1 would end another kernel
        try: os.kill(km.provisioner.process.pid, signal.SIGUSR1)
        except (AttributeError, OSError): pass
    if live: time.sleep(1)

def next_msg(get, end, dump=True):
    """`get` (a client's get_*_msg) with the time left until `end`; one that never comes shows the kernels' stacks first
    (`dump=False` for a caller that polls with short timeouts)."""
    try: return get(timeout=max(0.01, end - time.monotonic()))
    except queue.Empty:
        if dump: dump_stacks()
        raise

def iopub_until_idle(kc, msg_id, timeout=TIMEOUT):
    "IOPub messages parented to `msg_id` up to its idle status (busy and idle dropped); others are kept for their own callers."
    stash = kc.__dict__.setdefault("iopub_stash", {})
    outs,end,early = [],time.monotonic() + timeout,stash.pop(msg_id, [])
    while True:
        m = early.pop(0) if early else next_msg(kc.get_iopub_msg, end)
        if (pid := m["parent_header"].get("msg_id")) != msg_id:
            stash.setdefault(pid, []).append(m)
            continue
        if m["msg_type"] == "status":
            if m["content"]["execution_state"] == "idle": return outs
            continue
        outs.append(m)

def shell_reply(kc, msg_id, timeout=TIMEOUT, dump=True):
    "The shell reply to `msg_id`; replies to other requests that arrive first are kept for their own callers."
    early = kc.__dict__.setdefault("early_replies", {})
    if msg_id in early: return early.pop(msg_id)
    end = time.monotonic() + timeout
    while True:
        m = next_msg(kc.get_shell_msg, end, dump)
        if m["parent_header"].get("msg_id") == msg_id: return m
        early[m["parent_header"].get("msg_id")] = m

def run(kc, code, timeout=TIMEOUT, **kw):
    "Execute `code`; `(reply content, iopub messages)` once both the reply and idle are in."
    mid = kc.execute(code, **kw)
    reply = shell_reply(kc, mid, timeout)
    return reply["content"],iopub_until_idle(kc, mid, timeout)

def request(kc, msg_type, channel="shell", timeout=TIMEOUT, **content):
    "Send any request on shell or control and return the full reply message."
    ch = getattr(kc, f"{channel}_channel")
    msg = kc.session.msg(msg_type, content)
    ch.send(msg)
    if channel == "shell": return shell_reply(kc, msg["header"]["msg_id"], timeout)
    end = time.monotonic() + timeout
    while True:
        m = ch.get_msg(timeout=max(0.01, end - time.monotonic()))
        if m["parent_header"].get("msg_id") == msg["header"]["msg_id"]: return m

def gone(pid, timeout=5.0):
    "True once `pid` no longer runs (a zombie counts as gone)."
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1][0] == "Z": return True
        except OSError: return True
        time.sleep(0.02)
    return False

@contextmanager
def orphaned_kernel(kernel_name, tmp_path, code=None):
    """A kernel started by a launcher process (so JPY_PARENT_PID is the launcher's), `code` run in it, then the launcher
    SIGKILLed; yields the kernel's pid, and kills the kernel afterwards if it is still there."""
    script = tmp_path / "launcher.py"
    script.write_text("import sys, time\nfrom jupyter_client import KernelManager\n"
        f"km = KernelManager(kernel_name={kernel_name!r}); km.start_kernel()\n"
        "kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)\n"
        + (f"kc.execute_interactive({code!r}, timeout=30)\n" if code else "")
        + "print(km.provisioner.process.pid, flush=True)\ntime.sleep(1000)\n")
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    kpid = None
    try:
        kpid = int(p.stdout.readline())
        p.kill()
        p.wait()
        yield kpid
    finally:
        p.kill()
        if kpid is not None and not gone(kpid, 0.1): os.kill(kpid, signal.SIGKILL)

def types(outs): return [m["msg_type"] for m in outs]
def text(outs, name="stdout"): return "".join(m["content"]["text"] for m in outs if m["msg_type"] == "stream" and m["content"]["name"] == name)
def result(outs): return next(m["content"]["data"] for m in outs if m["msg_type"] == "execute_result")

def drain(kc, timeout=0.2):
    "Throw away what IOPub holds now."
    try:
        while True: kc.get_iopub_msg(timeout=timeout)
    except queue.Empty: pass

def wait_msg(kc, pred, timeout=TIMEOUT):
    "The next IOPub message matching `pred`, looking first at those kept aside by `iopub_until_idle`."
    for msgs in kc.__dict__.get("iopub_stash", {}).values():
        for i,m in enumerate(msgs):
            if pred(m): return msgs.pop(i)
    end = time.monotonic() + timeout
    while True:
        m = next_msg(kc.get_iopub_msg, end)
        if pred(m): return m
