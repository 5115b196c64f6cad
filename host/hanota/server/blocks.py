"""Image Block Responses from the file: one block, a page of them, and BUNDLE frames.

Blocks are read statelessly from the upgrade file at any offset (`Files`, an LRU of open
descriptors with positional reads), so no image is held in memory per device and any device
may resume anywhere.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, OrderedDict
from typing import Callable

from hanfw import link as hlink
from hanfw import zcl

from .common import BLOCK_HEAD, BLOCK_ROOM, OPEN_FILES, S2C_RESPONSE, ServerError, log
from .policy import ServedImage
from .sessions import DeviceState, Sessions


class Files:
    """An LRU of open upgrade files; reads are positional, so any offset, any device. A file
    not read for `idle` seconds is closed by `close_idle` (the server's watchdog calls it), so
    a server that finished its transfers holds no descriptor: a fleet of thousands of hubs in
    one process would otherwise keep every image of every hub open."""

    def __init__(self, limit: int = OPEN_FILES, idle: float = 60.0):
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._used: dict[str, float] = {}
        self._limit = limit
        self.idle = idle

    def __len__(self) -> int:
        return len(self._fds)

    def read(self, path: str, offset: int, n: int) -> bytes:
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            self._fds[path] = fd
            while len(self._fds) > self._limit:
                old, ofd = self._fds.popitem(last=False)
                self._used.pop(old, None)
                os.close(ofd)
        else:
            self._fds.move_to_end(path)
        self._used[path] = time.monotonic()
        return os.pread(fd, n, offset)

    def close_idle(self, now: float | None = None) -> int:
        """Close the files not read for `idle` seconds; how many were closed."""
        cut = (time.monotonic() if now is None else now) - self.idle
        n = 0
        while self._fds:
            path = next(iter(self._fds))  # least recently read first
            if self._used.get(path, 0.0) > cut:
                break
            os.close(self._fds.pop(path))
            self._used.pop(path, None)
            n += 1
        return n

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])
        self._used.clear()


class BlockSender:
    """Sends block responses to a device; `served(dev, img, offset, n)` is told of each run
    of data that went out (for the transfer's progress)."""

    def __init__(self, sessions: Sessions, stats: Counter[str], block_cap: int,
                 page_spacing_ms: int,
                 served: Callable[[DeviceState, ServedImage, int, int], None]):
        self.sessions = sessions
        self.stats = stats
        self.block_cap = block_cap
        self.page_spacing_ms = page_spacing_ms
        self._served = served
        self.files = Files()

    def status(self, dev: DeviceState, tsn: int, status: int) -> None:
        """An Image Block Response without data (ABORT, MALFORMED_COMMAND...)."""
        self.sessions.send_zcl(dev, S2C_RESPONSE, tsn, zcl.CMD_IMAGE_BLOCK_RESPONSE,
                               zcl.pack_block_abort(status))

    async def send_page(self, dev: DeviceState, tsn: int, img: ServedImage,
                        r: zcl.PageRequest) -> None:
        # Every block response of a page carries the page request's TSN. A device that
        # takes long frames gets them bundled (several per link frame), unless it asked
        # for a spacing between them.
        end = min(r.file_offset + r.page_size, img.size)
        step = min(r.max_data_size, self.block_cap, BLOCK_ROOM)
        spacing = max(r.response_spacing, self.page_spacing_ms) / 1000
        bundle = dev.rx_frame > hlink.MAX_FRAME and not spacing
        offset = r.file_offset
        try:
            while offset < end:
                await dev.link.drain()
                if bundle:
                    offset, ok = self.send_bundle(dev, tsn, img, offset, end, step)
                else:
                    n = min(step, end - offset)
                    ok = self.send_block(dev, tsn, img, offset, n)
                    offset += n
                if not ok:
                    return
                await asyncio.sleep(spacing)  # 0 still lets other devices' work run
        except ServerError as e:
            log.warning("page to %s: %s", hlink.eui_str(dev.eui), e)

    # One Image Block Response (a ZCL frame), or None if the file cannot supply the block.
    def _block_frame(self, dev: DeviceState, tsn: int, img: ServedImage, offset: int,
                     n: int) -> bytes | None:
        try:
            data = self.files.read(img.path, offset, n)
        except OSError as e:
            data = b""
            log.error("cannot read %s: %s", img.path, e)
        if len(data) != n:
            log.error("%s is shorter than its header says; aborting %s", img.path,
                      hlink.eui_str(dev.eui))
            self.stats["file-error"] += 1
            return None
        b = bytearray(BLOCK_HEAD + n)
        p = zcl.pack_header_into(b, 0, S2C_RESPONSE, tsn, zcl.CMD_IMAGE_BLOCK_RESPONSE)
        zcl.pack_block_response_into(b, p, *img.identity, offset, data)
        return bytes(b)

    def send_block(self, dev: DeviceState, tsn: int, img: ServedImage, offset: int,
                   n: int) -> bool:
        """Read and send one block; False (after sending ABORT) if the file cannot supply it."""
        frame = self._block_frame(dev, tsn, img, offset, n)
        if frame is None:
            self.status(dev, tsn, zcl.ABORT)
            return False
        self.sessions.send(dev, hlink.KIND_DATA, frame, zcl.CLUSTER_OTA)
        self.stats["blocks"] += 1
        self._served(dev, img, offset, n)
        return True

    def send_bundle(self, dev: DeviceState, tsn: int, img: ServedImage, offset: int,
                    end: int, step: int) -> tuple[int, bool]:
        """As many blocks from offset (up to end) as fit in one of the device's frames, in a
        BUNDLE; returns (the offset after them, False if the file failed: ABORT was sent)."""
        room = dev.rx_frame - hlink.OVERHEAD
        start, used, items, ok = offset, 0, [], True
        while offset < end:
            n = min(step, end - offset)
            if items and used + hlink.BUNDLE_ITEM + BLOCK_HEAD + n > room:
                break
            frame = self._block_frame(dev, tsn, img, offset, n)
            if frame is None:
                ok = False
                break
            items.append(frame)
            used += hlink.BUNDLE_ITEM + len(frame)
            offset += n
        if len(items) == 1:
            self.sessions.send(dev, hlink.KIND_DATA, items[0], zcl.CLUSTER_OTA)
        elif items:
            self.sessions.send(dev, hlink.KIND_BUNDLE, hlink.pack_bundle(items),
                               zcl.CLUSTER_OTA)
            self.stats["bundles"] += 1
        self.stats["blocks"] += len(items)
        if items:
            self._served(dev, img, start, offset - start)
        if not ok:
            self.status(dev, tsn, zcl.ABORT)
        return offset, ok
