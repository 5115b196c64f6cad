"""What stock nRF52840 MicroPython does that the virtual board does not, and hanota must handle.

Stock firmware mounts a valid ROMFS found in its ROMFS region at /rom and appends /rom and
/rom/lib to sys.path (extmod/vfs.c, mp_vfs_mount_romfs_protected). hanota's bank A is the
first half of that region and is rewritten by updates, so boot.py takes /rom away.
"""
import binascii

from hanota import deploy
from hanota.keys import generate_keys
from hanota.romfs import build_romfs


def test_boot_py_takes_away_the_rom_mount_of_stock_firmware(vboards, tmp_path):
    generate_keys(tmp_path / "keys")
    b = vboards("vboard-nrf52840")
    b.console.wait_ready(15)
    deploy.deploy(b.console.pty_path, "vboard-nrf52840", "althan", [tmp_path / "keys" / "public.bin"],
                  version=1, reset=False)
    rom = binascii.b2a_base64(build_romfs({"stale.py": b"X = 1\n"}), newline=False).decode()
    s = deploy._Session(b.console.pty_path)
    try:
        out = s.exec(
            "import vfs, sys, os, binascii\n"
            "try:\n vfs.umount('/app')\nexcept OSError:\n pass\n"  # boot.py may have run already
            "while '/app' in sys.path: sys.path.remove('/app')\n"
            "vfs.mount(vfs.VfsRom(binascii.a2b_base64('%s')), '/rom')\n"  # as stock firmware does
            "sys.path.append('/rom'); sys.path.append('/rom/lib')\n"
            "print('before', '/rom' in sys.path, [n for n in os.listdir('/rom') if n.startswith('stale')] != [])\n"
            "execfile('boot.py')\n"
            "print('after', '/rom' in sys.path or '/rom/lib' in sys.path, 'rom' in os.listdir('/'))\n"
            "print('app', '/app' in sys.path)\n" % rom)
    finally:
        s.close()
    assert "before True True" in out, out
    assert "after False False" in out, out
    assert "app True" in out, out
