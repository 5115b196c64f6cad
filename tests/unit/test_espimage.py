"""`image build` of esp-app payloads: real ESP-IDF app images are validated
(hanota.espimage), merged flash images refused with a working command, and each kind of
damage refused with the name of the field at fault.

The real images are MicroPython v1.15 and v1.16 for an ESP32, from PyPI
(support.espapps.real_firmware)."""
import hashlib
import json
import struct
import subprocess

import pytest
from esptool.bin_image import LoadFirmwareImage

from hanota import espimage
from hanota.cli import main
from hanota.keys import generate_keys
from hanota.vboard import firmware as vfirmware
from support.espapps import real_firmware, small_app  # noqa: F401 (fixture)

RELEASES = ["v1.15", "v1.16"]
IDF = {"v1.15": "v4.0.2", "v1.16": "v4.2"}


def run(capsys, *args):
    """Run `hanota ARGS` in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as ei:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return ei.value.code, out.out, out.err


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    generate_keys(d)
    return d


@pytest.fixture(scope="module")
def app16(real_firmware):
    return real_firmware["v1.16"].app.read_bytes()


def reason(data, family="esp32"):
    with pytest.raises(espimage.EspImageError) as ei:
        espimage.check_app(bytes(data), family)
    assert ei.value.reason in str(ei.value)
    return ei.value.reason, str(ei.value)


# ---------------------------------------------------------------- real images validate

@pytest.mark.parametrize("release", RELEASES)
def test_real_micropython_apps_validate(real_firmware, release):
    fw = real_firmware[release]
    data = fw.app.read_bytes()
    assert b"MicroPython %s-" % release.encode() in data  # the fixture took the right app
    assert fw.app_offset == 0x10000
    app = espimage.check_app(data, "esp32")
    assert (app.chip, app.size, app.flash_mode, app.flash_size) == \
        ("ESP32", len(data), "dio", "4MB")
    assert app.sha256 == hashlib.sha256(data[:-32]).digest() == data[-32:]
    assert app.desc["idf_ver"] == IDF[release] and app.desc["date"].endswith("2021")
    assert app.segments[0][3] == "DROM" and 0x40080000 <= app.entry < 0x400A0000
    assert espimage.check_app(data, "any").chip == "ESP32"
    # the virtual board's bootloader (hanota.vboard.rt.espfmt) agrees
    assert vfirmware.check_app_image(data)["size"] == len(data)


@pytest.mark.parametrize("release", RELEASES)
def test_real_app_builds_a_signed_file_a_vboard_esp32_takes(tmp_path, capsys, keydir,
                                                             real_firmware, release):
    app = real_firmware[release].app
    out = tmp_path / "fw.ota"
    code, stdout, err = run(capsys, "image", "build", app, "--role", "ppmid", "--version",
                            "1.16.0.1", "--key", keydir / "private.pem", "--payload-kind",
                            "esp-app", "--board-family", "esp32", "-o", out)
    assert code == 0 and "wrote" in stdout, err
    code, stdout, err = run(capsys, "image", "verify", out, "--pubkey", keydir / "public.bin")
    assert code == 0 and stdout.startswith("valid"), err
    cfg = tmp_path / "hanota.json"
    cfg.write_text(json.dumps({
        "eui64": "00:11:22:33:44:55:66:77", "role": "ppmid", "manufacturer": 0x1234,
        "hw_version": 0x0100, "keys": [(keydir / "public.bin").read_bytes().hex()],
        "install_code": "83FED3407A939723A5C639B26916D505C3B5"}))
    code, stdout, err = run(capsys, "image", "verify", out, "--pubkey", keydir / "public.bin",
                            "--for-device", cfg, "--board", "vboard-esp32")
    assert code == 0 and "takes it" in stdout, err
    code, stdout, err = run(capsys, "image", "inspect", out, "--json")
    info = json.loads(stdout)
    assert info["payload_kind"] == "esp-app" and info["upgrade_image_length"] == app.stat().st_size
    assert info["esp_app"]["chip"] == "ESP32" and info["esp_app"]["idf_version"] == IDF[release]
    code, stdout, _ = run(capsys, "image", "inspect", out)
    assert "esp_app:\n  chip: ESP32\n" in stdout


def test_the_payload_kind_is_detected_and_checked_without_the_option(tmp_path, capsys, keydir,
                                                                     app16):
    bad = bytearray(app16)
    bad[0x60000] ^= 0x01
    (tmp_path / "bad.bin").write_bytes(bad)
    code, stdout, err = run(capsys, "image", "build", tmp_path / "bad.bin", "--role", "ppmid",
                            "--version", "2", "--key", keydir / "private.pem",
                            "-o", tmp_path / "x.ota")
    assert code == 2 and not stdout and not (tmp_path / "x.ota").exists()
    assert "bad.bin: not a valid ESP-IDF app image (bad-checksum)" in err, err


# ---------------------------------------------------------------- merged flash images

@pytest.mark.parametrize("release", RELEASES)
def test_merged_flash_image_is_refused_with_a_command_that_works(tmp_path, capsys, keydir,
                                                                 real_firmware, release):
    fw = real_firmware[release]
    code, stdout, err = run(capsys, "image", "build", fw.merged, "--role", "ppmid",
                            "--version", "2", "--key", keydir / "private.pem",
                            "--payload-kind", "esp-app", "-o", tmp_path / "x.ota")
    assert code == 2 and not stdout and not (tmp_path / "x.ota").exists()
    assert "(merged-image)" in err and "the app is at 0x10000 (partition 'factory'" in err, err
    assert ".app-bin" in err and "OTA variant" in err
    command = err.split("Take it out with `")[1].split("`")[0]
    subprocess.run(command, shell=True, check=True, cwd=tmp_path)
    assert (tmp_path / "app.bin").read_bytes() == fw.app.read_bytes()


def test_bootloader_alone_or_first_is_refused(real_firmware):
    merged = real_firmware["v1.15"].merged.read_bytes()
    boot = LoadFirmwareImage("esp32", merged)
    boot_len = boot.data_length + 32 * boot.append_digest
    assert reason(merged[:boot_len])[0] == "bootloader-image"
    assert reason(merged[:0x7000])[0] == "merged-image"  # the table cut off


def test_vboard_firmware_passes_and_its_flash_image_is_refused():
    from hanota.vboard import layout

    app = vfirmware.build_app_image(b"\xd2\xcd\x31\x00", "1.2.3")
    info = espimage.check_app(app, "esp32")
    assert info.desc["version"] == "1.2.3" and info.desc["project"] == "hanota"
    _, merged = vfirmware.build_flash_image(layout.load_board("vboard-esp32"), app)
    why, text = reason(merged)
    assert why == "merged-image" and "the app is at 0x10000 (partition 'ota_0'" in text


# ---------------------------------------------------------------- damage, each by its name

def _set(at, fmt, *values):
    return lambda b: struct.pack_into(fmt, b, at, *values)


def _flip(at, bits=0x01):
    def f(b):
        b[at if at >= 0 else len(b) + at] ^= bits
    return f


def _twice(a, b):
    """The same bit flipped in two bytes: the XOR checksum cannot see it, the SHA-256 can."""
    return lambda buf: (_flip(a, 0x10)(buf), _flip(b, 0x10)(buf))


def _segment_addr(index, addr):
    """Change segment `index`'s load address (in its 8-byte header)."""
    def f(b):
        struct.pack_into("<I", b, LoadFirmwareImage("esp32", bytes(b)).segments[index].file_offs,
                         addr)
    return f


DAMAGE = [
    ("a byte flipped in a segment", _flip(0x60000), "bad-checksum"),
    ("one bit flipped in two bytes of a segment", _twice(0x60000, 0x60001), "bad-sha256"),
    ("a byte of the appended SHA-256", _flip(-5), "bad-sha256"),
    ("wrong magic", _set(0, "B", 0xE8), "bad-magic"),
    ("ESP32-S3 chip id", _set(12, "<H", 9), "wrong-chip"),
    ("no segments", _set(1, "B", 0), "bad-segment-count"),
    ("17 segments", _set(1, "B", 17), "bad-segment-count"),
    ("hash-appended flag 2", _set(23, "B", 2), "bad-hash-flag"),
    ("SPI mode 7", _set(2, "B", 7), "bad-flash-mode"),
    ("flash size bits 0x90", _set(3, "B", 0x90), "bad-flash-size"),
    ("flash speed bits 0x5", _set(3, "B", 0x25), "bad-flash-freq"),
    ("min chip revision above max", _set(15, "<HH", 301, 100), "bad-chip-revision"),
    ("entry point outside the segments", _set(4, "<I", 0x40000400), "bad-entry-point"),
    ("a RAM segment loaded outside memory", _segment_addr(1, 0x60000000), "bad-segment"),
    ("a DROM segment off its MMU page offset", _segment_addr(0, 0x3F400024), "bad-segment"),
]


@pytest.mark.parametrize("what,damage,why", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_real_app_is_refused_naming_the_field(app16, what, damage, why):
    data = bytearray(app16)
    damage(data)
    assert data != app16 and reason(data)[0] == why


@pytest.mark.parametrize("cut", [10, 0x30, 0x60000, -33, -20])
def test_truncated_real_app_is_refused(app16, cut):
    assert reason(app16[:cut])[0] == "truncated"


def test_trailing_bytes_are_refused_with_the_length_to_keep(app16):
    why, text = reason(app16 + b"\xff" * 4096)
    assert why == "trailing-data" and "head -c %d" % len(app16) in text


def test_chip_and_family_must_agree(app16):
    assert reason(app16, "esp32s3")[0] == "wrong-chip"
    assert reason(app16, "nrf52840")[0] == "wrong-chip"
    data = bytearray(app16)
    data[12] = 0x77
    why, text = reason(data, "any")
    assert why == "wrong-chip" and "no chip esptool knows" in text
    assert espimage.check_app(small_app("esp32s3"), "esp32s3").chip == "ESP32-S3"


def _reseal(b: bytearray) -> bytes:
    """Recompute the checksum byte and the appended SHA-256 after a change to a segment."""
    img = LoadFirmwareImage("esp32", bytes(b))
    b[img.data_length - 1] = img.calculate_checksum()
    b[img.data_length:img.data_length + 32] = hashlib.sha256(b[:img.data_length]).digest()
    return bytes(b)


def test_no_app_descriptor_is_refused(app16):
    assert _reseal(bytearray(app16)) == app16
    data = bytearray(app16)
    data[0x20:0x24] = bytes(4)  # esp_app_desc_t.magic_word, the first bytes of segment 0
    why, text = reason(_reseal(data))
    assert why == "no-app-descriptor" and "0xabcd5432" in text


def test_an_app_that_carries_partition_table_bytes_is_not_taken_for_merged(real_firmware, app16):
    table = real_firmware["v1.16"].merged.read_bytes()[0x7000:0x7C00]
    data = bytearray(app16)
    data[0x7000:0x7C00] = table  # inside segment 0 (rodata), where the merged file has it
    assert espimage.find_partition_table(bytes(data)) is not None
    assert espimage.check_app(_reseal(data), "esp32").size == len(app16)
