"""Other event loops run from a cell: `asyncio.run`, `new_event_loop().run_until_complete`, nest_asyncio, `%autoawait trio`;
each with an interrupt, after which the kernel's own loop (top-level await, tasks, create_task) still works.
ipykernel runs plain cells inside its running loop, so `asyncio.run` there raises "cannot be called from a running event
loop"; terminal IPython runs them, and so does ipymini: its loop is parked while a cell's synchronous statement runs."""
import pytest
from kutils import run, start_kernel, shell_reply, result, wait_msg, request, iopub_until_idle, TIMEOUT

pytestmark = pytest.mark.slow

coro = "import asyncio\nasync def f(x=42):\n    await asyncio.sleep(0.01)\n    return x\n"
ticker = ("ticks = 0\nasync def tick():\n    global ticks\n    while True:\n        ticks += 1\n        await asyncio.sleep(0.02)\n"
    "bg = asyncio.create_task(tick())")
# the marker comes from another thread: an interrupt must not land in the main thread's own output path (kernel code)
mark = "threading.Thread(target=print, args=('inside',), kwargs=dict(flush=True)).start()"
blocker = f"import threading\nasync def block():\n    {mark}\n    await asyncio.sleep(30)\n"

def ok(kc, code, **kw):
    reply,outs = run(kc, code, **kw)
    assert reply["status"] == "ok", reply
    return outs

def loop_alive(kc):
    "Top-level await, a task started in a plain cell, and a task that outlived its cell all still run on the kernel's loop."
    outs = ok(kc, "n = ticks\nt = asyncio.create_task(f(7))\nawait asyncio.sleep(0.2)\n(t.result(), ticks > n)")
    assert result(outs)["text/plain"] == "(7, True)"

def interrupted(km, kc, code):
    "Run `code`, interrupt it once it printed 'inside' (from inside the inner loop): its reply is a KeyboardInterrupt."
    mid = kc.execute(code)
    wait_msg(kc, lambda m: m["msg_type"] == "stream" and "inside" in m["content"]["text"])
    km.interrupt_kernel()
    reply = shell_reply(kc, mid, timeout=min(TIMEOUT, 15))["content"]  # the blocked cell would take 30 s
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply

@pytest.fixture
def k(kernel_name):
    "A kernel of its own for each test: interrupts and nest_asyncio's patches stay there."
    with start_kernel(kernel_name) as (km,kc):
        ok(kc, coro + ticker)
        yield km,kc

def test_asyncio_run(k):
    "`asyncio.run` in a plain cell, twice, and between them the kernel's loop keeps its tasks (the ticker)."
    km,kc = k
    assert result(ok(kc, "asyncio.run(f())"))["text/plain"] == "42"
    assert result(ok(kc, "x = asyncio.run(f(1)); t = asyncio.create_task(f(2)); x"))["text/plain"] == "1"
    assert result(ok(kc, "await t"))["text/plain"] == "2"
    loop_alive(kc)

def test_run_until_complete(k):
    km,kc = k
    outs = ok(kc, "loop = asyncio.new_event_loop()\ntry: r = loop.run_until_complete(f(5))\nfinally: loop.close()\nr")
    assert result(outs)["text/plain"] == "5"
    loop_alive(kc)

@pytest.mark.parametrize("how", ["asyncio.run(block())", "asyncio.new_event_loop().run_until_complete(block())"])
def test_interrupt_inner_loop(k, how):
    "An interrupt ends the inner loop's run with KeyboardInterrupt; the kernel's loop and its tasks go on."
    km,kc = k
    ok(kc, blocker + "asyncio.run(f())")
    interrupted(km, kc, how)
    loop_alive(kc)
    assert result(ok(kc, "asyncio.run(f(3))"))["text/plain"] == "3"

def test_nest_asyncio(k):
    "With nest_asyncio applied, `asyncio.run` runs the kernel's own loop nested; an interrupt ends it."
    km,kc = k
    ok(kc, "import nest_asyncio; nest_asyncio.apply()\n" + blocker)
    assert result(ok(kc, "asyncio.run(f())"))["text/plain"] == "42"
    interrupted(km, kc, "asyncio.run(block())")
    loop_alive(kc)

@pytest.mark.parametrize("lib", ["trio"])  # curio 1.6 does not import on Python 3.12+, and its interrupts hang 1 time in ~15
def test_autoawait_other_library(k, lib):
    "`%autoawait trio` runs cells with trio; an interrupt ends one with KeyboardInterrupt; `%autoawait asyncio` goes back."
    km,kc = k
    ok(kc, f"%autoawait {lib}\nimport {lib}")
    assert result(ok(kc, f"await {lib}.sleep(0.05)\n'{lib}'"))["text/plain"] == f"'{lib}'"
    interrupted(km, kc, f"import threading\n{mark}\nawait {lib}.sleep(30)")
    assert result(ok(kc, f"await {lib}.sleep(0.01)\n6"))["text/plain"] == "6"
    ok(kc, "%autoawait asyncio")
    loop_alive(kc)

def test_kernel_task_around_inner_run(k):
    """Around a cell's `asyncio.run`, the kernel's loop keeps what it gives cells: a future `ensure_future` made in a statement
    runs there, and the next cell's top-level await has a current task (`wait_for` is built on `asyncio.timeout` in 3.12+)."""
    km,kc = k
    assert result(ok(kc, "a = asyncio.ensure_future(f(8))\nb = asyncio.run(f(9))\nb"))["text/plain"] == "9"
    outs = ok(kc, "c,d = await asyncio.wait_for(a, 5), asyncio.current_task() is not None\n(c, d)")
    assert result(outs)["text/plain"] == "(8, True)"
    loop_alive(kc)

def test_asyncio_run_in_subshell(k):
    "A subshell's thread has a loop and a task of its own: `asyncio.run` there works too, and the parent's loop goes on."
    km,kc = k
    sid = request(kc, "create_subshell_request", "control")["content"]["subshell_id"]
    try:
        msg = kc.session.msg("execute_request", dict(code="asyncio.run(f(11))", silent=False, store_history=False,
            user_expressions={}, allow_stdin=False, stop_on_error=True))
        msg["header"]["subshell_id"] = sid
        kc.shell_channel.send(msg)
        assert shell_reply(kc, msg["header"]["msg_id"])["content"]["status"] == "ok"
        assert result(iopub_until_idle(kc, msg["header"]["msg_id"]))["text/plain"] == "11"
        outs = ok(kc, "asyncio.run(f(12))")
        assert result(outs)["text/plain"] == "12"
    finally: request(kc, "delete_subshell_request", "control", subshell_id=sid)
    loop_alive(kc)
