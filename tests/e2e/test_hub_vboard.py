"""The hub with real device code: virtual boards (the MicroPython unix port over emulated
flash, deployed like real boards) upgraded through `Hub`, outcomes from the boards' own
Upgrade End and Activation Alert, then the version read back (SR 11.2)."""
from __future__ import annotations

import pytest

from hanota import deploy, flasher, fwbuild, images
from hanota.hub import HubDB
from hanota.hub import registry as reg
from hanota.hub import requests as rq
from hanota.keys import generate_keys, load_private_key
from support.hubfixtures import HubInThread, fast_options, wait_outcome

pytestmark = pytest.mark.timeout(120)

V1, V2 = 0x00010000, 0x00020000
FAST = {"query_interval": 1, "health_timeout": 20, "block_timeout_ms": 800}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    generate_keys(d)
    return d


@pytest.mark.parametrize("kind,role", [("vboard-esp32", "ppmid"),
                                       ("vboard-nrf52840", "hcalcs")])
def test_virtual_board_upgraded_through_the_hub(vboards, keys, tmp_path, kind, role):
    p1 = fwbuild.build(kind, "1.0.0", tmp_path / "p1")
    p2 = fwbuild.build(kind, "2.0.0", tmp_path / "p2")
    db = HubDB.open(tmp_path / "hub.db")
    hub = HubInThread(db.path, udp=("127.0.0.1", 0),
                      options=fast_options(request_timeout=2.0, retry={
                          "answer_timeout": 30, "stall_window": 30, "activation_timeout": 60}))
    try:
        if kind == "vboard-esp32":  # Wi-Fi/UDP to the hub
            b = vboards(kind, hub=hub.hub.udp_address)
            flasher.flash_firmware(b.romloader.url, p1["firmware"], board=kind)
        else:  # a UART to the hub
            b = vboards(kind)
            hub.attach_serial(b.info.link)
        b.console.wait_ready(15)
        res = deploy.deploy(b.console.pty_path, kind, role, [keys / "public.bin"], version=V1,
                            settings=FAST)
        reg.set_suppliers(db, "MPAN-VB", ["Elec Co", "Gas Co"])
        reg.add_device(db, res.eui64, role, res.install_code, "MPAN-VB")
        f = tmp_path / "v2.ota"
        f.write_bytes(images.build_image(p2["app"].read_bytes(), version=V2, role=role,
                                         key=load_private_key(keys / "private.pem")))
        sub = rq.update_firmware(db, res.eui64, f, "Gas Co")
        row = wait_outcome(db, sub.id)
        if role == "hcalcs":  # SR 11.1 then SR 11.3 with the Manufacturer Image Hash
            assert (row["outcome"], row["result"]) == ("distributed", V2)
            assert rq.activate(db, res.eui64, "00" * 32, "Elec Co").outcome is None
            wrong = wait_outcome(db, db.one("SELECT max(id) FROM requests")[0])
            assert wrong["outcome"] == "hash_mismatch"
            row = wait_outcome(db, rq.activate(db, res.eui64, row["image_hash"], "Elec Co").id)
        assert (row["outcome"], row["result"]) == ("activated", V2)
        read = wait_outcome(db, rq.read_version(db, res.eui64, "Elec Co").id)
        assert (read["outcome"], read["result"]) == ("version_read", V2)
        assert reg.device(db, res.eui64)["running_version"] == V2
    finally:
        hub.stop()
        db.close()
