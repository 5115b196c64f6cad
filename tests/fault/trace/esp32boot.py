# Test instrumentation (tests/fault): start the virtual ESP32 with the tracing vflash.
import os

execfile(os.getenv("HANOTA_FAULT_RT") + "/esp32boot.py")  # noqa: F821 (MicroPython builtin)
