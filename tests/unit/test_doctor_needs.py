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
