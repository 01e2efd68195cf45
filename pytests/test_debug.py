"The debugger (issue 6): DAP over `debug_request`/`debug_event`, driven the way JupyterLab's debugger panel drives it."
import itertools, os, random, time, pytest
from kutils import TIMEOUT, iopub_until_idle, request, run, shell_reply, start_kernel, text

pytestmark = pytest.mark.slow
CODE = "a = 1\nb = 2\nc = a + b\ndef f(x):\n    y = x * 2\n    return y\nd = f(c)\nprint(d)\n"
INIT = dict(clientID="jupyterlab", clientName="JupyterLab", adapterID="python", pathFormat="path", linesStartAt1=True,
    columnsStartAt1=True, supportsVariableType=True, supportsVariablePaging=True, supportsRunInTerminalRequest=True, locale="en-us")

class Dap:
    "A DAP client on control. Debug events from IOPub go to `events`, in order; other IOPub messages to the stash `iopub_until_idle` reads."
    def __init__(self, kc): self.kc,self.seq,self.events = kc,itertools.count(1),[]

    def __call__(self, command, **arguments) -> dict:
        return self.send(dict(type="request", seq=next(self.seq), command=command, arguments=arguments))

    def send(self, content) -> dict:
        "The `debug_reply` content for any `debug_request` content, well formed or not."
        m = request(self.kc, "debug_request", "control", **content)
        assert m["msg_type"] == "debug_reply"
        return m["content"]

    def adopt(self):
        "Move the debug events `iopub_until_idle` kept aside to `events`: read after those already there, before any still to come."
        stash = self.kc.__dict__.setdefault("iopub_stash", {})
        evs = [m for ms in stash.values() for m in ms if m["msg_type"] == "debug_event"]
        for ms in stash.values(): ms[:] = [m for m in ms if m["msg_type"] != "debug_event"]
        self.events += sorted(evs, key=lambda m: m["header"]["date"])

    def read(self, end):
        m = self.kc.get_iopub_msg(timeout=max(0.01, end - time.monotonic()))
        if m["msg_type"] == "debug_event": self.events.append(m)
        else: self.kc.__dict__.setdefault("iopub_stash", {}).setdefault(m["parent_header"].get("msg_id"), []).append(m)

    def event(self, name, timeout=TIMEOUT) -> dict:
        "The next debug event `name`; those before it are passed over, so a wait never returns an event older than the last one returned."
        end = time.monotonic() + timeout
        self.adopt()
        while True:
            for i,m in enumerate(self.events):
                if m["content"]["event"] == name:
                    del self.events[:i+1]
                    return m["content"]
            self.read(end)

    def iopub(self, pred, timeout=TIMEOUT) -> dict:
        "The first IOPub message, kept aside or still to come, that satisfies `pred`."
        end,stash = time.monotonic() + timeout,self.kc.__dict__.setdefault("iopub_stash", {})
        while True:
            for ms in stash.values():
                for i,m in enumerate(ms):
                    if pred(m): return ms.pop(i)
            self.read(end)

    def start(self):
        for cmd,kw in (("initialize", INIT), ("attach", {}), ("configurationDone", {})): assert self(cmd, **kw)["success"], cmd
        return self

    def break_at(self, code, *lines) -> str:
        "Dump `code` and set breakpoints on `lines`; the cell's file name."
        path = self("dumpCell", code=code)["body"]["sourcePath"]
        rep = self("setBreakpoints", source=dict(path=path), breakpoints=[dict(line=l) for l in lines], sourceModified=False)
        assert rep["success"] and [b["line"] for b in rep["body"]["breakpoints"]] == list(lines), rep
        return path

    def run_to(self, code, *lines):
        "Execute `code` with breakpoints on `lines`, up to the first stop: `(msg_id, cell file, stopped event body)`."
        path = self.break_at(code, *lines)
        mid = self.kc.execute(code)
        return mid,path,self.event("stopped")["body"]

    def top(self, tid) -> dict:
        rep = self("stackTrace", threadId=tid)
        assert rep["success"]
        return rep["body"]["stackFrames"][0]

    def step(self, cmd, tid) -> dict:
        assert self(cmd, threadId=tid)["success"]
        assert self.event("stopped")["body"]["reason"] == "step"
        return self.top(tid)

    def finish(self, mid, tid) -> dict:
        "Continue (waiting for the `continued` event), and the cell's execute reply content once it has run to its end."
        assert self("continue", threadId=tid)["success"]
        assert self.event("continued")["body"]["allThreadsContinued"] is True
        return shell_reply(self.kc, mid)["content"]

@pytest.fixture(scope="module")
def session(kernel):
    "One debug session for the module, left attached between tests, as JupyterLab leaves it."
    d = Dap(kernel[1]).start()
    yield d
    d("disconnect", restart=False, terminateDebuggee=False)

@pytest.fixture
def dap(session):
    session.events.clear()
    return session

def test_kernel_info_advertises_debugger(kc, is_ipymini):
    c = request(kc, "kernel_info_request", "control")["content"]
    assert "debugger" in c["supported_features"]
    if is_ipymini: assert c["debugger"] is True  # ipykernel leaves the field out of its control-channel reply

def test_murmur2_matches_jupyterlab():
    from ipymini.debug import SEED, murmur2
    assert SEED == 3339675911
    # values from ipykernel's murmur2_x86 (which JupyterLab's hash agrees with) for these strings
    assert [murmur2(s.encode()) for s in ("", "a", "ab", "abc", "abcd", "x = 1\n", CODE, "é😀")] == [
        3990065800, 2167009006, 2805137849, 3350977461, 804720481, 1602534638, 3206279771, 3108303181]

def test_debug_info_and_dump_cell(dap):
    from ipymini.debug import murmur2
    info = dap("debugInfo")
    assert info["success"] and info["command"] == "debugInfo"
    b = info["body"]
    assert b["isStarted"] is True and b["hashMethod"] == "Murmur2" and b["tmpFileSuffix"] == ".py"
    assert b["richRendering"] is True and b["copyToGlobals"] is True and b["exceptionPaths"] == ["Python Exceptions"]
    code = "z = 42  # dumped\n"
    rep = dap("dumpCell", code=code)
    path = rep["body"]["sourcePath"]
    assert path == f"{b['tmpFilePrefix']}{murmur2(code.encode(), b['hashSeed'])}{b['tmpFileSuffix']}"
    with open(path) as f: assert f.read() == code
    assert dap("source", source=dict(path=path))["body"]["content"] == code
    bad = dap("source", source=dict(path=path + ".missing"))
    assert bad["success"] is False and bad["command"] == "source"

def test_breakpoint_flow(dap, kc):
    "dumpCell → setBreakpoints → execute → stopped → stackTrace/scopes/variables/evaluate → continue → execute reply."
    code = CODE + "# breakpoint flow\n"
    run(kc, "for n in 'abcdf': globals().pop(n, None)")  # names an earlier test's cell may have left
    mid,path,stop = dap.run_to(code, 3)
    assert stop["reason"] == "breakpoint"
    tid = stop["threadId"]
    info = dap("debugInfo")["body"]
    assert tid in info["stoppedThreads"] and dict(source=path, breakpoints=[dict(line=3)]) in info["breakpoints"]
    assert request(kc, "kernel_info_request", "control")["content"]["status"] == "ok"  # control answers while the main thread is stopped
    frames = dap("stackTrace", threadId=tid)["body"]["stackFrames"]
    assert [(f["name"], f["source"]["path"], f["line"]) for f in frames] == [("<module>", path, 3)]  # the kernel's own frames are hidden
    scopes = dap("scopes", frameId=frames[0]["id"])["body"]["scopes"]
    assert [s["name"] for s in scopes] == ["Locals", "Globals"]
    vs = {v["name"]: v for v in dap("variables", variablesReference=scopes[0]["variablesReference"])["body"]["variables"]}
    assert vs["a"]["value"] == "1" and vs["a"]["type"] == "int" and vs["b"]["value"] == "2"
    assert "c" not in vs and not {"__builtins__", "In", "Out", "get_ipython", "_ih"} & set(vs)
    ev = dap("evaluate", expression="a + b", frameId=frames[0]["id"], context="watch")
    assert ev["success"] and ev["body"]["result"] == "3"
    assert dap.finish(mid, tid)["status"] == "ok"
    assert text(iopub_until_idle(kc, mid)) == "6\n"
    assert dap("debugInfo")["body"]["stoppedThreads"] == []

def test_step_commands(dap):
    code = CODE + "# steps\n"
    mid,path,stop = dap.run_to(code, 7)
    tid = stop["threadId"]
    assert dap.top(tid)["line"] == 7
    f = dap.step("stepIn", tid)
    assert (f["name"], f["line"], f["source"]["path"]) == ("f", 5, path)
    assert dap.step("next", tid)["line"] == 6
    assert dap.step("stepOut", tid)["name"] == "<module>"
    assert dap.step("next", tid)["line"] == 8
    assert dap.finish(mid, tid)["status"] == "ok"

def test_continue_to_next_breakpoint(dap):
    "continue from one breakpoint stops at the next; the kernel counts the thread as stopped again, so the next continue resumes it."
    mid,_,stop = dap.run_to("n1 = 1\nn2 = 2\nn3 = 3\nn4 = 4\n", 2, 3, 4)
    tid = stop["threadId"]
    for line in (3, 4):
        assert dap("continue", threadId=tid)["success"]
        assert dap.event("stopped")["body"]["reason"] == "breakpoint"
        assert dap.top(tid)["line"] == line and tid in dap("debugInfo")["body"]["stoppedThreads"]
    assert dap.finish(mid, tid)["status"] == "ok"

def test_rich_inspect_and_copy_to_globals(dap, kc):
    code = CODE + "# copy\n"
    mid,_,stop = dap.run_to(code, 6)
    tid = stop["threadId"]
    fid = dap.top(tid)["id"]
    rich = dap("richInspectVariables", variableName="y", frameId=fid)
    assert rich["success"] and rich["body"]["data"]["text/plain"] == "6"
    assert dap("richInspectVariables", variableName="special variables", frameId=fid)["body"] == dict(data={}, metadata={})
    assert dap("copyToGlobals", srcVariableName="y", dstVariableName="y_copy", srcFrameId=fid)["success"]
    assert dap("copyToGlobals", srcVariableName="y", dstVariableName="not a name", srcFrameId=fid)["success"] is False
    assert dap.finish(mid, tid)["status"] == "ok"
    reply,outs = run(kc, "y_copy")
    assert outs[-1]["content"]["data"]["text/plain"] == "6"
    rich = dap("richInspectVariables", variableName="y_copy")  # nothing stopped: from the user namespace
    assert rich["success"] and rich["body"] == dict(data={"text/plain": "6"}, metadata={})

def test_inspect_variables(dap, kc, is_ipymini):
    run(kc, "inspected = {'k': [1, 2, 3]}")
    rep = dap("inspectVariables")
    assert rep["success"] and rep["command"] == "inspectVariables"
    vs = {v["name"]: v for v in rep["body"]["variables"]}
    assert vs["inspected"]["type"] == "dict" and vs["inspected"]["variablesReference"] > 0
    assert not {"__builtins__", "In", "Out", "get_ipython", "_ih", "_i", "exit"} & set(vs)
    if not is_ipymini: return  # ipykernel does not answer an unknown variablesReference at all
    kids = dap("variables", variablesReference=vs["inspected"]["variablesReference"])
    assert kids["success"] and any(v["name"] == "'k'" for v in kids["body"]["variables"])
    assert dap("variables", variablesReference=12345)["success"] is False

def test_modules(dap):
    rep = dap("modules", startModule=0, moduleCount=10**6)
    assert rep["body"]["totalModules"] > 0
    mods = rep["body"]["modules"]
    assert mods and all(m["path"].endswith(".py") for m in mods) and any(m["name"] == "json" or m["name"].startswith("IPython") for m in mods)

def test_pause_and_interrupt(dap, kc):
    "pause stops a running cell; continue lets it go on; interrupt still ends it while the session is attached."
    code = "import time\nfor i in range(10**6):\n    time.sleep(0.01)\n"
    mid = kc.execute(code)
    dap.iopub(lambda m: m["parent_header"].get("msg_id") == mid and m["msg_type"] == "execute_input")
    tid = next(t["id"] for t in dap("threads")["body"]["threads"] if t["name"] == "MainThread")  # the cell's thread
    assert dap("pause", threadId=tid)["success"]
    stop = dap.event("stopped")["body"]
    assert stop["reason"] == "pause"
    assert dap("continue", threadId=stop["threadId"])["success"]
    assert dap.event("continued")["body"]["allThreadsContinued"] is True
    assert request(kc, "interrupt_request", "control")["content"]["status"] == "ok"
    reply = shell_reply(kc, mid)["content"]
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"

def test_bad_requests(dap, kc, is_ipymini):
    rep = dap("bogusCommand")
    assert rep["success"] is False and rep["command"] == "bogusCommand" and rep["type"] == "response"
    if is_ipymini:  # ipykernel gives no reply to these: the client waits for ever
        assert dap.send(dict(seq=99, type="request"))["success"] is False
        assert dap.send(dict(seq=100, type="request", command="evaluate", arguments="garbage"))["success"] is False
        assert dap.send(dict(seq=101, type="request", command=["not", "a", "string"]))["success"] is False
        assert dap("dumpCell")["success"] is False
        assert dap("setBreakpoints", source=None)["success"] is False
        assert dap("continue", threadId=1)["success"]  # nothing is stopped: nothing to do
        rnd = random.Random(6)
        cmds = "setBreakpoints stackTrace scopes variables evaluate next stepIn pause setExpression copyToGlobals richInspectVariables source".split()
        vals = [None, "x", -1, 10**30, [], {}, dict(path=None), [dict(line="a")], [1], True]
        keys = "threadId frameId variablesReference expression source breakpoints value variableName srcFrameId dstVariableName".split()
        for _ in range(100):  # garbage arguments get failed responses, and pydevd keeps answering
            assert dap(rnd.choice(cmds), **{k: rnd.choice(vals) for k in rnd.sample(keys, rnd.randint(0, 3))})["type"] == "response"
        mid,_,stop = dap.run_to("g1 = 1\ng2 = 2\n", 2)
        assert dap.finish(mid, stop["threadId"])["status"] == "ok"
    assert run(kc, "1 + 1")[0]["status"] == "ok"

def test_disconnect_then_reattach(kernel_name):
    "After disconnect a cell runs through its old breakpoint; a new session stops on it again."
    with start_kernel(kernel_name) as (km,kc):
        dap = Dap(kc).start()
        code = "p = 1\nq = p + 1\n"
        dap.break_at(code, 2)
        assert dap("disconnect", restart=False, terminateDebuggee=False)["success"]
        info = dap("debugInfo")["body"]
        assert info["isStarted"] is False and info["breakpoints"] == []
        assert run(kc, code)[0]["status"] == "ok"
        mid,_,stop = dap.start().run_to(code, 2)
        assert stop["reason"] == "breakpoint"
        assert dap.finish(mid, stop["threadId"])["status"] == "ok"

def test_interrupt_while_stopped(kc, dap, is_ipymini):
    "An interrupt ends a cell stopped at a breakpoint with KeyboardInterrupt; the session keeps working for later cells."
    mid,_,stop = dap.run_to("s = 1\nt = 2\nu = 3\n", 2)
    assert request(kc, "interrupt_request", "control")["content"]["status"] == "ok"
    reply = shell_reply(kc, mid)["content"]
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert run(kc, "1 + 1")[0]["status"] == "ok"
    if not is_ipymini: return  # ipykernel stops at no breakpoint after this: the interrupt ended the main thread's tracing
    mid,_,stop = dap.run_to("s = 1\nt = 2\nv = 3\n", 2)
    assert stop["reason"] == "breakpoint"
    assert dap.finish(mid, stop["threadId"])["status"] == "ok"

def test_shutdown_while_stopped(kernel_name):
    if kernel_name != "ipymini": pytest.skip("ipykernel does not exit while stopped at a breakpoint")
    with start_kernel(kernel_name) as (km,kc):
        dap = Dap(kc).start()
        dap.run_to("s = 1\nt = 2\n", 2)
        assert request(kc, "shutdown_request", "control", restart=False)["content"]["status"] == "ok"
        end = time.monotonic() + 15
        while km.is_alive() and time.monotonic() < end: time.sleep(0.05)
        assert not km.is_alive()

# CPU time of the cell's thread: what other processes do on a busy machine does not count
LOOP = "import time\nt0 = time.thread_time()\ns = 0\nfor i in range(1_000_000): s += i\nelapsed = time.thread_time() - t0"
CALLS = "import time\ndef g(x): return x\nt0 = time.thread_time()\nfor i in range(200_000): g(i)\nelapsed = time.thread_time() - t0"

def test_attached_session_keeps_cells_fast(kernel_name):
    "With a session attached and a breakpoint in another cell, a cell's lines are not traced; calls cost what they cost in ipykernel."
    def timed(kc, code): return min(float(run(kc, code, user_expressions=dict(e="elapsed"))[0]["user_expressions"]["e"]["data"]["text/plain"]) for _ in range(3))
    with start_kernel(kernel_name) as (km,kc):
        before = timed(kc, LOOP),timed(kc, CALLS)
        Dap(kc).start().break_at("never = 1\nrun = 2\n", 2)
        after = timed(kc, LOOP),timed(kc, CALLS)
        print(f"loop {before[0]:.3f}s -> {after[0]:.3f}s; calls {before[1]:.3f}s -> {after[1]:.3f}s")
        assert after[0] < 2.5*before[0] + 0.02  # ipykernel: about 1.6x
        assert after[1] < 15*before[1] + 0.05  # pydevd sees every call (settrace); ipykernel pays the same, about 7x here

def test_cell_files_removed_at_shutdown(kernel_name, is_ipymini):
    "The files dumpCell writes live in a per-kernel folder that goes away with the kernel (ipykernel leaves its own behind)."
    if not is_ipymini: pytest.skip("ipykernel keeps its dumped cells in /tmp")
    with start_kernel(kernel_name) as (km,kc):
        path = Dap(kc).start()("dumpCell", code="x = 1\n")["body"]["sourcePath"]
        assert os.path.exists(path)
        assert os.path.basename(os.path.dirname(path)) == f"ipykernel_{km.provisioner.process.pid}"
    assert not os.path.exists(os.path.dirname(path))

def test_cells_named_as_ipykernel_names_them(kc):
    """A warning raised in a cell names the cell's file as ipykernel does, `<tmp>/ipykernel_<pid>/<murmur2 of the code>.py`:
    JupyterLab's debugger panel shows a source as a cell only when its path holds `ipykernel_`, and nbval sanitizers match it."""
    from ipymini.debug import murmur2
    code = "import os, tempfile, warnings\nwarnings.warn('careful')\nprint(tempfile.gettempdir(), os.getpid())"
    reply,outs = run(kc, code)
    tmp,pid = text(outs).split()
    want = os.path.join(tmp, f"ipykernel_{pid}", f"{murmur2(code.encode())}.py")
    assert f"{want}:2: UserWarning: careful" in text(outs, "stderr")
