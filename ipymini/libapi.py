"ipykernel's Python-side API, for the libraries that reach for it: the kernel facade, `ipykernel.*` stand-ins, kernel magics."
import json, os, sys, threading, types
from .capture import SUB, current_parent, main_parent, serving
from .session import Session, pack

launcher = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ipykernel_launcher.py")
comm_msgs = {"comm_open", "comm_msg", "comm_close"}
version_info = (7, 1, 0)  # the ipykernel whose Python API this follows (per-thread parents, the comm package); ipywidgets reads it

class IOPubSocket:
    "`kernel.iopub_socket`: what `kernel.session.send` takes to publish on IOPub (the real socket belongs to its thread)."
    def __init__(self, ch): self.ch = ch
    def __repr__(self): return "<ipymini IOPub>"

class APISession(Session):
    "The kernel's Session, with jupyter_client's `send(stream, msg_or_type, ...)` for libraries (ipyparallel relays comms with it)."
    def send(self, stream, msg_or_type, content=None, parent=None, ident=None, buffers=None, track=False, header=None, metadata=None):
        "Publish on IOPub when `stream` is `kernel.iopub_socket`, else send on `stream` (a zmq socket of the caller's own)."
        msg = msg_or_type if isinstance(msg_or_type, dict) else self.msg(msg_or_type, content, parent, metadata)
        if header: msg["header"] = header
        buffers = list(buffers or msg.get("buffers") or ())
        if isinstance(stream, IOPubSocket):
            pack(msg["content"]), pack(msg["metadata"])  # here, so unsendable content raises in the caller, not on IOPub's thread
            stream.ch.pub(msg["header"]["msg_type"], msg["content"], buffers=buffers, parent=dict(header=msg["parent_header"]),
                metadata=msg["metadata"])
        else: stream.send_multipart(self.serialize({**msg, "buffers": buffers}, [ident] if isinstance(ident, bytes) else list(ident or ())))
        return msg

class KernelAPI:
    "What libraries use on `get_ipython().kernel` (README's API table says who calls what); `Kernel` inherits it."
    @property
    def shell(self): return None if self.bridge is None else self.bridge.ip

    def get_parent(self, channel=None):
        "The request being served here, whichever `channel` is named; ipywidgets' Output widget reads it to capture output from comm callbacks."
        return current_parent()
    def set_parent(self, ident, parent, channel="shell"):
        "Output from here on belongs to `parent`; `ident` is unused: a request keeps its client's routing ids for input()."
        self.shell.set_parent(parent)
    @property
    def _parent_ident(self): return dict(shell=(current_parent() or {}).get("idents", []), control=b"")

    @property
    def shell_handlers(self):
        "A copy of the dispatch table: ipykernel's handlers take `(stream, idents, msg)`, so one a library swaps in (jupyter-ui-poll) is not used."
        return dict(self.handlers)

    def do_one_iteration(self):
        """jupyter-ui-poll's `poll()`, called while a cell blocks: run the oldest comm message waiting for this cell's subshell now,
        parented to that message as usual. Execute requests stay queued, in order, for after the cell."""
        sub = self.subs.get(SUB.get()) or self.subs.parent
        if (req := sub.pending(lambda r: getattr(r, "msg_type", None) in comm_msgs)) is None: return
        home = main_parent[0]
        try:
            with serving(req.msg), self.busy(req.msg):
                if not self.missing(req): getattr(self.comm_manager, req.msg_type)(None, None, req.msg)
        finally: main_parent[0] = home

def kernel_magics():
    "ipykernel's kernel magics (`%connect_info`, `%qtconsole`, `%less`/`%more`, `%man`, `%clear`, `%autosave`, `%subshell`, `%edit`)."
    from IPython.core import page
    from IPython.core.error import UsageError
    from IPython.core.magic import Magics, line_magic, magics_class

    @magics_class
    class KernelMagics(Magics):
        @line_magic
        def connect_info(self, arg_s):
            "Print this kernel's connection info, and how to connect another client (`jupyter console --existing`) to it."
            k = self.shell.kernel
            cf = getattr(k, "connection_file", None) or "<connection file>"
            from jupyter_core.paths import jupyter_runtime_dir
            name = os.path.basename(cf) if os.path.dirname(cf) == jupyter_runtime_dir() else cf
            print(json.dumps(k.conn, indent=2) + "\n")
            print(f"To connect another client, save the JSON above in a file and run:\n    $> jupyter <app> --existing <file>\n"
                f"or, on this machine:\n    $> jupyter <app> --existing {name}\nor, if this is the newest kernel here, just:\n    $> jupyter <app> --existing")

        @line_magic
        def qtconsole(self, arg_s):
            "Open a Qt console on this kernel (needs the `qtconsole` package)."
            import importlib.util, shlex, subprocess, warnings
            if importlib.util.find_spec("qtconsole") is None: return warnings.warn("Could not start qtconsole: qtconsole is not installed", stacklevel=2)
            cf = getattr(self.shell.kernel, "connection_file", None)
            subprocess.Popen([sys.executable, "-m", "qtconsole", "--existing", cf, *shlex.split(arg_s)], start_new_session=True)

        @line_magic
        def less(self, arg_s):
            "Show a file in the pager (`.py` files highlighted)."
            if not arg_s: raise UsageError("Missing filename.")
            if arg_s.endswith(".py"):
                from IPython.utils import openpy
                text = self.shell.pycolorize(openpy.read_py_file(arg_s, skip_encoding_cookie=False))
            else:
                with open(arg_s) as f: text = f.read()
            page.page(text)
        more = line_magic("more")(less)

        @line_magic
        def man(self, arg_s):
            "Show the man page of `arg_s` in the pager."
            page.page(self.shell.getoutput(f"man {arg_s} | col -b", split=False))

        @line_magic
        def clear(self, arg_s):
            "Clear the terminal (the kernel's)."
            self.shell.system("cls" if os.name == "nt" else "clear")

        @line_magic
        def autosave(self, arg_s):
            "Set the classic notebook's autosave interval in seconds (0 turns it off)."
            from IPython.display import Javascript, display
            try: secs = int(arg_s)
            except ValueError: raise UsageError(f"%autosave requires an integer, got {arg_s!r}") from None
            display(Javascript(f"IPython.notebook.set_autosave_interval({1000*secs})"), include=["application/javascript"])
            print(f"Autosaving every {secs} seconds" if secs else "Autosave disabled")

        @line_magic
        def subshell(self, arg_s):
            "Which subshell (JEP 91) runs this cell, on which thread, and the subshells there are."
            subs = self.shell.kernel.subs
            print(f"subshell id: {SUB.get()}\nthread id: {threading.get_ident()}\nmain thread id: {threading.main_thread().ident}\n"
                f"pid: {os.getpid()}\nthread count: {threading.active_count()}\nsubshell list: {list(subs.subs)}")

        @line_magic
        def edit(self, parameter_s="", last_call=None):
            "Ask the front end to open a file, an object's source or history lines in its editor (an `edit_magic` payload)."
            from IPython.core.magics.code import CodeMagics, MacroToEdit
            opts,args = self.parse_options(parameter_s, "prn:")
            try: fname,line,_ = CodeMagics._find_edit_target(self.shell, args, opts, last_call or ["", ""])
            except MacroToEdit: return print("Editing a macro from a kernel is not supported.")
            self.shell.payload_manager.write_payload(dict(source="edit_magic", filename=os.path.abspath(fname), line_number=line))
    return KernelMagics

class StandIns:
    """`ipykernel.comm` and `ipykernel.zmqshell` as ipymini provides them, and `ipykernel` itself where it is not installed. On
    `sys.meta_path` of ipymini's process only (a real ipykernel kernel never sees it); nothing on disk changes. bokeh, pyviz_comms,
    nbagg and ipyparallel import `ipykernel.comm.Comm`; tqdm.autonotebook looks for `ipykernel.zmqshell` in `sys.modules`.
    The real package's other modules load as they are, then the `comm` package is pointed back at ipymini's manager
    (`ipykernel.ipkernel` points it at its own on import)."""
    def __init__(self):
        from importlib.machinery import PathFinder
        from . import bridge, comms
        self.comms,self.real = comms,PathFinder.find_spec("ipykernel") is not None
        comm = self.module("ipykernel.comm", Comm=comms.IPyComm, CommManager=comms.Manager, BaseComm=comms.Comm, __path__=[])
        self.mods = {"ipykernel.comm": comm, "ipykernel.comm.comm": comm, "ipykernel.comm.manager": comm,
            "ipykernel.zmqshell": self.module("ipykernel.zmqshell", ZMQInteractiveShell=bridge.MiniShell, KernelMagics=kernel_magics(),
                ZMQDisplayPublisher=bridge.Publisher)}
        if not self.real: self.mods["ipykernel"] = self.module("ipykernel", __path__=[], version_info=version_info,
            __version__=".".join(map(str, version_info)))

    def module(self, name, **attrs):
        m = types.ModuleType(name, "ipymini's stand-in for ipykernel's module of this name")
        m.__dict__.update(attrs, __file__=__file__)
        return m

    def install(self):
        sys.modules["ipykernel.zmqshell"] = self.mods["ipykernel.zmqshell"]  # present from the start, as in an ipykernel process
        sys.meta_path.insert(0, self)

    def find_spec(self, name, path=None, target=None):
        if name != "ipykernel" and not name.startswith("ipykernel."): return None
        from importlib.util import spec_from_loader
        if name in self.mods: return spec_from_loader(name, self, is_package=hasattr(self.mods[name], "__path__"))
        from importlib.machinery import PathFinder
        spec = PathFinder.find_spec(name, path)
        if spec is None or not hasattr(spec.loader, "exec_module"): return spec
        run = spec.loader.exec_module  # each spec has a loader of its own
        def exec_module(module):
            try: run(module)
            finally: self.loaded(module)
        spec.loader.exec_module = exec_module
        return spec

    def create_module(self, spec): return self.mods[spec.name]
    def exec_module(self, module): self.loaded(module)

    def loaded(self, module):
        "After any `ipykernel` module: the package has our modules as attributes, and `comm` still makes ipymini's comms."
        if module.__name__ == "ipykernel":
            for name,m in self.mods.items():
                if name.count(".") == 1 and sys.modules.get(name) is m: setattr(module, name.split(".")[1], m)
        self.comms.repoint()

def install(kernel):
    "Once the shell is built: the kernel magics, the `ipykernel` stand-ins, and the names libraries test to know they run in a kernel."
    from . import bridge
    si = StandIns()
    kernel.bridge.ip.register_magics(si.mods["ipykernel.zmqshell"].KernelMagics)
    si.install()
    bridge.MiniShell.__module__ = "ipykernel.zmqshell"  # plotly picks its notebook renderer by it
    bridge.Publisher.__name__ = bridge.Publisher.__qualname__ = "ZMQDisplayPublisher"  # `%config ZMQDisplayPublisher`
    sys.argv[0] = launcher  # pyviz_comms and others test for a name ending in `ipykernel_launcher.py`
