"""Full OTA upgrades on virtual boards: old version -> new version running and confirmed."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hanfw import zcl
from hanota import deploy, flasher, fwbuild, images
from hanota.keys import generate_keys, load_private_key
from support.hubkit import HubThread

MPREMOTE = str(Path(sys.executable).with_name("mpremote"))
V1 = 0x00010000
V2 = 0x00020000
FAST = {"query_interval": 1, "health_timeout": 20, "block_timeout_ms": 800}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    generate_keys(d)
    return d


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    """Firmware and app payloads of the current device code, v1 and v2."""
    d = tmp_path_factory.mktemp("payloads")
    out = {}
    for kind in ("vboard-esp32", "vboard-nrf52840"):
        out[kind, 1] = fwbuild.build(kind, "1.0.0", d / (kind + "-1"))
        out[kind, 2] = fwbuild.build(kind, "2.0.0", d / (kind + "-2"))
    return out


@pytest.fixture
def hub():
    h = HubThread(block_cap=64)
    yield h
    h.stop()


def bring_up(vboards, hub, keys, payloads, kind, role, settings=None):
    """A board of `kind` running v1 of `role`, deployed and registered with the hub."""
    b = vboards(kind, hub=hub.udp) if kind == "vboard-esp32" else vboards(kind)
    if kind == "vboard-esp32":
        flasher.flash_firmware(b.romloader.url, payloads[kind, 1]["firmware"], board=kind)
    else:
        hub.attach_serial(b.info.link)
    b.console.wait_ready(15)
    res = deploy.deploy(b.console.pty_path, kind, role, [keys / "public.bin"], version=V1,
                        settings=dict(FAST, **(settings or {})))
    eui = hub.add_device(res.eui64, res.install_code)
    return b, eui


def ota_file(tmp_path, keys, payloads, kind, role, version=V2, **kw):
    key = load_private_key(keys / "private.pem")
    data = payloads[kind, 2]["app"].read_bytes()
    p = tmp_path / ("%s-%08x.ota" % (role, version))
    p.write_bytes(images.build_image(data, key=key, version=version, role=role, **kw))
    return p


def read_version(hub, eui):
    recs = hub.call(hub.server.read_attributes(eui, [zcl.ATTR_CURRENT_FILE_VERSION]))
    return recs[0][3]


@pytest.mark.parametrize("kind,role", [("vboard-esp32", "ppmid"), ("vboard-nrf52840", "althan"),
                                       ("vboard-esp32", "althan"), ("vboard-nrf52840", "ppmid")])
def test_full_upgrade_to_confirmed(vboards, hub, keys, payloads, tmp_path, kind, role):
    b, eui = bring_up(vboards, hub, keys, payloads, kind, role)
    hub.wait_event("hello", eui, timeout=30)
    hub.add_image(ota_file(tmp_path, keys, payloads, kind, role))
    alert = hub.wait_event("alert", eui, timeout=120)[0]
    assert alert[2:6] == (V2, V1, False, zcl.ALERT_NONE)
    assert read_version(hub, eui) == V2
    ends = hub.events("upgrade_end", eui)
    assert ends and ends[-1][3] == zcl.SUCCESS
