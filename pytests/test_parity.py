"Side by side: the same cells on the kernel under test and on ipykernel give the same IOPub outputs and replies."
import os, re, pytest
from kutils import run, start_kernel, text, wait_msg

cells = [
    "print('hello')",
    "import sys\nprint('out'); print('err', file=sys.stderr); print('out again')",
    "print('no newline', end='')",
    "print('10%\\r50%\\r100%'); print('\\033[1;32mgreen\\033[0m')",
    "print('a\\udcffb')",
    "print('w' * 100000)",
    "for i in range(300): print(i)",
    "6 * 7",
    "x = 5\nx",
    "None",
    "1;",
    "from IPython.display import display, HTML, Markdown, Latex, JSON, Image, clear_output\ndisplay(HTML('<b>b</b>'))",
    "display(Markdown('*m*'), Latex('$x^2$'), JSON({'a': [1, 2]}))",
    "display({'text/plain': 'raw', 'application/json': {'k': 1}}, raw=True, metadata={'m': 1})",
    "h = display('one', display_id=True)\nh.update('two')",
    "display('named', display_id='fixed-id'); display('again', display_id='fixed-id', update=True); None",
    "print('a'); clear_output(); print('b')",
    "for i in range(3):\n    clear_output(wait=True)\n    print(f'step {i}')",
    "class M:\n    def _repr_mimebundle_(self, include=None, exclude=None): return {'text/plain': 'M', 'text/html': '<p>M</p>'}, {'text/html': {'k': 1}}\nM()",
    "class H:\n    def _repr_html_(self): return '<i>h</i>'\n    def _repr_latex_(self): return '$h$'\nH()",
    "import base64\ndisplay(Image(data=base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')))",
    "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nprint('plotted')",
    "%matplotlib inline\nfig, ax = plt.subplots(); ax.bar([1, 2], [3, 4]); None",
    "1 / 0",
    "def f():\n    raise ValueError('deep')\nf()",
    "def (:",
    "import os\nos.system('echo from-shell'); None",
    "import subprocess\nsubprocess.run(['echo', 'from-subprocess']); None",
    "!echo bang",
    "%time y = sum(range(10))",
    "input('prompt')",
    "len?",
    "get_ipython().set_next_input('one'); get_ipython().set_next_input('two')",
    "print(_, __, ___)",
    "exit(keep_kernel=True)",
    "import warnings\nwarnings.warn('careful')",
    "import logging\nlogging.getLogger('parity').warning('logged')",
    "%%html\n<p>cell magic</p>",
    "import time\nfor i in range(3): print(i); time.sleep(0.01)",
    "await __import__('asyncio').sleep(0)\nprint('awaited')",
]

addr = re.compile(r"0x[0-9a-fA-F]{6,}")
tmp = re.compile(r"/tmp/(ipykernel|ipymini)_\d+/\d+\.py")
ansi = re.compile(r"\x1b\[[0-9;]*m")
timing = re.compile(r"[\d.]+(e[+-]?\d+)? (ns|µs|μs|us|ms|s)\b")  # %time may print "1e+03 ns"

def norm(o):
    "Strip what differs by run rather than by behaviour: addresses, temp cell files, display ids, PNG bytes."
    if isinstance(o, dict):
        return {k: ("<png>" if k == "image/png" else "<id>" if k == "display_id" and not o[k] == "fixed-id" else norm(v)) for k,v in o.items()}
    if isinstance(o, list): return [norm(v) for v in o]
    if isinstance(o, str): return timing.sub("<t>", tmp.sub("<cell>", addr.sub("0x…", o)))
    return o

def tb_tail(tb):
    "The traceback's last line, where both kernels report the exception (earlier frames name each kernel's own files)."
    return ansi.sub("", tb[-1]) if tb else ""

def outputs(outs):
    "IOPub outputs as a comparable list; stream runs between other outputs merged per stream name (ipykernel keeps stdout and stderr apart)."
    res,streams = [],{}
    def close():
        if streams: res.append(("streams", norm(dict(sorted(streams.items())))))
        streams.clear()
    for m in outs:
        c = m["content"]
        if m["msg_type"] == "stream":
            streams[c["name"]] = streams.get(c["name"], "") + c["text"]
            continue
        close()
        if m["msg_type"] == "error": res.append(("error", c["ename"], c["evalue"], tb_tail(c["traceback"])))
        else: res.append((m["msg_type"], norm({k: v for k,v in c.items() if k != "execution_count"})))
    close()
    return res

def reply_view(r):
    keep = {k: r.get(k) for k in ("status", "ename", "evalue", "user_expressions")}
    return norm(dict(keep, payload=r.get("payload", [])))

# what child processes print, by cell: ipykernel forwards it from a thread of its own, at times after the cell's idle
child_out = {"os.system(": "from-shell", "subprocess.run(": "from-subprocess", "!echo": "bang"}

def settle(kc, code, outs):
    "On ipykernel, wait for the child's output that is due rather than race its forwarding thread (ipymini sends it before idle)."
    for k,want in child_out.items():
        while k in code and want not in text(outs): outs.append(wait_msg(kc, lambda m: m["msg_type"] == "stream"))
    return outs

def transcript(name):
    env = {k: v for k,v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # ipykernel skips fd capture under pytest
    with start_kernel(name, env=env) as (km,kc):
        res = []
        for c in cells:
            r,o = run(kc, c, allow_stdin=False)
            res.append((reply_view(r), outputs(settle(kc, c, o) if name != "ipymini" else o)))
        return res

@pytest.fixture(scope="module")
def transcripts(kernel_name): return transcript(kernel_name),transcript("python3")

@pytest.mark.parametrize("i", range(len(cells)), ids=[c.splitlines()[0][:30] for c in cells])
def test_same_outputs(transcripts, i):
    mine,ref = transcripts
    assert mine[i] == ref[i], f"cell {cells[i]!r} differs"

def test_enough_cells(): assert len(cells) >= 20
