"""The full OTA path on the board: it is deployed (hanota.deploy over its REPL), joins a hub on the
host over its real transport (ESP32: UDP to `--link udp:HOST:PORT`, where the hub listens;
nRF52840: the UART at `--link PORT2`), and takes updates: a tampered file is refused with its
reason, a broken image rolls back, a good one trial-boots and is confirmed. After each, the
board itself is asked what it runs (esp32.Partition / the boot-control record).

The payloads are hanota's firmware for the board (hanota.fwbuild: the device code in the ESP32
vboard's firmware, or an nRF52840 app bank). A real ESP32 takes MicroPython itself as its update:
give --ota-payload (the ESP32_GENERIC-OTA .app-bin) and --wifi/--wifi-key; its broken-image test
skips, since there the device code is not in the image.
"""
from pathlib import Path

import pytest

from hanfw import reasons, zcl
from hanota import deploy, fwbuild, images
from hanota.keys import generate_keys, load_private_key

V1 = 0x00010000
V2 = 0x00020000
SETTINGS = {"query_interval": 1, "health_timeout": 8, "block_timeout_ms": 800}
ROLE = "ppmid"


def _virtual(board) -> bool:
    # the virtual boards' port modules carry _vb_flash (the emulated chip); real ones do not
    mod = "esp32" if board.kind == "esp32" else "nrf"
    return board.call("import %s\nprint('HBT', 'true' if hasattr(%s, '_vb_flash') else 'false')" % (mod, mod))


def _setup(board, opt):
    """(board.toml name, hub kwargs, deploy kwargs, real ESP32 payload or None); skips naming what is missing."""
    link = opt("--link")
    virtual = _virtual(board)
    name = ("vboard-" if virtual else "") + board.spec.chip
    if board.kind != "esp32":
        if not link:
            pytest.skip("the OTA path on an nRF52840 needs --link PORT2: the serial port wired to the "
                        "board's link UART")
        return name, {"serial": link}, {}, None
    if not link or not link.startswith("udp:"):
        pytest.skip("the OTA path on an ESP32 needs --link udp:HOST:PORT: where the hub listens and the board "
                    "sends (a vboard-esp32 relays its UDP link to the --hub it was started with)")
    host, port = link[4:].rsplit(":", 1)
    hub_kw = {"udp": (host, int(port))}
    if virtual:
        return name, hub_kw, {}, None
    missing = [o for o in ("--wifi", "--ota-payload") if not opt(o)]
    if missing:
        pytest.skip("the OTA path on a real ESP32 needs %s (the Wi-Fi network it joins; the MicroPython "
                    "app image to send, ESP32_GENERIC-OTA .app-bin)" % " and ".join(missing))
    settings = {"wifi": {"ssid": opt("--wifi"), "key": opt("--wifi-key")}}
    return name, hub_kw, {"hub": link, "settings": settings}, Path(opt("--ota-payload")).read_bytes()


@pytest.fixture(scope="module")
def rig(board, request, tmp_path_factory):
    """(hub, eui, image builder, work dir, real ESP32 payload or None): the board deployed with v1, joined."""
    from support.hubkit import HubThread
    name, hub_kw, deploy_kw, app = _setup(board, request.config.getoption)
    keys = tmp_path_factory.mktemp("keys")
    generate_keys(keys)
    work = tmp_path_factory.mktemp("ota")
    serial = hub_kw.pop("serial", None)
    # the bank it runs from now (ESP32: the running partition; nRF52840: deploy installs bank 0)
    start = board.call("import esp32\nprint('HBT', '\"%s\"' % esp32.Partition(esp32.Partition.RUNNING)"
                       ".info()[4])") if board.kind == "esp32" else 0
    hub = HubThread(block_cap=64, **hub_kw)
    board.release()
    try:
        if serial:
            hub.attach_serial(serial)
        settings = dict(SETTINGS, **deploy_kw.pop("settings", {}))
        res = deploy.deploy(board.port, name, ROLE, [keys / "public.bin"], version=V1, settings=settings,
                            **deploy_kw)
        eui = hub.add_device(res.eui64, res.install_code)
        hub.wait_event("hello", eui, timeout=90)
    except BaseException:
        hub.stop()
        raise

    def ota(version, extra=None, tag="good"):
        # hanota's firmware for the board (the device code inside), or the real ESP32 app as given
        data = app if app is not None else fwbuild.build(name, "2.0.0-" + tag, work / tag,
                                                         extra=extra)["app"].read_bytes()
        key = load_private_key(keys / "private.pem")
        return images.build_image(data, key=key, version=version, role=ROLE)

    yield hub, eui, ota, work, app, start
    hub.stop()
    board.reacquire()


def serve(hub, work, data, name):
    p = work / (name + ".ota")
    p.write_bytes(data)
    hub.policy.images.clear()
    hub.add_image(p)


def running(board, on_board):
    """What the board says it runs: its bank and, on app banks, the boot-control record."""
    board.need("hanfw.bootctl", "bchk", "bchk_flash")
    if board.kind == "esp32":
        return on_board("import esp32\n_r = esp32.Partition(esp32.Partition.RUNNING).info()[4]\n"
                        "bchk.out({'bank': _r})")
    ctl = board.spec.region("bootctl")
    return on_board("import bchk_flash\n_r = bchk_flash.bootctl.BootControl(bchk_flash.region(%d, %d)).load()\n"
                    "bchk.out({'bank': _r.active, 'record': bchk_flash.rec_facts(_r)})" % (ctl.offset, ctl.size))


def back_to_the_app(board, hub, eui):
    """Reset the board into its app (the raw REPL stopped it) and wait for it to say hello."""
    n = len(hub.events("hello", eui))
    board.release(reset=True)
    hub.wait_event("hello", eui, timeout=60, count=n + 1)


def test_tampered_file_is_refused_with_its_reason(board, on_board, rig):
    hub, eui, ota, work, _, start = rig
    data = bytearray(ota(V2))
    data[len(data) // 2] ^= 0x01  # inside the image element: the signature no longer covers it
    before = len(hub.events("upgrade_end", eui))
    serve(hub, work, bytes(data), "tampered")
    ends = hub.wait_event("upgrade_end", eui, timeout=180, count=before + 1)
    assert ends[-1][3] == zcl.INVALID_IMAGE
    recs = hub.call(hub.server.read_attributes(eui, [reasons.ATTR_LAST_REJECTION, zcl.ATTR_CURRENT_FILE_VERSION]))
    assert reasons.name(recs[0][3]) == "bad-signature"
    assert recs[1][3] == V1
    hub.policy.images.clear()
    try:
        assert running(board, on_board)["bank"] == start
    finally:
        back_to_the_app(board, hub, eui)


def test_broken_image_rolls_back(board, on_board, rig):
    hub, eui, ota, work, app, start = rig
    if app is not None:
        pytest.skip("a broken image that boots and fails its health check needs firmware that carries the "
                    "device code; on a real ESP32 the code is in /lib and the update is MicroPython itself")
    data = ota(V2, extra={"hanfw/fault.py": b"HEALTH = 'broken on purpose'\n"}, tag="broken")
    serve(hub, work, data, "broken")
    alert = hub.wait_event("alert", eui, timeout=240)[-1]
    assert alert[2:6] == (V1, V2, True, zcl.ALERT_HEALTH_CHECK_FAILED)
    hub.policy.images.clear()
    try:
        got = running(board, on_board)
    finally:
        back_to_the_app(board, hub, eui)
    assert got["bank"] == start
    if "record" in got:
        assert got["record"]["state"] == [3, 4]  # bank 0 CONFIRMED, the broken bank REJECTED


def test_good_image_trial_boots_and_is_confirmed(board, on_board, rig):
    hub, eui, ota, work, _, start = rig
    n = len(hub.events("alert", eui))
    serve(hub, work, ota(V2), "good")
    alert = hub.wait_event("alert", eui, timeout=240, count=n + 1)[-1]
    assert alert[2:6] == (V2, V1, False, zcl.ALERT_NONE)
    recs = hub.call(hub.server.read_attributes(eui, [zcl.ATTR_CURRENT_FILE_VERSION]))
    assert recs[0][3] == V2
    hub.policy.images.clear()
    got = running(board, on_board)
    assert got["bank"] != start
    if "record" in got:
        assert got["record"]["state"][1] == 3 and got["record"]["version"][1] == V2
