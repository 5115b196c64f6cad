"""The OTA client takes GBCS on the HAN (ZCL 0xF3 GBCS Command, 0xF4 GBCS Response): a
Supplier-signed CS06 activates the held image (after the response is out), a future-dated one
waits for the hub's clock and alerts 8F66, a refused one is answered with its reason and
nothing happens; a commissioned HCALCS refuses the private 0xF0 Activate Image."""
from __future__ import annotations

import pytest

from hanfw import activation, clock, gbcs, zcl
from hanota.simdevice import install_code
from support.clientkit import client, run_for
from support.gbcskit import DEV_EUI, IMG, SUP, commissioning, cs06, public

MFR = 0x1234
S2C = zcl.FC_CLUSTER | zcl.FC_SERVER_TO_CLIENT | zcl.FC_DISABLE_DEFAULT_RESPONSE | zcl.FC_MANUFACTURER


@pytest.fixture
def dev(monkeypatch):
    return client(monkeypatch, {"eui64": DEV_EUI.hex(), "role": "hcalcs", "manufacturer": MFR,
                                "hw_version": 1, "keys": [public(SUP).hex()],
                                "install_code": install_code(1), "query_interval": 3600,
                                "gbcs": commissioning()}, IMG)


def send_gbcs(d, data, tsn=7):
    d.c._zcl(zcl.pack_header(S2C, tsn, zcl.CMD_GBCS, MFR) + data)


def answers(d):
    """(reason name, decoded GBCS message or None) of each 0xF4 the device sent."""
    out = []
    for cl, p in d.sent:
        if cl != zcl.CLUSTER_OTA:
            continue
        fc, mfr, tsn, cmd, off = zcl.parse_header(p)
        if cmd == zcl.CMD_GBCS_RESPONSE:
            assert mfr == MFR
            body = p[off + 1:]
            out.append((activation.reason_name(p[off]), gbcs.decode(body) if body else None))
    return out


def test_signed_cs06_activates_after_answering(dev):
    send_gbcs(dev, cs06(3))
    (reason, m), = answers(dev)
    assert reason is None and m.kind == "cs06-response" and m.fields["response_code"] == 0
    assert dev.banks.activated == 0  # the response leaves first
    run_for(dev, 500)
    assert dev.banks.activated == 1 and dev.resets == [1]


@pytest.mark.parametrize("data,why", [
    (lambda: cs06(3, recipient=bytes.fromhex("00DB1234567890A6")), "wrong-recipient"),
    (lambda: cs06(3, key=0x777), "bad-signature"),
    (lambda: cs06(3)[:40], "truncated"),
    (lambda: cs06(3, code=0x00B3), "unknown-message-code"),
])
def test_refused_cs06_is_answered_with_its_reason(dev, data, why):
    send_gbcs(dev, data())
    (reason, _), = answers(dev)
    assert reason == why
    run_for(dev, 1000)
    assert dev.banks.activated == 0 and dev.state.get("held")


def test_replay_is_refused(dev):
    send_gbcs(dev, cs06(3))
    run_for(dev, 500)
    dev.state["held"] = {"version": 0x00020000, "hash": IMG.hex(), "length": 1000}
    send_gbcs(dev, cs06(3))
    assert [r for r, _ in answers(dev)] == [None, "replayed-counter"]
    run_for(dev, 500)
    assert dev.banks.activated == 1


def test_future_dated_waits_for_the_hub_clock_then_alerts(dev):
    at = "20270101000010Z"
    send_gbcs(dev, cs06(4, at=at))
    run_for(dev, 2000)  # no clock yet: waits, asks the hub for the time
    assert dev.banks.activated == 0 and dev.state.get("fdact")
    assert any(cl == zcl.CLUSTER_TIME for cl, _ in dev.sent)
    clock.set(activation.utc_of(at) - 3)
    run_for(dev, 2000)
    assert dev.banks.activated == 0
    run_for(dev, 2500)
    got = answers(dev)
    assert got[0][1].kind == "cs06-accepted"
    assert got[1][1].kind == "fd-alert" and got[1][1].fields["alert_code"] == gbcs.ALERT_FD_ACTIONED
    assert dev.banks.activated == 1 and not dev.state.get("fdact")


def test_cancelled_future_dated_never_fires(dev):
    send_gbcs(dev, cs06(4, at="20270101000010Z"))
    send_gbcs(dev, cs06(5, at=gbcs.CANCEL_TIME))
    clock.set(activation.utc_of("20270101000010Z") + 5)
    run_for(dev, 3000)
    assert [m.kind for _, m in answers(dev)] == ["cs06-accepted", "cs06-accepted"]
    assert dev.banks.activated == 0


def test_private_activate_image_is_not_authorised_once_commissioned(dev):
    fc = zcl.FC_CLUSTER | zcl.FC_SERVER_TO_CLIENT | zcl.FC_MANUFACTURER
    dev.c._zcl(zcl.pack_header(fc, 9, zcl.CMD_ACTIVATE_IMAGE, MFR)
               + zcl.pack_activate_image(IMG, 0, 1))
    run_for(dev, 1000)
    assert dev.banks.activated == 0
    dr = [p for cl, p in dev.sent if zcl.parse_header(p)[3] == zcl.GLOBAL_DEFAULT_RESPONSE]
    assert dr and zcl.parse_default_response(dr[0], zcl.parse_header(dr[0])[4])[1] == zcl.NOT_AUTHORIZED
