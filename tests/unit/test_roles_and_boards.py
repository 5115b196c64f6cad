"""Roles (application behaviour and state), device configuration, board definitions."""
import json
import socket
import struct

import pytest

from hanfw import config, link
from hanfw.roles import load
from hanota import boardspec, devcode
from support.otabuild import new_key, raw_pub


def cfg_dict(role="ppmid", **kw):
    d = {"eui64": "02:68:61:00:00:00:00:01", "role": role, "manufacturer": 0x1234, "hw_version": 0x0100,
         "keys": [raw_pub(new_key()).hex()], "install_code": "83FED3407A939723A5C639B26916D505C3B5"}
    d.update(kw)
    return d


def test_config_converts_and_checks():
    c = config.from_dict(cfg_dict())
    assert c.eui64 == bytes.fromhex("0100000000616802") and c.image_type == 0x0084
    assert c.family is None and c.link_frame == 0  # any board family; the transport's frames
    assert config.from_dict(cfg_dict(family="esp32s3", link_frame=320)).family == "esp32s3"
    for bad, reason in ((dict(role="ihd"), "bad-role"), (dict(keys=[]), "no-keys"),
                        (dict(keys=["04" + "00" * 64]), "bad-key"), (dict(eui64="0102"), "bad-eui64"),
                        (dict(manufacturer=70000), "bad-manufacturer"),
                        (dict(family="esp8266"), "bad-family"), (dict(family="any"), "bad-family"),
                        (dict(link_frame=-1), "bad-link_frame")):
        with pytest.raises(config.ConfigError) as ei:
            config.from_dict(cfg_dict(**bad))
        assert ei.value.reason == reason
    d = cfg_dict()
    del d["install_code"]
    with pytest.raises(config.ConfigError) as ei:
        config.from_dict(d)
    assert "install_code" in str(ei.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(config.ConfigError) as ei:
        config.load(str(tmp_path / "none.json"))
    assert ei.value.reason == "missing" and "deploy the board" in str(ei.value)
    p = tmp_path / "bad.json"
    p.write_text("{")
    with pytest.raises(config.ConfigError) as ei:
        config.load(str(p))
    assert ei.value.reason == "malformed"


class FakeClient:
    def __init__(self):
        self.sent = []

    def send_app(self, cluster, payload):
        self.sent.append((cluster, bytes(payload)))


def test_ppmid_keeps_and_shows_the_balance(tmp_path, capsys):
    c = config.from_dict(cfg_dict())
    r = load("ppmid")(c, str(tmp_path / "role.json"))
    r.on_frame(0xFC00, bytes([0]) + struct.pack("<iB", -250, 1), FakeClient())
    assert "balance -2.50 (emergency credit)" in capsys.readouterr().out
    again = load("ppmid")(c, str(tmp_path / "role.json"))
    assert again.data == {"balance": -250, "emergency_credit": True}
    assert again.self_test() is None
    r.on_frame(0xFC00, b"\x00\x01", FakeClient())  # malformed: ignored, state kept
    assert load("ppmid")(c, str(tmp_path / "role.json")).data["balance"] == -250


def test_hcalcs_load_state_persists(tmp_path, capsys):
    c = config.from_dict(cfg_dict("hcalcs"))
    r = load("hcalcs")(c, str(tmp_path / "role.json"))
    assert r.activation == "command"
    r.on_frame(0xFC00, bytes([1, 1]), FakeClient())
    assert load("hcalcs")(c, str(tmp_path / "role.json")).data["load_on"] is True
    assert "load on" in capsys.readouterr().out


def test_health_needs_loop_link_and_self_test(tmp_path):
    r = load("ppmid")(config.from_dict(cfg_dict()), str(tmp_path / "role.json"))
    assert r.health() == "application loop not running"
    for _ in range(3):
        r.tick()
    assert r.health() == "no answer from the hub"
    r.on_link_up()
    assert r.health() is None
    r.fault = "planted"
    assert r.health() == "planted"


def test_althan_relays_between_p2p_and_han(tmp_path):
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    c = config.from_dict(cfg_dict("althan", p2p="udp:127.0.0.1:%d" % peer.getsockname()[1]))
    r = load("althan")(c, str(tmp_path / "role.json"))
    assert r.join_service == link.SERVICE_ALT_HAN_P2P
    assert r.check_join_service(link.SERVICE_ORDINARY) == link.JOIN_SERVICE_REFUSED
    client = FakeClient()
    r.client = client
    r.on_frame(0xFC01, b"to the p2p side", client)
    data, addr = peer.recvfrom(100)
    assert data == b"to the p2p side"
    peer.sendto(b"from the p2p side", addr)
    for _ in range(100):
        r.tick()
        if client.sent:
            break
    assert client.sent == [(0xFC01, b"from the p2p side")]
    peer.close()


@pytest.mark.parametrize("name", ["esp32", "esp32s3", "nrf52840", "vboard-esp32", "vboard-nrf52840"])
def test_board_definitions_load_and_hal_compiles(name, tmp_path):
    b = boardspec.load_board(name)
    assert b.bank_kind in ("firmware", "app") and len(b.banks) == 2
    assert all(r.size % 4096 == 0 and r.offset % 4096 == 0 for r in b.regions)
    if b.bank_kind == "app":
        assert b.region("bootctl").size == 2 * 4096
    devcode.compile_file(b.hal_path, tmp_path / "hal.mpy")


def test_real_and_virtual_nrf_layouts_agree():
    real, virt = boardspec.load_board("nrf52840"), boardspec.load_board("vboard-nrf52840")
    for n in ("bootctl", "app_a", "app_b", "fs"):
        assert (real.region(n).offset, real.region(n).size) == (virt.region(n).offset, virt.region(n).size)
