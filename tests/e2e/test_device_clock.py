"""The device clock end to end: a board with no RTC set at boot takes UTC from the hub (the
Zigbee Time cluster) and a future-dated activation happens at the hub's time, whatever the
board's own wall clock says. Boards are started 3 hours off (`clock_offset`, as
`hanota vboard start --clock-offset`)."""
import calendar
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hanfw import zcl
from hanota import flasher
from hanota.server.common import ZIGBEE_EPOCH, zigbee_time
from test_ota_device import hub  # noqa: F401 (fixture)
from test_ota_upgrade import V1, V2, bring_up, keys, ota_file, payloads, read_version  # noqa: F401

THREE_HOURS = 3 * 3600
MPREMOTE = str(Path(sys.executable).parent / "mpremote")
HANOTA = str(Path(sys.executable).parent / "hanota")


def offset_boards(vboards, offset):
    def make(kind, **kw):
        return vboards(kind, clock_offset=offset, **kw)
    return make


def activation_moment(b, since):
    """Host time at which the board reset itself (the activation), after `since`."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for t, kind, detail in list(b.events):
            if t > since and kind == "exited" and detail == "hard":
                return t
        time.sleep(0.05)
    raise AssertionError("the board did not reset to activate; events: %s" % b.events[-10:])


def test_vboard_start_clock_offset_puts_the_boards_wall_clock_off(tmp_path, payloads, request):
    if request.config.getoption("--board"):
        pytest.skip("this test runs on virtual boards only (--board selects a real board)")
    env = dict(os.environ, HANOTA_HOME=str(tmp_path / "home"))
    r = subprocess.run([HANOTA, "vboard", "start", "--name", "clk", "--clock-offset", str(THREE_HOURS),
                        "--json"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        info = json.loads(r.stdout)
        flasher.flash_firmware(info["rom_loader"], payloads["vboard-esp32", 1]["firmware"],
                               board="vboard-esp32")
        for _ in range(5):  # the board reboots into the firmware first
            time.sleep(1)
            r = subprocess.run([MPREMOTE, "connect", info["console"], "exec",
                                "import time; print(tuple(time.gmtime()[:6]))"],
                               capture_output=True, text=True, timeout=30)
            if r.returncode == 0:
                break
        assert r.returncode == 0, r.stdout + r.stderr
        fields = tuple(int(x) for x in r.stdout.strip().strip("()").split(","))
        board = calendar.timegm(fields + (0, 0, 0))
        assert abs(board - (time.time() + THREE_HOURS)) < 5, (r.stdout, time.time())
    finally:
        subprocess.run([HANOTA, "vboard", "stop", "--all"], env=env, capture_output=True, timeout=60)


@pytest.mark.parametrize("kind,offset", [("vboard-esp32", -THREE_HOURS), ("vboard-esp32", THREE_HOURS),
                                         ("vboard-nrf52840", THREE_HOURS)],
                         ids=["esp32-minus-3h", "esp32-plus-3h", "nrf52840-no-time-time"])
def test_activate_image_at_t_happens_at_the_hubs_time(vboards, hub, keys, payloads, tmp_path,  # noqa: F811
                                                       kind, offset):
    b, eui = bring_up(offset_boards(vboards, offset), hub, keys, payloads, kind, "hcalcs")
    hub.wait_event("hello", eui, timeout=30)
    hub.policy.force = False
    img = hub.add_image(ota_file(tmp_path, keys, payloads, kind, "hcalcs"))
    assert hub.wait_event("upgrade_end", eui, timeout=90)[0][3] == zcl.SUCCESS
    assert hub.server.stats["time-reads"] >= 1  # the device asked the hub for the time
    at = zigbee_time(time.time()) + 8  # UTC since 2000, by the hub's clock
    sent = time.time()
    code, _, _ = hub.call(hub.server.activate(eui, img.image_hash, at, 11))
    assert code == zcl.ACTIVATE_SUCCESS
    moment = activation_moment(b, sent)
    # not before T, and within a couple of seconds after it (UTCTime is whole seconds)
    assert -0.5 <= moment - (ZIGBEE_EPOCH + at) <= 2.5, (moment - (ZIGBEE_EPOCH + at), offset)
    alert = hub.wait_event("alert", eui, timeout=60)[0]
    assert alert[2:5] == (V2, V1, False)


def test_upgrade_end_response_utc_time_happens_at_the_hubs_time(vboards, hub, keys, payloads,  # noqa: F811
                                                                 tmp_path):
    kind = "vboard-esp32"
    b, eui = bring_up(offset_boards(vboards, -THREE_HOURS), hub, keys, payloads, kind, "ppmid")
    hub.wait_event("hello", eui, timeout=30)
    planned = []

    def upgrade_time(eui_, image):  # (current, upgrade) UTC: activate 8 s after Upgrade End
        now = zigbee_time(time.time())
        planned.append(now + 8)
        return (now, now + 8)
    hub.policy.upgrade_time = upgrade_time
    hub.add_image(ota_file(tmp_path, keys, payloads, kind, "ppmid"))
    end = hub.wait_event("upgrade_end", eui, timeout=90)[0]
    assert end[3] == zcl.SUCCESS
    moment = activation_moment(b, time.time() - 1)
    assert planned, "the hub never gave an upgrade time"
    assert -0.5 <= moment - (ZIGBEE_EPOCH + planned[-1]) <= 2.5, moment - (ZIGBEE_EPOCH + planned[-1])
    alert = hub.wait_event("alert", eui, timeout=60)[0]
    assert alert[2:5] == (V2, V1, False)
    assert read_version(hub, eui) == V2
