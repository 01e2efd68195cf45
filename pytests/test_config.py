"The user's IPython set-up (issue 8): IPYTHONDIR, --profile, config files, startup files, extensions, magics, env and cwd."
import json, os, re, time
from contextlib import contextmanager
from pathlib import Path
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from kutils import run, start_kernel, text

def write(path, s):
    "Write `s` to `path` (parents made) and return the path."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(s)
    return path

def kenv(**kw): return dict(os.environ, **kw)
def out(kc, code):
    "stdout of `code`, which must run without error."
    reply,outs = run(kc, code)
    assert reply["status"] == "ok", reply
    return text(outs)

def results(outs): return [m["content"]["data"]["text/plain"] for m in outs if m["msg_type"] == "execute_result"]

EXT = '''
def load_ipython_extension(ip):
    ip.user_ns.setdefault("order", []).append("ext")
    ip.user_ns["ext_loads"] = ip.user_ns.get("ext_loads", 0) + 1
    ip.register_magic_function(lambda line: line[::-1], "line", "rev")
'''

@pytest.fixture(scope="module")
def work(kernel_name, tmp_path_factory):
    "A kernel started with `--profile=work` in a temporary IPYTHONDIR, a cwd of its own, an extension on PYTHONPATH and an env var."
    tmp = tmp_path_factory.mktemp("cfg")
    ipd,cwd,exts = tmp/"ipd",tmp/"cwd",tmp/"exts"
    prof = ipd/"profile_work"
    write(prof/"ipython_config.py", 'c.InteractiveShell.cache_size = 1234\nc.InteractiveShell.xmode = "Verbose"\n'
        'c.InteractiveShellApp.exec_lines = ["order.append(\'from ipython_config\')"]\n')
    write(prof/"ipython_kernel_config.py", 'c.InteractiveShellApp.extensions = ["cfgext"]\n'
        'c.InteractiveShellApp.exec_lines = ["order.append(\'exec_lines\')", "exec_line_var = 42"]\n'
        'c.IPKernelApp.exec_files = ["setup_file.py"]\nc.InteractiveShell.xmode = "Minimal"\nc.InteractiveShell.colors = "nocolor"\n'
        'c.InteractiveShell.ast_node_interactivity = "all"\nc.ZMQInteractiveShell.banner2 = "zmq"\nc.InteractiveShell.banner2 = "any"\n')
    write(prof/"startup"/"00-first.py", 'order.append("py")\nimport os\nstartup_cwd = os.getcwd()\n')
    write(prof/"startup"/"50-second.ipy", 'order.append("ipy")\nipy_pwd = %pwd\n')
    write(ipd/"profile_default"/"startup"/"00-wrong.py", "wrong_profile = True\n")
    write(cwd/"setup_file.py", 'order.append("exec_files")\n')
    write(exts/"cfgext.py", EXT)
    env = kenv(IPYTHONDIR=str(ipd), CFG_TEST_VAR="from-env", PYTHONPATH=os.pathsep.join([str(exts), os.environ.get("PYTHONPATH", "")]))
    with start_kernel(kernel_name, env=env, cwd=str(cwd), extra_arguments=["--profile=work"]) as (km,kc): yield kc,tmp

def test_setup_runs_in_ipython_order(work):
    "Extensions load first, then startup .py/.ipy files (sorted), exec_lines, exec_files: IPython's InteractiveShellApp order."
    kc,_ = work
    assert out(kc, "print(order)").strip() == "['ext', 'py', 'ipy', 'exec_lines', 'exec_files']"

def test_named_profile_in_ipythondir(work):
    kc,tmp = work
    got = out(kc, "ip = get_ipython()\nprint(ip.profile, ip.profile_dir.location, 'wrong_profile' in dir(), sep='|')").strip().split("|")
    assert got == ["work", str(tmp/"ipd"/"profile_work"), "False"]

def test_history_lives_in_the_profile(work):
    kc,tmp = work
    assert out(kc, "print(get_ipython().history_manager.hist_file)").strip() == str(tmp/"ipd"/"profile_work"/"history.sqlite")

def test_env_and_cwd_from_start_kernel(work):
    "The cell and the startup files see the launcher's env and cwd."
    kc,tmp = work
    got = out(kc, "import os\nprint(os.getcwd(), os.environ['CFG_TEST_VAR'], startup_cwd, ipy_pwd, sep='|')").strip().split("|")
    cwd = os.path.realpath(tmp/"cwd")
    assert [os.path.realpath(got[0]), got[1], os.path.realpath(got[2]), os.path.realpath(got[3])] == [cwd, "from-env", cwd, cwd]

def test_kernel_config_beats_ipython_config(work):
    "`ipython_kernel_config.py` overrides `ipython_config.py` (xmode Minimal, not Verbose); settings only in the latter still apply."
    kc,_ = work
    reply,outs = run(kc, "1/0")
    tb = "\n".join(reply["traceback"])
    assert reply["ename"] == "ZeroDivisionError" and "ZeroDivisionError" in tb
    assert "Traceback" not in tb and "1/0" not in tb  # Minimal: the exception line alone
    assert "\x1b[" not in tb  # colors = nocolor
    assert out(kc, "print(get_ipython().displayhook.cache_size)").strip() == "1234"

def test_settings_for_ipykernels_shell_class(work):
    "`ZMQInteractiveShell.*` settings apply, and beat `InteractiveShell.*` ones, as they do in ipykernel."
    kc,_ = work
    assert out(kc, "print(get_ipython().banner2)").strip() == "zmq"

def test_ast_node_interactivity_and_config_magic(work):
    "`ast_node_interactivity='all'` from the config file shows every expression; `%config` changes it for later cells."
    kc,_ = work
    assert results(run(kc, "1\n2")[1]) == ["1", "2"]
    assert run(kc, "%config InteractiveShell.ast_node_interactivity = 'last_expr'")[0]["status"] == "ok"
    assert results(run(kc, "1\n2")[1]) == ["2"]
    run(kc, "%config InteractiveShell.ast_node_interactivity = 'all'")

def test_xmode_magic(work):
    "`%xmode` switches the traceback mode (IPython reads `InteractiveShell.xmode` only at start, so `%config` can't)."
    kc,_ = work
    run(kc, "%xmode Plain")
    reply,_ = run(kc, "1/0")
    assert "Traceback" in "\n".join(reply["traceback"])
    run(kc, "%xmode Minimal")

def test_extension_magic_and_reload_ext(work):
    kc,_ = work
    assert results(run(kc, "%rev abc")[1])[-1] == "'cba'"
    assert out(kc, "print(ext_loads)").strip() == "1"
    assert "already loaded" in out(kc, "%load_ext cfgext")
    assert out(kc, "%reload_ext cfgext\nprint(ext_loads)").strip() == "2"

def test_startup_names_hidden_from_who(work):
    "Names made at startup are hidden from `%who`, as `hide_initial_ns` asks; the user's own are not."
    kc,_ = work
    assert out(kc, "mine = 1\nprint(sorted(set(get_ipython().run_line_magic('who_ls', '')) & {'mine', 'exec_line_var', 'startup_cwd'}))").strip() == "['mine']"

def test_storemagic_loaded(work):
    "storemagic is one of IPython's default extensions, so `%store` works as in ipykernel."
    kc,_ = work
    assert out(kc, "print('store' in get_ipython().magics_manager.magics['line'])").strip() == "True"

def test_autoreload(work):
    kc,tmp = work
    mod = write(tmp/"cwd"/"ar_mod.py", "def f(): return 1\n")
    assert "1" in out(kc, "%load_ext autoreload\n%autoreload 2\nimport ar_mod\nprint(ar_mod.f())")
    write(mod, "def f(): return 2\n")
    t = time.time() + 10
    os.utime(mod, (t, t))  # a newer mtime than the first version, however coarse the file system's clock
    assert out(kc, "print(ar_mod.f())").strip() == "2"

@contextmanager
def spec_kernel(base, tmp, env):
    "Start a copy of kernelspec `base` whose kernel.json carries `env`, from a kernel dir of its own under `tmp`."
    spec = KernelSpecManager().get_kernel_spec(base)
    d = tmp/"kernels"/"cfgtest"
    write(d/"kernel.json", json.dumps(dict(argv=spec.argv, display_name="cfgtest", language="python", env=env)))
    km = KernelManager(kernel_name="cfgtest", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp/"kernels")]))
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)

def test_kernelspec_env_and_default_profile(kernel_name, tmp_path):
    "A kernelspec's `env` reaches the cell; its IPYTHONDIR picks the default profile and its startup files."
    ipd = tmp_path/"ipd"
    write(ipd/"profile_default"/"startup"/"00-a.py", "from_default_startup = 7\n")
    with spec_kernel(kernel_name, tmp_path, dict(IPYTHONDIR=str(ipd), CFG_SPEC_VAR="from-spec")) as kc:
        code = "import os\nip = get_ipython()\nprint(os.environ['CFG_SPEC_VAR'], from_default_startup, ip.profile, ip.profile_dir.location, sep='|')"
        assert out(kc, code).strip().split("|") == ["from-spec", "7", "default", str(ipd/"profile_default")]

@contextmanager
def logged_kernel(kernel_name, tmp, args=()):
    "A kernel with IPYTHONDIR `tmp/ipd`, command-line `args`, and its stderr in `tmp/stderr.txt`."
    with open(tmp/"stderr.txt", "w") as err, start_kernel(kernel_name, env=kenv(IPYTHONDIR=str(tmp/"ipd")), stderr=err,
        extra_arguments=list(args)) as (km,kc): yield kc

@pytest.fixture(scope="module")
def broken(kernel_name, tmp_path_factory):
    "A kernel whose profile is broken every way: a startup file raises, ipython_config.py raises, an extension and an exec_line fail."
    tmp = tmp_path_factory.mktemp("broken")
    prof = tmp/"ipd"/"profile_default"
    write(prof/"startup"/"00-bad.py", "x = 1\nraise ValueError('boom-startup-xyz')\n")
    write(prof/"startup"/"10-good.py", "after_bad = True\n")
    write(prof/"ipython_config.py", "raise RuntimeError('boom-config-xyz')\n")
    write(prof/"ipython_kernel_config.py", 'c.InteractiveShellApp.extensions = ["no_such_extension_xyz"]\n'
        'c.InteractiveShellApp.exec_lines = ["1/0", "after_exec_error = True"]\n')
    with logged_kernel(kernel_name, tmp) as kc: yield kc,tmp/"stderr.txt"

def test_broken_setup_still_starts(broken):
    "The kernel answers cells, and later exec_lines run after one that raised."
    kc,_ = broken
    assert out(kc, "print(after_exec_error, x)").strip() == "True 1"

def test_startup_traceback_on_stderr(broken):
    """A startup file that raises prints its traceback to the kernel's stderr, naming the file and the line.
    ipykernel fails this: it writes only 'Unknown error in handling startup files' there and sends the traceback as an IOPub
    error with no parent, before any client has subscribed, so nobody ever sees what went wrong."""
    kc,err = broken
    out(kc, "pass")
    s = err.read_text()
    assert "boom-startup-xyz" in s and "00-bad.py" in s and "ValueError" in s

def test_later_startup_files_still_run(broken):
    """Each startup file runs on its own, so one broken file doesn't silently disable the ones after it.
    ipykernel (IPython's InteractiveShellApp) stops at the first file that raises and skips the rest."""
    kc,_ = broken
    assert out(kc, "print(after_bad)").strip() == "True"

def test_config_and_extension_errors_on_stderr(broken):
    kc,err = broken
    out(kc, "pass")
    s = err.read_text()
    assert "boom-config-xyz" in s and "no_such_extension_xyz" in s

def test_exec_lines_error_on_stderr(broken):
    """An exec_line that raises shows its traceback on the kernel's stderr.
    ipykernel fails this: run_cell sends the traceback to IOPub before any client listens, and nothing reaches stderr."""
    kc,err = broken
    out(kc, "pass")
    assert re.search(r"ZeroDivisionError", err.read_text())

def test_cli_options(kernel_name, tmp_path):
    """IPython's command-line options in a kernelspec's argv apply (`--Class.trait=value`, `--ext`, `--cache-size`, `-c`);
    unknown ones and a missing `--profile` are warned about on stderr, and the kernel starts with the default profile.
    ipykernel fails this: an unknown flag or profile makes it exit at start, so the front end sees a kernel that dies on every restart."""
    args = ["--no-such-flag", "--weird=1", "--IPKernelApp.no_such_trait=3", "stray", "--InteractiveShell.xmode=Plain", "--ext=autoreload",
        "--cache-size=777", "-c", "from_cli_code = 5", "--profile=no_such_profile"]
    with logged_kernel(kernel_name, tmp_path, args) as kc:
        code = ("ip = get_ipython()\nprint(ip.InteractiveTB.mode, 'autoreload' in ip.magics_manager.magics['line'], ip.displayhook.cache_size, "
            "from_cli_code, ip.profile, sep='|')")
        assert out(kc, code).strip().split("|") == ["Plain", "True", "777", "5", "default"]
    s = (tmp_path/"stderr.txt").read_text()
    assert "no-such-flag" in s and "no_such_profile" in s

def test_bad_config_values_are_skipped(kernel_name, tmp_path):
    """A setting its trait rejects is skipped with a warning on stderr; the good ones beside it still apply.
    ipykernel fails this: traitlets raises while the shell is built from the config, and the kernel dies at start."""
    write(tmp_path/"ipd"/"profile_default"/"ipython_kernel_config.py", 'c.InteractiveShell.xmode = "NoSuchMode"\n'
        'c.InteractiveShell.cache_size = 555\nc.IPKernelApp.exec_lines = 3\nc.InteractiveShellApp.exec_lines = ["ok_line = 1"]\n')
    with logged_kernel(kernel_name, tmp_path, ["--cache-size=notanumber", "--InteractiveShell.colors=nocolor"]) as kc:
        assert out(kc, "ip = get_ipython()\nprint(ip.displayhook.cache_size, ip.colors.lower(), ok_line)").strip() == "555 nocolor 1"
    s = (tmp_path/"stderr.txt").read_text()
    assert "NoSuchMode" in s and "notanumber" in s
