"""Libraries that talk to ipykernel's own Python objects or sniff for ipykernel, through the real library, as a front end sees them.
Each test runs twice on ipymini: `beside` ipykernel (the usual JupyterLab install) and `alone`, in a venv that has every package of
the test venv but ipykernel (so `import ipykernel` finds no ipykernel files there); on `--kernel python3`, beside only."""
import json, os, re, subprocess, sys, sysconfig, threading, time, uuid
from contextlib import contextmanager
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from kutils import TIMEOUT, iopub_until_idle, run, shell_reply, text, types

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PLOTLY = "application/vnd.plotly.v1+json"

def pytest_generate_tests(metafunc):
    if "where" in metafunc.fixturenames:
        alone = metafunc.config.getoption("--kernel") == "ipymini"
        metafunc.parametrize("where", ["beside", "alone"] if alone else ["beside"], scope="module")

def alone_venv(root) -> str:
    "A venv at `root` whose site-packages link to every entry of this one's but ipykernel's; its python."
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True)
    src = sysconfig.get_paths()["purelib"]
    dst = sysconfig.get_paths(vars=dict(base=root, platbase=root))["purelib"]
    for name in os.listdir(src):
        if not name.startswith("ipykernel") and not os.path.exists(p := os.path.join(dst, name)): os.symlink(os.path.join(src, name), p)
    return os.path.join(root, "bin", "python")

@pytest.fixture(scope="session")
def alone_specs(tmp_path_factory):
    "A kernelspec folder with `ipymini-alone`: ipymini run by the venv without ipykernel."
    root = tmp_path_factory.mktemp("alone")
    py = alone_venv(str(root / "venv"))
    os.makedirs(d := root / "kernels" / "ipymini-alone")
    (d / "kernel.json").write_text(json.dumps(dict(argv=[py, "-m", "ipymini", "-f", "{connection_file}"], display_name="ipymini alone",
        language="python", interrupt_mode="signal")))
    return str(root / "kernels")

@contextmanager
def kernel_client(name, ksm=None):
    km = KernelManager(kernel_name=name, **(dict(kernel_spec_manager=ksm) if ksm else {}))
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)

@pytest.fixture(scope="module")
def lk(where, kernel_name, request):
    "A kernel for this module's `where`: the kernelspec under test, or ipymini in the venv without ipykernel."
    if where == "beside": cm = kernel_client(kernel_name)
    else: cm = kernel_client("ipymini-alone", KernelSpecManager(kernel_dirs=[request.getfixturevalue("alone_specs")]))
    with cm as kc: yield kc

def ok(kc, code, **kw):
    reply,outs = run(kc, code, **kw)
    assert reply["status"] == "ok", reply
    return outs

def comms(outs, msg_type): return [m["content"] for m in outs if m["msg_type"] == msg_type]

def front_end(kc, msg_type, **content):
    "Send a comm message as a front end does; the IOPub messages parented to it, up to its idle."
    msg = kc.session.msg(msg_type, content)
    kc.session.send(kc.shell_channel.socket, msg)
    return iopub_until_idle(kc, msg["header"]["msg_id"])

def test_which_ipykernel(lk, where):
    "`beside`, the real ipykernel is installed; `alone`, no ipykernel files exist (`PathFinder` finds none), and nothing sees ipykernel's metadata."
    out = text(ok(lk, "import importlib.machinery, importlib.metadata\ntry: v = importlib.metadata.version('ipykernel')\n"
        "except importlib.metadata.PackageNotFoundError: v = None\nprint(importlib.machinery.PathFinder.find_spec('ipykernel') is not None, v is not None)"))
    assert out == ("True True\n" if where == "beside" else "False False\n")

def test_startup_imports_no_ipykernel(lk, is_ipymini):
    """ipymini starts without loading a file of ipykernel's; `ipykernel.zmqshell` is in `sys.modules` (ipymini's stand-in), as in
    an ipykernel process. ipykernel fails by nature: it is ipykernel."""
    out = text(ok(lk, "import sys\nprint('ipykernel.zmqshell' in sys.modules, sorted(n for n,m in sys.modules.items() "
        "if n.split('.')[0] == 'ipykernel' and '/ipykernel/' in (getattr(m, '__file__', None) or '')))"))
    assert out == "True []\n"

def test_bokeh_push_notebook(lk):
    "bokeh's `show(p, notebook_handle=True)` opens a comm through `ipykernel.comm.Comm`; `push_notebook` sends the change on it."
    outs = ok(lk, "from bokeh.plotting import figure\nfrom bokeh.io import output_notebook, show, push_notebook\n"
        "output_notebook(hide_banner=True)\np = figure(title='before')\np.line([1, 2], [3, 4])\nh = show(p, notebook_handle=True)")
    opened = comms(outs, "comm_open")
    assert len(opened) == 1 and any("application/vnd.bokehjs_exec.v0+json" in d["data"] for d in comms(outs, "display_data"))
    outs = ok(lk, "p.title.text = 'after'\npush_notebook(handle=h)")
    sent = [m for m in comms(outs, "comm_msg") if m["comm_id"] == opened[0]["comm_id"]]
    assert sent and any("after" in json.dumps(m["data"]) for m in sent)

def panel_comms(kc, show):
    "Show a Panel object (`show`: code ending in it); the ids of its server comm and of the client comm the front end opens."
    outs = ok(kc, show + "\n_ref = list(_shown._comms)[-1]\nprint(_shown._comms[_ref][0].id, _shown._comms[_ref][1].id)")
    assert any("application/vnd.holoviews_exec.v0+json" in d["data"] for d in comms(outs, "display_data"))
    return text(outs).split()

def open_client_comm(kc, client_id):
    "Panel's JavaScript opens the client comm; the kernel answers by opening its server comm."
    return comms(front_end(kc, "comm_open", comm_id=uuid.uuid4().hex, target_name=client_id, data={}), "comm_open")

def test_panel_slider_reaches_the_browser(lk):
    "Panel (pyviz_comms): once the front end opens the client comm, `slider.value = 3` goes out on the server comm Panel opened."
    server,client = panel_comms(lk, "import panel as pn\npn.extension()\n_shown = slider = pn.widgets.IntSlider(value=1, start=0, end=10)\n"
        "from IPython.display import display\ndisplay(slider)")
    opened = open_client_comm(lk, client)
    assert [o["target_name"] for o in opened] == [server]
    sent = [m["data"] for m in comms(ok(lk, "slider.value = 3"), "comm_msg") if m["comm_id"] == opened[0]["comm_id"]]
    assert [d for d in sent if re.search(r'"attr":\s*"value",\s*"new":\s*3\b', str(d))]  # bokeh's PATCH-DOC, as JSON text

def test_holoviews_stream_update(lk):
    "HoloViews (through Panel and pyviz_comms): a stream event re-renders a DynamicMap and the patch goes out on the server comm."
    server,client = panel_comms(lk, "import holoviews as hv, panel as pn\nhv.extension('bokeh')\n"
        "xs = hv.streams.Stream.define('X', x=1)()\ndm = hv.DynamicMap(lambda x: hv.Curve([0, x]), streams=[xs])\n"
        "_shown = pn.panel(dm)\nfrom IPython.display import display\ndisplay(_shown)")
    opened = open_client_comm(lk, client)
    assert [o["target_name"] for o in opened] == [server]
    sent = comms(ok(lk, "xs.event(x=7)"), "comm_msg")
    assert [m for m in sent if m["comm_id"] == opened[0]["comm_id"]]

def test_matplotlib_nbagg(lk):
    "`%matplotlib notebook` (nbagg) opens a `matplotlib` comm for a figure; asked to draw, it sends the PNG as a binary buffer."
    outs = ok(lk, "%matplotlib notebook\nimport matplotlib.pyplot as plt\nfig = plt.figure()\nplt.plot([1, 3, 2])\nprint(fig.number)")
    opened = [o for o in comms(outs, "comm_open") if o["target_name"] == "matplotlib"]
    assert len(opened) == 1 and "id" in opened[0]["data"]
    cid,fid = opened[0]["comm_id"],text(outs).strip()
    say = lambda **d: front_end(lk, "comm_msg", comm_id=cid, data=json.dumps(dict(d, figure_id=fid)))  # nbagg's JavaScript sends JSON text
    say(type="supports_binary", value=True)
    outs = say(type="draw")
    imgs = [m for m in outs if m["msg_type"] == "comm_msg" and m["buffers"]]
    assert imgs and imgs[0]["content"]["data"] == {"blob": "image/png"} and imgs[0]["buffers"][0][:8] == b"\x89PNG\r\n\x1a\n"
    ok(lk, "plt.close('all')\n%matplotlib inline")

def test_tqdm_autonotebook_widget(lk):
    "`tqdm.auto` picks the widget bar in a notebook kernel: a widget view on IOPub, no text bar on stderr."
    outs = ok(lk, "import warnings\nwarnings.simplefilter('ignore')\nfrom tqdm.auto import tqdm\nfor _ in tqdm(range(3)): pass\n"
        "from tqdm.notebook import tqdm_notebook\nprint(issubclass(tqdm, tqdm_notebook))")
    assert any(WIDGET_VIEW in d["data"] for d in comms(outs, "display_data"))
    assert text(outs) == "True\n" and not [s for s in comms(outs, "stream") if s["name"] == "stderr"]

def test_plotly_default_renderer(lk):
    "plotly's default renderer in a notebook kernel is `plotly_mimetype`: `fig.show()` sends plotly's JSON and no 4.8 MB text/html."
    outs = ok(lk, "import plotly.io as pio, plotly.graph_objects as go\nprint(pio.renderers.default)\ngo.Figure(go.Bar(y=[1, 2])).show()")
    shown = comms(outs, "display_data")
    assert text(outs) == "plotly_mimetype\n" and len(shown) == 1 and PLOTLY in shown[0]["data"] and "text/html" not in shown[0]["data"]

def test_jupyter_ui_poll(lk):
    """jupyter-ui-poll: a cell blocks in `poll()` until a widget changes; the front end's comm_msg is handled meanwhile, and an execute
    request sent while the cell blocks runs after it. ipykernel 7 fails: it has no `do_one_iteration` any more, and jupyter-ui-poll
    swallows the AttributeError, so `poll()` does nothing and the cell never sees the change."""
    mid = text(ok(lk, "import ipywidgets as w\nui = w.IntSlider(value=0)\nprint(ui.model_id)")).strip()
    cell = lk.execute("from jupyter_ui_poll import ui_events\nimport time\nwith ui_events() as poll:\n"
        "    for _ in range(300):\n        if ui.value: break\n        poll(10)\n        time.sleep(0.01)\nprint('got', ui.value)")
    after = lk.execute("print('after')")
    time.sleep(0.3)
    front_end(lk, "comm_msg", comm_id=mid, data=dict(method="update", state=dict(value=7), buffer_paths=[]))
    assert shell_reply(lk, cell)["content"]["status"] == "ok"
    assert text(iopub_until_idle(lk, cell)) == "got 7\n"
    assert text(iopub_until_idle(lk, after)) == "after\n"

def test_session_send_on_iopub(lk):
    """ipyparallel relays engine comms with `kernel.session.send(kernel.iopub_socket, msg_type, content=..., parent=...)`; others
    send a message made by `session.msg`. Both reach the client, parented as given, buffers included."""
    outs = ok(lk, "k = get_ipython().kernel\nk.session.send(k.iopub_socket, 'comm_msg', content=dict(comm_id='relayed', data=dict(n=1)),\n"
        "    metadata=dict(engine='e0'), buffers=[b'\\xff\\x00'], parent=k.get_parent('shell'))\n"
        "k.session.send(k.iopub_socket, k.session.msg('display_data', dict(data={'text/plain': 'made'}, metadata={}, transient={}),\n"
        "    parent=k.get_parent('shell')), ident=b'display_data')\nprint('sent')")
    relayed = [m for m in outs if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == "relayed"]
    made = [m for m in outs if m["msg_type"] == "display_data" and m["content"]["data"] == {"text/plain": "made"}]
    assert len(relayed) == 1 and len(made) == 1 and outs.index(relayed[0]) < outs.index(made[0]) and text(outs) == "sent\n"
    assert relayed[0]["content"]["data"] == dict(n=1) and relayed[0]["metadata"] == dict(engine="e0") and relayed[0]["buffers"][0] == b"\xff\x00"

def test_session_send_bad_content(lk):
    "Content JSON cannot carry raises in the cell that sent it (as on ipykernel); the kernel goes on."
    reply,_ = run(lk, "k = get_ipython().kernel\nk.session.send(k.iopub_socket, 'comm_msg', content=dict(comm_id='x', data=object()))")
    assert reply["status"] == "error" and reply["ename"] in ("TypeError", "ValueError")
    assert text(ok(lk, "print('alive')")) == "alive\n"

def test_what_libraries_read(lk):
    "Small things libraries test: stream encoding and errors, `sys.argv[0]`'s name (pyviz_comms reads it), `%config ZMQDisplayPublisher`."
    out = text(ok(lk, "import sys, os, pyviz_comms\nprint(sys.stdout.encoding, sys.stdout.errors, os.path.basename(sys.argv[0]), "
        "'_PYVIZ_COMMS_INSTALLED' in os.environ)\n%config ZMQDisplayPublisher"))
    first,*rest = out.splitlines()
    assert first == "UTF-8 None ipykernel_launcher.py False" and rest[0].startswith("ZMQDisplayPublisher(DisplayPublisher) options")

def test_kernel_magics_exist(lk):
    "ipykernel's kernel magics are there: none of them is 'Line magic function not found'."
    names = "connect_info qtconsole less more man clear autosave subshell edit".split()
    out = text(ok(lk, f"m = get_ipython().magics_manager.magics['line']\nprint([n for n in {names} if n not in m])"))
    assert out == "[]\n"

def test_connect_info(lk):
    "`%connect_info` prints the connection info, so another client can connect (`jupyter console --existing`)."
    info = json.loads(text(ok(lk, "%connect_info")).split("\n\n")[0])
    assert info["shell_port"] == lk.shell_port and info["iopub_port"] == lk.iopub_port and info["key"] == lk.session.key.decode()

def test_autosave_and_subshell(lk):
    "`%autosave 30` sends the classic notebook's JavaScript and says so; `%subshell` says which subshell and thread run the cell."
    outs = ok(lk, "%autosave 30")
    assert comms(outs, "display_data")[0]["data"] == {"application/javascript": "IPython.notebook.set_autosave_interval(30000)"}
    assert text(outs) == "Autosaving every 30 seconds\n"
    out = text(ok(lk, "%subshell"))
    assert out.startswith("subshell id: None\nthread id: ") and "subshell list: []" in out

def test_pager_magics(lk, tmp_path):
    "`%less`/`%more` page a file, `%man` a man page: each a `page` payload in the reply, as front ends show it; `%less` alone is a UsageError."
    f = tmp_path / "notes.txt"
    f.write_text("first line\nsecond line\n")
    for magic in ("less", "more"):
        reply,_ = run(lk, f"%{magic} {f}")
        assert reply["status"] == "ok" and reply["payload"][0]["data"]["text/plain"] == f.read_text()
    reply,outs = run(lk, "%less")
    assert "Missing filename" in text(outs) + json.dumps(reply)
    reply,_ = run(lk, "%man ls")
    assert reply["status"] == "ok" and [p["source"] for p in reply["payload"]] == ["page"]

def test_edit_and_clear(lk, tmp_path):
    "`%edit file` asks the front end to open it (an `edit_magic` payload with the absolute path); `%clear` runs the terminal's clear."
    f = tmp_path / "x.py"
    f.write_text("a = 1\n")
    reply,_ = run(lk, f"%edit {f}")
    assert reply["status"] == "ok" and reply["payload"] == [dict(source="edit_magic", filename=str(f), line_number=None)]
    assert run(lk, "%clear")[0]["status"] == "ok"
