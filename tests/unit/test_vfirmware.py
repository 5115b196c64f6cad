"""Virtual firmware (ESP32 app images carrying a ROMFS), ROMFS building and board layouts."""
import hashlib
import os
import struct
import subprocess
import sys

import pytest
from esptool.bin_image import LoadFirmwareImage

from hanota.romfs import RomfsError, build_romfs, build_romfs_dir
from hanota.vboard import firmware, layout
from hanota.vboard.firmware import FirmwareError
from hanota.vboard.layout import LayoutError
from hanota.vboard.rt import espfmt, vflash

ESP = layout.load_board("vboard-esp32")
NRF = layout.load_board("vboard-nrf52840")


@pytest.fixture(scope="module")
def romfs():
    return build_romfs({"fwinfo.py": b"VERSION = '1.2.3'\n", "lib/helper.py": b"X = 1\n"})


@pytest.fixture(scope="module")
def app(romfs):
    return firmware.build_app_image(romfs, "1.2.3", secure_version=7)


# -- ROMFS ---------------------------------------------------------------------------------

def test_romfs_has_the_magic_and_compiled_modules(romfs):
    assert romfs[:3] == espfmt.ROMFS_MAGIC
    assert espfmt.romfs_length(romfs[:16]) == len(romfs)
    assert b"fwinfo.mpy" in romfs and b"helper.mpy" in romfs and b"lib" in romfs
    assert b"VERSION = '1.2.3'" not in romfs  # compiled, not source


def test_romfs_keeps_source_when_asked():
    img = build_romfs({"a.py": b"A = 1\n", "boot.py": b"pass\n"}, compile=False)
    assert b"A = 1\n" in img and b"a.py" in img
    img = build_romfs({"a.py": b"A = 1\n", "boot.py": b"pass\n"})
    assert b"a.mpy" in img and b"boot.py" in img  # boot.py stays source


def test_romfs_errors():
    with pytest.raises(RomfsError):
        build_romfs({"../x.py": b""})
    with pytest.raises(RomfsError):
        build_romfs({"bad.py": b"def (:\n"})
    with pytest.raises(RomfsError):
        build_romfs({"a": b"x", "a/b": b"y"})


def test_romfs_dir_writes_nothing_into_the_source_tree(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "main.py").write_text("print('m')\n")
    (src / "pkg" / "__init__.py").write_text("P = 1\n")
    (src / "pkg" / "__pycache__").mkdir()
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    img = build_romfs_dir(src)
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before
    assert b"__init__.mpy" in img and b"main.py" in img and b"__pycache__" not in img
    with pytest.raises(RomfsError):
        build_romfs_dir(tmp_path / "missing")


# -- app image -----------------------------------------------------------------------------

def test_app_image_is_a_valid_esp32_image(app):
    assert app[0] == 0xE9 and app[23] == 1  # magic, SHA-256 appended
    assert struct.unpack_from("<H", app, 12)[0] == 0  # chip id ESP32
    img = LoadFirmwareImage("esp32", app)
    assert img.checksum == img.calculate_checksum()
    assert img.stored_digest == img.calc_digest
    assert img.segments[0].addr == 0x3F400020 and len(img.segments) == 5  # no padding segments
    for s in img.segments[:3]:  # flash-mapped: address and data offset agree modulo 64 KiB
        assert s.addr % 0x10000 == (s.file_offs + 8) % 0x10000
    assert app[0x20:0x24] == struct.pack("<I", 0xABCD5432)  # esp_app_desc_t at 0x20


def test_esptool_image_info_accepts_the_app(app, tmp_path):
    path = tmp_path / "app.bin"
    path.write_bytes(app)
    r = subprocess.run([sys.executable, "-m", "esptool", "image-info", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Detected image type: ESP32" in r.stdout
    assert "Checksum: " in r.stdout and r.stdout.count("(valid)") == 2
    assert "Project name: hanota" in r.stdout
    assert "App version: 1.2.3" in r.stdout
    assert "Secure version: 7" in r.stdout


def test_app_desc_and_romfs_round_trip(app, romfs):
    desc = firmware.read_app_desc(app)
    assert (desc["version"], desc["secure_version"], desc["project"]) == ("1.2.3", 7, "hanota")
    assert firmware.romfs_of(app) == romfs
    info = firmware.check_app_image(app)
    assert info["size"] == len(app)
    assert app[info["romfs"][0]:info["romfs"][0] + 3] == espfmt.ROMFS_MAGIC
    assert app[-32:] == hashlib.sha256(app[:-32]).digest()


def test_app_image_is_reproducible(romfs, app):
    assert firmware.build_app_image(romfs, "1.2.3", secure_version=7) == app
    assert firmware.build_app_image(romfs, "1.2.4", secure_version=7) != app


def test_large_romfs_spans_pages_without_padding_segments():
    big = build_romfs({"blob.bin": os.urandom(150_000)}, compile=False)
    img = firmware.build_app_image(big, "9.9.9")
    info = firmware.check_app_image(img)
    assert len(info["segments"]) == 5
    assert firmware.romfs_of(img) == big


@pytest.mark.parametrize("offset", [0, 5, 0x30, 0x150, -40, -1])
def test_any_damage_is_caught(app, offset):
    bad = bytearray(app)
    bad[offset] ^= 0x10
    with pytest.raises(FirmwareError):
        firmware.check_app_image(bytes(bad))


def test_bad_inputs_are_refused(romfs):
    with pytest.raises(FirmwareError):
        firmware.build_app_image(b"not a romfs", "1.0")
    with pytest.raises(FirmwareError):
        firmware.build_app_image(romfs, "v" * 32)
    with pytest.raises(FirmwareError):
        firmware.read_app_desc(b"\xe9" + bytes(400))
    with pytest.raises(FirmwareError):
        firmware.check_app_image(b"\xe9")


def test_flash_image_is_laid_out_like_micropython_firmware(app):
    offset, image = firmware.build_flash_image(ESP, app)
    assert offset == 0x1000
    boot = espfmt.check_image(_reader(image), 0, 0x7000, bytearray(4096))  # bootloader
    assert boot["entry"] == 0x40080400
    assert espfmt.parse_table(image[0x7000:0x7000 + 0xC00]) == layout.partition_entries(ESP)
    assert image[0xF000:0xF000 + len(app)] == app
    with pytest.raises(FirmwareError):
        firmware.build_flash_image(ESP, app[:-1] + bytes([app[-1] ^ 1]))


def _reader(data):
    def readinto(addr, buf):
        buf[:] = data[addr:addr + len(buf)]
    return readinto


def test_install_and_romfs_size(tmp_path, app, romfs):
    path = tmp_path / "esp.bin"
    layout.create_flash(ESP, path)
    assert layout.romfs_size(ESP, path) == 0
    firmware.install_firmware(ESP, path, app)
    data = path.read_bytes()
    assert data[0x10000:0x10000 + len(app)] == app
    assert data[:0x1000] == b"\xff" * 0x1000
    assert layout.romfs_size(ESP, path) == len(romfs)


# -- layouts -------------------------------------------------------------------------------

def test_esp32_partition_table_binary():
    table = layout.partition_table(ESP)
    assert len(table) == 0xC00
    assert table[:32] == bytes.fromhex("aa50 0102 00900000 00400000") + b"nvs".ljust(16, b"\0") + bytes(4)
    assert table[4 * 32:5 * 32] == bytes.fromhex("aa50 0011 00001900 00001800") + \
        b"ota_1".ljust(16, b"\0") + bytes(4)
    md5 = table[6 * 32:7 * 32]
    assert md5[:16] == b"\xeb\xeb" + b"\xff" * 14 and md5[16:] == hashlib.md5(table[:6 * 32]).digest()
    assert table[7 * 32:] == b"\xff" * (0xC00 - 7 * 32)
    assert [p[4] for p in espfmt.parse_table(table, ESP.flash_size)] == \
        ["nvs", "otadata", "phy_init", "ota_0", "ota_1", "vfs"]


def test_esp32_layout_is_the_ota_variant():
    assert (ESP.chip, ESP.flash_size, ESP.bank_kind, ESP.link) == ("esp32", 0x400000, "firmware", "udp")
    assert [(r.name, r.offset, r.size) for r in ESP.banks] == \
        [("ota_0", 0x10000, 0x180000), ("ota_1", 0x190000, 0x180000)]
    assert ESP.region("otadata").offset == 0xD000 and ESP.region("vfs").mount == "/"


def test_create_flash_is_a_blank_chip(tmp_path):
    path = layout.create_flash(NRF, tmp_path / "n.bin")
    assert path.read_bytes() == b"\xff" * 0x100000
    assert vflash.counters(str(layout.ctl_path(path)))["wear"] == [0] * 256


def test_device_command(tmp_path, app, romfs):
    path = tmp_path / "esp.bin"
    layout.create_flash(ESP, path)
    firmware.install_firmware(ESP, path, app)
    argv, env = layout.device_command(ESP, path, run_main=False, reset_cause="hard",
                                      eui64="00-0d-6f-00-00-00-00-01", env={})
    heap = 128 * 1024 + layout.RT_HEAP["esp32"] + len(romfs)
    assert argv[1:] == ["-X", "heapsize=%d" % (-(-heap // 1024) * 1024), "-i",
                        str(layout.RT_DIR / "esp32boot.py")]
    assert env["MICROPYPATH"] == str(layout.RT_DIR)
    assert (env["HANOTA_VB_FLASH"], env["HANOTA_VB_MAIN"], env["HANOTA_VB_RESET_CAUSE"]) == \
        (str(path), "0", "hard")
    assert env["HANOTA_VB_RESET_FILE"] == str(path) + ".reset"
    layout.create_flash(NRF, tmp_path / "n.bin")
    argv, env = layout.device_command(NRF, tmp_path / "n.bin", env={}, heap="64K")
    assert argv[-1].endswith("nrfboot.py") and argv[2] == "heapsize=%d" % (64 * 1024 + layout.RT_HEAP["nrf52840"])
    assert env["HANOTA_VB_NRF_FS"] == "%d,%d" % (0xB4000, 0x40000)  # stock XIAO layout (docs/ports.md)


def test_bad_boards(tmp_path):
    with pytest.raises(LayoutError):
        layout.load_board("no-such-board")
    bad = tmp_path / "board.toml"
    bad.write_text('[board]\nname = "x"\n')
    with pytest.raises(LayoutError):
        layout.load_board(bad)
    assert {"vboard-esp32", "vboard-nrf52840"} <= set(layout.board_names())
    with pytest.raises(LayoutError):
        layout.parse_size("lots")
    with pytest.raises(LayoutError):
        layout.device_command(ESP, tmp_path / "missing.bin")
