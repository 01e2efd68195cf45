"history_request (tail, range, search) and %history, on a kernel with an IPython directory of its own, so the history is only ours."
import os, pytest
from kutils import run, request, text, start_kernel

@pytest.fixture(scope="module")
def ipdir(tmp_path_factory): return str(tmp_path_factory.mktemp("ipython"))

@pytest.fixture(scope="module")
def kernel(kernel_name, ipdir):
    "This module's kernel, its cells numbered from 1: `h1 = 1`, `h2 = 2`, `6*7`, `%time h1 = 1`, `h2 = 2`."
    with start_kernel(kernel_name, env={**os.environ, "IPYTHONDIR": ipdir}) as (km,kc):
        for code in ("h1 = 1", "h2 = 2", "6*7", "%time h1 = 1", "h2 = 2"): assert run(kc, code)[0]["status"] == "ok"
        yield km,kc

def history(kc, **kw): return request(kc, "history_request", **{"output": False, "raw": True, **kw})["content"]

def test_tail(kc):
    c = history(kc, hist_access_type="tail", n=2)
    assert c["status"] == "ok"
    assert [h[1:] for h in c["history"]] == [[4, "%time h1 = 1"], [5, "h2 = 2"]]
    assert len({h[0] for h in c["history"]}) == 1 and c["history"][0][0] >= 1  # the session number this kernel got

def test_range_with_output(kc):
    "Session 0 is the current one; outputs come back paired with their inputs."
    c = history(kc, hist_access_type="range", session=0, start=2, stop=4, output=True)
    assert c["history"] == [[0, 2, ["h2 = 2", None]], [0, 3, ["6*7", "42"]]]

def test_range_raw_and_transformed(kc):
    raw = history(kc, hist_access_type="range", session=0, start=4, stop=5, raw=True)["history"]
    done = history(kc, hist_access_type="range", session=0, start=4, stop=5, raw=False)["history"]
    assert raw == [[0, 4, "%time h1 = 1"]]
    assert done[0][2].startswith("get_ipython().run_line_magic('time'")

def test_search(kc):
    c = history(kc, hist_access_type="search", pattern="h? = *")
    assert [h[2] for h in c["history"]] == ["h1 = 1", "h2 = 2", "h2 = 2"]
    c = history(kc, hist_access_type="search", pattern="h? = *", unique=True)
    assert [h[2] for h in c["history"]] == ["h1 = 1", "h2 = 2"]
    c = history(kc, hist_access_type="search", pattern="h*", n=1)
    assert [h[1:] for h in c["history"]] == [[5, "h2 = 2"]]
    assert history(kc, hist_access_type="search", pattern="nothing*like*this")["history"] == []

def test_history_magic_in_a_cell(kc):
    reply,outs = run(kc, "%history -n 2-3")
    assert reply["status"] == "ok"
    out = text(outs)
    assert "h2 = 2" in out and "6*7" in out and "h1 = 1" not in out

def test_previous_session(kernel_name, ipdir, kc):
    "A new kernel on the same IPython directory finds the first kernel's cells as session -1, and in tail and search."
    run(kc, "marker_from_first = 1")
    with start_kernel(kernel_name, env={**os.environ, "IPYTHONDIR": ipdir}) as (_,kc2):
        c = history(kc2, hist_access_type="range", session=-1, start=1, stop=3)
        assert [h[1:] for h in c["history"]] == [[1, "h1 = 1"], [2, "h2 = 2"]]
        c = history(kc2, hist_access_type="search", pattern="marker_from_*")
        assert [h[2] for h in c["history"]] == ["marker_from_first = 1"]

def test_flags_default_when_missing(kc, is_ipymini):
    """`output` and `raw` left out default to False and True, as for `%history`. ipykernel's handler raises TypeError
    for the missing arguments and sends no reply, so the client hangs."""
    if not is_ipymini: pytest.skip("ipykernel sends no reply without output and raw")
    c = request(kc, "history_request", hist_access_type="tail", n=1, timeout=10)["content"]
    assert c["status"] == "ok" and len(c["history"]) == 1 and isinstance(c["history"][0][2], str)

def test_bad_access_type_or_missing_field(kc, is_ipymini):
    """An unknown `hist_access_type`, or none, gets an error reply naming it. ipykernel answers an unknown type with an
    empty `ok` history, which hides the client's mistake, and sends no reply when the field is missing."""
    if not is_ipymini: pytest.skip("ipykernel answers an unknown type with ok and a missing one not at all")
    c = request(kc, "history_request", hist_access_type="bogus", output=False, raw=True, timeout=10)["content"]
    assert c["status"] == "error" and "bogus" in c["evalue"]
    c = request(kc, "history_request", output=False, raw=True, timeout=10)["content"]
    assert c["status"] == "error" and "hist_access_type" in c["evalue"]
    assert history(kc, hist_access_type="tail", n=1)["status"] == "ok"
