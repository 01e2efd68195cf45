"Comms through the `comm` package: a Comm that publishes on the kernel's IOPub, and the one CommManager."
import comm
from comm.base_comm import BaseComm, CommManager

class Comm(BaseComm):
    "A comm whose messages go out on IOPub, parented to the request being served."
    kernel = None  # set by install(): ipywidgets checks `comm.kernel` before sending
    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        content = dict(data={} if data is None else data, comm_id=self.comm_id, **keys)
        self.kernel.ch.pub(msg_type, content, buffers=list(buffers or ()), metadata=metadata)

def install(kernel) -> CommManager:
    "Make `comm.create_comm`/`get_comm_manager` use this kernel; returns the manager."
    Comm.kernel = kernel
    mgr = CommManager()
    comm.create_comm = Comm
    comm.get_comm_manager = lambda: mgr
    return mgr
