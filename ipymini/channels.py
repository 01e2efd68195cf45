"ZMQ sockets and the threads that own them: an outbox per socket, the shell/control/stdin loop, IOPub's publisher."
import logging, os, threading
from collections import deque
from os import read, write
from time import monotonic, sleep  # bound now, as `read`/`write`: the kernel's threads must not use what user code rebinds
import zmq
from .procs import headroom

log = logging.getLogger("ipymini")

class Outbox:
    "Items any thread queues for the one thread that owns a socket; a pipe in that thread's poller wakes it."
    def __init__(self, most=0):
        self.q,self.signalled,self.most,self.full,self.room = deque(),False,most,False,threading.Condition()
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

class SockThread(threading.Thread):
    "A daemon thread that alone owns one socket: serves what arrives on it and sends what other threads queue."
    def __init__(self, kernel, sock, name, serve=None, most=0):
        super().__init__(daemon=True, name=f"ipymini-{name}")
        self.kernel,self.sock,self.serve_fn,self.outbox = kernel,sock,serve,Outbox(most)

    def send_frames(self, frames): self.sock.send_multipart(frames, copy=False)
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

    def drain_in(self):
        while True:
            try: frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again: return
            try: self.serve_fn(self.sock, frames)
            except Exception:
                with headroom(): log.exception("%s: error handling a message", self.name)

class IOPub(SockThread):
    "Publishes what any thread queues, in queue order, signing on this thread; welcomes each new subscriber (JEP 65)."
    def __init__(self, kernel, sock):
        super().__init__(kernel, sock, "iopub", self.welcome, most=1000)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # a second subscriber to the same topic is welcomed too
        sock.setsockopt(zmq.XPUB_NODROP, 1)   # a full queue is an error we can see, not a silent drop
        sock.sndhwm = 10_000  # with the outbox's 1000, what a slow client can make us hold is bounded

    def welcome(self, sock, frames):
        if frames[0][:1] == b"\x01": self.send_frames(("iopub_welcome", dict(subscription=frames[0][1:].decode(errors="replace")), None, None, None))

    def send_frames(self, item):
        msg_type,content,parent,buffers,metadata = item
        msg = self.kernel.session.msg(msg_type, content, parent, metadata)
        if buffers: msg["buffers"] = buffers
        frames = self.kernel.session.serialize(msg, [msg_type.encode()])
        end = monotonic() + 10
        while True:
            try: return self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:  # a subscriber's queue is full (XPUB_NODROP): wait for room, 10 s at most
                if monotonic() > end: break
                if self.sock.poll(50, zmq.POLLOUT): sleep(0.001)  # POLLOUT can say ready before there is room
        log.warning("IOPub client too slow; dropped a %s message", msg_type)
