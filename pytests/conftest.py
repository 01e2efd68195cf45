"Shared fixtures: `--kernel NAME` picks the kernelspec under test (default ipymini), so the suite runs on ipykernel too."
import os, pytest
from kutils import start_kernel

def pytest_addoption(parser):
    parser.addoption("--kernel", default=os.environ.get("IPYMINI_TEST_KERNEL", "ipymini"), help="kernelspec name to test")

@pytest.fixture(scope="session")
def kernel_name(request): return request.config.getoption("--kernel")

@pytest.fixture(scope="module")
def kernel(kernel_name):
    "One kernel per test module: `(km, kc)`."
    with start_kernel(kernel_name) as (km,kc): yield km,kc

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
