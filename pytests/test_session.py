"ipymini's own wire format against jupyter_client's Session, both ways: what one signs the other accepts, byte for byte."
import json, pytest
from datetime import datetime, timezone
from jupyter_client.session import Session as JSession
from ipymini.session import Session, pack

KEY = b"secret-key"

def test_ours_to_jupyter_client():
    ours,theirs = Session(KEY),JSession(key=KEY)
    parent = theirs.msg("execute_request", dict(code="x"))
    msg = ours.msg("execute_reply", dict(status="ok", text="héllo ✓", n=1.5, when=datetime(2026, 1, 2, tzinfo=timezone.utc)), parent)
    msg["buffers"] = [b"\x00\x01binary"]
    idents,frames = theirs.feed_identities(ours.serialize(msg, [b"client-id"]))
    got = theirs.deserialize(frames)
    assert idents == [b"client-id"]
    assert got["content"]["text"] == "héllo ✓" and got["content"]["when"] == "2026-01-02T00:00:00Z"
    assert got["parent_header"]["msg_id"] == parent["header"]["msg_id"]
    assert got["header"]["msg_type"] == "execute_reply" and isinstance(got["header"]["date"], datetime)
    assert bytes(got["buffers"][0]) == b"\x00\x01binary"

def test_jupyter_client_to_ours():
    ours,theirs = Session(KEY),JSession(key=KEY)
    frames = theirs.serialize(theirs.msg("execute_request", dict(code="print('ü')")), [b"id1", b"id2"])
    idents,msg = ours.deserialize(frames)
    assert idents == [b"id1", b"id2"] and msg["content"]["code"] == "print('ü')"
    with pytest.raises(ValueError, match="duplicate"): ours.deserialize(frames)

def test_same_bytes_as_jupyter_client():
    "The same message packs to the same JSON and the same signature."
    ours,theirs = Session(KEY),JSession(key=KEY)
    msg = ours.msg("stream", dict(name="stdout", text="ü\n\t\"q\""))
    tf = theirs.serialize(dict(msg, msg_id=msg["header"]["msg_id"], msg_type="stream"))
    assert ours.serialize(msg)[1:6] == tf[1:6]

@pytest.mark.parametrize("frames,why", [([b"no delimiter"], "delimiter"), ([b"<IDS|MSG>", b"x", b"{}", b"{}", b"{}", b"{}"], "signature"),
    ([b"<IDS|MSG>", b"", b"{}", b"{}", b"{}", b"{}"], "unsigned"), ([b"<IDS|MSG>"], "parts")])
def test_bad_frames_rejected(frames, why):
    with pytest.raises(ValueError, match=why): Session(KEY).deserialize(frames)

def test_unsigned_session_and_nan():
    s = Session(b"")
    _,msg = s.deserialize(s.serialize(s.msg("x", dict(v=float("nan")))))
    assert msg["content"]["v"] == "nan"
    assert json.loads(pack(dict(b=b"\xff"))) == dict(b="/w==")
