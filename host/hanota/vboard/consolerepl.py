"""What the virtual console knows of the MicroPython REPL it bridges (for `console`).

The banners that tell the REPL's mode, and `RawReentry`: firmware keeps the raw REPL
over a soft reset, the unix port always restarts friendly, so the console puts the
new process back into raw mode without the host seeing the friendly start.
"""
from __future__ import annotations

SOFT_REBOOT = b"MPY: soft reboot\r\n"
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_BANNER = b'Type "help()" for more information.\r\n'
ENTER_RAW = b"\r\x01"


class RawReentry:
    """Turns a fresh process's friendly start into a raw-REPL start after a soft reset.

    Firmware keeps the REPL mode over a soft reset; the unix port always starts in the
    friendly REPL. This filter passes boot output through, swallows the friendly banner
    and prompt, asks for raw mode (``\\r\\x01``), swallows the echo of that, and passes
    everything from the raw REPL banner on.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._stage = "prompt"

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """Take board output; return (bytes for the host, bytes for the board)."""
        if self._stage == "done":
            return data, b""
        self._buf += data
        if self._stage == "prompt":
            end = self._buf.find(FRIENDLY_BANNER)
            if end < 0 or not self._buf.endswith(b">>> "):
                return self._release_boot_output(), b""
            # the banner is the line before FRIENDLY_BANNER, that banner line and the prompt
            start = self._buf.rfind(b"\n", 0, max(end - 1, 0)) + 1
            out = bytes(self._buf[:start])
            self._buf.clear()
            self._stage = "banner"
            return out, ENTER_RAW
        at = self._buf.find(RAW_BANNER)
        if at < 0:
            del self._buf[:-len(RAW_BANNER)]
            return b"", b""
        out = bytes(self._buf[at:])
        self._buf.clear()
        self._stage = "done"
        return out, b""

    def _release_boot_output(self) -> bytes:
        # Keep back what may be the start of the banner: the first line that starts
        # with "MicroPython " (and all after it), or else an unfinished last line.
        line_start = 0
        while line_start < len(self._buf):
            rest = bytes(self._buf[line_start:line_start + 12])
            if b"MicroPython ".startswith(rest) or rest.startswith(b"MicroPython "):
                break
            nl = self._buf.find(b"\n", line_start)
            if nl < 0:
                break
            line_start = nl + 1
        out = bytes(self._buf[:line_start])
        del self._buf[:line_start]
        return out
