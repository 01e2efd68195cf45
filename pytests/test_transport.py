"Every connection a client can make: ipc, CurveZMQ, reconnects with one identity, slow readers, hanging introspection, control."
import json, os, subprocess, sys, time, pytest, zmq
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from kutils import logged_kernel, other_client, TIMEOUT, iopub_until_idle, request, result, run, shell_reply, start_kernel, text

@pytest.fixture(scope="module")
def kernel(kernel_name):
    with logged_kernel(kernel_name) as k: yield k

def logged(km, what, timeout=TIMEOUT):
    "Wait until the kernel's stderr holds `what`; its whole text."
    end = time.monotonic() + timeout
    while True:
        km.log_file.seek(0)
        if what in (s := km.log_file.read()) or time.monotonic() > end: return s
        time.sleep(0.05)

def raw(km, kind, channel, **opts):
    "A raw ZMQ socket on one of the kernel's channels, with socket options `opts`."
    sock = zmq.Context.instance().socket(kind)
    for k,v in opts.items(): setattr(sock, k, v)
    sock.linger = 0
    sock.connect(km._make_url(channel))
    return sock

def wait_gone(km, timeout=TIMEOUT):
    end = time.monotonic() + timeout
    while km.is_alive() and time.monotonic() < end: time.sleep(0.05)
    assert not km.is_alive()

def test_ipc(kernel_name, tmp_path):
    """`transport: ipc`: all five channels on `ipc://<ip>-<port>` files, removed by the kernel itself when it exits. ipykernel
    leaves its files for jupyter_client to remove, so a kernel started by other tools leaves them behind."""
    km = KernelManager(kernel_name=kernel_name, transport="ipc", connection_file=str(tmp_path / "kernel.json"))
    km.start_kernel()
    try:
        files = [f"{km.ip}-{p}" for p in km.ports]
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        assert km.ip.startswith(str(tmp_path)) and all(os.path.exists(f) for f in files)
        reply,outs = run(kc, "print(6*7)")
        assert reply["status"] == "ok" and text(outs) == "42\n"
        assert kc.is_alive()  # the heartbeat answers over ipc
        kc.shutdown()
        wait_gone(km)
        assert [f for f in files if os.path.exists(f)] == []  # before jupyter_client's own clean-up runs
        kc.stop_channels()
    finally: km.shutdown_kernel(now=True)

def test_curve_required(kernel_name, tmp_path):
    """`transport_encryption="required"`: the kernelspec declares CurveZMQ and every channel is a CURVE server. A client with the
    wrong server key, or none, gets no reply and nothing it sends runs; IOPub and heartbeat tell it nothing either."""
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel(transport_encryption="required")
    try:
        info = km.get_connection_info()
        assert info["curve_publickey"] and info["curve_secretkey"]
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        mark = tmp_path / "ran"
        code = f"open({str(mark)!r}, 'w').close()"
        wrong_pub,wrong_sec = zmq.curve_keypair()
        bad = dict(curve_serverkey=zmq.curve_keypair()[0], curve_publickey=wrong_pub, curve_secretkey=wrong_sec)
        socks = [raw(km, zmq.DEALER, "shell", **bad), raw(km, zmq.DEALER, "shell"), raw(km, zmq.DEALER, "control", **bad)]
        for s in socks: kc.session.send(s, kc.session.msg("execute_request", dict(code=code, silent=False)))
        sub = raw(km, zmq.SUB, "iopub", **bad)
        sub.subscribe(b"")
        hb = raw(km, zmq.REQ, "hb", **bad)
        hb.send(b"ping")
        reply,outs = run(kc, "print('encrypted')")  # the right client is served meanwhile, and its output goes out on IOPub
        assert reply["status"] == "ok" and text(outs) == "encrypted\n"
        poller = zmq.Poller()
        for s in [*socks, sub, hb]: poller.register(s, zmq.POLLIN)
        assert poller.poll(2000) == []
        assert run(kc, "1")[0]["status"] == "ok"  # anything the bad clients sent would have run before this
        assert not mark.exists()
        good = dict(curve_serverkey=km.curve_publickey, curve_publickey=wrong_pub, curve_secretkey=wrong_sec)
        ping = raw(km, zmq.REQ, "hb", **good)  # any client that knows the server's public key may talk to it
        ping.send(b"ping")
        assert ping.poll(TIMEOUT * 1000) and ping.recv() == b"ping"
        ping.close()
        for s in [*socks, sub, hb]: s.close()
        kc.stop_channels()
    finally: km.shutdown_kernel(now=True)

def test_curve_over_ipc(kernel_name, tmp_path):
    km = KernelManager(kernel_name=kernel_name, transport="ipc", connection_file=str(tmp_path / "kernel.json"))
    km.start_kernel(transport_encryption="required")
    try:
        assert km.curve_publickey
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        assert result(run(kc, "6*7")[1])["text/plain"] == "42"
        kc.stop_channels()
    finally: km.shutdown_kernel(now=True)

def start_with(kernel_name, tmp_path, **conn):
    "Run the kernelspec's command on a connection file with `conn`; `(returncode, stderr)`, or None if it kept running."
    pub,sec = zmq.curve_keypair()
    info = dict(ip="127.0.0.1", transport="tcp", shell_port=0, iopub_port=0, stdin_port=0, control_port=0, hb_port=0, key="k",
        signature_scheme="hmac-sha256", curve_publickey=pub.decode(), curve_secretkey=sec.decode())
    for p in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"): info[p] = free_port()
    (f := tmp_path / "conn.json").write_text(json.dumps({**info, **conn}))
    argv = [a.replace("{connection_file}", str(f)) for a in KernelSpecManager().get_kernel_spec(kernel_name).argv]
    p = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try: return p.wait(timeout=20),p.stderr.read()
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return None

def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

@pytest.mark.parametrize("bad", [dict(curve_secretkey="not a key"), dict(curve_publickey=zmq.curve_keypair()[0].decode()),
    dict(curve_publickey=None)], ids=["malformed", "mismatched", "half"])
def test_bad_curve_keys_stop_the_kernel(kernel_name, tmp_path, bad):
    """A malformed, mismatched or half key pair ends the kernel at start with an error naming the key: never plain text, and
    never a kernel no client can reach (with a mismatched pair, clients using the public key never complete a handshake)."""
    res = start_with(kernel_name, tmp_path, **bad)
    assert res is not None, "the kernel started with bad curve keys"
    code,err = res
    assert code != 0 and "curve" in err.lower()

def test_handover(km, kc):
    "A client reconnecting with the same identity (same session) takes over: the new socket gets the replies."
    ident = b"reconnecting-client"
    first = raw(km, zmq.DEALER, "shell", identity=ident)
    kc.session.send(first, kc.session.msg("kernel_info_request"))
    assert first.poll(TIMEOUT * 1000)
    kc.session.recv(first)
    second = raw(km, zmq.DEALER, "shell", identity=ident)
    end = time.monotonic() + TIMEOUT
    while not second.poll(200):  # the new connection may not be set up yet when the first request goes: ask again until answered
        assert time.monotonic() < end, "the reconnected client got no reply"
        kc.session.send(second, kc.session.msg("kernel_info_request"))
    _,reply = kc.session.recv(second)
    assert reply["msg_type"] == "kernel_info_reply"
    first.close()
    second.close()

@pytest.mark.slow
def test_replies_kept_for_a_late_reader(km, kc):
    """A client sends 10,000 requests and reads nothing until all are answered, and a while more: it then gets all 10,000
    replies. ipykernel's ROUTER holds 1,000 for it and drops the rest."""
    n,dealer = 10_000,raw(km, zmq.DEALER, "shell")
    ids = []
    for _ in range(n):
        ids.append((m := kc.session.msg("is_complete_request", dict(code="x = 1")))["header"]["msg_id"])
        kc.session.send(dealer, m)
    end = time.monotonic() + 120
    while True:  # the last request's idle says every reply has been queued by the kernel
        m = kc.get_iopub_msg(timeout=max(0.01, end - time.monotonic()))
        if m["parent_header"].get("msg_id") == ids[-1] and m["content"].get("execution_state") == "idle": break
    time.sleep(2)  # reading late on purpose: this is the test's subject, not synchronisation
    got = []
    while len(got) < n and dealer.poll(10_000): got.append(kc.session.recv(dealer)[1]["parent_header"]["msg_id"])
    dealer.close()
    assert len(got) == n and set(got) == set(ids)

@pytest.mark.slow
def test_subscriber_that_never_reads(km, kc, is_ipymini):
    """One IOPub subscriber subscribes and then reads nothing while a cell sends 30,000 displays: the cell still ends promptly,
    the client that reads gets all 30,000, and the kernel says once, with a count, what the stuck one missed. On ipykernel the
    reading client does not see the cell's end within the minute."""
    sub = raw(km, zmq.SUB, "iopub", rcvhwm=100, rcvbuf=4096)
    sub.subscribe(b"")
    sub.poll(TIMEOUT * 1000)  # the welcome (ipymini) says the subscription is in; from here on it reads nothing
    t = time.monotonic()
    mid = kc.execute("from IPython.display import display\nfor i in range(30000): display(i)")
    outs = iopub_until_idle(kc, mid, timeout=60)  # this client reads all along
    assert shell_reply(kc, mid, timeout=10)["content"]["status"] == "ok"
    assert time.monotonic() - t < 60
    assert [int(m["content"]["data"]["text/plain"]) for m in outs if m["msg_type"] == "display_data"] == list(range(30000))
    if is_ipymini: assert "messages up to the end" in logged(km, "messages up to the end")
    sub.close()
    assert run(kc, "1")[0]["status"] == "ok"

@pytest.fixture
def own(kernel_name):
    "A kernel for this test alone: on ipykernel a hanging inspect holds the shell for good."
    with start_kernel(kernel_name) as (km,kc): yield km,kc

def test_hanging_inspect(own):
    """An inspect whose lookup blocks (a property that waits) does not hold the shell: another client's cell runs meanwhile,
    and an interrupt ends the inspect with an error reply. In ipykernel the inspect holds the shell until it returns."""
    km,kc = own
    run(kc, "import threading\nev = threading.Event()\nclass Slow:\n    @property\n    def prop(self):\n        ev.wait()\n        return 1\n"
        "s = Slow()")
    mid = kc.inspect("s.prop.real")  # IPython evaluates `s.prop` to look up `real`
    other = other_client(km)
    try:
        t = time.monotonic()
        reply,outs = run(other, "6*7", timeout=10)
        assert reply["status"] == "ok" and result(outs)["text/plain"] == "42" and time.monotonic() - t < 10
        assert request(kc, "interrupt_request", "control")["content"]["status"] == "ok"
        r = shell_reply(kc, mid, timeout=10)["content"]
        assert r["status"] == "error"
        iopub_until_idle(kc, mid)
        assert run(other, "ev.set()")[0]["status"] == "ok"
        assert kc.inspect("len", reply=True, timeout=TIMEOUT)["content"]["found"]  # a fresh introspection thread serves on
    finally: other.stop_channels()

def test_hanging_inspect_sigint(own):
    "The same, with the interrupt sent as SIGINT (the kernelspec's interrupt_mode), as jupyter_client's `interrupt_kernel` does."
    km,kc = own
    run(kc, "import threading\nev2 = threading.Event()\nclass Slow2:\n    @property\n    def prop(self):\n        ev2.wait()\n"
        "        return 1\ns2 = Slow2()")
    mid = kc.inspect("s2.prop.real")
    assert not kc.shell_channel.socket.poll(500)  # it hangs
    km.interrupt_kernel()
    assert shell_reply(kc, mid, timeout=10)["content"]["status"] == "error"
    iopub_until_idle(kc, mid)
    assert run(kc, "ev2.set()")[0]["status"] == "ok"

def test_shell_requests_on_control(kc):
    """The messaging spec lets control carry every shell request: execute runs (replied on control), as do the others.
    ipykernel replies to an execute on control, but its outputs (here the execute_result) do not reach the client."""
    r = request(kc, "execute_request", "control", code="6*7", silent=False, store_history=False)
    assert r["msg_type"] == "execute_reply" and r["content"]["status"] == "ok"
    assert result(iopub_until_idle(kc, r["parent_header"]["msg_id"]))["text/plain"] == "42"
    for mt,c in [("is_complete_request", dict(code="x = (")), ("complete_request", dict(code="pri", cursor_pos=3)),
        ("inspect_request", dict(code="len", cursor_pos=3)), ("history_request", dict(hist_access_type="tail", n=1)),
        ("comm_info_request", {})]:
        r = request(kc, mt, "control", **c)
        assert r["msg_type"] == mt.replace("_request", "_reply") and r["content"]["status"] in ("ok", "incomplete"), (mt, r["content"])

def test_history_range_keeps_asked_session(kc):
    """A range asked for by the session number a tail reported carries that number back (jupyter_kernel_test checks this).
    ipykernel answers 0, IPython's name for the current session, whatever number was asked for."""
    run(kc, "a = 1", store_history=True)
    run(kc, "b = 2", store_history=True)
    tail = kc.history(hist_access_type="tail", n=1, raw=True, output=False, reply=True, timeout=TIMEOUT)["content"]["history"]
    session,line,_ = tail[0]
    h = kc.history(hist_access_type="range", session=session, start=line, stop=line + 1, raw=True, output=False, reply=True,
        timeout=TIMEOUT)["content"]["history"]
    assert h == [[session, line, "b = 2"]]
    h0 = kc.history(hist_access_type="range", session=0, start=line, stop=line + 1, raw=True, reply=True, timeout=TIMEOUT)
    assert h0["content"]["history"] == [[0, line, "b = 2"]]

fronts = [("ipc", ["--transport=ipc"], dict(transport="ipc")),
    ("curve", ["--KernelManager.transport_encryption=required"], dict(transport_encryption="required"))]

@pytest.mark.parametrize("how,args,traits", fronts, ids=[f[0] for f in fronts])
def test_nbclient(kernel_name, tmp_path, how, args, traits):
    "A notebook with output, a display, an error and stdin refused, run by nbclient over ipc and over CurveZMQ."
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook
    nb = new_notebook(cells=[new_code_cell(c) for c in ["print(6*7)", "from IPython.display import HTML\nHTML('<b>x</b>')",
        "1/0", "input()", "print('after')"]])
    km = KernelManager(kernel_name=kernel_name, connection_file=str(tmp_path / "kernel.json"), **traits)
    env = {k: v for k,v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    NotebookClient(nb, km=km, timeout=60, allow_errors=True, env=env).execute()
    assert km.transport == "ipc" if how == "ipc" else km.curve_publickey is not None
    o = [c.outputs for c in nb.cells]
    assert o[0][0]["text"] == "42\n" and "text/html" in o[1][0]["data"]
    assert o[2][0]["ename"] == "ZeroDivisionError" and o[3][0]["ename"] == "StdinNotImplementedError"
    assert o[4][0]["text"] == "after\n"

@pytest.mark.slow
@pytest.mark.parametrize("how,args,traits", fronts, ids=[f[0] for f in fronts])
def test_console(kernel_name, tmp_path, how, args, traits):
    "jupyter console over ipc and over CurveZMQ: a result, input() answered at its prompt, exit."
    pexpect = pytest.importorskip("pexpect")
    env = {k: v for k,v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    p = pexpect.spawn(sys.executable, ["-m", "jupyter_console", "--simple-prompt", f"--kernel={kernel_name}", *args], encoding="utf-8",
        timeout=30, dimensions=(50, 200), env=env, cwd=str(tmp_path))
    try:
        p.expect(r"In \[1\]: ")
        time.sleep(1)  # console waits forever for an idle its IOPub subscription joined too late to see (see test_notebook.py)
        p.sendline("6*7")
        p.expect(r"Out\[1\]: 42")
        p.sendline("x = input('name? ')")
        p.expect(r"name\? ")
        p.sendline("bob")
        p.expect(r"In \[\d+\]: ")
        p.sendline("print('got', x)")
        p.expect("got bob")
        p.sendline("exit")
        p.expect(pexpect.EOF)
    finally: p.close(force=True)
