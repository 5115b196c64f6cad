# Run on a board (mpremote run): what the board's MicroPython says it is and what imports.
# Prints one line: PORT-PROBE {"platform": ..., "uname": [...], "imports": {name: ok}, "attrs": {...}}
# NAMES and ATTRS are filled in by the test (module names, "module.attr" names).
import sys
import json

NAMES = []
ATTRS = []

imports = {}
for name in NAMES:
    try:
        __import__(name)
        imports[name] = True
    except ImportError:
        imports[name] = False
attrs = {}
for dotted in ATTRS:
    mod, _, attr = dotted.partition(".")
    try:
        attrs[dotted] = hasattr(__import__(mod), attr)
    except ImportError:
        attrs[dotted] = False
try:
    import os
    u = list(os.uname())
except (ImportError, AttributeError):
    u = None
print("PORT-PROBE", json.dumps({"platform": sys.platform, "uname": u, "imports": imports, "attrs": attrs}))
