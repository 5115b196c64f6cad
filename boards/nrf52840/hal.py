# hanota board support: nRF52840 (app banks: two ROMFS regions in raw flash with
# hanfw.bootctl's record, chosen by boot.py; link to the hub over a UART, SLIP-framed).
import json

FS_ROOT = "/flash/"
BANK_KIND = "app"
UART_ID = 0
UART_BAUD = 115200


def _bootcfg():
    with open(FS_ROOT + "bootcfg.json") as f:
        return json.loads(f.read())


def banks(state):
    import nrf
    from hanfw.banks import AppBanks
    from hanfw.bootctl import BootControl
    bc = _bootcfg()
    devs = [(nrf.Flash(start=a, len=n), n // 4096) for a, n in bc["banks"]]
    return AppBanks(devs, BootControl(nrf.Flash(start=bc["bootctl"][0], len=bc["bootctl"][1])), state)


def link(cfg):
    import machine
    from hanfw.transport import StreamTransport
    return StreamTransport(machine.UART(UART_ID, UART_BAUD, timeout=0))


def reset():
    import machine
    machine.reset()
