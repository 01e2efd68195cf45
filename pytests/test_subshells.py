"Subshells (JEP 91): lifecycle on control, concurrency, per-subshell counts, output parenting; async tasks across cells."
import os, time, pytest
from kutils import run, request, shell_reply, iopub_until_idle, start_kernel, types, text, wait_msg

def create(kc): return request(kc, "create_subshell_request", "control")["content"]["subshell_id"]
def delete(kc, sid): return request(kc, "delete_subshell_request", "control", subshell_id=sid)["content"]

def execute(kc, code, sid=None, **kw):
    "Send an execute_request to subshell `sid`; returns its msg_id."
    msg = kc.session.msg("execute_request", dict(code=code, silent=False, store_history=True, user_expressions={},
        allow_stdin=False, stop_on_error=True, **kw))
    if sid: msg["header"]["subshell_id"] = sid
    kc.shell_channel.send(msg)
    return msg["header"]["msg_id"]

def test_kernel_info_lists_subshells(kc):
    assert "kernel subshells" in request(kc, "kernel_info_request")["content"]["supported_features"]

def test_lifecycle(kc):
    before = request(kc, "list_subshell_request", "control")["content"]["subshell_id"]
    sid = create(kc)
    assert sid in request(kc, "list_subshell_request", "control")["content"]["subshell_id"]
    assert delete(kc, sid)["status"] == "ok"
    assert request(kc, "list_subshell_request", "control")["content"]["subshell_id"] == before
    assert delete(kc, sid)["status"] == "error"

def test_unknown_subshell_id_gets_error(kc):
    mid = execute(kc, "1", sid="no-such-subshell")
    assert shell_reply(kc, mid)["content"]["status"] == "error"

def test_shared_namespace_and_own_counts(kc):
    sid = create(kc)
    try:
        run(kc, "shared = 'from parent'")
        counts = [shell_reply(kc, execute(kc, "print(shared)", sid))["content"]["execution_count"] for _ in range(3)]
        assert counts == [counts[0], counts[0] + 1, counts[0] + 2]
        mid = execute(kc, "print(shared)", sid)
        assert text(iopub_until_idle(kc, mid)) == "from parent\n"
        r1,_ = run(kc, "1")
        r2,_ = run(kc, "2")
        assert r2["execution_count"] == r1["execution_count"] + 1
    finally: delete(kc, sid)

def test_four_subshells_overlap(kc):
    "Four `sleep(1)` cells in four subshells overlap: each records when it started and ended, inside the kernel."
    sids = [create(kc) for _ in range(4)]
    try:
        run(kc, "import time; spans = {}")
        mids = [execute(kc, f"t0 = time.monotonic(); time.sleep(1); spans[{i}] = (t0, time.monotonic())", sid) for i,sid in enumerate(sids)]
        for m in mids: assert shell_reply(kc, m)["content"]["status"] == "ok"
        _,outs = run(kc, "print(max(s for s,e in spans.values()) < min(e for s,e in spans.values()))")
        assert text(outs) == "True\n"
    finally:
        for s in sids: delete(kc, s)

def test_subshell_runs_while_parent_busy(kc, tmp_path):
    sid = create(kc)
    os.mkfifo(go := tmp_path / "go")
    try:
        busy = kc.execute(f"open({str(go)!r}).read()")  # the parent blocks until the test writes to the FIFO
        t = time.monotonic()
        reply = shell_reply(kc, execute(kc, "print('sub')", sid))["content"]
        assert reply["status"] == "ok" and time.monotonic() - t < 2.5
    finally:
        go.write_text("go")
        shell_reply(kc, busy)
        delete(kc, sid)

def test_output_parented_to_subshell_request(kc):
    sid = create(kc)
    try:
        parent = kc.execute("import time; print('p1'); time.sleep(0.5); print('p2')")
        child = execute(kc, "print('c1'); display('c2'); 1/0", sid)
        pouts,couts = iopub_until_idle(kc, parent),iopub_until_idle(kc, child)
        assert text(pouts) == "p1\np2\n"
        assert text(couts) == "c1\n" and types(couts)[-2:] == ["display_data", "error"]
    finally: delete(kc, sid)

def test_subshell_stop_on_error_is_its_own(kc):
    sid = create(kc)
    try:
        ids = [execute(kc, "import time; time.sleep(0.3); 1/0", sid), execute(kc, "print('x')", sid)]
        p = kc.execute("print('parent fine')")
        assert [shell_reply(kc, i)["content"]["status"] for i in ids] == ["error", "aborted"]
        assert shell_reply(kc, p)["content"]["status"] == "ok"
    finally: delete(kc, sid)

def test_delete_busy_subshell(kernel_name):
    """Deleting a subshell whose cell is running interrupts that cell and stops the subshell; the kernel serves on.
    ipykernel 7 never answers such a delete_subshell_request (so this test runs on a kernel of its own)."""
    with start_kernel(kernel_name) as (km,kc):
        sid = create(kc)
        mid = execute(kc, "while True: pass", sid)
        time.sleep(0.5)
        assert delete(kc, sid)["status"] == "ok"
        assert shell_reply(kc, mid)["content"]["status"] == "error"
        assert run(kc, "1")[0]["status"] == "ok"

@pytest.mark.parametrize("how", ["signal", "message"])
@pytest.mark.parametrize("cell", ["while True: pass", "import time; time.sleep(100)"])
def test_interrupt_subshell(kernel_name, how, cell):
    """Both interrupt paths end a subshell's running cell with KeyboardInterrupt. ipykernel 7 interrupts only the main
    thread, so its subshell cell runs on (each case gets a kernel of its own so a stuck one cannot spoil the others)."""
    with start_kernel(kernel_name) as (km,kc):
        sid = create(kc)
        mid = execute(kc, cell, sid)
        time.sleep(0.5)
        if how == "signal": km.interrupt_kernel()
        else: request(kc, "interrupt_request", "control")
        reply = shell_reply(kc, mid)["content"]
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        assert shell_reply(kc, execute(kc, "1", sid))["content"]["status"] == "ok"

def test_background_task_keeps_running(kc, request, kernel_name):
    """An asyncio task made in one cell runs while later cells execute; once its own cell is done, its output goes to the
    cell running then (README: "Output from threads"). ipykernel 7.4 parents it to the finished first cell."""
    why = "ipykernel keeps a task's output in its finished cell"
    if kernel_name != "ipymini": request.applymarker(pytest.mark.xfail(reason=why, strict=True))
    first = kc.execute("import asyncio\nasync def tick():\n    for i in range(3):\n        await asyncio.sleep(0.3)\n        print('tick', i)\n"
        "task = asyncio.ensure_future(tick())")
    iopub_until_idle(kc, first)
    second = kc.execute("await asyncio.sleep(1.2); task.done()")
    assert shell_reply(kc, second)["content"]["status"] == "ok"
    outs = iopub_until_idle(kc, second)
    assert "".join(m["content"]["text"] for m in outs if m["msg_type"] == "stream") == "tick 0\ntick 1\ntick 2\n"

def test_complete_while_cell_runs(kc, tmp_path):
    "Completion is answered mid-cell, as a front end types; ipykernel 7 answers only after the cell (blocked on a FIFO) ends."
    os.mkfifo(go := tmp_path / "go")
    busy = kc.execute(f"open({str(go)!r}).read()")
    time.sleep(0.3)
    try:
        t = time.monotonic()
        c = request(kc, "complete_request", code="import o", cursor_pos=8, timeout=5)["content"]
        took = time.monotonic() - t
    finally: go.write_text("go")
    assert c["status"] == "ok" and "os" in c["matches"] and took < 2.5
    shell_reply(kc, busy)

@pytest.mark.parametrize("where", ["parent", "subshell"])
def test_child_processes_get_signals(kc, where):
    "A process started from a cell can be interrupted and terminated: it does not inherit blocked SIGINT/SIGTERM."
    sid = create(kc) if where == "subshell" else None
    try:
        code = "import subprocess\np = subprocess.Popen(['sleep', '100'])\nprint(open(f'/proc/{p.pid}/status').read())\np.kill(); p.wait()"
        mid = execute(kc, code, sid)
        status = text(iopub_until_idle(kc, mid))
        blocked = int(next(l for l in status.splitlines() if l.startswith("SigBlk:")).split()[1], 16)
        assert blocked & (1 << (2 - 1)) == 0 and blocked & (1 << (15 - 1)) == 0, "SIGINT or SIGTERM blocked in the child"
    finally:
        if sid: delete(kc, sid)
