"Subshells (JEP 91): each runs its execute and comm requests in order, on its own thread and asyncio loop."
import asyncio, ctypes, logging, selectors, signal, threading, time, uuid
from collections import deque
from .capture import SUB, cells
from .eventloops import parked
from .procs import exit_child, headroom, release_import_lock

log = logging.getLogger("ipymini")
STOP = object()
here = threading.local()  # `here.sub`: the subshell a (non-main) executor thread serves
real_sleep = time.sleep

def sleep(secs):
    "`time.sleep` that an interrupt ends in a subshell's thread too (CPython delivers signals to the main thread only)."
    sub = getattr(here, "sub", None)
    if sub is None or not sub.running or secs <= 0: return real_sleep(secs)
    sub.woken.clear()  # an earlier interrupt of this cell was delivered already (as an async exception)
    if sub.woken.wait(secs): raise KeyboardInterrupt

def uncancel(task):
    "Forget cancel requests an interrupt made (3.11+ counts them; `asyncio.timeout` in a later cell would see them)."
    while getattr(task, "cancelling", lambda: 0)(): task.uncancel()

class WatchedSelector(selectors.DefaultSelector):
    "A selector that knows when its loop is waiting, so an interrupt can tell an awaiting cell from a computing one."
    waiting,gui = False,None  # `gui`: a toolkit (eventloops.py) whose loop runs while this one has nothing to do
    def select(self, timeout=None):
        self.waiting = True
        try:
            if self.gui is None or timeout == 0 or threading.get_ident() in parked: return super().select(timeout)
            # our fd (epoll) is readable while any registered fd is: the toolkit runs until then or asyncio's next timer
            return super().select(0) or self.gui.wait(self.fileno(), timeout) or super().select(0)
        finally: self.waiting = False

class Subshell:
    "One executor: a request queue served in order on a persistent event loop, so tasks a cell starts keep running."
    def __init__(self, kernel, sid=None):
        self.kernel,self.sid = kernel,sid
        self.sel = WatchedSelector()
        self.loop = asyncio.SelectorEventLoop(self.sel)
        self.queue,self.task,self.thread,self.req,self.done = asyncio.Queue(),None,None,None,False
        self.inbox,self.taking = deque(),threading.Lock()  # requests handed over but not yet in `queue` (the loop has not run since)
        self.running,self.abort_before = False,0.0  # `running`: user code may be on the stack (interrupts land only then)
        self.woken = threading.Event()  # set by an interrupt: ends a `time.sleep` in this subshell's cell

    def submit(self, req):
        self.inbox.append(req)
        self.loop.call_soon_threadsafe(self.take)

    def take(self):
        "Queue the oldest request handed over; one call per `submit`, so none is left behind (`pending` may have taken one)."
        with self.taking:
            if self.inbox: self.queue.put_nowait(self.inbox.popleft())

    def pending(self, pred):
        "Take out the oldest request handed over that `pred` accepts, while a blocking cell keeps the loop from queueing it (jupyter-ui-poll)."
        with self.taking:
            if (req := next((r for r in self.inbox if pred(r)), None)) is not None: self.inbox.remove(req)
        return req
    def stop(self): self.submit(STOP)

    async def serve(self):
        "Run requests one by one, awaited in this one task, so every cell shares the subshell's `contextvars` context."
        # a cell's ContextVar changes (`v.set(...)`, `decimal.getcontext().prec = 5`) are seen by the next cell, as in ipykernel
        SUB.set(self.sid)
        while (req := await self.queue.get()) is not STOP:
            self.req = req
            try:
                if req.msg_type == "execute_request" and req.arrived < self.abort_before: self.kernel.abort(req)
                else:
                    self.task = asyncio.current_task()
                    await self.kernel.dispatch(self.kernel.handlers, req)
            except BaseException as e: self.failed(req, e)
            exit_child()  # a child forked by a comm handler: its loop must never wait on the parent's epoll
            self.task = self.req = None  # not in a `finally`: if failed() itself raises, run() answers `req`
            uncancel(asyncio.current_task())
            release_import_lock()
        self.done = True

    def failed(self, req, e):
        "`req`'s handler raised (an interrupt or a user signal handler landing in kernel code, a RecursionError): it still gets a reply."
        with headroom():
            if not isinstance(e, KeyboardInterrupt): log.exception("error serving %s", req.msg_type)
            self.kernel.unanswered(req, e)

    def run(self):
        "Serve until stopped; an exception that lands in the loop's own code rather than in a request is shrugged off."
        # kernel threads start with SIGINT/SIGTERM blocked (see Kernel.__init__); user code here must not pass that on to
        # the processes it starts, which inherit the mask
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        if self.thread is not None: here.sub = self
        asyncio.set_event_loop(self.loop)
        fut = self.loop.create_task(self.serve())
        while not self.done:
            try: self.loop.run_until_complete(fut)
            except BaseException as e:
                # a user's signal handler can raise anything, anywhere; a RecursionError can unwind serve() itself
                with headroom():
                    if not isinstance(e, KeyboardInterrupt): log.warning("subshell %s: %r in the loop's own code", self.sid, e)
                    if fut.done() and not self.done:  # serve() itself died: answer its request and serve again
                        if self.req is not None: self.failed(self.req, e)
                        fut,self.req,self.task = self.loop.create_task(self.serve()),None,None

    def start(self):
        self.thread = threading.Thread(target=self.run, daemon=True, name=f"ipymini-sub-{self.sid}")
        self.thread.start()

    def throw(self):
        "Raise KeyboardInterrupt inside an awaiting cell, at its `await`."
        t = self.task
        if t is None or t.done(): return
        fut = getattr(t, "_fut_waiter", None)  # the future the cell awaits; asyncio keeps no public handle on it
        try: fut.set_exception(KeyboardInterrupt())
        except (AttributeError, RuntimeError, asyncio.InvalidStateError): t.cancel()

    def interrupt(self) -> bool:
        "Interrupt running user code: thrown at its `await`, else raised in its thread; False where the caller must raise it."
        if not self.running: return True
        t = self.thread or threading.main_thread()
        # awaiting: our selector waits and no statement of the cell is on the stack (it would be under nest_asyncio's nested run)
        if self.sel.waiting and t.ident not in parked: self.loop.call_soon_threadsafe(self.throw)
        elif self.thread is None: return False  # the main thread: SIGINT's handler raises it there
        else:
            self.woken.set()
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(KeyboardInterrupt))
        return True

class SubshellManager:
    "The parent subshell (main thread) and any created ones, by id."
    def __init__(self, kernel): self.kernel,self.parent,self.subs = kernel,Subshell(kernel),{}

    def get(self, sid): return self.parent if sid is None else self.subs.get(sid)
    def all(self): return [self.parent, *self.subs.values()]

    def create(self) -> str:
        time.sleep = sleep  # from the first subshell on: `time.sleep` in a subshell's cell can be interrupted
        sid = str(uuid.uuid4())
        self.subs[sid] = sub = Subshell(self.kernel, sid)
        sub.start()
        return sid

    def delete(self, sid) -> bool:
        "Stop subshell `sid`, interrupting a running cell first; False if there is none."
        if (sub := self.subs.pop(sid, None)) is None: return False
        cells.pop(sid, None)  # its last cell: where its threads' late output went
        sub.interrupt()
        sub.stop()
        return True
