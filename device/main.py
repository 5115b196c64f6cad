# hanota main.py: starts the role application and the OTA client. If the
# application cannot even start (a broken image that raises at import), the
# failure is recorded and, when the image is on trial, the board resets so the
# previous image comes back. Three failed starts in a row stop the resets
# (the REPL stays reachable: never a boot loop).
import sys


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
    os.rename("ota.json.new", "ota.json")
    return st["failed_starts"]


try:
    import hanfw.app
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
