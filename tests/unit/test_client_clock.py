"""The device's OTA client keeps future-dated activations by the clock the hub sets (Time
cluster 0x000A), under CPython with a scripted tick source: an unset clock makes them wait
(asking the hub for the time), never fire early, and never uses the host's wall clock."""
from __future__ import annotations

import pytest

from hanfw import clock, link, zcl
from hanota.simdevice import install_code
from support.clientkit import HUB, client, run_for

IMAGE_HASH = bytes(range(32))
KEY = bytes.fromhex("04" + "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
                    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5")  # P-256 G
MFR = 0x1234
S2C = zcl.FC_CLUSTER | zcl.FC_SERVER_TO_CLIENT | zcl.FC_DISABLE_DEFAULT_RESPONSE


@pytest.fixture
def dev(monkeypatch):
    return client(monkeypatch, {"eui64": "02:68:61:00:00:00:00:01", "role": "hcalcs",
                                "manufacturer": MFR, "hw_version": 1, "keys": [KEY.hex()],
                                "install_code": install_code(1), "query_interval": 3600},
                  IMAGE_HASH)


def time_reads(d):
    return [p for cl, p in d.sent if cl == zcl.CLUSTER_TIME]


def hub_time(d, utc, status=0x01):
    recs = [(zcl.ATTR_TIME, zcl.SUCCESS, zcl.TYPE_UTC, utc),
            (zcl.ATTR_TIME_STATUS, zcl.SUCCESS, zcl.TYPE_BITMAP8, status)]
    d.c._data(zcl.CLUSTER_TIME, zcl.pack_header(0x18, 1, zcl.GLOBAL_READ_ATTRIBUTES_RESPONSE)
              + zcl.pack_read_attributes_response(recs))


def activate_at(d, utc):
    d.c._zcl(zcl.pack_header(S2C | zcl.FC_MANUFACTURER, 2, zcl.CMD_ACTIVATE_IMAGE, MFR)
             + zcl.pack_activate_image(IMAGE_HASH, utc, 5))


def test_activate_image_at_t_waits_for_the_hubs_time_then_fires_at_t(dev):
    activate_at(dev, 800_000_100)
    run_for(dev, 30_000)  # no clock: whatever the host's time.time() says, it waits
    assert dev.resets == [] and dev.c.banks.activated == 0
    reads = time_reads(dev)
    assert reads, "the device did not ask the hub for the time"
    fc, _, _, cmd, off = zcl.parse_header(reads[-1])
    assert cmd == zcl.GLOBAL_READ_ATTRIBUTES and fc & zcl.FC_FRAME_TYPE_MASK == zcl.FC_GLOBAL
    assert set(zcl.parse_read_attributes(reads[-1], off)) == {zcl.ATTR_TIME, zcl.ATTR_TIME_STATUS}
    hub_time(dev, 800_000_090)  # T is 10 s away by the hub's clock
    run_for(dev, 9_800)
    assert dev.resets == []
    run_for(dev, 400)
    assert dev.resets == [1] and dev.c.banks.activated == 1


def test_a_time_from_an_unsynchronised_hub_clock_is_not_taken(dev):
    hub_time(dev, 800_000_000, status=0x00)  # neither Master nor Synchronized
    assert clock.now() is None
    hub_time(dev, 0xFFFFFFFF)  # UTCTime "invalid"
    assert clock.now() is None
    hub_time(dev, 800_000_000, status=0x02)  # Synchronized
    assert clock.now() == 800_000_000


def test_each_new_session_reads_the_time_again(dev):
    dev.c.session = False
    dev.c.nonce = b"n" * 8
    payload = link.pack_hello(b"n" * 8, 0, 0)
    frame = link.pack(dev.c.mac, link.KIND_HELLO_ACK, HUB, dev.c.eui, 7, 0, payload)
    dev.c.on_frame(frame)
    assert dev.c.session and len(time_reads(dev)) == 1


def test_upgrade_end_response_utc_times_without_a_clock_take_the_hubs_current_time(dev):
    dev.c.role.activation = "time"
    dev.c.pending = (MFR, 0x84, 0x00020000)
    dev.c._zcl(zcl.pack_header(S2C, 3, zcl.CMD_UPGRADE_END_RESPONSE)
               + zcl.pack_upgrade_end_response(MFR, 0x84, 0x00020000, 800_000_000, 800_000_005))
    assert clock.now() == 800_000_000
    run_for(dev, 4_800)
    assert dev.resets == []
    run_for(dev, 400)
    assert dev.resets == [1]
