"Comms both ways through the `comm` package, comm_info, binary buffers, errors, and ipywidgets driven from the client side."
import uuid, pytest
from kutils import run, request, types, text, iopub_until_idle

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

def send(kc, msg_type, buffers=None, metadata=None, **content):
    "Send a shell message the way a front end does (comm messages get no reply); its msg_id."
    msg = kc.session.msg(msg_type, content, metadata=metadata)
    kc.session.send(kc.shell_channel.socket, msg, buffers=buffers)
    return msg["header"]["msg_id"]

def comm_outs(kc, msg_type, buffers=None, metadata=None, **content):
    "Send a comm message; the IOPub messages parented to it, up to its idle."
    return iopub_until_idle(kc, send(kc, msg_type, buffers, metadata, **content))

def only(outs, msg_type):
    ms = [m for m in outs if m["msg_type"] == msg_type]
    assert len(ms) == 1, types(outs)
    return ms[0]

def infos(kc, **kw): return request(kc, "comm_info_request", **kw)["content"]

@pytest.fixture(scope="module")
def echo(kernel):
    "A kernel-side comm, opened from a cell, that records and echoes what the client sends it; its comm_open message."
    kc = kernel[1]
    reply,outs = run(kc, "from comm import create_comm\ngot = []\n"
        "c = create_comm(target_name='echo', data={'hello': 1}, metadata={'m': 2}, buffers=[b'open-bytes'])\n"
        "def on_msg(m):\n    got.append((m['content']['data'], [bytes(b) for b in m['buffers']], type(m['buffers'][0]).__name__))\n"
        "    print('got', m['content']['data'])\n    c.send({'echo': m['content']['data']}, buffers=[b'back-' + bytes(m['buffers'][0])])\n"
        "c.on_msg(on_msg)\nc.on_close(lambda m: print('closed with', m['content']['data']))")
    assert reply["status"] == "ok"
    return only(outs, "comm_open")

def test_kernel_opens_comm(echo, kc):
    c = echo["content"]
    assert c["target_name"] == "echo" and c["data"] == {"hello": 1} and c["comm_id"]
    assert echo["metadata"] == {"m": 2}
    assert [bytes(b) for b in echo["buffers"]] == [b"open-bytes"]

def test_comm_info(echo, kc):
    cid = echo["content"]["comm_id"]
    c = infos(kc)
    assert c["status"] == "ok" and c["comms"][cid] == {"target_name": "echo"}
    c = infos(kc, target_name="echo")
    assert c["comms"] == {cid: {"target_name": "echo"}}
    assert infos(kc, target_name="no-such-target")["comms"] == {}

def test_client_message_with_buffers(echo, kc):
    "Data and buffers reach the callback (as memoryviews, like ipykernel); its print and reply are parented to the comm_msg."
    cid = echo["content"]["comm_id"]
    mid = send(kc, "comm_msg", [b"\x00\x01binary"], comm_id=cid, data={"x": 2})
    outs = iopub_until_idle(kc, mid)
    assert all(m["parent_header"]["msg_id"] == mid for m in outs)
    assert text(outs) == "got {'x': 2}\n"
    back = only(outs, "comm_msg")
    assert back["content"] == {"comm_id": cid, "data": {"echo": {"x": 2}}}
    assert [bytes(b) for b in back["buffers"]] == [b"back-\x00\x01binary"]
    _,outs = run(kc, "print(got)")
    assert text(outs) == "[({'x': 2}, [b'\\x00\\x01binary'], 'memoryview')]\n"

def test_client_opens_comm_to_target(kc):
    "A target registered on `get_ipython().kernel.comm_manager` gets the client's comm_open and can answer on the comm."
    reply,_ = run(kc, "import comm\nopened = []\ndef target(c, msg):\n    opened.append(msg['content']['data'])\n"
        "    c.send({'welcome': 1})\n    c.on_msg(lambda m: c.send({'pong': m['content']['data']}))\n"
        "mgr = get_ipython().kernel.comm_manager\nassert mgr is comm.get_comm_manager()\nmgr.register_target('t2', target)")
    assert reply["status"] == "ok"
    cid = uuid.uuid4().hex
    outs = comm_outs(kc, "comm_open", comm_id=cid, target_name="t2", data={"o": 1})
    assert only(outs, "comm_msg")["content"] == {"comm_id": cid, "data": {"welcome": 1}}
    assert infos(kc, target_name="t2")["comms"] == {cid: {"target_name": "t2"}}
    outs = comm_outs(kc, "comm_msg", comm_id=cid, data={"ping": 3})
    assert only(outs, "comm_msg")["content"]["data"] == {"pong": {"ping": 3}}
    _,outs = run(kc, "print(opened)")
    assert text(outs) == "[{'o': 1}]\n"

def test_client_closes_comm(kc):
    _,outs = run(kc, "from comm import create_comm\nc3 = create_comm(target_name='closing')\n"
        "c3.on_close(lambda m: print('closed with', m['content']['data']))")
    cid = only(outs, "comm_open")["content"]["comm_id"]
    outs = comm_outs(kc, "comm_close", comm_id=cid, data={"bye": 1})
    assert text(outs) == "closed with {'bye': 1}\n"
    assert cid not in infos(kc)["comms"]
    _,outs = run(kc, "print(c3._closed)")
    assert text(outs) == "True\n"

def test_kernel_closes_comm(kc):
    _,outs = run(kc, "from comm import create_comm\nc4 = create_comm(target_name='closing')")
    cid = only(outs, "comm_open")["content"]["comm_id"]
    _,outs = run(kc, "c4.close({'reason': 'done'})")
    assert only(outs, "comm_close")["content"] == {"comm_id": cid, "data": {"reason": "done"}}
    assert cid not in infos(kc)["comms"]

def test_unknown_target_closes_the_comm(kc):
    "The protocol: a comm_open for a target the kernel lacks is answered with comm_close; the reason shows on stderr."
    cid = uuid.uuid4().hex
    outs = comm_outs(kc, "comm_open", comm_id=cid, target_name="no-such-target", data={})
    assert only(outs, "comm_close")["content"]["comm_id"] == cid
    assert "No such comm target registered: no-such-target" in text(outs, "stderr")
    assert cid not in infos(kc)["comms"]

def test_errors_in_callbacks_reach_the_client(kc):
    "A comm callback or target that raises: the traceback goes to stderr under the comm message, a failed open is closed, and serving goes on."
    _,outs = run(kc, "from comm import create_comm\nc5 = create_comm(target_name='boom')\nc5.on_msg(lambda m: 1/0)")
    cid = only(outs, "comm_open")["content"]["comm_id"]
    outs = comm_outs(kc, "comm_msg", comm_id=cid, data={})
    assert "ZeroDivisionError" in text(outs, "stderr")
    run(kc, "get_ipython().kernel.comm_manager.register_target('bad-target', lambda c, m: 1/0)")
    cid = uuid.uuid4().hex
    outs = comm_outs(kc, "comm_open", comm_id=cid, target_name="bad-target", data={})
    assert "ZeroDivisionError" in text(outs, "stderr") and only(outs, "comm_close")["content"]["comm_id"] == cid
    assert cid not in infos(kc)["comms"]
    assert run(kc, "1")[0]["status"] == "ok"

def test_unknown_comm_and_missing_fields_keep_serving(kc):
    "comm_msg/comm_close for an unknown comm, or without a comm_id: no reply is due; the kernel logs and keeps serving."
    bad = [("comm_msg", dict(comm_id="nope", data={})), ("comm_close", dict(comm_id="nope", data={})), ("comm_msg", dict(data={})),
        ("comm_open", dict(data={}))]
    for msg_type,content in bad:
        outs = comm_outs(kc, msg_type, **content)
        assert not {"comm_msg", "comm_close", "comm_open", "error"} & set(types(outs)), (msg_type, types(outs))
    reply,outs = run(kc, "print('still here')")
    assert reply["status"] == "ok" and text(outs) == "still here\n"

@pytest.fixture(scope="module")
def slider(kernel):
    "An ipywidgets IntSlider displayed in a cell, with an observer that records and prints each new value; its model id."
    reply,outs = run(kernel[1], "import ipywidgets as w\ns = w.IntSlider(value=3)\nseen = []\n"
        "s.observe(lambda ch: (seen.append(ch['new']), print('value is', ch['new'])), 'value')\ndisplay(s)")
    assert reply["status"] == "ok"
    view = only(outs, "display_data")["content"]["data"][WIDGET_VIEW]
    opens = {m["content"]["comm_id"]: m for m in outs if m["msg_type"] == "comm_open"}
    model = opens[view["model_id"]]["content"]
    assert model["target_name"] == "jupyter.widget" and model["data"]["state"]["value"] == 3
    assert model["data"]["state"]["_model_name"] == "IntSliderModel"
    return view["model_id"]

def test_widget_value_from_the_client(kc, slider):
    "The front end moves the slider: the kernel echoes the update, the Python observer runs, and the next cell sees it."
    outs = comm_outs(kc, "comm_msg", comm_id=slider, data=dict(method="update", state=dict(value=7), buffer_paths=[]))
    assert text(outs) == "value is 7\n"
    echo = only(outs, "comm_msg")["content"]
    assert echo["comm_id"] == slider and echo["data"]["method"] == "echo_update" and echo["data"]["state"] == {"value": 7}
    _,outs = run(kc, "print(s.value, seen)")
    assert text(outs) == "7 [7]\n"

def test_widget_state_requests(kc, slider):
    "`request_state` on the widget and `request_states` on the control comm (what a reloaded page sends) return current values."
    run(kc, "s.value = 9")
    outs = comm_outs(kc, "comm_msg", comm_id=slider, data=dict(method="request_state"))
    upd = only(outs, "comm_msg")["content"]["data"]
    assert upd["method"] == "update" and upd["state"]["value"] == 9
    ctl = uuid.uuid4().hex
    assert comm_outs(kc, "comm_open", metadata=dict(version="1.0.0"), comm_id=ctl, target_name="jupyter.widget.control", data={}) == []
    outs = comm_outs(kc, "comm_msg", comm_id=ctl, data=dict(method="request_states"))
    states = only(outs, "comm_msg")["content"]["data"]
    assert states["method"] == "update_states" and states["states"][slider]["state"]["value"] == 9

def test_widget_kernel_side_change_reaches_client(kc, slider):
    _,outs = run(kc, "s.value = 11")
    upd = only(outs, "comm_msg")["content"]
    assert upd["comm_id"] == slider and upd["data"] == dict(method="update", state=dict(value=11), buffer_paths=[])

def test_output_widget_captures_callback_output(kc):
    """A button click (a comm_msg from the client) runs a callback inside an Output widget: the widget's msg_id is set to the
    click's msg_id, so the front end routes the callback's print, parented to the click, into the widget."""
    reply,outs = run(kc, "out = w.Output()\nb = w.Button()\n@out.capture()\ndef clicked(_): print('clicked!')\n"
        "b.on_click(clicked)\ndisplay(b, out)")
    views = [m["content"]["data"][WIDGET_VIEW]["model_id"] for m in outs if m["msg_type"] == "display_data"]
    button,output = views
    mid = send(kc, "comm_msg", comm_id=button, data=dict(method="custom", content=dict(event="click")))
    outs = iopub_until_idle(kc, mid)
    sets = [m["content"]["data"]["state"]["msg_id"] for m in outs if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == output]
    assert sets == [mid, ""]
    assert text(outs) == "clicked!\n"
    assert all(m["parent_header"]["msg_id"] == mid for m in outs)
