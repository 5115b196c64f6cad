"""The GBCS use case a Comms Hub outcome is reported under in the User's DUIS response.

An SR 11.4 image is activated by the PPMID (or Alt HAN device) itself, and GBCS tells of it
with the CS09 PPMID Firmware Activation Alert, which is also the GBCS payload the Comms Hub
sends (`dcc.gbcs.for_outcome`); an SR 11.3 activation is answered by CS06, a distribution by
CCS08. Found end to end by tests/e2e/test_duis_templates.py (the 11.4 template's response
said CS06).
"""
from __future__ import annotations

import pytest

from hanota.dcc import duis, pki, xmlsig
from hanota.dcc.service import Dcc
from hanota.dcc.store import DccStore

pytestmark = pytest.mark.timeout(60)

SUP_A = pki.ORGS["supplier-a"][1]
HUB = bytes.fromhex("00DB1234567800C1")
PPMID = bytes.fromhex("00DB123456789002")
HCALCS = bytes.fromhex("00DB123456789001")


@pytest.mark.parametrize("srv,device,outcome,case,code", [
    ("11.4", "ppmid", "activated", "CS09", "0"),
    ("11.4", "ppmid", "rolled_back", "CS09", "1"),
    ("11.4", "ppmid", "distributed", "CCS08", "0"),
    ("11.4", "ppmid", "transfer_failed", "CCS08", "3"),
    ("11.3", "hcalcs", "activated", "CS06", "0"),
    ("11.3", "hcalcs", "rolled_back", "CS06", "3"),
    ("11.1", "hcalcs", "distributed", "CCS08", "0"),
])
def test_outcome_is_reported_under_the_use_case_of_its_sr(tmp_path, pkidir, srv, device,
                                                          outcome, case, code):
    device = {"ppmid": PPMID, "hcalcs": HCALCS}[device]
    dcc_pair = pki.signing_pair(pkidir, "dcc.xml")
    store = DccStore(tmp_path / "dcc.db")
    try:
        store.add_premises("MPAN-1", [SUP_A], HUB)
        store.add_device(PPMID, "PPMID", "MPAN-1", model=0x0084)
        store.add_device(HCALCS, "HCALCS", "MPAN-1", model=0x0086)
        dcc = Dcc(store, pki.KeyStore(pkidir), dcc_pair)
        target = device if srv == "11.3" else duis.DCC_EUI
        rid = "%s:%s:7" % (duis.eui_text(SUP_A), duis.eui_text(target))
        store.add_request(rid, SUP_A, 7, srv, device=device, hub_eui=HUB)
        dcc.wan_received(HUB, {"id": 1, "type": "outcome", "request": rid,
                               "device": device.hex().upper(), "outcome": outcome,
                               "detail": {}})
        (_, xml), = dcc.responses(SUP_A)
        xmlsig.verify(xml, dcc_pair[1])
        r = duis.parse_response(xml)
        out = r["body"]["CommsHubOutcome"]
        assert (r["code"], r["request_id"], out["Outcome"]) == ("I0", rid, outcome)
        assert (out["GBCSUseCase"], out["GBCSResponseCode"]) == (case, code), out
    finally:
        store.close()
