"stdin: input() and getpass() round trips, allow_stdin false, EOF, interrupts while waiting, stray replies."
import tempfile, time, pytest
from kutils import request, shell_reply, iopub_until_idle, start_kernel, text, TIMEOUT

@pytest.fixture(scope="module")
def kernel(kernel_name):
    "A kernel whose stderr goes to a file, so tests can read what it logs."
    with tempfile.TemporaryFile("w+") as log, start_kernel(kernel_name, stderr=log) as (km,kc):
        km.log_file = log
        yield km,kc

def ask(kc, code, answer=None, **kw):
    "Run `code`, answer its input_request with `answer`; `(input_request msg, reply content, iopub outs)`."
    mid = kc.execute(code, allow_stdin=True, **kw)
    req = kc.get_stdin_msg(timeout=TIMEOUT)
    if answer is not None: kc.input(answer)
    return req,shell_reply(kc, mid)["content"],iopub_until_idle(kc, mid)

def test_input_round_trip(kc):
    req,reply,outs = ask(kc, "print('before')\nx = input('name? ')\nprint('got', x)", "Ada")
    assert req["msg_type"] == "input_request" and req["content"] == dict(prompt="name? ", password=False)
    assert reply["status"] == "ok"
    assert text(outs) == "before\ngot Ada\n"

def test_input_request_is_parented_to_the_cell(kc):
    mid = kc.execute("input('> ')", allow_stdin=True)
    req = kc.get_stdin_msg(timeout=TIMEOUT)
    assert req["parent_header"]["msg_id"] == mid
    kc.input("v")
    assert shell_reply(kc, mid)["content"]["status"] == "ok"
    iopub_until_idle(kc, mid)

def test_getpass_round_trip(kc):
    req,reply,outs = ask(kc, "import getpass\npw = getpass.getpass('pw: ')\nprint(len(pw), pw[::-1])", "secret")
    assert req["content"] == dict(prompt="pw: ", password=True)
    assert reply["status"] == "ok" and text(outs) == "6 terces\n"

def test_not_allowed(kc):
    mid = kc.execute("input('x')", allow_stdin=False)
    reply = shell_reply(kc, mid)["content"]
    assert reply["status"] == "error" and reply["ename"] == "StdinNotImplementedError"
    iopub_until_idle(kc, mid)
    mid = kc.execute("import getpass\ngetpass.getpass()", allow_stdin=False)
    assert shell_reply(kc, mid)["content"]["ename"] == "StdinNotImplementedError"
    iopub_until_idle(kc, mid)

def test_eof(kc):
    "A reply of Ctrl-D (`\\x04`) is end of input: EOFError in the cell, as in ipykernel."
    _,reply,_ = ask(kc, "input()", "\x04")
    assert reply["status"] == "error" and reply["ename"] == "EOFError"

def test_interrupt_while_waiting(kc):
    "An interrupt while input() waits raises KeyboardInterrupt in the cell; the kernel then serves the next cell."
    mid = kc.execute("try:\n    input('wait ')\nexcept KeyboardInterrupt:\n    print('interrupted')\n    raise", allow_stdin=True)
    kc.get_stdin_msg(timeout=TIMEOUT)
    assert request(kc, "interrupt_request", "control")["content"]["status"] == "ok"
    reply = shell_reply(kc, mid)["content"]
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert text(iopub_until_idle(kc, mid)) == "interrupted\n"
    _,reply,outs = ask(kc, "print(input())", "next")
    assert reply["status"] == "ok" and text(outs) == "next\n"

def test_stray_reply_is_ignored_and_logged(kc, km, is_ipymini):
    "An input_reply to a request that is not waiting is dropped, does not answer a later input(), and is logged."
    msg = kc.session.msg("input_reply", dict(value="stray"), parent=dict(msg_id="no-such-request", msg_type="input_request"))
    kc.stdin_channel.send(msg)
    end = time.monotonic() + TIMEOUT
    while is_ipymini and time.monotonic() < end:  # ipykernel reads stdin only while waiting, so it logs nothing here
        km.log_file.seek(0)
        if "stray input_reply" in km.log_file.read(): break
        time.sleep(0.05)
    else: assert not is_ipymini, "no log line for the stray reply"
    _,reply,outs = ask(kc, "print(input())", "real")
    assert reply["status"] == "ok" and text(outs) == "real\n"
