"""SR 11.3 as GBCS end to end, in one event loop (the DCC's HTTP server, a Comms Hub with its
WAN, a fake HCALCS running the device's own CS06 check, hanfw/activation.py): SR 11.1
distributes; SR 11.3 CV 4 gets the DCC's Pre-Command; the Supplier signs it and submits CV 5;
the DCC MACs it (ACB KA key -> the device's KA key from its commissioning), the Comms Hub
relays the GBCS bytes on the HAN (ZCL 0xF3) and the device's GBCS answer (0xF4) comes back as
the DUIS response's GBCSPayload. A wrong hash is refused by the device (CS06 Hash Mismatch),
a replayed or altered Signed Pre-Command by the DCC; nothing is activated by either."""
from __future__ import annotations

import pytest

from hanfw import config, gbcs
from hanota.dcc import duis, pki, precommand, xmlsig
from hanota.deploy import gbcs_commissioning

from e2e.test_dcc_wan import World, msb, outcome, run  # noqa: F401

pytestmark = pytest.mark.timeout(120)


async def post_raw(w: World, xml: bytes) -> bytes:
    async with w.session.post(w.url + "/api/v1/serviceD", data=xml,
                              headers={"Content-Type": "application/xml"}) as r:
        body = await r.read()
    xmlsig.verify(body, w.dcc_cert)
    return body


async def commissioned_hcalcs(w: World, n: int):
    block, ka_pub = gbcs_commissioning((w.pki_dir / "supplier-a.ds.cert.pem").read_bytes(),
                                       (w.pki_dir / "acb.ka.cert.pem").read_bytes())
    await w.prenotify(n, "hcalcs")
    # the device's KA key from its commissioning into its registration data
    w.dcc.register_device_ka(msb(n), ka_pub)
    dev = await w.device(n, role="hcalcs")
    dev.gbcs_cfg = config.from_dict({"eui64": msb(n).hex(), "role": "hcalcs",
                                     "manufacturer": 0x1234, "hw_version": 0x100,
                                     "keys": [block["supplier_ds"]], "install_code": "00" * 18,
                                     "gbcs": block})
    return dev


async def activate(w: World, n: int, image_hash: bytes, *, tamper=None) -> tuple[dict, dict]:
    """CV 4 then the signed CV 5; (the CV 5 acknowledgement, the final response or {})."""
    pre_xml = await post_raw(w, w.request("11.3", msb(n), firmware_hash=image_hash))
    assert duis.parse_response(pre_xml)["code"] == "I0"
    rid, srv, pre = precommand.from_response(pre_xml)
    key = pki.load_key((w.pki_dir / "supplier-a.ds.key.pem").read_bytes())
    signed = precommand.sign(pre, key)
    if tamper is not None:
        signed = tamper(signed)
    cv5 = xmlsig.sign(precommand.signed_request(rid, signed, srv), w.user_key, w.user_cert)
    ack = duis.parse_response(await post_raw(w, cv5))
    if ack["code"] != "I99":
        return ack, {}
    return ack, await w.wait_response(str(rid))


def test_11_1_then_supplier_signed_11_3_activates(tmp_path):
    async def body(w: World):
        await w.start_hub()
        dev = await commissioned_hcalcs(w, 2)
        data = w.image("hcalcs", 0x00000003)
        _, ack = await w.post(w.request("11.1", duis.DCC_EUI, firmware_image=data,
                                        firmware_version="00000003", device_ids=[msb(2)]))
        resp = await w.wait_response(ack["request_id"])
        assert outcome(resp)["Outcome"] == "distributed", resp
        held = dev.held_hash
        # the device refuses a CS06 for another image: CS06 Hash Mismatch, by its reason
        ack, resp = await activate(w, 2, bytes(32))
        assert ack["code"] == "I99", ack
        m = gbcs.decode(resp["gbcs_payload"])
        assert m.kind == "cs06-response" and m.fields["response_code"] == gbcs.CS06_HASH_MISMATCH
        assert "hash-mismatch" in resp["reason"] and dev.activated_versions == []
        # an altered Signed Pre-Command never leaves the DCC
        ack, _ = await activate(w, 2, held, tamper=lambda s: s[:-1] + bytes((s[-1] ^ 1,)))
        assert ack["code"] != "I99" and "signature" in ack["reason"], ack
        assert [r for r, _ in dev.gbcs_answers] == ["hash-mismatch"]
        # the right one activates; the device's own GBCS response reaches the User
        ack, resp = await activate(w, 2, held)
        m = gbcs.decode(resp["gbcs_payload"])
        assert resp["code"] == "I0", resp
        assert m.kind == "cs06-response" and m.fields["response_code"] == gbcs.CS06_SUCCESS
        assert m.originator == msb(2) and m.recipient == w.user
        assert dev.activated_versions == [3]
    run(tmp_path, body)
