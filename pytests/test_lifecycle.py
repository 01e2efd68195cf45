"The kernel as a process: SIGTERM, child processes ended at shutdown and restart, parent death, usage, logging, stack dumps."
import os, signal, time, pytest
from kutils import gone, orphaned_kernel, run, request, text, start_kernel

pytestmark = pytest.mark.slow

def spawn_sleep(kc):
    _,outs = run(kc, "import subprocess; p = subprocess.Popen(['sleep', '1000']); print(p.pid)")
    return int(text(outs))

def test_children_end_at_shutdown(kernel_name):
    with start_kernel(kernel_name) as (km,kc):
        pid = spawn_sleep(kc)
        t = time.monotonic()
        request(kc, "shutdown_request", "control", restart=False)
        assert gone(pid, 5), "child sleep process still running after shutdown"
        took = time.monotonic() - t
    if kernel_name == "ipymini": assert took < 2

def test_children_end_at_restart(kernel_name):
    with start_kernel(kernel_name) as (km,kc):
        pid = spawn_sleep(kc)
        km.restart_kernel(now=False)
        assert gone(pid, 10)
        kc.wait_for_ready(timeout=60)
        assert run(kc, "1")[0]["status"] == "ok"

def test_sigterm_exits_cleanly(kernel_name):
    "SIGTERM is a shutdown: the kernel exits and so do its children. ipykernel 7 leaves the `sleep` child running."
    with start_kernel(kernel_name) as (km,kc):
        child = spawn_sleep(kc)
        pid = km.provisioner.process.pid
        os.kill(pid, signal.SIGTERM)
        assert gone(pid, 10)
        assert gone(child, 5)

def test_sigterm_during_a_busy_cell(kernel_name):
    with start_kernel(kernel_name) as (km,kc):
        kc.execute("while True: pass")
        time.sleep(0.5)
        pid = km.provisioner.process.pid
        os.kill(pid, signal.SIGTERM)
        assert gone(pid, 10)

def test_exits_when_parent_dies(kernel_name, tmp_path):
    "A kernel whose launcher is SIGKILLed (JPY_PARENT_PID) exits by itself."
    with orphaned_kernel(kernel_name, tmp_path) as kpid: assert gone(kpid, 10), "kernel still running after its parent died"

def test_usage_request(kc):
    c = request(kc, "usage_request", "control")["content"]
    assert c["pid"] > 0 and c["hostname"] and c["cpu_count"] >= 1
    assert c["kernel_memory"] > 0 and "total" in c["host_virtual_memory"]

def test_debug_log_and_stack_dump(is_ipymini, tmp_path):
    if not is_ipymini: pytest.skip("ipymini's IPYMINI_DEBUG flag and SIGUSR1 dump")
    with open(tmp_path / "err.txt", "w") as err:
        with start_kernel("ipymini", env=dict(os.environ, IPYMINI_DEBUG="1"), stderr=err) as (km,kc):
            run(kc, "1")
            os.kill(km.provisioner.process.pid, signal.SIGUSR1)
            assert run(kc, "2")[0]["status"] == "ok"
    log = (tmp_path / "err.txt").read_text()
    assert "in shell execute_request" in log and "out execute_reply" in log
    assert "Thread ipymini-shell" in log and "Thread MainThread" in log
