"""`hanota board flash --board nrf52840`: UF2 copy to the bootloader drive, or a clear error."""
import os
import struct
import subprocess
import sys
from pathlib import Path

from hanota import flasher

HANOTA = str(Path(sys.executable).with_name("hanota"))


def test_uf2_blocks_follow_the_format():
    data = bytes(range(256)) * 2 + b"tail"
    uf2 = flasher.make_uf2(data, 0x27000)
    assert len(uf2) == 3 * 512
    for n in range(3):
        blk = uf2[n * 512:(n + 1) * 512]
        m0, m1, flags, addr, size, no, count, family = struct.unpack_from("<8I", blk)
        assert (m0, m1, flags, size, no, count, family) == (0x0A324655, 0x9E5D5157, 0x2000, 256, n, 3,
                                                            0xADA52840)
        assert addr == 0x27000 + 256 * n
        assert struct.unpack_from("<I", blk, 508)[0] == 0x0AB16F30
    assert uf2[512 * 2 + 32:512 * 2 + 36] == b"tail"


def test_copy_to_a_uf2_drive(tmp_path):
    drive = tmp_path / "XIAO-SENSE"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader 0.6.1\nModel: Seeed XIAO nRF52840\n")
    fw = tmp_path / "micropython.bin"
    fw.write_bytes(b"\x01" * 1000)
    r = subprocess.run([HANOTA, "board", "flash", "--board", "nrf52840", "--port", str(drive),
                        "--firmware", str(fw)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = (drive / "micropython.uf2").read_bytes()
    assert len(out) == 4 * 512 and out[32:288] == b"\x01" * 256


def test_not_a_drive_and_no_dfu_tool_says_what_to_do(tmp_path):
    fw = tmp_path / "fw.zip"
    fw.write_bytes(b"PK")
    env = dict(os.environ, PATH=str(tmp_path))
    r = subprocess.run([HANOTA, "board", "flash", "--board", "nrf52840", "--port", "/dev/ttyACM9",
                        "--firmware", str(fw)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "adafruit-nrfutil" in r.stderr and "UF2" in r.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    r = subprocess.run([HANOTA, "board", "flash", "--board", "nrf52840", "--port", str(plain),
                        "--firmware", str(fw)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "INFO_UF2.TXT" in r.stderr
