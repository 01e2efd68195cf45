"ZMQ sockets and the threads that own them: an outbox per socket, the shell/control/stdin loop, IOPub's publisher."
import ctypes, logging, os, queue, signal, threading
from collections import deque
from os import read, write
from time import monotonic, sleep  # bound now, as `read`/`write`: the kernel's threads must not use what user code rebinds
import zmq
from .procs import headroom

log = logging.getLogger("ipymini")
IOPUB_HWM   = 1000   # messages queued per IOPub subscriber (libzmq's default): readers never lose, so depth only smooths bursts
PATIENCE    = 5.0    # seconds a full subscriber may go without taking a message before it is skipped (> a 3 s pause)
REPLY_HWM   = 10_000 # replies queued per shell/control/stdin client that reads late; the client's own queue and the OS add more

def block_signals():
    "SIGINT and SIGTERM are for the main thread (see `Kernel.__init__`); a thread started later from one that takes them blocks them."
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

def curve_keys(conn) -> tuple:
    "The connection file's CurveZMQ `(public, secret)` keys as bytes, or None; a malformed or mismatched pair is a ValueError."
    pub,sec = conn.get("curve_publickey"),conn.get("curve_secretkey")
    if pub is None and sec is None: return None
    if not (isinstance(pub, str) and isinstance(sec, str)): raise ValueError("curve_publickey and curve_secretkey must both be Z85 strings")
    if not zmq.has("curve"): raise ValueError("this libzmq has no CURVE support, and the connection file asks for it")
    try: derived = zmq.curve_public(sec.encode())
    except (ValueError, zmq.ZMQError) as e: raise ValueError(f"curve_secretkey is not a CurveZMQ secret key: {e}") from None
    if derived != pub.encode(): raise ValueError("curve_publickey is not the public key of curve_secretkey")
    return pub.encode(),sec.encode()

class Outbox:
    "Items any thread queues for the one thread that owns a socket; a pipe in that thread's poller wakes it."
    def __init__(self, most=0):
        self.q,self.signalled,self.most,self.full,self.room = deque(),False,most,False,threading.Condition()
        self.low = -1  # a `wait_below` waiter's mark
        self.r,self.w = os.pipe()
        os.set_blocking(self.r, False)

    def put(self, item):
        if self.most and len(self.q) >= self.most: self.wait_for_room()
        self.q.append(item)
        if not self.signalled:
            self.signalled = True
            write(self.w, b"!")

    def take(self):
        "Yield what is queued until the queue stays empty; the flag is reset only before a last look, so no put is missed."
        # while the owner works through the queue, puts skip the pipe write (and the GIL hand-off it costs per message)
        try: read(self.r, 4096)
        except BlockingIOError: pass
        while True:
            while self.q:
                yield self.q.popleft()
                if self.full and len(self.q) < self.most // 2: self.make_room()
                elif len(self.q) <= self.low: self.wake()
            self.signalled = False
            if not self.q: return
            self.signalled = True

    def wait_for_room(self):
        "Back-pressure: a producer outpacing a slow client waits here (a second at most), so memory stays bounded."
        with self.room:
            self.full = True
            self.room.wait_for(lambda: len(self.q) < self.most, timeout=1)

    def make_room(self):
        with self.room:
            self.full = False
            self.room.notify_all()

    def wake(self):
        with self.room: self.room.notify_all()

    def wait_below(self, n):
        "Pacing for a producer with a buffer of its own (fd capture's files): wait while more than `n` items are queued (1 s at most)."
        if len(self.q) <= n: return
        with self.room:
            self.low = n
            try: self.room.wait_for(lambda: len(self.q) <= n, timeout=1)
            finally: self.low = -1

class SockThread(threading.Thread):
    "A daemon thread that alone owns one socket: serves what arrives on it and sends what other threads queue."
    def __init__(self, kernel, sock, name, serve=None, most=0):
        super().__init__(daemon=True, name=f"ipymini-{name}")
        self.kernel,self.sock,self.serve_fn,self.outbox,self.dropped = kernel,sock,serve,Outbox(most),0

    def send_frames(self, frames):
        "Send without waiting (a ROUTER_MANDATORY router): a reply to a client with `REPLY_HWM` unread ones is dropped and counted."
        try: self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again: self.dropped += 1
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH: raise
            self.unreachable(frames)

    def unreachable(self, frames): log.debug("%s: a message for a client that has gone", self.name)

    def drained(self):
        "The outbox is empty: the end of a burst, and of any dropping episode in it, which is logged once, with its count."
        if self.dropped: log.warning("%s: a client left %d replies unread; %d more were dropped", self.name, REPLY_HWM, self.dropped)
        self.dropped = 0

    def stop(self): self.outbox.put(None)

    def run(self):
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.outbox.r, zmq.POLLIN)
        while True:
            for s,_ in poller.poll():
                if s is self.sock: self.drain_in()
                else:
                    with headroom():  # serializing must not fail under a recursion limit user code lowered
                        for frames in self.outbox.take():
                            if frames is None: return self.sock.close(linger=200)
                            try: self.send_frames(frames)
                            except Exception as e: log.warning("%s: send failed: %r", self.name, e)  # an unpackable message must not end the thread
                    self.drained()

    def drain_in(self):
        while True:
            try: frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again: return
            try: self.serve_fn(self.sock, frames)
            except Exception:
                with headroom(): log.exception("%s: error handling a message", self.name)

class IOPub(SockThread):
    """Publishes what any thread queues, in queue order, signing on this thread; welcomes each new subscriber (JEP 65).
    A subscriber's queue holds `IOPUB_HWM` messages. While every queue has room, all get everything (XPUB_NODROP). A full
    queue makes us wait (the cell waits too, through the outbox's bound), so a reader slower than the cell still gets
    everything; one that takes nothing for `PATIENCE` s is skipped: that message is sent with NODROP off, and libzmq then
    leaves that subscriber out until it reads again. The count is logged once, when the request it happened in ends."""
    def __init__(self, kernel, sock):
        super().__init__(kernel, sock, "iopub", self.welcome, most=1000)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # a second subscriber to the same topic is welcomed too
        sock.setsockopt(zmq.XPUB_NODROP, 1)   # a full queue is an error we can see, not a silent drop
        sock.sndhwm = IOPUB_HWM

    def welcome(self, sock, frames):
        if frames[0][:1] == b"\x01": self.send_frames(("iopub_welcome", dict(subscription=frames[0][1:].decode(errors="replace")), None, None, None))

    def send_frames(self, item):
        msg_type,content,parent,buffers,metadata = item
        msg = self.kernel.session.msg(msg_type, content, parent, metadata)
        if buffers: msg["buffers"] = buffers
        frames = self.kernel.session.serialize(msg, [msg_type.encode()])
        if self.dropped: self.dropped += 1  # in an episode: the skipped subscriber misses this one too, unless it has read meanwhile
        if self.send(frames) or self.patient(frames): return self.episode_end(msg_type, content)
        self.sock.setsockopt(zmq.XPUB_NODROP, 0)
        try: self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)  # to every queue with room; full ones are left out from now on
        finally: self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.dropped += 1

    def patient(self, frames) -> bool:
        "Retry `frames` while a full queue takes nothing, `PATIENCE` s at most; naps, as XPUB says POLLOUT while any queue has room."
        end,nap = monotonic() + PATIENCE,0.0005
        while monotonic() < end:
            sleep(nap)
            nap = min(2*nap, 0.02)
            if self.send(frames): return True
        return False

    def episode_end(self, msg_type, content):
        "An episode is logged once, with its count, when the request it happened in ends (its idle status)."
        if not self.dropped or msg_type != "status" or content.get("execution_state") != "idle": return
        log.warning("IOPub: a subscriber took nothing for %.0f s with %d messages queued for it, so it is skipped until it reads "
            "again: it missed %d messages up to the end of this request", PATIENCE, IOPUB_HWM, self.dropped)
        self.dropped = 0

    def send(self, frames) -> bool:
        try: self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again: return False
        return True

    def drained(self): pass  # episodes end at an idle status (`episode_end`)

class Worker:
    "Runs jobs in order on a thread of its own; `abandon()` leaves a stuck job to its thread and starts a fresh one for the rest."
    def __init__(self, name):
        self.name,self.q,self.lock,self.job,self.thread = name,queue.SimpleQueue(),threading.Lock(),None,None
        self.spawn()

    def spawn(self):
        self.thread = threading.Thread(target=self.run, daemon=True, name=f"ipymini-{self.name}")
        self.thread.start()

    def put(self, fn, arg): self.q.put((fn, arg))

    def run(self):
        block_signals()  # a fresh worker may be started from a thread that takes them
        try: self.serve()
        except KeyboardInterrupt: pass  # an interrupt that came just as the abandoned job ended

    def serve(self):
        me = threading.current_thread()
        while self.thread is me and (item := self.q.get()) is not None:  # an abandoned thread takes no more jobs
            with self.lock: self.job = item
            try: item[0](item[1])
            except BaseException as e: log.warning("%s: %r", self.name, e)  # a late interrupt, after the job was done
            finally:
                with self.lock:
                    if self.job is item: self.job = None

    def abandon(self):
        "The running job's argument, or None: its thread gets a KeyboardInterrupt (where it can take one) and serves no more."
        with self.lock:
            if (item := self.job) is None: return None
            self.job,old = None,self.thread
            self.spawn()
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(old.ident), ctypes.py_object(KeyboardInterrupt))
        return item[1]
