"End to end through real front ends: a notebook run by nbclient, and a session in jupyter console, each on ipymini and ipykernel."
import os, re, sys, time, pytest
from nbclient import NotebookClient
from nbformat.v4 import new_notebook, new_code_cell

cells = [
    "print('hello')\nimport sys\nprint('to stderr', file=sys.stderr)",
    "from IPython.display import display, HTML, Markdown, clear_output, update_display\n"
        "display(HTML('<b>bold</b>'), Markdown('*md*'))\n{'a': 1}",
    "import matplotlib.pyplot as plt\nplt.plot([1, 4, 2])\nplt.title('plot'); None",
    "bar = display('progress 0%', display_id=True)\nfor p in (25, 50, 100): bar.update(f'progress {p}%')",
    "for i in range(4):\n    clear_output(wait=True)\n    print(f'step {i}')",
    "print('before'); clear_output(); print('after')",
    "name = input('name? ')",
    "print('still running')",
]
addr = re.compile(r"0x[0-9a-fA-F]{6,}")
counts = re.compile(r"\b(In|Out) ?\[\d+\]")  # execution counts: each kernel may need a different number of settling cells

def run_notebook(kernel_name):
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    env = {k: v for k,v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    NotebookClient(nb, kernel_name=kernel_name, timeout=60, allow_errors=True, env=env).execute()
    return nb

def view(nb):
    "Each cell's outputs as saved in the notebook, minus what differs run to run (PNG bytes, addresses, traceback frames)."
    res = []
    for cell in nb.cells:
        outs = []
        for o in cell.outputs:
            o = dict(o)
            if o["output_type"] == "error": o["traceback"] = o["traceback"][-1:]
            if "data" in o and "image/png" in o["data"]: o["data"] = {**o["data"], "image/png": "<png>"}
            outs.append(addr.sub("0x…", repr(o)))
        res.append(outs)
    return res

@pytest.fixture(scope="module")
def notebooks(kernel_name): return run_notebook(kernel_name),run_notebook("python3")

def test_notebook_outputs(notebooks):
    mine,ref = notebooks
    assert view(mine) == view(ref)

def test_notebook_content(notebooks):
    "What the saved notebook holds: streams, rich displays, one figure, the last progress update, the cleared cell, the stdin error."
    nb,_ = notebooks
    o = [c.outputs for c in nb.cells]
    assert [x["text"] for x in o[0]] == ["hello\n", "to stderr\n"]
    assert [sorted(x["data"]) for x in o[1]] == [["text/html", "text/plain"], ["text/markdown", "text/plain"], ["text/plain"]]
    assert len(o[2]) == 1 and "image/png" in o[2][0]["data"]
    assert len(o[3]) == 1 and o[3][0]["data"]["text/plain"] == "'progress 100%'"
    assert [x.get("text") for x in o[4]] == ["step 3\n"]
    assert [x.get("text") for x in o[5]] == ["after\n"]
    assert o[6][0]["output_type"] == "error" and o[6][0]["ename"] == "StdinNotImplementedError"
    assert o[7][0]["text"] == "still running\n"

console_cells = [
    ("print('hi')", None),
    ("from IPython.display import display, HTML; display(HTML('<b>x</b>'))", None),
    ("x = input('na' 'me? ')", "name\\? "),  # split, so the terminal's echo of the line cannot pass for the prompt
    ("bob", None),
    ("print('got', x); 6*7", None),
    ("h = display('a', display_id=True); h.update('b')", None),
    ("import sys; print('err', file=sys.stderr)", None),
    ("1/0", None),
]

def settle(p):
    """Run marker cells until one's output shows before the next prompt. jupyter console ends a cell at any idle status from
    its session: a late one from its start-up (its kernel_info's, on a busy machine) ends the first cell early, and from
    then on each cell's output shows one cell late. An empty line prints what has arrived, which ends the shift."""
    for i in range(10):
        p.sendline(f"print('sync{i}')")
        p.expect(r"In \[\d+\]: ")
        if f"\nsync{i}\r\n" in p.before: return
        p.sendline("")
        p.expect(r"In \[\d+\]: ")
    raise AssertionError("jupyter console's outputs never caught up with its cells")

def console_session(kernel_name):
    "What `jupyter console` prints for each input, through a pty, then whether `exit` ends the session."
    pexpect = pytest.importorskip("pexpect")
    env = {k: v for k,v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    p = pexpect.spawn(sys.executable, ["-m", "jupyter_console", "--simple-prompt", f"--kernel={kernel_name}"], encoding="utf-8",
        timeout=30, dimensions=(50, 200), env=env)
    try:
        p.expect(r"In \[1\]: ")
        # jupyter console waits for its cell's idle status forever if its IOPub subscription joins after that status went out
        # (ZMQ's slow joiner; it ignores iopub_welcome): give the subscription time to connect before the first cell
        time.sleep(1)
        settle(p)
        seen = []
        for code,prompt in console_cells:
            p.sendline(code)
            p.expect(prompt or r"In \[\d+\]: ")
            seen.append(counts.sub(r"\1[N]", addr.sub("0x…", p.before)))
        p.sendline("exit")
        p.expect(pexpect.EOF)
        return seen
    finally: p.close(force=True)

@pytest.mark.slow
def test_console_session():
    "The same console session on ipymini and ipykernel prints the same thing, including input() and exit."
    assert console_session("ipymini") == console_session("python3")
