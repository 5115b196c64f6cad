"""Deploy the device code and configuration onto a board over its REPL.

Through the mpremote library (`SerialTransport`), or ampy as a fallback. What goes on
the board's filesystem: `boot.py`, `main.py`, `hanota.json` (the device configuration)
and `ota.json` (the initial version record); on app-bank boards also `bootcfg.json`,
`lib/bootctl.mpy` (the stable stage that picks a bank) and the app ROMFS written into
bank 0 with a boot-control record. On firmware-bank boards the code rides in the
firmware (`/rom`); when the firmware lacks it (stock MicroPython on a real ESP32) the
compiled package is copied to `/lib`. Everything written is checked by hashing on the
device.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from . import boardspec, devcode, fwbuild, images
from .errors import HanotaError
from .keys import load_public_key

DEFAULT_HW_VERSION = 0x0100


class DeployError(HanotaError):
    """The board could not be reached, written, or verified."""

    reason = "deploy"


@dataclass
class DeployResult:
    eui64: str
    role: str
    install_code: str
    fs_root: str
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    bank: dict | None = None
    # GBCS commissioning: the device's KA public key (65 bytes hex) made at deploy, for the
    # DCC's registration data (the ACB MACs to it), and the Supplier commissioned
    ka_public: str | None = None
    supplier_id: str | None = None

    def as_dict(self) -> dict:
        return {"eui64": self.eui64, "role": self.role, "install_code": self.install_code,
                "fs_root": self.fs_root, "files": self.files, "bank": self.bank,
                "ka_public": self.ka_public, "supplier_id": self.supplier_id}


def gbcs_commissioning(supplier_cert: bytes, acb_cert: bytes,
                       ka_private: bytes | None = None) -> tuple[dict, str]:
    """The device configuration's "gbcs" block and the device's KA public key (hex).

    supplier_cert: the responsible Supplier's Organisation certificate for digital signing
    (its public key checks a CS06 signature, its entity ID must be the CS06's originator);
    acb_cert: the ACB's key-agreement certificate (the DCC MACs every command with that key).
    Validity dates are not checked, as a device does not (the DCC Boxed certificates expired).
    The device's KA key pair is made here unless ka_private (32 bytes) is given."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from .dcc import pki
    point = serialization.PublicFormat.UncompressedPoint
    x962 = serialization.Encoding.X962
    sup = pki.describe(supplier_cert)
    if sup.usage != "ds":
        raise DeployError("--supplier-cert is a %s certificate: give the Supplier's "
                          "digital-signing (ds) certificate" % sup.usage)
    if sup.role != pki.ROLE_SUPPLIER:
        raise DeployError("--supplier-cert belongs to a %s (role %02X), not a Supplier"
                          % (pki.ROLE_NAMES.get(sup.role, "?"), sup.role))
    acb = pki.describe(acb_cert)
    if acb.usage != "ka" or acb.role != pki.ROLE_ACB:
        raise DeployError("--acb-cert must be the ACB's key-agreement certificate (role 04, "
                          "keyAgreement); it is a %s %s certificate" % (
                              pki.ROLE_NAMES.get(acb.role, "?"), acb.usage))
    if ka_private is None:
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = ec.derive_private_key(int.from_bytes(ka_private, "big"), ec.SECP256R1())
    ka_pub = key.public_key().public_bytes(x962, point)
    block = {"supplier_ds": sup.cert.public_key().public_bytes(x962, point).hex(),
             "supplier_id": sup.entity_hex, "acb_ka": acb.cert.public_key().public_bytes(x962, point).hex(),
             "ka_priv": key.private_numbers().private_value.to_bytes(32, "big").hex()}
    return block, ka_pub.hex()


def new_install_code() -> str:
    from hanfw import link
    return link.install_code_with_crc(secrets.token_bytes(16)).hex().upper()


class _Session:
    """exec / put / hash over mpremote's SerialTransport."""

    def __init__(self, port: str, timeout: float = 10.0):
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport
        try:
            self.t = SerialTransport(port, timeout=timeout)
            self.t.enter_raw_repl(soft_reset=True)
        except (TransportError, OSError) as e:
            raise DeployError("cannot reach the board's REPL on %s: %s" % (port, e)) from None

    def exec(self, code: str) -> str:
        from mpremote.transport import TransportError
        try:
            return self.t.exec(code).decode(errors="replace")
        except TransportError as e:
            detail = getattr(e, "error_output", b"") or str(e)
            if isinstance(detail, bytes):
                detail = detail.decode(errors="replace")
            raise DeployError("the board failed running deploy code: %s" % detail.strip()[-500:]) from None

    def put(self, path: str, data: bytes) -> None:
        self.t.fs_writefile(path, data, chunk_size=512)

    def mkdir(self, path: str) -> None:
        if not self.t.fs_exists(path):
            self.t.fs_mkdir(path)

    def hash(self, path: str) -> str:
        return self.t.fs_hashfile(path, "sha256").hex()

    def reset(self) -> None:
        try:
            self.t.exec_raw_no_follow("import machine\nmachine.reset()")
        except Exception:  # the board goes away while answering: that is the reset
            pass

    def close(self) -> None:
        self.t.close()


class _AmpySession(_Session):
    """The same over ampy (slower: every call re-enters the raw REPL)."""

    def __init__(self, port: str, timeout: float = 10.0):
        from ampy.pyboard import Pyboard, PyboardError
        try:
            self.pb = Pyboard(port)
        except (PyboardError, OSError) as e:
            raise DeployError("cannot reach the board's REPL on %s: %s" % (port, e)) from None

    def _run(self, code: str) -> str:
        from ampy.pyboard import PyboardError
        try:
            self.pb.enter_raw_repl()
            out = self.pb.exec_(code)
            self.pb.exit_raw_repl()
            return out.decode(errors="replace")
        except PyboardError as e:
            raise DeployError("the board failed running deploy code: %s" % e) from None

    def exec(self, code: str) -> str:
        return self._run(code)

    def put(self, path: str, data: bytes) -> None:
        from ampy.files import Files
        Files(self.pb).put(path, data)

    def mkdir(self, path: str) -> None:
        self._run("import os\ntry:\n os.mkdir(%r)\nexcept OSError:\n pass\n" % path)

    def hash(self, path: str) -> str:
        return self._run("import hashlib, binascii\nh = hashlib.sha256()\nf = open(%r, 'rb')\n"
                         "while True:\n b = f.read(512)\n if not b: break\n h.update(b)\n"
                         "print(binascii.hexlify(h.digest()).decode())\n" % path).strip()

    def reset(self) -> None:
        try:
            self.pb.serial.write(b"\r\x03\x03\r\x01")
            self.pb.serial.write(b"import machine\r\nmachine.reset()\r\n\x04")
        except Exception:
            pass

    def close(self) -> None:
        self.pb.close()


# The bank goes over in pieces of BANK_PIECE bytes, one exec each: a 4 KiB piece (5.5 KiB
# of base64 in the script, and the REPL's copy of the script) did not fit a 64 KiB nRF
# heap in pieces. A page is erased with its first piece; the others are offset writes,
# which do not erase (nrf.Flash). Pieces are padded with 0xFF to whole words for the chip.
BANK_PIECE = 2048


def _bank_write_code() -> str:
    # small-heap friendly: collect first, nothing bigger than one piece
    return ("import binascii, gc\n"
            "gc.collect()\n"
            "def _w(fl, n, off, b64):\n"
            "    if not off:\n"
            "        fl.ioctl(6, n)\n"
            "    fl.writeblocks(n, binascii.a2b_base64(b64), off)\n")


def deploy(port: str, board: str, role: str, keys: list[str | os.PathLike], *,
           via: str = "mpremote", eui64: str | None = None, install_code: str | None = None,
           manufacturer: int = images.DEFAULT_MANUFACTURER, hw_version: int = DEFAULT_HW_VERSION,
           version: int = 1, hub: str | None = None, settings: dict | None = None,
           app_romfs: bytes | None = None, reset: bool = True,
           supplier_cert: bytes | None = None, acb_cert: bytes | None = None) -> DeployResult:
    """Deploy role `role` onto the board at `port`; returns what was written (and the install code).

    supplier_cert and acb_cert (PEM/DER bytes, both or neither) commission GBCS (see
    gbcs_commissioning): the result's ka_public is the device's new KA public key."""
    if role not in images.ROLE_IMAGE_TYPES:
        raise DeployError("unknown role %r" % role)
    ka_public = supplier_id = None
    if (supplier_cert is None) != (acb_cert is None):
        raise DeployError("GBCS commissioning needs both the Supplier's certificate and the ACB's "
                          "KA certificate")
    if supplier_cert is not None:
        block, ka_public = gbcs_commissioning(supplier_cert, acb_cert)
        supplier_id = block["supplier_id"]
        settings = dict(settings or {}, gbcs=block)
    spec = boardspec.load_board(board)
    points = [load_public_key(k).hex() for k in keys]
    if not points:
        raise DeployError("give at least one public key to pin (--key)")
    sess = (_AmpySession if via == "ampy" else _Session)(port)
    try:
        res = _deploy(sess, spec, role, points, eui64, install_code or new_install_code(), manufacturer,
                      hw_version, version, hub, settings or {}, app_romfs, reset)
    finally:
        sess.close()
    res.ka_public, res.supplier_id = ka_public, supplier_id
    return res


def _deploy(sess, spec, role, points, eui64, install_code, manufacturer, hw_version, version, hub,
            settings, app_romfs, reset) -> DeployResult:
    root = sess.exec("import os\nprint(os.getcwd())").strip().rstrip("/") + "/"
    if not eui64:
        uid = sess.exec("import machine, binascii\nprint(binascii.hexlify(machine.unique_id()).decode())").strip()
        raw = bytes.fromhex(uid)
        if len(raw) == 6:  # a MAC: EUI-48 to EUI-64
            raw = raw[:3] + b"\xff\xfe" + raw[3:]
        if len(raw) != 8 or raw == bytes(8):
            raise DeployError("the board has no usable unique id; give --eui64")
        eui64 = ":".join("%02x" % b for b in raw)
    cfg = {"eui64": eui64, "role": role, "manufacturer": manufacturer, "hw_version": hw_version,
           "keys": points, "install_code": install_code}
    if spec.chip in images.otafile.BOARD_FAMILIES:
        cfg["family"] = spec.chip  # files built for another board family are refused
    if hub:
        cfg["hub"] = hub
    cfg.update(settings)
    from hanfw import config as devconfig
    try:
        devconfig.from_dict(json.loads(json.dumps(cfg)))
    except devconfig.ConfigError as e:
        raise DeployError("the configuration would not load on the device: %s" % e) from None
    files: dict[str, bytes] = {
        root + "boot.py": (devcode.DEVICE_ROOT / "boot.py").read_bytes(),
        root + "main.py": (devcode.DEVICE_ROOT / "main.py").read_bytes(),
        root + "hanota.json": json.dumps(cfg, indent=1).encode(),
    }
    result = DeployResult(eui64=eui64, role=role, install_code=install_code, fs_root=root)
    if spec.bank_kind == "app":
        compiled = devcode.compiled_tree()
        files[root + "lib/bootctl.mpy"] = (compiled / "hanfw" / "bootctl.mpy").read_bytes()
        bootcfg = {"banks": [[r.offset, r.size] for r in spec.banks],
                   "bootctl": [spec.region("bootctl").offset, spec.region("bootctl").size]}
        files[root + "bootcfg.json"] = json.dumps(bootcfg).encode()
        files[root + "ota.json"] = b"{}"
        sess.mkdir(root + "lib")
    else:
        has_code = "yes" in sess.exec("import os\ntry:\n os.stat('/rom/hanfw')\n print('yes')\nexcept OSError:\n print('no')")
        files[root + "ota.json"] = json.dumps({"versions": {_running_label(sess): version}}).encode()
        if not has_code:
            compiled = devcode.compiled_tree()
            for p in sorted(compiled.rglob("*.mpy")):
                rel = p.relative_to(compiled)
                if rel.parts[0] == "hanfw":
                    files[root + "lib/" + str(rel)] = p.read_bytes()
            hal = spec.hal_path
            if hal.exists():
                files[root + "lib/hal.py"] = hal.read_bytes()
            for d in sorted({str(Path(p).parent) for p in files if "/lib/" in p}):
                parts = d[len(root):].split("/")
                for i in range(1, len(parts) + 1):
                    sess.mkdir(root + "/".join(parts[:i]))
    for path, data in files.items():
        sess.put(path, data)
    for path, data in files.items():
        want = hashlib.sha256(data).hexdigest()
        got = sess.hash(path)
        if got != want:
            raise DeployError("%s on the board hashes to %s, expected %s" % (path, got, want))
        result.files[path] = want
    if spec.bank_kind == "app":
        result.bank = _write_app_bank(sess, spec, app_romfs or fwbuild.build_romfs_for(spec.name), version)
    if reset:
        sess.reset()
    return result


def _running_label(sess) -> str:
    out = sess.exec("import esp32\nprint(esp32.Partition(esp32.Partition.RUNNING).info()[4])").strip()
    if not out.startswith("ota_") and out != "factory":
        raise DeployError("unexpected running partition %r" % out)
    return out


def _write_app_bank(sess, spec, romfs: bytes, version: int) -> dict:
    bank = spec.banks[0]
    if len(romfs) > bank.size:
        raise DeployError("the app image (%d bytes) does not fit bank 0 (%d bytes)" % (len(romfs), bank.size))
    ctl = spec.region("bootctl")
    # each chunk carries its own setup: ampy soft-resets the board before every exec
    setup = _bank_write_code() + "import nrf\n_fl = nrf.Flash(start=%d, len=%d)\n" % (bank.offset, bank.size)
    for at in range(0, len(romfs), BANK_PIECE):
        piece = romfs[at:at + BANK_PIECE]
        piece += b"\xff" * (-len(piece) % 4)
        chunk = base64.b64encode(piece).decode()
        sess.exec(setup + "_w(_fl, %d, %d, '%s')" % (at // 4096, at % 4096, chunk))
    digest = hashlib.sha256(romfs).hexdigest()
    check = ("import hashlib, binascii, nrf\n"
             "fl = nrf.Flash(start=%d, len=%d)\nh = hashlib.sha256()\nbuf = bytearray(4096)\n"
             "left = %d\nn = 0\n"
             "while left > 0:\n fl.readblocks(n, buf, 0)\n t = min(4096, left)\n h.update(memoryview(buf)[:t])\n"
             " left -= t\n n += 1\n"
             "print(binascii.hexlify(h.digest()).decode())\n" % (bank.offset, bank.size, len(romfs)))
    got = sess.exec(check).strip()
    if got != digest:
        raise DeployError("app bank 0 hashes to %s on the board, expected %s" % (got, digest))
    sess.exec("import sys\nsys.path.append('%slib')\nimport nrf, binascii\nfrom bootctl import BootControl\n"
              "BootControl(nrf.Flash(start=%d, len=%d)).initialise(%d, %d, 0, binascii.unhexlify('%s'))\n"
              % ("/flash/", ctl.offset, ctl.size, version, len(romfs), digest))
    return {"bank": 0, "length": len(romfs), "sha256": digest, "version": version}
