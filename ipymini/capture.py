"Where output goes: per-request stdout/stderr, fd-level capture, and the ContextVars that say which request is running."
import codecs, io, os, re, sys, threading
from contextlib import contextmanager
from contextvars import ContextVar
from os import read, write
from select import select  # bound now, as `read` and `write`: the fd threads must not use what user code rebinds

PARENT = ContextVar("ipymini_parent", default=None)  # the request whose code runs here (debug events read it)
SUB = ContextVar("ipymini_subshell", default=None)    # the subshell id whose code runs here; None is the parent subshell
main_parent = [None]  # the parent subshell's latest request: where fd-level output goes
cells = {}   # subshell id -> its execute_request running now, or the last one run
routes = {}  # id(msg) -> the live Route of each request being served, from its `enter` to just before its idle
FLUSH_AFTER,FLUSH_SIZE = 0.05,256*1024  # coalesce stream text for 50 ms or 256 KiB, whichever comes first
surrogates = re.compile("[\ud800-\udfff]")  # lone surrogates cannot be sent as UTF-8; clients see U+FFFD for them
in_child = [False]  # set after fork: a child process has no IOPub thread, so its streams write to fds 1 and 2

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
    def writable(self): return True
    def isatty(self): return False
    def fileno(self): return self.fd
    def flush(self): self.out.flush()
    def write(self, s):
        if not isinstance(s, str): raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if in_child[0]: write(self.fd, s.encode("utf-8", "replace"))  # the parent's fd capture forwards it
        elif s: self.out.write(self.name, s)
        return len(s)
    def writelines(self, lines):
        for l in lines: self.write(l)

class FdCapture:
    "Point fd 1 or 2 at a pipe and forward what child processes and C code write there as stream text."
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

# messages whose order against fd-level output does not matter: skip the two select() calls a drain costs
undrained = {"execute_input", "comm_open", "comm_msg", "comm_close", "debug_event", "iopub_welcome", "shutdown_reply",
    "display_data", "update_display_data", "clear_output"}  # displays race fd output as in ipykernel; results, errors, idle do not

class Channels:
    "Output's way out: `raw(msg_type, content, parent, buffers, metadata)` queues a message for IOPub."
    def __init__(self, raw):
        self.raw = raw
        self.out = Output(raw)
        self.fds = []

    def pub(self, msg_type, content, buffers=None, parent=None, metadata=None):
        "Publish a non-stream message for the current request, after the stream text (and fd output) written before it."
        if in_child[0]: return  # a forked child has no IOPub thread: its messages would wait forever (its text goes to the fds)
        if msg_type not in undrained and content.get("execution_state") != "busy":
            for f in self.fds: f.drain()  # before taking the output lock: a reader holds its own lock, then the output's
        with self.out.lock:  # the parent is found under the lock, as for stream text
            self.out.flush()
            self.raw(msg_type, content, parent or current_parent(), buffers, metadata)

    def flush(self):
        for f in self.fds: f.drain()
        self.out.flush()

    def install(self, ip, capture_fds=True):
        "Route `sys.stdout`/`stderr`, fds 1 and 2, displays and results through this kernel (once, at start)."
        if capture_fds:
            sys.stdout.flush()
            sys.stderr.flush()
            self.fds = [FdCapture(1, "stdout", self.out), FdCapture(2, "stderr", self.out)]
        sys.stdout,sys.stderr = Stream("stdout", self.out, 1),Stream("stderr", self.out, 2)
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
