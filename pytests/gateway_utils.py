"""Real gateways on loopback for pytests/test_gateway.py: a private sshd on 127.0.0.2 (EG and GP take 127.0.0.1 as local and
skip SSH), Enterprise Gateway or Kernel Gateway + gateway_provisioners from tools/gateways.sh's venvs, and a REST + websocket client."""
import asyncio, getpass, glob, json, os, shutil, socket, subprocess, sys, threading, time, urllib.request, uuid
from contextlib import contextmanager

REMOTE   = "127.0.0.2"
GATEWAYS = os.environ.get("IPYMINI_GATEWAYS", os.path.expanduser("~/.cache/ipymini-gateways"))
SSHD     = shutil.which("sshd") or "/usr/sbin/sshd"
USER     = "jovyan"  # KERNEL_USERNAME: both gateways refuse to start kernels for root

def missing() -> str:
    "Why the gateway tests cannot run here, or ''."
    if not os.access(SSHD, os.X_OK): return "no sshd (tools/test.sh installs openssh-server as root)"
    for v in ("eg", "gp"):
        if not os.path.exists(f"{GATEWAYS}/{v}/.reqs"): return f"no {v} gateway venv (tools/gateways.sh builds them)"  # written last
    return ""

def free_port(ip="127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]

def wait_port(ip, port, proc, timeout=30):
    "Until something listens on `ip:port`; fails at once if `proc` exits first."
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None: raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection((ip, port), timeout=0.5): return
        except OSError: time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {ip}:{port}")

def stop(proc):
    if proc.poll() is None: proc.terminate()
    try: proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

@contextmanager
def sshd(d):
    "A key-only sshd on 127.0.0.2 made for the test: yields `(port, home)`, `home` holding the client key and known_hosts."
    os.makedirs("/run/sshd", exist_ok=True)  # its privilege-separation directory
    home = os.path.join(d, "home")
    os.makedirs(f"{home}/.ssh", mode=0o700)
    kg = lambda f: subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f], check=True)
    kg(f"{d}/host_key")
    kg(f"{home}/.ssh/id_ed25519")
    shutil.copy(f"{home}/.ssh/id_ed25519.pub", f"{d}/authorized_keys")
    port = free_port(REMOTE)
    with open(f"{d}/host_key.pub") as f: host_pub = " ".join(f.read().split()[:2])
    with open(f"{home}/.ssh/known_hosts", "w") as f: f.write(f"[{REMOTE}]:{port} {host_pub}\n")
    with open(f"{d}/sshd_config", "w") as f: f.write("\n".join([f"ListenAddress {REMOTE}:{port}", f"HostKey {d}/host_key",
        f"AuthorizedKeysFile {d}/authorized_keys", f"PidFile {d}/sshd.pid", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no", "LogLevel ERROR", ""]))
    with open(f"{d}/sshd.log", "w") as log: p = subprocess.Popen([SSHD, "-D", "-e", "-f", f"{d}/sshd_config"], stderr=log)
    try:
        wait_port(REMOTE, port, p)
        yield port,home
    finally: stop(p)

spec_lock = threading.Lock()

def install_specs(root, gateway, py=sys.executable) -> str:
    """ipymini's spec, written by `python -m ipymini install --gateway`, and the stock ipykernel launcher's, written by GP's
    `jupyter-ssh-spec` (EG's gets the same launcher, its short options, and EG's metadata), once per gateway kind under `root`;
    returns their JUPYTER_PATH."""
    d = f"{root}/specs-{gateway}"
    path = f"{d}/share/jupyter"
    with spec_lock:
        if os.path.exists(d): return path
        os.makedirs(d)
    ps = [subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for a in (
        [py, "-m", "ipymini", "install", "--gateway", gateway, "--prefix", d, "--name", "ipymini", "--remote-hosts", REMOTE, "--python", py],
        [f"{GATEWAYS}/gp/bin/jupyter-ssh-spec", "install", "--prefix", d, "--kernel-name", "python3", "--remote-hosts", REMOTE])]
    for p in ps:
        if p.wait(60): raise RuntimeError(f"{p.args[:4]} failed: {p.stderr.read().decode()}")
    with open(f"{path}/kernels/python3/kernel.json") as f: spec = json.load(f)
    spec["argv"][0] = py  # "python" over SSH is whatever the login's PATH finds
    if gateway == "eg":
        i = spec["argv"].index("--transport-encryption")
        del spec["argv"][i:i + 2]
        spec["metadata"] = dict(debugger=True, process_proxy=dict(
            class_name="enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy", config=dict(remote_hosts=REMOTE)))
    with open(f"{path}/kernels/python3/kernel.json", "w") as f: json.dump(spec, f)
    return path

@contextmanager
def gateway(d, kind, encryption=None, **extra):
    """EG (`kind` 'eg') or Kernel Gateway + GP ('gp') on 127.0.0.1, starting kernels over SSH on 127.0.0.2 as this user: yields
    a `Gateway`; `extra`: more of the gateway's environment."""
    root,d = d,os.path.join(d, kind + (encryption or ""))
    os.makedirs(d)
    with sshd(d) as (ssh_port,home):
        port,logs = free_port(),f"{d}/kernel-logs"
        os.makedirs(logs)
        env = dict(PATH=os.environ["PATH"], HOME=home, JUPYTER_PATH=install_specs(root, kind), JUPYTER_RUNTIME_DIR=f"{d}/runtime",
            JUPYTER_DATA_DIR=f"{d}/data", JUPYTER_CONFIG_DIR=f"{d}/config", JUPYTER_PLATFORM_DIRS="1", LANG="C.UTF-8")
        P = kind.upper()
        env.update({f"{P}_SSH_PORT": str(ssh_port), f"{P}_REMOTE_HOSTS": REMOTE, f"{P}_KERNEL_LOG_DIR": logs, f"{P}_RESPONSE_IP": "127.0.0.1",
            f"{P}_REMOTE_USER": getpass.getuser(), f"{P}_RESPONSE_PORT": str(free_port()), **extra})
        jup = f"{GATEWAYS}/{kind}/bin/jupyter"
        if kind == "eg": cmd = [jup, "enterprisegateway", "--ip=127.0.0.1", f"--port={port}", "--port_retries=0"]
        else:
            cmd = [jup, "kernelgateway", "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={port}",
                "--KernelGatewayApp.port_retries=0"]
            if encryption: cmd.append(f"--KernelManager.transport_encryption={encryption}")
        log = open(f"{d}/gateway.log", "w")
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=d)
        try:
            wait_port("127.0.0.1", port, p, 60)
            yield Gateway(f"127.0.0.1:{port}", d, logs, p)
        finally:
            stop(p)
            log.close()

class Gateway:
    "The gateway's REST API, and kernels' websockets."
    def __init__(self, addr, d, logs, proc): self.addr,self.d,self.logs,self.proc = addr,d,logs,proc

    def rest(self, method, path, body=None, timeout=60):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{self.addr}{path}", data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r: return json.loads(r.read() or b"null")

    def start(self, name) -> str: return self.rest("POST", "/api/kernels", dict(name=name, env=dict(KERNEL_USERNAME=USER)))["id"]

    def log(self) -> str:
        with open(f"{self.d}/gateway.log") as f: return f.read()

class WS:
    "A kernel's websocket (the JSON protocol with a `channel` field), driven synchronously on a loop of its own."
    def __init__(self, gw, kid, timeout=30):
        from tornado.websocket import websocket_connect
        self.loop,self.session = asyncio.new_event_loop(),uuid.uuid4().hex
        self.conn = self.wait(lambda: websocket_connect(f"ws://{gw.addr}/api/kernels/{kid}/channels"), timeout)

    def wait(self, f, timeout):
        "`await f()` on our loop (tornado makes its futures on the running loop), failing after `timeout` seconds."
        async def go(): return await asyncio.wait_for(f(), timeout)
        return self.loop.run_until_complete(go())
    def close(self):
        async def go():
            self.conn.close()
            await asyncio.sleep(0)  # let the close go out
        self.loop.run_until_complete(go())
        self.loop.close()

    def send(self, msg_type, content, channel="shell") -> str:
        mid = uuid.uuid4().hex
        hdr = dict(msg_id=mid, msg_type=msg_type, session=self.session, username="test", version="5.3", date="2026-01-01T00:00:00.000000Z")
        msg = json.dumps(dict(header=hdr, parent_header={}, metadata={}, content=content, channel=channel, buffers=[]))
        self.wait(lambda: self.conn.write_message(msg), 10)
        return mid

    def recv(self, timeout) -> dict:
        m = self.wait(self.conn.read_message, timeout)
        if m is None: raise ConnectionError("websocket closed")
        return json.loads(m)

    def execute(self, code, timeout=30) -> tuple:
        "`(execute_reply content, [iopub messages])` for `code`, once the reply and idle are both in."
        mid,reply,outs,idle = self.send("execute_request", dict(code=code, silent=False, store_history=True, user_expressions={},
            allow_stdin=False, stop_on_error=True)),None,[],False
        end = time.monotonic() + timeout
        while reply is None or not idle:
            m = self.recv(max(0.01, end - time.monotonic()))
            if m.get("parent_header", {}).get("msg_id") != mid: continue
            if m["msg_type"] == "execute_reply": reply = m["content"]
            elif m["msg_type"] == "status": idle = m["content"]["execution_state"] == "idle"
            else: outs.append(m)
        return reply,outs

    def wait_for(self, pred, timeout=30) -> dict:
        end = time.monotonic() + timeout
        while not pred(m := self.recv(max(0.01, end - time.monotonic()))): pass
        return m

def result(outs): return next(m["content"]["data"]["text/plain"] for m in outs if m["msg_type"] == "execute_result")

def procs(needle) -> list:
    "Pids of processes whose command line holds `needle`."
    out = []
    for n in os.listdir("/proc"):
        if not n.isdigit() or int(n) == os.getpid(): continue
        try:
            with open(f"/proc/{n}/cmdline", "rb") as f: cmd = f.read()
            with open(f"/proc/{n}/stat") as f: zombie = f.read().split(") ")[1][0] == "Z"
        except OSError: continue
        if needle.encode() in cmd and not zombie: out.append(int(n))
    return out

class Answer:
    "A response address as a gateway opens one, with its RSA key; `conn()` decrypts the one answer a launcher sends."
    def __init__(self):
        import base64
        from Cryptodome.PublicKey import RSA
        self.rsa = RSA.generate(2048)
        self.public = base64.b64encode(self.rsa.publickey().export_key("DER")).decode()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(20)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def conn(self) -> dict:
        import base64
        from Cryptodome.Cipher import AES, PKCS1_v1_5
        from Cryptodome.Util.Padding import unpad
        c,_ = self.sock.accept()
        with c:
            data = b""
            while (b := c.recv(65536)): data += b
        p = json.loads(base64.b64decode(data))
        assert p["version"] == 1
        aes = PKCS1_v1_5.new(self.rsa).decrypt(base64.b64decode(p["key"]), None)
        return json.loads(unpad(AES.new(aes, AES.MODE_ECB).decrypt(base64.b64decode(p["conn_info"])), 16))

def bench(n=5, poll=None):
    """Start-to-first-reply through each gateway, ipymini's launcher and the stock one alternating: `python pytests/gateway_utils.py [N [POLL]]`;
    POLL sets the gateways' poll interval (EG_/GP_POLL_INTERVAL, default 0.5 s), at which they look for the launcher's answer."""
    import statistics, tempfile
    with tempfile.TemporaryDirectory() as d:
        for kind in ("eg", "gp"):
            with gateway(d, kind, **({f"{kind.upper()}_POLL_INTERVAL": str(poll)} if poll else {})) as gw:
                times = {"ipymini": [], "python3": []}
                for i in range(n):
                    for spec in times:
                        t = time.monotonic()
                        kid = gw.start(spec)
                        started = time.monotonic() - t
                        ws = WS(gw, kid)
                        ws.execute("1+1")
                        times[spec].append((started, time.monotonic() - t))
                        ws.close()
                        gw.rest("DELETE", f"/api/kernels/{kid}")
                        for p in procs(kid): os.kill(p, 9)
                        for f in glob.glob(f"/tmp/kernel-{kid}_*.json"): os.remove(f)
                for spec,ts in times.items():
                    med = lambda i: statistics.median(t[i] for t in ts)
                    print(f"{kind} {spec:8} POST /api/kernels {med(0):.2f} s, first reply {med(1):.2f} s (median of {n})")

def bench_answer(n=7):
    "How soon each launcher alone answers (process start to the decrypted connection info), no gateway: ipymini's and GP's stock one."
    import statistics, tempfile, psutil
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([f"{GATEWAYS}/gp/bin/jupyter-ssh-spec", "install", "--prefix", d, "--kernel-name", "s"], check=True, capture_output=True)
        times = {"ipymini": [], "python3": []}
        for i in range(n):
            for spec in times:
                a,kid = Answer(),"k" + uuid.uuid4().hex
                args = ["--kernel-id", kid, "--response-address", a.address, "--public-key", a.public, "--port-range", "0..0"]
                pre = ["-m", "ipymini.launcher"] if spec == "ipymini" else [f"{d}/share/jupyter/kernels/s/scripts/launch_ipykernel.py"]
                t = time.monotonic()
                p = subprocess.Popen([sys.executable, *pre, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                a.conn()
                times[spec].append(time.monotonic() - t)
                for c in [*psutil.Process(p.pid).children(recursive=True), p]: c.kill()
                p.wait()
                for f in glob.glob(f"/tmp/kernel-{kid}_*.json"): os.remove(f)
        for spec,ts in times.items(): print(f"launcher alone {spec:8} answers after {statistics.median(ts)*1000:.0f} ms (median of {n})")

if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    bench_answer(n)
    bench(n, float(sys.argv[2]) if len(sys.argv) > 2 else None)
