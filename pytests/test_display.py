"Display: display_data, update_display_data, clear_output, rich reprs, the displayhook and Out, matplotlib, payloads."
import base64, time, pytest
from kutils import run, types, text, result, start_kernel, shell_reply, iopub_until_idle

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

def only(outs, msg_type): return [m["content"] for m in outs if m["msg_type"] == msg_type]

def test_matplotlib_not_imported_until_used(kc):
    "Must run first in this module: the kernel itself never imports matplotlib."
    _,outs = run(kc, "import sys; print('matplotlib' in sys.modules, 'matplotlib.pyplot' in sys.modules)")
    assert text(outs) == "False False\n"

def test_display_data(kc):
    _,outs = run(kc, "from IPython.display import display, HTML\ndisplay(HTML('<b>hi</b>'), metadata={'isolated': True})")
    assert types(outs) == ["execute_input", "display_data"]
    c = outs[1]["content"]
    assert c["data"] == {"text/plain": "<IPython.core.display.HTML object>", "text/html": "<b>hi</b>"}
    assert c["metadata"] == {"isolated": True} and c["transient"] == {}

def test_display_raw_bundle(kc):
    _,outs = run(kc, "display({'text/plain': 'p', 'application/vnd.x+json': {'k': [1, 2]}}, raw=True, metadata={'m': 1})")
    assert only(outs, "display_data") == [dict(data={"text/plain": "p", "application/vnd.x+json": {"k": [1, 2]}}, metadata={"m": 1}, transient={})]

def test_display_id_and_update(kc):
    _,outs = run(kc, "h = display('first', display_id=True)\nh.update('second')\n"
        "display('named', display_id='my-id')\ndisplay('renamed', display_id='my-id', update=True); None")
    assert types(outs) == ["execute_input", "display_data", "update_display_data", "display_data", "update_display_data"]
    d,u,d2,u2 = [m["content"] for m in outs[1:]]
    assert d["transient"]["display_id"] == u["transient"]["display_id"] and len(d["transient"]["display_id"]) > 8
    assert d["data"]["text/plain"] == "'first'" and u["data"]["text/plain"] == "'second'"
    assert d2["transient"] == u2["transient"] == {"display_id": "my-id"} and u2["data"]["text/plain"] == "'renamed'"

def test_update_from_a_later_cell(kc):
    "A handle kept from one cell updates its display from the next; the update is parented to the later cell."
    run(kc, "keep = display('v1', display_id=True)")
    _,outs = run(kc, "keep.update('v2')")
    assert types(outs) == ["execute_input", "update_display_data"] and outs[1]["content"]["data"]["text/plain"] == "'v2'"

def test_clear_output(kc):
    _,outs = run(kc, "from IPython.display import clear_output\nprint('a'); clear_output(); print('b'); clear_output(wait=True); print('c')")
    assert types(outs) == ["execute_input", "stream", "clear_output", "stream", "clear_output", "stream"]
    assert [c["wait"] for c in only(outs, "clear_output")] == [False, True]

def test_progress_with_clear_output_wait(kc):
    _,outs = run(kc, "from IPython.display import clear_output\nfor i in range(5):\n    clear_output(wait=True)\n    print(f'step {i}')")
    assert types(outs)[1:] == ["clear_output", "stream"] * 5
    assert text(outs) == "".join(f"step {i}\n" for i in range(5))

def test_repr_methods(kc):
    code = ("class R:\n    def _repr_html_(self): return '<i>r</i>'\n    def _repr_markdown_(self): return '*r*'\n"
        "    def _repr_latex_(self): return '$r$'\n    def _repr_json_(self): return {'r': 1}\n"
        "    def _repr_svg_(self): return '<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>'\n"
        "    def _repr_png_(self):\n        import base64\n        return base64.b64decode('%s')\n"
        "    def __repr__(self): return 'R()'\nR()") % PNG
    reply,outs = run(kc, code)
    data = result(outs)
    assert data["text/plain"] == "R()" and data["text/html"] == "<i>r</i>" and data["text/markdown"] == "*r*"
    assert data["text/latex"] == "$r$" and data["application/json"] == {"r": 1} and data["image/svg+xml"].startswith("<svg")
    assert data["image/png"] == PNG

def test_repr_mimebundle(kc):
    _,outs = run(kc, "class B:\n    def _repr_mimebundle_(self, include=None, exclude=None):\n"
        "        return {'text/plain': 'B!', 'application/json': {'b': 2}}, {'application/json': {'expanded': True}}\nB()")
    c = only(outs, "execute_result")[0]
    assert c["data"] == {"text/plain": "B!", "application/json": {"b": 2}} and c["metadata"] == {"application/json": {"expanded": True}}

def test_image_display(kc):
    _,outs = run(kc, "from IPython.display import Image\nimport base64\ndisplay(Image(data=base64.b64decode('%s')))" % PNG)
    assert only(outs, "display_data")[0]["data"]["image/png"] == PNG

def test_execute_result_count_and_out_history(kc):
    r1,outs = run(kc, "6*7")
    c = only(outs, "execute_result")[0]
    assert c["execution_count"] == r1["execution_count"] and c["data"] == {"text/plain": "42"}
    run(kc, "'two'")
    run(kc, "[3]")
    _,outs = run(kc, "print(___, __, _, Out[%d])" % r1["execution_count"])
    assert text(outs) == "42 two [3] 42\n"

def test_no_result_for_none_or_semicolon(kc):
    _,outs = run(kc, "None")
    assert types(outs) == ["execute_input"]
    _,outs = run(kc, "1;")
    assert types(outs) == ["execute_input"]

def test_display_from_thread_goes_to_its_cell(kc):
    _,outs = run(kc, "import threading\nt = threading.Thread(target=lambda: display('from thread')); t.start(); t.join()")
    assert only(outs, "display_data")[0]["data"]["text/plain"] == "'from thread'"

def test_binary_buffers(kc):
    """Buffers handed to the display publisher travel as binary frames. ipykernel's publisher takes the argument and drops
    it, so the client gets the data without its buffers; passing them is what the argument promises."""
    mid = kc.execute("get_ipython().display_pub.publish({'text/plain': 'with buffers'}, buffers=[b'\\x00\\x01\\xff', memoryview(b'xyz')])")
    outs = iopub_until_idle(kc, mid)
    shell_reply(kc, mid)
    m = [m for m in outs if m["msg_type"] == "display_data"][0]
    assert m["content"]["data"] == {"text/plain": "with buffers"}
    assert [bytes(b) for b in m["buffers"]] == [b"\x00\x01\xff", b"xyz"]

def test_matplotlib_default_backend_shows_figure(kc):
    "With no magic, a figure made in a cell shows as image/png at the end of the cell, after its prints."
    _,outs = run(kc, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nprint('plotted')")
    assert types(outs) == ["execute_input", "stream", "display_data"]
    data = outs[-1]["content"]["data"]
    assert base64.b64decode(data["image/png"])[:8] == b"\x89PNG\r\n\x1a\n" and data["text/plain"].startswith("<Figure")

def test_matplotlib_inline_magic(kc):
    _,outs = run(kc, "%matplotlib inline\nfig, ax = plt.subplots(); ax.plot([2, 1]); None")
    assert types(outs) == ["execute_input", "display_data"] and "image/png" in outs[1]["content"]["data"]
    _,outs = run(kc, "print('no figure')")
    assert types(outs) == ["execute_input", "stream"]

def test_matplotlib_figure_per_cell(kc):
    _,outs = run(kc, "for i in range(2):\n    plt.figure(); plt.plot([i, 0])")
    assert types(outs) == ["execute_input", "display_data", "display_data"]

def test_pager_payloads(kc):
    reply,outs = run(kc, "len?")
    assert types(outs) == ["execute_input"]
    [p] = reply["payload"]
    assert p["source"] == "page" and p["start"] == 0 and "Return the number of items" in p["data"]["text/plain"]
    reply,_ = run(kc, "def documented():\n    'the doc'\n    return 1\ndocumented??")
    assert "Source:" in reply["payload"][0]["data"]["text/plain"] and "'the doc'" in reply["payload"][0]["data"]["text/plain"]
    reply,_ = run(kc, "from IPython.core import page\npage.page('paged text')")
    assert reply["payload"] == [dict(source="page", data={"text/plain": "paged text"}, start=0)]

def test_help_prints(kc):
    _,outs = run(kc, "help(len)")
    assert "len(obj, /)" in text(outs)

def test_set_next_input_last_wins(kc):
    reply,_ = run(kc, "ip = get_ipython()\nip.set_next_input('first')\nip.set_next_input('second', replace=True)")
    assert reply["payload"] == [dict(source="set_next_input", text="second", replace=True)]
    reply,_ = run(kc, "1")
    assert reply["payload"] == []

def test_exit_keep_kernel(kc):
    reply,_ = run(kc, "exit(keep_kernel=True)")
    assert reply["payload"] == [dict(source="ask_exit", keepkernel=True)]
    _,outs = run(kc, "print('still here')")
    assert text(outs) == "still here\n"

@pytest.mark.parametrize("word", ["exit", "quit"])
def test_exit_ends_kernel(kernel_name, word):
    "`exit`/`quit`: the ask_exit payload in the reply, then the kernel process ends by itself."
    with start_kernel(kernel_name) as (km,kc):
        reply,_ = run(kc, word)
        assert reply["payload"] == [dict(source="ask_exit", keepkernel=False)]
        end = time.monotonic() + 10
        while km.is_alive() and time.monotonic() < end: time.sleep(0.05)
        assert not km.is_alive()
