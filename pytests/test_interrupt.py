"Interrupts by SIGINT (KernelManager.interrupt_kernel) and by interrupt_request on control, of every kind of cell."
import time, pytest
from kutils import run, request, shell_reply, iopub_until_idle, text, wait_msg, TIMEOUT

pytestmark = pytest.mark.slow

cells = dict(busy="while True: pass", sleep="import time; time.sleep(100)", awaiting="import asyncio; await asyncio.sleep(100)",
    input="input('say: ')")

def started(kc, mid):
    "Wait until the cell is running (its execute_input is out), then give it a moment to get into its loop."
    while True:
        m = kc.get_iopub_msg(timeout=TIMEOUT)
        if m["parent_header"].get("msg_id") == mid and m["msg_type"] == "execute_input": break
    time.sleep(0.3)

def interrupt(kc, km, how):
    if how == "signal": km.interrupt_kernel()
    else: assert request(kc, "interrupt_request", "control")["content"]["status"] == "ok"

@pytest.mark.parametrize("how", ["signal", "message"])
@pytest.mark.parametrize("kind", list(cells))
def test_interrupt_cell(kc, km, how, kind):
    """Each kind of cell ends with KeyboardInterrupt and the kernel runs the next one.
    ipykernel 7 never answers an interrupted `await asyncio.sleep(100)` cell (the test times out): a user could not stop it."""
    mid = kc.execute(cells[kind], allow_stdin=kind == "input")
    started(kc, mid)
    if kind == "input": kc.get_stdin_msg(timeout=TIMEOUT)
    interrupt(kc, km, how)
    reply = shell_reply(kc, mid)["content"]
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    if kind in ("busy", "sleep"): assert len(reply["traceback"]) == 4, "the traceback shows the cell's frame only, no kernel frames"
    reply,outs = run(kc, "print('next')")
    assert reply["status"] == "ok" and text(outs) == "next\n"

@pytest.mark.parametrize("how", ["signal", "message"])
def test_interrupt_idle_is_harmless(kc, km, how):
    interrupt(kc, km, how)
    time.sleep(0.2)
    reply,outs = run(kc, "print('alive')")
    assert reply["status"] == "ok" and text(outs) == "alive\n"

def test_interrupt_burst(kc, km):
    "50 interrupts by both paths: one error reply, a live kernel. ipykernel 7 stops answering here (the test times out)."
    mid = kc.execute("import time\nfor i in range(1000): time.sleep(0.01)")
    started(kc, mid)
    for i in range(50): interrupt(kc, km, "signal" if i % 2 else "message")
    assert shell_reply(kc, mid)["content"]["status"] == "error"
    time.sleep(0.3)
    reply,outs = run(kc, "print('survived')")
    assert reply["status"] == "ok" and text(outs) == "survived\n"

@pytest.mark.parametrize("cell", ["i = 0\nwhile True:\n    print(i, flush=True)\n    i += 1",
    "from IPython.display import display\nwhile True: display('x')", "import sys\nwhile True: sys.stderr.write('e\\n'); sys.stderr.flush()"])
def test_interrupt_while_printing(kc, km, cell):
    """A cell that spends most of its time in the kernel's own output path is interrupted 15 times: each interrupt ends it
    with a reply, and the kernel answers the next request (an interrupt must never land in the kernel's send path)."""
    for _ in range(15):
        mid = kc.execute(cell)
        wait_msg(kc, lambda m: m["parent_header"].get("msg_id") == mid and m["msg_type"] in ("stream", "display_data"))
        km.interrupt_kernel()
        assert shell_reply(kc, mid)["content"]["status"] == "error"
        iopub_until_idle(kc, mid)
        assert run(kc, "1+1")[0]["status"] == "ok"

LATE = {"pretty": "    def _repr_pretty_(self, p, cycle):\n        def enq(group): raise KeyboardInterrupt\n"
    "        p.group_queue.enq = enq  # the interrupt lands at enq's first bytecode, as the rare hang showed\n"
    "        with p.group(): pass\n",
    "html": "    def _repr_html_(self):\n        try: raise KeyboardInterrupt  # where the interrupt landed\n"
    "        finally: [][0]  # a clean-up that fails on the way out\n"}

@pytest.mark.parametrize("where", LATE)
def test_interrupt_replaced_by_a_formatters_error(kc, where):
    """An interrupt that lands where a `finally` then fails is replaced by that error: IPython pretty's `begin_group`, whose
    `end_group` then raises IndexError. IPython's formatters catch every Exception, show it and go on, so the cell ran on
    and the interrupt was lost (the rare `test_interrupt_while_printing[display]` hang). ipymini ends the cell with the
    KeyboardInterrupt. ipykernel shows the IndexError and runs on: this test fails there."""
    code = "class Late:\n" + LATE[where] + "display(Late())\nprint('ran on')"
    reply,outs = run(kc, code)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert "ran on" not in text(outs)
    assert run(kc, "display('shown'); 1+1")[0]["status"] == "ok"

def test_sigint_taken_by_another_thread(kc):
    """A SIGINT that the OS hands to some other thread (Qt's XCB and D-Bus threads, threads of user code: all accept signals)
    still ends a main-thread `time.sleep`. Here a thread of the cell is sent the signal directly. ipykernel fails this (the
    sleep runs its full 30 s, the reply misses the deadline): its handler runs only when the sleep ends on its own."""
    code = ("import signal, threading, time\nt = threading.Thread(target=time.sleep, args=(3,)); t.start()\n"
        "threading.Timer(0.3, signal.pthread_kill, args=(t.ident, signal.SIGINT)).start()\ntime.sleep(30)")
    t0 = time.monotonic()
    reply = shell_reply(kc, kc.execute(code), timeout=15)["content"]
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - t0 < 10
    assert run(kc, "1+1")[0]["status"] == "ok"

def test_sigint_storm(kc, km):
    """SIGINTs sent back to back (a user holding Ctrl-C, a script's retry loop): a handler runs between any two bytecodes,
    inside an earlier handler too, so one that takes a lock hangs the kernel for good. Each round ends the cell with an
    error reply and the kernel answers the next request. ipykernel fails this: a SIGINT lands in its own loop ("KeyboardInterrupt
    caught in kernel") and the interrupted cell never gets a reply."""
    import os, signal
    pid = km.provisioner.process.pid
    for _ in range(5):
        mid = kc.execute("import time\nwhile True: time.sleep(0.001)")
        started(kc, mid)
        for i in range(2000):
            os.kill(pid, signal.SIGINT)
            time.sleep(i % 7 * 0.00003)  # paced unevenly, so some land inside the handler of the one before
        assert shell_reply(kc, mid)["content"]["status"] == "error"
        iopub_until_idle(kc, mid)
        time.sleep(0.1)  # let signals still in flight land while idle
        assert run(kc, "1+1")[0]["status"] == "ok"
