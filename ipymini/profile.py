"The user's IPython set-up, as ipykernel honours it: profile dir, config files, CLI options, extensions, startup files, exec_lines/files."
import glob, logging, os, re

log = logging.getLogger("ipymini.profile")
argv = []  # IPython-style options from the kernel's command line (`--profile=NAME`, `--Class.trait=value`, ...); set by __main__
state = dict(profile_dir=None)  # the ProfileDir load_config chose, for init_profile

def plain(stb): return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", "\n".join(stb))

def cli_config(args):
    "A traitlets Config from `args`, with IPython's aliases and flags; options nobody knows are logged and ignored."
    from IPython.core.application import base_aliases
    from IPython.core.shellapp import shell_aliases, shell_flags
    from traitlets.config.loader import Config, DeferredConfigList
    aliases,cfg,args = {**base_aliases, **shell_aliases},Config(),list(args)
    while args:
        a = args.pop(0)
        if not a.startswith("-") or a in ("-", "--"):
            log.warning("ignored command-line argument %r", a)
            continue
        name,eq,val = a.lstrip("-").partition("=")
        if not eq and name in shell_flags and not (name in aliases and args and not args[0].startswith("-")):
            cfg.merge(Config(shell_flags[name][0]))
            continue
        key = aliases.get(name, name)
        if "." not in key: log.warning("ignored unknown option %r", a)
        elif not eq and (not args or args[0].startswith("-")): log.warning("option %r has no value; ignored", a)
        else:
            cls,trait = key.rsplit(".", 1)
            cfg[cls].setdefault(trait, DeferredConfigList()).append(val if eq else args.pop(0))  # the trait turns strings into values
    return cfg

def cli_str(v): return v[-1] if isinstance(v, list) else v

def drop_bad(cfg):
    "Leave out (with a warning) settings their trait rejects: IPython would raise building the shell, and the kernel would never start."
    from traitlets.config.configurable import Configurable
    from traitlets.config.loader import DeferredConfig
    classes,todo = {},[Configurable]
    while todo:
        c = todo.pop()
        classes.setdefault(c.__name__, set()).add(c)
        todo += c.__subclasses__()
    for sec,kv in cfg.items():
        if not isinstance(kv, dict): continue
        for cls in classes.get(sec, ()):
            traits = cls.class_traits(config=True)
            try: obj = cls.__new__(cls)  # a bare instance: some validators need one, none needs it initialised
            except Exception: continue
            for k,v in list(kv.items()):
                if k not in traits: continue
                try: traits[k].validate(obj, v.get_value(traits[k]) if isinstance(v, DeferredConfig) else v)
                except Exception as e:
                    log.warning("ignored %s.%s = %r: %s", sec, k, v, e)
                    del kv[k]
    return cfg

def checked(cfg):
    "`cfg` with bad values left out; `ZMQInteractiveShell.*` settings apply as they are: bridge.py's shell class has that name."
    return drop_bad(cfg)

def find_profile(ipdir, name, cfg):
    "The ProfileDir at `ProfileDir.location` or named `name` in `ipdir`; created if missing, as IPython does for `default`."
    from IPython.core.profiledir import ProfileDir, ProfileDirError
    if "location" in cfg.ProfileDir: return ProfileDir.create_profile_dir(os.path.expanduser(cli_str(cfg.ProfileDir.location)), cfg)
    try: return ProfileDir.find_profile_dir_by_name(ipdir, name, cfg)
    except ProfileDirError:
        if name != "default": log.warning("profile %r not found in %s; using the default profile", name, ipdir)
        return ProfileDir.create_profile_dir_by_name(ipdir, "default", cfg)

def config_files(name, paths):
    "The configs in `name`.py and `name`.json along `paths`, lowest priority (last path) first; a file that fails is logged and skipped."
    from IPython.core.application import ProfileAwareConfigLoader
    from traitlets.config.loader import ConfigFileNotFound, JSONFileConfigLoader
    for p in reversed(paths):
        for loader in (ProfileAwareConfigLoader(name + ".py", path=p, log=log), JSONFileConfigLoader(name + ".json", path=p, log=log)):
            try: yield loader.load_config()
            except ConfigFileNotFound: pass
            except Exception: log.error("error in config file %s; its settings are skipped", loader.full_filename or name, exc_info=True)

def load_config():
    "The traitlets config the shell is built with; None (IPython's defaults) if the profile can't be read at all."
    try: return read_config()
    except Exception: log.exception("could not load the IPython profile; starting with IPython's defaults")

def read_config():
    "`ipython_config` then `ipython_kernel_config` from the profile dir, then the system dirs, then the command line on top."
    from IPython.core.application import ENV_CONFIG_DIRS, SYSTEM_CONFIG_DIRS
    from IPython.paths import get_ipython_dir
    from traitlets.config.loader import Config
    cl = cli_config(argv)
    app = cl.BaseIPythonApplication
    ipdir = os.path.abspath(os.path.expanduser(cli_str(app.get("ipython_dir")) or get_ipython_dir()))
    pd = state["profile_dir"] = find_profile(ipdir, cli_str(app.get("profile")) or "default", cl)
    paths,cfg = [pd.location, *ENV_CONFIG_DIRS, *SYSTEM_CONFIG_DIRS],Config()
    for name in ("ipython_config", "ipython_kernel_config"):
        for c in config_files(name, paths): cfg.merge(checked(c))
    if extra := cli_str(app.get("extra_config_file")):
        for c in config_files(os.path.splitext(os.path.abspath(os.path.expanduser(extra)))[0], [None]): cfg.merge(checked(c))
    cfg.merge(checked(cl))  # the command line wins over config files, as in IPython
    if "hist_file" not in cfg.HistoryManager and "hist_file" not in cfg.HistoryAccessor:
        cfg.HistoryManager.hist_file = os.path.join(pd.location, "history.sqlite")  # the shell would open the default profile's
    return cfg

def profile_dir():
    "The ProfileDir `load_config` chose: for `MiniShell.instance(profile_dir=...)`, so the shell never opens the default profile."
    return state["profile_dir"]

def kernel_app():
    "IPython's InteractiveShellApp under ipykernel's app name, so `InteractiveShellApp.*` and `IPKernelApp.*` settings both apply."
    from IPython.core.shellapp import InteractiveShellApp
    from IPython.core.application import ENV_CONFIG_DIRS, SYSTEM_CONFIG_DIRS
    class IPKernelApp(InteractiveShellApp):
        def _run_startup_files(self):
            "PYTHONSTARTUP, then every startup dir's *.py and *.ipy in sorted order, each on its own: one that raises doesn't stop the rest."
            files = []
            if self.exec_PYTHONSTARTUP and os.environ.get("PYTHONSTARTUP") and not (self.code_to_run or self.module_to_run or self.file_to_run):
                files.append(os.environ["PYTHONSTARTUP"])
            dirs = [self.profile_dir.startup_dir] + [os.path.join(p, "startup") for p in ENV_CONFIG_DIRS + SYSTEM_CONFIG_DIRS]
            files += sorted(f for d in dirs for ext in ("py", "ipy") for f in glob.glob(os.path.join(glob.escape(d), "*." + ext)))
            for f in files:
                try: self._exec_file(f)
                except Exception as e:
                    stb = self.shell.InteractiveTB.structured_traceback(type(e), e, e.__traceback__.tb_next)  # from the file's frame on
                    log.error("startup file %s raised:\n%s", f, plain(stb))
    return IPKernelApp

def init_profile(ip):
    "Run what the profile asks for before the first cell: GUI/matplotlib, extensions, startup files, exec_lines, exec_files, -c/-m code."
    pd = state["profile_dir"]
    if pd is not None and ip.profile_dir.location != pd.location: ip.profile_dir = pd
    try: app = kernel_app()(config=drop_bad(ip.config), shell=ip)  # now IPKernelApp exists, its bad settings can be found too
    except Exception: return log.exception("could not read InteractiveShellApp settings; no startup files or extensions run")
    app.log,app.profile_dir,app.ipython_dir,app.extra_args = log,ip.profile_dir,ip.ipython_dir,[]
    ip.configurables.append(app)  # `%config IPKernelApp` works, as in ipykernel
    ip._showtraceback = lambda etype, evalue, stb: log.error("%s", plain(stb))  # no cell to show it in: the kernel's stderr
    try:
        app.init_path()
        app.init_gui_pylab()
        app.init_extensions()
        app.init_code()
    finally: del ip._showtraceback
