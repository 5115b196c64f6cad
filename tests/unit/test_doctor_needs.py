"""What `hanota board doctor` checks a board for, read from the device code itself."""
from hanota import boardspec, doctor


def test_required_modules_follow_the_code_and_the_board():
    nrf = doctor.required_modules(boardspec.load_board("nrf52840"))
    esp = doctor.required_modules(boardspec.load_board("esp32"))
    assert "boards/nrf52840/hal.py" in nrf["nrf"] and "boot.py" in nrf["nrf"]
    # only the ESP32's hal and the UDP transport import these; the nRF port has none of them
    assert not {"esp32", "network", "socket"} & set(nrf)
    assert "socket" in esp
    assert "nrf" not in esp and "boards/esp32/hal.py" in esp["network"]
    for need in (nrf, esp):
        # fallbacks behind `except ImportError` are not needs; the code's own modules are not modules
        assert not {"cryptolib", "micropython", "uhashlib", "hanfw", "hal", "bootctl"} & set(need)
        assert {"hashlib", "struct", "binascii", "json", "machine", "os"} <= set(need)


def test_nrf_flash_reprs_of_the_real_port_and_the_virtual_board():
    assert doctor._flash_repr("Flash(start=0x000b4000, len=262144)") == (0xB4000, 0x40000)
    assert doctor._flash_repr("Flash(start=0xb4000, len=262144)") == (0xB4000, 0x40000)
    assert doctor._flash_repr("<memoryview>") is None


def test_the_real_board_is_guessed_from_the_port():
    assert doctor.guess_board("esp32") == "esp32"
    assert doctor.guess_board("nrf") == "nrf52840"
    assert doctor.guess_board("linux") is None


def test_a_module_is_checked_against_the_port_facts_of_the_board():
    from hanota.vboard.portspec import port_facts
    port = port_facts(boardspec.load_board("nrf52840"))
    rep = doctor.Report("/dev/ttyACM0", "nrf52840")
    need = {"nrf": ["boards/nrf52840/hal.py"], "socket": ["hanfw/x.py"], "zzz": ["hanfw/y.py"],
            "json": ["hanfw/z.py"]}
    have = {"nrf": False, "socket": True, "zzz": False, "json": True}
    doctor.check_modules(rep, need, have, port, "nrf52840")
    by = {f.check: f for f in rep.findings}
    assert set(by) == {"module nrf", "module socket", "module zzz"} and not any(f.ok for f in rep.findings)
    assert "stock MicroPython for nrf52840 has it" in by["module nrf"].detail  # another firmware build
    # the board at hand has it, the real port does not: a real board could not run the code
    assert "present here, but the nrf52840 port has none" in by["module socket"].detail
    assert "does not list it" in by["module zzz"].detail


def test_host_only_device_modules_are_not_needs():
    # hanfw/hostinflate.py (CPython's zlib behind the device's inflate) never runs on a board
    for name in ("esp32", "nrf52840"):
        assert "zlib" not in doctor.required_modules(boardspec.load_board(name))


def test_host_only_stand_ins_are_never_built_for_a_board(tmp_path):
    # what fwbuild, deploy and the on-board tier put on a board: no hostinflate (it imports
    # zlib, which no MicroPython port has), but the decoder that falls back to it
    from hanota import devcode
    built = {p.relative_to(tmp_path).as_posix() for p in devcode.compile_tree(tmp_path)}
    assert "hanfw/delta.mpy" in built
    assert "hanfw/hostinflate.mpy" not in built
