"Shared fixtures: `--kernel NAME` picks the kernelspec under test (default ipymini), so the suite runs on ipykernel too."
import os, queue, pytest
from kutils import start_kernel, run, drain

def pytest_addoption(parser):
    parser.addoption("--kernel", default=os.environ.get("IPYMINI_TEST_KERNEL", "ipymini"), help="kernelspec name to test")

@pytest.fixture(scope="session")
def kernel_name(request): return request.config.getoption("--kernel")

@pytest.fixture(scope="module")
def kernel(kernel_name):
    "One kernel per test module: `(km, kc)`."
    with start_kernel(kernel_name) as (km,kc): yield km,kc

@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.failed: item.failed_here = True
    return rep

@pytest.fixture(autouse=True)
def fresh_after_failure(request):
    """After a failed test the module's kernel must still run a cell within 10 s, or it is restarted for the next test: a
    kernel left stuck (a cell that never ended, output that never stops) would fail every later test of the module too,
    each only after a full timeout. A kernel that still works keeps its state (a rerun may need it)."""
    yield
    if not getattr(request.node, "failed_here", False) or "kernel" not in request.fixturenames: return
    km,kc = request.getfixturevalue("kernel")
    try:
        if run(kc, "pass", timeout=10)[0]["status"] == "ok": return
    except queue.Empty: pass
    km.restart_kernel(now=True)
    kc.__dict__.pop("iopub_stash", None), kc.__dict__.pop("early_replies", None)
    kc.wait_for_ready(timeout=60)
    run(kc, "pass")  # takes the report of how the last kernel ended, which a test's first cell would otherwise see
    drain(kc)

@pytest.fixture
def kc(kernel): return kernel[1]

@pytest.fixture
def km(kernel): return kernel[0]

@pytest.fixture
def is_ipymini(kernel_name): return kernel_name == "ipymini"

@pytest.fixture
def differs(request, kernel_name):
    "`differs(reason)`: this test is expected to fail on ipykernel, for `reason` (the docstring says why ipymini is right)."
    def mark(reason):
        if kernel_name != "ipymini": request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
    return mark
