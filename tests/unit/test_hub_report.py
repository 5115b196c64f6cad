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
