# hanota board support: the virtual nRF52840 (app banks: two ROMFS regions with
# hanfw.bootctl's record; link over machine.UART, SLIP-framed).
import json

FS_ROOT = "/flash/"
BANK_KIND = "app"


def _bootcfg():
    with open(FS_ROOT + "bootcfg.json") as f:
        return json.loads(f.read())


def banks(state):
    import nrf
    from hanfw.banks import AppBanks
    from hanfw.bootctl import BootControl
    bc = _bootcfg()
    devs = [(nrf.Flash(start=a, len=n), n // 4096) for a, n in bc["banks"]]
    ctl = BootControl(nrf.Flash(start=bc["bootctl"][0], len=bc["bootctl"][1]))
    return AppBanks(devs, ctl, state)


def link(cfg):
    import machine
    from hanfw.transport import StreamTransport
    return StreamTransport(machine.UART(1, 115200))


def reset():
    import machine
    machine.reset()
