# hanota main.py: starts the role application and the OTA client. If the
# application cannot even start (a broken image that raises at import), the
# failure is recorded and, when the image is on trial, the board resets so the
# previous image comes back. Three failed starts in a row stop the resets
# (the REPL stays reachable: never a boot loop).
import gc
import sys

# The failure handler's messages, made when this file is compiled: printing them takes
# no heap, and the handler may run in a heap with none left (a MemoryError at start).
_RESETTING = "hanota: the application failed to start; resetting"
_STAYING = "hanota: the application keeps failing; staying in the REPL"
_UNRECORDED = "hanota: the application failed to start and the failure could not be recorded in ota.json"
_TRIAL_RESET = "hanota: the image is on trial: resetting into the previous one"
_NO_RESET = "hanota: staying in the REPL (a reset that cannot be counted could loop)"
_NO_TRACE = "hanota: the application failed to start (its traceback did not fit in the heap)"


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


# Gives the heap back before the failure is recorded: the application's modules (and
# whatever their globals hold) go, then a collection. Never raises.
def _release():
    globals().pop("hanfw", None)  # bound by `import hanfw.app` below
    try:
        while True:  # one at a time: no list of names to allocate
            for name in sys.modules:
                if name == "hal" or name.startswith("hanfw"):
                    break
            else:
                break
            del sys.modules[name]
    except MemoryError:
        pass
    gc.collect()


# After the application failed to start: say why, record it, and reset (the previous
# image comes back when this one was on trial) or stay in the REPL. Every step that
# needs heap is guarded, so it always ends in one of the two and prints which.
def _on_failure(e):
    try:
        sys.print_exception(e)
    except MemoryError:
        print(_NO_TRACE)
    e = None
    _release()
    try:
        n = _failed("import")
    except Exception:  # MemoryError, OSError (filesystem full or gone)
        _release()
        print(_UNRECORDED)
        boot = globals().get("BOOT")  # boot.py's choice, on boards with app banks
        if boot is not None and boot[0] == "trial":
            # a trial boots once: the boot control takes the previous image next time
            print(_TRIAL_RESET)
            import machine
            machine.reset()
        print(_NO_RESET)
        return
    if n <= 3:
        print(_RESETTING)
        import machine
        machine.reset()
    print(_STAYING)


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
    _on_failure(e)
