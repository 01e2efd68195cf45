"The debugger: `debug_request` carries DAP to pydevd (debugpy) running in this process; its events go out as `debug_event`."
import ast, itertools, json, logging, os, queue, re, socket, sys, tempfile, threading
from types import SimpleNamespace as NS
from IPython.core.compilerop import CachingCompiler

log = logging.getLogger("ipymini")
SEED = 0xC70F6907  # reported in debugInfo: JupyterLab hashes a cell's code with it to find the cell's file, as we do
TIMEOUT = 10.0     # only so a pydevd that never answers cannot block control for ever
local_cmds = ("initialize attach configurationDone continue setBreakpoints dumpCell debugInfo variables inspectVariables "
    "richInspectVariables copyToGlobals source modules disconnect").split()
forwarded  = set(("setExceptionBreakpoints setFunctionBreakpoints stackTrace scopes evaluate setExpression setVariable next "
    "stepIn stepOut pause threads exceptionInfo completions").split())
# the kernel's own code, kept out of stepping and stack traces as ipykernel keeps its own: what was loaded before any cell ran
# (this module loads with the shell), and these packages whenever they load
startup_mods = set(sys.modules)
kernel_mods = "ipymini IPython asyncio threading selectors concurrent traitlets zmq comm jupyter_client jupyter_core debugpy jedi parso".split()
hidden = set("__name__ __doc__ __package__ __loader__ __spec__ __annotations__ __builtins__ __builtin__ __display__ get_ipython "
    "debugpy exit quit In Out _ih _oh _dh _ __ ___".split())

def murmur2(data:bytes, seed=SEED) -> int:
    "32-bit MurmurHash2 of `data`: the hash JupyterLab (and ipykernel) name cells by."
    m,n = 0x5BD1E995,len(data)
    h,end = (seed ^ n) & 0xFFFFFFFF,n & ~3
    for i in range(0, end, 4):
        k = int.from_bytes(data[i:i+4], "little") * m & 0xFFFFFFFF
        h = (h * m & 0xFFFFFFFF) ^ ((k ^ k >> 24) * m & 0xFFFFFFFF)
    if n & 3: h = (h ^ int.from_bytes(data[end:], "little")) * m & 0xFFFFFFFF
    h = (h ^ h >> 13) * m & 0xFFFFFFFF
    return h ^ h >> 15

def tmp_dir() -> str: return os.path.join(tempfile.gettempdir(), f"ipykernel_{os.getpid()}")  # the name clients and sanitizers look for
def cleanup():
    import shutil
    shutil.rmtree(tmp_dir(), ignore_errors=True)

def cell_file(code:str) -> str: return os.path.join(tmp_dir(), f"{murmur2(code.encode('utf-8'))}.py")

class CellCompiler(CachingCompiler):
    "Compiles each cell under the file its code hashes to, so a breakpoint set on a dumped cell is hit when the cell runs."
    def get_code_name(self, raw_code, transformed_code, number): return cell_file(raw_code)

def kernel_rules() -> list:
    "pydevd `rules` that exclude the kernel's own files and packages."
    files = {f for n,m in list(sys.modules.items()) if (n in startup_mods or n.partition(".")[0] in kernel_mods)
        and isinstance(f := getattr(m, "__file__", None), str)}
    return ([dict(path=os.path.dirname(os.path.abspath(__file__)), include=False)] + [dict(path=f, include=False) for f in sorted(files)]
        + [dict(module=m, include=False) for m in kernel_mods])

def args(c) -> dict: return c.get("arguments") or {}

# argument types checked before a request reaches pydevd: some malformed ones stop its command thread for good
arg_types = dict(threadId=int, frameId=int, variablesReference=int, expression=str, source=dict, breakpoints=list, filters=list, value=str)
needed = dict(setBreakpoints="source", stackTrace="threadId", scopes="frameId", variables="variablesReference", evaluate="expression",
    next="threadId", stepIn="threadId", stepOut="threadId", pause="threadId", setExpression="expression value", setVariable="variablesReference")

def bad_args(c):
    "Why request `c`'s arguments cannot go to pydevd, or None."
    a = args(c)
    if (miss := [k for k in needed.get(c["command"], "").split() if k not in a]): return f"{c['command']} needs {', '.join(miss)}"
    if (wrong := [k for k,t in arg_types.items() if k in a and (not isinstance(a[k], t) or isinstance(a[k], bool))]): return f"bad type for {', '.join(wrong)}"
    if not isinstance(a.get("source", {}).get("path", ""), str): return "source.path must be a string"
    if not all(isinstance(b, dict) and isinstance(b.get("line"), int) for b in a.get("breakpoints", [])): return "each breakpoint needs an int line"
def shown(name) -> bool: return name not in hidden and not re.match(r"_i{1,3}$|_i?\d+$", name)

def response(c, success=True, message=None, **body) -> dict:
    "A DAP response to request `c`; `body` only when given."
    r = dict(type="response", request_seq=c.get("seq", 0), success=success, command=c.get("command", ""))
    if message is not None: r["message"] = message
    if body or success: r["body"] = body
    return r

def fail(c, message, **body): return response(c, False, message, **body)

def hide(t:threading.Thread):
    "Mark `t` as the debugger's or the kernel's own: pydevd neither traces nor suspends it, and lists no such thread."
    t.pydev_do_not_trace = t.is_pydev_daemon_thread = True
    return t

def hide_kernel_threads():
    "The kernel's own threads must never be suspended (control has to answer while a cell is stopped); subshells run user code."
    for t in threading.enumerate():
        if t.name.startswith("ipymini-") and not t.name.startswith("ipymini-sub-") or t.name == "IPythonHistorySavingThread": hide(t)

def read_frame(f):
    "One `Content-Length`-framed DAP message from file `f`, or None at EOF."
    n = None
    while (line := f.readline()) not in (b"\r\n", b"\n"):
        if not line: return None
        k,_,v = line.decode("ascii").partition(":")
        if k.strip().lower() == "content-length": n = int(v)
    return json.loads(f.read(n))

class Link:
    "A DAP connection to pydevd: a request waits for its response; each event goes to `track` as it is read, then to `on_event` on a thread of its own."
    def __init__(self, addr, track, on_event):
        self.sock,self.track,self.on_event = socket.create_connection(addr),track,on_event
        self.seq,self.lock,self.waiting,self.events = itertools.count(1),threading.Lock(),{},queue.Queue()
        for f,name in ((self.read, "dap-read"), (self.dispatch, "dap-events")):
            hide(threading.Thread(target=f, daemon=True, name=f"ipymini-{name}")).start()

    def send(self, msg):
        body = json.dumps(msg).encode("utf-8")
        with self.lock: self.sock.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def request(self, c, timeout=TIMEOUT) -> dict:
        "Send `c` under a seq of ours (so internal requests never collide with the client's); the response carries the client's seq."
        seq,ev,box = next(self.seq),threading.Event(),[]
        self.waiting[seq] = ev,box
        try:
            self.send({**c, "type": "request", "seq": seq})
            if not ev.wait(timeout): return fail(c, f"pydevd did not answer {c.get('command')!r}")
        finally: self.waiting.pop(seq, None)
        return {**box[0], "request_seq": c.get("seq", 0)}

    def read(self):
        f = self.sock.makefile("rb")
        try:
            while (msg := read_frame(f)) is not None:
                msg.pop("pydevd_cmd_id", None)
                if msg.get("type") == "event":
                    # here, in wire order: a response pydevd sends after an event (`continue` after `continued`) finds its effect done
                    self.track(msg)
                    self.events.put(msg)
                elif (w := self.waiting.get(msg.get("request_seq"))) is not None:
                    w[1].append(msg)
                    w[0].set()
        except (OSError, ValueError) as e: log.warning("debugger: link to pydevd failed: %s", e)
        self.events.put(None)

    def dispatch(self):
        while (ev := self.events.get()) is not None:
            try: self.on_event(ev)
            except Exception: log.exception("debugger: error handling a %s event", ev.get("event"))

class Explorer:
    "The user namespace shown as pydevd shows a frame, so variables can be listed and expanded while nothing is stopped."
    def __init__(self, ns):
        from _pydevd_bundle.pydevd_suspended_frames import SuspendedFramesManager, _FramesTracker
        from _pydevd_bundle.pydevd_frame_utils import create_frames_list_from_frame
        from _pydevd_bundle.pydevd_api import PyDevdAPI
        self.frames = SuspendedFramesManager()
        self.frame = NS(f_code=NS(co_filename=cell_file(""), co_name="<module>"), f_globals=ns, f_locals=ns, f_back=None, f_lineno=1)
        db = NS(variable_presentation=PyDevdAPI.VariablePresentation())
        _FramesTracker(self.frames, db).track("thread1", create_frames_list_from_frame(self.frame))

    def children(self, ref=None) -> list:
        return [v.get_var_data() for v in self.frames.get_variable(ref or id(self.frame)).get_children_variables()]

def no_delay():
    "pydevd writes a message's header and body in two sends: with Nagle on at its end, each response waits ~40 ms for our delayed ACK."
    from _pydevd_bundle.pydevd_constants import get_global_debugger
    if (w := getattr(get_global_debugger(), "writer", None)) is not None: w.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

def load_debugpy():
    "Import debugpy (and so pydevd); sys.monitoring mode is off unless PYDEVD_USE_SYS_MONITORING says (read when pydevd loads)."
    os.environ.setdefault("PYDEVD_USE_SYS_MONITORING", "0")  # settrace: see DEVLOG 2026-12-03 (3.14/3.15) for the cost and why
    import debugpy.server.api
    return debugpy

def listening():
    "Where pydevd listens: debugpy before 1.8.22 returns nothing from an in-process `listen`, so ask pydevd."
    from _pydevd_bundle.pydevd_constants import get_global_debugger
    db = get_global_debugger()
    db.wait_for_server_socket_ready()
    return db._server_socket_name

class Debugger:
    "Answers a `debug_request`'s DAP request with a DAP response; pydevd, in this process, does the debugging."
    def __init__(self, kernel):
        self.kernel,self.link,self.started,self.parent = kernel,None,False,None
        self.breakpoints,self.stopped,self.explorer,self.removed = {},set(),None,None
        self.handlers = {o: getattr(self, o if o != "continue" else "continue_") for o in local_cmds}

    def process(self, c) -> dict:
        "The response to DAP request `c`; anything malformed or unknown gets a failed response, never an exception."
        if not isinstance(c, dict) or not isinstance(c.get("command"), str) or not isinstance(args(c), dict):
            return fail(c if isinstance(c, dict) else {}, "a debug_request holds a DAP request: a dict with `command` and `arguments`")
        from .capture import PARENT
        self.parent,cmd = PARENT.get() or self.parent,c["command"]
        try:
            if (f := self.handlers.get(cmd)) is not None: return f(c)
            if cmd not in forwarded: return fail(c, f"unknown or unsupported DAP command {cmd!r}")
            return self.forward(c)
        except Exception as e:
            log.warning("debugger: %s failed: %r", cmd, e)
            return fail(c, f"{type(e).__name__}: {e}")

    def forward(self, c) -> dict:
        if not self.started: return fail(c, "the debugger is not started: send `initialize` first")
        if (why := bad_args(c)) is not None: return fail(c, why)
        return self.link.request(c)

    def publish(self, ev):
        from .capture import main_parent
        self.kernel.ch.pub("debug_event", ev, parent=main_parent[0] or self.parent)  # parented like ipykernel: the latest shell request

    def track(self, ev):
        "Which threads are stopped (for `variables`, `continue` and debugInfo), as ipykernel counts them: the one each event names."
        name,body = ev.get("event"),ev.get("body") or {}
        # a new set each time, never changed in place: the control thread may be reading the old one
        if name == "stopped": self.stopped = self.stopped | {body.get("threadId")}
        elif name == "continued": self.stopped = set() if body.get("allThreadsContinued") else self.stopped - {body.get("threadId")}

    # --- session
    def connect(self):
        "Start pydevd listening on localhost, in process (no adapter subprocess), and connect to it."
        hide_kernel_threads()
        debugpy = load_debugpy()
        self.link = Link(debugpy.listen(("127.0.0.1", 0), in_process_debug_adapter=True) or listening(), self.track, self.publish)
        self.kernel.bridge.ip.events.register("pre_execute", self.retrace)

    def retrace(self):
        "Before each cell, trace the thread that runs it: tracing set from another thread is not reliable, and an interrupt that lands in pydevd (a cell stopped at a breakpoint) ends it."
        if not self.started: return
        hide_kernel_threads()  # and any the kernel started since
        from _pydevd_bundle.pydevd_constants import get_global_debugger
        from _pydevd_bundle.pydevd_thread_lifecycle import resume_threads
        if (db := get_global_debugger()) is None: return
        if sys.gettrace() is None: resume_threads("*")  # the interrupted stop left threads marked suspended; the interrupt ended it
        db.enable_tracing()

    def initialize(self, c):
        if self.link is None: self.connect()
        if not self.started: self.keep_blank_lines(True)
        self.started = True
        rep = self.link.request(c)
        no_delay()  # pydevd has answered, so its end of the link exists
        return rep

    def attach(self, c):
        "Attach with ipykernel's defaults: library code may be stepped into, the kernel's own may not; then start pydevd running."
        if not self.started: return fail(c, "the debugger is not started: send `initialize` first")
        a = dict(args(c))
        if not a.get("justMyCode", False): a.setdefault("debugOptions", ["DebugStdLib"])
        a.setdefault("rules", kernel_rules())
        # what debugpy's adapter sets up for pydevd: stop all threads together, skip exceptions raised inside breakpoint conditions
        self.link.request(dict(command="setDebuggerProperty", arguments=dict(multiThreadsSingleNotification=True,
            skipSuspendOnBreakpointException=["BaseException"], skipPrintBreakpointException=["NameError"])))
        rep = self.link.request({**c, "arguments": a})
        if rep.get("success"): self.link.request(dict(command="configurationDone"))  # the client's own is answered here
        return rep

    def configurationDone(self, c): return response(c) if self.started else fail(c, "the debugger is not started")

    def continue_(self, c):
        "Forwarded; with nothing stopped pydevd would answer only once something resumes, so answer here."
        return self.forward(c) if self.stopped else response(c, allThreadsContinued=True)

    def disconnect(self, c):
        "End the session: pydevd drops breakpoints and resumes every thread, but stays loaded for the next `initialize`."
        if not self.started: return response(c)
        rep = self.link.request({**c, "arguments": {**args(c), "terminateDebuggee": False}})  # a client must never end the kernel
        self.keep_blank_lines(False)
        self.started,self.breakpoints,self.stopped = False,{},set()
        self.publish(dict(type="event", seq=0, event="terminated"))
        return rep

    def keep_blank_lines(self, keep):
        "While debugging, keep a cell's leading blank lines, or its line numbers would not match the dumped file."
        from IPython.core.inputtransformer2 import leading_empty_lines
        ts = self.kernel.bridge.ip.input_transformer_manager.cleanup_transforms
        if keep and leading_empty_lines in ts: self.removed = ts.index(leading_empty_lines)
        if keep and self.removed is not None and leading_empty_lines in ts: ts.remove(leading_empty_lines)
        if not keep and self.removed is not None and leading_empty_lines not in ts: ts.insert(self.removed, leading_empty_lines)
        if not keep: self.removed = None

    # --- requests answered here
    def setBreakpoints(self, c):
        "Forwarded; remember the lines pydevd actually chose, for debugInfo."
        path,rep = (args(c).get("source") or {}).get("path"),self.forward(c)
        if rep.get("success"):
            self.breakpoints[path] = [dict(line=b["line"]) for b in rep["body"].get("breakpoints", []) if "line" in b]
            if not self.breakpoints[path]: del self.breakpoints[path]
        return rep

    def dumpCell(self, c):
        "Write the cell's code to the file its hash names, where the client can set breakpoints on it."
        code = args(c)["code"]
        path = cell_file(code)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f: f.write(code)
        return response(c, sourcePath=path)

    def debugInfo(self, c):
        return response(c, isStarted=self.started, hashMethod="Murmur2", hashSeed=SEED, tmpFilePrefix=tmp_dir() + os.sep, tmpFileSuffix=".py",
            breakpoints=[dict(source=k, breakpoints=v) for k,v in self.breakpoints.items()], stoppedThreads=sorted(self.stopped),
            richRendering=True, exceptionPaths=["Python Exceptions"], copyToGlobals=True)

    def variables(self, c):
        "From the stopped frame when stopped, else from the namespace last listed by inspectVariables; kernel names left out."
        if self.stopped: rep = self.forward(c)
        elif self.explorer is None: return fail(c, "no variables: nothing is stopped and inspectVariables was not called")
        else:
            try: rep = response(c, variables=self.explorer.children(args(c).get("variablesReference")))
            except KeyError: return fail(c, f"unknown variablesReference {args(c).get('variablesReference')!r}")
        if rep.get("success"): rep["body"]["variables"] = [v for v in rep["body"].get("variables", []) if shown(v.get("name", ""))]
        return rep

    def inspectVariables(self, c):
        load_debugpy()
        self.explorer = Explorer(self.kernel.bridge.ip.user_ns)
        return response(c, variables=[v for v in self.explorer.children() if shown(v["name"])])

    def richInspectVariables(self, c):
        "The variable's mime bundle: from the stopped frame when stopped, else from the user namespace."
        a = args(c)
        name = a.get("variableName", "")
        if not isinstance(name, str) or not name.isidentifier():  # pydevd's groups are not variables, but asking for one is no error
            r = response(c, data={}, metadata={})
            return r if name in ("special variables", "function variables") else {**r, "success": False}
        if self.stopped and "frameId" in a: data,md = self.rich_in_frame(c, name, a["frameId"])
        else:
            res = self.kernel.bridge.ip.user_expressions({name: name})[name]
            data,md = (res["data"],res["metadata"]) if res.get("status") == "ok" else ({},{})
        return response(c, data=data, metadata={k: v for k,v in md.items() if k in data})

    def rich_in_frame(self, c, name, frame_id):
        expr = f"__import__('IPython').get_ipython().display_formatter.format({name})"
        rep = self.link.request(dict(command="evaluate", seq=c.get("seq", 0), arguments=dict(expression=expr, frameId=frame_id, context="clipboard")))
        try: return ast.literal_eval(rep["body"]["result"]) if rep.get("success") else ({},{})
        except (ValueError, SyntaxError, KeyError, TypeError): return {},{}

    def copyToGlobals(self, c):
        "Copy a variable of a stopped frame into the user's globals."
        a = args(c)
        src,dst = a.get("srcVariableName"),a.get("dstVariableName")
        if not all(isinstance(o, str) and o.isidentifier() for o in (src, dst)): return fail(c, "srcVariableName and dstVariableName must be identifiers")
        rep = self.forward(dict(command="setExpression", seq=c.get("seq", 0),
            arguments=dict(expression=f"globals()[{dst!r}]", value=src, frameId=a.get("srcFrameId"))))
        return {**rep, "command": c["command"]}

    def source(self, c):
        path = (args(c).get("source") or {}).get("path")
        if not isinstance(path, str) or not os.path.isfile(path): return {**fail(c, "source unavailable"), "body": {}}
        with open(path, encoding="utf-8") as f: return response(c, content=f.read())

    def modules(self, c):
        "The loaded modules that have a .py file, paged by `startModule` and `moduleCount`."
        mods,a = list(sys.modules.values()),args(c)
        start = a.get("startModule") or 0
        page = mods[start:start + (a.get("moduleCount") or len(mods))]
        found = [dict(id=i, name=m.__name__, path=p) for i,m in enumerate(page, start)
            if isinstance(p := getattr(getattr(m, "__spec__", None), "origin", None), str) and p.endswith(".py")]
        return response(c, modules=found, totalModules=len(mods))
