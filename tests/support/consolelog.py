"""Collects everything a board prints on its console, in a background thread."""
from __future__ import annotations

import os
import select
import threading
import time


class ConsoleLog:
    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        self.buf = bytearray()
        self._stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self._stop:
            r, _, _ = select.select([self.fd], [], [], 0.1)
            if r:
                try:
                    self.buf += os.read(self.fd, 65536)
                except (BlockingIOError, OSError):
                    time.sleep(0.05)

    @property
    def text(self) -> str:
        return self.buf.decode(errors="replace")

    def wait_for(self, needle: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if needle in self.text:
                return self.text
            time.sleep(0.05)
        raise AssertionError("console never printed %r; last output:\n%s" % (needle, self.text[-3000:]))

    def close(self):
        self._stop = True
        self.t.join(timeout=2)
        os.close(self.fd)
