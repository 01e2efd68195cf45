"""Output from code a cell started (threads, pool work, asyncio tasks, subshell threads, widgets, joblib, ipyparallel): it goes
to the cell that started it while that cell runs, else to the cell running now, or the last one run; an explicit
`set_parent`/`set_thread_parent` wins. Each test names the cell (msg_id) every stream must be parented to."""
import os, time, pytest
from kutils import run, request, start_kernel, shell_reply, TIMEOUT

@pytest.fixture(scope="module")
def kernel(kernel_name):
    env = {k: v for k,v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # ipykernel turns fd capture off under pytest
    with start_kernel(kernel_name, env=env) as (km,kc):
        run(kc, "import asyncio, threading, time")
        yield km,kc

def collect(kc, mid, until=None, timeout=TIMEOUT):
    "Every IOPub message (any parent) until `mid` is idle and `until(messages)` holds."
    outs,end,idle = [],time.monotonic() + timeout,False
    while not (idle and (until is None or until(outs))):
        m = kc.get_iopub_msg(timeout=max(0.01, end - time.monotonic()))
        outs.append(m)
        idle |= m["parent_header"].get("msg_id") == mid and m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
    return outs

def more(kc, outs, until, timeout=TIMEOUT):
    "`outs` plus the IOPub messages that come until `until(outs)` holds."
    end = time.monotonic() + timeout
    while not until(outs): outs.append(kc.get_iopub_msg(timeout=max(0.01, end - time.monotonic())))
    return outs

def streams(outs, mid, name=None):
    "The stream text (of stream `name`, default any) parented to `mid`."
    return "".join(m["content"]["text"] for m in outs if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == mid
        and name in (None, m["content"]["name"]))

def has(text): return lambda outs: text in "".join(m["content"].get("text", "") for m in outs if m["msg_type"] == "stream")

def cell(kc, code, timeout=TIMEOUT):
    "Execute `code`, wait for its reply and idle; `(msg_id, every IOPub message until then)`."
    mid = kc.execute(code)
    outs = collect(kc, mid, timeout=timeout)
    assert shell_reply(kc, mid, timeout)["content"]["status"] == "ok"
    return mid,outs

def test_thread_prints_into_its_running_cell(kc):
    "A thread started by a cell that is still running prints into that cell."
    mid,outs = cell(kc, "t = threading.Thread(target=lambda: print('from thread')); t.start(); t.join()\nprint('cell')")
    assert streams(outs, mid) == "from thread\ncell\n"

def test_thread_after_its_cell_prints_into_the_running_cell(kc):
    "A thread started in cell 1 that prints while cell 2 runs: the line is in cell 2 (cell 1 is finished; no front end shows it)."
    r1,_ = cell(kc, "go,done = threading.Event(),threading.Event()\n"
        "def bg():\n    go.wait(); print('from bg'); done.set()\nthreading.Thread(target=bg).start()")
    r2,outs = cell(kc, "go.set(); done.wait(10); print('cell 2')")
    assert streams(outs, r2) == "from bg\ncell 2\n" and streams(outs, r1) == ""

def test_thread_with_no_cell_running_prints_into_the_last_cell(kc):
    "A thread that prints when no cell runs: into the last cell run, never an older one."
    r1,_ = cell(kc, "late = threading.Event()\ndef slow():\n    late.wait(); time.sleep(0.3); print('late line')\n"
        "threading.Thread(target=slow).start()")
    r2 = kc.execute("late.set()")
    outs = collect(kc, r2, has("late line"))
    assert streams(outs, r2) == "late line\n" and streams(outs, r1) == ""

def test_pool_work(kc):
    """Pool work prints into the cell that submitted it while that cell runs; work still running after its cell ended
    prints into the cell running then."""
    r1,outs = cell(kc, "from concurrent.futures import ThreadPoolExecutor\npool = ThreadPoolExecutor(2)\n"
        "pool.submit(print, 'first').result()\ngate = threading.Event()\nlater = pool.submit(lambda: (gate.wait(10), print('later')))")
    assert streams(outs, r1) == "first\n"
    r2,outs = cell(kc, "pool.submit(print, 'second').result(); gate.set(); later.result(); print('cell 2')")
    assert streams(outs, r2) == "second\nlater\ncell 2\n" and streams(outs, r1) == ""

def test_asyncio_task_outliving_its_cell(kc, differs):
    """A task prints into its cell while the cell awaits it, and into the running cell once its own cell is done.
    ipykernel 7.4 keeps the task's line in cell 1 (the task inherits cell 1's context), which no front end shows any more."""
    differs("ipykernel parents a task's output to the cell that created it, even after that cell finished")
    r1,outs = cell(kc, "import asyncio\ngate = asyncio.Event()\nasync def t():\n    print('in cell 1')\n    await gate.wait()\n"
        "    print('from task')\ntask = asyncio.ensure_future(t())\nawait asyncio.sleep(0.05)")
    assert streams(outs, r1) == "in cell 1\n"
    r2,outs = cell(kc, "gate.set(); await task; print('cell 2')")
    assert streams(outs, r2) == "from task\ncell 2\n" and streams(outs, r1) == ""

def test_set_thread_parent_wins(kc):
    "A thread that names its parent with `set_thread_parent` (ipykernel 7's API) prints there, whatever cell runs."
    r1,_ = cell(kc, "ip = get_ipython()\nmine = ip.get_parent()\npinned = threading.Event()\n"
        "def named():\n    ip.set_thread_parent(mine); pinned.wait(); print('named')\nthreading.Thread(target=named).start()")
    r2,outs = cell(kc, "pinned.set(); time.sleep(0.3); print('cell 2')")
    more(kc, outs, has("named"))
    assert streams(outs, r1) == "named\n" and streams(outs, r2) == "cell 2\n"

def subshell_cell(kc, sid, code):
    msg = kc.session.msg("execute_request", dict(code=code, silent=False, store_history=True, user_expressions={}, allow_stdin=False))
    msg["header"]["subshell_id"] = sid
    kc.shell_channel.send(msg)
    return msg["header"]["msg_id"]

def test_subshell_thread_stays_in_its_subshell(kc, differs):
    """A thread a subshell's cell started, printing after that cell ended while a parent-subshell cell runs: the line goes
    to the subshell's last cell, never into another subshell's cell (a different front end may show each).
    ipykernel 7.4 puts it into the parent subshell's running cell."""
    differs("ipykernel routes a subshell's thread output to the latest cell of any subshell")
    sid = request(kc, "create_subshell_request", "control")["content"]["subshell_id"]
    try:
        cell(kc, "sub_go,sub_done = threading.Event(),threading.Event()")
        rs = subshell_cell(kc, sid, "import threading\ndef sb():\n    sub_go.wait(); print('sub thread'); sub_done.set()\n"
            "threading.Thread(target=sb).start()")
        collect(kc, rs)
        r2,outs = cell(kc, "sub_go.set(); sub_done.wait(10); print('parent cell')")
        more(kc, outs, has("sub thread"))
        assert streams(outs, r2) == "parent cell\n" and streams(outs, rs) == "sub thread\n"
    finally: request(kc, "delete_subshell_request", "control", subshell_id=sid)

def widget_states(outs, model_id):
    "The `msg_id` values an Output widget's comm announced, in order."
    return [m["content"]["data"]["state"]["msg_id"] for m in outs if m["msg_type"] == "comm_msg"
        and m["content"]["comm_id"] == model_id and "msg_id" in m["content"]["data"].get("state", {})]

def test_output_widget_in_a_thread(kc):
    """ipywidgets' Output widget captures by msg_id: a thread that enters `with out:` while cell 1 runs and prints after
    cell 2 started still prints to the msg_id the widget announced; one that enters it during cell 2 announces cell 2."""
    r1,outs = cell(kc, "import ipywidgets as w\nout = w.Output()\nentered,go,done = threading.Event(),threading.Event(),threading.Event()\n"
        "def inside():\n    with out:\n        entered.set(); go.wait(); print('in widget')\n    done.set()\n"
        "threading.Thread(target=inside).start(); entered.wait(10)\nout.model_id")
    model = next(m["content"]["data"]["text/plain"].strip("'") for m in outs if m["msg_type"] == "execute_result")
    assert widget_states(outs, model)[-1] == r1
    r2,outs = cell(kc, "go.set(); done.wait(10)")
    assert streams(outs, r1) == "in widget\n" and streams(outs, r2) == ""
    r3,_ = cell(kc, "go2 = threading.Event()\ndef later():\n    go2.wait()\n    with out: print('later in widget')\n"
        "threading.Thread(target=later).start()")
    r4,outs = cell(kc, "go2.set(); time.sleep(0.3)")
    more(kc, outs, has("later in widget"))
    assert widget_states(outs, model)[0] == r4 and streams(outs, r4) == "later in widget\n" and streams(outs, r3) == ""

def test_joblib_progress_in_the_second_cell(kc):
    "joblib's progress lines come from a callback thread its first call started: a second cell's lines are all in that cell."
    pytest.importorskip("joblib")
    r1,outs = cell(kc, "from joblib import Parallel, delayed\nimport math\n"
        "_ = Parallel(n_jobs=2, verbose=1)(delayed(math.sqrt)(i) for i in range(4))")
    assert "Done   4 out of   4" in streams(outs, r1, "stderr")
    r2,outs = cell(kc, "_ = Parallel(n_jobs=2, verbose=10)(delayed(math.sqrt)(i) for i in range(4))")
    err = streams(outs, r2, "stderr")
    assert err.count("Done") >= 2 and "finished" in err and streams(outs, r1) == ""  # its batching (so the wording) varies

@pytest.mark.slow
def test_ipyparallel_px_print(kernel_name):
    "`%px print(...)` on a 2-engine local cluster: both engines' lines, in that cell, every time."
    pytest.importorskip("ipyparallel")
    with start_kernel(kernel_name) as (km,kc):
        cell(kc, "import ipyparallel as ipp\ncluster = ipp.Cluster(n=2, log_level=40)\nrc = cluster.start_and_connect_sync()\n"
            "rc.wait_for_engines(2, timeout=60); rc.activate()", timeout=90)
        try:
            for i in range(2):
                mid,outs = cell(kc, f"%px print('hello', {i})")
                shown = [m["content"]["data"]["text/plain"] for m in outs if m["msg_type"] == "display_data"
                    and m["parent_header"].get("msg_id") == mid] + [streams(outs, mid)]
                assert sorted(t.split("] ")[0] for t in shown if "hello" in t) == ["[stdout:0", "[stdout:1"], shown
        finally: run(kc, "cluster.stop_cluster_sync()", timeout=30)
