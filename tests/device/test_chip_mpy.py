"""The virtual board's chip on the real MicroPython: NOR flash, ESP32 bootloader, nRF start-up.

Each board run is the real `micropython -i <rt>/esp32boot.py` (or nrfboot.py) process over
a flash file, fed REPL lines on stdin; resets and power cuts end the process (SIGKILL) and
leave the reason in the reset file, as the console supervisor will see them.
"""
import os
import re
import subprocess

import pytest

from hanota.romfs import build_romfs
from hanota.vboard import firmware, layout
from hanota.vboard.rt import espfmt, vflash
from support.mpy import MPY_TESTS, micropython_cmd

ESP = layout.load_board("vboard-esp32")
NRF = layout.load_board("vboard-nrf52840")
SIZE = 16 * vflash.SECTOR
KILLED = -9


# -- NOR flash inside MicroPython -------------------------------------------------------

OPS = ["E0", "W0x10:40:3c", "W0x100:32:5a", "E0x1000", "W0x1008:64:a5", "W0x10:40:00",
       "E0", "W0x20:16:01"]


def _model(n_ops):
    mem = bytearray(b"\xff" * SIZE)
    for spec in OPS[:n_ops]:
        if spec[0] == "E":
            a = int(spec[1:], 0)
            mem[a:a + vflash.SECTOR] = b"\xff" * vflash.SECTOR
        else:
            a, n, b = spec[1:].split(":")
            mem[int(a, 0):int(a, 0) + int(n)] = bytes([int(b, 16)]) * int(n)
    return mem


def run_flash_script(path, ops, reset_file):
    env = dict(os.environ, MICROPYPATH=str(layout.RT_DIR), HANOTA_VB_RESET_FILE=str(reset_file))
    return subprocess.run([micropython_cmd(), str(MPY_TESTS / "chip_flash.py"), str(path), *ops],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def chip(tmp_path):
    path = tmp_path / "chip.bin"
    vflash.create(str(path), SIZE)
    return path


def test_flash_ops_inside_micropython_are_counted_exactly(chip, tmp_path):
    r = run_flash_script(chip, OPS + ["X0x20:4:ff"], tmp_path / "why")
    assert r.returncode == 0, r.stderr
    assert "EIO" in r.stdout  # a write over unerased data fails inside MicroPython
    assert ("end %d" % (len(OPS) + 1)) in r.stdout  # ... and counts as an op
    assert chip.read_bytes() == _model(len(OPS))
    c = vflash.counters(str(chip) + ".ctl")
    assert (c["ops"], c["erases"], c["writes"]) == (9, 3, 6)


@pytest.mark.parametrize("n", [1, 2, 4, 5, 8])
def test_cut_kills_micropython_and_leaves_ops_before_it(chip, tmp_path, n):
    vflash.schedule_cut(str(chip) + ".ctl", n)
    why = tmp_path / "why"
    r = run_flash_script(chip, OPS, why)
    assert r.returncode == KILLED
    assert ("done %d" % (n - 1)) in r.stdout if n > 1 else "done" not in r.stdout
    assert ("done %d" % n) not in r.stdout
    assert chip.read_bytes() == _model(n - 1)
    c = vflash.counters(str(chip) + ".ctl")
    assert (c["ops"], c["dead"], c["last_cut"]) == (n - 1, True, n)
    assert why.read_text() == "power"


def test_torn_write_inside_micropython_leaves_a_prefix(chip, tmp_path):
    vflash.schedule_cut(str(chip) + ".ctl", 5, torn=True)  # W0x1008:64:a5
    r = run_flash_script(chip, OPS, tmp_path / "why")
    assert r.returncode == KILLED
    expected = _model(4)
    expected[0x1008:0x1008 + 32] = b"\xa5" * 32
    assert chip.read_bytes() == expected


# -- the virtual ESP32 --------------------------------------------------------------------

def _romfs(version):
    return build_romfs({
        "fwinfo.py": ("VERSION = %r\n" % version).encode(),
        "lib/helper.py": b"def twice(x):\n    return 2 * x\n",
    })


@pytest.fixture(scope="module")
def apps():
    return {v: firmware.build_app_image(_romfs(v), v, secure_version=1) for v in ("1.0.0", "2.0.0")}


class Esp32:
    """A virtual ESP32 over a flash file: boot it, feed REPL lines, see why it stopped."""

    def __init__(self, path):
        self.path = path
        self.cause = "power"

    def boot(self, *lines, main=False, timeout=30):
        argv, env = layout.device_command(ESP, self.path, reset_cause=self.cause, run_main=main)
        marker = layout.reset_marker(self.path)
        r = subprocess.run(argv, input="".join(line + "\n" for line in lines),
                           capture_output=True, text=True, env=env, timeout=timeout)
        why = marker.read_text() if marker.exists() else None
        if marker.exists():
            marker.unlink()
        assert r.returncode in (0, KILLED), r.stdout + r.stderr
        assert (r.returncode == KILLED) == (why is not None), r.stdout
        self.cause = why or "power"  # a clean exit counts as a power cycle
        self.out = r.stdout
        return r.stdout

    def running(self):
        m = re.search(r"vboard: running (\S+) version=(\S+) \S+ otadata=(\S+)", self.out)
        assert m, self.out
        return m.groups()

    def otadata(self):
        data = self.path.read_bytes()
        return [espfmt.parse_ota(data[0xD000 + i * 0x1000:][:32]) for i in (0, 1)]


@pytest.fixture
def esp(tmp_path, apps):
    path = tmp_path / "esp32.bin"
    layout.create_flash(ESP, path)
    firmware.install_firmware(ESP, path, apps["1.0.0"])
    layout.flash_write(path, ESP.region("ota_1").offset, apps["2.0.0"])  # as a download would
    return Esp32(path)


def test_fresh_install_boots_ota_0_and_runs_frozen_modules(esp):
    out = esp.boot("import fwinfo, helper; print('V', fwinfo.VERSION, fwinfo.__file__, helper.twice(21))",
                   "import sys; print('P', sys.path)",
                   "import esp32; print('R', esp32.Partition(esp32.Partition.RUNNING).info()[4])")
    assert esp.running() == ("ota_0", "1.0.0", "VALID")
    assert "V 1.0.0 /rom/fwinfo.mpy 42" in out
    assert "P ['', '/rom', '/rom/lib', '.frozen', '/lib']" in out
    assert "R ota_0" in out
    assert "Performing initial setup" in out
    e0, e1 = esp.otadata()
    assert (e0[0], e0[2], e1[0]) == (1, espfmt.VALID, espfmt.SEQ_NONE)  # set_actual_ota_seq


def test_unconfirmed_update_rolls_back_on_the_next_reset(esp):
    esp.boot()
    esp.boot("import esp32, machine",
             "p = esp32.Partition('ota_1'); p.set_boot(); print('B', esp32.Partition(esp32.Partition.BOOT).info()[4])",
             "machine.reset()",
             "print('not reached')")
    assert "B ota_1" in esp.out and "not reached" not in esp.out
    assert esp.cause == "hard"
    e1 = esp.otadata()[1]
    assert (e1[0], e1[2]) == (2, espfmt.NEW)
    esp.boot("import fwinfo; print('V', fwinfo.VERSION)", "import machine; machine.reset()")
    assert esp.running() == ("ota_1", "2.0.0", "PENDING_VERIFY")
    assert "V 2.0.0" in esp.out
    esp.boot("import fwinfo; print('V', fwinfo.VERSION)")
    assert "otadata[1] is marked as ABORTED" in esp.out
    assert esp.running() == ("ota_0", "1.0.0", "VALID")
    assert "V 1.0.0" in esp.out
    assert esp.otadata()[1][2] == espfmt.ABORTED


def test_confirmed_update_stays(esp):
    esp.boot()
    esp.boot("import esp32, machine; esp32.Partition('ota_1').set_boot(); machine.reset()")
    esp.boot("import esp32, machine; esp32.Partition.mark_app_valid_cancel_rollback(); machine.reset()")
    assert esp.running() == ("ota_1", "2.0.0", "PENDING_VERIFY")
    for _ in range(2):
        esp.boot("import machine; machine.reset()")
        assert esp.running() == ("ota_1", "2.0.0", "VALID")
    assert esp.otadata()[1][:1] + [esp.otadata()[1][2]] == [2, espfmt.VALID]


def test_corrupt_image_in_the_chosen_slot_boots_the_other(esp):
    esp.boot()
    esp.boot("import esp32, machine; esp32.Partition('ota_1').set_boot(); machine.reset()")
    data = bytearray(esp.path.read_bytes())
    data[ESP.region("ota_1").offset + 0x150] ^= 0x01  # one flipped bit inside the ROMFS
    esp.path.write_bytes(bytes(data))
    esp.boot("import esp32; print('R', esp32.Partition(esp32.Partition.RUNNING).info()[4])")
    assert "OTA app partition slot 1 is not bootable" in esp.out
    assert esp.running()[:2] == ("ota_0", "1.0.0")
    assert "R ota_0" in esp.out


def test_set_boot_refuses_an_invalid_image(esp):
    esp.boot()
    data = bytearray(esp.path.read_bytes())
    data[ESP.region("ota_1").offset + 0x150] ^= 0x01
    esp.path.write_bytes(bytes(data))
    esp.boot("import esp32",
             "try:\n    esp32.Partition('ota_1').set_boot()\nexcept OSError as e:\n    print('E', e.args)\n")
    assert "E (-5379, 'ESP_ERR_OTA_VALIDATE_FAILED')" in esp.out
    assert esp.otadata()[1][0] == espfmt.SEQ_NONE


def test_otadata_torn_mid_write_keeps_the_older_copy(esp):
    esp.boot()
    # set_boot = erase otadata[1] (next op) + write it (the op after): tear the write
    esp.boot("import esp32; f = esp32._vb_flash(); f.schedule_cut(f.ops() + 2, True)",
             "esp32.Partition('ota_1').set_boot()",
             "print('not reached')")
    assert esp.cause == "power" and "not reached" not in esp.out
    e1 = esp.otadata()[1]
    assert e1[0] == 2 and e1[3] == 0xFFFFFFFF  # half an entry: seq landed, crc did not
    esp.boot()
    assert esp.running() == ("ota_0", "1.0.0", "VALID")


def test_glenn20_raw_otadata_read(esp):
    esp.boot()
    esp.boot("import esp32, struct; p = esp32.Partition.find(1, 0)[0]; b = bytearray(4096); "
             "p.readblocks(0, b); t = struct.unpack('<L20sLL', b[:32]); print('O', t[0], t[3])")
    assert "O 1 %d" % espfmt.ota_crc(1) in esp.out


def test_littlefs_file_persists_and_main_py_runs_only_when_asked(esp):
    esp.boot("f = open('main.py', 'w'); f.write('print(\"MAIN RAN\")\\nraise KeyboardInterrupt\\n'); f.close()",
             "import os; print('L', sorted(os.listdir('/')))")
    assert "L ['boot.py', 'main.py', 'rom']" in esp.out
    esp.boot("print('REPL OK')", main=True)
    assert "MAIN RAN" in esp.out and "KeyboardInterrupt" in esp.out and "REPL OK" in esp.out
    esp.boot("print('REPL OK')", main=False)
    assert "MAIN RAN" not in esp.out and "REPL OK" in esp.out


def test_soft_reset_and_system_exit_keep_the_running_slot(esp):
    esp.boot("import esp32, machine; esp32.Partition('ota_1').set_boot(); machine.reset()")
    esp.boot("f = open('main.py', 'w'); f.write('import sys\\nsys.exit()\\n'); f.close()",
             "import machine; machine.soft_reset()")
    assert esp.running() == ("ota_1", "2.0.0", "PENDING_VERIFY")
    assert esp.cause == "soft"
    esp.boot("print('not reached')", main=True)  # main.py: SystemExit is a soft reset
    assert esp.cause == "soft" and "not reached" not in esp.out
    esp.boot("import esp32, fwinfo; print('R', esp32.Partition(esp32.Partition.RUNNING).info()[4], fwinfo.VERSION)")
    assert "boot:" not in esp.out  # a soft reset runs neither ROM nor bootloader
    assert "R ota_1 2.0.0" in esp.out
    assert esp.otadata()[1][2] == espfmt.PENDING_VERIFY


def test_blank_chip_stays_in_rom(tmp_path):
    path = tmp_path / "blank.bin"
    layout.create_flash(ESP, path)
    argv, env = layout.device_command(ESP, path)
    with pytest.raises(subprocess.TimeoutExpired) as e:
        subprocess.run(argv, input="print('REPL')\n", capture_output=True, text=True, env=env,
                       timeout=1.5)
    out = e.value.stdout or b""
    out = out.decode() if isinstance(out, bytes) else out
    assert "invalid header: 0xffffffff" in out
    assert ">>>" not in out


# -- the virtual nRF52840 -------------------------------------------------------------------

def nrf_boot(path, *lines, main=False):
    argv, env = layout.device_command(NRF, path, run_main=main)
    r = subprocess.run(argv, input="".join(line + "\n" for line in lines), capture_output=True,
                       text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_nrf_flash_persists_and_app_bank_romfs_mounts(tmp_path):
    path = tmp_path / "nrf.bin"
    layout.create_flash(NRF, path)
    bank = NRF.region("app_b")
    romfs = build_romfs({"appmod.py": b"NAME = 'bank b'\n"})
    layout.flash_write(path, bank.offset, romfs)
    out = nrf_boot(path, "import os, sys; print('C', os.getcwd(), sys.path)",
                   "f = open('state.txt', 'w'); f.write('kept'); f.close()")
    assert "C /flash ['', '.frozen', '/flash', '/flash/lib']" in out
    out = nrf_boot(path, "print('S', open('state.txt').read())",
                   "import nrf, vfs, sys",
                   "fl = nrf.Flash(start=0x%x, len=0x%x)" % (bank.offset, bank.size),
                   "vfs.mount(vfs.VfsRom(fl.buffer(%d)), '/app'); sys.path.append('/app')" % len(romfs),
                   "import appmod; print('A', appmod.NAME, appmod.__file__)",
                   "print('U', hex(nrf.unused_flash_start()), nrf.unused_flash_length())")
    assert "S kept" in out
    assert "A bank b /app/appmod.mpy" in out
    unused = NRF.region("unused")
    assert "U %s %d" % (hex(unused.offset), unused.size) in out
