"The Jupyter kernel: ZMQ sockets on their own threads, request dispatch, subshells, interrupts and shutdown."
import atexit, json, logging, os, signal, sys, threading
from time import monotonic  # bound now: user code may rebind `time.monotonic` (freezegun does)
from contextlib import contextmanager
import zmq
from . import __version__
from . import capture
from .capture import Channels, current_parent
from .channels import IOPub, REPLY_HWM, SockThread, Worker, block_signals, curve_keys
from .libapi import APISession, IOPubSocket, KernelAPI
from .session import DELIM, now
from .procs import SignalRelay, banner, forked as is_child, end_children, env_flag, headroom, plain_tb, release_import_lock, safe_str, usage, watch_parent

log = logging.getLogger("ipymini")
unanswerable = object()  # the answer to an input_request no client can get
DEBUG = env_flag("IPYMINI_DEBUG", False)

shell_msgs   = ("execute_request complete_request inspect_request is_complete_request history_request kernel_info_request "
    "connect_request comm_info_request comm_open comm_msg comm_close shutdown_request").split()
control_msgs = ("kernel_info_request shutdown_request interrupt_request debug_request usage_request "
    "create_subshell_request list_subshell_request delete_subshell_request").split()
executed     = {"execute_request", "comm_open", "comm_msg", "comm_close"}  # run in order on a subshell; the rest answer at once
early        = {"kernel_info_request", "connect_request", "shutdown_request", "interrupt_request", "usage_request"}  # need no shell
introspect   = {"complete_request", "inspect_request"}  # may run user code (properties, __getattr__) that hangs: off the socket thread
required     = dict(execute_request="code", complete_request="code", inspect_request="code", is_complete_request="code",
    history_request="hist_access_type", comm_open="comm_id target_name", comm_msg="comm_id", comm_close="comm_id",
    delete_subshell_request="subshell_id")
ports        = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
help_links   = [dict(text=t, url=u) for t,u in [("Python Reference", "https://docs.python.org/3/"),
    ("IPython Reference", "https://ipython.readthedocs.io/en/stable/"), ("NumPy Reference", "https://numpy.org/doc/stable/reference/"),
    ("SciPy Reference", "https://docs.scipy.org/doc/scipy/reference/"), ("Matplotlib Reference", "https://matplotlib.org/stable/contents.html"),
    ("pandas Reference", "https://pandas.pydata.org/pandas-docs/stable/")]]

class Req:
    "A request as handlers see it: the message, where it came from, and how to answer it."
    def __init__(self, kernel, sock, idents, msg, sub=None):
        self.kernel,self.sock,self.idents,self.msg,self.sub = kernel,sock,idents,msg,sub
        self.msg_type,self.c,self.arrived,self.replied,self.idle = msg["header"]["msg_type"],msg["content"],monotonic(),False,False

    def reply(self, content=None, metadata=None, **kw):
        "Queue the matching `*_reply` for the thread that owns `sock`, after the output written so far; only the first counts."
        with self.kernel.once:
            if self.replied: return
            self.replied = True
        try:
            self.kernel.ch.flush()
            self.kernel.send(self.sock, self.msg_type.replace("_request", "_reply"), {**(content or {}), **kw}, self.msg, self.idents, metadata)
        except BaseException:
            self.replied = False  # it did not go out (an interrupt, a RecursionError on the way): still owed
            raise

class Kernel(KernelAPI):
    "Connection file in, sockets bound, requests dispatched to handlers named after their msg_type; libraries' API in `KernelAPI`."
    def __init__(self, conn:dict):
        # threads made from here to the loop's start (ours, zmq's, IPython's) block SIGINT and SIGTERM, so a signal sent to
        # the process is taken by the main thread, where it interrupts whatever the main thread is blocked in
        block_signals()
        self.conn,self.stopping,self.ready = conn,threading.Event(),threading.Event()
        self.session = APISession(conn.get("key", "").encode(), conn.get("signature_scheme", "hmac-sha256"))
        if not conn.get("key"): log.warning("connection file has no key: messages are not signed")
        self.curve = curve_keys(conn)  # checked before anything binds: a bad key must never mean plain text
        self.ctx = zmq.Context()
        self.log_stream = sys.stderr
        self.ch = Channels(self.raw_pub)
        self.iopub_socket = IOPubSocket(self.ch)  # for libraries' `kernel.session.send(kernel.iopub_socket, ...)`
        self.subs = None  # made once the sockets are up: the first kernel_info must not wait for asyncio and IPython
        self.handlers         = {o: getattr(self, o) for o in shell_msgs}
        self.control_handlers = {o: getattr(self, o) for o in shell_msgs + control_msgs}  # control takes shell's requests too
        self.waiting,self.debugger,self.bridge,self.introspector,self.exiting = {},None,None,Worker("introspect"),False
        self.conn_file,self.watch = None,None  # the connection file's path (set by __main__): the death record is keyed on it
        self.once = threading.Lock()  # a reply (and an introspection's idle) is sent once, by whichever thread comes first

    def addr(self, port):
        "jupyter_client's endpoint names: `tcp://<ip>:<port>`, else `<transport>://<ip>-<port>` (ipc: a file path)."
        t,ip,p = self.conn.get("transport", "tcp"),self.conn["ip"],self.conn[port]
        return f"tcp://{ip}:{p}" if t == "tcp" else f"{t}://{ip}-{p}"

    def bind(self, kind, port):
        sock = self.ctx.socket(kind)
        sock.linger = 0
        if self.curve: sock.curve_publickey,sock.curve_secretkey,sock.curve_server = *self.curve,True
        if kind == zmq.ROUTER and port != "hb_port":
            sock.router_handover = 1  # a client reconnecting with the same identity takes over its replies
            sock.router_mandatory = 1  # a full or gone client is an error we can count, not a silent drop
            sock.sndhwm = REPLY_HWM
        sock.bind(self.addr(port))
        return sock

    def start_sockets(self):
        "Bind all five sockets here, then hand each to the one thread that will own it."
        self.iopub = IOPub(self, self.bind(zmq.XPUB, "iopub_port"))
        self.shell_t = SockThread(self, self.bind(zmq.ROUTER, "shell_port"), "shell", self.on_shell)
        self.control_t = SockThread(self, self.bind(zmq.ROUTER, "control_port"), "control", self.on_control)
        self.stdin_t = SockThread(self, self.bind(zmq.ROUTER, "stdin_port"), "stdin", self.on_stdin)
        self.stdin_t.unreachable = self.no_stdin
        hb = self.bind(zmq.ROUTER, "hb_port")
        self.threads = [self.iopub, self.shell_t, self.control_t, self.stdin_t]
        for t in self.threads: t.start()
        # echo in C: zmq.proxy releases the GIL, so heartbeats are answered while a cell computes
        threading.Thread(target=self.heartbeat, args=(hb,), daemon=True, name="ipymini-hb").start()

    def heartbeat(self, sock):
        try: zmq.proxy(sock, sock)
        except zmq.ZMQError: pass

    # --- sending
    def send(self, sock, msg_type, content, parent, idents, metadata=None):
        "Serialize here and queue the frames for the thread owning `sock`."
        frames = self.session.serialize(self.session.msg(msg_type, content, parent, metadata), idents)
        if DEBUG: log.debug("out %s %s", msg_type, content.get("status", ""))
        self.owner(sock).outbox.put(frames)

    def owner(self, sock): return self.control_t if sock is self.control_t.sock else self.shell_t if sock is self.shell_t.sock else self.stdin_t
    def raw_pub(self, msg_type, content, parent, buffers=None, metadata=None): self.iopub.outbox.put((msg_type, content, parent, buffers, metadata))
    def status(self, state, parent): self.ch.pub("status", dict(execution_state=state), parent=parent)

    # --- receiving
    def recv(self, sock, frames, where):
        try: idents,msg = self.session.deserialize(frames)
        except ValueError as e: return log.warning("%s: dropped a message: %s", where, e)
        if DEBUG: log.debug("in %s %s", where, msg["header"]["msg_type"])
        msg["idents"] = idents  # so input() can reach the client that sent the cell
        return Req(self, sock, idents, msg)

    def on_shell(self, sock, frames):
        if (req := self.recv(sock, frames, "shell")) is not None: self.route(self.handlers, req)

    def on_control(self, sock, frames):
        if (req := self.recv(sock, frames, "control")) is not None: self.route(self.control_handlers, req)

    def route(self, handlers, req):
        "Execute and comm messages go to their subshell's queue (run in order, as user code); the rest are answered at once."
        if req.msg_type not in executed: return self.run_sync(handlers, req)
        self.ready.wait()
        sid = req.msg["header"].get("subshell_id")
        req.sub = self.subs.get(sid)
        if req.sub is None:
            with self.busy(req.msg): return req.reply(self.err(f"unknown subshell_id {sid!r}", "ValueError"))
        req.sub.submit(req)

    def on_stdin(self, sock, frames):
        if (req := self.recv(sock, frames, "stdin")) is None: return
        if req.msg_type != "input_reply": return log.warning("stdin: ignored a stray %s", req.msg_type)
        pid = req.msg["parent_header"].get("msg_id")
        if pid is None:  # jupyter_client's `input()` sends no parent: it answers its session's prompt, if that is one alone
            mine = [m for m,w in list(self.waiting.items()) if w[3] == req.msg["header"].get("session")]
            if len(mine) != 1: return log.warning("stdin: ignored an input_reply without parent: its session has %d prompts waiting", len(mine))
            pid = mine[0]
        if pid not in self.waiting: return log.warning("stdin: ignored a stray input_reply")
        self.answer(pid, req.c.get("value", ""))

    def answer(self, mid, value):
        box,ev,*_ = self.waiting[mid]
        if not box: box.append(value)
        ev.set()

    def run_sync(self, handlers, req):
        "Run a handler on this socket's thread; only `execute_request` and comms go to a subshell's queue."
        if req.msg_type not in handlers:
            log.warning("unknown message type %r", req.msg_type)
            if req.msg_type.endswith("_request"):
                with self.busy(req.msg): req.reply(self.err(f"unknown message type {req.msg_type!r}", "UnknownMessageType"))
            return
        if req.msg_type not in early: self.ready.wait()  # the shell is built while the first kernel_info is answered
        if req.msg_type in introspect: return self.introspector.put(self.introspect, req)
        try: self.dispatch_sync(handlers, req)
        except Exception as e:
            with headroom():  # what failed may be a RecursionError under a limit user code set: logging and replying must not
                log.exception("error handling %s", req.msg_type)
                self.unanswered(req, e)
        finally: release_import_lock()

    # --- dispatch
    @contextmanager
    def busy(self, msg):
        "busy before a request's first output, idle after its last."
        self.status("busy", msg)
        try: yield
        finally:
            capture.leave(msg)  # before idle: later output of what this request started goes to the cell running then
            self.status("idle", msg)

    def enter(self, req):
        "Outputs from here on belong to `req`."
        sub = req.sub
        capture.enter(req.msg, sub and sub.sid, req.msg_type == "execute_request", sub is not None and sub is self.subs.parent)

    def missing(self, req):
        "Answer a request that lacks a required field with an error; comm messages have no reply, so they get a log line."
        if not (miss := [k for k in required.get(req.msg_type, "").split() if k not in req.c]): return False
        what = f"{req.msg_type} is missing {', '.join(miss)}"
        if req.msg_type.endswith("_request"): req.reply(self.err(what, "KeyError"))
        else: log.warning(what)
        return True

    def introspect(self, req):
        "complete/inspect on the introspection thread; an interrupt that comes first answers it (see `interrupt`)."
        self.enter(req)
        self.status("busy", req.msg)
        try:
            if not self.missing(req): self.handlers[req.msg_type](req)
        except BaseException as e:
            with headroom(): self.unanswered(req, e)  # a RecursionError under a limit user code lowered must not stop the reply
        finally:
            self.idle_once(req)
            release_import_lock()

    def idle_once(self, req):
        with self.once:
            if req.idle: return
            req.idle = True
        capture.leave(req.msg)
        self.status("idle", req.msg)

    def dispatch_sync(self, handlers, req):
        self.enter(req)
        with self.busy(req.msg):
            if not self.missing(req): handlers[req.msg_type](req)

    async def dispatch(self, handlers, req):
        "Run the handler for `req` between busy and idle; reply with an error if required fields are missing."
        self.enter(req)
        with self.busy(req.msg):
            if self.missing(req): return
            res = handlers[req.msg_type](req)
            if hasattr(res, "__await__"): await res

    def err(self, evalue, ename="Error"): return dict(status="error", ename=ename, evalue=evalue, traceback=[])

    # --- shell handlers
    def complete_request(self, req):    req.reply(self.safe(self.bridge.complete, req.c["code"], req.c.get("cursor_pos")))
    def inspect_request(self, req):     req.reply(self.safe(self.bridge.inspect, req.c["code"], req.c.get("cursor_pos"), req.c.get("detail_level", 0)))
    def is_complete_request(self, req): req.reply(self.safe(self.bridge.is_complete, req.c["code"]))
    def history_request(self, req):     req.reply(self.numbered(req.c, self.safe(self.bridge.history, **req.c)))

    def numbered(self, c, res):
        "A `range` of the current session asked for by its number carries that number (IPython numbers it 0)."
        n = c.get("session")
        if c.get("hist_access_type") != "range" or type(n) is not int or n <= 0 or res.get("status") != "ok": return res
        return {**res, "history": [[n if h[0] == 0 else h[0], *h[1:]] for h in res["history"]]}
    def kernel_info_request(self, req): req.reply(self.kernel_info())
    def connect_request(self, req):     req.reply({k: self.conn[k] for k in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")})
    def comm_info_request(self, req):
        comms = self.comm_manager.comms.items()
        tn = req.c.get("target_name")
        req.reply(status="ok", comms={k: dict(target_name=c.target_name) for k,c in list(comms) if tn is None or c.target_name == tn})

    def safe(self, f, *args, **kw):
        "The reply content of `f(...)`, or an error reply naming what went wrong in it."
        try: return f(*args, **kw)
        except Exception as e:
            log.warning("%s failed: %r", f.__name__, e)
            return self.err(str(e), type(e).__name__)

    def comm_open(self, req):  self.comm(self.comm_manager.comm_open, req)
    def comm_msg(self, req):   self.comm(self.comm_manager.comm_msg, req)
    def comm_close(self, req): self.comm(self.comm_manager.comm_close, req)
    def comm(self, f, req):
        "Run a comm handler as user code (interruptible, outputs parented to the comm message)."
        cid = req.c["comm_id"]
        if req.msg_type != "comm_open" and cid not in self.comm_manager.comms: return log.warning("%s for unknown comm %s", req.msg_type, cid)
        req.sub.running = True
        try: f(None, None, req.msg)
        except KeyboardInterrupt: log.warning("%s interrupted", req.msg_type)
        finally: self.user_done(req.sub)

    async def execute_request(self, req):
        from .bridge import Result
        c,sub = req.c,req.sub
        silent = c.get("silent", False)
        started,count = now(),self.bridge.count
        sub.running = True  # before execute_input: an interrupt sent as soon as a client sees it must find the cell running
        try:
            if not silent: self.ch.pub("execute_input", dict(code=c["code"], execution_count=count), parent=req.msg)
            if self.watch.note and not silent: self.ch.pub("stream", dict(name="stderr", text=self.watch.report()), parent=req.msg)  # why it died
            self.watch.begin(sub, count)
            res = await self.bridge.execute(c["code"], silent=silent, store_history=c.get("store_history", not silent),
                user_expressions=c.get("user_expressions"), allow_stdin=c.get("allow_stdin", False), cell_id=(req.msg["metadata"] or {}).get("cellId"))
        except KeyboardInterrupt as e: res,ki = None,e  # it landed in IPython's bookkeeping, not in the cell
        finally:
            try: self.user_done(sub)
            finally: self.watch.end(sub, count)
        with headroom():  # the reply goes out whatever recursion limit the cell left behind
            if res is None:
                res = Result("error", self.bridge.count - 1, dict(ename="KeyboardInterrupt", evalue="", traceback=plain_tb(ki)))
                self.ch.pub("error", res.error)
            # stop_on_error: abort what arrived before this reply, never what the client sends after seeing it
            if res.status == "error" and c.get("stop_on_error", True): sub.abort_before = monotonic()
            req.reply(self.exec_reply(res), metadata=dict(started=started, dependencies_met=True, engine=self.session.sid, status=res.status))
        # `exit`: stop a moment after the reply, as ipykernel does; jupyter console stops reading replies once the kernel is gone
        if self.bridge.ip.exit_now and not silent: threading.Timer(0.1, self.stop).start()

    def exec_reply(self, res):
        base = dict(status=res.status, execution_count=res.count)
        if res.status == "error": return {**base, **res.error, "user_expressions": {}, "payload": res.payload}
        return {**base, "user_expressions": res.user_expressions, "payload": res.payload}

    def unanswered(self, req, exc=None):
        "A request whose handler died (an interrupt landing in kernel code, a bug) still gets an error reply: clients never hang."
        if req.replied or not req.msg_type.endswith("_request"): return
        err = dict(ename=type(exc).__name__ if exc else "KernelError", evalue=safe_str(exc or "the request was not completed"),
            traceback=plain_tb(exc) if exc is not None else [])
        if req.msg_type != "execute_request": return req.reply(status="error", **err)
        self.ch.pub("error", err, parent=req.msg)
        req.reply(status="error", execution_count=self.bridge.count - 1, user_expressions={}, payload=[], **err)

    def user_done(self, sub):
        "User code has left the stack: the kernel's own SIGINT (and SIGURG) handler is back if the cell replaced it."
        sub.running = False
        if sub is not self.subs.parent: return
        if signal.getsignal(signal.SIGINT) != self.on_sigint: signal.signal(signal.SIGINT, self.on_sigint)
        if self.ch.fds is not None: self.ch.fds.restore()  # fd capture's SIGURG, likewise
        self.relay.install()

    def abort(self, req):
        "An `aborted` execute reply, with busy/idle around it; no execution_count (JupyterLab would show it)."
        with self.busy(req.msg): req.reply(status="aborted", metadata=dict(status="aborted", engine=self.session.sid))

    # --- control handlers
    def kernel_info(self):
        dbg = self.debug_ok()
        return dict(status="ok", protocol_version="5.5", implementation="ipymini", implementation_version=__version__,
            language_info=dict(name="python", version="%d.%d.%d" % sys.version_info[:3], mimetype="text/x-python", file_extension=".py",
                pygments_lexer="ipython3", codemirror_mode=dict(name="ipython", version=3), nbconvert_exporter="python"),
            banner=banner(), help_links=help_links, debugger=dbg, supported_features=["kernel subshells"] + (["debugger"] if dbg else []))

    def debug_ok(self):
        import importlib.util
        return importlib.util.find_spec("debugpy") is not None  # found, not imported: debugpy loads on first use

    def shutdown_request(self, req):
        restart = bool(req.c.get("restart", False))
        req.reply(status="ok", restart=restart)
        self.ch.pub("shutdown_reply", dict(status="ok", restart=restart), parent=req.msg)
        self.stop()

    def interrupt_request(self, req):
        self.interrupt()
        req.reply(status="ok")

    def debug_request(self, req):
        if self.debugger is None:
            from .debug import Debugger  # debugpy loads only now, on the first debug_request
            self.debugger = Debugger(self)
        req.reply(self.debugger.process(req.c))

    def usage_request(self, req): req.reply(usage())

    def create_subshell_request(self, req): req.reply(status="ok", subshell_id=self.subs.create())
    def list_subshell_request(self, req):   req.reply(status="ok", subshell_id=list(self.subs.subs))
    def delete_subshell_request(self, req):
        sid = req.c["subshell_id"]
        req.reply(dict(status="ok") if self.subs.delete(sid) else self.err(f"no subshell {sid!r}", "ValueError"))

    # --- stdin, interrupts, life cycle
    def ask(self, prompt, password):
        "Send `input_request` for the current cell and wait for the client's `input_reply`; interrupts raise KeyboardInterrupt."
        self.ch.flush()
        parent = current_parent()
        req_msg = self.session.msg("input_request", dict(prompt=prompt, password=password), parent)
        mid,box,ev = req_msg["header"]["msg_id"],[],threading.Event()
        try:  # all inside: an interrupt landing before the wait must not leave this request waiting for the next input_reply
            self.waiting[mid] = box,ev,threading.current_thread(),(parent or {}).get("header", {}).get("session")
            self.stdin_t.outbox.put(self.session.serialize(req_msg, (parent or {}).get("idents", [])))
            ev.wait()
        except KeyboardInterrupt: box[:] = [KeyboardInterrupt]
        finally: self.waiting.pop(mid, None)
        if box[0] is KeyboardInterrupt: raise KeyboardInterrupt("Interrupted by user") from None
        if box[0] is unanswerable:
            from IPython.core.error import StdinNotImplementedError
            raise StdinNotImplementedError("input() asked a client that has no stdin channel connected")
        return box[0]

    def no_stdin(self, frames):
        "An input_request for a client with no stdin socket (ROUTER_MANDATORY says so): its input() raises, never waits for good."
        try: mid = json.loads(frames[frames.index(DELIM) + 2])["msg_id"]
        except (ValueError, IndexError, KeyError, TypeError): return
        if mid in self.waiting: self.answer(mid, unanswerable)

    def interrupt(self):
        "Interrupt the parent subshell by SIGINT (so it lands in user code), the others by async exception; end input() waits."
        self.stop_introspection()
        if self.subs is None: return
        for mid,(_,_,t,_) in list(self.waiting.items()):
            if t is not threading.main_thread(): self.answer(mid, KeyboardInterrupt)
        for s in self.subs.subs.values(): s.interrupt()
        # to the main thread itself, so a wait it is blocked in (input(), a lock) returns; last: from the main thread it raises at once
        if self.subs.parent.running: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def stop_introspection(self):
        "End a complete/inspect that hangs: error reply and idle now; its thread is left to it, a fresh one serves the rest."
        if (req := self.introspector.abandon()) is None: return
        self.unanswered(req, KeyboardInterrupt("interrupted"))
        self.idle_once(req)

    def on_sigint(self, sig, frame):
        """SIGINT: stop the running cell (and any subshell's); an idle or still-starting kernel ignores it.
        A handler runs between any two bytecodes of the main thread, this one's included, so it takes no lock the main
        thread could hold (a second SIGINT inside the first one's `Event.set` hung the kernel): it runs once at a time, and
        a hung introspection is stopped from the relay's thread (as SIGTERM's shutdown is)."""
        if is_child(): raise KeyboardInterrupt  # a child of user code, before `forked` resets its handlers: Python's default
        self.relay.handled()
        if self.in_sigint: return  # a second SIGINT while the first is handled: that one does the work
        self.in_sigint = True
        try:
            if self.exiting: raise KeyboardInterrupt  # an atexit handler that hangs (see run_atexit)
            if self.introspector.job: self.relay.post(signal.SIGINT)
            if self.subs is None: return
            for s in self.subs.subs.values(): s.interrupt()
            if self.subs.parent.interrupt(): return
            if self.subs.parent.running: raise KeyboardInterrupt
        finally: self.in_sigint = False

    def on_sigusr1(self, sig, frame):
        if not is_child(): self.relay.post(signal.SIGUSR1)  # the dump takes locks: the relay's thread does it

    def dump_stacks(self):
        "SIGUSR1: every thread's stack, by thread name, on the kernel's stderr, to see where a stuck kernel is stuck."
        import traceback
        names = {t.ident: t.name for t in threading.enumerate()}
        out = [f"--- ipymini {os.getpid()}: {len(names)} threads; output lock {self.ch.out.lock!r} ---"]  # (its owner: DEVLOG)
        for tid,f in sys._current_frames().items(): out += [f"Thread {names.get(tid, tid)}:", *traceback.format_stack(f)]
        self.log_stream.write("\n".join(out) + "\n")  # not print(): user code may have rebound it
        self.log_stream.flush()

    def stop(self):
        "Begin shutdown from any thread: stop every subshell; the main thread then cleans up and exits."
        if self.stopping.is_set(): return
        self.stopping.set()
        if self.watch is not None: self.watch.forget()
        for s in self.subs.all() if self.subs else (): s.stop()
        t = threading.Timer(5, lambda: os._exit(0))  # a cell that ignores interrupts must not keep the process alive
        t.daemon = True
        t.start()
        self.interrupt()  # last: from the main thread, the SIGINT it sends raises right here

    def start(self):
        "Sockets first, so the first kernel_info is answered while IPython loads; then the shell; then serve on this thread."
        self.start_sockets()
        self.ours = {signal.SIGINT: self.on_sigint, signal.SIGTERM: self.on_sigterm, signal.SIGUSR1: self.on_sigusr1}
        self.fresh = {sig: signal.signal(sig, h) for sig,h in self.ours.items()}  # what a forked child gets back
        self.fork_mask = threading.local()  # the forking thread's signal mask, for `forked`/`after_fork` to put back
        os.register_at_fork(before=self.before_fork, after_in_parent=self.after_fork, after_in_child=self.forked)
        self.in_sigint = False
        posted = {signal.SIGINT: self.stop_introspection, signal.SIGTERM: self.stop, signal.SIGUSR1: self.dump_stacks}
        self.relay = SignalRelay(self.wake_main, lambda: signal.getsignal(signal.SIGINT) == self.on_sigint, posted)
        from . import comms, libapi
        from .bridge import KernelBridge
        from .subshell import SubshellManager
        self.subs = SubshellManager(self)
        self.bridge = KernelBridge(self.ask, kernel=self)
        self.ch.install(self.bridge.ip, capture_fds=env_flag("IPYMINI_CAPTURE_FDS", True), pace=self.iopub.outbox.wait_below)
        self.comm_manager = comms.install(self)
        libapi.install(self)
        from .guard import Watch
        self.watch = Watch(self, self.conn_file)  # the memory guard and the death report
        from .profile import init_profile
        init_profile(self.bridge.ip)
        self.ready.set()
        if self.stopping.is_set(): self.subs.parent.stop()  # a shutdown that came while we were starting
        watch_parent(self)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        self.subs.parent.run()
        self.finish()

    def on_sigterm(self, sig, frame):
        "SIGTERM: shut down. stop() takes locks, so it runs on the relay's thread; in a child of user code it ends the child."
        if not is_child(): return self.relay.post(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a fresh Python's: the child dies of it, rather than stopping the parent
        os.kill(os.getpid(), signal.SIGTERM)

    def wake_main(self):
        "Wake the main thread's loop (a no-op callback), so a toolkit loop running in its wait returns and signal handlers run."
        if self.subs is None: return
        try: self.subs.parent.loop.call_soon_threadsafe(lambda: None)
        except RuntimeError: pass  # closed at shutdown

    def before_fork(self):
        """Our signals wait while a thread forks. A signal that reaches the child before its `forked` runs would find our
        Python handler, and CPython clears the flag of a signal caught then (or drops it once `forked` resets the handler):
        a `Pool.terminate()` SIGTERM sent to a just-forked worker was lost, and the cell hung in `join` (1 in a few hundred
        pools beside CPU hogs). Blocked, the signal stays pending in the child until its fresh handlers are in."""
        self.fork_mask.old = signal.pthread_sigmask(signal.SIG_BLOCK, set(self.ours))

    def after_fork(self): signal.pthread_sigmask(signal.SIG_SETMASK, self.fork_mask.old)

    def forked(self):
        "A child of user code (multiprocessing's fork, `os.fork`) gets the signal handlers a fresh Python has, and no kernel."
        try: self.fresh_handlers()
        finally: self.after_fork()  # what was held back in the fork comes now, to the fresh handlers

    def fresh_handlers(self):
        for sig,h in self.fresh.items():
            if signal.getsignal(sig) == self.ours[sig]: signal.signal(sig, h)  # a handler user code set stays
        signal.set_wakeup_fd(-1)  # the child's signals are not ours to relay
        # IPython's exit hook would reset the namespace and close the parent's history session from the child
        if self.bridge is not None: atexit.unregister(self.bridge.ip.atexit_operations)

    def run_atexit(self, budget=1.0):
        """Run the `atexit` handlers (the user's, then IPython's exit hooks) as an exiting Python would; `os._exit` skips them.
        A handler still running after `budget` seconds is interrupted (and logged), so shutdown keeps its 2 s budget."""
        done,main = threading.Event(),threading.main_thread().ident
        def cut():
            if done.wait(budget): return
            log.warning("atexit handlers still running after %.1f s: interrupting them", budget)
            while not done.wait(0.1): signal.pthread_kill(main, signal.SIGINT)  # each hanging handler, until none is left
        self.exiting = True  # on_sigint raises now
        threading.Thread(target=cut, daemon=True, name="ipymini-atexit").start()
        try: atexit._run_exitfuncs()
        except BaseException as e: log.warning("atexit: %r", e)
        finally:
            self.exiting = False  # first: an interrupt from here on must not escape the clean-up
            done.set()

    def finish(self):
        if signal.getsignal(signal.SIGINT) != self.on_sigint: signal.signal(signal.SIGINT, self.on_sigint)
        if sys.getrecursionlimit() < 1000: sys.setrecursionlimit(1000)  # exiting: the user's limit must not stop the clean-up
        self.run_atexit()
        end_children()
        if (debug := sys.modules.get("ipymini.debug")) is not None: debug.cleanup()  # the cell files dumpCell wrote
        self.ch.flush()
        if hasattr(self.ch.fds, "let_all_go"): self.ch.fds.let_all_go()  # fd capture's leases
        if self.watch is not None: self.watch.close()
        for t in self.threads: t.stop()
        for t in self.threads: t.join(timeout=1)
        if self.conn.get("transport") == "ipc":  # the heartbeat's socket is never closed, so libzmq would leave its file
            for p in ports:
                try: os.remove(self.addr(p)[6:])
                except OSError: pass
