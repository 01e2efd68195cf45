"`python -m ipymini install`: the kernelspec lands where Jupyter looks, naming this interpreter; the CLI's usage errors."
import json, os, subprocess, sys

def install(*args, **env):
    return subprocess.run([sys.executable, "-m", "ipymini", "install", *args], capture_output=True, text=True,
        env={**os.environ, **env}, timeout=60)

def test_install_prefix(tmp_path):
    r = install("--prefix", str(tmp_path))
    assert r.returncode == 0, r.stderr
    spec = json.loads((tmp_path / "share/jupyter/kernels/ipymini/kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and spec["argv"][-2:] == ["-f", "{connection_file}"]
    assert spec["interrupt_mode"] == "signal" and spec["language"] == "python"
    assert spec["kernel_protocol_version"] == "5.5"
    assert spec["metadata"] == dict(debugger=True, supported_encryption=["curve"])
    for n in (32, 64):  # the project's own logos, as PNGs of their size
        png = (tmp_path / f"share/jupyter/kernels/ipymini/logo-{n}x{n}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[16:24] == n.to_bytes(4, "big")*2
    found = subprocess.run([sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"], capture_output=True, text=True,
        env={**os.environ, "JUPYTER_PATH": str(tmp_path / "share/jupyter")}, timeout=60)
    assert json.loads(found.stdout)["kernelspecs"]["ipymini"]["resource_dir"].startswith(str(tmp_path))

def test_repo_kernelspec_matches():
    "The kernelspec in share/ (what a wheel installs) declares the same protocol version and metadata."
    spec = json.loads(open(os.path.join(os.path.dirname(__file__), "..", "share/jupyter/kernels/ipymini/kernel.json")).read())
    assert spec["kernel_protocol_version"] == "5.5" and spec["metadata"] == dict(debugger=True, supported_encryption=["curve"])

def test_install_user(tmp_path):
    r = install("--user", "--name", "ipymini-test", HOME=str(tmp_path), JUPYTER_DATA_DIR=str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data/kernels/ipymini-test/kernel.json").exists()

def test_run_without_connection_file_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "ipymini"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "usage" in r.stderr
