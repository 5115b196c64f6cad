"""What to serve and to whom: `ServedImage` (an upgrade file's facts) and `Policy` (the hub's
decisions and the server's events, as methods a hub layer overrides)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

from hanfw import link as hlink
from hanfw.otafile import ENC_DELTA, ENC_FULL
from hanfw.roles import row as role_row

from .common import UPGRADE_NOW, UPGRADE_WAIT


@dataclass(frozen=True)
class ServedImage:
    """An upgrade file the server may serve: its path and the header facts it needs.

    `size` is the OTA total image size (the bytes served); `image_hash` is the Manufacturer
    Image Hash (SHA-256 of the manufacturer image, the decoded target's for a compressed or
    delta file) that activation commands carry. `encoding` is the body's (hanfw.otafile
    ENC_*: full, zlib, delta) and `base_hash` a delta's base: the image it applies to.
    """

    path: str
    manufacturer: int
    image_type: int
    file_version: int
    size: int
    image_hash: bytes | None = None
    min_hw: int | None = None
    max_hw: int | None = None
    destination: bytes | None = None
    encoding: int = 0
    base_hash: bytes | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ServedImage":
        """Parse an upgrade file (ImageFormatError if it is not one) and describe it."""
        from ..images import parse_file
        s = parse_file(path)
        h = s.header
        d = s.descriptor
        digest = d.image_hash if d is not None else s.image_sha256
        return cls(os.fspath(path), h.manufacturer, h.image_type, h.file_version, h.total_size,
                   digest, h.min_hw, h.max_hw, h.destination,
                   d.encoding if d is not None else ENC_FULL,
                   d.base_hash if d is not None and d.encoding == ENC_DELTA else None)

    @property
    def identity(self) -> tuple[int, int, int]:
        return (self.manufacturer, self.image_type, self.file_version)

    def suits(self, eui: bytes, manufacturer: int, image_type: int, hw: int | None) -> bool:
        """Same manufacturer and type, hardware in range (if the image has one), for eui."""
        if (self.manufacturer, self.image_type) != (manufacturer, image_type):
            return False
        if self.destination is not None and self.destination != eui:
            return False
        if self.min_hw is not None and (hw is None or not self.min_hw <= hw <= self.max_hw):
            return False
        return True


def choose_variant(variants: Iterable[ServedImage], running_hash: bytes | None,
                   no_delta: bool = False) -> ServedImage | None:
    """Of the files of one target (full, compressed, deltas against various bases), the one
    to send a device: the smallest it can apply. A delta only when its base is the image the
    device runs (running_hash: the target hash of the version it reports, as the hub knows
    it; None, unknown: no delta) and the device has not refused one (no_delta: it answered a
    delta with anything but success, e.g. wrong-base). None: nothing it can apply."""
    ok = [v for v in variants
          if v.encoding != ENC_DELTA
          or (not no_delta and running_hash is not None and v.base_hash == running_hash)]
    return min(ok, key=lambda v: v.size) if ok else None


class Policy:
    """The hub's decisions and the server's events, as methods to override.

    The default works in memory: devices known by `install_codes` ({eui: install code}),
    images from `images`, joins recorded in `joined`, the hub counter in `counter`, every
    event appended to `events` as a tuple (name, eui, ...).
    """

    def __init__(self, install_codes: dict[bytes, str] | None = None,
                 images: Iterable[ServedImage] = (), *, p2p_available: bool = True):
        self.install_codes = dict(install_codes or {})
        self.images = list(images)
        self.p2p_available = p2p_available
        self.joined: dict[bytes, dict] = {}
        self.upgrade_times: dict[bytes, tuple[int, int]] = {}
        self.counter = 1
        self.events: list[tuple] = []
        self.no_delta: set[bytes] = set()  # devices that refused a delta: full or compressed

    # -- link and registry
    def install_code(self, eui: bytes) -> str | None:
        """The device's install code (its link key derives from it); None = unknown device."""
        return self.install_codes.get(eui)

    def is_joined(self, eui: bytes) -> bool:
        """Whether a device joined earlier (asked once per server run, before its first DATA)."""
        return eui in self.joined

    def last_device_counter(self, eui: bytes) -> int | None:
        """The last frame counter accepted from eui before this run (seeds replay checks)."""
        return None

    def counter_accepted(self, eui: bytes, counter: int) -> bool:
        """Persist, before the frame is acted on, that `counter` is the last one accepted
        from eui (a restarted server must refuse it replayed). False: it could not be saved,
        and the frame is dropped. The default keeps nothing beyond this run."""
        return True

    def next_counter(self) -> int:
        """The first hub frame counter this run may use (never one used before)."""
        return self.counter

    def save_counter(self, n: int) -> None:
        """Persist: counters below n may have been used; a restarted hub starts at n."""
        self.counter = n

    def join(self, eui: bytes, service: int, role: str, manufacturer: int, image_type: int,
             hw_version: int, file_version: int) -> int:
        """A JOIN_* status. Alt HAN devices may not use the ordinary join service."""
        if service == hlink.SERVICE_ORDINARY:
            return hlink.JOIN_ALT_HAN_REFUSED if role == "althan" else hlink.JOIN_OK
        if service == hlink.SERVICE_ALT_HAN_P2P and role == "althan":
            return hlink.JOIN_OK if self.p2p_available else hlink.JOIN_P2P_UNAVAILABLE
        return hlink.JOIN_SERVICE_REFUSED

    def on_joined(self, eui: bytes, role: str, manufacturer: int, image_type: int,
                  hw_version: int, file_version: int) -> None:
        self.joined[eui] = dict(role=role, manufacturer=manufacturer, image_type=image_type,
                                hw_version=hw_version, file_version=file_version)
        self.events.append(("joined", eui, role, file_version))

    def on_hello(self, eui: bytes, file_version: int) -> None:
        """A joined device started a session (after each boot) running file_version."""
        self.events.append(("hello", eui, file_version))

    # -- images
    def offer(self, eui: bytes, manufacturer: int, image_type: int, file_version: int,
              hw_version: int | None) -> ServedImage | None:
        """The image to offer a querying device: compatible, newer, meant for it; or None.
        Of several files of the newest version, the smallest the device can apply
        (choose_variant: a delta only against the image it runs)."""
        suiting = [img for img in self.images
                   if img.suits(eui, manufacturer, image_type, hw_version)
                   and img.file_version > file_version]
        running = next((img.image_hash for img in self.images
                        if (img.manufacturer, img.image_type, img.file_version)
                        == (manufacturer, image_type, file_version)), None)
        for v in sorted({img.file_version for img in suiting}, reverse=True):
            best = choose_variant([i for i in suiting if i.file_version == v], running,
                                  eui in self.no_delta)
            if best is not None:
                return best
        return None

    def lookup(self, eui: bytes, manufacturer: int, image_type: int,
               file_version: int) -> ServedImage | None:
        """The exact image a device asks blocks of without a query in this run (a resume)."""
        for img in self.images:
            if img.identity == (manufacturer, image_type, file_version) \
                    and img.destination in (None, eui):
                return img
        return None

    def holds(self, eui: bytes, manufacturer: int, image_type: int, file_version: int) -> bool:
        """Whether the device was left holding this image (distributed for a later Activate
        Image): a repeated Upgrade End for it, its answer lost, is told to go on waiting."""
        return False

    def upgrade_time(self, eui: bytes, image: ServedImage) -> tuple[int, int]:
        """(current_time, upgrade_time) for the Upgrade End Response: (0, 0) now, (0, N) in
        N s, (UTC now, UTC then), or (0, 0xFFFFFFFF) wait for an Activate Image (hcalcs)."""
        if eui in self.upgrade_times:
            return self.upgrade_times[eui]
        role = self.joined.get(eui, {}).get("role")
        by_command = role is not None and role_row(role)[3] == "command"
        return UPGRADE_WAIT if by_command else UPGRADE_NOW

    # -- events
    def on_progress(self, eui: bytes, image: ServedImage, offset: int, size: int) -> None:
        self.events.append(("progress", eui, offset, size))

    def on_upgrade_end(self, eui: bytes, image: ServedImage | None, status: int) -> None:
        """Upgrade End Request; image is None if the device named one the hub cannot find."""
        if image is not None and image.encoding == ENC_DELTA and status != 0:
            self.no_delta.add(eui)  # not its base after all: full or compressed from now on
        self.events.append(("upgrade_end", eui, image, status))

    def on_alert(self, eui: bytes, running: int, previous: int, rolled_back: bool,
                 reason: int) -> None:
        self.events.append(("alert", eui, running, previous, rolled_back, reason))

    def on_activate_response(self, eui: bytes, code: int, file_version: int,
                             counter: int) -> None:
        self.events.append(("activate_response", eui, code, file_version, counter))

    def on_gbcs_alert(self, eui: bytes, reason: int, data: bytes) -> None:
        """A GBCS message the device sent unasked (an 8F66/8F67 future-dated activation
        alert, hanfw/activation.py)."""
        self.events.append(("gbcs_alert", eui, reason, data))

    def on_stall(self, eui: bytes, image: ServedImage, offset: int) -> None:
        """No block request from a transferring device for stall_timeout seconds."""
        self.events.append(("stall", eui, image, offset))

    def on_activation_timeout(self, eui: bytes, image: ServedImage | None) -> None:
        """No Activation Alert within activation_timeout after the image was to activate."""
        self.events.append(("activation_timeout", eui, image))

    def on_bad_frame(self, peer: str, reason: str) -> None:
        self.events.append(("bad_frame", peer, reason))
