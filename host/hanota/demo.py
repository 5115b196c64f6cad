"""`hanota demo`: the story so far, end to end, printing what it does.

Today it covers the image side: keys, build a signed image per role, inspect
it, verify it, and show that a tampered copy, a wrong key and an unsigned
foreign file are each rejected with a named reason.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from . import images


class DemoFailure(AssertionError):
    """An outcome of the demo was not the expected one."""


def run_demo(workdir: Path, say: Callable[[str], None] = print) -> list[tuple[str, str, str]]:
    """Run the demo in workdir (recreated); return rows (step, expected, got)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    rows: list[tuple[str, str, str]] = []

    def expect(step: str, want: str, got: str) -> None:
        rows.append((step, want, got))
        say("  %-44s %s" % (step, got))

    say("1. signing keys")
    keys = images.generate_keys(workdir / "keys")
    pub = images.load_public_key(keys.public_bin)
    other = images.generate_keys(workdir / "other-keys")
    say("  key id %s in %s" % (images.p256.key_id(pub).hex(), keys.private.parent))

    say("2. build a signed upgrade file per role")
    key = images.load_private_key(keys.private)
    built = {}
    for n, role in enumerate(sorted(images.ROLE_IMAGE_TYPES)):
        payload = ("%s application image, build %d\n" % (role, n)).encode() * 200
        path = workdir / ("%s-v2.ota" % role)
        path.write_bytes(images.build_image(payload, key=key, version=0x00020000 + n, role=role,
                                            min_hw=0x0100, max_hw=0x01FF, security_version=1))
        info = images.inspect_image(path)
        built[role] = path
        say("  %-7s %s: %d bytes, image type 0x%04x, version 0x%08x, elements %s"
            % (role, path.name, info["total_image_size"], info["image_type"], info["file_version"],
               ", ".join("0x%04x" % e["tag"] for e in info["sub_elements"])))

    say("3. verify")
    for role, path in built.items():
        expect("%s image with the right key" % role, "valid", images.verify_image(path, [pub]).verdict.value)
    tampered = workdir / "ppmid-tampered.ota"
    data = bytearray(built["ppmid"].read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    expect("one bit flipped in the payload", "tampered", images.verify_image(tampered, [pub]).verdict.value)
    wrong = images.load_public_key(other.public_bin)
    expect("verified against another key", "wrong key", images.verify_image(built["althan"], [wrong]).verdict.value)
    truncated = workdir / "hcalcs-truncated.ota"
    truncated.write_bytes(built["hcalcs"].read_bytes()[:-10])
    expect("truncated file", "truncated", images.verify_image(truncated, [pub]).verdict.value)
    unsigned = workdir / "unsigned.ota"
    unsigned.write_bytes(built["ppmid"].read_bytes()[:-images.otafile.SIGNATURE_ELEMENT_LEN])
    blob = bytearray(unsigned.read_bytes())
    blob[52:56] = len(blob).to_bytes(4, "little")
    unsigned.write_bytes(bytes(blob))
    expect("signature element removed", "unsigned", images.verify_image(unsigned, [pub]).verdict.value)
    return rows


def check(rows: list[tuple[str, str, str]]) -> None:
    bad = [r for r in rows if r[1] != r[2]]
    if bad:
        raise DemoFailure("; ".join("%s: expected %s, got %s" % r for r in bad))
