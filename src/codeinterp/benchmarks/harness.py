"""The test driver for assert-style tests, and the evidence it leaves behind.

This file is two things:

* imported by the parent (``codeinterp.benchmarks.evaluation``): ``driver_source()``,
  ``job()``, ``pass_record()``;
* run as ``prog.py`` (``__main__``) inside the sandbox, standard library only,
  where it loads the untrusted program, runs the tests and, only after the last
  test ran, writes a success record on file descriptor ``RECORD_FD`` (a pipe
  the parent reads; not stdout, so the program's prints cannot get in the way).

Why a driver and not "``program + tests`` as one file, exit status 0 = passed":
a wrong program could end the interpreter with status 0 before the tests ran
(``sys.exit``, ``os._exit``, ``atexit``, a thread, ``unittest.main()``...),
and its ``if __name__ == "__main__":`` demo code ran as part of the test.

The evidence channel.  The job (setup, program, test script and a per-run
random token) arrives on stdin.  The driver reads it whole before the program
exists, truncates the stdin file and points fd 0 at ``/dev/null``, so neither
the token nor the tests are anywhere the program can read them back (not on
disk, not in the environment, not in an open file).  The success record is a
hash of the token (``pass_record``), so a program that echoes whatever it
finds on its fds to every fd forges nothing.  The parent accepts exactly one
record, exactly that string, and exit status 0; anything else is not a pass.

In between, the driver defends the tests against the program (all of it at
"class" level, not per known trick):

* the program is loaded as module ``solution`` (``__name__ != "__main__"``),
  so demo blocks do not run;
* an audit hook, installed before the program and impossible to remove,
  refuses tracing/profiling hooks, frame and garbage-collector introspection,
  ``ctypes``, crafted code objects, further audit hooks and opening
  ``/proc/*/mem`` -- the tools to reach into the driver or the test frames;
* the tests run in their own namespace: builtins are the real ones (a program
  global that shadows a builtin is dropped, except the entry point), names the
  setup defined keep the setup's values, and modules are the real ones;
* before the tests and after every call into program code, the builtins,
  the standard-library modules and their classes, ``sys`` hooks, signal
  handlers and ``sys.modules`` are restored from a snapshot taken before the
  program ran; leftover threads must finish first;
* every call in the test script goes through ``__ci_call__`` (an AST rewrite):
  a value that comes out of program code reaches the test as plain data --
  subclasses of builtin types become the builtin type, containers are rebuilt
  element by element, iterators are wrapped, and an instance of a program
  class that overrides comparison/conversion dunders becomes an opaque value
  equal only to itself (the "AlwaysEqual" hack);
* exit paths: ``SystemExit``/``KeyboardInterrupt`` anywhere are caught; after
  the record the driver leaves with ``os._exit(0)`` (no ``atexit`` handlers,
  no finalizers); a forked copy of the driver never writes the record.

Residual weakness (documented, not defended): the program runs in the same
interpreter as the tests.  Code written against *this* driver's source (for
example a signal handler that walks the interrupted frame chain up to the
driver's locals) can still find the token; generic tricks cannot.
"""

import os
import sys

RECORD_FD = 3  # the sandbox puts the write end of the record pipe here
_TAG = "codeinterp-pass:"
MODULE_NAME = "solution"
# Imported before the program, so their functions and classes are trusted and
# snapshotted; covers what the benchmarks' tests and setups import.
PRELOAD = ("math", "cmath", "re", "string", "collections", "collections.abc", "itertools", "functools",
           "operator", "heapq", "bisect", "json", "typing", "copy", "random", "statistics", "decimal",
           "fractions", "datetime", "io", "array", "types", "threading", "signal", "gc", "ast",
           "hashlib", "os.path", "time")


def pass_record(token: str) -> str:
    """The only record that means "every test ran and none failed"."""
    import hashlib

    return "passed " + hashlib.sha256((_TAG + token).encode()).hexdigest()


def driver_source() -> str:
    with open(__file__, encoding="utf-8") as f:
        return f.read()


def job(setup: str, program: str, script: str, token: str, entry_point: str = "") -> str:
    import json

    return json.dumps({"setup": setup, "program": program, "script": script, "token": token,
                       "entry_point": entry_point})


# ---------------------------------------------------------------------------
# Everything below runs inside the sandbox.  All state lives in locals and
# closures of _driver(): the program can reach this module (``import
# __main__``) and rewrite its globals, but not the closures.


def _driver():  # noqa: C901 - one closure on purpose (see the module docstring)
    import ast
    import builtins
    import gc
    import hashlib
    import json
    import linecache
    import signal
    import time
    import types
    import _thread
    from collections import Counter, OrderedDict, defaultdict, deque
    from fractions import Fraction

    for name in PRELOAD:
        __import__(name)
    # Modules imported from now on are compiled from source, never unmarshalled
    # from a .pyc: marshal.loads is refused below (crafted code objects).
    sys.pycache_prefix = "/nonexistent/codeinterp-no-pyc"

    # Every name used after the program starts is bound here, as a local: the
    # program can rewrite this module's globals, the builtins and the stdlib's
    # module attributes, but not the cells of these closures.
    _sys, _os = sys, os
    _RECORD_FD, _MODULE, _TAG_ = RECORD_FD, MODULE_NAME, _TAG
    _os_read, _os_write, _os_close, _os_exit, _os_getpid = os.read, os.write, os.close, os._exit, os.getpid
    _os_listdir, _os_dup2, _os_open, _os_ftruncate = os.listdir, os.dup2, os.open, os.ftruncate
    _realpath, _basename = os.path.realpath, os.path.basename
    _sleep, _monotonic = time.sleep, time.monotonic
    _sha256, _loads, _dumps = hashlib.sha256, json.loads, json.dumps
    _type, _id, _len, _isinstance, _str = type, id, len, isinstance, str
    _list, _tuple, _dict, _set, _frozenset = list, tuple, dict, set, frozenset
    _int, _float, _complex, _bytes, _bool = int, float, complex, bytes, bool
    _object, _getattr, _setattr, _any, _max, _range = object, getattr, setattr, any, max, range
    _compile, _exec, _next, _callable = compile, exec, next, callable
    _BaseException, _StopIteration = BaseException, StopIteration
    _MemoryError, _AssertionError, _SystemExit, _KeyboardInterrupt = MemoryError, AssertionError, SystemExit, KeyboardInterrupt
    _OSError, _ValueError, _TypeError = OSError, ValueError, TypeError
    _RuntimeError, _AttributeError, _PermissionError = RuntimeError, AttributeError, PermissionError
    _mro = type.__dict__["__mro__"].__get__  # the real MRO, whatever a metaclass claims
    _type_dict = type.__dict__["__dict__"].__get__
    _subclasses = type.__subclasses__
    _type_setattr, _type_delattr = type.__setattr__, type.__delattr__
    _obj_setattr, _obj_getattribute = object.__setattr__, object.__getattribute__
    _dict_items, _dict_keys, _dict_get = dict.items, dict.keys, dict.get
    _dict_clear, _dict_update, _dict_setitem = dict.clear, dict.update, dict.__setitem__
    _proxy_keys, _proxy_get = type(type.__dict__).keys, type(type.__dict__).get
    _list_iter, _tuple_iter, _set_iter, _fset_iter = list.__iter__, tuple.__iter__, set.__iter__, frozenset.__iter__
    _deque_iter = deque.__iter__
    _str_startswith, _str_endswith = str.startswith, str.endswith
    _gc_collect, _gc_disable, _gc_enable, _gc_freeze = gc.collect, gc.disable, gc.enable, gc.freeze
    _thread_count = _thread._count
    _signal_signal, _getsignal, _setitimer = sys.modules["_signal"].signal, signal.getsignal, signal.setitimer
    _ITIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)
    _sys_modules, _sys_dict, _builtins_dict = sys.modules, sys.__dict__, builtins.__dict__
    _FunctionType, _MethodType, _ModuleType = types.FunctionType, types.MethodType, types.ModuleType
    _CodeType, _GeneratorType = types.CodeType, types.GeneratorType
    _C_CALLABLES = (types.BuiltinFunctionType, types.WrapperDescriptorType, types.MethodWrapperType,
                    types.MethodDescriptorType, types.ClassMethodDescriptorType)
    _dict_keys_t, _dict_items_t = type({}.keys()), type({}.items())
    me = _os_getpid()
    err_fd = os.dup(2)  # messages still get out if the program closes or replaces fd 2

    def inherits(t, cls):
        for c in _mro(t):
            if c is cls:
                return True
        return False

    # -------------------------------------------------------------- reporting

    def report(status, message):
        """A failure record (never a pass) on the record fd and stderr, then exit 1."""
        line = _dumps({"status": status, "message": message[:2000]}) + "\n"
        for fd, text in ((_RECORD_FD, line), (err_fd, message + "\n")):
            try:
                _os_write(fd, text.encode("utf-8", "replace"))
            except _OSError:
                pass
        _os_exit(1)

    def describe(e):
        t = _type(e)
        name = t.__qualname__ if _type(t.__qualname__) is _str else "exception"
        mod = t.__module__
        if _type(mod) is _str and mod not in ("builtins", "__main__"):
            name = mod + "." + name
        try:
            text = _str(e)
        except _BaseException:
            text = "<unprintable>"
        return name + ": " + text if text else name

    def report_exception(e, where):
        t = _type(e)
        if inherits(t, _SystemExit):
            try:
                code = e.code
                status = 0 if code is None else (_int.__int__(code) if inherits(_type(code), _int) else 1)
            except _BaseException:
                status = 1
            report("error", f"exited {where} (status {status})")
        if inherits(t, _KeyboardInterrupt):
            report("error", f"KeyboardInterrupt raised {where}")
        if inherits(t, _MemoryError):
            report("memory", describe(e))
        if inherits(t, _AssertionError):
            report("failed", describe(e))
        report("error", describe(e))

    # -------------------------------------------------------------- the job

    chunks = []
    while True:
        b = _os_read(0, 1 << 20)
        if not b:
            break
        chunks.append(b)
    try:
        _os_ftruncate(0, 0)  # the tests and the token leave the stdin file ...
    except _OSError:
        pass
    devnull = _os_open("/dev/null", os.O_RDONLY)
    _os_dup2(devnull, 0)  # ... and fd 0 (input() gets EOF, as before)
    _os_close(devnull)
    spec = _loads(b"".join(chunks).decode("utf-8"))
    del chunks
    record = "passed " + _sha256((_TAG_ + spec.pop("token")).encode()).hexdigest()
    try:
        os.set_inheritable(_RECORD_FD, False)  # exec'd children do not get it
    except _OSError:
        pass
    # Not prctl(PR_SET_DUMPABLE, 0), which would keep exec'd children of this
    # uid out of /proc/<pid>/mem: it also makes /proc/self root-owned, and
    # ordinary programs (the sandbox's own fork-bomb test) write /proc/self/comm.

    # -------------------------------------------------------------- the setup (trusted)

    mod = _ModuleType(_MODULE)
    ns = mod.__dict__
    ns["__builtins__"] = builtins
    _sys_modules[_MODULE] = mod
    try:
        _exec(_compile(spec.get("setup") or "", "<setup>", "exec", dont_inherit=True, optimize=0), ns)
    except _BaseException as e:
        report("error", "test setup failed: " + describe(e))
    setup_names = _dict(ns)

    # A Python signal handler receives the interrupted frame, the one way to a
    # frame that no audit event covers: handlers the program installs get None.
    def safe_signal(signalnum, handler):
        if _callable(handler) and not _isinstance(handler, _C_CALLABLES):
            inner = handler

            def handler(signum, frame):
                return inner(signum, None)

        return _signal_signal(signalnum, handler)

    signal.signal = safe_signal
    _sys_modules["_signal"].signal = safe_signal

    # Frames are refused (tb_frame), so tracebacks are printed without them:
    # a correct program that calls traceback.print_exc() or logging.exception()
    # in an except block keeps working.
    import traceback

    _only = traceback.format_exception_only
    _no_value = object()

    def format_exception(exc, value=_no_value, tb=None, limit=None, chain=True):
        value = exc if value is _no_value else value
        return ["Traceback (frames hidden by the test harness)\n"] + _only(_type(value), value)

    def print_exception(exc, value=_no_value, tb=None, limit=None, file=None, chain=True):
        out = _sys.stderr if file is None else file
        for line in format_exception(exc, value):
            print(line, file=out, end="")

    def print_exc(limit=None, file=None, chain=True):
        print_exception(_sys.exception() if hasattr(_sys, "exception") else _sys.exc_info()[1], file=file)

    def format_exc(limit=None, chain=True):
        return "".join(format_exception(_sys.exc_info()[1]))

    traceback.format_exception, traceback.print_exception = format_exception, print_exception
    traceback.print_exc, traceback.format_exc = print_exc, format_exc
    traceback.print_tb = lambda *a, **k: None
    traceback.format_tb = traceback.extract_tb = lambda *a, **k: []

    # -------------------------------------------------------------- snapshot of the world

    IMMUTABLE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: nothing to snapshot
    trusted_types = {}  # id -> class, every class that exists before the program runs
    stack = [_object]
    while stack:
        c = stack.pop()
        if _id(c) in trusted_types:
            continue
        trusted_types[_id(c)] = c
        try:
            stack.extend(_subclasses(c))
        except _TypeError:
            pass
    builtins_snap = _dict(_builtins_dict)
    sys_snap = _dict(_sys_dict)
    for k in ("last_type", "last_value", "last_traceback", "last_exc"):
        sys_snap.pop(k, None)
    modules_snap = _dict(_sys_modules)
    module_snaps = []  # (module, its class, a copy of its dict)
    class_snaps = []  # (class, a copy of its dict)
    seen = set()
    safe_ids = set()  # ids of stdlib/builtin callables: the tests may call them directly
    for name, m in _dict_items(modules_snap):
        if not inherits(_type(m), _ModuleType) or m is mod or m is _sys or m is builtins or name == "__main__":
            continue
        d = m.__dict__
        module_snaps.append((m, _type(m), _dict(d)))
        for v in d.values():
            tv = _type(v)
            if tv is _FunctionType or _isinstance(v, _C_CALLABLES):
                safe_ids.add(_id(v))
            elif inherits(tv, type) and _id(v) in trusted_types and _id(v) not in seen:
                seen.add(_id(v))
                safe_ids.add(_id(v))
                if not (v.__flags__ & IMMUTABLE):
                    class_snaps.append((v, _dict(_type_dict(v))))
    for v in builtins_snap.values():
        if _callable(v):
            safe_ids.add(_id(v))
    signals = []
    for s in (signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT,
              signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGWINCH):
        signals.append((s, _getsignal(s)))
    stdio = (sys.stdin, sys.stdout, sys.stderr)
    hooks = (sys.excepthook, sys.displayhook, sys.unraisablehook, sys.breakpointhook)

    # -------------------------------------------------------------- the audit hook
    # Installed before the program; audit hooks cannot be removed.  It refuses
    # the tools to reach the driver's or the tests' frames and objects.

    BLOCKED = {"sys.settrace", "sys.setprofile", "sys._current_frames", "sys._current_exceptions",
               "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.addaudithook",
               "code.__new__", "marshal.loads", "marshal.load", "sys.monitoring.register_callback",
               "sys.monitoring.use_tool_id", "sys.monitoring.set_events", "sys.monitoring.set_local_events"}
    FRAME_ATTRS = {"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back", "gi_code", "cr_code", "ag_code"}

    def hook(event, args):
        if event == "import" and args and _type(args[0]) is _str and args[0] in modules_snap:
            # a second copy of a module we snapshotted (the program removed it from sys.modules)
            raise _RuntimeError(f"re-importing {args[0]} is not allowed here")
        if event in BLOCKED:
            raise _RuntimeError(f"{event} is not allowed here")
        if event == "sys._getframe":
            raise _ValueError("call stack is not deep enough")  # what stdlib callers handle
        if event == "object.__getattr__" and _len(args) > 1 and args[1] in FRAME_ATTRS:
            raise _AttributeError(f"{args[1]} is not available here")
        if _str_startswith(event, "ctypes."):
            raise _RuntimeError("ctypes is not allowed here")
        if event == "open" and args and _type(args[0]) in (_str, _bytes):
            p = args[0] if _type(args[0]) is _str else args[0].decode("utf-8", "replace")
            if _basename(p) == "mem" or ("proc" in p and _str_endswith(_realpath(p), "/mem")):
                raise _PermissionError("/proc/*/mem is not available here")
            if _str_startswith(p, "/proc") or not _str_startswith(p, "/"):
                rp = _realpath(p)
                if _str_startswith(rp, "/proc/") and _str_endswith(rp, "/mem"):
                    raise _PermissionError("/proc/*/mem is not available here")

    sys.addaudithook(hook)
    del hook
    _gc_collect()
    _gc_freeze()  # later collections only look at what the program made

    # -------------------------------------------------------------- restoring the world

    def wait_threads(deadline_s=2.0):
        end = _monotonic() + deadline_s
        while True:
            try:
                n = _len(_os_listdir("/proc/self/task")) - 1
            except _OSError:
                n = 0
            n = _max(n, _thread_count())
            if n <= 0:
                return
            if _monotonic() > end:
                report("error", "program left threads running")
            _sleep(0.002)

    def dict_differs(d, snap, get):
        if _len(d) != _len(snap):
            return True
        for k, v in _dict_items(snap):
            if get(d, k, snap) is not v:
                return True
        return False

    def restore_dict(d, snap, package=None):
        if not dict_differs(d, snap, _dict_get):
            return False
        keep = {}
        if package is not None:  # submodules imported since are genuine attributes
            for k in _list(_dict_keys(d)):
                if _type(k) is _str and k not in snap:
                    v = _dict_get(d, k)
                    if inherits(_type(v), _ModuleType) and _dict_get(_sys_modules, package + "." + k) is v:
                        keep[k] = v
        _dict_clear(d)
        _dict_update(d, snap)
        _dict_update(d, keep)
        return True

    def sanitize():
        for _ in _range(5):
            dirty = False
            _gc_collect()  # the program's garbage is finalized now, not in the middle of a test
            for s, h in signals:
                try:
                    if _getsignal(s) is not h:
                        _signal_signal(s, h)
                        dirty = True
                except (_OSError, _ValueError, _TypeError):
                    pass
            for which in _ITIMERS:
                _setitimer(which, 0)
            dirty |= restore_dict(_builtins_dict, builtins_snap)
            dirty |= restore_dict(_sys_dict, sys_snap)
            _sys.stdin, _sys.stdout, _sys.stderr = stdio
            _sys.excepthook, _sys.displayhook, _sys.unraisablehook, _sys.breakpointhook = hooks
            for m, t, snap in module_snaps:
                if _type(m) is not t:
                    _obj_setattr(m, "__class__", t)
                    dirty = True
                name = _dict_get(snap, "__name__")
                dirty |= restore_dict(m.__dict__, snap, name if _type(name) is _str else None)
            for name, m in _dict_items(modules_snap):
                if _dict_get(_sys_modules, name) is not m:
                    _sys_modules[name] = m
                    dirty = True
            for c, snap in class_snaps:
                cd = _type_dict(c)
                if dict_differs(cd, snap, _proxy_get):
                    dirty = True
                    for k in _list(_proxy_keys(cd)):
                        if k not in snap:
                            _type_delattr(c, k)
                    for k, v in _dict_items(snap):
                        if _proxy_get(cd, k, snap) is not v:
                            _type_setattr(c, k, v)
            _gc_disable()  # no automatic collection (and program finalizers) while test code runs
            if not dirty:
                return
        report("error", "program keeps modifying the test environment")

    def settle():
        wait_threads()
        sanitize()

    # -------------------------------------------------------------- plain values
    # Whatever program code returns reaches the test as data whose comparison
    # and conversion the program does not control.

    ATOMIC = {_id(t) for t in (_int, _float, _complex, _str, _bytes, _bool, _type(None), _range,
                               _type(Ellipsis), _type(NotImplemented), slice)}
    BENIGN = {"__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__init__", "__slots__",
              "__annotations__", "__match_args__", "__dataclass_fields__", "__dataclass_params__",
              "__orig_bases__", "__parameters__", "__firstlineno__", "__static_attributes__",
              "__init_subclass__", "__class_getitem__", "__new__", "__getnewargs__", "__setattr__",
              "__delattr__", "__post_init__", "__annotate__", "__type_params__", "__abstractmethods__"}

    class Opaque:
        """A program object whose class overrides comparison or conversion: equal only to itself."""

        __slots__ = ("_ci_obj",)

        def __init__(self, obj):
            _obj_setattr(self, "_ci_obj", obj)

        def __eq__(self, other):
            return inherits(_type(other), Opaque) and \
                _obj_getattribute(other, "_ci_obj") is _obj_getattribute(self, "_ci_obj")

        def __ne__(self, other):
            return not self.__eq__(other)

        def __hash__(self):
            return _id(_obj_getattribute(self, "_ci_obj"))

        def __repr__(self):
            return "<program object of class %s>" % _type(_obj_getattribute(self, "_ci_obj")).__name__

        def __getattr__(self, name):
            value = _getattr(_obj_getattribute(self, "_ci_obj"), name)
            out = plain(value)
            value = None
            settle()
            return out

        def __setattr__(self, name, value):
            _setattr(_obj_getattribute(self, "_ci_obj"), name, unwrap(value))
            settle()

    def unwrap(x):
        return _obj_getattribute(x, "_ci_obj") if _type(x) is Opaque else x

    def overrides(cls):
        for c in _mro(cls):
            if _id(c) in trusted_types:
                return False
            for k in _proxy_keys(_type_dict(c)):
                if _type(k) is not _str or (_str_startswith(k, "__") and _str_endswith(k, "__") and k not in BENIGN):
                    return True
        return False

    def iter_plain(it):
        while True:
            _gc_enable()
            try:
                x = _next(it)
            except _StopIteration:
                settle()
                return
            out = plain(x)
            x = None
            settle()
            yield out

    def plain(x, memo=None):
        t = _type(x)
        if _id(t) in ATOMIC:
            return x
        if memo is None:
            memo = {}
        key = _id(x)
        if key in memo:
            return memo[key]
        if t is _list or t is _tuple or t is _set or t is _frozenset or t is _dict:
            return container(x, t, memo)
        if _id(t) in trusted_types:
            if t is _GeneratorType or _proxy_get(_type_dict(t), "__next__") is not None:
                out = iter_plain(x)
            elif t is Counter or t is OrderedDict or t is defaultdict:
                out = defaultdict(x.default_factory) if t is defaultdict else t()
                memo[key] = out
                for k, v in _list(_dict_items(x)):
                    _dict_setitem(out, plain(k, memo), plain(v, memo))
            elif t is deque:
                out = deque(maxlen=x.maxlen)
                memo[key] = out
                out.extend([plain(v, memo) for v in _list(_deque_iter(x))])
            elif t is Fraction:
                out = Fraction(plain(x.numerator), plain(x.denominator))
            elif t is _dict_keys_t or t is _dict_items_t:
                out = container(_list(x), _list, memo)
                out = {k: None for k in out}.keys() if t is _dict_keys_t else _dict(out).items()
            else:
                out = x
            memo[key] = out
            return out
        # a class the program made: a subclass of a builtin type becomes that type
        for base in _mro(t):
            if base is _int:
                return _int.__int__(x)
            if base is _float:
                return _float.__float__(x)
            if base is _str:
                return _str.__str__(x)
            if base is _bytes:
                return _bytes.__bytes__(x)
            if base is _complex:
                return _complex.__complex__(x)
            if base is _list or base is _tuple or base is _set or base is _frozenset or base is _dict:
                return container(x, base, memo)
            if _id(base) in trusted_types:
                break
        out = Opaque(x) if overrides(t) else x
        memo[key] = out
        return out

    def container(x, base, memo):
        key = _id(x)
        if base is _list:
            out = []
            memo[key] = out
            out.extend([plain(v, memo) for v in _list(_list_iter(x))])
        elif base is _tuple:
            out = _tuple([plain(v, memo) for v in _list(_tuple_iter(x))])
        elif base is _set:
            out = _set([plain(v, memo) for v in _list(_set_iter(x))])
        elif base is _frozenset:
            out = _frozenset([plain(v, memo) for v in _list(_fset_iter(x))])
        else:
            out = {}
            memo[key] = out
            for k, v in _list(_dict_items(x)):
                _dict_setitem(out, plain(k, memo), plain(v, memo))
        memo[key] = out
        return out

    # -------------------------------------------------------------- calling program code

    test_codes = set()

    def is_test_function(f):
        t = _type(f)
        if t is _MethodType:
            f = f.__func__
            t = _type(f)
        return t is _FunctionType and _id(f.__code__) in test_codes

    def call(f, /, *args, **kwargs):
        """Every call in the test script: program code's results come back plain."""
        if _id(f) in safe_ids or is_test_function(f):
            return f(*args, **kwargs)
        args = [unwrap(a) for a in args]
        kwargs = {k: unwrap(v) for k, v in _dict_items(kwargs)}
        _gc_enable()
        r = f(*args, **kwargs)
        out = plain(r)
        r = args = kwargs = None  # finalizers run here, before settle()
        settle()
        return out

    def guard(f):
        def guarded(*args, **kwargs):
            return call(f, *args, **kwargs)

        for attr in ("__name__", "__qualname__", "__doc__"):
            try:
                _obj_setattr(guarded, attr, _getattr(f, attr))
            except _BaseException:
                pass
        return guarded

    class CallRewriter(ast.NodeTransformer):
        def visit_Call(self, node):
            self.generic_visit(node)
            if _isinstance(node.func, ast.Name) and node.func.id == "super":
                return node  # zero-argument super() needs to be called directly
            return ast.copy_location(ast.Call(func=ast.Name("__ci_call__", ast.Load()),
                                              args=[node.func] + node.args, keywords=node.keywords), node)

    try:
        tree = ast.parse(spec.get("script") or "", "<tests>")
        tree = ast.fix_missing_locations(CallRewriter().visit(tree))
        test_code = _compile(tree, "<tests>", "exec", dont_inherit=True, optimize=0)
    except _BaseException as e:
        report("error", "test script does not compile: " + describe(e))
    stack = [test_code]
    while stack:
        c = stack.pop()
        test_codes.add(_id(c))
        stack.extend(k for k in c.co_consts if _type(k) is _CodeType)
    entry = spec.get("entry_point") or ""
    program = spec.get("program") or ""
    del spec, tree

    # -------------------------------------------------------------- the program

    filename = _MODULE + ".py"
    try:
        code = _compile(program, filename, "exec", dont_inherit=True, optimize=0)
    except _BaseException as e:
        report_exception(e, "while compiling")
    linecache.cache[filename] = (_len(program), None, program.splitlines(True), filename)
    try:
        _exec(code, ns)
    except _BaseException as e:
        report_exception(e, "before tests finished")
    code = None
    settle()

    # -------------------------------------------------------------- the tests' namespace
    # Builtins are a private copy the program has no reference to.  A program
    # global that shadows a builtin or a setup name is dropped (the entry point
    # excepted); modules are the real ones; program callables are guarded.

    tns = {}
    for k, v in _list(_dict_items(ns)):
        if _type(k) is not _str:
            continue
        if k != entry and k in setup_names:
            v = setup_names[k]
            if k in builtins_snap and v is builtins_snap[k]:
                continue
        elif k != entry and k in builtins_snap:
            continue
        tv = _type(v)
        if inherits(tv, _ModuleType):
            real = _dict_get(modules_snap, k)
            if not inherits(_type(real), _ModuleType):
                real = _dict_get(modules_snap, _dict_get(v.__dict__, "__name__")) \
                    if _type(_dict_get(v.__dict__, "__name__")) is _str else None
            tns[k] = real if real is not None else v
        elif inherits(tv, type):
            tns[k] = v
        elif _id(v) in safe_ids:
            tns[k] = v
        elif _callable(v):
            tns[k] = guard(v)
        else:
            tns[k] = plain(v)
    tns["__builtins__"] = _dict(builtins_snap)
    tns["__name__"] = "__ci_tests__"
    tns["__ci_call__"] = call
    ns = v = None
    settle()

    # -------------------------------------------------------------- the tests

    try:
        _exec(test_code, tns)
    except _BaseException as e:
        report_exception(e, "during the tests")
    settle()
    for stream in stdio[1:]:  # as at a normal interpreter exit: output that cannot be written is an error
        try:
            stream.flush()
        except _BaseException as e:
            report_exception(e, "while flushing output")
    if _os_getpid() != me:
        _os_exit(0)  # a forked copy of the driver: only the original reports
    try:
        _os_write(_RECORD_FD, (record + "\n").encode())
    except _OSError:
        _os_exit(1)
    _os_exit(0)  # no atexit handlers, no finalizers, no waiting for threads


if __name__ == "__main__":
    _driver()
