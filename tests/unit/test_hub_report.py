"""Status and report contents (JSON, text, HTML) from a scripted history in the database."""
from __future__ import annotations

import html.parser
import json

import pytest

from hanota.hub import HubDB
from hanota.hub import queue
from hanota.hub import report as rep
from hanota.hub import requests as rq
from hanota.hub.queue import RetryPolicy
from support import otabuild
from support.hubfixtures import SUPPLIER, build_image, eui_str, register

pytestmark = pytest.mark.timeout(30)


class Clock:
    t = 1_800_000_000.0

    def __call__(self):
        return self.t


@pytest.fixture
def scripted(tmp_path):
    """Four requests with known histories, times one second apart."""
    clock = Clock()
    db = HubDB.open(tmp_path / "hub.db", clock=clock)
    key = otabuild.new_key()
    img = build_image(tmp_path, key, "ppmid", 0x0102, size=500)
    a = register(db, 1, suppliers=(SUPPLIER, "Gas <&> Co"))
    b = register(db, 2, premises="MPAN-2")
    c = register(db, 3, premises="MPAN-3")
    ids = {}
    ids["ok"] = rq.update_firmware(db, a, img, SUPPLIER).id
    ids["denied"] = rq.update_firmware(db, b, img, "Evil <script> Ltd").id
    ids["moving"] = rq.update_firmware(db, b, img, SUPPLIER).id
    ids["waiting"] = rq.update_firmware(db, c, img, SUPPLIER).id
    retry = RetryPolicy()
    clock.t += 1
    queue.fill_slots(db, 3, retry, clock.t)
    clock.t += 1
    db.set_state(ids["ok"], "downloading", "offered")
    db.update_request(ids["ok"], offset=500, size=500)
    db.set_state(ids["ok"], "activating", "activation_scheduled")
    clock.t += 1
    db.finish(ids["ok"], "activated", "Activation Alert: running 0x00000102", 0x0102)
    db.conn.execute("UPDATE devices SET running_version = 258 WHERE eui = ?", (a,))
    db.set_state(ids["moving"], "downloading", "offered")
    db.update_request(ids["moving"], offset=250, size=500, rate=1234.5)
    clock.t += 1
    queue.attempt_failed(db, ids["waiting"], "asleep", retry, clock.t)
    yield db, ids, (a, b, c)
    db.close()


def test_status_data(scripted):
    db, ids, (a, b, c) = scripted
    s = rep.status_data(db)
    assert s["outcomes"] == {"activated": 1, "not_authorized": 1} and s["pending"] == 2
    assert s["transfers"] == [{"request": ids["moving"], "eui": b, "state": "downloading",
                               "attempt": 1, "offset": 250, "size": 500, "percent": 50.0,
                               "rate": 1234.5, "target_version": "0x00000102"}]
    assert [(q["request"], q["position"], q["attempts"], q["waiting_s"]) for q in s["queue"]] \
        == [(ids["waiting"], 1, 1, 5.0)]
    devs = {d["eui"]: d for d in s["devices"]}
    assert devs[a]["running_version"] == 0x0102 and devs[a]["pending"] == []
    assert devs[a]["last_outcome"]["outcome"] == "activated"
    assert devs[a]["suppliers"] == [SUPPLIER, "Gas <&> Co"]
    assert devs[b]["last_outcome"]["outcome"] == "not_authorized"
    assert [p["id"] for p in devs[b]["pending"]] == [ids["moving"]]
    # the running server's own figures win over the database's (fresher) when given
    live = rep.status_data(db, {b: {"offset": 400, "size": 500, "rate": 99.0,
                                    "state": "downloading"}})
    assert live["transfers"][0]["percent"] == 80.0
    assert s["serve"] is None and s["hub"]["generation"] == 1
    json.dumps(s)  # JSON-ready
    text = "\n".join(rep.status_lines(s))
    assert "serve: never started" in text and "50.0%" in text and "1.2 kB/s" in text
    assert "queue (service order):" in text and "retry in 5 s" in text
    assert "outcomes: activated 1, not_authorized 1; pending 2" in text


def test_report_data_and_text(scripted):
    db, ids, (a, b, c) = scripted
    r = rep.report_data(db)
    assert r["summary"] == {"activated": 1, "not_authorized": 1, "pending": 2}
    by_id = {q["id"]: q for q in r["requests"]}
    ok = by_id[ids["ok"]]
    assert (ok["outcome"], ok["result"], ok["sr"], ok["supplier"]) == \
        ("activated", 0x0102, "11.4", SUPPLIER)
    assert ok["finished_iso"] == "2027-01-15T08:00:03.000Z"
    assert [e["kind"] for e in ok["events"]] == [
        "submitted", "queued", "in_flight", "offered", "activation_scheduled", "outcome"]
    assert [e["at"] - ok["created"] for e in ok["events"]] == [0, 0, 1, 2, 2, 3]
    denied = by_id[ids["denied"]]
    assert denied["outcome"] == "not_authorized" and "Evil <script> Ltd" in denied["reason"]
    assert by_id[ids["waiting"]]["events"][-1]["kind"] == "retry"
    assert r["devices"][a]["running_version_hex"] == "0x00000102"
    json.dumps(r)
    text = "\n".join(rep.report_lines(r))
    assert "activated" in text and "(downloading)" in text and "(queued)" in text
    assert "summary: activated 1, not_authorized 1, pending 2" in text


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.ids, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.ids += [v for k, v in attrs if k == "id"]

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_has_a_timeline_per_device_and_escapes_text(scripted):
    db, ids, euis = scripted
    page = rep.render_html(rep.report_data(db))
    assert "<script>" not in page and "Evil &lt;script&gt; Ltd" in page
    p = _Collect()
    p.feed(page)
    assert p.tags.count("svg") == 3  # one timeline per device
    assert ["d-" + e for e in euis] == [i for i in p.ids if i.startswith("d-")]
    text = " ".join(p.text)
    for word in ("activated", "not_authorized", "ppmid",
                 "0x00000102", "Activation Alert: running 0x00000102"):
        assert word in text
    # every outcome is explained in the legend
    for outcome in ("ota_unavailable_after_tcso", "hw_version_mismatch", "superseded"):
        assert outcome in text
    assert page.count("<rect") == 4  # a bar per request
    assert eui_str(1) in text


# ---------------------------------------------------------------- the DUIS view (--dcc-db)

DCC_HUB = bytes.fromhex("00DB1234567800C1")
DCC_DEV = bytes.fromhex("00DB123456789002")


@pytest.fixture
def dcc_history(tmp_path):
    """A DCC database with a known history, made by the real service from signed requests:
    an 11.2 answered by the Comms Hub (with the activation alert that names it), a refusal by
    entity ID, one still pending, and the Comms Hub's swap-out alert about no request."""
    from hanota.dcc import duis, pki, xmlsig
    from hanota.dcc.service import Dcc
    from hanota.dcc.store import DccStore

    pki.init(tmp_path / "pki")
    store = DccStore(tmp_path / "dcc.db")
    a, b = pki.ORGS["supplier-a"][1], pki.ORGS["supplier-b"][1]
    store.add_premises("MPAN-1", [a], DCC_HUB)
    store.add_device(DCC_DEV, "PPMID", "MPAN-1", manufacturer=0x1234, model=0x0084)
    dcc = Dcc(store, pki.KeyStore(tmp_path / "pki"), pki.signing_pair(tmp_path / "pki", "dcc.xml"))

    def submit(who: str, counter: int) -> dict:
        key, cert = pki.signing_pair(tmp_path / "pki", who + ".xml")
        xml = duis.build_request("11.2", pki.ORGS[who][1], DCC_DEV, counter)
        return duis.parse_response(dcc.submit(xmlsig.sign(xml, key, cert)))

    done, refused, pending = submit("supplier-a", 10), submit("supplier-b", 10), \
        submit("supplier-a", 11)
    assert (done["code"], refused["code"], pending["code"]) == ("I99", "E4", "I99")
    dcc.wan_received(DCC_HUB, {"id": 1, "type": "outcome", "request": done["request_id"],
                               "device": DCC_DEV.hex(), "outcome": "version_read",
                               "detail": {"version": "00020000"}})
    dcc.wan_received(DCC_HUB, {"id": 2, "type": "alert", "alert": "activation",
                               "device": DCC_DEV.hex(), "request": done["request_id"]})
    dcc.wan_received(DCC_HUB, {"id": 3, "type": "alert", "alert": "trust_centre_swap_out",
                               "device": None, "request": None,
                               "detail": {"old": DCC_HUB.hex(), "new": "00DB1234567800C9"}})
    ids = {"done": done["request_id"], "refused": refused["request_id"],
           "pending": pending["request_id"]}
    yield store, ids, (a.hex().upper(), b.hex().upper())
    store.close()


def test_duis_view_per_request(dcc_history):
    store, ids, (a, b) = dcc_history
    d = rep.duis_data(store, {a: "supplier-a"})
    by_rid = {q["request_id"]: q for q in d["requests"]}
    assert list(by_rid) == [ids["done"], ids["refused"], ids["pending"]]
    done, refused, pending = (by_rid[ids[k]] for k in ("done", "refused", "pending"))
    assert (done["user"], done["user_name"], done["srv"], done["code"], done["outcome"]) == \
        (a, "supplier-a", "11.2", "I0", "version_read")
    assert done["meaning"].startswith("Success")
    # the final response, then the alert that names the request (to the premises' Supplier)
    assert [(r["kind"], r["code"], r["final"], r["about"], r["gbcs"])
            for r in done["responses"]] == [
        ("response", "I0", True, "version_read", "CS08 0 success"),
        ("dcc_alert", "I0", False, "activation", None)]
    # the refusal: by the signer's entity ID, with DUIS's code and the DCC's reason
    assert (refused["user"], refused["user_name"], refused["code"], refused["outcome"],
            refused["refusal"]) == (b, None, "E4", "refused", "not-authorised")
    assert "not a Responsible Supplier" in refused["reason"] and b in refused["reason"]
    assert refused["meaning"].startswith("Failed authorisation") and refused["responses"] == []
    assert (pending["code"], pending["outcome"], pending["state"]) == ("I99", None, "sent")
    # the swap-out alert names no request
    assert [(r["kind"], r["about"]) for r in d["alerts"]] == [
        ("dcc_alert", "trust_centre_swap_out")]
    assert d["codes"] == {"E4": 1, "I0": 1, "I99": 1}
    json.dumps(d)
    text = "\n".join(rep.duis_lines(d))
    for want in (ids["done"], ids["refused"], "E4", "version_read", "supplier-a", b,
                 "-> #1 response I0 (version_read; CS08 0 success) to supplier-a",
                 "trust_centre_swap_out",
                 "(sent)"):
        assert want in text, want


def test_html_report_with_the_duis_view(scripted, dcc_history):
    db, _, _ = scripted
    store, ids, (a, b) = dcc_history
    page = rep.render_html(rep.report_data(db), duis=rep.duis_data(store, {a: "Gas <&> Co"}),
                           links=[("premises <2>", "report-2.html")])
    assert "<h2>DUIS requests (the DCC)</h2>" in page
    assert "Gas &lt;&amp;&gt; Co" in page and "premises &lt;2&gt;" in page
    assert "<script>" not in page
    assert "<a href='report-2.html'>" in page
    assert "<h2>Requests at Comms Hub %s</h2>" % rep.registry.hub_info(db)["eui"] in page
    p = _Collect()
    p.feed(page)
    text = " ".join(p.text)
    for want in (ids["done"], ids["refused"], ids["pending"], "E4", "I99", a, b,
                 "not a Responsible Supplier", "trust_centre_swap_out"):
        assert want in text, want
    # without the DCC's database, the hub report is as before
    assert "DUIS" not in rep.render_html(rep.report_data(db))


def test_report_command_reads_the_dcc_database(scripted, dcc_history, tmp_path):
    from click.testing import CliRunner

    from hanota.cli import cli

    db, _, _ = scripted
    db.conn.commit()
    store, ids, _ = dcc_history
    run = CliRunner().invoke
    r = run(cli, ["report", "--db", db.path, "--dcc-db", store.path])
    assert r.exit_code == 0, r.output
    assert "summary:" in r.output and "DUIS requests at the DCC:" in r.output
    assert ids["refused"] in r.output
    r = run(cli, ["report", "--db", db.path, "--dcc-db", store.path, "--json"])
    assert [q["request_id"] for q in json.loads(r.output)["duis"]["requests"]] == \
        [ids["done"], ids["refused"], ids["pending"]]
    html_file = tmp_path / "r.html"
    r = run(cli, ["report", "--db", db.path, "--dcc-db", store.path, "--html", str(html_file)])
    assert r.exit_code == 0 and "3 DUIS requests" in r.output
    assert ids["pending"] in html_file.read_text()
    r = run(cli, ["report", "--db", db.path, "--dcc-db", str(tmp_path / "none.db")])
    assert r.exit_code == 2 and "none.db" in r.output
