"`python -m ipymini install`: the kernelspec lands where Jupyter looks, naming this interpreter; the CLI's usage errors."
import json, os, subprocess, sys, pytest

def install(*args, **env):
    return subprocess.run([sys.executable, "-m", "ipymini", "install", *args], capture_output=True, text=True,
        env={**os.environ, **env}, timeout=60)

def test_install_prefix(tmp_path):
    r = install("--prefix", str(tmp_path))
    assert r.returncode == 0, r.stderr
    spec = json.loads((tmp_path / "share/jupyter/kernels/ipymini/kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and spec["argv"][-2:] == ["-f", "{connection_file}"]
    assert spec["interrupt_mode"] == "signal" and spec["language"] == "python"
    found = subprocess.run([sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"], capture_output=True, text=True,
        env={**os.environ, "JUPYTER_PATH": str(tmp_path / "share/jupyter")}, timeout=60)
    assert json.loads(found.stdout)["kernelspecs"]["ipymini"]["resource_dir"].startswith(str(tmp_path))

def test_install_user(tmp_path):
    r = install("--user", "--name", "ipymini-test", HOME=str(tmp_path), JUPYTER_DATA_DIR=str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data/kernels/ipymini-test/kernel.json").exists()

def test_run_without_connection_file_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "ipymini"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "usage" in r.stderr
