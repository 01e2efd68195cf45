"ipykernel's Python API as libraries call it on `get_ipython()`, its `.kernel` and its shell, each through the real library where one uses it."
import uuid
from kutils import iopub_until_idle, run, text, types, wait_msg

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

def comm_outs(kc, msg_type, **content):
    "Send a comm message as a front end does; the IOPub messages parented to it, up to its idle, and its msg_id."
    msg = kc.session.msg(msg_type, content)
    kc.session.send(kc.shell_channel.socket, msg)
    return iopub_until_idle(kc, msg["header"]["msg_id"]),msg["header"]["msg_id"]

def ok(kc, code):
    reply,outs = run(kc, code)
    assert reply["status"] == "ok", reply
    return outs

def states(outs): return [m["content"]["data"]["state"] for m in outs if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update"]

def test_kernel_shell_for_variable_inspector(kc):
    "JupyterLab's Variable Inspector starts with `NamespaceMagics().shell = get_ipython().kernel.shell`, then lists names with `who_ls`."
    outs = ok(kc, "from IPython import get_ipython\nfrom IPython.core.magics.namespace import NamespaceMagics\n"
        "_vi_nms = NamespaceMagics()\n_vi_nms.shell = get_ipython().kernel.shell\nvi_seen = 41\n"
        "print(get_ipython().kernel.shell is get_ipython(), [n for n in _vi_nms.who_ls() if n.startswith('vi_')])")
    assert text(outs) == "True ['vi_seen']\n"

def test_output_widget_in_a_cell(kc):
    "ipywidgets' Output widget asks the shell for the request (`get_ipython().get_parent()`), sets it back (`set_parent`) and captures by its msg_id."
    reply,outs = run(kc, "import ipywidgets as w\nout = w.Output()\nwith out: print('captured')")
    mid = next(m["parent_header"]["msg_id"] for m in outs)
    assert reply["status"] == "ok"
    assert [s.get("msg_id") for s in states(outs)] == [mid, ""]  # set to the cell's id inside the `with`, cleared after
    assert text(outs) == "captured\n"

def test_output_widget_in_a_comm_callback(kc):
    "A button's click handler writes into an Output widget: the widget captures by the comm_msg's id, and the text is parented to it."
    outs = ok(kc, "import ipywidgets as w\nlog = w.Output()\nb = w.Button()\n"
        "def clicked(_):\n    with log: print('clicked')\nb.on_click(clicked)\nprint(b.model_id)")
    outs,mid = comm_outs(kc, "comm_msg", comm_id=text(outs).strip(), data=dict(method="custom", content=dict(event="click")))
    assert [s.get("msg_id") for s in states(outs)] == [mid, ""]
    assert text(outs) == "clicked\n"

def test_shell_set_parent(kc):
    "`shell.set_parent(request)` sends later output to that request, as ipykernel's does; `get_parent()` returns it."
    code = ("import sys\nip = get_ipython()\nhere = ip.get_parent()\nthere = dict(here, header=dict(here['header'], msg_id='set-parent-test'))\n"
        "ip.set_parent(there)\nprint('moved', ip.get_parent()['header']['msg_id']); sys.stdout.flush()\nip.set_parent(here)\nprint('back')")
    outs = ok(kc, code)
    assert text(outs) == "back\n"
    m = wait_msg(kc, lambda m: m["parent_header"].get("msg_id") == "set-parent-test")
    assert m["msg_type"] == "stream" and m["content"]["text"] == "moved set-parent-test\n"

def test_kernel_set_parent(kc):
    "`get_ipython().kernel.set_parent(ident, request)` (ipykernel's signature) moves output too; `kernel.get_parent('shell')` is the cell."
    code = ("import sys\nk = get_ipython().kernel\nhere = k.get_parent('shell')\nprint(here['header']['msg_type'])\n"
        "there = dict(here, header=dict(here['header'], msg_id='kernel-set-parent'))\n"
        "k.set_parent(None, there)\nprint('moved'); sys.stdout.flush()\nk.set_parent(None, here)")
    assert text(ok(kc, code)) == "execute_request\n"
    m = wait_msg(kc, lambda m: m["parent_header"].get("msg_id") == "kernel-set-parent")
    assert m["msg_type"] == "stream" and m["content"]["text"] == "moved\n"

def test_thread_parent(kc):
    "ipykernel 7's `shell.set_thread_parent(request)` moves one thread's output (stream and display) until `reset_thread_parent(token)`."
    code = ("import sys, threading\nfrom IPython.display import display\nip = get_ipython()\nhere = ip.get_parent()\n"
        "there = dict(here, header=dict(here['header'], msg_id='thread-parent'))\nseen = []\n"
        "def work():\n    tok = ip.set_thread_parent(there)\n    seen.append(ip.get_parent()['header']['msg_id'])\n"
        "    print('from thread'); sys.stdout.flush(); display('shown')\n    ip.reset_thread_parent(tok)\n"
        "    seen.append(ip.get_parent()['header']['msg_id'] == here['header']['msg_id'])\n"
        "t = threading.Thread(target=work); t.start(); t.join()\nprint(seen)")
    assert text(ok(kc, code)) == "['thread-parent', True]\n"
    got = [wait_msg(kc, lambda m: m["parent_header"].get("msg_id") == "thread-parent") for _ in range(2)]
    assert [m["msg_type"] for m in got] == ["stream", "display_data"]
    assert got[0]["content"]["text"] == "from thread\n" and got[1]["content"]["data"]["text/plain"] == "'shown'"

def test_pyviz_comms_target_on_kernel_comm_manager(kc):
    "pyviz_comms (HoloViews, Panel) registers its targets on `get_ipython().kernel.comm_manager` and answers each message with a Ready ack."
    ok(kc, "from pyviz_comms import JupyterCommJS\ngot = []\njc = JupyterCommJS(id='pyviz-api-test', on_msg=got.append)")
    cid = uuid.uuid4().hex
    comm_outs(kc, "comm_open", comm_id=cid, target_name="pyviz-api-test", data={})
    outs,_ = comm_outs(kc, "comm_msg", comm_id=cid, data={"value": 7})
    acks = [m["metadata"] for m in outs if m["msg_type"] == "comm_msg"]
    assert [a.get("msg_type") for a in acks] == ["Ready"], types(outs)
    assert text(ok(kc, "print([g['value'] for g in got])")) == "[7]\n"

def test_anywidget_syncs_through_comm_kernel(kc):
    "anywidget (and ipywidgets under it) send state only while `comm.kernel` is set: a trait change reaches the client as an update."
    outs = ok(kc, "import anywidget, traitlets\nclass Counter(anywidget.AnyWidget):\n"
        "    _esm = 'export default { render({ model, el }) { el.innerText = model.get(\"n\"); } }'\n"
        "    n = traitlets.Int(1).tag(sync=True)\nc = Counter()\nc")
    opened = [m for m in outs if m["msg_type"] == "comm_open" and m["content"]["data"]["state"].get("n") == 1]
    assert len(opened) == 1 and opened[0]["content"]["target_name"] == "jupyter.widget"
    res = next(m for m in outs if m["msg_type"] == "execute_result")["content"]["data"]
    assert res[WIDGET_VIEW]["model_id"] == opened[0]["content"]["comm_id"]
    assert {"n": 5} in states(ok(kc, "c.n = 5"))

def test_notebook_detection(kc):
    """What libraries test to know they run in a notebook kernel: the shell's class name (rich, huggingface_hub, plotly) and an
    `IPKernelApp` section in its config (transformers' `is_in_notebook`, many `in_notebook()` helpers). rich then renders as HTML."""
    outs = ok(kc, "from rich.console import Console\nimport rich\nip = get_ipython()\n"
        "print(type(ip).__name__, 'IPKernelApp' in ip.config, Console().is_jupyter)\nrich.print('[bold]rich[/bold]')")
    assert text(outs) == "ZMQInteractiveShell True True\n"
    shown = [m["content"]["data"] for m in outs if m["msg_type"] == "display_data"]
    assert len(shown) == 1 and "rich" in shown[0]["text/plain"] and "bold" in shown[0]["text/html"], shown

def test_ipympl_shows_figures_from_post_execute(kc):
    "ipympl (`%matplotlib widget`) registers on `get_ipython().events` to show a cell's new figures after it, as widgets."
    outs = ok(kc, "%matplotlib widget\nimport matplotlib.pyplot as plt\nfig = plt.figure(); plt.plot([1, 2]); None")
    canvas = [m["content"]["comm_id"] for m in outs if m["msg_type"] == "comm_open" and m["content"]["data"]["state"].get("_model_name") == "MPLCanvasModel"]
    shown = [m["content"]["data"][WIDGET_VIEW]["model_id"] for m in outs if m["msg_type"] == "display_data" and WIDGET_VIEW in m["content"]["data"]]
    assert len(canvas) == 1 and shown == canvas, types(outs)
