"The kernel as a process: its banner, resource usage, child processes, and the parent it must not outlive."
import _imp, logging, os, signal, sys, threading, time
from contextlib import contextmanager

log = logging.getLogger("ipymini")

def env_flag(name, default:bool) -> bool:
    "The boolean environment flag `name` (0/1, false/true), or `default` when unset: every IPYMINI_* flag is read through here."
    v = os.environ.get(name)
    return default if v is None else v.strip().lower() not in ("0", "false", "no", "off", "")

@contextmanager
def headroom(frames=1000):
    "Kernel code that must not fail (replies, logs) gets `frames` of recursion limit, whatever limit user code set."
    lim = sys.getrecursionlimit()
    if lim < frames: sys.setrecursionlimit(frames)
    try: yield
    finally:
        if lim < frames and sys.getrecursionlimit() == frames:
            try: sys.setrecursionlimit(lim)  # the user's limit again (refused if we are deeper than it)
            except RecursionError: pass

def release_import_lock():
    """A RecursionError inside importlib (under a limit user code lowered) can leave this thread holding the global import
    lock: every other thread's next import would wait for ever. Between requests this thread imports nothing: let it go."""
    while _imp.lock_held():
        try: _imp.release_lock()
        except RuntimeError: return  # held by another thread, which is importing right now

def safe_str(e) -> str:
    "`str(e)`, or a placeholder when the exception's `__str__` raises or recurses."
    try: return str(e)
    except BaseException: return f"<unprintable {type(e).__name__} object>"

def plain_tb(e) -> list:
    "Python's own traceback of `e` as lines, for when IPython could not format one."
    import traceback
    with headroom():
        try: return traceback.format_exception(type(e), e, e.__traceback__)
        except BaseException: return [f"{type(e).__name__}: {safe_str(e)}"]

def banner() -> str:
    "IPython's banner text, without importing IPython if it is not loaded yet."
    v = getattr(sys.modules.get("IPython"), "__version__", None) or ipython_version()  # IPython may be half imported
    return (f"Python {sys.version}\nType 'copyright', 'credits' or 'license' for more information\n"
        f"IPython {v} -- An enhanced Interactive Python. Type '?' for help.\n")

def ipython_version() -> str:
    "IPython's version from its dist-info folder's name: 30 ms less than importlib.metadata on the first reply's path."
    import importlib.util
    spec = importlib.util.find_spec("IPython")
    site = os.path.dirname(os.path.dirname(spec.origin)) if spec and spec.origin else ""
    for n in (os.listdir(site) if site else ()):
        if n.lower().startswith("ipython-") and n.endswith(".dist-info"): return n[8:-10]
    from importlib.metadata import version
    return version("ipython")

def usage() -> dict:
    "What ipykernel's `usage_reply` carries: kernel CPU and memory (with psutil), host CPU count and memory."
    import socket
    res = dict(hostname=socket.gethostname(), pid=os.getpid())
    try: import psutil
    except ImportError: return dict(res, cpu_count=os.cpu_count())
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    def total(f):
        n = 0
        for p in procs:
            try: n += f(p)
            except psutil.Error: pass
        return n
    res.update(kernel_cpu=total(lambda p: p.cpu_percent(None)), kernel_memory=total(lambda p: p.memory_info().rss),
        cpu_count=psutil.cpu_count(logical=True), host_virtual_memory=dict(psutil.virtual_memory()._asdict()))
    if (pct := psutil.cpu_percent()): res["host_cpu_percent"] = pct
    return res

def children(pid=None) -> list:
    "Pids of all descendants of `pid` (default: this process), read from /proc."
    pid,kids = pid or os.getpid(),{}
    try: names = os.listdir("/proc")
    except OSError: return []
    for n in names:
        if not n.isdigit(): continue
        try:
            with open(f"/proc/{n}/stat", "rb") as f: stat = f.read()
        except OSError: continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(n))
    out,todo = [],[pid]
    while todo:
        new = kids.get(todo.pop(), [])
        out += new
        todo += new
    return out

def end_children(grace=0.5):
    "SIGTERM every process user code started, then SIGKILL what is still there after `grace` seconds, and reap them."
    pids = children()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try: os.kill(p, sig)
            except OSError: pass
        end = time.monotonic() + grace
        while pids and time.monotonic() < end:
            pids = [p for p in pids if alive(p)]
            if pids: time.sleep(0.02)
        if not pids: return

def alive(pid) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid: return False
    except ChildProcessError: pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f: return f.read().split(b") ")[1][:1] != b"Z"
    except OSError: return False

def watch_parent(kernel):
    "Shut down when the process that launched us (`JPY_PARENT_PID`) dies: a pidfd wakes a thread, no polling."
    try: ppid = int(os.environ.get("JPY_PARENT_PID", "0"))
    except ValueError: return
    if ppid <= 1: return
    def wait():
        import select
        try:
            fd = os.pidfd_open(ppid)
            select.select([fd], [], [])
        except (AttributeError, OSError):
            while os.getppid() == ppid: time.sleep(1)  # no pidfd on this platform: check once a second
        log.warning("parent process %d exited; shutting down", ppid)
        kernel.stop()
    threading.Thread(target=wait, daemon=True, name="ipymini-parent").start()
