# hanota main.py: starts the role application and the OTA client. If the
# application cannot even start (a broken image that raises at import), the
# failure is recorded and, when the image is on trial, the board resets so the
# previous image comes back. Three failed starts in a row stop the resets
# (the REPL stays reachable: never a boot loop).
import gc
import sys


# Records the failure in ota.json. This file keeps its own copy of
# hanfw.state.save_json (write, then rename; remove first where the filesystem
# refuses to rename over a file) because it must not import hanfw: the image
# on trial may be exactly what is broken.
def _failed(kind):
    import json
    import os
    try:
        with open("ota.json") as f:
            st = json.loads(f.read())
    except (OSError, ValueError):
        st = {}
    st["failure"] = kind
    st["failed_starts"] = st.get("failed_starts", 0) + 1
    with open("ota.json.new", "w") as f:
        f.write(json.dumps(st))
    try:
        os.rename("ota.json.new", "ota.json")
    except OSError:
        try:
            os.remove("ota.json")
        except OSError:
            pass
        os.rename("ota.json.new", "ota.json")
    return st["failed_starts"]


# The heap is collected before the application is imported (boot.py's garbage: the bank
# hash buffers, the boot-control record) and again after (the import's own garbage), so
# the long-lived objects the application makes next fill the holes low in the heap and
# leave its large buffers (the link's 4.4 KiB frame buffer) a contiguous piece: without
# it a 64 KiB heap had 55 KiB free in pieces of at most 4 KiB, and the app never started.
gc.collect()
try:
    import hanfw.app
    gc.collect()
    hanfw.app.main()
except KeyboardInterrupt:
    print("hanota: stopped (Ctrl-C)")
except Exception as e:
    sys.print_exception(e)
    if _failed("import") <= 3:
        print("hanota: the application failed to start; resetting")
        import machine
        machine.reset()
    print("hanota: the application keeps failing; staying in the REPL")
