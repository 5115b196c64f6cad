"""device/main.py's failure handler under the real MicroPython, in a 64 KiB heap.

When the application cannot start, main.py must either record the failure and reset (so a
trial image rolls back) or say why it stays in the REPL, whatever the heap looks like: the
worst case is an application that used up the whole heap before it raised MemoryError.
The application here is a stand-in package `hanfw` in a temporary folder, and `machine`
a stand-in whose reset() prints RESET and ends the run.
"""
import json

import pytest

from support.mpy import DEVICE, run_mpy

RUNNER = """\
import sys


class _Machine:
    @staticmethod
    def reset():
        print("RESET")
        raise SystemExit


sys.modules["machine"] = _Machine
BOOT = None  # what boot.py chose (app-bank boards)
execfile("main.py")
print("END")
"""

# main() takes every piece of heap it can get, keeps it in a module global, then fails
HOG = """\
_hold = []


def main():
    n = 1024
    while n >= 16:
        try:
            while True:
                _hold.append(bytearray(n))
        except MemoryError:
            n //= 2
    raise MemoryError("the application used up the heap")
"""
BROKEN_IMPORT = "import no_such_module_here\n"


def run_main(tmp_path, app, ota=None, boot=None):
    (tmp_path / "hanfw").mkdir()
    (tmp_path / "hanfw" / "__init__.py").write_text("")
    (tmp_path / "hanfw" / "app.py").write_text(app)
    (tmp_path / "main.py").write_bytes((DEVICE / "main.py").read_bytes())
    (tmp_path / "run.py").write_text(RUNNER.replace("BOOT = None", "BOOT = %r" % (boot,)))
    if ota is not None:
        (tmp_path / "ota.json").write_text(json.dumps(ota))
    r = run_mpy(tmp_path / "run.py", heapsize="64K", path=(tmp_path,), cwd=tmp_path,
                compiled=False, timeout=60)
    return r.stdout + r.stderr


def failed_starts(tmp_path):
    return json.loads((tmp_path / "ota.json").read_text()).get("failed_starts")


@pytest.mark.parametrize("app", [HOG, BROKEN_IMPORT], ids=["heap-used-up", "import-error"])
def test_a_failed_start_is_recorded_and_resets(tmp_path, app):
    out = run_main(tmp_path, app, ota={"version": 1})
    assert "the application failed to start; resetting" in out and "RESET" in out, out
    assert failed_starts(tmp_path) == 1
    assert json.loads((tmp_path / "ota.json").read_text())["version"] == 1  # nothing lost


def test_the_fourth_failed_start_stays_in_the_repl_and_says_so(tmp_path):
    out = run_main(tmp_path, HOG, ota={"failed_starts": 3})
    assert "keeps failing; staying in the REPL" in out and "RESET" not in out and "END" in out, out
    assert failed_starts(tmp_path) == 4


def test_a_failure_that_cannot_be_recorded_says_why_and_does_not_reset(tmp_path):
    (tmp_path / "ota.json.new").mkdir()  # the state file cannot be written
    out = run_main(tmp_path, HOG, boot=("boot", 0))
    assert "could not be recorded in ota.json" in out and "staying in the REPL" in out, out
    assert "RESET" not in out and "END" in out, out


def test_an_unrecorded_failure_of_a_trial_image_resets_into_the_previous_one(tmp_path):
    (tmp_path / "ota.json.new").mkdir()
    out = run_main(tmp_path, HOG, boot=("trial", 1))  # boot.py: bank 1 on trial
    assert "could not be recorded in ota.json" in out and "on trial" in out and "RESET" in out, out
