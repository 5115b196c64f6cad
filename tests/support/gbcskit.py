"""GBCS commands for the device's CS06 tests (unit, MicroPython, end to end): built with the
project's own keys (a Supplier DS key, the ACB's KA key, the device's KA key) by hanfw.gbcs,
signed and MAC'd with `cryptography`/hanfw.p256 as the Supplier and the DCC do."""
from __future__ import annotations

import hashlib
import json

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from hanfw import gbcs, p256

CURVE = ec.SECP256R1()
H = bytes.fromhex
SUP, OTHER, ACB, DEV = 0x51_1111, 0x52_2222, 0xACB_2222, 0xDE7_3333
SUP_EUI, DEV_EUI = H("90B3D51F30010000"), H("00DB1234567890A5")
IMG = hashlib.sha256(b"the held image").digest()


def public(d: int) -> bytes:
    return ec.derive_private_key(d, CURVE).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def sign(d: int, data: bytes) -> bytes:
    r, s = utils.decode_dss_signature(
        ec.derive_private_key(d, CURVE).sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def cs06(counter, at=None, recipient=DEV_EUI, code=None, key=SUP, image=IMG, originator=SUP_EUI,
         acb=ACB, dev=DEV) -> bytes:
    """A CS06 as the DCC sends it: Supplier-signed, MAC'd with the ACB's KA key to the
    device's KA key."""
    z = p256.ecdh(acb.to_bytes(32, "big"), public(dev))
    m = gbcs.cs06_command(counter, originator, recipient, image, at)
    if code is not None:
        m.message_code = code
    m.signature = sign(key, m.signed_bytes())
    m.mac = gbcs.compute_mac(z, m)
    return m.encode()


def commissioning(sup=SUP, sup_eui=SUP_EUI, acb=ACB, dev=DEV) -> dict:
    """The device configuration's "gbcs" block for these keys."""
    return {"supplier_ds": public(sup).hex(), "supplier_id": sup_eui.hex(),
            "acb_ka": public(acb).hex(), "ka_priv": "%064x" % dev}


def run_activation_check(tmp_path, cases, heapsize=None, on_host=False):
    """Run tests/device/mpy/activation_check.py over `cases` (its ops: run, sweep) with a
    commissioned HCALCS holding IMG; ([answer fields of each case], [heap kept per "run"])."""
    from support.mpy import MPY_TESTS, run_mpy_ok
    held = {"bank": 1, "version": 0x20, "length": 1000, "secver": 0, "hash": IMG.hex()}
    config = {"eui64": DEV_EUI.hex(), "role": "hcalcs", "manufacturer": 0x1234,
              "hw_version": 0x100, "keys": [public(SUP).hex()], "install_code": "00" * 18,
              "gbcs": commissioning()}
    path = tmp_path / "cases.json"
    head = {"config": config, "held": held, "hash": IMG.hex()}
    if on_host:
        head["state"] = str(tmp_path / "ota.json")
    path.write_text(json.dumps(head) + "\n" + "".join(json.dumps(c) + "\n" for c in cases))
    out = run_mpy_ok(MPY_TESTS / "activation_check.py", str(path), heapsize=heapsize,
                     timeout=300).splitlines()
    assert out[-1] == "done %d" % len(cases), out[-5:]
    return [ln.split()[2:] for ln in out if ln.startswith("R ")], \
        [int(ln.split()[2]) for ln in out if ln.startswith("H run")]
