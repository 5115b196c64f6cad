"""hanfw.activation under CPython: the HCALCS's check of a CS06 (GBCS MAC with the ACB's KA key,
the commissioned Supplier's signature, recipient, counter strictly above the last accepted and
stored before acting, held image hash), immediate / future-dated / cancellation, and each
refusal named with the held image and the stored counter untouched. The same module runs
under the real MicroPython in tests/device/test_activation_mpy.py."""
from __future__ import annotations

import hashlib

import pytest

from hanfw import activation, config, gbcs
from hanfw.state import State
from support.gbcskit import DEV_EUI, IMG, OTHER, SUP, SUP_EUI, H, commissioning, cs06, public


def device_config(commissioned=True):
    d = {"eui64": DEV_EUI.hex(), "role": "hcalcs", "manufacturer": 0x1234, "hw_version": 0x100,
         "keys": [public(SUP).hex()], "install_code": "00" * 18}
    if commissioned:
        d["gbcs"] = commissioning()
    return config.from_dict(d)


class Banks:
    def __init__(self, content=IMG):
        self.content = content

    def target_sha256(self, length):
        return self.content


@pytest.fixture
def dev(tmp_path):
    st = State(str(tmp_path / "ota.json"))
    st.update(held={"bank": 1, "version": 0x20, "length": 1000, "secver": 0, "hash": IMG.hex()})
    return device_config(), st, Banks()


def run(dev, data):
    cfg, st, banks = dev
    return activation.process(cfg, st, banks, data, 0x10)


def test_immediate_cs06_activates_and_stores_the_counter(dev):
    reason, resp, action = run(dev, cs06(5))
    assert (reason, action) == (None, "activate")
    assert resp.kind == "cs06-response" and resp.fields["response_code"] == gbcs.CS06_SUCCESS
    assert resp.fields["firmware_version"] == (0x20).to_bytes(4, "big")
    assert resp.originator == DEV_EUI and resp.recipient == SUP_EUI and resp.counter == 5
    assert gbcs.decode(resp.encode()).fields == resp.fields
    assert activation.last_counter(dev[1], SUP_EUI) == 5
    # the stored counter survives a reload of the state file
    assert State(dev[1].path).get("sctr") == {SUP_EUI.hex().upper(): 5}


def refusals():
    yield "replayed", lambda: [cs06(5), cs06(5)], "replayed-counter"
    yield "older", lambda: [cs06(5), cs06(4)], "replayed-counter"
    yield "other-device", lambda: [cs06(6, recipient=H("00DB1234567890A6"))], "wrong-recipient"
    yield "other-supplier-key", lambda: [cs06(6, key=OTHER)], "bad-signature"
    yield "not-responsible", lambda: [cs06(6, originator=H("90B3D51F30020000"))], "wrong-originator"
    yield "other-acb", lambda: [cs06(6, acb=0xACB_9999)], "bad-mac"
    yield "unknown-code", lambda: [cs06(6, code=0x00B3)], "unknown-message-code"
    yield "wrong-hash", lambda: [cs06(6, image=hashlib.sha256(b"other").digest())], "hash-mismatch"
    yield "truncated", lambda: [cs06(6)[:-13]], "truncated"


@pytest.mark.parametrize("name,cmds,why", [pytest.param(*r, id=r[0]) for r in refusals()])
def test_each_refusal_is_named_and_nothing_is_acted_on(dev, name, cmds, why):
    msgs = cmds()
    for m in msgs[:-1]:
        assert run(dev, m)[0] is None
    before = dict(dev[1].data)
    held = dict(dev[1].get("held"))
    reason, resp, action = run(dev, msgs[-1])
    assert reason == why and action is None
    assert dev[1].get("held") == held
    if why != "hash-mismatch":  # an authentic command's counter is consumed
        assert dev[1].data == before
    if why in ("replayed-counter", "bad-signature", "wrong-originator", "bad-mac"):
        assert resp.kind == "cs06-response"
        assert resp.fields["response_code"] == gbcs.CS06_ACTIVATION_FAILURE
    if why == "hash-mismatch":
        assert resp.fields["response_code"] == gbcs.CS06_HASH_MISMATCH


def test_flipped_byte_at_every_position_is_refused(dev):
    good = cs06(7)
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x01
        reason, _, action = run(dev, bytes(bad))
        assert reason is not None and action is None, "flip at %d accepted" % i
    assert activation.last_counter(dev[1], SUP_EUI) == 0
    assert run(dev, good)[2] == "activate"


def test_no_image_held_and_bank_changed(dev):
    cfg, st, banks = dev
    banks.content = hashlib.sha256(b"overwritten").digest()
    assert run(dev, cs06(1))[0] == "activation-failure"
    st.update(held=None)
    reason, resp, _ = run(dev, cs06(2))
    assert reason == "no-image-held" and resp.fields["response_code"] == gbcs.CS06_NO_IMAGE_HELD


def test_not_commissioned(tmp_path):
    st = State(str(tmp_path / "ota.json"))
    assert activation.process(device_config(False), st, Banks(), cs06(1), 1) == \
        ("not-commissioned", None, None)


def test_future_dated_then_due_alerts_8f66(dev):
    cfg, st, banks = dev
    reason, resp, action = run(dev, cs06(9, at="20270101000000Z"))
    assert (reason, action, resp.kind) == (None, "pending", "cs06-accepted")
    p = st.get("fdact")
    assert p["at"] == activation.utc_of("20270101000000Z") and p["c"] == 9
    alert, go = activation.due_alert(cfg, st, banks, 0x10)
    assert go and st.get("fdact") is None
    a = gbcs.decode(alert.encode())
    assert a.kind == "fd-alert" and a.fields["alert_code"] == gbcs.ALERT_FD_ACTIONED
    assert a.fields["execution_date_time"] == "20270101000000Z"
    assert a.fields["payload_originator_counter"] == 9


def test_future_dated_image_gone_alerts_8f67(dev):
    cfg, st, banks = dev
    run(dev, cs06(9, at="20270101000000Z"))
    st.update(held=None)
    alert, go = activation.due_alert(cfg, st, banks, 0x10)
    assert not go and alert.fields["alert_code"] == gbcs.ALERT_FD_NOT_ACTIONED
    assert alert.fields["response_code"] == gbcs.CS06_NO_IMAGE_HELD


def test_cancellation_removes_the_pending_one(dev):
    cfg, st, _ = dev
    run(dev, cs06(9, at="20270101000000Z"))
    reason, resp, action = run(dev, cs06(10, at=gbcs.CANCEL_TIME))
    assert (reason, action, resp.kind) == (None, "cancel", "cs06-accepted")
    assert st.get("fdact") is None and activation.last_counter(st, SUP_EUI) == 10
    assert run(dev, cs06(11, at=gbcs.CANCEL_TIME))[0] == "no-pending"


def test_utc_of_matches_the_calendar():
    import datetime
    for t in ("20000101000000Z", "20240229235959Z", "20991231120000Z", "20270615083001Z"):
        d = datetime.datetime.strptime(t, "%Y%m%d%H%M%SZ")
        assert activation.utc_of(t) == int((d - datetime.datetime(2000, 1, 1)).total_seconds())


def test_reason_codes_round_trip():
    for name in activation.REFUSALS:
        assert activation.reason_name(activation.reason_code(name)) == name
    assert activation.reason_code(None) == 0 and activation.reason_name(0) is None


def test_hub_keeps_an_unsolicited_8f66_as_an_event(dev, tmp_path):
    """What the device sends when a future-dated CS06 falls due reaches the hub's events."""
    import json

    from hanota.hub import HubDB
    from hanota.hub.policy import HubPolicy
    cfg, st, banks = dev
    run(dev, cs06(9, at="20270101000000Z"))
    alert, _ = activation.due_alert(cfg, st, banks, 0x10)
    db = HubDB.open(tmp_path / "hub.db")
    try:
        HubPolicy(db, None).on_gbcs_alert(bytes(reversed(DEV_EUI)), 0, alert.encode())
        (row,) = db.all("SELECT * FROM events WHERE kind = 'gbcs_alert'")
        d = json.loads(row["detail"])
        assert d["alert_code"] == "8F66" and d["response_code"] == 0 and d["reason"] is None
        assert bytes.fromhex(d["gbcs"]) == alert.encode()
    finally:
        db.close()
