"Comms through the `comm` package: a Comm that publishes on the kernel's IOPub, and the one CommManager."
import sys, traceback, warnings
import comm
from comm.base_comm import BaseComm, CommManager

class Comm(BaseComm):
    "A comm whose messages go out on IOPub, parented to the request being served."
    kernel = None  # set by install(): ipywidgets checks `comm.kernel` before sending
    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        content = dict(data={} if data is None else data, comm_id=self.comm_id, **keys)
        self.kernel.ch.pub(msg_type, content, buffers=list(buffers or ()), metadata=metadata)

class IPyComm(Comm):
    "`ipykernel.comm.Comm` (bokeh, pyviz_comms, nbagg, ipyparallel): ipykernel's signature, ipymini's comm."
    def __init__(self, target_name="", data=None, metadata=None, buffers=None, show_warning=True, **kw):
        if show_warning: warnings.warn("`ipykernel.comm.Comm` is deprecated: make comms with `comm.create_comm`", DeprecationWarning, stacklevel=2)
        kw.pop("kernel", None)
        super().__init__(**({"target_name": target_name} if target_name else {}), data=data, metadata=metadata, buffers=buffers, **kw)

def shown(what):
    "Print the current exception to stderr, which the client shows under the comm message that caused it (as ipykernel does)."
    sys.stderr.write(f"{what}\n{traceback.format_exc()}\n")  # not print(): user code may have rebound it

def with_views(msg):
    "`msg` with its buffers as memoryviews, the type ipykernel hands to comm callbacks."
    return {**msg, "buffers": [memoryview(b) for b in msg.get("buffers") or ()]}

class Manager(CommManager):
    "The comm package's manager; failures in targets and callbacks reach the client's stderr instead of the kernel log only."
    def comm_open(self, stream, ident, msg):
        c = msg["content"]
        cm = comm.create_comm(comm_id=c["comm_id"], primary=False, target_name=c["target_name"])
        self.register_comm(cm)
        if (f := self.targets.get(c["target_name"])) is None: sys.stderr.write(f"No such comm target registered: {c['target_name']}\n")
        else:
            try: return f(cm, with_views(msg))
            except Exception: shown(f"Exception opening comm with target: {c['target_name']}")
        cm.close()  # tell the client its comm is gone, as the protocol asks when a target is missing or fails

    def comm_msg(self, stream, ident, msg):
        if (cm := self.get_comm(msg["content"]["comm_id"])) is None: return
        try: cm.handle_msg(with_views(msg))
        except Exception: shown(f"Exception in comm_msg for {cm.comm_id}")

    def comm_close(self, stream, ident, msg):
        if (cm := self.comms.pop(msg["content"]["comm_id"], None)) is None: return
        cm._closed = True
        try: cm.handle_close(with_views(msg))
        except Exception: shown(f"Exception in comm_close for {cm.comm_id}")

mgr = [None]
def get_manager(): return mgr[0]

def repoint():
    "`comm.create_comm`/`get_comm_manager` make and find this kernel's comms (again, after a library re-pointed them)."
    comm.create_comm,comm.get_comm_manager = Comm,get_manager

def install(kernel) -> CommManager:
    "Make the `comm` package use this kernel; returns the manager."
    Comm.kernel,mgr[0] = kernel,Manager()
    repoint()
    return mgr[0]
