"""Remote-kernel launcher for Enterprise Gateway and gateway_provisioners: picks the ports, answers the gateway once with the
encrypted connection info, serves the comm port on a thread, then runs the kernel in this same process. Writes no file.
`python -m ipymini.launcher --kernel-id ID --response-address IP:PORT --public-key KEY [--port-range LO..HI]
[--transport-encryption auto|required]`"""
import base64, json, logging, os, random, re, secrets, signal, socket, sys, threading
from time import monotonic

log = logging.getLogger("ipymini")
# option -> environment variables a container gets instead (EG's and GP's launch_kubernetes.py, bootstrap-kernel.sh), first found wins
opts = dict(kernel_id="KERNEL_ID", response_address="RESPONSE_ADDRESS EG_RESPONSE_ADDRESS", public_key="PUBLIC_KEY EG_PUBLIC_KEY",
    port_range="PORT_RANGE EG_PORT_RANGE", spark_context_initialization_mode="KERNEL_SPARK_CONTEXT_INIT_MODE", cluster_type="",
    kernel_class_name="KERNEL_CLASS_NAME", transport_encryption="TRANSPORT_ENCRYPTION")
signums   = {0, signal.SIGINT, signal.SIGTERM, signal.SIGKILL}  # what the gateways send: poll, interrupt, terminate, kill
MAX_REQ   = 1024     # a comm request is one small JSON object; more is not a request
HARD_EXIT = 1.8      # seconds from a shutdown request to the process being gone, whatever the kernel is doing

def unfilled(v) -> bool: return v is None or v == "" or bool(re.fullmatch(r"\{\w*\}|\$\{\w*\}", v))

def parse_args(argv, env=None) -> dict:
    """Options from `--name V`, `--name=V` or `--RemoteProcessProxy.name V`, else from `env`; unknown options and unfilled
    `{placeholders}` are dropped."""
    env,res,i = os.environ if env is None else env,{},0
    while i < len(argv):
        a,i = argv[i],i + 1
        if not a.startswith("--"): continue
        name,eq,v = a[2:].partition("=")
        name = name.removeprefix("RemoteProcessProxy.").replace("-", "_")
        if not eq:  # a value the gateway left empty vanishes in its shell command: the next option is not our value
            v = argv[i] if i < len(argv) and not argv[i].startswith("--") else None
            i += v is not None
        if name in opts and not unfilled(v): res[name] = v
    for k,names in opts.items():
        if k not in res and (v := next((env[n] for n in names.split() if not unfilled(env.get(n))), None)): res[k] = v
    return res

def port_range(s) -> tuple:
    "`LO..HI` as ints; `0..0` (or nothing) means any port."
    if not s: return 0,0
    try: lo,hi = (int(o) for o in s.split(".."))
    except ValueError: raise SystemExit(f"ipymini.launcher: bad --port-range {s!r}: want LO..HI") from None
    if not (0 <= lo <= hi <= 65535): raise SystemExit(f"ipymini.launcher: bad --port-range {s!r}")
    return lo,hi

def bind_in(sock, lo, hi, ip="0.0.0.0", tries=100):
    "Bind `sock` to a free port in `lo..hi` (any port when `hi` is 0)."
    if not hi: return sock.bind((ip, 0))
    for p in random.sample(range(lo, hi + 1), min(tries, hi - lo + 1)):
        try: return sock.bind((ip, p))
        except OSError: pass
    raise SystemExit(f"ipymini.launcher: no free port in {lo}..{hi}")

def free_ports(n, lo, hi) -> list:
    "`n` distinct free TCP ports in the range (bound together, then released for the kernel to bind)."
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks: bind_in(s, lo, hi)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks: s.close()

def connection(lo, hi, encryption=None) -> dict:
    "The kernel's connection info, in memory: 5 ports on all interfaces, a fresh HMAC key, CurveZMQ keys when asked for."
    conn = dict(zip(("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port"), free_ports(5, lo, hi)),
        ip="0.0.0.0", transport="tcp", signature_scheme="hmac-sha256", key=secrets.token_hex(32))
    if encryption in ("auto", "required"):
        import zmq
        if not zmq.has("curve"):
            if encryption == "required": raise SystemExit("ipymini.launcher: encryption required, and this libzmq has no CURVE")
            log.warning("transport encryption: this libzmq has no CURVE; serving in plain text")
        else:
            pub,sec = zmq.curve_keypair()
            conn.update(curve_publickey=pub.decode(), curve_secretkey=sec.decode())
    return conn

def payload(info:dict, public_key:str) -> bytes:
    "The gateway's launcher payload (version 1): `info` under a fresh AES-128 key (ECB, PKCS7), that key under its RSA key (PKCS#1 v1.5)."
    from Cryptodome.Cipher import AES, PKCS1_v1_5
    from Cryptodome.PublicKey import RSA
    from Cryptodome.Random import get_random_bytes
    from Cryptodome.Util.Padding import pad
    aes = get_random_bytes(16)
    body = AES.new(aes, AES.MODE_ECB).encrypt(pad(json.dumps(info).encode(), 16))
    key = PKCS1_v1_5.new(RSA.import_key(base64.b64decode(public_key))).encrypt(aes)
    b64 = lambda b: base64.b64encode(b).decode()
    return base64.b64encode(json.dumps(dict(version=1, key=b64(key), conn_info=b64(body))).encode())

def answer(address:str, data:bytes, timeout=30):
    "Send `data` to the gateway's response address on one connection, then close it: the gateway reads to end of stream."
    host,_,port = address.rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as s: s.sendall(data)

class CommListener(threading.Thread):
    """The gateway's comm port, on a daemon thread of the kernel process, so it is refused exactly when the kernel is gone.
    One JSON object per connection: `{"signum": 0|2|9|15}` (0 a liveness poll) or `{"shutdown": 1}`; anything else is ignored."""
    def __init__(self, lo, hi, allowed=None, orphan=0.0):
        super().__init__(daemon=True, name="ipymini-comm")
        self.allowed = allowed  # peer addresses accepted (None: any); others are closed unread
        self.orphan,self.last = orphan,monotonic()  # seconds without a gateway request (it polls every few seconds) before we end
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        bind_in(self.sock, lo, hi)
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        # a child forked by user code must not hold the port open: the gateway would take the kernel for alive after it died
        os.register_at_fork(after_in_child=self.sock.close)

    def run(self):
        from .channels import block_signals
        block_signals()  # started before the kernel's threads: SIGINT and SIGTERM are the main thread's
        while True:
            if self.orphan: self.sock.settimeout(max(0.05, self.last + self.orphan - monotonic()))
            try: conn,peer = self.sock.accept()
            except TimeoutError:
                if monotonic() - self.last < self.orphan: continue
                log.warning("comm port: no request from the gateway for %.0f s: it is gone; shutting down", self.orphan)
                return shutdown()
            except OSError: return
            with conn:
                if self.allowed is not None and peer[0] not in self.allowed:
                    log.warning("comm port: refused a connection from %s", peer[0])
                    continue
                try: self.handle(self.read(conn))
                except Exception as e: log.warning("comm port: %s", e)

    def read(self, conn) -> bytes:
        conn.settimeout(2)  # one slow or silent peer must not hold the port from the gateway's polls
        data = b""
        while len(data) <= MAX_REQ and (b := conn.recv(MAX_REQ + 1)): data += b
        if len(data) > MAX_REQ: raise ValueError("request too long: ignored")
        return data

    def handle(self, data:bytes):
        try: req = json.loads(data)
        except ValueError: req = None
        if isinstance(req, dict) and set(req) == {"signum"} and type(req["signum"]) is int and req["signum"] in signums:
            self.last = monotonic()
            if req["signum"]: os.kill(os.getpid(), req["signum"])
        elif req == {"shutdown": 1}: shutdown()
        else: log.warning("comm port: ignored %r", data[:100])

def shutdown():
    "The gateway is ending this kernel (shutdown or restart): stop it as SIGTERM would, and be gone within `HARD_EXIT` seconds."
    t = threading.Timer(HARD_EXIT, lambda: os._exit(0))
    t.daemon = True
    t.start()
    os.kill(os.getpid(), signal.SIGTERM)

def peers(address, env=None) -> set:
    """Who may use the comm port: the response address's host (the gateway connects from there), and loopback only when that host
    is loopback. IPYMINI_COMM_PEERS: a comma-separated list instead (e.g. 127.0.0.1 behind an SSH tunnel), `*` for anyone."""
    v = (os.environ if env is None else env).get("IPYMINI_COMM_PEERS", "").strip()
    if v == "*": return None
    hosts = [h.strip() for h in v.split(",") if h.strip()] or [address.rpartition(":")[0].strip("[]")]
    ips = set()
    for h in hosts:
        try: ips |= {a[4][0] for a in socket.getaddrinfo(h, None)}
        except OSError: ips.add(h)
    if any(ip.startswith("127.") or ip == "::1" for ip in ips): ips |= {"127.0.0.1", "::1"}  # a loopback peer may use any of them
    return ips | {f"::ffff:{ip}" for ip in ips if ":" not in ip}

def main(argv=None):
    o = parse_args(sys.argv[1:] if argv is None else argv)
    miss = [k for k in ("kernel_id", "response_address", "public_key") if k not in o]
    if miss: sys.exit(f"ipymini.launcher: missing {', '.join('--' + m.replace('_', '-') for m in miss)}")
    from .__main__ import logs, serve
    from .procs import env_flag
    log_stream = logs(env_flag("IPYMINI_DEBUG", False))
    if o.get("spark_context_initialization_mode", "none") != "none": log.warning("no Spark context is made: ipymini.launcher has no Spark")
    lo,hi = port_range(o.get("port_range"))
    conn = connection(lo, hi, o.get("transport_encryption"))
    comm = CommListener(lo, hi, peers(o["response_address"]), float(os.environ.get("IPYMINI_GATEWAY_ORPHAN", "0") or 0))
    # the whole connection info, CurveZMQ secret key included, as a connection file holds it: gateway_provisioners requires both
    # keys, and the payload is encrypted to the gateway's RSA key
    info = dict(conn, pid=os.getpid(), pgid=os.getpgid(0), comm_port=comm.port, kernel_id=o["kernel_id"])
    comm.start()
    answer(o["response_address"], payload(info, o["public_key"]))
    serve(conn, log_stream)

if __name__ == "__main__": main()
