"The Jupyter wire format: sign, pack and unpack messages, as `jupyter_client.session.Session` does, without its import cost."
import hashlib, hmac, itertools, math, os
from json import dumps, loads  # bound now: user code that rebinds `json.dumps` must not break the kernel's messages
from collections import deque
from datetime import datetime, timezone
from binascii import b2a_base64

DELIM = b"<IDS|MSG>"
PROTOCOL = "5.4"  # header version, as jupyter_client stamps it

def now() -> str: return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")

def json_default(o):
    "Dates as ISO 8601 with `Z`, bytes as base64, numbers as numbers: what jupyter_client's packer accepts."
    if isinstance(o, datetime): return (o if o.tzinfo else o.replace(tzinfo=timezone.utc)).isoformat().replace("+00:00", "Z")
    if isinstance(o, (bytes, bytearray, memoryview)): return b2a_base64(bytes(o), newline=False).decode("ascii")
    if hasattr(o, "__index__"): return int(o)
    if hasattr(o, "__float__"): return float(o)
    if isinstance(o, (set, tuple)): return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")

def clean(o):
    "`o` with non-finite floats turned into their repr, which JSON cannot carry."
    if isinstance(o, float): return o if math.isfinite(o) else repr(o)
    if isinstance(o, dict): return {str(k): clean(v) for k,v in o.items()}
    if isinstance(o, (list, tuple)): return [clean(v) for v in o]
    return o

def pack(o) -> bytes:
    try: s = dumps(o, default=json_default, ensure_ascii=False, allow_nan=False)
    except ValueError: s = dumps(clean(o), default=json_default, ensure_ascii=False, allow_nan=False)
    return s.encode("utf8", errors="surrogateescape")

class Session:
    "Signs and verifies messages with the connection key; remembers signatures to reject replays."
    def __init__(self, key:bytes=b"", scheme:str="hmac-sha256", username:str=None):
        self.key,self.digest = key,scheme.split("-", 1)[1]
        self.auth = hmac.new(key, digestmod=getattr(hashlib, self.digest)) if key else None
        self.last = (None, b"{}")  # the last parent header packed: a cell's outputs all share one
        h = os.urandom(16).hex()
        self.sid,self.pid,self.counter = f"{h[:8]}-{h[8:]}",os.getpid(),itertools.count()  # jupyter_client's id shape, no uuid import
        self.username = username or os.environ.get("USER", "username")
        self.seen,self.order = set(),deque()

    def sign(self, parts) -> bytes:
        if self.auth is None: return b""
        if sum(map(len, parts)) < 65536: return hmac.digest(self.key, b"".join(parts), self.digest).hex().encode()  # one C call
        h = self.auth.copy()
        for p in parts: h.update(p)
        return h.hexdigest().encode()

    def header(self, msg_type:str) -> dict:
        return dict(msg_id=f"{self.sid}_{self.pid}_{next(self.counter)}", msg_type=msg_type, username=self.username,
            session=self.sid, date=now(), version=PROTOCOL)

    def msg(self, msg_type, content=None, parent=None, metadata=None) -> dict:
        return dict(header=self.header(msg_type), parent_header=(parent or {}).get("header", {}), metadata=metadata or {},
            content={} if content is None else content)

    def serialize(self, msg, idents=()) -> list:
        "Frames for `msg`: `idents`, the delimiter, the signature, the four JSON parts, then any buffers."
        ph,md,last = msg["parent_header"],msg["metadata"],self.last
        if ph is not last[0]: self.last = last = (ph, pack(ph))  # one tuple, swapped whole: safe across threads
        parts = [pack(msg["header"]), last[1], pack(md) if md else b"{}", pack(msg["content"])]
        return [*idents, DELIM, self.sign(parts), *parts, *msg.get("buffers", ())]

    def deserialize(self, frames) -> tuple:
        "`(idents, msg)` from received frames; raises ValueError for a bad, unsigned or replayed message."
        frames = [bytes(f.buffer) if hasattr(f, "buffer") else f for f in frames]
        try: i = frames.index(DELIM)
        except ValueError: raise ValueError("no <IDS|MSG> delimiter") from None
        idents,sig,parts = frames[:i],frames[i+1] if len(frames) > i+1 else b"",frames[i+2:]
        if len(parts) < 4: raise ValueError(f"{len(parts)} message parts, 4 needed")
        if self.auth is not None:
            if not sig: raise ValueError("unsigned message")
            if not hmac.compare_digest(sig, self.sign(parts[:4])): raise ValueError("invalid signature")
            if sig in self.seen: raise ValueError("duplicate signature (replayed message)")
            self.remember(sig)
        try: header,parent,md,content = (loads(p) for p in parts[:4])
        except (ValueError, UnicodeDecodeError) as e: raise ValueError(f"bad JSON: {e}") from None
        if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str): raise ValueError("header without msg_type")
        if not isinstance(content, dict): raise ValueError("content is not an object")
        return idents,dict(header=header, parent_header=parent if isinstance(parent, dict) else {},
            metadata=md if isinstance(md, dict) else {}, content=content, buffers=parts[4:])

    def remember(self, sig, most=65536):
        self.seen.add(sig)
        self.order.append(sig)
        if len(self.order) > most: self.seen.discard(self.order.popleft())
