"""multiprocessing from a cell under each start method (3.14 made `forkserver` Linux's default, 3.10-3.13 had `fork`):
pools work with functions a child can import, a cell's own function works under `fork`, and under forkserver/spawn the
workers' error is shown and an interrupt ends the stuck map, as on ipykernel. The same on every Python 3.10-3.15."""
import os, pytest
from kutils import run, text, wait_msg, shell_reply, start_kernel, TIMEOUT

@pytest.fixture(scope="module")
def kernel(kernel_name):
    "Without PYTEST_CURRENT_TEST, which makes ipykernel leave fd output (the workers' errors) on the terminal."
    with start_kernel(kernel_name, env={k: v for k,v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}) as (km,kc): yield km,kc

def ok(kc, code):
    reply,outs = run(kc, code, timeout=30)
    assert reply["status"] == "ok", reply
    return text(outs)

def test_pools_under_each_start_method(kc):
    ok(kc, "import multiprocessing as mp\nfrom concurrent.futures import ProcessPoolExecutor\ndef sq(x): return x*x")
    for how in ["fork", "forkserver", "spawn"]:
        assert ok(kc, f"with mp.get_context('{how}').Pool(2) as p: print(p.map(abs, [-1, -2, -3]))") == "[1, 2, 3]\n", how
    assert ok(kc, "with mp.get_context('fork').Pool(2) as p: print(p.map(sq, range(4)))") == "[0, 1, 4, 9]\n"
    assert ok(kc, "with ProcessPoolExecutor(2) as ex: print(list(ex.map(abs, [-4, 5])))") == "[4, 5]\n"  # the default method

@pytest.mark.slow
def test_cell_function_in_a_forkserver_child(kc, km):
    """A fresh child (forkserver; spawn likewise) cannot import a cell's function from `__main__`: its workers' AttributeError reaches
    the cell's stderr while `map` waits for results that never come (CPython's Pool replaces the dead workers), the same
    as in ipykernel; an interrupt ends the cell and the kernel goes on."""
    ok(kc, "import multiprocessing as mp\ndef cube(x): return x**3")
    mid = kc.execute("with mp.get_context('forkserver').Pool(2) as p: p.map(cube, range(4))")
    wait_msg(kc, lambda m: m["parent_header"].get("msg_id") == mid and m["msg_type"] == "stream" and "cube" in m["content"]["text"], 20)
    km.interrupt_kernel()
    reply = shell_reply(kc, mid, timeout=min(TIMEOUT, 10))["content"]
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
    assert ok(kc, "print(1+1)") == "2\n"
