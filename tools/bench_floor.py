"The floor for tools/bench.py: the least a Python process can do per request, signed like a kernel, on ROUTER + PUB."
# usage: python tools/bench_floor.py KEY [busy]  -- prints {"shell_port": .., "iopub_port": ..}, serves until killed
import hashlib, hmac, json, os, sys, uuid
from datetime import datetime, timezone
import zmq

DELIM = b"<IDS|MSG>"

def main(key:str, busy:bool):
    ctx = zmq.Context()
    shell,iopub = ctx.socket(zmq.ROUTER),ctx.socket(zmq.PUB)
    ports = dict(shell_port=shell.bind_to_random_port("tcp://127.0.0.1"), iopub_port=iopub.bind_to_random_port("tcp://127.0.0.1"))
    print(json.dumps(ports), flush=True)
    auth,sid,n = hmac.new(key.encode(), digestmod=hashlib.sha256),uuid.uuid4().hex,0
    def sign(parts):
        h = auth.copy()
        for p in parts: h.update(p)
        return h.hexdigest().encode()
    def send(sock, idents, msg_type, content, parent):
        nonlocal n
        n += 1
        header = dict(msg_id=f"{sid}_{os.getpid()}_{n}", msg_type=msg_type, username="floor", session=sid,
            date=datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"), version="5.4")
        parts = [json.dumps(o).encode() for o in (header, parent, {}, content)]
        sock.send_multipart([*idents, DELIM, sign(parts), *parts])
    while True:
        frames = shell.recv_multipart()
        i = frames.index(DELIM)
        idents,sig,parts = frames[:i],frames[i+1],frames[i+2:i+6]
        if not hmac.compare_digest(sig, sign(parts)): continue
        header,parent,md,content = (json.loads(p) for p in parts)
        if busy: send(iopub, [b"status"], "status", dict(execution_state="busy"), header)
        send(shell, idents, header["msg_type"].replace("_request", "_reply"), dict(status="ok", execution_count=n, user_expressions={}, payload=[]), header)
        if busy: send(iopub, [b"status"], "status", dict(execution_state="idle"), header)

if __name__ == "__main__": main(sys.argv[1], sys.argv[2:3] == ["busy"])
