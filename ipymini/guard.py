"The memory guard (a cell near the memory limit ends with MemoryError) and the death report (why the last kernel died)."
import ctypes, faulthandler, gc, hashlib, logging, mmap, os, re, struct, sys, threading
from .procs import env_flag

log = logging.getLogger("ipymini")
REC = struct.Struct("8sqqqq")  # magic, pid, start time (clock ticks since boot), oom kills at start, cell count (<0: idle after it)
MAGIC,HEAD = b"ipymini1",64  # faulthandler writes the fatal signal's stack after the header
bookkeeping = re.compile(r"_+|_i+|_i?\d+")  # IPython's own per-cell names (`_i7`, `_7`, `__`): never freed by a stop

def parse_size(s) -> int:
    "`512M`, `2G`, `1.5e9` (bytes; K/M/G/T are powers of 1024) as an int; 0 or `off` is no limit."
    s = str(s).strip().upper().rstrip("B")
    if s in ("", "0", "OFF", "NONE"): return 0
    k = "KMGT".find(s[-1]) + 1
    return int(float(s[:-1] if k else s) * 1024**k)

def fmt(n) -> str: return f"{n/2**30:.2f} GB" if n >= 2**30 else f"{n/2**20:.0f} MB"

def read(path, default=None):
    try:
        with open(path) as f: return f.read()
    except OSError: return default

def cgroup() -> tuple:
    "`(version, [dirs])`: this process's memory cgroup and its ancestors up to the mount point, ours first; `(0, [])` if none."
    mounts = {}
    for line in (read("/proc/self/mountinfo") or "").splitlines():
        f = line.split()
        i = f.index("-")
        if f[i+1] == "cgroup" and "memory" in f[i+3].split(","): mounts[1] = f[3],f[4]
        elif f[i+1] == "cgroup2": mounts.setdefault(2, (f[3],f[4]))
    for line in (read("/proc/self/cgroup") or "").splitlines():
        hid,ctrls,path = line.split(":", 2)
        v = 1 if "memory" in ctrls.split(",") and 1 in mounts else 2 if hid == "0" and 2 in mounts else 0
        if not v: continue
        root,mnt = mounts[v]
        if root != "/" and path.startswith(root): path = path[len(root):]
        d,dirs = os.path.normpath(mnt + "/" + path),[]
        while d.startswith(mnt):
            dirs.append(d)
            if d == mnt: break
            d = os.path.dirname(d)
        if os.path.exists(os.path.join(dirs[0], "memory.limit_in_bytes" if v == 1 else "memory.current")): return v,dirs
    return 0,[]

def cg_limit(v, d) -> int:
    "Cgroup dir `d`'s memory limit in bytes (v1 memory.limit_in_bytes, v2 memory.max); huge when there is none."
    n = (read(os.path.join(d, "memory.limit_in_bytes" if v == 1 else "memory.max"), "") or "max").strip()
    return 1 << 62 if n == "max" else int(n)

def oom_kills(v, dirs) -> int:
    "The OOM killer's count summed over our cgroup and its ancestors (each counts the kills its own limit caused)."
    name,key = ("memory.oom_control", "oom_kill") if v == 1 else ("memory.events", "oom_kill")
    n = 0
    for d in dirs:
        m = re.search(rf"^{key} (\d+)", read(os.path.join(d, name), ""), re.M)
        if m: n += int(m.group(1))
    return n

def start_time(pid) -> int:
    "Clock ticks since boot when `pid` started (tells a reused pid apart), or 0 if it is gone."
    stat = read(f"/proc/{pid}/stat", "")
    return int(stat[stat.rindex(")") + 2:].split()[19]) if stat else 0

def alive(pid, started) -> bool:
    if (st := read(f"/proc/{pid}/stat", "")) and st[st.rindex(")") + 2] == "Z": return False
    return start_time(pid) == started

def runtime_path(conn_file) -> str:
    from jupyter_core.paths import jupyter_runtime_dir  # 17 ms of imports: only when the connection file's dir is read-only
    d = jupyter_runtime_dir()
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, f"ipymini-{hashlib.sha256(os.path.realpath(conn_file).encode()).hexdigest()[:20]}.died")

def sweep(d):
    "Remove records whose connection file is gone: a killed kernel that was never restarted (jupyter_client deletes only its json)."
    try: names = os.listdir(d)
    except OSError: return
    for n in names:
        if n.endswith(".ipymini-died") and n[0] == "." and not os.path.exists(os.path.join(d, n[1:-13])):
            try: os.unlink(os.path.join(d, n))
            except OSError: pass

class Record:
    "The death record: an mmap'd file keyed on the connection file, written per cell, removed at clean shutdown."
    def __init__(self, conn_file, cg):
        self.cg,self.mm,self.fd = cg,None,None
        d,name = os.path.split(os.path.realpath(conn_file))
        # beside the connection file (jupyter_client keeps it in the runtime dir), else in the runtime dir keyed on its path
        for self.path in (os.path.join(d, f".{name}.ipymini-died"), None):
            if self.path is None: self.path = runtime_path(conn_file)
            self.report = self.last()  # before ours replaces it
            try:
                self.fd = os.open(self.path + ".new", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                break
            except OSError: continue
        os.ftruncate(self.fd, HEAD)
        self.mm = mmap.mmap(self.fd, HEAD)
        pid = os.getpid()
        REC.pack_into(self.mm, 0, MAGIC, pid, start_time(pid), oom_kills(*cg), 0)
        os.replace(self.path + ".new", self.path)
        os.lseek(self.fd, HEAD, os.SEEK_SET)
        sweep(d)
        faulthandler.enable(self.fd, all_threads=False)  # the faulting thread's stack, written by C in the signal handler
        os.register_at_fork(after_in_child=faulthandler.disable)  # a forked child's crash is not the kernel's

    def last(self) -> str:
        "What the record a dead kernel left says, as a message for the user; '' when there is none (clean exit) or it lives."
        try:
            with open(self.path, "rb") as f: data = f.read()
        except OSError: return ""
        if len(data) < REC.size or data[:8] != MAGIC: return ""
        _,pid,started,ooms,count = REC.unpack_from(data)
        if alive(pid, started): return ""
        cell = f"while cell In [{count}] was running" if count > 0 else f"while idle (after cell In [{-count}])" if count else "while starting"
        crash = data[HEAD:].decode("utf-8", "replace").strip()
        if (m := re.search(r"Fatal Python error: (.+)", crash)):
            return f"The previous kernel (pid {pid}) died from a {m.group(1).strip()} {cell}. Its Python stack:\n{crash}\n"
        if oom_kills(*self.cg) > ooms:
            return (f"The previous kernel (pid {pid}) was killed {cell}: out of memory (the kernel's memory cgroup ran out and "
                "its OOM killer ended the process).\n")
        return f"The previous kernel (pid {pid}) was killed or did not exit cleanly {cell}.\n"

    def cell(self, count:int): self.mm[32:40] = count.to_bytes(8, "little", signed=True)  # REC's last field; ~0.2 µs

    def close(self):
        "Clean shutdown: the record goes, so the next kernel on this connection file says nothing."
        if self.mm is None: return
        faulthandler.disable()
        self.unlink()
        self.mm.close()
        os.close(self.fd)
        self.mm = None

    def unlink(self):
        try: os.unlink(self.path)
        except OSError: pass

def stop_class(msg):
    "A MemoryError class whose instances say `msg` (an async exception is raised from a class, never an instance); `raised` once made."
    def init(self, *a):
        type(self).raised = True
        MemoryError.__init__(self, msg)
    return type("MemoryError", (MemoryError,), dict(__module__="builtins", __init__=init, raised=False))

def margin(limit) -> int:
    "Stop this far below `limit`: one C call (numpy filling an array) allocates before we can act: 10 %, at least 256 MB, at most half."
    return min(max(limit // 10, 256 << 20), limit // 2)

libc = ctypes.PyDLL(None)  # PyDLL: calls keep the GIL
libc.pread.argtypes,libc.pread.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long],ctypes.c_ssize_t

def pread_held(fd, size=16384) -> str:
    """A cgroup file's text, read without letting go of the GIL: a cell filling memory in one C call that holds it would
    otherwise take it back at our read and start its next fill before we could stop it."""
    buf = ctypes.create_string_buffer(size)
    n = libc.pread(fd, buf, size, 0)
    return buf.raw[:max(n, 0)].decode("ascii", "replace")

def showing_error(ident) -> bool:
    "Thread `ident` is in IPython's showtraceback: a stop raised there would break the traceback of the last one, not stop a cell."
    f = sys._current_frames().get(ident)
    while f is not None and f.f_code.co_name not in ("showtraceback", "showsyntaxerror"): f = f.f_back
    return f is not None

class Guard:
    """Ends running cells with MemoryError near a memory limit. A v1 cgroup's: eventfd notifications on memory.usage_in_bytes
    thresholds and memory.pressure_level, so a thread sleeps in a read until memory is high. A v2 cgroup's (memory.current) and
    the user's (`IPYMINI_MEMORY_LIMIT`, on this process's RSS), which no event reports: sampled every 10 ms while cells run
    (and a second after), never while idle."""
    def __init__(self, kernel, v, dirs, user_limit=0, stop_pct=None):
        self.kernel,self.v,self.pct,self.before,self.stopped,self.closed,self.busy = kernel,v,stop_pct,{},{},False,None
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.limit,self.dir = min([(cg_limit(v, d), d) for d in dirs] + [(ram, None)], key=lambda o: o[0])
        self.cg,self.user = self.dir is not None and self.limit < ram,user_limit
        evented = False
        if self.cg and v == 1:
            try: evented = self.arm()
            except OSError as e: log.warning("memory guard: no cgroup events (%r), sampling instead", e)  # a read-only cgroupfs (docker)
        # v2 has no usage thresholds (memory.high would throttle, PSI fires only once reclaim stalls): sample like the RSS
        srcs = [(self.used, self.stop_point(self.limit), self.limit)] if self.cg and not evented else []
        if self.user: srcs.append((self.rss, self.stop_point(self.user), self.user))
        if srcs: self.sample(srcs)
        self.armed = self.cg or bool(self.user)

    def stop_point(self, limit): return int(limit * self.pct / 100) if self.pct else limit - margin(limit)

    def arm(self):
        "Thresholds at the stop point and halfway to the limit twice more (a kernel idle above the first is still caught), and pressure."
        ctl = os.path.join(self.dir, "cgroup.event_control")
        if not os.access(ctl, os.W_OK): raise PermissionError(f"{ctl} is not writable")
        self.stop_at,self.efd = self.stop_point(self.limit),os.eventfd(0, os.EFD_CLOEXEC)
        self.usage_fd = os.open(os.path.join(self.dir, "memory.usage_in_bytes"), os.O_RDONLY | os.O_CLOEXEC)
        self.press_fd = os.open(os.path.join(self.dir, "memory.pressure_level"), os.O_RDONLY | os.O_CLOEXEC)
        self.stat_fd = os.open(os.path.join(self.dir, "memory.stat"), os.O_RDONLY | os.O_CLOEXEC)
        gap = self.limit - self.stop_at
        for t in (self.stop_at, self.limit - gap // 2, self.limit - gap // 4): self.threshold(t)
        with open(ctl, "w") as f: f.write(f"{self.efd} {self.press_fd} medium")  # reclaim at the limit: page cache hid the growth
        threading.Thread(target=self.watch, daemon=True, name="ipymini-memguard").start()
        return True

    def threshold(self, n):
        "Wake `watch` when usage crosses `n` bytes (a v1 threshold lasts as long as the eventfd)."
        with open(os.path.join(self.dir, "cgroup.event_control"), "w") as f: f.write(f"{self.efd} {self.usage_fd} {n}")

    def used(self) -> int:
        "What counts toward the OOM killer: usage less the inactive page cache the kernel drops first (docker's working set)."
        if getattr(self, "stat_fd", None) is not None: u,stat = int(pread_held(self.usage_fd) or 0),pread_held(self.stat_fd)
        else:
            u = int(read(os.path.join(self.dir, "memory.usage_in_bytes" if self.v == 1 else "memory.current"), "0"))
            stat = read(os.path.join(self.dir, "memory.stat"), "")
        m = re.search(rf"^{'total_inactive_file' if self.v == 1 else 'inactive_file'} (\d+)", stat, re.M)
        return u - (int(m.group(1)) if m else 0)

    def watch(self):
        # the cell's next fill can start within a fill's time (a 200 MB numpy fill: 20-70 ms): wake ahead of busy threads where allowed
        try: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))  # this thread only (Linux); it sleeps until a threshold
        except (AttributeError, OSError): pass  # no CAP_SYS_NICE (most containers): ordinary priority
        while True:
            try: os.eventfd_read(self.efd)
            except OSError: return
            if self.closed: return
            try: self.check(self.used(), self.stop_at, self.limit)
            except Exception: log.exception("memory guard")

    def sample(self, srcs):
        "`srcs`: `(used, stop_at, limit)` to check while a cell runs."
        self.busy,self.page,self.srcs = threading.Event(),os.sysconf("SC_PAGE_SIZE"),srcs
        threading.Thread(target=self.sampler, daemon=True, name="ipymini-memsample").start()

    def rss(self) -> int: return int(read("/proc/self/statm", "0 0").split()[1]) * self.page

    def sampler(self):
        """Each source every 10 ms while cells run, and for a second after the last one (a burst of short cells wakes this thread
        once, not once a cell); then blocked on `busy` until the next cell begins."""
        tick = threading.Event()  # never set: a 10 ms wait that no patched `time.sleep` can change
        while not self.closed:
            self.busy.wait()
            quiet = 0
            while quiet < 100 and not self.closed:
                tick.wait(0.01)
                quiet = 0 if self.before else quiet + 1
                for used,stop_at,limit in self.srcs if self.before else ():
                    try: self.check(used(), stop_at, limit)
                    except Exception: log.exception("memory guard")
            self.busy.clear()
            if self.before: self.busy.set()  # a cell began while we were clearing

    def check(self, used, stop_at, limit):
        "Memory is past a threshold: stop every running cell that has not been stopped yet."
        if used < stop_at or self.kernel.subs is None: return
        msg = f"the cell was stopped at {round(100 * used / limit)} % of the kernel's memory limit ({fmt(used)} of {fmt(limit)})"
        for sub in self.kernel.subs.all():  # cells, not comm handlers; a cell that caught the first stop is stopped again further up
            _,again,cls = self.stopped.get(sub, (0, 0, None))
            if not sub.running or sub not in self.before or used < again or (cls and not cls.raised): continue  # or still on its way
            if cls and showing_error(self.stopped[sub][0]): continue  # IPython is formatting the stop: the cell did not catch it
            self.stop(sub, stop_class(msg), used + (limit - stop_at) // 4)

    def stop(self, sub, cls, again):
        "Raise `cls` in `sub`'s cell: at its `await` if it awaits, else as an async exception in its thread; again past `again` bytes."
        t = sub.thread or threading.main_thread()
        self.stopped[sub] = t.ident,again,cls
        # nothing from the wake-up to here lets go of the GIL: a cell between two GIL-holding fills would start the next one
        if sub.sel.waiting: sub.loop.call_soon_threadsafe(self.throw, sub, cls)
        else: ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(cls))
        if getattr(self, "efd", None) is not None and again < self.limit: self.threshold(again)  # so "again" wakes us, late or not

    def throw(self, sub, cls):
        fut = getattr(sub.task, "_fut_waiter", None)  # as Subshell.throw: the future the cell awaits
        try: fut.set_exception(cls())
        except Exception: cls.raised = False  # not awaiting after all: the cell ran on, nothing of it is freed

    def begin(self, sub, ns):
        self.before[sub] = set(ns)  # names before the cell: the ones a stopped cell adds are freed
        if self.busy is not None and not self.busy.is_set(): self.busy.set()

    def end(self, sub, ip):
        "After each cell: if we stopped it, free what it bound and what IPython keeps of its error, then collect."
        before = self.before.pop(sub, None)
        ident,_,cls = self.stopped.pop(sub, (None, 0, None))
        if ident is None: return
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)  # not delivered (the cell was in a wait): cancel it
        if not cls.raised: return  # the cell never saw it: its names are the user's
        try: self.free(ip, before or set(ip.user_ns))
        except Exception: log.exception("memory guard: freeing after a stop")

    def free(self, ip, before):
        "Drop the names the stopped cell added (not ones it rebound), sys.last_*, IPython's traceback of it and its frames."
        for n in [n for n in ip.user_ns if n not in before and not bookkeeping.fullmatch(n)]: del ip.user_ns[n]
        for n in ("last_type", "last_value", "last_traceback", "last_exc"):
            if hasattr(sys, n): setattr(sys, n, None)
        for tb in (ip.InteractiveTB, ip.SyntaxTB):
            if hasattr(tb, "tb"): tb.tb = None
        if (r := getattr(ip, "last_execution_result", None)) is not None:
            e = r.error_in_exec
            while e is not None: e.__traceback__,e = None,e.__context__ or e.__cause__
        gc.collect()
        try: ctypes.CDLL(None).malloc_trim(0)  # glibc keeps freed heap pages (its mmap threshold grows to 32 MB after a free)
        except (AttributeError, OSError): pass

    def close(self):
        self.closed = True
        if getattr(self, "efd", None) is not None: os.eventfd_write(self.efd, 1)
        if self.busy is not None: self.busy.set()

class Watch:
    "The kernel's one handle on both: `begin`/`end` around each cell, `report()` once, `close()` at clean shutdown."
    def __init__(self, kernel, conn_file):
        self.kernel,self.record,self.guard,self.note = kernel,None,None,""
        try: cg = cgroup()
        except Exception: cg = 0,[]  # an odd /proc/self/mountinfo: no cgroup, the rest still works
        try:  # neither may stop the kernel from starting (a read-only runtime dir, a cgroup we may not write to)
            if conn_file and env_flag("IPYMINI_DEATH_REPORT", True): self.record = Record(conn_file, cg)
            self.note = self.record.report if self.record else ""
            if self.note: log.warning("%s", self.note.splitlines()[0])  # the server's log says it too
        except Exception as e: log.warning("no death report: %r", e)
        lim = os.environ.get("IPYMINI_MEMORY_LIMIT", "").strip().lower()
        try:
            pct = float(os.environ["IPYMINI_MEMORY_STOP"]) if os.environ.get("IPYMINI_MEMORY_STOP") else None
            if lim not in ("0", "off"): self.guard = Guard(kernel, *cg, parse_size(lim or "0"), pct)
        except Exception as e: log.warning("no memory guard: %r", e)
        if self.guard is not None and not self.guard.armed: self.guard = None

    def report(self) -> str:
        "The death report, the first time it is asked for."
        note,self.note = self.note,""
        return note

    def begin(self, sub, count):
        if self.record is not None and sub.thread is None: self.record.cell(count)
        if self.guard is not None: self.guard.begin(sub, self.kernel.bridge.ip.user_ns)

    def end(self, sub, count):
        if self.record is not None and sub.thread is None: self.record.cell(-count)
        if self.guard is not None: self.guard.end(sub, self.kernel.bridge.ip)

    def forget(self):
        "Shutdown has begun: a clean one from here on, so no report (the file goes; the mmap stays valid until `close`)."
        if self.record is not None: self.record.unlink()

    def close(self):
        if self.guard is not None: self.guard.close()
        if self.record is not None: self.record.close()
