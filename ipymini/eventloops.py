"""Other event loops on the kernel's threads: a GUI toolkit's loop inside the parent subshell's wait, and asyncio loops a
cell runs itself (`asyncio.run`, `run_until_complete`, trio) while the kernel's own loop is parked."""
import asyncio, importlib, math, os, select, signal, sys, threading, time, traceback
from asyncio import events, tasks
from contextlib import contextmanager

parked = {}  # thread ident -> that thread's kernel loop, while a synchronous statement of a cell runs there

@contextmanager
def park():
    """Leave this thread's loop while a statement runs, as between two steps of a task: no running loop, no current task
    (3.14+ checks the thread's current task in C), so `asyncio.run` in it works as in a terminal."""
    loop = events._get_running_loop()
    if loop is None: return (yield)  # nothing runs here (a trio cell's statements): nothing to hide
    tid,task = threading.get_ident(),tasks.current_task(loop)
    if task is not None: tasks._leave_task(loop, task)  # what a task step does as it ends; needs `loop` still running
    events._set_running_loop(None)
    parked[tid] = loop
    try: yield
    finally:
        del parked[tid]
        events._set_running_loop(loop)
        asyncio.set_event_loop(loop)  # asyncio.run clears the thread's loop when it ends
        if task is not None: tasks._enter_task(loop, task)  # and as the next step begins: the cell's task goes on

def get_running_loop():
    "The running loop or, in a cell's statement, the parked kernel loop: `asyncio.create_task` there still works."
    if (loop := events._get_running_loop()) is None: loop = parked.get(threading.get_ident())
    if loop is None: raise RuntimeError("no running event loop")
    return loop

@contextmanager
def plain_sigint():
    "Python's own SIGINT handler while another library's loop runs a cell: trio raises KeyboardInterrupt only where it is safe."
    if threading.current_thread() is not threading.main_thread(): return (yield)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try: yield
    finally: signal.signal(signal.SIGINT, old)

def install():
    "`asyncio.get_running_loop` (and asyncio's own uses of it: `create_task`, `sleep`...) sees parked loops."
    asyncio.get_running_loop = events.get_running_loop = get_running_loop

# --- GUI toolkits. Each `wait(fd, timeout)` runs the toolkit's loop until `fd` (the parent subshell's epoll fd, readable
# while any fd asyncio watches is) is readable or `timeout` seconds (asyncio's next timer; None: none) have passed.
def ms(timeout): return max(0, math.ceil(timeout*1000))

def callback_error(*exc):
    "Where an exception raised in a toolkit callback goes: the last cell's stderr (PyQt aborts the process on the default hook)."
    traceback.print_exception(*exc)

qt_apis = dict(pyqt6="PyQt6", pyside6="PySide6", pyqt5="PyQt5", pyside2="PySide2")

class Qt:
    "A QEventLoop quit by a QSocketNotifier on the fd or a single-shot QTimer; the QApplication is made if missing and kept."
    def __init__(self, gui):
        names = dict(qt5=("PyQt5", "PySide2"), qt6=("PyQt6", "PySide6")).get(gui, ("PyQt6", "PySide6", "PyQt5", "PySide2"))
        api = qt_apis.get(os.environ.get("QT_API", "").lower())
        names = [n for n in names if n in sys.modules] or ([api] if api in names else []) + list(names)  # as matplotlib picks
        for n in names:
            try: self.core,widgets = importlib.import_module(n + ".QtCore"),importlib.import_module(n + ".QtWidgets")
            except ImportError: continue
            break
        else: raise ImportError(f"%gui {gui} needs one of {', '.join(names)}")
        self.major = 6 if n.endswith("6") else 5
        if sys.platform == "linux" and not any(map(os.environ.get, ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))):
            raise RuntimeError(f"%gui {gui}: no display (DISPLAY is not set); Qt would abort the kernel")
        self.app = widgets.QApplication.instance() or widgets.QApplication(["ipymini"])
        self.loop,self.timer,self.notes = self.core.QEventLoop(),self.core.QTimer(),{}
        self.timer.setSingleShot(True)
        self.timer.setTimerType(getattr(self.core.Qt, "TimerType", self.core.Qt).PreciseTimer)
        self.timer.timeout.connect(self.loop.quit)
        self.exec = getattr(self.loop, "exec", None) or self.loop.exec_

    def accepts(self, gui): return gui in ("qt", f"qt{self.major}")

    def wait(self, fd, timeout):
        if (note := self.notes.get(fd)) is None:
            note = self.notes[fd] = self.core.QSocketNotifier(fd, getattr(self.core.QSocketNotifier, "Type", self.core.QSocketNotifier).Read)
            note.activated.connect(self.loop.quit)
        if sys.excepthook is sys.__excepthook__: sys.excepthook = callback_error  # IPython puts the default back after each cell
        note.setEnabled(True)
        if timeout is not None: self.timer.start(ms(timeout))
        try: self.exec()
        finally:
            note.setEnabled(False)
            self.timer.stop()

class Tk:
    "Tcl's event loop (one per thread, for every Tk window in it), one event at a time, until a file handler or `after` fires."
    def __init__(self, gui):
        import tkinter
        self.tkinter,self.root = tkinter,tkinter.Tcl()  # an interpreter with no window of its own, and not the default root

    def accepts(self, gui): return gui == "tk"

    def wait(self, fd, timeout):
        stop,tk = [],self.root.tk
        def done(*a): stop.append(1)
        tk.createfilehandler(fd, self.tkinter.READABLE, done)
        timer = None if timeout is None else self.root.after(ms(timeout), done)
        try:
            while not stop: tk.dooneevent(0)
        finally:
            tk.deletefilehandler(fd)
            if timer is not None: self.root.after_cancel(timer)

class GLib:
    "GTK 3 or 4: the default GLib main context, iterated until an fd watch or a timeout source fires. Not tested here."
    def __init__(self, gui):
        import gi
        gi.require_version("Gtk", "4.0" if gui == "gtk4" else "3.0")
        from gi.repository import GLib
        importlib.import_module("gi.repository.Gtk")  # GTK adds its event sources to GLib's default context
        self.glib,self.ctx,self.gui = GLib,GLib.MainContext.default(),gui

    def accepts(self, gui): return gui in (self.gui, "gtk")

    def wait(self, fd, timeout):
        stop,g = [],self.glib
        def done(*a):
            stop.append(1)
            return True  # removed below
        srcs = [g.io_add_watch(fd, g.PRIORITY_DEFAULT, g.IO_IN, done)] + ([] if timeout is None else [g.timeout_add(ms(timeout), done)])
        try:
            while not stop: self.ctx.iteration(True)
        finally:
            for s in srcs: g.source_remove(s)

class Wx:
    "wx can watch no fd: a wx.Timer looks at it every `period` ms (this is the one toolkit that polls). Not tested here."
    period = 50
    def __init__(self, gui):
        import wx
        self.wx,self.app = wx,wx.GetApp() or wx.App(False)
        self.app.SetExitOnFrameDelete(False)

    def accepts(self, gui): return gui == "wx"

    def wait(self, fd, timeout):
        wx,end = self.wx,None if timeout is None else time.monotonic() + timeout
        loop,timer = wx.GUIEventLoop(),wx.Timer()
        def look(e=None):
            if select.select([fd], [], [], 0)[0] or (end is not None and time.monotonic() >= end): loop.Exit()
        timer.Bind(wx.EVT_TIMER, look)
        timer.Start(self.period)
        try: loop.Run()
        finally: timer.Stop()

made = {}  # toolkit objects, kept for the kernel's life: Qt windows need their QApplication
toolkits = dict(qt=Qt, qt5=Qt, qt6=Qt, tk=Tk, gtk=GLib, gtk3=GLib, gtk4=GLib, wx=Wx)
no_loop = {"asyncio", "inline", "nbagg", "webagg", "notebook", "ipympl", "widget"}  # our loop already serves these

def enable_gui(sub, gui):
    "Run toolkit `gui`'s loop whenever subshell `sub` (the main thread's) waits; `None` stops it; `asyncio` and the like are ours."
    sel = sub.sel
    if gui in no_loop: return
    if gui is None:
        sel.gui = None
        return
    if gui == "osx": raise ValueError("%gui osx: ipymini has no macOS (Cocoa) event loop")
    if gui not in toolkits: raise ValueError(f"%gui {gui!r}: choose one of {', '.join([*toolkits, *sorted(no_loop)])}, or none to stop")
    if threading.current_thread() is not threading.main_thread(): raise RuntimeError("%gui runs a toolkit on the main thread: use it in the parent subshell")
    if sel.gui is not None:
        if sel.gui.accepts(gui): return
        raise RuntimeError(f"%gui {gui}: {type(sel.gui).__name__} is running; `%gui` (no argument) stops it first")
    t = made.get(toolkits[gui])
    if t is None or not t.accepts(gui): t = made[toolkits[gui]] = toolkits[gui](gui)
    sel.gui = t  # a signal wakes the loop while the toolkit runs: see procs.SignalRelay
