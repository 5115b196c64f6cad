"""The same payload copied onto the same virtual board with `mpremote cp`, through a pty that
passes bytes at the same emulated 115,200 baud as the OTA link (both directions paced)."""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import os
import select
import subprocess
import threading
import time
import tty

from .common import BIN, summary


class PacedPty:
    """A pseudo-terminal (`path`) joined to another tty (`target`, the board's console), each
    direction paced at `rate` bytes/s like a USB-serial adapter at a fixed baud rate."""

    def __init__(self, target: str, rate: float, chunk: int = 32):
        self.rate, self.chunk = rate, chunk
        self.dev = os.open(target, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.dev)
        self.master, self.slave = os.openpty()  # the slave stays open: no EIO between clients
        for fd in (self.master, self.slave):
            tty.setraw(fd)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.carried = {self.dev: 0, self.master: 0}  # bytes written to each side
        self._free = {self.dev: 0.0, self.master: 0.0}
        self._queue: list = []
        self._pending = {self.dev: b"", self.master: b""}
        self._seq = itertools.count()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="paced-pty", daemon=True)
        self._thread.start()

    def _schedule(self, to: int, data: bytes) -> None:
        now = time.monotonic()
        for i in range(0, len(data), self.chunk):
            part = data[i : i + self.chunk]
            self._free[to] = max(now, self._free[to]) + len(part) / self.rate
            heapq.heappush(self._queue, (self._free[to], next(self._seq), to, part))

    def _write(self, to: int) -> None:
        data = self._pending[to]
        try:
            n = os.write(to, data)
        except (BlockingIOError, OSError):
            n = 0
        self._pending[to] = data[n:]
        self.carried[to] += n

    def _run(self) -> None:
        other = {self.dev: self.master, self.master: self.dev}
        while True:
            now = time.monotonic()
            while self._queue and self._queue[0][0] <= now:
                _, _, to, part = heapq.heappop(self._queue)
                self._pending[to] += part
            for fd in (self.dev, self.master):
                if self._pending[fd]:
                    self._write(fd)
            timeout = max(0.0, self._queue[0][0] - now) if self._queue else 0.5
            if any(self._pending.values()):
                timeout = min(timeout, 0.001)
            ready, _, _ = select.select([self.dev, self.master, self._stop_r], [], [], timeout)
            if self._stop_r in ready:
                return
            for fd in (self.dev, self.master):
                if fd in ready:
                    with contextlib.suppress(BlockingIOError, OSError):
                        data = os.read(fd, 4096)
                        if data:
                            self._schedule(other[fd], data)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self.dev, self.master, self.slave, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def mpremote(port: str, *args: str, timeout: float = 900) -> str:
    r = subprocess.run(
        [str(BIN / "mpremote"), "connect", port, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise RuntimeError(
            "mpremote %s failed: %s" % (" ".join(args), (r.stderr or r.stdout)[-500:])
        )
    return r.stdout


def copy_once(ws, board, size: int, rate: float) -> dict:
    """`mpremote cp` of the size-byte payload to the board through a paced pty; checked after."""
    src = ws.dir / ("payload-%d.bin" % size)
    if not src.exists():
        src.write_bytes(ws.payload(size))
    pty = PacedPty(board.vb.console.pty_path, rate)
    try:
        t0 = time.time()
        mpremote(pty.path, "cp", str(src), ":bench.bin")
        seconds = time.time() - t0
        to_board = pty.carried[pty.dev]
    finally:
        pty.close()
    # checked at full speed, outside the timed copy
    digest = mpremote(board.vb.console.pty_path, "sha256sum", ":bench.bin")
    ok = hashlib.sha256(src.read_bytes()).hexdigest() in digest
    mpremote(board.vb.console.pty_path, "rm", ":bench.bin")
    return {"seconds": seconds, "ok": ok, "bytes_to_board": to_board}


def run(ws, boards: list, sizes: dict, rate: float, log=print) -> list[dict]:
    """sizes: {size: repetitions}; repetitions run at once on separate boards."""
    rows = []
    for size, reps in sizes.items():
        results: list = [None] * reps
        errors: list = []

        def one(i, size=size, results=results, errors=errors):
            try:
                results[i] = copy_once(ws, boards[i], size, rate)
            except Exception as e:  # raised below, in this thread
                errors.append(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(reps)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        row = {
            "size": size,
            "rate": rate,
            "ok": all(r["ok"] for r in results),
            "seconds": summary(r["seconds"] for r in results),
            "expansion": summary(r["bytes_to_board"] / size for r in results),
        }
        rows.append(row)
        log(
            "  mpremote cp %7d B: %.1f s (%.2f bytes on the wire per payload byte)"
            % (size, row["seconds"]["median"], row["expansion"]["median"])
        )
    return rows
