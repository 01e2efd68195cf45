"inspect_request: IPython's mime bundle for the name at the cursor, detail levels 0 and 1, unknown names and bad input."
import re, pytest
from kutils import run, request

def inspect(kc, code, cursor_pos=None, detail_level=0, **kw):
    pos = len(code) if cursor_pos is None else cursor_pos
    return request(kc, "inspect_request", code=code, cursor_pos=pos, detail_level=detail_level, **kw)["content"]

def plain(c): return re.sub(r"\x1b\[[0-9;]*m", "", c["data"]["text/plain"])

@pytest.fixture(scope="module", autouse=True)
def names(kernel):
    reply,_ = run(kernel[1], "def myfunc(a, b=2):\n    'Add `a` and `b`.'\n    return a + b  # the body\nanswer = 42")
    assert reply["status"] == "ok"

def test_function_detail_0(kc):
    c = inspect(kc, "myfunc")
    assert c["status"] == "ok" and c["found"] is True and c["metadata"] == {}
    t = plain(c)
    assert "myfunc(a, b=2)" in t and "Add `a` and `b`." in t
    assert "the body" not in t

def test_function_detail_1_shows_source(kc):
    c = inspect(kc, "myfunc", detail_level=1)
    assert c["found"] is True
    assert "return a + b  # the body" in plain(c)

def test_cursor_position_picks_the_name(kc):
    "The name under the cursor, or the function whose call the cursor is in, is what gets inspected."
    code = "answer + 1\nmyfunc(1, "
    assert "int" in plain(inspect(kc, code, cursor_pos=3))
    assert "myfunc(a, b=2)" in plain(inspect(kc, code))
    assert "Add `a`" in plain(inspect(kc, "x = myfunc", cursor_pos=7))

def test_value_and_module_attribute(kc):
    assert "42" in plain(inspect(kc, "answer"))
    run(kc, "import os")
    c = inspect(kc, "os.path.join", detail_level=1)
    assert c["found"] and "join" in plain(c)

def test_unknown_name_not_found(kc):
    for code in ("no_such_name_here", "", "   ", "answer.no_such_attr"):
        c = inspect(kc, code)
        assert c == dict(status="ok", found=False, data={}, metadata={}), (code, c)

def test_html_when_the_html_pager_is_on(kc):
    "IPython also makes text/html; like ipykernel, the reply carries it only when `enable_html_pager` is set."
    assert "text/html" not in inspect(kc, "myfunc")["data"]
    run(kc, "get_ipython().enable_html_pager = True")
    try:
        c = inspect(kc, "myfunc")
        assert "myfunc" in c["data"]["text/html"] and "myfunc" in c["data"]["text/plain"]
    finally: run(kc, "get_ipython().enable_html_pager = False")

def test_bad_cursor_pos_gets_error_reply(kc):
    """A cursor outside the code gets an error reply naming `cursor_pos`, and the kernel keeps serving. ipykernel quietly
    inspects whatever token it finds near the bad position, which hides the client's bug."""
    c = request(kc, "inspect_request", code="answer", cursor_pos=99, timeout=10)["content"]
    assert c["status"] == "error" and c["ename"] == "ValueError" and "cursor_pos" in c["evalue"]
    assert inspect(kc, "answer")["found"]

def test_missing_fields(kc, is_ipymini):
    """No `code`: an error reply naming it; no `cursor_pos` or `detail_level`: the end of the code, level 0.
    ipykernel raises KeyError inside its handler for either and sends no reply."""
    if not is_ipymini: pytest.skip("ipykernel sends no reply to a request missing fields")
    c = request(kc, "inspect_request", cursor_pos=0, timeout=10)["content"]
    assert c["status"] == "error" and "code" in c["evalue"]
    c = request(kc, "inspect_request", code="myfunc", timeout=10)["content"]
    assert c["found"] and "Add `a`" in plain(c)
