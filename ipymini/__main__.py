"""CLI: `python -m ipymini -f CONN [--debug] [--profile=NAME] [--Class.trait=value ...]` runs the kernel;
`python -m ipymini install [--user|--sys-prefix|--prefix P]` writes the kernelspec."""
import json, logging, os, sys

def install(args):
    "Write the kernelspec, with argv naming this interpreter, where jupyter looks for it."
    import shutil, tempfile
    from jupyter_client.kernelspec import KernelSpecManager
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "share", "jupyter", "kernels", "ipymini")
    with tempfile.TemporaryDirectory() as d:
        spec = dict(argv=[sys.executable, "-Xfrozen_modules=off", "-m", "ipymini", "-f", "{connection_file}"],
            display_name=args.display_name, language="python", interrupt_mode="signal", kernel_protocol_version="5.5",
            metadata=dict(debugger=True, supported_encryption=["curve"]))
        for f in ("logo-32x32.png", "logo-64x64.png"):
            if os.path.exists(p := os.path.join(src, f)): shutil.copy(p, d)
        with open(os.path.join(d, "kernel.json"), "w") as f: json.dump(spec, f, indent=1)
        prefix = sys.prefix if args.sys_prefix else args.prefix
        dest = KernelSpecManager().install_kernel_spec(d, args.name, user=args.user, prefix=prefix)
    print(f"Installed kernelspec {args.name} in {dest}")

def run(conn_file, debug=False):
    log_stream = os.fdopen(os.dup(2), "w", buffering=1)  # logs stay on the terminal after fd 2 is captured
    # only our own logger: the root logger stays the user's, so `logging.warning(...)` in a cell shows in the cell, as in ipykernel
    h = logging.StreamHandler(log_stream)
    h.setFormatter(logging.Formatter("[%(name)s %(levelname)s %(asctime)s] %(message)s"))
    log = logging.getLogger("ipymini")
    log.addHandler(h)
    log.setLevel(logging.DEBUG if debug else logging.WARNING)
    log.propagate = False
    if debug: os.environ["IPYMINI_DEBUG"] = "1"
    from .kernel import Kernel
    with open(conn_file) as f: conn = json.load(f)
    try: k = Kernel(conn)
    except ValueError as e: sys.exit(f"ipymini: cannot start with {conn_file}: {e}")
    k.log_stream,k.conn_file = log_stream,os.path.abspath(conn_file)
    k.start()
    log_stream.flush()
    os._exit(0)  # everything is flushed and closed; skip waiting on library threads at interpreter exit

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["install"]:
        import argparse
        p = argparse.ArgumentParser(prog="python -m ipymini install")
        p.add_argument("--user", action="store_true")
        p.add_argument("--sys-prefix", action="store_true")
        p.add_argument("--prefix")
        p.add_argument("--name", default="ipymini")
        p.add_argument("--display-name", default="Python 3 (ipymini)")
        return install(p.parse_args(argv[1:]))
    conn,debug,rest = parse_run(argv)
    if conn is None: sys.exit("usage: python -m ipymini -f CONNECTION_FILE [--debug] [IPython options]\n"
        "       python -m ipymini install [--user|--sys-prefix|--prefix P] [--name N] [--display-name D]")
    from . import profile
    profile.argv = rest  # IPython's options (--profile, --ext, --InteractiveShell.xmode=..., ...), read when the shell is built
    from .procs import env_flag
    run(conn, debug or env_flag("IPYMINI_DEBUG", False))

def parse_run(argv) -> tuple:
    "`(connection file, debug, other args)`; by hand, since argparse costs milliseconds before the first reply."
    conn,debug,rest,it = None,False,[],iter(argv)
    for a in it:
        if a in ("-f", "--connection-file", "--f"): conn = next(it, None)
        elif a.startswith(("-f=", "--f=", "--connection-file=")): conn = a.split("=", 1)[1]
        elif a == "--debug": debug = True
        else: rest.append(a)
    return conn,debug,rest

if __name__ == "__main__": main()
