# Test instrumentation (tests/fault): start the virtual nRF52840 with the tracing vflash.
import os

execfile(os.getenv("HANOTA_FAULT_RT") + "/nrfboot.py")  # noqa: F821 (MicroPython builtin)
