"""hanfw.gbcs, hanfw.gcm and hanfw.p256's ECDH under the real MicroPython in a 64 KiB heap:
the GBCS section 18.4 signature and MAC (every intermediate: ECDH Z, KDF OtherInfo, MAC key,
MAC), the NIST GCM example, the derived CS06 commands and OTA file, and the device's check of
CS06 commands built here with the project's own keys (good ones pass, each bad one is refused
by its reason). Times and heap figures are printed (pytest -s) for the report."""
from __future__ import annotations

import hashlib
import json
import random

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hanfw import gbcs
from support import gbcskit
from support.gbcskit import ACB, DEV, DEV_EUI, SUP, SUP_EUI, H, public
from support.mpy import MPY_TESTS, VECTORS, run_mpy_ok

SCRIPT = MPY_TESTS / "gbcs_check.py"
V = json.loads((VECTORS / "gbcs" / "gbcs-18.4.json").read_text())
SRC, EXP, DER = V["copied_from_source"], V["computed_expected_values"], V["derived_examples"]
IMG = hashlib.sha256(b"img").digest()  # the image hash these commands carry


def cs06(counter, at=None, recipient=DEV_EUI, code=None, key=SUP) -> bytes:
    """support.gbcskit's CS06 (the same keys and EUIs) for IMG."""
    return gbcskit.cs06(counter, at, recipient, code, key, image=IMG)


def sweep_expected(good: bytes, last: int) -> str:
    v = gbcs.Verifier(public(SUP), public(ACB), DEV.to_bytes(32, "big"), DEV_EUI, SUP_EUI)
    counts: dict[str, int] = {}

    def reason(data):
        try:
            v.verify(data, last)
        except gbcs.GbcsError as e:
            return e.reason
        return "ok"
    for k in range(len(good)):
        bad = bytearray(good)
        bad[k] ^= 1
        r = reason(bytes(bad))
        counts[r] = counts.get(r, 0) + 1
    for k in range(len(good)):
        r = "cut-" + reason(good[:k])
        counts[r] = counts.get(r, 0) + 1
    assert "ok" not in counts and "cut-ok" not in counts
    return " ".join("%s=%d" % kv for kv in sorted(counts.items()))


def cases():
    ecs = SRC["ecs04b_command"]["hex"]
    n = SRC["nist_gcm_example6"]
    rng = random.Random(3)
    gcm_cases = [(rng.randbytes(16), rng.randbytes(12), rng.randbytes(k), rng.randbytes(p))
                 for k, p in ((0, 0), (17, 0), (170, 0), (5, 33))]
    good = cs06(10)
    flipped = bytearray(good)
    flipped[100] ^= 4
    out = [
        ({"op": "gcm", "key": n["key"], "iv": n["iv"], "aad": n["aad"], "pt": n["plaintext"],
          "tag_len": 12},
         n["ciphertext"] + " " + n["tag"]),
        ({"op": "ecdh", "priv": SRC["acb"]["ka_private_key"],
          "peer": "04" + SRC["device_a"]["ka_public_key"]},
         "04" + EXP["acb_ka_public_key"] + " " + EXP["ecs04b"]["ecdh_shared_secret_z"]),
        ({"op": "mac", "msg": ecs, "z": EXP["ecs04b"]["ecdh_shared_secret_z"]},
         "%s %s %s" % (EXP["ecs04b"]["kdf_other_info"], EXP["ecs04b"]["mac_key"],
                       EXP["ecs04b"]["mac_12"])),
        ({"op": "sig", "msg": ecs, "pub": "04" + SRC["supplier_a"]["ds_public_key"]}, "ok"),
        ({"op": "sig", "msg": ecs, "pub": "04" + SRC["device_a"]["ds_public_key"]},
         "bad-signature"),
        ({"op": "decode", "msg": ecs}, "raw 00B3 1 1"),
        ({"op": "ota", "file": DER["ota_file"]["hex"], "step": 7,
          "pub": "04" + SRC["supplier_a"]["ds_public_key"]},
         DER["manufacturer_image_hash_sha256"] + " 0 ok"),
    ]
    for name in ("cs06_immediate", "cs06_future_dated", "cs06_cancellation"):
        d = DER[name]
        out.append(({"op": "decode", "msg": d["command"]},
                    "cs06-command 0012 %d 1" % d["originator_counter"]))
        out.append(({"op": "mac", "msg": d["command"], "z": EXP["ecs04b"]["ecdh_shared_secret_z"]},
                    "%s %s %s" % (d["kdf_other_info"], d["mac_key"], d["mac"])))
        out.append(({"op": "sig", "msg": d["command"],
                     "pub": "04" + SRC["supplier_a"]["ds_public_key"]}, "ok"))
        out.append(({"op": "sign", "msg": d["precommand"],
                     "priv": SRC["supplier_a"]["ds_private_key"]}, d["signature"]))
    for i, (key, iv, aad, pt) in enumerate(gcm_cases):
        want = AESGCM(key).encrypt(iv, pt, aad)
        out.append(({"op": "gcm", "key": key.hex(), "iv": iv.hex(), "aad": aad.hex(),
                     "pt": pt.hex(), "pure": i % 2 == 1},
                    ((want[:-16].hex() or "-") + " " + want[-16:].hex()).upper()))
    items = [(good, 5), (cs06(11, gbcs.CANCEL_TIME), 10), (good, 10), (cs06(12, key=SUP + 1), 11),
             (cs06(12, recipient=H("00DB1234567890A0")), 11), (cs06(12, code=0x00B3), 11),
             (bytes(flipped), 5), (good[:-1], 5), (good[:40], 5)]
    out.append(({"op": "verifier", "supplier": public(SUP).hex(), "acb_ka": public(ACB).hex(),
                 "dev_ka_priv": DEV.to_bytes(32, "big").hex(), "eui": DEV_EUI.hex(),
                 "supplier_eui": SUP_EUI.hex()}, "ready"))
    wants = ("ok:10 ok:11 replayed-counter bad-signature wrong-recipient unknown-message-code "
             "bad-mac truncated truncated").split()
    for (m, last), want in zip(items, wants):
        out.append(({"op": "check", "msg": m.hex(), "last": last}, want))
    # every byte of a good CS06 flipped, and every cut of it: each refused, by name; what
    # the host's decoder and checker say (tests/unit/test_gbcs.py) is the expected answer
    out.append(({"op": "sweep", "msg": good.hex(), "last": 5}, sweep_expected(good, 5)))
    return out


def run_cases(tmp_path, cs, modules, heap="64K"):
    path = tmp_path / "gbcs_cases.json"
    path.write_text("".join(json.dumps(c) + "\n" for c, _ in cs))
    lines = run_mpy_ok(SCRIPT, str(path), modules, heapsize=heap, timeout=300).splitlines()
    assert lines[-1] == "done %d" % len(cs)
    answers = {int(ln.split()[1]): ln.split(None, 2)[2] for ln in lines if ln.startswith("R ")}
    wrong = [(i, want, answers.get(i)) for i, (_, want) in enumerate(cs) if answers.get(i) != want]
    assert not wrong, wrong
    print("\n".join([modules] + [ln for ln in lines if ln.startswith(("T ", "H "))]))
    return {ln.split()[1]: int(ln.split()[2]) for ln in lines if ln.startswith("H ")}


def test_gbcs_image_reader_in_a_64k_heap(tmp_path):
    image = [c for c in cases() if c[0]["op"] == "ota"]
    assert len(image) == 1
    run_cases(tmp_path, image, "gbcsimage,p256")


def test_gbcs_vectors_and_device_checks_in_a_64k_heap(tmp_path):
    heap = run_cases(tmp_path, [c for c in cases() if c[0]["op"] != "ota"], "gbcs,gcm,p256")
    # what verifying a command keeps once it returns is the decoded message (a few hundred bytes)
    assert heap["verify-cs06-retained"] < 4096, heap
