"""Device behaviour around the OTA path: notify vs polling, pages, lost blocks, WAIT_FOR_DATA,
roles and their state, configuration errors. Real boards (virtual), real hub server."""
import re
import struct
import subprocess
import time

import pytest

from hanfw import link as hlink
from hanfw import zcl
from hanota import deploy, flasher, fwbuild, images
from support.consolelog import ConsoleLog
from support.hubkit import HubThread
from test_ota_upgrade import MPREMOTE, V1, V2, bring_up, keys, ota_file, payloads, read_version  # noqa: F401


@pytest.fixture
def hub():
    h = HubThread(block_cap=64)
    yield h
    h.stop()


def test_image_notify_starts_the_download_without_waiting_for_the_poll(vboards, hub, keys, payloads,
                                                                        tmp_path):
    b, eui = bring_up(vboards, hub, keys, payloads, "vboard-esp32", "ppmid",
                      settings={"query_interval": 3600})
    hub.wait_event("hello", eui, timeout=30)
    hub.add_image(ota_file(tmp_path, keys, payloads, "vboard-esp32", "ppmid"))
    time.sleep(3)
    assert not hub.events("upgrade_end", eui)  # nothing happens on its own for an hour
    assert hub.call(hub.server.notify(eui)) is True
    assert hub.wait_event("alert", eui, timeout=60)[0][2] == V2


@pytest.mark.parametrize("link_frame", [None, 320], ids=["bundled", "one-block-per-frame"])
def test_page_requests(vboards, hub, keys, payloads, tmp_path, link_frame):
    settings = {"page_size": 1024, "max_data": 64}
    if link_frame is not None:
        settings["link_frame"] = link_frame  # 320: the device asks for no bundles
    b, eui = bring_up(vboards, hub, keys, payloads, "vboard-nrf52840", "ppmid",
                      settings=settings)
    hub.wait_event("hello", eui, timeout=30)
    hub.add_image(ota_file(tmp_path, keys, payloads, "vboard-nrf52840", "ppmid"))
    assert hub.wait_event("alert", eui, timeout=90)[0][2:5] == (V2, V1, False)
    st = hub.server.stats
    assert st["pages"] > 0
    if link_frame is None:
        # a 1 KiB page of 64-byte blocks fits one bundle (16 x 83 bytes + 31)
        assert st["bundles"] >= st["pages"] - 2 and st["blocks"] > 10 * st["bundles"]
        assert hub.server.devices[eui].rx_frame == hlink.RX_FRAME
    else:
        assert st["bundles"] == 0 and hub.server.devices[eui].rx_frame == hlink.MAX_FRAME


def test_lost_bundles_are_asked_for_again(vboards, hub, keys, payloads, tmp_path):
    def lossy(kind, **kw):
        return vboards(kind, drop_every=7, **kw)
    b, eui = bring_up(lossy, hub, keys, payloads, "vboard-esp32", "ppmid",
                      settings={"page_size": 2048, "max_data": 64, "block_timeout_ms": 300})
    log = ConsoleLog(b.console.pty_path)
    try:
        hub.wait_event("hello", eui, timeout=60)
        hub.add_image(ota_file(tmp_path, keys, payloads, "vboard-esp32", "ppmid"))
        assert hub.wait_event("alert", eui, timeout=180)[0][2] == V2
        assert b.link.lost > 3 and hub.server.stats["bundles"] > 0
        assert re.findall(r"from offset (\d+)", log.text) == ["0"]  # never restarted from 0
    finally:
        log.close()


def test_lost_blocks_are_retried_at_the_same_offset(vboards, hub, keys, payloads, tmp_path):
    def lossy(kind, **kw):
        return vboards(kind, drop_every=9, **kw)
    b, eui = bring_up(lossy, hub, keys, payloads, "vboard-esp32", "ppmid",
                      settings={"block_timeout_ms": 300})
    log = ConsoleLog(b.console.pty_path)
    try:
        hub.wait_event("hello", eui, timeout=60)
        hub.add_image(ota_file(tmp_path, keys, payloads, "vboard-esp32", "ppmid"))
        assert hub.wait_event("alert", eui, timeout=180)[0][2] == V2
        assert b.link.lost > 10
        assert re.findall(r"from offset (\d+)", log.text) == ["0"]  # never restarted from 0
        t = hub.server.transfers[eui]
        assert t.bytes_served < t.size * 1.3
    finally:
        log.close()


def test_lost_frames_cost_a_request_each_on_a_lossy_zigbee_like_link(vboards, hub, keys, payloads,
                                                                     tmp_path):
    # issue 15 item 5: 1 % of the link's frames lost at random (seeded), either way, on the
    # Zigbee-like link (250 kbit/s, 10 ms a frame, one 50-byte block per frame, 16 KiB pages):
    # the update completes, and the device asks again about once per frame lost (the lost
    # block alone, not the rest of its page)
    def lossy(kind, **kw):
        return vboards(kind, drop_rate=0.01, drop_seed=15, link_rate=31250, link_latency=0.010,
                       **kw)
    b, eui = bring_up(lossy, hub, keys, payloads, "vboard-esp32", "ppmid",
                      settings={"page_size": 16384, "max_data": 50, "link_frame": 320})
    log = ConsoleLog(b.console.pty_path)
    try:
        hub.wait_event("hello", eui, timeout=60)
        st = hub.server.stats
        lost0, pages0, blocks0 = b.link.lost, st["pages"], st["block-requests"]
        hub.add_image(ota_file(tmp_path, keys, payloads, "vboard-esp32", "ppmid"))
        hub.call(hub.server.notify(eui))
        assert hub.wait_event("upgrade_end", eui, timeout=240)
        assert hub.wait_event("alert", eui, timeout=120)[0][2] == V2
        t = hub.server.transfers[eui]
        # what the link lost: its seeded drops, and any datagram a full socket buffer lost
        # on this loaded machine (the relay's buffers are large, but Linux counts what a
        # burst still overflows, and the device had to ask for those blocks too)
        overflow = b.link.kernel_drops()
        lost = b.link.lost - lost0 + sum((overflow or {}).values())
        pages, asked = st["pages"] - pages0, st["block-requests"] - blocks0
        # the silences the device waited out, by its own count: besides a lost request or
        # the lost tail of a page, a stall of this shared machine (the link runs in real
        # time) can outlast the wait; the device then asks the rest of the page again and
        # what of it was still on the link comes twice (up to a page)
        m = re.search(r"downloaded and verified \(since boot: (\d+) silences", log.text)
        assert m, "the device's log names what the download cost"
        silences = int(m.group(1))
        seen = dict(lost=lost, overflow=overflow, pages=pages, asked=asked, silences=silences,
                    resent=t.bytes_served - t.size)
        assert lost >= 5, "1 %% of some %d frames: the seed must lose some" % (t.size // 50)
        # the requests the download needed without loss: a page per 16 KiB, a few blocks
        # for the header; whatever is above that was asked again
        again = pages + asked - (-(-t.size // 16384) + 6)
        assert again <= lost + 3 + silences, seen
        assert again >= lost // 3, seen  # frames lost elsewhere too
        # only about the lost blocks went out twice (not the rest of their pages)
        assert t.bytes_served - t.size <= (lost + 3) * 64 + silences * 16384, seen
        assert silences <= lost + 3, seen
        assert re.findall(r"from offset (\d+)", log.text) == ["0"]  # never restarted from 0
    finally:
        log.close()


def test_wait_for_data_is_honoured(vboards, hub, keys, payloads, tmp_path):
    b, eui = bring_up(vboards, hub, keys, payloads, "vboard-esp32", "ppmid")
    hub.wait_event("hello", eui, timeout=30)
    hub.server.throttle(eui, 2)
    hub.add_image(ota_file(tmp_path, keys, payloads, "vboard-esp32", "ppmid"))
    assert hub.wait_event("alert", eui, timeout=90)[0][2] == V2
    assert hub.server.stats["throttled"] >= 1


def test_configuration_missing_or_malformed_is_refused_with_a_message(vboards, hub, keys, payloads):
    b, eui = bring_up(vboards, hub, keys, payloads, "vboard-esp32", "ppmid")
    hub.wait_event("hello", eui, timeout=30)
    for content, needle in ((None, "no device configuration"), ('{"role": "ppmid"}', "lacks"),
                            ('{"eui64": "x", ', "not valid JSON")):
        code = "import os\nos.remove('/hanota.json')\n" if content is None else \
            "with open('/hanota.json', 'w') as f:\n    f.write(%r)\n" % content
        r = subprocess.run([MPREMOTE, "connect", b.console.pty_path, "exec", code], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        log = ConsoleLog(b.console.pty_path)
        try:
            b.power_cycle()
            text = log.wait_for(needle, timeout=20)
            assert "not starting the OTA client" in text.split(needle)[0].rsplit("\n", 1)[-1]
        finally:
            log.close()


def test_althan_refuses_the_ordinary_join_service(vboards, hub, keys, payloads):
    b = vboards("vboard-esp32", hub=hub.udp)
    flasher.flash_firmware(b.romloader.url, payloads["vboard-esp32", 1]["firmware"], board="vboard-esp32")
    b.console.wait_ready(15)
    res = deploy.deploy(b.console.pty_path, "vboard-esp32", "althan", [keys / "public.bin"], version=V1,
                        settings={"join_service": "ordinary"})
    eui = hub.add_device(res.eui64, res.install_code)
    log = ConsoleLog(b.console.pty_path)  # the console keeps what the board printed meanwhile
    try:
        text = log.wait_for("refuses the ordinary join service", timeout=30)
        assert "code 4" in text
        joined = hub.wait_event("joined", eui, timeout=30)  # through the point-to-point service instead
        assert joined[0][2] == "althan"
    finally:
        log.close()


def test_ppmid_balance_hcalcs_load_survive_an_update(vboards, hub, keys, payloads, tmp_path):
    b, eui = bring_up(vboards, hub, keys, payloads, "vboard-esp32", "hcalcs")
    hub.wait_event("hello", eui, timeout=30)
    log = ConsoleLog(b.console.pty_path)
    try:
        hub.call(hub.server.send_app(eui, 0xFC00, bytes([0x01, 1])))
        log.wait_for("load on", timeout=20)
        p = ota_file(tmp_path, keys, payloads, "vboard-esp32", "hcalcs")
        img = hub.add_image(p)
        hub.wait_event("upgrade_end", eui, timeout=60)
        assert hub.call(hub.server.activate(eui, img.image_hash, 0, 1))[0] == zcl.ACTIVATE_SUCCESS
        assert hub.wait_event("alert", eui, timeout=60)[0][2] == V2
        assert log.text.count("load on") >= 2  # applied again by the new image, from kept state
    finally:
        log.close()


def test_page_download_resumes_after_a_reset(vboards, hub, keys, payloads, tmp_path):
    b, eui = bring_up(vboards, hub, keys, payloads, "vboard-esp32", "ppmid",
                      settings={"page_size": 2048, "max_data": 64})
    hub.wait_event("hello", eui, timeout=30)
    path = ota_file(tmp_path, keys, payloads, "vboard-esp32", "ppmid")
    hub.add_image(path)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        t = hub.server.transfers.get(eui)
        if t is not None and t.offset >= path.stat().st_size // 2:
            break
        time.sleep(0.002)
    b.power_cycle()
    assert hub.wait_event("alert", eui, timeout=90)[0][2:5] == (V2, V1, False)
