"""board deploy --supplier-cert/--acb-cert: the device configuration's GBCS commissioning from
the Supplier's DS and the ACB's KA Organisation certificates (the test PKI), the device's KA
key pair made at deploy; the wrong certificate in either place is refused by name; the block
loads on the device (hanfw.config) and a CS06 the Supplier signs and the ACB MACs to that KA
key passes the device's check."""
from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from hanfw import activation, config, gbcs, p256
from hanota import deploy
from hanota.dcc import pki
from hanfw.state import State


G = ("04" "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
     "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5")  # P-256's generator


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    return pki.init(d)


def test_commissioning_block_loads_and_verifies_a_cs06(store, tmp_path):
    sup, acb = store["supplier-a.ds.cert"].read_bytes(), store["acb.ka.cert"].read_bytes()
    block, ka_pub = deploy.gbcs_commissioning(sup, acb)
    assert block["supplier_id"] == "90B3D51F3001A001"
    eui = "00db1234567890a5"
    cfg = config.from_dict({"eui64": eui, "role": "hcalcs", "manufacturer": 1, "hw_version": 1,
                            "keys": [block["supplier_ds"]], "install_code": "00" * 18,
                            "gbcs": block})
    assert p256.public_key(cfg.gbcs["ka_priv"]) == bytes.fromhex(ka_pub)
    # the Supplier signs, the ACB MACs with its KA key to the device's KA public key
    img = hashlib.sha256(b"img").digest()
    m = gbcs.cs06_command(1, bytes.fromhex(block["supplier_id"]), bytes.fromhex(eui), img)
    skey = serialization.load_pem_private_key(store["supplier-a.ds.key"].read_bytes(), None)
    akey = serialization.load_pem_private_key(store["acb.ka.key"].read_bytes(), None)
    m = gbcs.sign_message(m, skey.private_numbers().private_value.to_bytes(32, "big"))
    z = p256.ecdh(akey.private_numbers().private_value.to_bytes(32, "big"), bytes.fromhex(ka_pub))
    m.mac = gbcs.compute_mac(z, m)

    class Banks:
        def target_sha256(self, n):
            return img
    st = State(str(tmp_path / "ota.json"))
    st.update(held={"version": 2, "length": 9, "hash": img.hex()})
    assert activation.process(cfg, st, Banks(), m.encode(), 1)[::2] == (None, "activate")


@pytest.mark.parametrize("sup,acb,why", [
    ("supplier-a.ka.cert", "acb.ka.cert", "digital-signing"),
    ("network-operator.ds.cert", "acb.ka.cert", "not a Supplier"),
    ("supplier-a.ds.cert", "acb.ds.cert", "ACB's key-agreement"),
    ("supplier-a.ds.cert", "supplier-b.ka.cert", "ACB's key-agreement"),
])
def test_wrong_certificates_are_refused_by_name(store, sup, acb, why):
    with pytest.raises(deploy.DeployError, match=why):
        deploy.gbcs_commissioning(store[sup].read_bytes(), store[acb].read_bytes())


def test_config_refuses_a_bad_block():
    base = {"eui64": "00db1234567890a5", "role": "hcalcs", "manufacturer": 1, "hw_version": 1,
            "keys": [G], "install_code": "00" * 18}
    config.from_dict(base)
    with pytest.raises(config.ConfigError, match="gbcs.supplier_ds is not a P-256"):
        config.from_dict(dict(base, gbcs={"supplier_ds": "04" + "00" * 64, "supplier_id": "00" * 8,
                                          "acb_ka": G, "ka_priv": "01" * 32}))
    with pytest.raises(config.ConfigError, match="gbcs lacks ka_priv"):
        config.from_dict(dict(base, gbcs={"supplier_ds": G, "supplier_id": "00" * 8, "acb_ka": G}))
    with pytest.raises(config.ConfigError, match="supplier_id must be 8 bytes"):
        config.from_dict(dict(base, gbcs={"supplier_ds": G, "supplier_id": "00" * 7, "acb_ka": G,
                                          "ka_priv": "01" * 32}))
