"stdin: input() and getpass() round trips, allow_stdin false, EOF, interrupts while waiting, stray replies."
import time, pytest
from kutils import logged_kernel, other_client, request, shell_reply, iopub_until_idle, start_kernel, text, TIMEOUT

@pytest.fixture(scope="module")
def kernel(kernel_name):
    with logged_kernel(kernel_name) as k: yield k

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

def execute_on(kc, code, sid):
    "Send an execute_request (stdin allowed) to subshell `sid`; its msg_id."
    msg = kc.session.msg("execute_request", dict(code=code, silent=False, allow_stdin=True))
    msg["header"]["subshell_id"] = sid
    kc.shell_channel.send(msg)
    return msg["header"]["msg_id"]

def test_two_clients_answer_concurrently(km, kc):
    """Two clients each run a cell that calls input(), one on a subshell: each prompt goes to the client whose cell asked, and
    each answer (jupyter_client's, sent without a parent header) reaches the cell of the client that sent it. ipykernel gives
    the first answer to whichever cell waits, so the answers are swapped."""
    other = other_client(km)
    try:
        sid = request(other, "create_subshell_request", "control")["content"]["subshell_id"]
        mine = kc.execute("print('A got', input('A? '))", allow_stdin=True)
        theirs = execute_on(other, "print('B got', input('B? '))", sid)
        ra,rb = kc.get_stdin_msg(timeout=TIMEOUT),other.get_stdin_msg(timeout=TIMEOUT)
        assert (ra["content"]["prompt"], ra["parent_header"]["msg_id"]) == ("A? ", mine)
        assert (rb["content"]["prompt"], rb["parent_header"]["msg_id"]) == ("B? ", theirs)
        other.input("bee")  # both prompts wait; the answers cross in time
        kc.input("ay")
        assert shell_reply(kc, mine)["content"]["status"] == "ok" and shell_reply(other, theirs)["content"]["status"] == "ok"
        assert text(iopub_until_idle(kc, mine)) == "A got ay\n"
        assert text(iopub_until_idle(other, theirs)) == "B got bee\n"
        request(other, "delete_subshell_request", "control", subshell_id=sid)
    finally: other.stop_channels()

def test_unparented_reply_with_two_prompts_is_refused(km, kc, is_ipymini):
    """One client with two prompts waiting (parent and subshell): a reply without a parent could be for either, so it is refused
    and logged; replies naming their request each reach their own cell. On ipykernel only the parented replies are checked."""
    sid = request(kc, "create_subshell_request", "control")["content"]["subshell_id"]
    a = kc.execute("print('main got', input('main? '))", allow_stdin=True)
    b = execute_on(kc, "print('sub got', input('sub? '))", sid)
    reqs = {m["parent_header"]["msg_id"]: m for m in (kc.get_stdin_msg(timeout=TIMEOUT), kc.get_stdin_msg(timeout=TIMEOUT))}
    assert set(reqs) == {a, b}
    if is_ipymini:
        kc.input("which?")
        end = time.monotonic() + TIMEOUT
        while "2 prompts waiting" not in (km.log_file.seek(0) or km.log_file.read()):
            assert time.monotonic() < end, "no log line for the ambiguous reply"
            time.sleep(0.05)
    for mid,value in ((b, "sub-answer"), (a, "main-answer")):
        kc.stdin_channel.send(kc.session.msg("input_reply", dict(value=value), parent=reqs[mid]))
    assert text(iopub_until_idle(kc, a)) == "main got main-answer\n" and text(iopub_until_idle(kc, b)) == "sub got sub-answer\n"
    assert shell_reply(kc, a)["content"]["status"] == "ok" and shell_reply(kc, b)["content"]["status"] == "ok"
    request(kc, "delete_subshell_request", "control", subshell_id=sid)

def test_input_for_a_client_without_stdin(kernel_name):
    """A client that allows stdin but has no stdin socket connected: input() raises StdinNotImplementedError at once (the
    kernel's stdin router says the client is unreachable), where ipykernel's input() waits for good."""
    import zmq
    with start_kernel(kernel_name) as (km,kc):
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(km._make_url("shell"))
        kc.session.send(dealer, kc.session.msg("execute_request", dict(code="input('? ')", silent=False, allow_stdin=True)))
        assert dealer.poll(10_000), "no reply: input() is waiting for a client that cannot answer"
        reply = kc.session.recv(dealer)[1]["content"]
        dealer.close()
        assert reply["status"] == "error" and reply["ename"] == "StdinNotImplementedError"
