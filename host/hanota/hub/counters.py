"""The hub's journal of device frame counters: durable before a frame is acted on.

A device's link frames carry a counter that must strictly increase; the hub drops a frame
whose counter is not above the last one it accepted from that device. If that last counter
were only in memory (or saved to the database now and then), a hub killed with SIGKILL and
started again would accept, once more, every frame accepted since the last save: a window
for replays. So each accepted counter is appended to this journal (one 12-byte record, one
`write` system call) before the frame's effect happens; a write that reached the kernel
survives the death of the process. The hub folds the journal into the database
(`devices.last_counter`) on every scheduler pass and at start, then empties it.

A database transaction per frame would do the same at tens of microseconds a frame; the
journal costs one system call. (It protects against the process dying, which is what the
hub's fault tier does; surviving power loss would need an fsync per frame.)

Record: EUI-64 in wire order (8 bytes) || counter u32, little-endian. A torn last record
(shorter than 12 bytes) is ignored: its frame was not acted on.
"""
from __future__ import annotations

import logging
import os
import struct

from .db import HubError

log = logging.getLogger(__name__)

RECORD = struct.Struct("<8sI")


class CounterJournal:
    """An append-only file of (device EUI, accepted counter) records beside the database."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        try:
            self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND,
                                          0o644)
        except OSError as e:
            raise HubError("cannot open the counter journal %s: %s" % (self.path, e),
                           reason="db") from None

    def record(self, eui: bytes, counter: int) -> bool:
        """Append one record; False if it could not be written (the frame must be dropped)."""
        if self.fd is None:
            return False
        try:
            return os.write(self.fd, RECORD.pack(eui, counter)) == RECORD.size
        except OSError as e:
            log.error("counter journal %s: %s", self.path, e)
            return False

    def load(self) -> dict[bytes, int]:
        """The highest counter journaled per device (wire-order EUI)."""
        if self.fd is None:
            return {}
        data = b""
        try:
            size = os.fstat(self.fd).st_size
            data = os.pread(self.fd, size, 0)
        except OSError as e:
            raise HubError("cannot read the counter journal %s: %s" % (self.path, e),
                           reason="db") from None
        out: dict[bytes, int] = {}
        for i in range(0, len(data) - RECORD.size + 1, RECORD.size):
            eui, counter = RECORD.unpack_from(data, i)
            if counter > out.get(eui, -1):
                out[eui] = counter
        return out

    def clear(self) -> None:
        """Empty the journal (call only once its contents are in the database)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
