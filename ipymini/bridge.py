"IPython's side of the kernel: one InteractiveShell, and execute, complete, inspect, is_complete and history on it."
import asyncio, builtins, getpass, os, sys, threading
from contextvars import ContextVar
from IPython.core import page
from IPython.core.async_helpers import _asyncio_runner
from IPython.core.autocall import ZMQExitAutocall
from IPython.core.error import StdinNotImplementedError, UsageError
from IPython.core.formatters import BaseFormatter, PlainTextFormatter
from IPython.core.interactiveshell import InteractiveShell, InteractiveShellABC
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.utils.tokenutil import line_at_cursor, token_at_cursor
try: from IPython.core.completer import provisionalcompleter, rectify_completions
except ImportError: provisionalcompleter = rectify_completions = None  # an IPython without the experimental completion API
from traitlets import Any, Bool, CBool, Instance, default
from traitlets.config import Config
from .capture import ROUTE, SUB, current_parent, main_parent, pin
from .procs import env_flag, exit_child, forked, headroom, plain_tb, safe_str
from .debug import CellCompiler
from . import eventloops

ALLOW_STDIN = ContextVar("ipymini_allow_stdin", default=False)
SHOWN = ContextVar("ipymini_shown", default=None)  # the error content last published in this subshell's cell
IN_HOOK = ContextVar("ipymini_in_hook", default=False)  # the displayhook is formatting a cell's result
ASIDE = ContextVar("ipymini_aside", default=False)  # a formatter other than text/plain failed: its traceback goes to stderr
EXPERIMENTAL_KEY = "_jupyter_types_experimental"

def at_cursor(code, cursor_pos) -> int:
    "`cursor_pos`, or the end of `code` when None; a position outside `code` is a ValueError the client gets back."
    if cursor_pos is None: return len(code)
    if not isinstance(cursor_pos, int) or not 0 <= cursor_pos <= len(code):
        raise ValueError(f"cursor_pos {cursor_pos!r} is outside the code (0 to {len(code)})")
    return cursor_pos

class Result:
    "What one execute did: reply `status`, the `count` it ran as, the `error` fields, the `payload` and `user_expressions`."
    def __init__(self, status, count, error=None, payload=(), user_expressions=None):
        self.status,self.count,self.error,self.payload,self.user_expressions = status,count,error,list(payload),user_expressions or {}

class Publisher(DisplayPublisher):
    "IPython's display publisher, sending `display_data`, `update_display_data` and `clear_output`."
    store_display_history = Bool(False, help="Keep each display's bundle in the history manager's `outputs` (IPython 9+), as ipykernel can.").tag(config=True)
    def __init__(self, shell=None, *args, **kw):
        super().__init__(shell=shell, *args, **kw)
        self.send = None  # set by install(): (msg_type, content, buffers) -> None

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, buffers=None, **kw):
        if self.store_display_history and (outs := getattr(self.shell.history_manager, "outputs", None)) is not None:
            from IPython.core.history import HistoryOutput
            outs.setdefault(self.shell.execution_count - getattr(self, "_in_post_execute", False), []).append(HistoryOutput("display_data", data))
        self.send("update_display_data" if update else "display_data",
            dict(data=data, metadata=metadata or {}, transient=transient or {}), buffers)

    def clear_output(self, wait=False): self.send("clear_output", dict(wait=wait), None)

class Hook(DisplayHook):
    "IPython's displayhook, sending `execute_result` with the execution count."
    send = None
    def start_displayhook(self):
        self.data,self.md = {},{}
        IN_HOOK.set(True)  # an error while formatting the result fails the cell, as in ipykernel
    def write_output_prompt(self): pass
    def write_format_data(self, format_dict, md_dict=None): self.data,self.md = format_dict,md_dict or {}
    def finish_displayhook(self):
        IN_HOOK.set(False)
        if self.data: self.send("execute_result", dict(data=self.data, metadata=self.md, execution_count=self.prompt_count), None)
        self.data = {}

def cut_kernel_frames(tb):
    "Drop the trailing frames of `tb` that are ipymini's own (tracebacks are linked lists with a writable `tb_next`)."
    here,prev = os.path.dirname(os.path.abspath(__file__)),None
    while tb is not None:
        if prev is not None and os.path.dirname(tb.tb_frame.f_code.co_filename) == here:
            prev.tb_next = None
            return
        prev,tb = tb,tb.tb_next

def replaced_interrupt(e) -> bool:
    """Did exception `e` come up while a KeyboardInterrupt was on its way out (a `finally` that failed as it unwound, as
    IPython pretty's `end_group` does when the interrupt lands in `begin_group`)? Then an interrupt is being lost."""
    for _ in range(20):  # a chain that long is not worth walking further
        e = e.__context__ if e is not None else None
        if e is None: return False
        if isinstance(e, KeyboardInterrupt): return True
    return False

def shorten_tb(e, most=10_000, keep=100):
    "Tracebacks in `e`'s chain over `most` frames keep `keep` at each end (IPython takes minutes on millions), with a note."
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        tbs,tb = [],e.__traceback__
        while tb is not None:
            tbs.append(tb)
            tb = tb.tb_next
        if len(tbs) > most:
            tbs[keep - 1].tb_next = tbs[-keep]
            note = f"[ipymini: {len(tbs) - 2*keep:,} frames of this traceback's {len(tbs):,} omitted]"
            try: e.add_note(note)
            except (AttributeError, TypeError): e.__notes__ = [note]  # 3.10, or a __notes__ not a list: IPython shows it anyway
        e = e.__cause__ or e.__context__

class MiniShell(InteractiveShell):
    "An InteractiveShell that publishes through the kernel and keeps one execution count per subshell."
    kernel = Any(None)
    readline_use,autoindent = CBool(False),CBool(False)
    exiter = Instance(ZMQExitAutocall)
    @default("exiter")
    def _default_exiter(self): return ZMQExitAutocall(self)
    keepkernel_on_exit = None

    @property
    def execution_count(self): return self.counts.get(SUB.get(), 1)
    @execution_count.setter
    def execution_count(self, n): self.counts[SUB.get()] = n

    def __init__(self, **kw):
        self.counts = {}
        super().__init__(**kw)

    def init_environment(self):
        os.environ.update(TERM="xterm-color", CLICOLOR="1", FORCE_COLOR="1", CLICOLOR_FORCE="1", PAGER="cat", GIT_PAGER="cat")

    def init_hooks(self):
        super().init_hooks()
        self.set_hook("show_in_pager", page.as_hook(self.page_payload), 99)

    def page_payload(self, strg, start=0, screen_lines=0, pager_cmd=None):
        "Pager output (`?`, `??`, `%pdoc`) becomes a `page` payload, as front ends expect."
        data = strg if isinstance(strg, dict) else {"text/plain": strg}
        self.payload_manager.write_payload(dict(source="page", data=data, start=max(0, start)))

    def ask_exit(self):
        self.exit_now = not self.keepkernel_on_exit
        self.payload_manager.write_payload(dict(source="ask_exit", keepkernel=self.keepkernel_on_exit))

    def set_next_input(self, text, replace=False):
        self.payload_manager.write_payload(dict(source="set_next_input", text=text, replace=replace))  # single: the last one wins

    def showtraceback(self, exc_tuple=None, *args, **kw):
        """A KeyboardInterrupt's traceback ends at the user's code, not in the kernel's SIGINT handler; a huge one is shortened.
        A failing `_repr_html_` (any formatter but text/plain) goes to stderr: the object still shows as text, the cell is ok.
        An error that took the place of a KeyboardInterrupt, shown by code that goes on (IPython's formatters catch every
        Exception, and show it here), stops the cell as the interrupt would have: else an interrupt can be lost."""
        etype,evalue,tb = exc_tuple or sys.exc_info()
        if not kw.get("running_compiled_code") and etype is not KeyboardInterrupt and replaced_interrupt(evalue):
            raise KeyboardInterrupt from evalue
        if etype is KeyboardInterrupt: cut_kernel_frames(tb)
        shorten_tb(evalue)
        tok = ASIDE.set(optional_format(tb))
        try: return super().showtraceback(exc_tuple, *args, **kw)
        finally: ASIDE.reset(tok)

    def _showtraceback(self, etype, evalue, stb):
        if ASIDE.get(): return sys.stderr.write("\n".join(stb) + "\n")
        err = dict(ename=etype.__name__, evalue=safe_str(evalue), traceback=stb, in_hook=IN_HOOK.get())
        SHOWN.set(err)
        self.display_pub.send("error", {k: err[k] for k in ("ename", "evalue", "traceback")})

    def _format_exception_for_storage(self, exception, *args, **kw):
        "What IPython 9 keeps for `%history`; it calls `str()` on the exception, which may raise (the cell's reply must not)."
        try: return super()._format_exception_for_storage(exception, *args, **kw)
        except BaseException: return dict(ename=type(exception).__name__, evalue=safe_str(exception), traceback=plain_tb(exception))

    async def run_code(self, code_obj, result=None, *, async_=False):
        "A statement without top-level `await` runs with the kernel's loop parked: `asyncio.run` works in it, as in a terminal."
        if async_: return await super().run_code(code_obj, result, async_=True)
        with eventloops.park(): return await super().run_code(code_obj, result, async_=False)  # no await inside: runs at once

    def enable_gui(self, gui=None):
        "Run toolkit `gui`'s event loop on the main thread while the parent subshell waits (`%gui`, `%matplotlib qt`); None stops it."
        eventloops.enable_gui(self.kernel.subs.parent, gui)

    # ipykernel's shell API, for libraries (README lists who calls what): the request that output belongs to is PARENT
    def get_parent(self): return current_parent()
    def set_thread_parent(self, parent): return pin(as_msg(parent), always=True)
    def reset_thread_parent(self, token): ROUTE.reset(token)
    def set_parent(self, parent):
        "Output from here on goes to `parent`; on the main thread, so does fd-level output (as in ipykernel)."
        pin(as_msg(parent))
        if threading.current_thread() is threading.main_thread(): main_parent[0] = as_msg(parent)

def optional_format(tb) -> bool:
    "Was this exception caught by IPython's guard around a formatter other than text/plain (the guard's frame starts `tb`)?"
    f = tb.tb_frame.f_locals.get("self") if tb is not None else None
    return isinstance(f, BaseFormatter) and not isinstance(f, PlainTextFormatter)

def as_msg(parent):
    "ipykernel's parent setters take a request or just its header; ours keep the request."
    return parent if not parent or "header" in parent else dict(header=parent)

# the class name libraries test to know they run in a notebook kernel (rich, huggingface_hub, plotly, transformers...)
MiniShell.__name__ = MiniShell.__qualname__ = "ZMQInteractiveShell"
InteractiveShellABC.register(MiniShell)

class InterruptiblePdb:
    """On `sys.meta_path` until `pdb` and IPython's debugger are both imported, then makes `pdb.set_trace()` and `breakpoint()`
    use IPython's InterruptiblePdb: an interrupt at the `ipdb>` prompt quits the debugger and the cell runs on, as in
    ipykernel (plain pdb prompts again). A hook, not an import, so start-up does not pay for pdb."""
    names = ("pdb", "IPython.core.debugger")
    def install(self):
        if all(n in sys.modules for n in self.names): self.patch()
        else: sys.meta_path.insert(0, self)

    def find_spec(self, name, path=None, target=None):
        if name not in self.names: return None
        from importlib.machinery import PathFinder
        spec = PathFinder.find_spec(name, path)
        if spec is None or not hasattr(spec.loader, "exec_module"): return spec
        run = spec.loader.exec_module  # each spec has a loader of its own
        def exec_module(module):
            run(module)
            self.patch()
        spec.loader.exec_module = exec_module
        return spec

    def patch(self):
        if (pdb := sys.modules.get("pdb")) is None: return
        if (dbg := sys.modules.get("IPython.core.debugger")) is None: from IPython.core import debugger as dbg
        if (cls := getattr(dbg, "InterruptiblePdb", None)) is None: return  # IPython's debugger is still being imported
        dbg.Pdb = pdb.Pdb = cls
        pdb.set_trace = dbg.set_trace
        if self in sys.meta_path: sys.meta_path.remove(self)

class KernelBridge:
    "Drives the shell for the kernel. Talks outward only through `ask(prompt, password)`; output goes via capture."
    def __init__(self, ask, kernel=None, **shell_kw):
        self.ask = ask
        from .profile import load_config, profile_dir
        cfg = load_config() or Config()
        if "IPKernelApp" not in cfg: cfg.IPKernelApp = Config()  # libraries test `'IPKernelApp' in get_ipython().config` too
        self.ip = MiniShell.instance(config=cfg, profile_dir=profile_dir(), kernel=kernel,
            display_pub_class=Publisher, displayhook_class=Hook, compiler_class=CellCompiler, **shell_kw)
        self.experimental = env_flag("IPYMINI_EXPERIMENTAL_COMPLETIONS", True)
        self.ip.Completer.use_jedi = env_flag("IPYMINI_USE_JEDI", self.ip.Completer.use_jedi)  # unset: the profile decides
        builtins.input,getpass.getpass = self.input,self.getpass
        InterruptiblePdb().install()
        eventloops.install()
        # IPython commits history on its own thread after every cell, holding a lock the next cell's store waits on
        # (about 1 ms of a 2 ms round trip); we batch those commits to 0.1 s after the last cell instead
        hm,self.save_soon,self.save_flag = self.ip.history_manager,None,None
        if hm.enabled and getattr(hm, "save_flag", None) is not None and hm.db_cache_size == 0:
            hm.db_cache_size,self.save_flag = 10**6,hm.save_flag

    def input(self, prompt=""):
        if not ALLOW_STDIN.get() or forked():  # a forked child has no client to ask
            raise StdinNotImplementedError("raw_input was called, but this frontend does not support input requests.")
        return self.answer(str(prompt), False)

    def getpass(self, prompt="Password: ", stream=None):
        if not ALLOW_STDIN.get() or forked():
            raise StdinNotImplementedError("getpass was called, but this frontend does not support input requests.")
        return self.answer(str(prompt), True)

    def answer(self, prompt, password):
        "The client's reply; Ctrl-D (`\\x04`) is end of input, as in a terminal."
        if (v := self.ask(prompt, password)) == "\x04": raise EOFError
        return v

    @property
    def count(self) -> int: return self.ip.execution_count

    async def execute(self, code, silent=False, store_history=True, user_expressions=None, allow_stdin=False, cell_id=None) -> Result:
        "Run `code` as a cell; subshells keep their cells out of the history database (their counts would collide)."
        ip,sub = self.ip,SUB.get()
        ALLOW_STDIN.set(allow_stdin)
        SHOWN.set(None)
        IN_HOOK.set(False)
        try: cell,exc = ip.transform_cell(code),None
        except Exception: cell,exc = code,sys.exc_info()
        hist,res,crash = store_history and sub is None,None,None
        try:
            coro = ip.run_cell_async(code, store_history=hist, silent=silent, transformed_cell=cell, preprocessing_exc_tuple=exc, cell_id=cell_id)
            if ip.loop_runner is _asyncio_runner or not ip.should_run_async(code, transformed_cell=cell, preprocessing_exc_tuple=exc): res = await coro
            else:  # `%autoawait trio` (curio, a runner of the user's): the runner runs the whole cell, with our loop parked
                with eventloops.park(), eventloops.plain_sigint(): res = ip.loop_runner(coro)
        except Exception as e: crash = e  # IPython's own machinery failed (a low recursion limit, a broken hook): the cell's error
        finally:
            exit_child()  # a child `os.fork()` made in the cell ends here, before it can touch the parent's sockets and loop
            ip.events.trigger("post_execute")
            if not silent: ip.events.trigger("post_run_cell", res)
        if sub is not None and store_history and not silent: ip.execution_count += 1
        elif hist: self.save_history_soon()
        payload = ip.payload_manager.read_payload()
        ip.payload_manager.clear_payload()
        count,shown = ip.execution_count - 1,SHOWN.get()
        err = crash or res.error_before_exec or res.error_in_exec
        if err is None and not (shown and shown["in_hook"]):
            return Result("ok", count, payload=payload, user_expressions=ip.user_expressions(user_expressions or {}))
        if err is None: return Result("error", count, {k: shown[k] for k in ("ename", "evalue", "traceback")}, payload)
        error = dict(ename=type(err).__name__, evalue=safe_str(err), traceback=shown["traceback"] if shown else plain_tb(err))
        # not shown: IPython showed a UsageError on stderr (so does ipykernel, with no error output), a hook of the user's
        # (rich's traceback) showed it, or IPython could not format it (it printed why on stderr): only then an error output
        if isinstance(err, UsageError): error["traceback"] = []
        elif not shown and "_showtraceback" not in vars(ip):
            with headroom(): self.ip.display_pub.send("error", error)
        return Result("error", count, error, payload)

    def save_history_soon(self, delay=0.1):
        "Have IPython's history thread commit `delay` seconds after the last cell (history requests and exit commit at once)."
        if self.save_flag is None: return  # history off, or the user set their own db_cache_size
        if self.save_soon is not None: self.save_soon.cancel()
        self.save_soon = asyncio.get_running_loop().call_later(delay, self.save_flag.set)

    def complete(self, code, cursor_pos=None) -> dict:
        "`matches` replacing `code[cursor_start:cursor_end]`; typed ones in metadata when experimental completions are on."
        cursor_pos = at_cursor(code, cursor_pos)
        if self.experimental and provisionalcompleter: return self.complete_experimental(code, cursor_pos)
        line,offset = line_at_cursor(code, cursor_pos)
        txt,matches = self.ip.complete("", line, cursor_pos - offset)  # IPython's line completer sees the cursor's line only
        return dict(status="ok", matches=matches, cursor_start=cursor_pos - len(txt), cursor_end=cursor_pos, metadata={})

    def complete_experimental(self, code, cursor_pos) -> dict:
        "IPython's typed completions: matches plus `_jupyter_types_experimental` (text, type, start, end, signature)."
        with provisionalcompleter(): comps = list(rectify_completions(code, self.ip.Completer.completions(code, cursor_pos)))
        start,end = (comps[0].start,comps[0].end) if comps else (cursor_pos,cursor_pos)  # rectified: all share one span
        types = [dict(start=c.start, end=c.end, text=c.text, type=c.type, signature=c.signature) for c in comps]
        return dict(status="ok", matches=[c.text for c in comps], cursor_start=start, cursor_end=end, metadata={EXPERIMENTAL_KEY: types})

    def inspect(self, code, cursor_pos=None, detail_level=0, omit_sections=()) -> dict:
        "`found` and IPython's mime bundle for the name at the cursor; an unknown name is `found: false`, not an error."
        name = token_at_cursor(code, at_cursor(code, cursor_pos))
        try: data = self.ip.object_inspect_mime(name, detail_level=detail_level, omit_sections=omit_sections)
        except KeyError: return dict(status="ok", found=False, data={}, metadata={})
        if not self.ip.enable_html_pager: data.pop("text/html", None)  # html only when the user asked for it, as in ipykernel
        return dict(status="ok", found=True, data=data, metadata={})

    def is_complete(self, code) -> dict:
        "`status`, and `indent` when incomplete."
        status,n = self.ip.input_transformer_manager.check_complete(code)
        return dict(status=status, indent=" "*(n or 0)) if status == "incomplete" else dict(status=status)

    def history(self, hist_access_type, output=False, raw=True, session=0, start=0, stop=None, n=None, pattern=None, unique=False, **kw):
        "`history` as `[session, line, input]` rows, or `[session, line, [input, output]]` with `output`."
        hm = self.ip.history_manager
        if hist_access_type == "tail": hist = hm.get_tail(10 if n is None else n, raw=raw, output=output, include_latest=True)
        elif hist_access_type == "range": hist = hm.get_range(session, start, stop, raw=raw, output=output)
        elif hist_access_type == "search": hist = hm.search(pattern or "*", raw=raw, output=output, n=n, unique=unique)
        else: raise ValueError(f"hist_access_type must be tail, range or search, not {hist_access_type!r}")
        return dict(status="ok", history=[list(h) for h in hist])
