"""CLI: `python -m ipymini -f CONN [--debug] [--profile=NAME] [--Class.trait=value ...]` runs the kernel;
`python -m ipymini install [--user|--sys-prefix|--prefix P] [--gateway eg|gp [--remote-hosts H,...] [--python PATH]]` writes the
kernelspec: with `--gateway`, one that Enterprise Gateway (eg) or gateway_provisioners (gp) starts over SSH with `ipymini.launcher`."""
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
        if args.gateway: gateway_spec(spec, args)
        for f in ("logo-32x32.png", "logo-64x64.png"):
            if os.path.exists(p := os.path.join(src, f)): shutil.copy(p, d)
        with open(os.path.join(d, "kernel.json"), "w") as f: json.dump(spec, f, indent=1)
        prefix = sys.prefix if args.sys_prefix else args.prefix
        dest = KernelSpecManager().install_kernel_spec(d, args.name, user=args.user, prefix=prefix)
    print(f"Installed kernelspec {args.name} in {dest}")

def gateway_spec(spec, args):
    "Make `spec` one for a gateway's SSH launch: `ipymini.launcher` with the gateway's placeholders, and its metadata stanza."
    hosts = [h for h in (args.remote_hosts or "").split(",") if h]
    names = "kernel-id response-address public-key port-range".split()
    if args.gateway == "eg":  # EG spells its options --RemoteProcessProxy.<name>; 3.x has no CurveZMQ
        opts = [o for n in names for o in (f"--RemoteProcessProxy.{n}", f"{{{n.replace('-', '_')}}}")]
        proxy = dict(class_name="enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy",
            config=dict(remote_hosts=",".join(hosts)) if hosts else {})
        spec["metadata"] = dict(debugger=True, process_proxy=proxy)
    else:  # GP fills {transport_encryption} with auto|required when it asks for CurveZMQ keys, else with "" (so: last)
        opts = [o for n in names + ["transport-encryption"] for o in (f"--{n}", f"{{{n.replace('-', '_')}}}")]
        prov = dict(provisioner_name="distributed-provisioner", config=dict(remote_hosts=hosts) if hosts else {})
        spec["metadata"] = dict(debugger=True, supported_encryption=["curve"], kernel_provisioner=prov)
    spec["argv"] = [args.python or sys.executable, "-Xfrozen_modules=off", "-m", "ipymini.launcher", *opts]

def logs(debug=False):
    "Our logger on a dup of fd 2 (logs stay on the terminal after fd 2 is captured); returns that stream."
    log_stream = os.fdopen(os.dup(2), "w", buffering=1)
    # only our own logger: the root logger stays the user's, so `logging.warning(...)` in a cell shows in the cell, as in ipykernel
    h = logging.StreamHandler(log_stream)
    h.setFormatter(logging.Formatter("[%(name)s %(levelname)s %(asctime)s] %(message)s"))
    log = logging.getLogger("ipymini")
    log.addHandler(h)
    log.setLevel(logging.DEBUG if debug else logging.WARNING)
    log.propagate = False
    if debug: os.environ["IPYMINI_DEBUG"] = "1"
    return log_stream

def serve(conn:dict, log_stream, source="the connection info", conn_file=None):
    "Run the kernel on `conn` (a connection file's dict, read from `conn_file` if any) until it shuts down, then leave the process."
    from .kernel import Kernel
    try: k = Kernel(conn)
    except ValueError as e: sys.exit(f"ipymini: cannot start with {source}: {e}")
    k.log_stream,k.conn_file = log_stream,conn_file  # the death report's record is keyed on the file (None: no file, no record)
    k.start()
    log_stream.flush()
    os._exit(0)  # everything is flushed and closed; skip waiting on library threads at interpreter exit

def run(conn_file, debug=False):
    log_stream = logs(debug)
    with open(conn_file) as f: conn = json.load(f)
    serve(conn, log_stream, conn_file, os.path.abspath(conn_file))

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
        p.add_argument("--gateway", choices=("eg", "gp"), help="a spec for Enterprise Gateway or gateway_provisioners (SSH)")
        p.add_argument("--remote-hosts", help="comma-separated hosts the gateway starts this kernel on (default: the gateway's own list)")
        p.add_argument("--python", help="the remote hosts' Python with ipymini[gateway] installed (default: this one)")
        return install(p.parse_args(argv[1:]))
    conn,debug,rest = parse_run(argv)
    if conn is None: sys.exit("usage: python -m ipymini -f CONNECTION_FILE [--debug] [IPython options]\n"
        "       python -m ipymini install [--user|--sys-prefix|--prefix P] [--name N] [--display-name D] [--gateway eg|gp ...]")
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
