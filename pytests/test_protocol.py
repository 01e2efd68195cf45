"The protocol core: kernel_info, connect, execute and its IOPub order, errors, aborts, bad input, shutdown."
import os, re, time, pytest, zmq
from jupyter_client.session import Session
from kutils import run, request, types, text, result, shell_reply, iopub_until_idle, start_kernel, TIMEOUT

def test_kernel_info_shell_and_control(kc, kernel_name):
    for ch in ("shell", "control"):
        c = request(kc, "kernel_info_request", ch)["content"]
        assert c["status"] == "ok"
        assert c["language_info"]["name"] == "python"
        assert c["language_info"]["file_extension"] == ".py"
        assert c["language_info"]["pygments_lexer"] == "ipython3"
        assert "IPython" in c["banner"]
        if kernel_name == "ipymini":
            assert c["implementation"] == "ipymini" and c["protocol_version"] == "5.5"
            assert "kernel subshells" in c["supported_features"]

def test_connect_request(kc, km):
    c = request(kc, "connect_request")["content"]
    assert c["shell_port"] == km.shell_port and c["iopub_port"] == km.iopub_port and c["hb_port"] == km.hb_port

def test_iopub_order(kc):
    reply,outs = run(kc, "print('hi')\n1+1")
    assert reply["status"] == "ok"
    assert types(outs) == ["execute_input", "stream", "execute_result"]
    assert text(outs) == "hi\n"
    assert result(outs)["text/plain"] == "2"
    assert outs[2]["content"]["execution_count"] == reply["execution_count"] == outs[0]["content"]["execution_count"]

def test_execution_count_and_history_vars(kc):
    r1,_ = run(kc, "x = 41")
    r2,outs = run(kc, "x + 1")
    assert r2["execution_count"] == r1["execution_count"] + 1
    _,outs = run(kc, "print(_ == 42, Out[%d] == 42, 'x = 41' in In[%d])" % (r2["execution_count"], r1["execution_count"]))
    assert text(outs) == "True True True\n"

def test_silent_and_store_history(kc):
    r1,_ = run(kc, "1")
    r2,outs = run(kc, "print('quiet'); 5", silent=True)
    assert "execute_input" not in types(outs) and "execute_result" not in types(outs)
    r3,_ = run(kc, "2", store_history=False)
    r4,_ = run(kc, "3")
    assert r4["execution_count"] == r1["execution_count"] + 1

def test_error_reply_and_traceback(kc):
    reply,outs = run(kc, "def f():\n    raise ValueError('boom')\nf()")
    assert reply["status"] == "error" and reply["ename"] == "ValueError" and reply["evalue"] == "boom"
    err = [m for m in outs if m["msg_type"] == "error"][0]["content"]
    assert err["ename"] == "ValueError" and any("boom" in l for l in err["traceback"])
    assert reply["traceback"] == err["traceback"]

def test_huge_traceback_is_shortened(kc):
    """An error 200,000 frames deep (a raised recursion limit, or 3.15's unchecked `f(*a, **k)` recursion, CPython gh-155151)
    is answered within seconds, innermost frame shown, with a note of the frames left out. ipykernel has IPython format every
    frame: ~10 s here, and minutes for the millions of frames an interrupted runaway recursion leaves."""
    ok,_ = run(kc, "import sys, threading\nlim = sys.getrecursionlimit()\nsys.setrecursionlimit(300_000)\nthreading.stack_size(1 << 30)\n"
        "def deep(n): return deep(n - 1) if n else 1/0\ndef keep():\n    global err\n    try: deep(200_000)\n    except ZeroDivisionError as e: err = e\n"
        "t = threading.Thread(target=keep)\nt.start()\nt.join()\nthreading.stack_size(0)\nsys.setrecursionlimit(lim)")
    assert ok["status"] == "ok", ok
    t = time.monotonic()
    reply,outs = run(kc, "raise err", timeout=15)
    took,tb = time.monotonic() - t,re.sub(r"\x1b\[[0-9;]*m", "", "".join(reply["traceback"]))
    assert reply["ename"] == "ZeroDivisionError" and "1/0" in tb and "omitted" in tb and took < 5, (took, tb[-2000:])
    run(kc, "del err")

def test_syntax_error(kc):
    reply,outs = run(kc, "def (:")
    assert reply["status"] == "error" and reply["ename"] == "SyntaxError"
    assert "error" in types(outs)

def test_magics_shell_and_await(kc):
    _,outs = run(kc, "%time x = 1")
    assert "Wall time" in text(outs)
    _,outs = run(kc, "!echo from-shell")
    assert "from-shell" in text(outs)
    reply,outs = run(kc, "import asyncio\nawait asyncio.sleep(0.01)\n'awaited'")
    assert reply["status"] == "ok" and result(outs)["text/plain"] == "'awaited'"

def test_user_expressions(kc):
    reply,_ = run(kc, "a = 6", user_expressions=dict(double="a*2", bad="nope"))
    ue = reply["user_expressions"]
    assert ue["double"]["status"] == "ok" and ue["double"]["data"]["text/plain"] == "12"
    assert ue["bad"]["status"] == "error" and ue["bad"]["ename"] == "NameError"

def test_stop_on_error_aborts_queued(kc):
    ids = [kc.execute("import time; time.sleep(0.5); 1/0"), kc.execute("print('never')"), kc.execute("print('never2')")]
    replies = [shell_reply(kc, i)["content"] for i in ids]
    assert [r["status"] for r in replies] == ["error", "aborted", "aborted"]
    assert "execution_count" not in replies[1]
    for i in ids[1:]: assert "stream" not in types(iopub_until_idle(kc, i))
    reply,outs = run(kc, "print('after')")
    assert reply["status"] == "ok" and text(outs) == "after\n"

def test_stop_on_error_false_runs_queued(kc):
    ids = [kc.execute("1/0", stop_on_error=False), kc.execute("print('runs')")]
    replies = [shell_reply(kc, i)["content"] for i in ids]
    assert [r["status"] for r in replies] == ["error", "ok"]

def test_unknown_message_type_keeps_serving(kc):
    "An unknown `*_request` gets an error reply. ipykernel only logs it, so a client waiting for the reply hangs; the brief asks for a reply."
    m = request(kc, "no_such_request", timeout=10)
    assert m["msg_type"] == "no_such_reply" and m["content"]["status"] == "error"
    reply,_ = run(kc, "1")
    assert reply["status"] == "ok"

def test_missing_field_gets_error_reply(kc, is_ipymini):
    if not is_ipymini: pytest.skip("ipykernel raises inside its handler and sends no reply; a client waiting would hang")
    m = request(kc, "execute_request", timeout=10)
    assert m["content"]["status"] == "error" and "code" in m["content"]["evalue"]

def raw_dealer(km, port="shell_port"):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(f"tcp://{km.ip}:{getattr(km, port)}")
    return s

def test_bad_signature_and_garbage_dropped(kc, km):
    "A wrongly signed execute must not run; garbage frames must not kill the kernel."
    bad = Session(key=b"wrong-key")
    s = raw_dealer(km)
    try:
        bad.send(s, "execute_request", dict(code="open('/tmp/ipymini_pwned_%d', 'w')" % os.getpid(), silent=False))
        s.send_multipart([b"garbage"])
        s.send_multipart([b"<IDS|MSG>", b"sig", b"{not json", b"{}", b"{}", b"{}"])
        unsigned = Session(key=b"")
        unsigned.send(s, "execute_request", dict(code="open('/tmp/ipymini_pwned_%d', 'w')" % os.getpid()))
        assert not s.poll(1000)
    finally: s.close()
    reply,_ = run(kc, "1")
    assert reply["status"] == "ok"
    assert not os.path.exists("/tmp/ipymini_pwned_%d" % os.getpid())

def test_replayed_message_dropped(kc, km):
    s = raw_dealer(km)
    try:
        msg = kc.session.msg("execute_request", dict(code="replays = globals().get('replays', 0) + 1", silent=False))
        frames = kc.session.serialize(msg)
        s.send_multipart(frames)
        assert s.poll(TIMEOUT * 1000)
        s.recv_multipart()
        s.send_multipart(frames)
        assert not s.poll(1000)
    finally: s.close()
    _,outs = run(kc, "print(replays)")
    assert text(outs) == "1\n"

def test_shutdown_and_restart(kernel_name):
    with start_kernel(kernel_name) as (km,kc):
        run(kc, "import os; pid = os.getpid()")
        _,outs = run(kc, "print(pid)")
        pid = int(text(outs))
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        _,outs = run(kc, "print('pid' in dir(), os.getpid() if 'os' in dir() else 0)")
        assert text(outs).startswith("False")
        reply = request(kc, "shutdown_request", "control", restart=False)
        assert reply["content"] == dict(status="ok", restart=False)
        t = time.monotonic()
        while km.is_alive() and time.monotonic() - t < 10: time.sleep(0.05)
        assert not km.is_alive()
