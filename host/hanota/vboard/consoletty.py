"""The host side of the virtual console: its pseudo-terminal, symlink and output backlog.

The console keeps the tty's slave side open itself, so clients may come and go (each
opens `path` anew) and its raw settings persist. Board output produced while no client
reads is kept in a bounded backlog (the oldest bytes are dropped), so the board never
blocks on its console. `console` runs the bridge that uses it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tty

BACKLOG = 16 * 1024  # bytes of board output kept for a host that does not read
CHUNK = 4096  # bytes read from a tty at a time


def write_some(fd: int, buf: bytearray) -> bool:
    """Write what the fd takes (and drop it from `buf`); False when the other side is gone."""
    try:
        n = os.write(fd, buf)
    except BlockingIOError:
        return True
    except OSError as e:
        if e.errno in (errno.EIO, errno.EBADF, errno.EPIPE):
            return False
        raise
    del buf[:n]
    return True


class HostTty:
    """The pseudo-terminal clients open, with an optional stable symlink to it."""

    def __init__(self, link_path: str | None) -> None:
        self.link_path = link_path
        self.fd: int | None = None  # master side of the host tty
        self._keep: int | None = None  # our own descriptor on its slave side
        self.path: str | None = None
        self.backlog = bytearray()  # board output not yet written to the host
        self.dropped = 0

    def open(self) -> None:
        """Open the tty in raw mode and point the symlink at it."""
        master, slave = os.openpty()
        self.fd, self._keep = master, slave
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.path = os.ttyname(slave)
        if self.link_path:
            tmp = "%s.%d.tmp" % (self.link_path, os.getpid())
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(self.path, tmp)
            os.replace(tmp, self.link_path)

    def close(self) -> None:
        """Close both sides; remove the symlink if it still points here."""
        for name in ("fd", "_keep"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self.link_path and self.path:
            with contextlib.suppress(OSError):
                if os.readlink(self.link_path) == self.path:
                    os.unlink(self.link_path)

    def read(self) -> bytes:
        """What a client typed; b"" when there is nothing."""
        try:
            return os.read(self.fd, CHUNK)
        except BlockingIOError:
            return b""
        except OSError as e:  # EIO: no client has the tty open (we keep it open; defensive)
            if e.errno != errno.EIO:
                raise
            return b""

    def queue(self, data: bytes) -> None:
        """Add board output to the backlog, dropping its oldest bytes past BACKLOG."""
        if not data:
            return
        self.backlog += data
        extra = len(self.backlog) - BACKLOG
        if extra > 0:
            del self.backlog[:extra]
            self.dropped += extra

    def flush(self) -> None:
        """Write as much of the backlog as the tty takes now."""
        if self.backlog and not write_some(self.fd, self.backlog):
            self.dropped += len(self.backlog)  # defensive: we hold the slave side open
            self.backlog.clear()
