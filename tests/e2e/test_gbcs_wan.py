"""SR 11.3 as GBCS end to end, in one event loop (the DCC's HTTP server, a Comms Hub with its
WAN, a fake HCALCS running the device's own CS06 check, hanfw/activation.py): SR 11.1
distributes; SR 11.3 CV 4 gets the DCC's Pre-Command; the Supplier signs it and submits CV 5;
the DCC MACs it (ACB KA key -> the device's KA key from its commissioning), the Comms Hub
relays the GBCS bytes on the HAN (ZCL 0xF3) and the device's GBCS answer (0xF4) comes back as
the DUIS response's GBCSPayload. A wrong hash is refused by the device (CS06 Hash Mismatch),
a replayed or altered Signed Pre-Command by the DCC; nothing is activated by either. The
sweep: a replayed originator counter, another device's CS06 and another Supplier's CS06 are
refused by the device (its CS06 response and reason reach the User), a Supplier that is not
(or no longer) responsible and another Supplier's signature by the DCC (E4, EH6)."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from hanfw import config, gbcs
from hanota.dcc import duis, pki, precommand, xmlsig
from hanota.deploy import gbcs_commissioning

from e2e.test_dcc_wan import World, msb, outcome, run  # noqa: F401
from support.dccworld import MPAN

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


async def precommand_for(w: World, n: int, image_hash: bytes, *, user: bytes | None = None,
                         **fields) -> tuple[duis.RequestID, str, bytes]:
    """SR 11.3 CV 4: (RequestID, SRV, the DCC's Pre-Command)."""
    pre_xml = await post_raw(w, w.request("11.3", msb(n), user=user, firmware_hash=image_hash,
                                          **fields))
    r = duis.parse_response(pre_xml)
    assert r["code"] == "I0", r
    return precommand.from_response(pre_xml)


async def submit_signed(w: World, rid, srv: str, pre: bytes, *, ds: str = "supplier-a",
                        tamper=None, wait: bool = True) -> tuple[dict, dict]:
    """SR 11.3 CV 5: the Pre-Command signed with `ds`'s DS key, the DUIS request XML-signed
    by the RequestID's originator; (its acknowledgement, the final response or {}: also {}
    with wait=False, which does not wait for one)."""
    key = pki.load_key((w.pki_dir / ("%s.ds.key.pem" % ds)).read_bytes())
    signed = precommand.sign(pre, key)
    if tamper is not None:
        signed = tamper(signed)
    xkey, xcert = (w.user_key, w.user_cert) if rid.originator == w.user \
        else (w.other_key, w.other_cert)
    cv5 = xmlsig.sign(precommand.signed_request(rid, signed, srv), xkey, xcert)
    ack = duis.parse_response(await post_raw(w, cv5))
    if ack["code"] != "I99" or not wait:
        return ack, {}
    return ack, await w.wait_response(str(rid), user=rid.originator)


async def activate(w: World, n: int, image_hash: bytes, *, tamper=None, user=None,
                   ds: str = "supplier-a", **fields) -> tuple[dict, dict]:
    """CV 4 then the signed CV 5; (the CV 5 acknowledgement, the final response or {})."""
    rid, srv, pre = await precommand_for(w, n, image_hash, user=user, **fields)
    return await submit_signed(w, rid, srv, pre, tamper=tamper, ds=ds)


def device_refusal(resp: dict, reason: str) -> gbcs.Message:
    """The final DUIS response to a CS06 the device refused: I0 (the DCC heard from the
    device), the device's CS06 response Activation Failure as the GBCSPayload, its reason."""
    assert resp["code"] == "I0", resp
    m = gbcs.decode(resp["gbcs_payload"])
    assert m.kind == "cs06-response", m.describe()
    assert m.fields["response_code"] == gbcs.CS06_ACTIVATION_FAILURE, m.fields
    assert "activation_failed" in resp["reason"] and reason in resp["reason"], resp["reason"]
    return m


async def distribute(w: World, n: int, version: int) -> None:
    data = w.image("hcalcs", version)
    _, ack = await w.post(w.request("11.1", duis.DCC_EUI, firmware_image=data,
                                    firmware_version="%08X" % version, device_ids=[msb(n)]))
    resp = await w.wait_response(ack["request_id"])
    assert outcome(resp)["Outcome"] == "distributed", resp


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


def test_every_refusal_reaches_the_user_and_nothing_is_activated(tmp_path):
    """Issue 13's sweep end to end: each refusal reaches the User as its DUIS/GBCS response,
    from the device (replayed counter, another device's CS06, another Supplier's) or from the
    DCC (a Supplier no longer responsible at CV 5, another Supplier's signature in a CV 5),
    and the device activates nothing and keeps the image it holds."""
    async def body(w: World):
        await w.start_hub()
        dev = await commissioned_hcalcs(w, 2)
        other_dev = await commissioned_hcalcs(w, 3)
        await distribute(w, 2, 3)
        held = dev.held_hash

        def untouched():
            assert dev.activated_versions == [] and other_dev.activated_versions == []
            assert dev.held_hash == held

        # a replayed CS06: the Pre-Command for the right hash is issued first, then a CS06
        # with a later counter (wrong hash) is accepted by the device, so the first one's
        # originator counter is old by the time it arrives
        old_rid, srv, old_pre = await precommand_for(w, 2, held)
        ack, resp = await activate(w, 2, bytes(32))
        assert gbcs.decode(resp["gbcs_payload"]).fields["response_code"] == \
            gbcs.CS06_HASH_MISMATCH
        ack, resp = await submit_signed(w, old_rid, srv, old_pre)
        assert ack["code"] == "I99", ack
        m = device_refusal(resp, "replayed-counter")
        assert m.originator == msb(2) and m.recipient == w.user and m.counter == old_rid.counter
        assert dev.gbcs_answers[-1][0] == "replayed-counter"
        untouched()

        # a CS06 for another device: device 3's command, MAC'd to device 3's key, is carried to
        # device 2 (the WAN message altered on its way to the Comms Hub); device 2 refuses it
        # by its recipient and has no GBCS answer to give; the User still gets the outcome
        await w.wan.stop()
        rid, srv, pre = await precommand_for(w, 3, held)
        ack, _ = await submit_signed(w, rid, srv, pre, wait=False)
        assert ack["code"] == "I99", ack
        row = [r for r in w.store.all("SELECT id, body FROM wan_out WHERE acked IS NULL")
               if '"gbcs"' in r[1]]
        assert len(row) == 1
        msg = json.loads(row[0][1])
        assert msg["device"] == msb(3).hex().upper()
        msg["device"] = msb(2).hex().upper()
        with w.store.tx() as c:
            c.execute("UPDATE wan_out SET body = ? WHERE id = ?", (json.dumps(msg), row[0][0]))
        await w.start_wan()
        resp = await w.wait_response(str(rid))
        assert resp["code"] == "I0", resp
        assert gbcs.decode(resp["gbcs_payload"]).fields["response_code"] == \
            gbcs.CS06_ACTIVATION_FAILURE
        assert "wrong-recipient" in resp["reason"], resp["reason"]
        assert dev.gbcs_answers[-1] == ("wrong-recipient", None)
        assert other_dev.gbcs_answers == []
        untouched()

        # an altered Signed Pre-Command, and one signed with another Supplier's DS key: the
        # DCC refuses both at CV 5 (EH6), nothing reaches the Comms Hub
        n = len(dev.gbcs_answers)
        ack, _ = await activate(w, 2, held, tamper=lambda s: s[:-1] + bytes((s[-1] ^ 1,)))
        assert ack["code"] == duis.E_SIGNATURE and "signature" in ack["reason"], ack
        rid, srv, pre = await precommand_for(w, 2, held)
        ack, _ = await submit_signed(w, rid, srv, pre, ds="supplier-b")
        assert ack["code"] == duis.E_SIGNATURE, ack
        assert "does not verify with the Supplier's key" in ack["reason"], ack

        # a Supplier that is not the Responsible Supplier: refused at CV 4 (E4) ...
        status, ack = await w.post(w.request("11.3", msb(2), user=w.other, firmware_hash=held))
        assert ack["code"] == "E4" and "not a Responsible Supplier" in ack["reason"], ack
        # ... and at CV 5 when the Supplier changed after the Pre-Command was issued
        rid, srv, pre = await precommand_for(w, 2, held)
        w.store.add_premises(MPAN, [w.other], w.hub_eui)  # Change of Supplier to supplier-b
        ack, _ = await submit_signed(w, rid, srv, pre)
        assert ack["code"] == "E4" and duis.eui_text(w.user).replace("-", "") in ack["reason"]
        assert len(dev.gbcs_answers) == n  # none of these reached the device
        # ... and by the device: the new Supplier's CS06 passes the DCC (it is responsible
        # now) but the device was commissioned with supplier-a and was not re-commissioned
        ack, resp = await activate(w, 2, held, user=w.other, ds="supplier-b")
        assert ack["code"] == "I99", ack
        device_refusal(resp, "wrong-originator")
        assert dev.gbcs_answers[-1][0] == "wrong-originator"
        untouched()
    run(tmp_path, body)


async def future_dated_alerts(w: World, request_id: str) -> list[dict]:
    out = []
    for r in await w.responses():
        p = duis.parse_response(r["xml"].encode())
        if p["kind"] == "future_dated_alert" and p["request_id"] == request_id:
            xmlsig.verify(r["xml"].encode(), w.dcc_cert)
            out.append(p)
    return out


async def wait_future_dated_alerts(w: World, request_id: str) -> list[dict]:
    end = asyncio.get_running_loop().time() + 10
    while True:
        fd = await future_dated_alerts(w, request_id)
        if fd:
            return fd
        assert asyncio.get_running_loop().time() < end, "no future-dated alert"
        await asyncio.sleep(0.05)


def test_future_dated_activation_alerts_8f66_and_a_cancellation_removes_one(tmp_path):
    """SR 11.3 with an ExecutionDateTime: the device accepts the CS06 (its NULL response),
    waits for the time by the hub's clock, alerts 8F66 and activates; the 8F66 reaches the
    User as DUIS's FutureDatedDeviceAlertMessage for the request. A DUIS cancellation
    (ExecutionDateTime 3000-12-31: CS06 99991231235959Z) before the time removes the pending
    one: no alert, no activation; both requests' Users see the cancellation, and a second
    cancellation finds nothing to cancel."""
    async def body(w: World):
        await w.start_hub()
        dev = await commissioned_hcalcs(w, 2)
        await distribute(w, 2, 3)
        held = dev.held_hash

        # future-dated by a few seconds
        at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=3)
        rid, srv, pre = await precommand_for(w, 2, held, execution_datetime=at)
        assert gbcs.decode(pre).fields["execution_date_time"] == at.strftime("%Y%m%d%H%M%SZ")
        ack, resp = await submit_signed(w, rid, srv, pre)
        assert ack["code"] == "I99", ack
        # accepted first (the CS06 NULL response), activated only when the time came
        reason, accepted = dev.gbcs_answers[0]
        assert reason is None and accepted.kind == "cs06-accepted"
        assert resp["code"] == "I0" and outcome_of(resp) == "activated", resp
        assert gbcs.decode(resp["gbcs_payload"]).kind == "cs06-accepted"
        assert dev.activated_versions == [3]
        reason, alert = dev.gbcs_answers[1]
        assert reason is None and alert.kind == "fd-alert"
        (fd,) = await wait_future_dated_alerts(w, str(rid))
        assert fd["alert_code"] == "8F66"
        m = gbcs.decode(fd["gbcs_payload"])
        assert m.kind == "fd-alert" and m.fields["alert_code"] == gbcs.ALERT_FD_ACTIONED
        assert m.fields["response_code"] == gbcs.CS06_SUCCESS
        assert m.fields["execution_date_time"] == at.strftime("%Y%m%d%H%M%SZ")
        assert m.fields["payload_originator_counter"] == rid.counter
        assert m.originator == msb(2) and m.recipient == w.user
        assert m.fields["firmware_version"] == (3).to_bytes(4, "big")

        # a cancellation before the time: nothing pending, nothing activated
        await distribute(w, 2, 4)
        held = dev.held_hash
        at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=40)
        rid, srv, pre = await precommand_for(w, 2, held, execution_datetime=at)
        ack, _ = await submit_signed(w, rid, srv, pre, wait=False)
        assert ack["code"] == "I99", ack
        await w.until(lambda: (dev.gbcs_state or {}).get("fdact") is not None,
                      "the device holding the future-dated CS06")
        cid, csrv, cpre = await precommand_for(w, 2, held, cancel=True)
        assert gbcs.decode(cpre).fields["execution_date_time"] == gbcs.CANCEL_TIME
        ack, cresp = await submit_signed(w, cid, csrv, cpre)
        assert ack["code"] == "I99", ack
        assert cresp["code"] == "I0" and outcome_of(cresp) == "cancelled", cresp
        assert gbcs.decode(cresp["gbcs_payload"]).kind == "cs06-accepted"
        assert "removed its pending future-dated activation" in cresp["reason"]
        resp = await w.wait_response(str(rid))
        assert resp["code"] == "I0" and outcome_of(resp) == "cancelled", resp
        assert "cancelled by a GBCS CS06 cancellation" in resp["reason"]
        assert (dev.gbcs_state or {}).get("fdact") is None and dev._fd_task is None
        assert dev.activated_versions == [3] and dev.held_hash == held
        assert await future_dated_alerts(w, str(rid)) == []
        # nothing left to cancel: the device says so, the User gets not_cancelled
        cid, csrv, cpre = await precommand_for(w, 2, held, cancel=True)
        ack, cresp = await submit_signed(w, cid, csrv, cpre)
        assert outcome_of(cresp) == "not_cancelled" and "no-pending" in cresp["reason"], cresp
        assert dev.activated_versions == [3] and dev.held_hash == held
    run(tmp_path, body)


def test_future_dated_activation_not_actioned_alerts_8f67(tmp_path):
    """The image held changes before the time (another SR 11.1): at the time the device does
    not activate, alerts 8F67 with CS06 Hash Mismatch, and the User gets both the alert and
    the request's final response hash_mismatch."""
    async def body(w: World):
        await w.start_hub()
        dev = await commissioned_hcalcs(w, 2)
        await distribute(w, 2, 3)
        at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=6)
        rid, srv, pre = await precommand_for(w, 2, dev.held_hash, execution_datetime=at)
        ack, _ = await submit_signed(w, rid, srv, pre, wait=False)
        assert ack["code"] == "I99", ack
        await w.until(lambda: (dev.gbcs_state or {}).get("fdact") is not None,
                      "the device holding the future-dated CS06")
        await distribute(w, 2, 4)  # now it holds another image
        resp = await w.wait_response(str(rid))
        assert resp["code"] == "I0" and outcome_of(resp) == "hash_mismatch", resp
        assert "not actioned (alert 8F67, CS06 response code 2" in resp["reason"]
        (fd,) = await wait_future_dated_alerts(w, str(rid))
        assert fd["alert_code"] == "8F67"
        m = gbcs.decode(fd["gbcs_payload"])
        assert m.fields["response_code"] == gbcs.CS06_HASH_MISMATCH
        assert m.fields["alert_code"] == gbcs.ALERT_FD_NOT_ACTIONED
        assert dev.activated_versions == [] and dev.held_version == 4
    run(tmp_path, body)


def outcome_of(resp: dict) -> str:
    """The Comms Hub's outcome a relayed CS06's DUIS response names (its Reason starts with
    it: the body is the device's GBCSPayload)."""
    return (resp["reason"] or "").split(":")[0]
