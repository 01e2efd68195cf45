"The kernel as a process: its banner, resource usage, child processes, and the parent it must not outlive."
import _imp, logging, os, select, signal, socket, sys, threading, time
from contextlib import contextmanager
from io import open  # bound now: the shutdown path reads /proc with it, whatever user code makes of `builtins.open`

log = logging.getLogger("ipymini")
kernel_pid = os.getpid()

def forked() -> bool: return os.getpid() != kernel_pid

def exit_child():
    """In a child that `os.fork()` made in a cell, now back in the kernel's code: exit. It shares the parent's epoll, self-pipe,
    sockets and outbox pipes; waiting on them would steal the parent's wake-ups. Its output went to fds 1 and 2 (see capture)."""
    if not forked(): return
    for f in (sys.stdout, sys.stderr):
        try: f.flush()
        except BaseException: pass
    os._exit(0)

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
        try:
            fd = os.pidfd_open(ppid)
            select.select([fd], [], [])
        except (AttributeError, OSError):
            while os.getppid() == ppid: time.sleep(1)  # no pidfd on this platform: check once a second
        log.warning("parent process %d exited; shutting down", ppid)
        kernel.stop()
    threading.Thread(target=wait, daemon=True, name="ipymini-parent").start()

class SignalRelay:
    """Signals write their number to a socket (`signal.set_wakeup_fd`). A thread reading it calls `wake()` (a toolkit loop on the
    main thread returns to Python, where handlers run) and hands a SIGINT that another thread took to the main thread: Qt's
    threads and user threads accept signals too, and then a `time.sleep` on the main thread would never be interrupted."""
    def __init__(self, wake, ours, posted):
        self.wake,self.ours,self.posted,self.at = wake,ours,posted,0.0  # `posted`: {signum: what this thread does for it}
        self.r,self.w = socket.socketpair()
        self.w.setblocking(False)
        # `handled()` runs in a signal handler, which a second signal can interrupt at any bytecode: it must take no lock
        # (a threading.Event here deadlocked the main thread when two SIGINTs came close together), so it writes to a pipe
        self.ran_r,self.ran_w = os.pipe()
        os.set_blocking(self.ran_r, False)
        os.set_blocking(self.ran_w, False)
        self.install()
        threading.Thread(target=self.run, daemon=True, name="ipymini-signals").start()  # inherits the kernel threads' blocked mask

    def install(self):
        "Ours again (main thread only), if user code took the wakeup fd (an asyncio loop's `add_signal_handler`)."
        signal.set_wakeup_fd(self.w.fileno(), warn_on_full_buffer=False)

    def handled(self):
        "Our SIGINT handler's first step: this signal reached the main thread."
        self.at = time.monotonic()
        try: os.write(self.ran_w, b"!")
        except BlockingIOError: pass  # the pipe is full of earlier marks: the relay sees it readable all the same

    def post(self, sig):
        "From a handler: have the relay's thread do `posted[sig]` (work that takes locks); 128 + sig tells it from the wakeup fd's bytes."
        try: self.w.send(bytes([128 + sig]))
        except OSError: pass  # full: a byte already waits for the relay

    def run(self):
        done = 0.0  # when the previous batch was dealt with: a handler run since then answered this one
        while True:
            try: data = self.r.recv(256)
            except OSError: return
            self.wake()
            for sig,fn in self.posted.items():
                if 128 + sig in data:
                    try: fn()
                    except Exception: log.exception("handling signal %d", sig)
            if signal.SIGINT in data and self.at <= done and self.ours():
                try: os.read(self.ran_r, 4096)  # forget marks of handlers that ran before
                except BlockingIOError: pass
                if self.at <= done and not select.select([self.ran_r], [], [], 0.05)[0]:  # not run on the main thread: another thread took the signal
                    done = time.monotonic()
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # coalesces with the one still pending
                    continue
            done = time.monotonic()
