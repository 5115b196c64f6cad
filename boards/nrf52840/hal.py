# hanota board support: nRF52840 (app banks: the two halves of the stock firmware's ROMFS
# region, with hanfw.bootctl's record in the firmware's free tail, chosen by boot.py; link to
# the hub over a UART, SLIP-framed). Only what stock MicroPython offers: nrf.Flash(start=, len=),
# nrf.unused_flash_start/length, vfs.VfsRom (docs/ports.md).
import json

FS_ROOT = "/flash/"
BANK_KIND = "app"
UART_ID = 0
UART_BAUD = 115200


def _bootcfg():
    with open(FS_ROOT + "bootcfg.json") as f:
        return json.loads(f.read())


# The boot-control record must sit in the flash this firmware leaves free after its image:
# a firmware too big for it (or a board.toml for another build) would have the record
# overwrite code. Stock firmware has no bounds check in nrf.Flash, so check here.
def _check_free(nrf, start, n):
    lo = nrf.unused_flash_start()
    if start < lo or start + n > lo + nrf.unused_flash_length():
        raise OSError(28, "boot-control 0x%x+0x%x is not in the firmware's free flash 0x%x+0x%x"
                      % (start, n, lo, nrf.unused_flash_length()))


def banks(state):
    import nrf
    from hanfw.banks import AppBanks
    from hanfw.bootctl import BootControl
    bc = _bootcfg()
    _check_free(nrf, bc["bootctl"][0], bc["bootctl"][1])
    devs = [(nrf.Flash(start=a, len=n), n // 4096) for a, n in bc["banks"]]
    return AppBanks(devs, BootControl(nrf.Flash(start=bc["bootctl"][0], len=bc["bootctl"][1])), state)


def link(cfg):
    import machine
    from hanfw.transport import StreamTransport
    return StreamTransport(machine.UART(UART_ID, UART_BAUD, timeout=0))


def reset():
    import machine
    machine.reset()
