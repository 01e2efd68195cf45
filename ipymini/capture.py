"Where output goes: per-request stdout/stderr, fd-level capture, and the ContextVars that say which request is running."
import codecs, fcntl, io, logging, os, re, signal, struct, sys, threading
from contextlib import contextmanager
from contextvars import ContextVar
from os import pread, read, write
from threading import get_ident
from select import EPOLLIN, epoll, select  # bound now, as `read` and `write`: the fd threads must not use what user code rebinds

PARENT = ContextVar("ipymini_parent", default=None)  # the request whose code runs here (debug events read it)
SUB = ContextVar("ipymini_subshell", default=None)    # the subshell id whose code runs here; None is the parent subshell
main_parent = [None]  # the parent subshell's latest request: where fd-level output goes
cells = {}   # subshell id -> its execute_request running now, or the last one run
routes = {}  # id(msg) -> the live Route of each request being served, from its `enter` to just before its idle
FLUSH_AFTER,FLUSH_SIZE = 0.05,256*1024  # coalesce stream text for 50 ms or 256 KiB, whichever comes first
surrogates = re.compile("[\ud800-\udfff]")  # lone surrogates cannot be sent as UTF-8; clients see U+FFFD for them
in_child = [False]  # set after fork: a child process has no IOPub thread, so its streams write to fds 1 and 2
log = logging.getLogger(__name__)

def utf8_safe(text) -> str: return text if text.isascii() else surrogates.sub("\ufffd", text)

class Route:
    """Where code started by request `msg` (of subshell `sid`) writes: `msg` while `live`. One object per request, shared by
    its executor's context, the tasks that context makes and the threads and pool work started from it; `leave` ends it for
    all of them at once. A pin (`set_parent`) is a Route of its own that stays live."""
    __slots__ = ("msg", "sid", "live", "pinned", "by")
    def __init__(self, msg, sid=None, live=True, pinned=False, by=None):
        self.msg,self.sid,self.live,self.pinned,self.by = msg,sid,live,pinned,by  # `by`: (thread ident, task) serving `msg`

ROUTE = ContextVar("ipymini_route", default=None)  # this context's Route; threads carry theirs as `ipymini_route`

def route_here():
    if (r := ROUTE.get()) is None: r = getattr(threading.current_thread(), "ipymini_route", None)
    return r

def current_parent():
    """Where output written here goes: a pinned parent; else the request the code was started under while that request runs;
    else the cell its subshell runs now, or the last one it ran (README: "Output from threads"). On every write: kept lean."""
    if (r := ROUTE.get()) is None and (r := getattr(threading.current_thread(), "ipymini_route", None)) is None:
        return cells.get(None) or main_parent[0]
    if r.live: return r.msg
    return cells.get(r.sid) or r.msg

def task_now():
    "The asyncio task running here, if any (asyncio is not imported for it: the first kernel_info comes before it is)."
    if (f := getattr(sys.modules.get("asyncio"), "current_task", None)) is None: return None  # not (yet, fully) imported
    try: return f()
    except RuntimeError: return None  # no loop runs in this thread

def enter(msg, sid=None, cell=False, main=False):
    "Request `msg` is served here from now on; `cell`: it is an execute_request; `main`: the parent subshell runs it."
    PARENT.set(msg)
    ROUTE.set(r := Route(msg, sid, by=(threading.get_ident(), task_now())))  # also ends a pin the previous request set here
    routes[id(msg)] = r
    if cell: cells[sid] = msg
    if main: main_parent[0] = msg

def leave(msg):
    "Request `msg` is done: output started by it goes to its subshell's current or last cell from now on."
    if (r := routes.pop(id(msg), None)) is not None: r.live = False

def own(msg):
    "The live Route of request `msg` if the code here is that request itself (its thread and task), not code it started."
    r = routes.get(id(msg))
    return r if r is not None and r.msg is msg and r.by[0] == threading.get_ident() and task_now() in (None, r.by[1]) else None

def pin(parent, always=False):
    "ipykernel's `set_parent` here: output goes to `parent` whatever runs later; naming the request running here unpins."
    r = None if always else own(parent)
    return ROUTE.set(r or Route(parent, getattr(route_here(), "sid", SUB.get()), pinned=True))

def started_from():
    "The Route code started here gets: this one, or for a pin the pinned request's own (a pin is not inherited)."
    if (r := route_here()) is None or not r.pinned: return r
    return routes.get(id(r.msg)) or Route(r.msg, r.sid, live=False)

@contextmanager
def serving(msg):
    "Serve `msg` inside another request (jupyter-ui-poll's `do_one_iteration`): output goes to `msg` until the block ends."
    prev,r = routes.get(id(msg)),Route(msg, SUB.get(), by=(threading.get_ident(), task_now()))
    tp,tr = PARENT.set(msg),ROUTE.set(r)
    routes[id(msg)] = r
    try: yield
    finally:
        r.live = False
        if prev is None: routes.pop(id(msg), None)
        else: routes[id(msg)] = prev
        ROUTE.reset(tr)
        PARENT.reset(tp)

class Output:
    "Stream text waiting to go out, as runs of (parent, name, texts); flushed by size, by a timer, or before any other message."
    def __init__(self, pub):
        self.pub,self.runs,self.size = pub,[],0
        self.lock,self.armed,self.stopped = threading.RLock(),threading.Event(),threading.Event()
        threading.Thread(target=self.timer, daemon=True, name="ipymini-flush").start()

    def write(self, name, text, parent=None):
        "Add `text` for `parent` (default: the current one, found under the lock, so text never lands after that request's idle)."
        with self.lock:
            if parent is None: parent = current_parent()
            if self.runs and self.runs[-1][0] is parent and self.runs[-1][1] == name: self.runs[-1][2].append(text)
            else: self.runs.append((parent, name, [text]))
            self.size += len(text)
            if self.size >= FLUSH_SIZE: self.flush()
            elif not self.armed.is_set(): self.armed.set()

    def flush(self):
        "Queue all pending text, in order; done under the lock so no later message can overtake it."
        with self.lock:
            runs,self.runs,self.size = self.runs,[],0
            for parent,name,texts in runs: self.pub("stream", dict(name=name, text=utf8_safe("".join(texts))), parent)

    def forget(self):
        "In a forked child: drop the parent's pending text (the parent sends it) and stop buffering."
        self.runs,self.size,self.lock = [],0,threading.RLock()
        in_child[0] = True

    def timer(self):
        while not self.stopped.is_set():
            self.armed.wait()
            self.stopped.wait(FLUSH_AFTER)  # the coalescing window; this thread sleeps only while text is pending
            self.armed.clear()
            self.flush()

class Stream(io.TextIOBase):
    "`sys.stdout`/`sys.stderr`: text goes to the request being served by whoever writes it."
    def __init__(self, name, out, fd):
        super().__init__()
        self.name,self.out,self.fd = name,out,fd
    encoding,errors = "UTF-8",None  # as ipykernel's streams say (text is sent as UTF-8; lone surrogates become U+FFFD)
    fds = None  # the `FdCapture`, once fds 1/2 are captured
    def writable(self): return True
    def isatty(self): return False
    def fileno(self): return self.fd
    def flush(self): self.out.flush()
    def write(self, s):
        if not isinstance(s, str): raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if in_child[0]: write(self.fd, s.encode("utf-8", "replace"))  # the parent's fd capture forwards it
        elif s:
            # fd output written before this goes first, line by line (print's "\n" ends its line); `FdCapture.before`, inlined
            if (f := self.fds) is not None and s != "\n" and (f.sigs != f.seen or get_ident() != f.main): f.drain()
            self.out.write(self.name, s)
        return len(s)
    def writelines(self, lines):
        for l in lines: self.write(l)

IN_MODIFY,IN_CLOSE,IN_OPEN,IN_Q_OVERFLOW,PUNCH = 0x2,0x18,0x20,0x4000,0x3  # PUNCH: FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE
CHUNK,FREE_AT,AHEAD,TAIL = FLUSH_SIZE,1<<20,4,64
RETAKE = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)  # s: a lease not taken back is tried again then
F_SETSIG,F_SETOWN_EX,F_SETLEASE,F_GETLEASE,F_WRLCK,F_UNLCK = 10,15,1024,1025,1,2
LOST = ("[ipymini: a process reopened {} (`> /dev/{}`) while the kernel held no lease on it; output written just before "
    "that may be lost]\n")

def libc():
    import ctypes
    lib = ctypes.CDLL(None, use_errno=True)
    lib.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return ctypes,lib

def checked(r):
    "A libc call's result, or the OSError its errno says."
    if r < 0:
        import ctypes
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r

def tmpfile(d):
    "A file in `d` with no name (O_TMPFILE, else made and unlinked at once), open for appending: every writer adds at its end."
    try: return os.open(d, os.O_TMPFILE | os.O_RDWR | os.O_APPEND, 0o600)
    except (OSError, AttributeError): pass
    import tempfile
    f,path = tempfile.mkstemp(dir=d, prefix="ipymini-fd")
    os.unlink(path)
    fcntl.fcntl(f, fcntl.F_SETFL, fcntl.fcntl(f, fcntl.F_GETFL) | os.O_APPEND)
    return f

class FdFile:
    """One captured fd: the unlinked file behind it, how far it is forwarded and freed, and a decoder that keeps split characters
    whole. A write lease on the file (held while `leased`) makes another open of it (a child's `> /dev/stdout`, which would
    truncate it) wait until the kernel has forwarded everything and let go."""
    def __init__(self, fd, name, d, lib):
        self.fd,self.name,self.lib,self.off,self.freed,self.tail,self.wd = fd,name,lib,0,0,b"",None
        self.leased,self.announced,self.noticed = False,0,None  # `announced`: opens let through, their IN_OPEN not yet seen
        self.decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self.f = tmpfile(d)
        checked(lib.fallocate(self.f, PUNCH, 0, 4096))  # no hole punching here (EOPNOTSUPP): the file would only grow

    def point(self):
        self.saved = os.dup(self.fd)
        os.dup2(self.f, self.fd)  # fd 1/2 share the file's description (and its O_APPEND); children inherit it

    def opened(self, evs):
        """The opens among events `evs` ((watch, mask) in order): how many, and whether one of them no lease held back
        (`announced` counts the opens let through; an open racing a lease being taken can pass it too)."""
        n = sum(1 for wd,mask in evs if wd == self.wd and mask & IN_OPEN)
        risky = n > self.announced or any(wd == -1 for wd,_ in evs)  # -1: the queue overflowed, events were lost
        self.announced = max(0, self.announced - n)
        return n,risky

    def truncated(self, end, reopened) -> bool:
        """Did a reopen (a child's `> /dev/stdout`) truncate the file? Then it is shorter, or no longer holds the last bytes read.
        Looked at before reading on too (`end` past `off`): the open's IN_OPEN can come after what the opener wrote."""
        return end < self.off or (reopened or end > self.off) and pread(self.f, len(self.tail), self.off - len(self.tail)) != self.tail

    def forward(self, out, pace, opens=0, risky=False):
        """Send on what was written since the last look, a message at a time with at most `AHEAD` queued for IOPub (the file
        holds the rest, so memory stays bounded); free what was read, a MiB at a time (the file is sparse), all but its tail."""
        end = os.fstat(self.f).st_size
        cut = self.truncated(end, opens)
        # an open no lease held back may have wiped output not yet read (the file may have been read after such an open, so a
        # cut need not show): say so, once a cell
        if risky and self.noticed is not main_parent[0]:
            self.noticed = main_parent[0]
            out.write("stderr", LOST.format(self.name, self.name), self.noticed)
        if cut: self.off,self.freed,self.tail = 0,0,b""  # what it held unread is gone: start over
        while self.off < end:
            data = pread(self.f, min(end - self.off, CHUNK), self.off)
            if not data: break
            out.write(self.name, self.decode(data), main_parent[0])
            self.off,self.tail = self.off + len(data),(self.tail + data[-TAIL:])[-TAIL:]  # `FdCapture.before` needs `off` last
            if pace is not None: pace(AHEAD)
        if (cut := (self.off - TAIL) & ~4095) - self.freed >= FREE_AT:  # the tail stays, so `truncated` can look at it
            self.lib.fallocate(self.f, PUNCH, self.freed, cut - self.freed)
            self.freed = cut

    def unheld(self) -> bool:
        "No lease, and no open let through still unseen (a lease taken before its IN_OPEN may not hold that open back)."
        return not self.leased and not self.announced

    def take(self, tid) -> bool:
        "Hold a write lease (its break signalled as SIGURG to thread `tid`); False while another open of the file is live."
        fcntl.fcntl(self.f, F_SETSIG, signal.SIGURG)  # set again each time: letting go clears them (and SIGIO would kill)
        fcntl.fcntl(self.f, F_SETOWN_EX, struct.pack("ii", 0, tid))  # F_OWNER_TID
        try: fcntl.fcntl(self.f, F_SETLEASE, F_WRLCK)
        except BlockingIOError: return False  # another open of it is live
        self.leased = True
        return True

    def let_go(self, out, pace):
        "Another open waits for the lease: forward the rest, blank what was read (so a rewrite shows), and release it."
        self.forward(out, pace)
        if self.off > self.freed: self.lib.fallocate(self.f, PUNCH, self.freed, self.off - self.freed)
        self.freed,self.tail = self.off,bytes(min(TAIL, self.off))
        self.announced += 1  # first: `on_signal` takes a lease back where none is held and no open is awaited
        fcntl.fcntl(self.f, F_SETLEASE, F_UNLCK)
        self.leased = False

class FdCapture:
    """Point fds 1 and 2 at unlinked files, which never block a writer (C holding the GIL, children, threads); one thread,
    woken by inotify (no polling), forwards what is written there as stream text and punches out what it has read.
    Python text must not overtake fd output written before it, and asking the OS before each print would slow `print` by
    a third: the inotify fd raises SIGURG at the main thread when its queue gets an event, and the handler counts it, so a
    print on the main thread looks at a counter (`sigs` against `seen`); other threads ask epoll. The reader thread also holds
    a write lease on each file (see `FdFile`), whose break reaches it as SIGURG through a signalfd."""
    def __init__(self, out, d, pace=None):
        _,lib = libc()
        self.out,self.pace,self.lock,self.owner,self.sigs,self.seen,self.main = out,pace,threading.Lock(),None,0,0,None
        self.tid = None  # the reader thread's, once it holds the leases
        self.ino = checked(lib.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        try:
            self.files = [FdFile(fd, name, d, lib) for fd,name in ((1, "stdout"), (2, "stderr"))]
            for f in self.files: f.wd = checked(lib.inotify_add_watch(self.ino, f"/proc/self/fd/{f.f}".encode(), IN_MODIFY | IN_OPEN | IN_CLOSE))
        except BaseException:
            for f in getattr(self, "files", []): os.close(f.f)
            os.close(self.ino)
            raise
        for f in self.files: f.point()
        self.ep = epoll()  # not poll(): a poll object refuses a second thread while one waits in it
        self.ep.register(self.ino, EPOLLIN)
        self.poll = self.ep.poll
        self.signal_main()
        threading.Thread(target=self.run, daemon=True, name="ipymini-fds").start()

    def signal_main(self):
        """A signal at the main thread (F_SETOWN_EX to its tid) for each new inotify event; without it every print asks epoll.
        SIGURG (F_SETSIG), not SIGIO: its default action is to ignore, so a cell that resets every handler to SIG_DFL loses
        only the order of its own prints against fd output (until the cell ends), where SIGIO's default would kill the kernel."""
        try:
            self.own_signal()
            fcntl.fcntl(self.ino, 15, struct.pack("ii", 0, threading.get_native_id()))  # F_SETOWN_EX, F_OWNER_TID
            fcntl.fcntl(self.ino, 10, signal.SIGURG)  # F_SETSIG
            fcntl.fcntl(self.ino, fcntl.F_SETFL, fcntl.fcntl(self.ino, fcntl.F_GETFL) | os.O_ASYNC)
            self.main = threading.get_ident()
        except (OSError, ValueError, AttributeError) as e: log.warning("fd capture: no SIGURG (%s): prints ask epoll for fd output", e)

    def own_signal(self):
        "Ours again (main thread only, after a cell that replaced it)."
        if signal.getsignal(signal.SIGURG) != self.on_signal:
            signal.signal(signal.SIGURG, self.on_signal)
            signal.siginterrupt(signal.SIGURG, False)  # SA_RESTART: C code in a blocking call rarely sees EINTR for it

    def restore(self):
        "After a cell: our SIGURG handler is back, if the cell replaced it."
        if self.main is not None: self.own_signal()

    def on_signal(self, sig, frame):
        self.sigs += 1
        # a lease let go of is taken back at the first bytecode after the close (a cell's `os.system` returns): the reader may
        # wait ms for the GIL, and the next open can come sooner
        if not in_child[0]: self.retake()

    def run(self):
        ep,sfd = epoll(),self.lease()  # its own epoll: a signalfd is ready only for the thread that waits on it
        ep.register(self.ino, EPOLLIN)
        if sfd is not None: ep.register(sfd, EPOLLIN)
        k = 0
        while True:
            # blocks, without the GIL, until a write or a lease break (takes nothing off the queue); while a lease waits to be
            # taken back, at most RETAKE[k]: the opener's file is released a moment after its IN_CLOSE, and that close's wake-up
            # of this thread can preempt the opener right in between (spinning here then only delays it)
            wait = RETAKE[k] if k < len(RETAKE) and self.wanting() else None
            try: ready = ep.poll(wait)
            except (OSError, ValueError): return
            k = 0 if ready else k + 1
            try:
                if broken := sfd is not None and any(fd == sfd for fd,_ in ready): read(sfd, 4096)
                self.drain(True, broken)
            except Exception: log.exception("fd capture: forwarding failed")  # the thread must live on, or fd output would pile up unseen

    def lease(self):
        "In the reader thread: SIGURG blocked here and read from a signalfd, and a write lease on each file; None where leases fail."
        sfd = None
        with self.lock:
            try:
                ctypes,lib = libc()
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGURG})  # a break signalled here waits for the signalfd
                mask = (ctypes.c_ubyte * 128)()
                lib.sigemptyset(mask)
                lib.sigaddset(mask, signal.SIGURG)
                sfd = checked(lib.signalfd(-1, mask, os.O_NONBLOCK | os.O_CLOEXEC))
                tid = threading.get_native_id()
                for f in self.files: f.take(tid)
                self.tid = tid
                return sfd
            except (OSError, AttributeError) as e:  # e.g. a file system without leases
                self.let_all_go()
                if sfd is not None: os.close(sfd)
                log.warning("fd capture: no write leases (%s): a child's `> /dev/stdout` can wipe output not yet read", e)

    def let_all_go(self):
        "No leases from now on (at shutdown: a child outliving the kernel must not wait on one at its next open of fd 1/2)."
        self.tid = None
        for f in self.files:
            if f.leased: fcntl.fcntl(f.f, F_SETLEASE, F_UNLCK)
            f.leased = False

    def drain(self, always=False, broken=False):
        """Forward everything already written (when epoll says anything was, or `always`), so it goes out before what follows
        (a print, a result, idle). `seen` is -1 meanwhile, so a print on the main thread waits for the lock. `broken`: a lease
        break was signalled, so let go of each lease another open waits for; where none is held, try to take it again (an
        IN_CLOSE wakes the reader for that)."""
        if self.owner == threading.get_ident(): return  # a signal handler's print, in the middle of our own drain
        with self.lock:
            self.owner,sigs,self.seen = threading.get_ident(),self.sigs,-1
            try:
                if always or self.poll(0):
                    evs = self.events()
                    seen = [(f, *f.opened(evs)) for f in self.files]
                    if not broken: self.retake()  # first: the next open may come any moment
                    for f,n,risky in seen: f.forward(self.out, self.pace, n, risky)
                    if broken: self.release()  # once all is read
                else: self.retake()
            finally: self.owner,self.seen = None,sigs  # a signal after `sigs` was read makes the next print look again

    def before(self):
        "Python text or a message is about to be queued: first forward fd output written before it (free on the main thread)."
        if self.sigs != self.seen or threading.get_ident() != self.main: self.drain()

    def wanting(self) -> bool:
        "A lease is to be taken back: let go of, and its open seen."
        return self.tid is not None and any(f.unheld() for f in self.files)

    def retake(self):
        "A lease on each file that has none, at every drain (idle has one) until it holds."
        if self.tid is None: return
        for f in self.files:
            if f.unheld(): f.take(self.tid)

    def release(self):
        "A break was signalled: let go of each lease that another open waits for; try the others again."
        for f in self.files:
            if f.leased and fcntl.fcntl(f.f, F_GETLEASE) != F_WRLCK: f.let_go(self.out, self.pace)
        self.retake()

    def events(self) -> list:
        "Take the queued events (every write after this makes a new one): (watch, mask) of each, in order."
        try: evs = read(self.ino, 65536)
        except OSError: return []
        got,i = [],0
        while i + 16 <= len(evs):  # struct inotify_event: int wd, uint32 mask, cookie, len; then len bytes of name
            wd,mask,n = int.from_bytes(evs[i:i+4], "little", signed=True),int.from_bytes(evs[i+4:i+8], "little"),int.from_bytes(evs[i+12:i+16], "little")
            got.append((-1 if mask & IN_Q_OVERFLOW else wd, mask))
            i += 16 + n
        return got

class PipeFd:
    "The fallback: point fd 1 or 2 at a pipe drained by a thread (a writer holding the GIL can fill it)."
    def __init__(self, fd, name, out):
        self.fd,self.name,self.out,self.lock = fd,name,out,threading.Lock()
        self.decode = codecs.getincrementaldecoder("utf-8")("replace").decode  # a character split across reads stays whole
        self.saved = os.dup(fd)
        self.r,w = os.pipe()
        os.set_blocking(self.r, False)
        os.dup2(w, fd)
        os.close(w)
        threading.Thread(target=self.run, daemon=True, name=f"ipymini-fd{fd}").start()

    def read(self):
        "Forward what the pipe holds now; False once the pipe is closed. Read and forward under one lock, so `drain` waits for both."
        with self.lock:
            try: data = read(self.r, 65536)
            except BlockingIOError: return True
            except OSError: return False
            if data: self.out.write(self.name, self.decode(data), main_parent[0])
        return bool(data)

    def run(self):
        while True:
            try: select([self.r], [], [])
            except (OSError, ValueError): return
            if not self.read(): return

    def drain(self):
        "Forward everything already written, so a cell's `os.system` output is in before its idle."
        while select([self.r], [], [], 0)[0] and self.read(): pass

class PipeCapture:
    "Fds 1 and 2 on pipes, for where inotify or hole punching is missing; Python's prints do not wait for C's output here."
    def __init__(self, out): self.pipes = [PipeFd(1, "stdout", out), PipeFd(2, "stderr", out)]
    def drain(self):
        for p in self.pipes: p.drain()
    before = drain
    def restore(self): pass  # no signal to restore

def fd_capture(out, pace=None):
    "fd 1/2 capture on unlinked files in IPYMINI_FD_DIR (default /var/tmp), or on pipes where that cannot work (logged)."
    d = os.environ.get("IPYMINI_FD_DIR") or "/var/tmp"
    try: return FdCapture(out, d, pace)
    except (OSError, AttributeError) as e:
        log.warning("fd capture: %s in %s: using pipes instead (C code holding the GIL can fill them, and C output can "
            "come after Python's)", e, d)
        return PipeCapture(out)

def line_buffer_c_stdout():
    "C's stdout buffers a file in blocks: make it line-buffered, so each printf line reaches fd 1 (and the cell) in order."
    try:
        ctypes,lib = libc()
        lib.fflush(None)
        lib.setvbuf(ctypes.c_void_p.in_dll(lib, "stdout"), None, 1, 0)  # 1: _IOLBF (glibc and musl)
    except (OSError, ValueError, AttributeError) as e: log.warning("could not make C's stdout line-buffered: %s", e)

# messages whose order against fd-level output does not matter: skip the look a drain costs
undrained = {"execute_input", "comm_open", "comm_msg", "comm_close", "debug_event", "iopub_welcome", "shutdown_reply",
    "display_data", "update_display_data", "clear_output"}  # displays race fd output as in ipykernel; results, errors, idle do not

class Channels:
    "Output's way out: `raw(msg_type, content, parent, buffers, metadata)` queues a message for IOPub."
    def __init__(self, raw):
        self.raw = raw
        self.out = Output(raw)
        self.fds = None

    def pub(self, msg_type, content, buffers=None, parent=None, metadata=None):
        "Publish a non-stream message for the current request, after the stream text (and fd output) written before it."
        if in_child[0]: return  # a forked child has no IOPub thread: its messages would wait forever (its text goes to the fds)
        if self.fds is not None and msg_type not in undrained and (state := content.get("execution_state")) != "busy":
            # before taking the output lock: a reader holds its own lock, then the output's. Idle asks epoll whatever the
            # signal counter says: a cell may have reset or taken SIGURG, and no fd output may come after its idle
            if state == "idle": self.fds.drain()
            else: self.fds.before()
        with self.out.lock:  # the parent is found under the lock, as for stream text
            self.out.flush()
            self.raw(msg_type, content, parent or current_parent(), buffers, metadata)

    def flush(self):
        if self.fds is not None: self.fds.before()
        self.out.flush()

    def install(self, ip, capture_fds=True, pace=None):
        "Route `sys.stdout`/`stderr`, fds 1 and 2, displays and results through this kernel (once, at start)."
        if capture_fds:
            sys.stdout.flush()
            sys.stderr.flush()
            self.fds = fd_capture(self.out, pace)
            line_buffer_c_stdout()
        sys.stdout,sys.stderr = Stream("stdout", self.out, 1),Stream("stderr", self.out, 2)
        if isinstance(self.fds, FdCapture): sys.stdout.fds = sys.stderr.fds = self.fds
        ip.display_pub.send = ip.displayhook.send = self.pub
        os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures show inline, as in ipykernel
        os.register_at_fork(after_in_child=self.out.forget)
        patch_threads()

def run_as(route, fn, *args, **kw):
    "Call `fn` as code started where `route` was taken (pool work)."
    tok = ROUTE.set(route)
    try: return fn(*args, **kw)
    finally: ROUTE.reset(tok)

def patch_threads():
    "Threads, and each piece of pool work, start as code of the request running where they were started (see `current_parent`)."
    from concurrent.futures import ThreadPoolExecutor
    if getattr(threading.Thread.start, "ipymini", False): return
    start,submit = threading.Thread.start,ThreadPoolExecutor.submit
    def start_(self, *a, **kw):
        self.ipymini_route = started_from()
        return start(self, *a, **kw)
    # a pool's workers outlive the cell that started them, so each piece of work carries its own route
    def submit_(self, fn, *a, **kw): return submit(self, run_as, started_from(), fn, *a, **kw)
    start_.ipymini = True
    threading.Thread.start,ThreadPoolExecutor.submit = start_,submit_
