"complete_request and is_complete_request: IPython's completer through the wire, its typed metadata, bad input, and answers mid-cell."
import os, time, pytest
from kutils import run, request, shell_reply, start_kernel

EXP = "_jupyter_types_experimental"

def complete(kc, code, cursor_pos=None, **kw):
    return request(kc, "complete_request", code=code, cursor_pos=len(code) if cursor_pos is None else cursor_pos, **kw)["content"]

@pytest.fixture(scope="module", autouse=True)
def names(kernel):
    reply,_ = run(kernel[1], "import os\nalpha_beta = 1\nalpha_gamma = 2\nd = {'key1': 1, 'key2': 2}\n"
        "def myfunc(a, b=2):\n    'Add `a` and `b`.'\n    return a + b")
    assert reply["status"] == "ok"

def test_names_from_earlier_cells(kc):
    c = complete(kc, "alpha_")
    assert c["status"] == "ok"
    assert {"alpha_beta", "alpha_gamma"} <= set(c["matches"])
    assert (c["cursor_start"], c["cursor_end"]) == (0, 6)

def test_attributes(kc):
    c = complete(kc, "os.pa")
    assert "path" in c["matches"] and "pardir" in c["matches"]
    assert (c["cursor_start"], c["cursor_end"]) == (3, 5)

def test_dict_keys(kc):
    c = complete(kc, "d['ke")
    assert {"key1", "key2"} <= set(c["matches"])
    assert (c["cursor_start"], c["cursor_end"]) == (3, 5)

def test_paths(kc, tmp_path):
    (tmp_path / "ipymini_probe.txt").write_text("x")
    code = f"open('{tmp_path}/ipymini_pr"
    c = complete(kc, code)
    assert any(m.endswith("ipymini_probe.txt") for m in c["matches"]), c["matches"]
    assert c["cursor_end"] == len(code) and code[c["cursor_start"]:].startswith(str(tmp_path)[:1])

def test_magics(kc):
    c = complete(kc, "%tim")
    assert {"%time", "%timeit"} <= set(c["matches"])
    assert (c["cursor_start"], c["cursor_end"]) == (0, 4)

def test_cursor_inside_multiline_cell(kc):
    "The cursor on the second line of three: only what is before it counts, positions are offsets into the whole cell."
    code = "x = 1\nalpha_ga\nprint(x)"
    pos = code.index("\nprint")
    c = complete(kc, code, pos)
    assert c["matches"] == ["alpha_gamma"]
    assert (c["cursor_start"], c["cursor_end"]) == (pos - len("alpha_ga"), pos)

def test_cursor_counts_code_points(kc):
    "Protocol 5.2+: `cursor_pos` and the reply's positions count unicode code points, so an emoji before the cursor is one."
    code = "s = '\U0001F600'; alpha_b"
    c = complete(kc, code)
    assert c["matches"] == ["alpha_beta"] and (c["cursor_start"], c["cursor_end"]) == (len(code) - 7, len(code))

def test_experimental_types(kc):
    c = complete(kc, "myf")
    types = c["metadata"][EXP]
    assert [t["text"] for t in types] == c["matches"] == ["myfunc"]
    t = types[0]
    assert set(t) == {"text", "type", "start", "end", "signature"}
    assert (t["type"], t["start"], t["end"]) == ("function", c["cursor_start"], c["cursor_end"])
    assert t["signature"] == "(a, b=2)"

def test_no_matches(kc):
    c = complete(kc, "zzz_no_such_name_")
    assert c["status"] == "ok" and c["matches"] == []
    assert c["cursor_start"] == c["cursor_end"] == len("zzz_no_such_name_")

def test_answered_while_a_cell_runs(kc, tmp_path):
    """Completion and inspection are answered while a cell blocks (reading a FIFO the test writes only afterwards). ipykernel
    queues them behind the cell, so a front end's tab completion freezes until the cell ends; ipymini answers them at once."""
    os.mkfifo(go := tmp_path / "go")
    mid = kc.execute(f"open({str(go)!r}).read()")
    try:
        t0 = time.monotonic()
        c = complete(kc, "alpha_b")
        i = request(kc, "inspect_request", code="myfunc", cursor_pos=6, detail_level=0)["content"]
        took = time.monotonic() - t0
    finally: go.write_text("go")  # the cell ends
    assert c["matches"] == ["alpha_beta"] and i["found"]
    assert took < 2.5, f"replies took {took:.1f}s"
    assert shell_reply(kc, mid)["content"]["status"] == "ok"

def test_bad_cursor_pos_gets_error_reply(kc):
    """A cursor past the end of the code, or negative, gets an error reply naming it. ipykernel's handler raises an
    AssertionError and sends no reply at all, so the front end waits forever; ipymini answers and keeps serving."""
    for pos in (100, -5):
        c = request(kc, "complete_request", code="x", cursor_pos=pos, timeout=10)["content"]
        assert c["status"] == "error" and c["ename"] == "ValueError" and "cursor_pos" in c["evalue"]
    assert complete(kc, "alpha_b")["matches"] == ["alpha_beta"]

def test_missing_fields(kc, is_ipymini):
    """No `code`: an error reply naming the field. No `cursor_pos`: complete at the end of the code. ipykernel raises
    KeyError inside its handler for either and sends no reply, so a client waiting for one would hang."""
    if not is_ipymini: pytest.skip("ipykernel sends no reply to a request missing fields")
    c = request(kc, "complete_request", cursor_pos=1, timeout=10)["content"]
    assert c["status"] == "error" and "code" in c["evalue"]
    c = request(kc, "complete_request", code="alpha_g", timeout=10)["content"]
    assert c["status"] == "ok" and c["matches"] == ["alpha_gamma"] and c["cursor_end"] == 7

def test_jedi_on_by_default(kc):
    reply,_ = run(kc, "", user_expressions=dict(j="get_ipython().Completer.use_jedi"))
    assert reply["user_expressions"]["j"]["data"]["text/plain"] == "True"

def test_env_flags_turn_off_jedi_and_types(kernel_name):
    "`IPYMINI_USE_JEDI=0` and `IPYMINI_EXPERIMENTAL_COMPLETIONS=0`, read at startup: plain matches, no typed metadata."
    if kernel_name != "ipymini": pytest.skip("ipymini's environment flags")
    env = {**os.environ, "IPYMINI_USE_JEDI": "0", "IPYMINI_EXPERIMENTAL_COMPLETIONS": "0"}
    with start_kernel(kernel_name, env=env) as (_,kc):
        reply,_ = run(kc, "alpha_beta = 1\nimport os", user_expressions=dict(j="get_ipython().Completer.use_jedi"))
        assert reply["user_expressions"]["j"]["data"]["text/plain"] == "False"
        c = complete(kc, "alpha_")
        assert c == dict(status="ok", matches=["alpha_beta"], cursor_start=0, cursor_end=6, metadata={})
        code = "x = os.pa"
        c = complete(kc, code)
        assert "x = os.path" in [code[:c["cursor_start"]] + m for m in c["matches"]]
        assert c["cursor_end"] == len(code) and c["metadata"] == {}

# is_complete: IPython's answers, which ipykernel passes on unchanged
cases = {"x = 1": "complete", "for i in range(3):": "incomplete", "def f():\n    if x:": "incomplete", "1 +": "invalid",
    "a = (": "incomplete", "x = [1,\n": "incomplete", "print('hi'": "incomplete", "x\\": "incomplete", "@": "invalid",
    "x = 1\n\n": "complete", "if True:\n    pass\n": "complete", "%time": "complete", "%time x = 1": "complete",
    "!ls": "complete", "%%time": "incomplete", "%%time\nx = 1": "incomplete", "x = 1\n\n\n": "complete", "def f(": "incomplete"}
indents = {"for i in range(3):": "    ", "def f():\n    if x:": "        ", "a = (": "", "%%time": ""}

def test_is_complete(kc):
    for code,status in cases.items():
        c = request(kc, "is_complete_request", code=code)["content"]
        assert c["status"] == status, (code, c)
        if status == "incomplete": assert "indent" in c
        else: assert "indent" not in c
        if code in indents: assert c["indent"] == indents[code], (code, c)

def test_is_complete_missing_code(kc, is_ipymini):
    "No `code`: an error reply. ipykernel raises KeyError inside its handler and sends no reply."
    if not is_ipymini: pytest.skip("ipykernel sends no reply to a request missing fields")
    c = request(kc, "is_complete_request", timeout=10)["content"]
    assert c["status"] == "error" and "code" in c["evalue"]
