"""Make the unix port look like the real port a virtual board stands for.

The board process is MicroPython's unix port, which has modules the real ports lack
(`cryptolib`, `socket`, `termios`...) and says `sys.platform == "linux"`. `apply(spec)`
runs at the end of the boot script, before boot.py, with the port facts of the board's
board.toml ``[port]`` table (env ``HANOTA_VB_PORT``, JSON from `hanota.vboard.portspec`):

* ``absent``: modules that do not import on the real port. The import statement calls
  ``builtins.__import__`` when it has been overridden (py/runtime.c, mp_import_name; the
  unix port enables MICROPY_CAN_OVERRIDE_BUILTINS), so a wrapper raises ImportError for
  those names, as the real port does, whatever file or built-in module exists.
* ``absent_attrs`` ("module.name", e.g. "machine.WDT", "time.gmtime") and the identity
  (``platform``; os.uname()'s ``sysname``, ``release``, ``machine``): the import machinery
  looks a name up in sys.modules before the built-in modules (py/builtinimport.c,
  process_import_at_level; checked on the unix port), so a copy of the module with those
  attributes removed or replaced is put there. A copy, not a proxy with __getattr__: a
  missing name must make `from time import gmtime` an ImportError, as on the port.

The runtime modules (machine, nrf, esp32, vflash, vbrun) imported what they need before
this runs and keep the unix port's own modules; only code run after it (boot.py,
main.py, the REPL) sees the port. Under CPython `apply` is not used.
"""
import builtins
import sys

_REAL_IMPORT = builtins.__import__


class _Module:
    """A copy of a module's attributes (an instance: MicroPython cannot make modules)."""

    def __init__(self, real, name):
        for k in dir(real):
            if not k.startswith("__"):
                setattr(self, k, getattr(real, k))
        self.__name__ = name

    def __repr__(self):
        return "<module '%s'>" % self.__name__


class _Uname(tuple):
    """os.uname()'s result: a 5-tuple with named fields, as the ports' uname_result."""

    sysname = property(lambda self: self[0])
    nodename = property(lambda self: self[1])
    release = property(lambda self: self[2])
    version = property(lambda self: self[3])
    machine = property(lambda self: self[4])


def _refuse(absent):
    def _import(name, *args):
        # Only absolute imports (level 0) name a module by its full dotted name.
        if (len(args) < 4 or not args[3]) and name.split(".")[0] in absent:
            raise ImportError("no module named '%s'" % name)
        return _REAL_IMPORT(name, *args)
    return _import


def _replace(name, drop=(), sets=None):
    """Put a copy of module `name` in sys.modules without `drop`, with `sets` added."""
    real = sys.modules.get(name) or _REAL_IMPORT(name)
    copy = _Module(real, name)
    for k in drop:
        if hasattr(copy, k):
            delattr(copy, k)
    for k, v in (sets or {}).items():
        setattr(copy, k, v)
    sys.modules[name] = copy
    return copy


def apply(spec):
    """Apply the port facts (a dict, see the module docstring) to this interpreter."""
    absent = set(spec.get("absent", ()))
    drops = {}
    for dotted in spec.get("absent_attrs", ()):
        mod, _, attr = dotted.partition(".")
        drops.setdefault(mod, []).append(attr)
    ident = spec.get("platform")
    uname = _Uname((spec.get("sysname", ident), spec.get("sysname", ident),
                    spec.get("release", ""), spec.get("version", ""), spec.get("machine", "")))
    sets = {"sys": {"platform": ident}, "os": {"uname": lambda: uname}}
    for mod in set(drops) | set(sets):
        if mod not in absent:
            _replace(mod, drops.get(mod, ()), sets.get(mod))
    builtins.__import__ = _refuse(absent)
