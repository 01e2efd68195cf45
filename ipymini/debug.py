"The debugger: debug_request (DAP) over an in-process debugpy. Placeholder until it is built; see issue 6."

class Debugger:
    def __init__(self, kernel): self.kernel = kernel
    def process(self, c) -> dict:
        return dict(type="response", request_seq=c.get("seq", 0), success=False, command=c.get("command", ""),
            message="the debugger is not built yet")
