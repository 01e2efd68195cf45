"Where output goes: per-request stdout/stderr, fd-level capture, and the ContextVars that say which request is running."
import codecs, io, os, re, sys, threading
from contextvars import ContextVar
from os import read, write
from select import select  # bound now, as `read` and `write`: the fd threads must not use what user code rebinds

PARENT = ContextVar("ipymini_parent", default=None)  # the request whose outputs the running code produces
SUB = ContextVar("ipymini_subshell", default=None)    # the subshell id whose code runs here; None is the parent subshell
main_parent = [None]  # the parent subshell's latest request: where output with no other home goes, as in ipykernel
FLUSH_AFTER,FLUSH_SIZE = 0.05,256*1024  # coalesce stream text for 50 ms or 256 KiB, whichever comes first
surrogates = re.compile("[\ud800-\udfff]")  # lone surrogates cannot be sent as UTF-8; clients see U+FFFD for them
in_child = [False]  # set after fork: a child process has no IOPub thread, so its streams write to fds 1 and 2

def utf8_safe(text) -> str: return text if text.isascii() else surrogates.sub("\ufffd", text)

def current_parent():
    "The request being served here: this context's, else the one the current thread was started under, else the main one."
    return PARENT.get() or getattr(threading.current_thread(), "ipymini_parent", None) or main_parent[0]

class Output:
    "Stream text waiting to go out, as runs of (parent, name, texts); flushed by size, by a timer, or before any other message."
    def __init__(self, pub):
        self.pub,self.runs,self.size = pub,[],0
        self.lock,self.armed,self.stopped = threading.RLock(),threading.Event(),threading.Event()
        threading.Thread(target=self.timer, daemon=True, name="ipymini-flush").start()

    def write(self, name, text, parent):
        with self.lock:
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
        elif s: self.out.write(self.name, s, current_parent())
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
        parent = parent or current_parent()
        if msg_type not in undrained and content.get("execution_state") != "busy":
            for f in self.fds: f.drain()  # before taking the output lock: a reader holds its own lock, then the output's
        with self.out.lock:
            self.out.flush()
            self.raw(msg_type, content, parent, buffers, metadata)

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

def run_as(parent, fn, *args, **kw):
    "Call `fn` with `parent` as the current request."
    tok = PARENT.set(parent)
    try: return fn(*args, **kw)
    finally: PARENT.reset(tok)

def patch_threads():
    "Threads remember the request they were started under, and pool work the one it was submitted under, so output goes to that cell."
    from concurrent.futures import ThreadPoolExecutor
    if getattr(threading.Thread.start, "ipymini", False): return
    start,submit = threading.Thread.start,ThreadPoolExecutor.submit
    def start_(self, *a, **kw):
        self.ipymini_parent = current_parent()
        return start(self, *a, **kw)
    # a pool's workers outlive the cell that started them, so each piece of work carries its own request
    def submit_(self, fn, *a, **kw): return submit(self, run_as, current_parent(), fn, *a, **kw)
    start_.ipymini = True
    threading.Thread.start,ThreadPoolExecutor.submit = start_,submit_
