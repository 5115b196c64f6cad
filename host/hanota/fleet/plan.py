"""A simulated fleet's premises, Comms Hubs and devices, derived from numbers alone.

Premises g (0 <= g < N) of fleet F has the MPxN ``SIM<F>-<g, 8 digits>``, its Comms Hub the
EUI-64 ``F1EE<F, 4 hex>`` + g (8 hex digits) and its device j (0 <= j < K) the EUI-64
``F1EF<F, 4 hex>`` + g * 16 + j (8 hex digits); a device's install code is made from its
EUI-64 (SHA-256, then the CRC-16). Every machine computes the same identities, so
`--slice i/n` (premises i-1 of n contiguous ranges) never overlaps another slice, and the
registration the DCC needs can be written from anywhere (`register`, `hanota fleet
register`). Roles repeat in the order given (default ppmid, hcalcs, althan).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator

from hanfw import link as hlink

from .. import images
from ..errors import HanotaError

MAX_DEVICES = 16  # devices per premises (the low hex digit of a device's EUI-64)
MAX_PREMISES = 10 ** 8  # premises per fleet (8 digits in the MPxN)
MAX_FLEET = 0xFFFF
VBOARD_SLOT = MAX_DEVICES - 1  # a premises' virtual board: the device slot no SimDevice takes
DEFAULT_ROLES = ("ppmid", "hcalcs", "althan")
DUIS_TYPES = {"ppmid": "PPMID", "hcalcs": "HCALCS", "althan": "ALTHAN"}  # DCC device types
ROLE_SR = {"ppmid": "11.4", "althan": "11.4", "hcalcs": "11.1"}  # the firmware SR each takes


class FleetUsageError(HanotaError):
    """The fleet's numbers or options are wrong (exit code 1)."""

    reason = "usage"


@dataclass(frozen=True)
class SimDeviceSpec:
    eui: str  # 16 hex digits, most significant first (as DUIS and the DCC write it)
    role: str
    install_code: str  # hex, with its CRC-16

    @property
    def eui_wire(self) -> bytes:
        """The EUI-64 in link (wire) order."""
        return bytes.fromhex(self.eui)[::-1]


@dataclass(frozen=True)
class Premises:
    index: int
    mpxn: str
    hub_eui: str  # 16 hex digits
    devices: tuple[SimDeviceSpec, ...]


@dataclass(frozen=True)
class FleetPlan:
    premises: int  # N: premises in the whole fleet (every slice and machine)
    devices: int  # K: devices per premises
    fleet: int = 0  # F: keeps fleets that share one DCC apart
    roles: tuple[str, ...] = DEFAULT_ROLES
    version: int = 1  # the firmware version the devices run at the start
    vboards: int = 0  # virtual boards: one in each of the first V premises of a slice
    vboard_role: str = "ppmid"

    def __post_init__(self) -> None:
        if not 1 <= self.premises <= MAX_PREMISES:
            raise FleetUsageError("--premises %d: give 1 to %d" % (self.premises, MAX_PREMISES))
        if not 1 <= self.devices < MAX_DEVICES:
            raise FleetUsageError("--devices %d: give 1 to %d devices per premises"
                                  % (self.devices, MAX_DEVICES - 1))
        if not 0 <= self.fleet <= MAX_FLEET:
            raise FleetUsageError("--fleet %d: give 0 to %d" % (self.fleet, MAX_FLEET))
        if not self.roles:
            raise FleetUsageError("--roles: give at least one role")
        for r in self.roles:
            if r not in DUIS_TYPES:
                raise FleetUsageError("role %r: one of %s" % (r, ", ".join(DUIS_TYPES)))
        if self.vboards < 0:
            raise FleetUsageError("--vboards %d: give 0 or more" % self.vboards)
        if self.vboard_role not in DUIS_TYPES:
            raise FleetUsageError("--vboard-role %r: one of %s" % (self.vboard_role,
                                                                  ", ".join(DUIS_TYPES)))

    def at(self, g: int) -> Premises:
        """Premises g with its hub and devices."""
        if not 0 <= g < self.premises:
            raise FleetUsageError("premises %d is outside the fleet (0..%d)"
                                  % (g, self.premises - 1))
        devs = []
        for j in range(self.devices):
            eui = "F1EF%04X%08X" % (self.fleet, g * MAX_DEVICES + j)
            devs.append(SimDeviceSpec(eui, self.roles[j % len(self.roles)], install_code(eui)))
        return Premises(g, "SIM%d-%08d" % (self.fleet, g), "F1EE%04X%08X" % (self.fleet, g),
                        tuple(devs))

    def range(self, lo: int, hi: int) -> Iterator[Premises]:
        for g in range(lo, hi):
            yield self.at(g)

    def vboard_at(self, g: int) -> SimDeviceSpec:
        """The identity of premises g's virtual board (when it has one: `vboard_range`)."""
        self.at(g)  # (checks g)
        eui = "F1EF%04X%08X" % (self.fleet, g * MAX_DEVICES + VBOARD_SLOT)
        return SimDeviceSpec(eui, self.vboard_role, install_code(eui))

    def vboard_range(self, lo: int, hi: int) -> tuple[int, int]:
        """The premises [a, b) of slice [lo, hi) that hold a virtual board: its first
        `vboards`; FleetUsageError when the slice has fewer premises than that."""
        if self.vboards > hi - lo:
            raise FleetUsageError("--vboards %d: this slice has only %d premises (one board "
                                  "per premises)" % (self.vboards, hi - lo))
        return lo, lo + self.vboards


def install_code(eui: str) -> str:
    """A device's install code (8 bytes + CRC-16), from its EUI-64 text."""
    return hlink.install_code_with_crc(hashlib.sha256(b"hanota-fleet:" + eui.encode())
                                       .digest()[:8]).hex()


def parse_slice(text: str | None) -> tuple[int, int]:
    """'i/n' (1 <= i <= n) -> (i, n); None -> (1, 1)."""
    if not text:
        return 1, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise FleetUsageError("--slice %r: give i/n, e.g. 2/4" % text) from None
    if not 1 <= i <= n:
        raise FleetUsageError("--slice %r: i must be 1..n" % text)
    return i, n


def split(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) cut into `parts` contiguous ranges as equal as can be (empty ones dropped)."""
    n = hi - lo
    out = []
    for k in range(parts):
        a, b = lo + n * k // parts, lo + n * (k + 1) // parts
        if b > a:
            out.append((a, b))
    return out


def slice_range(plan: FleetPlan, slice_text: str | None) -> tuple[int, int]:
    """The premises [lo, hi) of slice i/n of the fleet."""
    i, n = parse_slice(slice_text)
    if n > plan.premises:
        raise FleetUsageError("--slice %s: %d slices for %d premises" % (slice_text, n,
                                                                          plan.premises))
    return split(0, plan.premises, n)[i - 1]


def _device_json(s: SimDeviceSpec) -> dict[str, Any]:
    return {"eui": s.eui, "role": s.role, "device_type": DUIS_TYPES[s.role],
            "install_code": s.install_code, "model": "%08X" % images.ROLE_IMAGE_TYPES[s.role],
            "manufacturer": "%04X" % images.DEFAULT_MANUFACTURER}


def as_json(p: Premises, suppliers: list[str] | None = None,
            vboard: SimDeviceSpec | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"mpxn": p.mpxn, "hub": p.hub_eui,
                         "devices": [_device_json(s) for s in p.devices]}
    if vboard is not None:
        d["vboard"] = _device_json(vboard)
    if suppliers:
        d["suppliers"] = suppliers
    return d


def register(store: Any, plan: FleetPlan, lo: int, hi: int, suppliers: list[str]) -> dict:
    """Put premises [lo, hi) and their devices in the DCC's registration data (`store`: a
    `hanota.dcc.store.DccStore`), as `hanota dcc registry add-premises` / `add-device` would;
    what is there already is left as it is. Counts of premises and devices added (the
    virtual boards of the slice's first `plan.vboards` premises among the devices, and
    also under "vboards")."""
    added = {"premises": 0, "devices": 0, "present": 0}
    va, vb = plan.vboard_range(lo, hi) if plan.vboards else (lo, lo)
    if plan.vboards:
        added["vboards"] = 0
    for a, b in split(lo, hi, max(1, (hi - lo + REGISTER_BATCH - 1) // REGISTER_BATCH)):
        with store.tx():  # a batch of premises per transaction: one commit, not thousands
            for p in plan.range(a, b):
                _register_one(store, plan, p, suppliers, added,
                              plan.vboard_at(p.index) if va <= p.index < vb else None)
    return added


REGISTER_BATCH = 200  # premises per transaction in `register`


def _register_one(store: Any, plan: FleetPlan, p: Premises, suppliers: list[str],
                  added: dict, vboard: SimDeviceSpec | None = None) -> None:
    if store.premises(p.mpxn) is None:
        store.add_premises(p.mpxn, suppliers, p.hub_eui)
        added["premises"] += 1
    for s in p.devices + ((vboard,) if vboard is not None else ()):
        if store.device(s.eui) is not None:
            added["present"] += 1
            continue
        store.add_device(s.eui, DUIS_TYPES[s.role], p.mpxn,
                         model="%08X" % images.ROLE_IMAGE_TYPES[s.role],
                         manufacturer="%04X" % images.DEFAULT_MANUFACTURER,
                         firmware_version=plan.version, install_code=s.install_code)
        added["devices"] += 1
        if s is vboard:
            added["vboards"] += 1
