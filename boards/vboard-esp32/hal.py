# hanota board support: the virtual ESP32 (firmware banks through esp32.Partition,
# link over UDP through the board's relay, like Wi-Fi).
import os

FS_ROOT = "/"
BANK_KIND = "firmware"


def banks(state):
    import esp32
    from hanfw.banks import FirmwareBanks
    return FirmwareBanks(esp32, state)


def link(cfg):
    from hanfw.transport import open_spec
    return open_spec(cfg.hub or os.getenv("HANOTA_VB_LINK"))


def reset():
    import machine
    machine.reset()
