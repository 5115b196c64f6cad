"""The device's OTA client run in-process (CPython) against a scripted hub, for sweeps too
large for real boards (every bit position of an image, every policy case).

It is the same `hanfw` code the boards run (client, banks, bootctl, otafile, zcl, p256)
over the same flash: a copy of a deployed virtual board's flash file, reached through the
virtual board's own `esp32.Partition` / `nrf.Flash` work-alikes. Only the link is
replaced: frames the client sends are taken from it directly and answered by `serve`,
which plays a hub (honest, or not: it can announce a different identity or size than the
file it serves, and add bytes to its answers). Nothing is timed: a transfer is a loop of
request and answer, bounded by a step limit (a hang would be a failure, not a wait).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from hanfw import bootctl, config, link, reasons, roles, zcl
from hanfw.banks import AppBanks, FirmwareBanks
from hanfw.client import OtaClient
from hanfw.state import State
from hanota.vboard import layout
from hanota.vboard.rt import esp32 as vesp32
from hanota.vboard.rt import nrf as vnrf
from hanota.vboard.rt import vflash

HUB = bytes.fromhex("0100a0b0c0d0e0f0")
S2C = zcl.FC_CLUSTER | zcl.FC_SERVER_TO_CLIENT | zcl.FC_DISABLE_DEFAULT_RESPONSE
STEP_LIMIT = 20000  # block round trips before a transfer counts as a hang


@dataclasses.dataclass
class Result:
    """How one offer ended."""

    status: int | None  # the Upgrade End Request status (None: the device never sent one)
    reason: str  # the device's last-rejection attribute, by name
    served: int  # bytes of the file served
    ops: int  # flash operations the device did
    steps: int

    @property
    def accepted(self) -> bool:
        return self.status == zcl.SUCCESS


class HostDevice:
    """A deployed board's flash (copied), driven by the real client code under CPython."""

    def __init__(self, kind: str, snapshot_flash: Path, workdir: Path, keys: list[bytes], *,
                 eui64: str = "02:68:61:00:00:00:00:01", hw_version: int = 0x0100,
                 running_version: int = 0x00010000, floor: int = 0):
        self.kind = kind
        self.running_version = running_version
        self.spec = layout.load_board(kind)
        workdir.mkdir(parents=True, exist_ok=True)
        self.flash_path = workdir / "flash.bin"
        shutil.copyfile(snapshot_flash, self.flash_path)
        shutil.copyfile(str(snapshot_flash) + ".ctl", str(self.flash_path) + ".ctl")
        vflash.clear_cut(str(self.flash_path) + ".ctl")
        self.flash = vflash.NorFlash(str(self.flash_path))
        self.touched: list[tuple[int, int]] = []  # (address, length) of every erase and write
        erase, write = self.flash.erase, self.flash.write

        def logged_erase(addr, length=4096):
            self.touched.append((addr, length))
            return erase(addr, length)

        def logged_write(addr, data):
            self.touched.append((addr, len(data)))
            return write(addr, data)
        self.flash.erase, self.flash.write = logged_erase, logged_write
        self.state = State(str(workdir / "ota.json"))
        self.state.data = {}
        self.cfg_dict = {"eui64": eui64, "role": "ppmid", "manufacturer": 0x1234,
                         "hw_version": hw_version, "keys": [k.hex() for k in keys],
                         "install_code": link.install_code_with_crc(bytes(range(16))).hex()}
        self.cfg = config.from_dict(json.loads(json.dumps(self.cfg_dict)))
        self.workdir = workdir
        if self.spec.bank_kind == "firmware":
            vesp32.attach(self.flash)
            self.flash.set_retained(self.spec.region("ota_0").offset)
            self.state.update(versions={"ota_0": running_version}, floor=floor or None)
            self.banks = FirmwareBanks(vesp32, self.state)
            self.inactive = self.spec.region("ota_1")
        else:
            vnrf.attach(self.flash)
            ctl = self.spec.region("bootctl")
            devs = [(vnrf.Flash(start=r.offset, len=r.size), r.size // 4096)
                    for r in self.spec.banks]
            self.bc = bootctl.BootControl(vnrf.Flash(start=ctl.offset, len=ctl.size))
            rec = self.bc.current()
            if rec.version[rec.active] != running_version or rec.floor != floor:
                rec.version[rec.active] = running_version
                rec.floor = floor
                rec.secver[rec.active] = max(rec.secver[rec.active], floor)
                self.bc.commit(rec)
            self.banks = AppBanks(devs, self.bc, self.state)
            self.inactive = self.spec.banks[1 - rec.active]
        self.state.update(hub="".join("%02x" % b for b in reversed(HUB)))
        self.log: list[str] = []
        self.client = None

    def close(self) -> None:
        self.flash.close()

    # -- the flash outside the inactive bank must not change on a rejection

    def protected(self) -> bytes:
        data = bytearray(self.flash_path.read_bytes())
        r = self.inactive
        data[r.offset:r.end] = bytes(r.size)
        return bytes(data)

    def inactive_bank(self) -> bytes:
        r = self.inactive
        return self.flash_path.read_bytes()[r.offset:r.end]

    def ops(self) -> int:
        return self.flash.ops()

    def outside_inactive(self, since: int = 0) -> list[tuple[int, int]]:
        """Erases and writes (from the `since`-th on) that touched flash outside the
        inactive bank."""
        r = self.inactive
        return [(a, n) for a, n in self.touched[since:] if a < r.offset or a + n > r.end]

    # -- one offer

    def new_client(self) -> OtaClient:
        role = roles.load("ppmid")(self.cfg, str(self.workdir / "role.json"), self.log.append)
        c = OtaClient(self.cfg, None, self.banks, self.state, role, self._reset, self.log.append)
        c.out = []
        c._send = lambda kind, dst, cluster, payload: c.out.append(bytes(payload))
        c.session = True
        c.hub = HUB
        c.hub_floor = 0
        self.client = c
        return c

    def _reset(self):
        raise AssertionError("the device reset during a test offer")

    def set_keys(self, keys: list[bytes]) -> None:
        self.cfg_dict["keys"] = [k.hex() for k in keys]
        self.cfg = config.from_dict(json.loads(json.dumps(self.cfg_dict)))

    def serve(self, data: bytes, *, announce: tuple[int, int, int] | None = None,
              size: int | None = None, extra: bytes = b"", block_cap: int = 64) -> Result:
        """Offer the file `data` (announced with its header's identity and its length unless
        told otherwise) and answer the device's block requests until its Upgrade End.

        extra: bytes the hub adds to its answer at the end of the file (a hub that keeps
        streaming past the signed length)."""
        from hanfw import otafile
        c = self.new_client()
        if announce is None:
            h = otafile.Header.parse(data[:otafile.MAX_HEADER_LEN])
            announce = (h.manufacturer, h.image_type, h.file_version)
        size = len(data) if size is None else size
        ops0 = self.ops()
        self.mark = len(self.touched)
        served = 0
        tsn = 1
        c._zcl(zcl.pack_header(S2C, tsn, zcl.CMD_QUERY_NEXT_IMAGE_RESPONSE)
               + zcl.pack_image_available(zcl.SUCCESS, *announce, size))
        status = None
        steps = 0
        while c.out and steps < STEP_LIMIT:
            steps += 1
            frame = c.out.pop(0)
            fc, mfr, t, cmd, off = zcl.parse_header(frame)
            if cmd == zcl.CMD_IMAGE_BLOCK and fc & zcl.FC_FRAME_TYPE_MASK == zcl.FC_CLUSTER:
                r = zcl.parse_block_request(frame, off)
                if r.file_offset >= len(data):
                    ans = zcl.pack_block_abort(zcl.MALFORMED_COMMAND)
                else:
                    n = min(r.max_data_size, block_cap, len(data) - r.file_offset)
                    chunk = data[r.file_offset:r.file_offset + n]
                    if r.file_offset + n >= len(data) and extra:
                        chunk += extra[:max(0, block_cap - n)] or extra[:1]
                    served += len(chunk)
                    ans = zcl.pack_block_response(*announce, r.file_offset, chunk)
                c._zcl(zcl.pack_header(S2C, t, zcl.CMD_IMAGE_BLOCK_RESPONSE) + ans)
            elif cmd == zcl.CMD_UPGRADE_END:
                status = zcl.parse_upgrade_end(frame, off).status
                break
        return Result(status, reasons.name(c.rejection), served, self.ops() - ops0, steps)
