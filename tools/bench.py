"Benchmark ipymini against ipykernel (A B A B, a fresh kernel each round) and a bare Python+ZMQ floor; print medians and targets."
# usage: python tools/bench.py [--quick] [--rounds N] [--kernel ipymini] [--vs python3] [--json PATH] [--src DIR]
# One raw pyzmq client with a small hmac signer drives every kernel, so the kernel is what gets measured, not jupyter_client.
import argparse, hashlib, hmac, json, os, signal, statistics, subprocess, sys, tempfile, time, traceback, uuid
from collections import Counter
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
import psutil, zmq
from jupyter_client import KernelManager

DELIM,clock = b"<IDS|MSG>",time.perf_counter
FLOOR = Path(__file__).with_name("bench_floor.py")

def now(): return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
def pct(xs, q): return sorted(xs)[min(len(xs)-1, int(q*len(xs)))]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

class Msg:
    "A received message; `content` is decoded only when asked for (a 20 MB display need not be)."
    def __init__(self, chan, parts, t):
        self.chan,self.t,self.raw = chan,t,parts[3]
        self.header,self.parent = json.loads(parts[0]),json.loads(parts[1])
        self.msg_type,self.pid = self.header["msg_type"],self.parent.get("msg_id")
    @cached_property
    def content(self): return json.loads(self.raw)

class Req:
    "What the client saw of one request: its reply and when, when its idle came, which IOPub types it produced."
    def __init__(self, mid, reply=True, idle=True, on_out=None):
        self.mid,self.want_reply,self.want_idle,self.on_out = mid,reply,idle,on_out
        self.reply,self.t0,self.t_reply,self.t_idle,self.seen = None,None,None,None,set()
    @property
    def done(self): return (self.reply is not None or not self.want_reply) and (self.t_idle is not None or not self.want_idle)
    @property
    def took(self): return max(t for t in (self.t_reply, self.t_idle) if t is not None) - self.t0
    @property
    def state(self): return f"reply {'yes' if self.reply else 'NO'}, idle {'yes' if self.t_idle else 'NO'}, saw {sorted(self.seen)}"
    @property
    def status(self): return self.reply.content.get("status") if self.reply else None

class Client:
    "DEALERs on shell/control and a SUB on IOPub; signs with hmac, timestamps each message as it is received."
    def __init__(self, conn, chans=("shell", "control", "iopub")):
        key = conn["key"].encode() if isinstance(conn["key"], str) else conn["key"]
        self.auth = hmac.new(key, digestmod=hashlib.sha256) if key else None
        self.ctx,self.sid,self.n,self.reqs,self.bad,self.last_iopub = zmq.Context(),uuid.uuid4().hex,0,{},0,None
        self.socks,self.poller = {},zmq.Poller()
        for ch in chans:
            s = self.socks[ch] = self.ctx.socket(zmq.SUB if ch == "iopub" else zmq.DEALER)
            s.linger,s.reconnect_ivl = 0,5  # retry connecting every 5 ms, so startup is not rounded up to zmq's 100 ms default
            if ch == "iopub": s.subscribe(b"")
            s.connect(f"{conn.get('transport', 'tcp')}://{conn['ip']}:{conn[ch + '_port']}")
            self.poller.register(s, zmq.POLLIN)
        self.names = {s: ch for ch,s in self.socks.items()}

    def close(self): self.ctx.destroy(linger=0)
    def sign(self, parts):
        if self.auth is None: return b""
        h = self.auth.copy()
        for p in parts: h.update(p)
        return h.hexdigest().encode()

    def send(self, chan, msg_type, content=None, header=None, **kw) -> Req:
        self.n += 1
        mid = f"{self.sid}_{self.n}"
        hdr = dict(msg_id=mid, msg_type=msg_type, username="bench", session=self.sid, date=now(), version="5.4", **(header or {}))
        parts = [json.dumps(o).encode() for o in (hdr, {}, {}, content or {})]
        frames = [DELIM, self.sign(parts), *parts]
        r = self.reqs[mid] = Req(mid, **kw)
        r.t0 = clock()
        self.socks[chan].send_multipart(frames)
        return r

    def handle(self, chan, frames, t):
        i = frames.index(DELIM)
        sig,parts = frames[i+1],frames[i+2:i+6]
        if self.auth is not None and not hmac.compare_digest(sig, self.sign(parts)):
            self.bad += 1
            return print(f"  ! bad signature on a {chan} message", file=sys.stderr)
        m = Msg(chan, parts, t)
        if chan == "iopub": self.last_iopub = t
        if (r := self.reqs.get(m.pid)) is None: return
        if chan != "iopub": r.reply,r.t_reply = m,t
        elif m.msg_type == "status":
            if m.content["execution_state"] == "idle": r.t_idle = t
        else:
            r.seen.add(m.msg_type)
            if r.on_out: r.on_out(m)

    def pump(self, timeout):
        "Handle whatever arrives within `timeout` seconds."
        for s,_ in self.poller.poll(max(0, timeout)*1000):
            while True:
                try: frames = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again: break
                self.handle(self.names[s], frames, clock())

    def wait(self, reqs, timeout=60, until=None):
        "Pump until every request in `reqs` is done (or `until()` is true); TimeoutError after `timeout` s."
        end = clock() + timeout
        while not (until() if until else all(r.done for r in reqs)):
            if clock() > end: raise TimeoutError(f"no answer in {timeout} s: " + ", ".join(r.state for r in reqs))
            self.pump(end - clock())
        for r in reqs:
            if r.done: self.reqs.pop(r.mid, None)
        return reqs[0] if len(reqs) == 1 else reqs

    def sleep(self, secs):
        end = clock() + secs
        while clock() < end: self.pump(end - clock())

    def execute(self, code, header=None, **kw) -> Req:
        c = dict(code=code, silent=False, store_history=True, user_expressions={}, allow_stdin=False, stop_on_error=True)
        return self.send("shell", "execute_request", c, header, **kw)

    def run(self, code, timeout=60, check=True, **kw) -> Req:
        r = self.wait([self.execute(code, **kw)], timeout)
        if check and r.status != "ok": raise RuntimeError(f"{code[:40]!r}: {r.status} {r.reply.content.get('ename')} {r.reply.content.get('evalue')}")
        return r

    def request(self, chan, msg_type, timeout=30, idle=True, **content) -> Req:
        return self.wait([self.send(chan, msg_type, content, idle=idle)], timeout)

    def iopub_ready(self, timeout=30):
        "Send kernel_info until IOPub delivers something: the SUB has joined (what jupyter_client's wait_for_ready does)."
        end = clock() + timeout
        while self.last_iopub is None:
            if clock() > end: raise TimeoutError("IOPub never delivered")
            self.request("shell", "kernel_info_request", idle=False)  # its idle may go out before the SUB has joined
            self.sleep(0.05)
        self.sleep(0.05)

def rss(pid): return psutil.Process(pid).memory_info().rss / 2**20

class Kernel:
    "A kernel started by jupyter_client's KernelManager and driven by our Client."
    def __init__(self, name, logdir, src=None): self.name,self.logdir,self.src,self.km,self.c,self.log = name,logdir,src,None,None,None

    def start(self) -> dict:
        "Start; time `start_kernel()` to the first kernel_info_reply and to the first execute_reply; RSS once ready."
        self.km = KernelManager(kernel_name=self.name)
        self.log = open(Path(self.logdir)/f"{self.name}.log", "a")
        t0 = clock()
        env = dict(os.environ)
        if self.src: env["PYTHONPATH"] = os.pathsep.join([self.src] + [p for p in [env.get("PYTHONPATH")] if p])
        self.km.start_kernel(stdout=self.log, stderr=self.log, env=env, cwd=self.logdir)  # cwd: no package dir shadows the kernel's own
        self.c = c = Client(self.km.get_connection_info())
        r = c.wait([c.send("shell", "kernel_info_request", reply=True, idle=False)], 60)
        x = c.wait([c.execute("pass", idle=False)], 60)
        c.iopub_ready()
        c.run("pass")
        self.pid = self.km.provisioner.pid
        return dict(startup=r.t_reply - t0, first_exec=x.t_reply - t0, rss_start=rss(self.pid))

    def stop(self):
        if self.c: self.c.close()
        if self.km is not None and self.km.has_kernel:
            try: self.km.shutdown_kernel(now=False)
            except Exception: self.km.shutdown_kernel(now=True)
        if self.log: self.log.close()
        self.c = self.km = self.log = None

def m_execute(k, n):
    c = k.c
    for _ in range(20): c.run("pass")
    ts = [c.run("pass").took for _ in range(n)]
    return dict(exec_p50=statistics.median(ts), exec_p99=pct(ts, .99))

def m_flood(k, n=200_000):
    texts,nmsg = [],[0]
    def out(m):
        if m.msg_type == "stream":
            nmsg[0] += 1
            if m.content["name"] == "stdout": texts.append(m.content["text"])
    r = k.c.run(f"for i in range({n}): print(i)", timeout=300, on_out=out)
    got,junk = Counter(),0
    for l in "".join(texts).splitlines():
        if l.isdigit() and int(l) < n: got[int(l)] += 1
        else: junk += 1
    return dict(flood_s=r.took, flood_msgs=nmsg[0], flood_lost=n - len(got), flood_dup=sum(v-1 for v in got.values()) + junk)

def m_displays(k, n=2000):
    cnt = Counter()
    r = k.c.run(f"for i in range({n}): display(i)", timeout=120, on_out=lambda m: cnt.update([m.msg_type]))
    if cnt["display_data"] != n: print(f"  ! {k.name}: {cnt['display_data']} of {n} display_data arrived", file=sys.stderr)
    return dict(displays_s=r.took, displays_got=cnt["display_data"])

def m_big_display(k, mb=20):
    c,sizes = k.c,[]
    c.run(f"_bench_s = 'x' * {mb*1_000_000}")
    r = c.run("display({'text/plain': _bench_s}, raw=True)", timeout=120, on_out=lambda m: sizes.append(len(m.raw)))
    c.run("del _bench_s")
    if not sizes or max(sizes) < mb*1_000_000: print(f"  ! {k.name}: the {mb} MB display did not arrive whole: {sizes}", file=sys.stderr)
    return dict(big_display_s=r.took)

ECHO = """import comm
def _bench_echo(c, msg): c.on_msg(lambda m: c.send(m['content']['data']))
comm.get_comm_manager().register_target('bench_echo', _bench_echo)"""

def m_comm(k, n):
    c,cid,ts = k.c,uuid.uuid4().hex,[]
    c.run(ECHO)
    c.wait([c.send("shell", "comm_open", dict(comm_id=cid, target_name="bench_echo", data={}), reply=False)])
    def one(i, warm=False):
        got = []
        r = c.send("shell", "comm_msg", dict(comm_id=cid, data=dict(i=i)), reply=False,
            on_out=lambda m: m.msg_type == "comm_msg" and m.content["data"].get("i") == i and got.append(m.t))
        c.wait([r], 30)
        if not got: raise RuntimeError(f"comm message {i} was not echoed")
        if not warm: ts.append(got[0] - r.t0)
    for i in range(20): one(i, warm=True)
    for i in range(n): one(i)
    c.wait([c.send("shell", "comm_close", dict(comm_id=cid, data={}), reply=False)])
    return dict(comm_p50=statistics.median(ts))

def m_complete(k, n):
    res = {}
    for key,code in (("complete_import", "import o"), ("complete_attr", "str.st")):
        for _ in range(3): k.c.request("shell", "complete_request", code=code, cursor_pos=len(code))
        rs = [k.c.request("shell", "complete_request", code=code, cursor_pos=len(code)) for _ in range(n)]
        if not rs[-1].reply.content.get("matches"): print(f"  ! {k.name}: no matches for {code!r}", file=sys.stderr)
        res[key] = statistics.median(r.t_reply - r.t0 for r in rs)
    return res

def m_interrupt(k, n):
    "SIGINT through `km.interrupt_kernel()` while a cell runs: time to its error reply (`n` timed after one warm-up); all answered?"
    c,res = k.c,dict(int_loop=[], int_sleep=[], int_tried=0, int_answered=0)
    c.run("import time")
    for key,code in (("int_loop", "while True: pass"), ("int_sleep", "time.sleep(100)")):
        for i in range(n + 1):  # the first is not timed: it loads what formatting a traceback needs (pygments lexers, stack_data)
            r = c.execute(code)
            c.wait([r], 30, until=lambda: "execute_input" in r.seen)
            c.sleep(0.3)
            res["int_tried"] += 1
            t0 = clock()
            k.km.interrupt_kernel()
            try: c.wait([r], 10, until=lambda: r.reply is not None)
            except TimeoutError:
                print(f"  ! {k.name}: interrupt of {code!r} not answered in 10 s", file=sys.stderr)
                k.km.interrupt_kernel()
                c.wait([r], 10)  # still stuck: give up on this kernel for the round
                continue
            ok = r.status == "error" and r.reply.content.get("ename") == "KeyboardInterrupt"
            if not ok: print(f"  ! {k.name}: interrupt gave {r.status} {r.reply.content.get('ename')}", file=sys.stderr)
            res["int_answered"] += ok
            if i: res[key].append(r.t_reply - t0)
            c.wait([r], 10)
    res["int_loop"],res["int_sleep"] = med(res["int_loop"]),med(res["int_sleep"])
    return res

def m_subshells(k, n=4):
    c = k.c
    c.run("import time")
    rs = [c.request("control", "create_subshell_request") for _ in range(n)]
    sids = [r.reply.content.get("subshell_id") for r in rs]
    if None in sids: return dict(subshells_s=None)
    for s in sids: c.run("pass", header=dict(subshell_id=s))
    t0 = clock()
    rs = c.wait([c.execute("time.sleep(1)", header=dict(subshell_id=s)) for s in sids], 30)
    wall = max(r.took + r.t0 for r in rs) - t0
    if any(r.status != "ok" for r in rs): print(f"  ! {k.name}: subshell replies {[r.status for r in rs]}", file=sys.stderr)
    for s in sids: c.request("control", "delete_subshell_request", subshell_id=s)
    return dict(subshells_s=wall)

def m_rss_growth(k, n=2000):
    for _ in range(20): k.c.run("x = list(range(1000))")
    before = rss(k.pid)
    for _ in range(n): k.c.run("x = list(range(1000))")
    return dict(rss_growth=rss(k.pid) - before)

class Floor:
    "tools/bench_floor.py in its own process: request→reply, optionally with busy/idle on a PUB."
    def __init__(self, busy): self.busy,self.p,self.c = busy,None,None
    def start(self):
        key = uuid.uuid4().hex
        self.p = subprocess.Popen([sys.executable, str(FLOOR), key] + ["busy"]*self.busy, stdout=subprocess.PIPE, start_new_session=True)
        ports = json.loads(self.p.stdout.readline())
        self.c = Client(dict(ip="127.0.0.1", key=key, **ports), ("shell", "iopub") if self.busy else ("shell",))
        if self.busy: self.c.iopub_ready()
    def stop(self):
        if self.c: self.c.close()
        if self.p and self.p.poll() is None:
            self.p.terminate()
            try: self.p.wait(5)
            except subprocess.TimeoutExpired: self.p.kill()
        self.c = self.p = None

def m_floor(n):
    res = {}
    for busy in (False, True):
        f = Floor(busy)
        try:
            f.start()
            for _ in range(50): f.c.run("pass", idle=busy)
            ts = [f.c.run("pass", idle=busy).took for _ in range(n)]
        finally: f.stop()
        tag = "floor_busy" if busy else "floor"
        res[tag+"_p50"],res[tag+"_p99"] = statistics.median(ts),pct(ts, .99)
    return res

def bench_kernel(name, a, logdir, live):
    "One fresh kernel through every measure; a measure that fails is reported and skipped, the kernel is always shut down."
    k = Kernel(name, logdir, a.src if name == a.kernel else None)
    live.append(k)
    res = {}
    try:
        steps = [(k.start,), (m_execute, a.n_exec), (m_comm, a.n_comm), (m_complete, a.n_complete), (m_flood,), (m_displays,), (m_big_display,),
            (m_subshells,), (m_rss_growth,), (m_interrupt, a.n_int)]
        for f,*args in steps:
            t = clock()
            try: res.update(f(*args) if f == k.start else f(k, *args))
            except Exception as e:
                print(f"  ! {name}: {f.__name__} failed: {e!r}", file=sys.stderr)
                if f == k.start: break
                if a.verbose:
                    traceback.print_exc()
                    if isinstance(e, TimeoutError) and k.km: subprocess.run([Path(sys.executable).with_name("py-spy"), "dump", "-p", str(k.km.provisioner.pid)])
            if a.verbose: print(f"  {name} {f.__name__}: {clock()-t:.1f}s", file=sys.stderr)
    finally:
        k.stop()
        live.remove(k)
    return res

def ms(x): return f"{x*1e3:.2f} ms" if x < 1 else f"{x:.2f} s"
def sec(x): return f"{x:.3f} s"
def mb(x): return f"{x:.1f} MB"
def num(x): return f"{x:g}"

def table(rounds, A, B):
    "Markdown rows: measure | A | B | ratio | target | met? (medians over rounds)."
    col = lambda who, key: [r[who].get(key) for r in rounds if who in r]
    ma,mb_ = (lambda key: med(col(A, key))),(lambda key: med(col(B, key)))
    rows = [f"| measure | {A} | {B} | ratio | target | met? |", "|---|---|---|---|---|---|"]
    def row(label, key, fmt, target=None, kind="ratio", a=None, b=None):
        a,b = ma(key) if a is None else a,mb_(key) if b is None else b
        ratio = a/b if a is not None and b else None
        if target is None: met = ""
        elif kind == "ratio": met = "" if ratio is None else "yes" if ratio <= target else "**no**"
        else: met = "" if a is None else "yes" if a <= target else "**no**"
        tgt = "" if target is None else f"≤{target}" if kind == "ratio" else f"{A} ≤{target}"
        f = lambda v: "n/a" if v is None else fmt(v)
        rows.append(f"| {label} | {f(a)} | {f(b)} | {'' if ratio is None else f'{ratio:.2f}'} | {tgt} | {met} |")
    row("startup: start_kernel → kernel_info_reply", "startup", sec, 0.6)
    row("startup: start_kernel → first execute_reply", "first_exec", sec)
    row("RSS after startup", "rss_start", mb, 0.9)
    row("execute `pass` p50 (reply+idle)", "exec_p50", ms, 0.5)
    row("execute `pass` p99", "exec_p99", ms, 0.7)
    fb = med([r["floor"].get("floor_busy_p50") for r in rounds if "floor" in r])
    per = lambda v: v/fb if v is not None and fb else None
    row("execute `pass` p50 / floor with busy/idle", None, lambda v: f"{v:.2f}×", 1.5, "abs", per(ma("exec_p50")), per(mb_("exec_p50")))
    row("stream flood 200k lines: time to idle", "flood_s", sec, 1.0)
    row("stream flood: stream messages", "flood_msgs", num, 50, "abs")
    lost = lambda who: max([x for x in col(who, "flood_lost") + col(who, "flood_dup") if x is not None], default=None)
    row("stream flood: lines lost + duplicated (worst round)", None, num, 0, "abs", lost(A), lost(B))
    row("2000 small display(): time to idle", "displays_s", sec, 0.2)
    row("one 20 MB display: time to idle", "big_display_s", sec)
    row("comm echo round trip p50", "comm_p50", ms, 0.4)
    row("complete `import o` p50", "complete_import", ms, 1.0)
    row("complete `str.st` p50", "complete_attr", ms, 1.0)
    row("interrupt `while True: pass` → error reply", "int_loop", ms, 1.0)
    row("interrupt `time.sleep(100)` → error reply", "int_sleep", ms, 1.0)
    def unans(who):
        tried,ans = [x for x in col(who, "int_tried") if x is not None],[x for x in col(who, "int_answered") if x is not None]
        return sum(tried) - sum(ans) if tried else None
    row("interrupts not answered (all rounds)", None, num, 0, "abs", unans(A), unans(B))
    row("4 subshells × sleep(1): wall", "subshells_s", sec, 1.1, "abs")
    row("RSS growth over 2000 `x = list(range(1000))`", "rss_growth", mb)
    out = "\n".join(rows)
    fl = [r["floor"] for r in rounds if "floor" in r]
    if fl:
        g = lambda key: med([f.get(key) for f in fl])
        out += (f"\n\nfloor (bare Python + pyzmq, same signing and client): request→reply p50 {ms(g('floor_p50'))} (p99 {ms(g('floor_p99'))}); "
            f"request→reply+busy/idle p50 {ms(g('floor_busy_p50'))} (p99 {ms(g('floor_busy_p99'))})")
        for who,f in ((A, ma), (B, mb_)):
            if f("exec_p50"): out += f"\n{who}: execute `pass` p50 = {f('exec_p50')/g('floor_busy_p50'):.2f}× the busy/idle floor, {f('exec_p50')/g('floor_p50'):.2f}× the bare floor"
    return out

def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="one round, fewer repeats: about a minute")
    p.add_argument("--rounds", type=int, help="rounds of A B (default 5, or 1 with --quick)")
    p.add_argument("--kernel", default="ipymini")
    p.add_argument("--vs", default="python3")
    p.add_argument("--src", help="run --kernel from this source tree (say a `git archive` snapshot): put first on its PYTHONPATH")
    p.add_argument("--json", help="save every round's raw numbers here")
    p.add_argument("-v", "--verbose", action="store_true", help="time each measure and print tracebacks")
    a = p.parse_args()
    a.rounds = a.rounds or (1 if a.quick else 5)
    a.n_exec,a.n_comm,a.n_complete,a.n_int = (300, 500, 50, 2) if a.quick else (300, 500, 200, 4)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so `finally` shuts every kernel down
    live,rounds,t0 = [],[],clock()
    logdir = tempfile.mkdtemp(prefix="ipymini-bench-")
    try:
        for i in range(a.rounds):
            rd = {}
            for name in (a.kernel, a.vs):
                rd[name] = bench_kernel(name, a, logdir, live)
                print(f"round {i+1}/{a.rounds} {name}: done at {clock()-t0:.0f}s", file=sys.stderr)
            rd["floor"] = m_floor(a.n_exec)
            rounds.append(rd)
    except KeyboardInterrupt: print("interrupted: reporting the rounds finished so far", file=sys.stderr)
    finally:
        for k in list(live): k.stop()
    if not rounds: return 1
    print(f"\n{len(rounds)} round(s), medians; {sys.executable}; kernel logs in {logdir}; {clock()-t0:.0f} s\n")
    print(table(rounds, a.kernel, a.vs))
    if a.json: Path(a.json).write_text(json.dumps(dict(args=vars(a), rounds=rounds), indent=1))

if __name__ == "__main__": sys.exit(main())
