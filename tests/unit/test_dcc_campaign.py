"""Campaigns (issue 14 item 3): one image to many devices in waves, through the DCC's service
path, on SQLite and on PostgreSQL (the same tests, parametrised).

Each device's request is a real signed DUIS SR 11.4 that `Dcc.submit` checks; the Comms Hubs
are in-process fakes answering the WAN messages with the outcome a test chooses. Time is an
injectable clock, never a sleep.
"""
from __future__ import annotations

import json
import random
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from hanota import images
from hanota.cli import cli
from hanota.dcc import campaign, pki
from hanota.dcc.campaign import CampaignDriver, CampaignError, Window
from hanota.dcc.service import Dcc
from hanota.dcc.store import DccStore
from support import otabuild

pytestmark = pytest.mark.timeout(120)

SUP_A = pki.ORGS["supplier-a"][1]
SUP_B = pki.ORGS["supplier-b"][1]
MFR = images.DEFAULT_MANUFACTURER
HUBS = [bytes.fromhex("00DB1234567800C%d" % i) for i in range(1, 3)]
LONDON = ZoneInfo("Europe/London")
OTHER_SUPPLIERS = "00DB12345678FFFF"  # Supplier B's PPMID
T0 = datetime(2026, 3, 2, 1, 0, tzinfo=LONDON).timestamp()  # a Monday, 01:00 in London


def dev_eui(i: int) -> str:
    return "00DB12345678%04X" % (0x9000 + i)


@pytest.fixture(scope="module")
def fw():
    """A PPMID image (on the CPL in each test's database) and one for another model."""
    key = otabuild.new_key()
    payload = random.Random(7).randbytes(300)
    return {"ppmid": images.build_image(payload, key=key, version=2, role="ppmid"),
            "hcalcs": images.build_image(payload, key=key, version=2, role="hcalcs")}


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class World:
    """A DCC's registration data with `n` PPMIDs (firmware 00000001) of Supplier A, two
    Comms Hubs, the image on the CPL; `dcc()` makes a Dcc on its own connection."""

    def __init__(self, target: str, pkidir, fw: dict, n: int = 6):
        self.target, self.pkidir, self.fw = target, pkidir, fw
        self.clock = Clock()
        self.store = DccStore(target, clock=self.clock)
        self.dccs: list[Dcc] = []
        for i, hub in enumerate(HUBS):
            self.store.add_premises("MPAN-%d" % i, [SUP_A], hub)
        self.store.add_premises("MPAN-B", [SUP_B], bytes.fromhex("00DB1234567800CB"))
        for i in range(n):
            self.store.add_device(dev_eui(i), "PPMID", "MPAN-%d" % (i % 2), manufacturer=MFR,
                                  model=0x0084, firmware_version=1)
        # another Supplier's PPMID of the same model: never in Supplier A's campaign by model
        self.store.add_device(OTHER_SUPPLIERS, "PPMID", "MPAN-B", manufacturer=MFR, model=0x0084,
                              firmware_version=1)
        h = images.otafile.parse_stream(fw["ppmid"], block=4096)
        self.store.cpl_add(MFR, 0x0084, h.header.file_version, h.image_sha256)
        self.hub_ids = {eui_hex(h): 0 for h in HUBS}
        self.dcc = self.new_dcc()
        # Supplier A's signing key, held by the campaign drivers (never by the DCC's database)
        self.signer = campaign.Signer.from_pem(
            (pkidir / "supplier-a.xml.key.pem").read_bytes(),
            (pkidir / "supplier-a.xml.cert.pem").read_bytes())
        self.answers: dict[str, list[str]] = {}  # device -> outcomes, one per request
        self.seen: list[tuple[str, str]] = []  # (device, request) the hubs received

    def new_dcc(self) -> Dcc:
        store = self.store if not self.dccs else DccStore(self.target, clock=self.clock)
        d = Dcc(store, pki.KeyStore(self.pkidir), pki.signing_pair(self.pkidir, "dcc.xml"))
        self.dccs.append(d)
        return d

    def close(self) -> None:
        for d in self.dccs:
            d.store.close()

    def create(self, name: str = "c1", **kw) -> dict:
        key = (self.pkidir / "supplier-a.xml.key.pem").read_bytes()
        cert = (self.pkidir / "supplier-a.xml.cert.pem").read_bytes()
        if "devices" not in kw:
            kw.setdefault("model", (MFR, 0x0084))
            kw.setdefault("from_version", 1)
        return campaign.create(self.store, name=name, key_pem=key, cert_pem=cert,
                               image=kw.pop("image", self.fw["ppmid"]), **kw)

    def hubs(self, default: str = "activated") -> int:
        """Each fake Comms Hub takes its WAN messages and answers each firmware request
        with the next outcome planned for its device (default `default`)."""
        n = 0
        for hub in self.hub_ids:
            for msg in self.dcc.wan_outbox(hub):
                self.dcc.wan_acked(hub, msg["id"])
                if msg.get("type") != "update_firmware":
                    continue
                self.seen.append((msg["device"], msg["request"]))
                plan = self.answers.get(msg["device"]) or []
                outcome = plan.pop(0) if plan else default
                if outcome is None:  # this Comms Hub never answers this request
                    continue
                self.hub_ids[hub] += 1
                self.dcc.wan_received(hub, {"id": self.hub_ids[hub], "type": "outcome",
                                            "request": msg["request"], "device": msg["device"],
                                            "outcome": outcome, "detail": {}})
                n += 1
        return n

    def requests(self) -> list[dict]:
        return [dict(r) for r in self.store.all(
            "SELECT request_id, device, outcome, srv FROM requests ORDER BY id")]


def eui_hex(b: bytes) -> str:
    return b.hex().upper()


@pytest.fixture
def world(db_target, pkidir, fw):
    w = World(db_target, pkidir, fw)
    yield w
    w.close()


def wave_counts(s: dict) -> list[tuple[int, int, int]]:
    return [(w["size"], w["ok"], w["failed"]) for w in s["waves_detail"]]


# ---------------------------------------------------------------- waves and thresholds

def test_waves_open_on_success_and_each_device_gets_one_request(world):
    s = world.create(waves=["1", "50%"], success_threshold="100%")
    assert [w["size"] for w in s["waves_detail"]] == [1, 3, 2] and s["srv"] == "11.4"
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    assert d.step() == 1  # wave 1: one device
    assert d.step() == 0  # nothing more before its outcome
    world.hubs()
    assert d.step() == 3  # wave 2 opened on wave 1's success
    world.hubs()
    assert d.step() == 2
    world.hubs()
    d.step()
    s = campaign.status(world.store, "c1")
    assert s["state"] == "done" and wave_counts(s) == [(1, 1, 0), (3, 3, 0), (2, 2, 0)]
    reqs = world.requests()
    assert sorted(r["device"] for r in reqs) == [dev_eui(i) for i in range(6)]
    assert all(r["outcome"] == "activated" and r["srv"] == "11.4" for r in reqs)
    assert all(x["outcome"] == "activated" and x["ok"] == 1 and x["attempts"] == 1
               for x in s["devices"])
    # each device's DUIS request got its one final signed response, to Supplier A
    finals = world.store.all("SELECT count(*) FROM responses WHERE final = 1 AND user = ?",
                             (SUP_A.hex().upper(),))
    assert finals[0][0] == 6


def test_error_threshold_stops_a_campaign_whose_image_fails_on_the_first_wave(world):
    world.create(waves=["2", "100%"], error_threshold="50%")
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    assert d.step() == 2
    world.hubs(default="rejected_by_device")
    d.step()
    s = campaign.status(world.store, "c1")
    assert s["state"] == "stopped" and "error threshold" in s["reason"]
    assert wave_counts(s)[0] == (2, 0, 2)
    outcomes = [x["outcome"] for x in s["devices"]]
    assert outcomes[:2] == ["rejected_by_device"] * 2 and outcomes[2:] == ["not_sent"] * 4
    assert d.step() == 0 and len(world.requests()) == 2  # nothing more ever goes out


def test_a_wave_below_the_success_threshold_stops_the_campaign(world):
    world.create(waves=["2"], success_threshold="100%", error_threshold="100%")
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    d.step()
    world.answers[dev_eui(0)] = ["rejected_by_device"]
    world.hubs()
    d.step()
    s = campaign.status(world.store, "c1")
    assert s["state"] == "stopped" and "success threshold" in s["reason"]
    assert len(world.requests()) == 2


def test_dcc_refusals_are_outcomes_and_count_as_failures(world):
    # an HCALCS image to PPMIDs: the DCC refuses every request (its own rules)
    world.create(image=world.fw["hcalcs"], srv="11.4", waves=["3"], error_threshold="100%",
                 success_threshold="0%")
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    assert d.step() == 6  # a success threshold of 0 % opens every wave at once
    s = campaign.status(world.store, "c1")
    assert s["state"] == "stopped" and "error threshold" in s["reason"]
    assert {x["outcome"] for x in s["devices"]} == {"refused"}
    assert all(x["code"].startswith("E") and "image type" in x["reason"] for x in s["devices"])
    refused = world.requests()
    assert len(refused) == 6 and {r["outcome"] for r in refused} == {"refused"}
    assert world.seen == []  # nothing reached a Comms Hub


def test_hcalcs_campaign_is_sr_11_1_and_distributed_is_its_success(world):
    hc = "00DB12345678A001"
    world.store.add_device(hc, "HCALCS", "MPAN-0", manufacturer=MFR, model=0x0086)
    h = images.otafile.parse_stream(world.fw["hcalcs"], block=4096)
    world.store.cpl_add(MFR, 0x0086, h.header.file_version, h.image_sha256)
    s = world.create(devices=[hc], image=world.fw["hcalcs"])
    assert s["srv"] == "11.1"
    with pytest.raises(CampaignError, match="cannot tell the SR"):
        world.create("mixed", devices=[hc, dev_eui(0)], image=world.fw["hcalcs"])
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    assert d.step() == 1
    world.hubs(default="distributed")
    d.step()
    s = campaign.status(world.store, "c1")
    assert s["state"] == "done" and s["devices"][0]["outcome"] == "distributed"
    assert world.requests()[0]["srv"] == "11.1"


# ---------------------------------------------------------------- window, rate, retries

def test_maintenance_window_defers_sends_until_it_opens(world):
    win = Window.daily("02:00", campaign.duration("1h"), "Europe/London")
    s = world.create(window=win)
    assert s["window_open"] is False
    assert s["next_window"] == datetime(2026, 3, 2, 2, 0, tzinfo=LONDON).timestamp()
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    assert d.step() == 0 and world.requests() == []
    world.clock.t = T0 + 3600 + 300  # 02:05 London
    assert d.step() == 6
    world.hubs()
    d.step()
    assert campaign.status(world.store, "c1")["state"] == "done"


def test_window_after_it_closes_and_in_summer_time():
    w = Window("30 2 * * 1-5", 3600, "Europe/London")  # weekdays 02:30-03:30 local
    monday = datetime(2026, 7, 6, 2, 45, tzinfo=LONDON).timestamp()  # BST: 01:45 UTC
    assert w.is_open(monday)
    assert not w.is_open(monday + 3600)
    saturday = datetime(2026, 7, 4, 2, 45, tzinfo=LONDON).timestamp()
    assert not w.is_open(saturday)
    assert w.next_open(saturday) == datetime(2026, 7, 6, 2, 30, tzinfo=LONDON).timestamp()
    # a window that spans midnight is open after it
    late = Window("0 23 * * *", 4 * 3600, "UTC")
    assert late.is_open(datetime(2026, 1, 2, 1, 0, tzinfo=ZoneInfo("UTC")).timestamp())


@pytest.mark.parametrize("cron, why", [("0 2 * *", "5 cron fields"),
                                       ("61 2 * * *", "outside 0..59"),
                                       ("0 2 * * MON", "names like MON")])
def test_bad_windows_are_named(cron, why):
    with pytest.raises(CampaignError, match=why):
        Window(cron, 60)
    with pytest.raises(CampaignError, match="IANA"):
        Window("0 2 * * *", 60, "Mars/Olympus")


def test_rate_limit_spreads_sends_over_minutes(world):
    world.create(rate=4)
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    assert d.step() == 4
    world.clock.t += 30
    assert d.step() == 0
    world.clock.t += 31
    assert d.step() == 2


def test_retries_with_backoff(world):
    world.create(devices=[dev_eui(0), dev_eui(1)], retries=2, backoff=60)
    world.answers[dev_eui(0)] = ["transfer_failed", "device_unreachable"]
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    assert d.step() == 2
    world.hubs()
    assert d.step() == 0  # device 0 waits for its backoff (60 s)
    world.clock.t += 59
    assert d.step() == 0
    world.clock.t += 2
    assert d.step() == 1
    world.hubs()
    assert d.step() == 0  # the outcome taken: the second backoff is 120 s from now
    world.clock.t += 119
    assert d.step() == 0
    world.clock.t += 2
    assert d.step() == 1
    world.hubs()
    d.step()
    s = campaign.status(world.store, "c1")
    dev0 = s["devices"][0]
    assert s["state"] == "done" and dev0["outcome"] == "activated" and dev0["attempts"] == 3
    assert len(dev0["requests"]) == 3 and len(set(dev0["requests"])) == 3
    # each of the three DUIS requests has its own single outcome
    by_rid = {r["request_id"]: r["outcome"] for r in world.requests()}
    assert [by_rid[r] for r in dev0["requests"]] == ["transfer_failed", "device_unreachable",
                                                     "activated"]


def test_retries_run_out(world):
    world.create(devices=[dev_eui(0)], retries=1, backoff=10, error_threshold="100%",
                 success_threshold="0%")
    world.answers[dev_eui(0)] = ["transfer_failed", "transfer_failed"]
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    d.step()
    world.hubs()
    d.step()
    world.clock.t += 10
    assert d.step() == 1
    world.hubs()
    world.clock.t += 1000
    assert d.step() == 0
    x = campaign.status(world.store, "c1")["devices"][0]
    assert x["outcome"] == "transfer_failed" and x["attempts"] == 2 and x["ok"] == 0


# ---------------------------------------------------------------- response deadlines

def test_a_request_never_answered_gets_no_response_once_and_a_late_answer_is_kept(world):
    world.create(devices=[dev_eui(0), dev_eui(1)])
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    assert d.step() == 2
    world.answers[dev_eui(0)] = [None]  # its Comms Hub never answers
    world.hubs()
    assert world.dcc.expire_requests(300) == 0  # not late yet
    world.clock.t += 301
    # two workers sweep at once: one outcome, one final response
    other = world.new_dcc()
    got: list[int] = []
    ts = [threading.Thread(target=lambda x=x: got.append(x.expire_requests(300)))
          for x in (world.dcc, other)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(got) == [0, 1]
    rid = campaign.status(world.store, "c1")["devices"][0]["request_id"]
    req = world.store.request_by_text(rid)
    assert req["outcome"] == "no_response" and req["code"] == "E21"
    assert "no answer from the Comms Hub" in req["reason"]
    finals = world.store.all("SELECT count(*) FROM responses WHERE final = 1 AND request = ?",
                             (req["id"],))
    assert finals[0][0] == 1
    # the hub's late answer: kept in the WAN inbox, no second outcome, no second response
    hub = world.store.device(dev_eui(0))["hub_eui"]
    world.hub_ids[hub] += 1
    late = {"id": world.hub_ids[hub], "type": "outcome", "request": rid,
            "device": dev_eui(0), "outcome": "activated", "detail": {}}
    world.dcc.wan_received(bytes.fromhex(hub), late)
    assert world.store.request_by_text(rid)["outcome"] == "no_response"
    assert world.store.all("SELECT count(*) FROM responses WHERE final = 1 AND request = ?",
                           (req["id"],))[0][0] == 1
    kept = world.store.all("SELECT body FROM wan_in WHERE hub_eui = ? AND msg_id = ?",
                           (hub, late["id"]))
    assert len(kept) == 1 and json.loads(kept[0][0])["outcome"] == "activated"
    assert world.store.device(dev_eui(0))["firmware_version"] == "00000001"
    with pytest.raises(Exception, match="above zero"):
        world.dcc.expire_requests(0)


def test_campaign_response_deadline_fails_retries_and_counts_against_thresholds(world):
    s = world.create(devices=[dev_eui(0), dev_eui(1), dev_eui(2)], retries=1, backoff=10,
                     response_timeout=600, error_threshold="50%", success_threshold="0%")
    assert s["config"]["response_timeout"] == 600
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    assert d.step() == 3
    world.answers[dev_eui(0)] = [None, "activated"]  # silent once, then answers
    world.answers[dev_eui(1)] = [None, None]  # never answers
    world.hubs()
    world.clock.t += 599
    assert d.step() == 0
    st = campaign.status(world.store, "c1")
    assert [x["state"] for x in st["devices"]] == ["sent", "sent", "done"]
    world.clock.t += 2  # past the deadline: both get no_response and wait for a retry
    assert d.step() == 0
    st = campaign.status(world.store, "c1")
    assert [(x["state"], x["last_outcome"]) for x in st["devices"][:2]] == \
        [("waiting", "no_response")] * 2
    world.clock.t += 10
    assert d.step() == 2  # the retries, new RequestIDs
    world.hubs()
    world.clock.t += 601
    d.step()
    st = campaign.status(world.store, "c1")
    dev = {x["device"]: x for x in st["devices"]}
    assert dev[dev_eui(0)]["outcome"] == "activated" and dev[dev_eui(0)]["attempts"] == 2
    assert dev[dev_eui(1)]["outcome"] == "no_response" and dev[dev_eui(1)]["ok"] == 0
    assert dev[dev_eui(1)]["attempts"] == 2 and dev[dev_eui(1)]["code"] == "E21"
    assert st["state"] == "done" and wave_counts(st) == [(3, 2, 1)]
    # every request has exactly one outcome; each device's requests are distinct
    reqs = world.requests()
    assert len(reqs) == 5 and all(r["outcome"] for r in reqs)
    assert sorted(r["outcome"] for r in reqs) == ["activated", "activated", "no_response",
                                                  "no_response", "no_response"]


def test_an_outcome_not_stored_is_taken_when_the_hub_sends_it_again(world, monkeypatch):
    """The database fails between recording the message id and writing the outcome (a
    PostgreSQL restart): nothing of the message is kept, so the resend is not a duplicate."""
    from hanota.dcc.store import DccStoreError

    world.create(devices=[dev_eui(0)])
    CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock).step()
    hub = world.store.device(dev_eui(0))["hub_eui"]
    (msg,) = world.dcc.wan_outbox(hub)
    real = world.store.finish_request

    def lost(*a, **kw):
        raise DccStoreError("DCC database: server closed the connection unexpectedly")

    monkeypatch.setattr(world.store, "finish_request", lost)
    up = {"id": 1, "type": "outcome", "request": msg["request"], "device": dev_eui(0),
          "outcome": "activated", "detail": {}}
    with pytest.raises(DccStoreError):
        world.dcc.wan_received(bytes.fromhex(hub), up)
    monkeypatch.setattr(world.store, "finish_request", real)
    assert world.store.all("SELECT count(*) FROM wan_in")[0][0] == 0
    world.dcc.wan_received(bytes.fromhex(hub), up)  # the hub sends it again (no ack came)
    assert world.store.request_by_text(msg["request"])["outcome"] == "activated"
    world.dcc.wan_received(bytes.fromhex(hub), up)  # and a real duplicate changes nothing
    assert world.store.all("SELECT count(*) FROM responses WHERE final = 1")[0][0] == 1


def test_no_response_reaches_the_error_threshold(world):
    world.create(devices=[dev_eui(0), dev_eui(1)], retries=0, response_timeout=60,
                 error_threshold="50%")
    world.answers[dev_eui(0)] = [None]
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    d.step()
    world.hubs()
    world.clock.t += 61
    d.step()
    s = campaign.status(world.store, "c1")
    assert s["state"] == "stopped" and "error threshold" in s["reason"]
    assert s["devices"][0]["outcome"] == "no_response"
    with pytest.raises(CampaignError, match="response timeout"):
        world.create("c2", devices=[dev_eui(2)], response_timeout=-1)


def test_activation_records_the_new_firmware_version_so_no_second_campaign_targets_it(world):
    world.create(devices=[dev_eui(0), dev_eui(1)])
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    d.step()
    world.answers[dev_eui(1)] = ["rejected_by_device"]
    world.hubs()
    d.step()
    assert world.store.device(dev_eui(0))["firmware_version"] == "00000002"
    assert world.store.device(dev_eui(1))["firmware_version"] == "00000001"  # not activated
    s = world.create("again")  # by model, from version 1: device 0 is no longer there
    assert dev_eui(0) not in [x["device"] for x in s["devices"]]
    assert dev_eui(1) in [x["device"] for x in s["devices"]]
    # a version the Comms Hub reports (the device's Activation Alert) is what is kept
    d.step()
    hub = world.store.device(dev_eui(1))["hub_eui"]
    rid = campaign.status(world.store, "again")["devices"][0]["request_id"]
    assert campaign.status(world.store, "again")["devices"][0]["device"] == dev_eui(1)
    for msg in world.dcc.wan_outbox(hub):
        world.dcc.wan_acked(hub, msg["id"])
    world.hub_ids[hub] += 1
    world.dcc.wan_received(bytes.fromhex(hub), {
        "id": world.hub_ids[hub], "type": "outcome", "request": rid, "device": dev_eui(1),
        "outcome": "activated", "detail": {"version": "00000003"}})
    assert world.store.device(dev_eui(1))["firmware_version"] == "00000003"


# ---------------------------------------------------------------- pause, resume, cancel

def test_pause_resume_cancel(world):
    world.create(waves=["2", "2", "2"])
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    assert d.step() == 2
    campaign.pause(world.store, "c1")
    world.hubs()
    assert d.step() == 0  # outcomes taken, wave 2 opened, but nothing sent while paused
    s = campaign.status(world.store, "c1")
    assert s["state"] == "paused" and wave_counts(s)[0] == (2, 2, 0)
    with pytest.raises(CampaignError, match="is paused"):
        campaign.pause(world.store, "c1")
    campaign.resume(world.store, "c1")
    assert d.step() == 2
    campaign.cancel(world.store, "c1")
    world.hubs()  # the requests already sent still get their outcomes
    assert d.step() == 0
    s = campaign.status(world.store, "c1")
    assert s["state"] == "cancelled"
    assert [x["outcome"] for x in s["devices"]] == ["activated"] * 4 + ["cancelled"] * 2
    with pytest.raises(CampaignError, match="cancelled: it cannot be made running"):
        campaign.resume(world.store, "c1")
    assert len(world.requests()) == 4


# ---------------------------------------------------------------- several workers

def step_in_threads(drivers, steps: int) -> None:
    """Each driver takes `steps` steps in its own thread, all at once; none may raise."""
    errors: list[BaseException] = []

    def run(d):
        try:
            for _ in range(steps):
                d.step()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=run, args=(d,)) for d in drivers]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


def test_two_workers_share_a_campaign_without_double_sending(world):
    world.create(waves=["100%"])
    d1 = CampaignDriver(world.dcc, signers=[world.signer], worker="w1", clock=world.clock, batch=1)
    d2 = CampaignDriver(world.new_dcc(), signers=[world.signer], worker="w2", clock=world.clock,
                        batch=1)
    step_in_threads([d1, d2], 10)
    devices = [r["device"] for r in world.requests()]
    assert sorted(devices) == [dev_eui(i) for i in range(6)]  # each exactly once
    assert d1.sent + d2.sent == 6
    workers = {r[0] for r in world.store.all("SELECT worker FROM campaign_sends")}
    assert workers <= {"w1", "w2"}
    assert len(world.seen) == 0 and world.hubs() == 6


@pytest.mark.parametrize("outside", [0, 2])
def test_two_workers_preparing_at_once_send_valid_unique_requests_with_rising_counters(
        db_target, pkidir, fw, outside):
    """Each worker builds, signs and checks its request outside the write lock, so two
    can prepare with the same Supplier counter at once (the clock here stands still, so
    both take the last + 1): the one that commits second is overtaken, and prepares its
    request again with a higher counter, outside the lock (`outside` times at most) or
    under it. Every request is then accepted, one per device, with a RequestID of its own
    and counters rising in the order the DCC took them."""
    w = World(db_target, pkidir, fw, n=12)
    try:
        w.create(waves=["100%"])
        drivers = [CampaignDriver(w.dcc, signers=[w.signer], worker="w1", clock=w.clock, batch=3),
                   CampaignDriver(w.new_dcc(), signers=[w.signer], worker="w2", clock=w.clock,
                                  batch=3)]
        for d in drivers:
            d.retries_outside = outside
        meet = threading.Barrier(2, timeout=30)
        for d in drivers:
            real = d.dcc.check

            def check(xml, real=real, first=[True]):  # noqa: B006 - one flag per driver
                chk = real(xml)
                if first[0]:  # both workers hold a prepared request before either commits
                    first[0] = False
                    meet.wait()
                return chk

            d.dcc.check = check
        step_in_threads(drivers, 20)
        # the overtaken one prepared its request again: under the lock when it may not
        # outside (with a clock standing still the retries outside can be overtaken too)
        if outside == 0:
            assert sum(d.redone for d in drivers) >= 1
            assert sum(d.retried for d in drivers) == 0
        else:
            assert sum(d.retried for d in drivers) >= 1
        rows = w.store.all("SELECT id, request_id, user, counter, device, state, outcome "
                           "FROM requests ORDER BY id")
        assert sorted(r[4] for r in rows) == [dev_eui(i) for i in range(12)]
        assert all(r[5] == "sent" and r[6] is None for r in rows)  # all accepted, none refused
        assert len({r[1] for r in rows}) == len(rows)
        counters = [int(r[3]) for r in rows]
        assert all(a < b for a, b in zip(counters, counters[1:])), counters
        assert w.store.last_counter(SUP_A) == counters[-1]
        sends = w.store.all("SELECT device, attempt, request_id, worker FROM campaign_sends")
        assert len(sends) == 12 and {s[1] for s in sends} == {1}
        assert {s[2] for s in sends} == {r[1] for r in rows}
        assert {s[3] for s in sends} == {"w1", "w2"}
        # one WAN message per request, naming it; the hubs answer and each gets one outcome
        assert w.hubs() == 12 and sorted(r for _, r in w.seen) == sorted(r[1] for r in rows)
        for d in drivers:
            d.step()
        assert campaign.status(w.store, "c1")["state"] == "done"
    finally:
        w.close()


def test_a_database_made_before_claims_gets_the_claim_columns(db_target, pkidir, fw):
    """campaign_devices from before sends were claimed (no claimed_by / claim_until): the
    columns are added, the rows kept, and the campaign sends."""
    old = campaign._SCHEMA[1].replace("    claimed_by TEXT,\n    claim_until REAL,\n", "")
    assert "claim" not in old
    w = World(db_target, pkidir, fw, n=2)
    try:
        with w.store.tx() as c:
            c.execute(campaign._SCHEMA[0])
            c.execute(old)
        w.create(waves=["100%"])
        assert CampaignDriver(w.dcc, signers=[w.signer], worker="w1", clock=w.clock).step() == 2
        rows = w.store.all("SELECT device, state, claimed_by FROM campaign_devices")
        assert sorted(tuple(r) for r in rows) == [(dev_eui(0), "sent", None),
                                                  (dev_eui(1), "sent", None)]
    finally:
        w.close()


class Killed(BaseException):
    """A worker dying in the middle of a send."""


def test_a_worker_killed_mid_send_leaves_nothing_and_another_sends_it(world):
    world.create(devices=[dev_eui(0)])
    doomed = world.new_dcc()
    real = doomed.record

    def record_then_die(chk, **kw):  # inside the send's write transaction, after the DCC's writes
        real(chk, **kw)
        raise Killed()

    doomed.record = record_then_die
    with pytest.raises(Killed):
        CampaignDriver(doomed, signers=[world.signer], worker="w1", clock=world.clock).step()
    assert world.requests() == [] and world.dcc.wan_outbox(HUBS[0]) == []
    # the dead worker's claim on the device holds until its lease runs out
    w2 = CampaignDriver(world.dcc, signers=[world.signer], worker="w2", clock=world.clock)
    assert w2.step() == 0
    world.clock.t += w2.claim_lease + 1
    assert w2.step() == 1
    assert [r["device"] for r in world.requests()] == [dev_eui(0)]


def test_a_worker_killed_while_preparing_leaves_nothing(world):
    """Killed after the request was signed and checked, before its transaction: nothing
    of it is in the DCC (its counter was never taken), and the next send goes out."""
    world.create(devices=[dev_eui(0), dev_eui(1)])
    doomed = world.new_dcc()
    real = doomed.check

    def check_then_die(xml):
        real(xml)
        raise Killed()

    doomed.check = check_then_die
    with pytest.raises(Killed):
        CampaignDriver(doomed, signers=[world.signer], worker="w1", clock=world.clock).step()
    assert world.requests() == [] and world.store.last_counter(SUP_A) is None
    world.clock.t += CampaignDriver.claim_lease + 1
    assert CampaignDriver(world.dcc, signers=[world.signer], worker="w2",
                          clock=world.clock).step() == 2
    assert sorted(r["device"] for r in world.requests()) == [dev_eui(0), dev_eui(1)]


# ---------------------------------------------------------------- the Supplier's key

def key_markers(pkidir, org: str = "supplier-a") -> list[bytes]:
    """What would show the Supplier's private key stored: its PEM's first line of base64,
    its DER (PKCS#8) and its private scalar."""
    from cryptography.hazmat.primitives import serialization

    pem = (pkidir / ("%s.xml.key.pem" % org)).read_bytes()
    key = pki.load_key(pem)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return [pem.splitlines()[1], der, key.private_numbers().private_value.to_bytes(32, "big")]


def row_holds(rows, markers: list[bytes]) -> bool:
    for r in rows:
        for v in tuple(r):
            b = bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else \
                str(v).encode() if v is not None else b""
            if any(m in b for m in markers):
                return True
    return False


def test_the_dcc_keeps_the_certificate_never_the_key_and_only_a_signer_sends(world):
    """create checks the key against the certificate and drops it: no row of the campaign
    tables holds it. A driver without the Supplier's key moves the campaign on (outcomes,
    waves) but sends nothing, and status says the campaign waits for a signer; one holding
    the key sends, and its heartbeat lease shows in status until it runs out or it leaves."""
    world.create(waves=["100%"])
    cols = {r[1] for r in world.store.all("PRAGMA table_info(campaigns)")} \
        if not world.store.postgres else {r[0] for r in world.store.all(
            "SELECT column_name FROM information_schema.columns WHERE table_name = "
            "'campaigns' AND table_schema = current_schema()")}
    assert "signer_key" not in cols and "signer_cert" in cols
    markers = key_markers(world.pkidir)
    for table in ("campaigns", "campaign_devices", "campaign_sends", "campaign_signers"):
        assert not row_holds(world.store.all("SELECT * FROM %s" % table), markers), table
    s = campaign.status(world.store, "c1", devices=False)
    assert s["waiting_for_signer"] and s["signer"] == {"live": [], "last_seen": None,
                                                       "other_cert": []}
    keyless = CampaignDriver(world.dcc, worker="dcc", clock=world.clock)
    assert keyless.step() == 0 and world.requests() == []
    d = CampaignDriver(world.new_dcc(), signers=[world.signer], worker="sup-a",
                       clock=world.clock)
    assert d.step() == 6
    s = campaign.status(world.store, "c1", devices=False)
    assert [x["worker"] for x in s["signer"]["live"]] == ["sup-a"]
    assert not s["waiting_for_signer"]
    # the keyless driver takes the outcomes and finishes the campaign
    world.hubs()
    keyless.step()
    assert campaign.status(world.store, "c1", devices=False)["state"] == "done"
    assert not row_holds(world.store.all("SELECT * FROM requests"), markers)
    # the lease runs out without heartbeats; leave() ends it at once
    world.clock.t += campaign.SIGNER_LEASE + 1
    sig = campaign.status(world.store, "c1", devices=False)["signer"]
    assert sig["live"] == [] and sig["last_seen"] == T0 + campaign.SIGNER_LEASE
    d.heartbeat(force=True)
    assert campaign.status(world.store, "c1", devices=False)["signer"]["live"]
    d.leave()
    sig = campaign.status(world.store, "c1", devices=False)["signer"]
    assert sig["live"] == [] and sig["last_seen"] == world.clock.t


def test_a_send_only_driver_leaves_outcomes_and_waves_to_the_dccs_workers(world):
    """`advance=False` (campaign drive): it sends what the open waves allow and nothing
    else; the keyless DCC worker takes the outcomes and opens the next wave."""
    world.create(waves=["1", "100%"], success_threshold="100%")
    sender = CampaignDriver(world.dcc, signers=[world.signer], worker="sup-a",
                            clock=world.clock, advance=False)
    dcc = CampaignDriver(world.new_dcc(), worker="dcc", clock=world.clock)
    assert sender.step() == 1 and world.hubs() == 1
    assert sender.step() == 0  # the outcome is not its to take: wave 2 stays shut
    s = campaign.status(world.store, "c1", devices=False)
    assert s["wave"] == 1 and s["totals"]["sent"] == 1
    assert dcc.step() == 0  # takes the outcome, opens wave 2, sends nothing
    assert campaign.status(world.store, "c1", devices=False)["wave"] == 2
    assert sender.step() == 5 and world.hubs() == 5
    dcc.step()
    assert campaign.status(world.store, "c1", devices=False)["state"] == "done"


def other_cert_of(pkidir, org: str = "supplier-a") -> campaign.Signer:
    """A second XML-signing key and certificate with the same Supplier's entity ID."""
    ca_key, ca_cert = pki.signing_pair(pkidir, "root")
    key, cert = pki.make_org_cert(ca_key, ca_cert, role=pki.XML_SIGN_USER_ROLE,
                                  entity_id=pki.ORGS[org][1], usage="ds", cn=org + ".xml2")
    return campaign.Signer(key, cert)


def test_a_signer_sends_only_campaigns_of_its_supplier_and_certificate(world, caplog):
    world.create(waves=["100%"])
    b = campaign.Signer.from_pem((world.pkidir / "supplier-b.xml.key.pem").read_bytes(),
                                 (world.pkidir / "supplier-b.xml.cert.pem").read_bytes())
    other = other_cert_of(world.pkidir)
    assert other.supplier == world.signer.supplier == SUP_A.hex().upper()
    assert other.cert_sha256 != world.signer.cert_sha256
    with caplog.at_level("WARNING", logger="hanota.dcc.campaign"):
        assert CampaignDriver(world.dcc, signers=[b, other], worker="x",
                              clock=world.clock).step() == 0
    assert "not the campaign's" in caplog.text and "c1" in caplog.text
    sig = campaign.status(world.store, "c1", devices=False)
    assert sig["waiting_for_signer"] and sig["signer"]["other_cert"] == ["x"]
    # one driver may hold several Suppliers' keys: the right one signs
    d = CampaignDriver(world.new_dcc(), signers=[b, world.signer], clock=world.clock)
    assert d.step() == 6
    assert {r[0] for r in world.store.all("SELECT user FROM requests")} == {SUP_A.hex().upper()}


def test_a_key_not_of_its_certificate_is_refused_naming_it(world, tmp_path):
    key_b = (world.pkidir / "supplier-b.xml.key.pem").read_bytes()
    cert_a = (world.pkidir / "supplier-a.xml.cert.pem").read_bytes()
    with pytest.raises(CampaignError, match="is not the one its certificate"):
        campaign.Signer.from_pem(key_b, cert_a)
    with pytest.raises(CampaignError, match="is not the one its certificate"):
        campaign.create(world.store, name="c1", key_pem=key_b, cert_pem=cert_a,
                        image=world.fw["ppmid"], devices=[dev_eui(0)])
    assert campaign.list_campaigns(world.store) == []
    with pytest.raises(CampaignError, match="certificate .*nope.pem: not an X.509"):
        (tmp_path / "nope.pem").write_bytes(b"junk")
        campaign.Signer.from_files(str(world.pkidir / "supplier-a.xml.key.pem"),
                                   str(tmp_path / "nope.pem"))
    with pytest.raises(CampaignError, match="key .*supplier-b.xml.key.pem is not the one "
                                            "certificate .*supplier-a.xml.cert.pem"):
        campaign.Signer.from_files(str(world.pkidir / "supplier-b.xml.key.pem"),
                                   str(world.pkidir / "supplier-a.xml.cert.pem"))


OLD_CAMPAIGNS = campaign._SCHEMA[0].replace("    signer_cert BLOB NOT NULL,\n",
                                            "    signer_key BLOB NOT NULL,\n"
                                            "    signer_cert BLOB NOT NULL,\n")


def test_a_database_made_when_campaigns_kept_the_key_has_it_wiped(db_target, pkidir, fw,
                                                                   caplog):
    """campaigns from when the DCC kept the Supplier's key (signer_key): at open the keys
    are overwritten and the column dropped, the log naming the campaigns; the campaign
    and its devices are kept and wait for a signer, then send. On SQLite the key's bytes
    are nowhere in the database file afterwards."""
    assert "signer_key" in OLD_CAMPAIGNS
    w = World(db_target, pkidir, fw, n=2)
    markers = key_markers(pkidir)
    try:
        with w.store.tx() as c:
            c.execute(OLD_CAMPAIGNS)
            c.execute("INSERT INTO campaigns (name, supplier, srv, image, image_hash, version, "
                      "signer_key, signer_cert, config, state, wave, waves, created, updated) "
                      "VALUES ('old', ?, '11.4', ?, 'x', '00000002', ?, ?, ?, 'running', 1, "
                      "1, 0, 0)", (SUP_A.hex().upper(), fw["ppmid"],
                                   (pkidir / "supplier-a.xml.key.pem").read_bytes(),
                                   (pkidir / "supplier-a.xml.cert.pem").read_bytes(),
                                   json.dumps(dict(campaign.DEFAULTS, waves=["100%"],
                                                   sizes=[2]))))
        with w.store.tx() as c:
            for t in campaign._SCHEMA[1:]:
                c.execute(t)
            for i in range(2):
                c.execute("INSERT INTO campaign_devices (campaign, device, seq, wave, state) "
                          "VALUES ('old', ?, ?, 1, 'waiting')", (dev_eui(i), i))
        assert row_holds(w.store.all("SELECT * FROM campaigns"), markers)
        with caplog.at_level("WARNING", logger="hanota.dcc.campaign"):
            st = campaign.status(w.store, "old")  # the first use of the campaign tables
        assert "wiped" in caplog.text and "old (Supplier %s)" % SUP_A.hex().upper() \
            in caplog.text
        assert not row_holds(w.store.all("SELECT * FROM campaigns"), markers)
        assert st["state"] == "running" and st["waiting_for_signer"]
        assert [x["device"] for x in st["devices"]] == [dev_eui(0), dev_eui(1)]
        assert CampaignDriver(w.dcc, clock=w.clock).step() == 0
        assert CampaignDriver(w.dcc, signers=[w.signer], clock=w.clock).step() == 2
    finally:
        w.close()
    if not db_target.startswith("postgresql"):
        import pathlib

        for f in (db_target, db_target + "-wal"):
            data = pathlib.Path(f).read_bytes() if pathlib.Path(f).exists() else b""
            assert not any(m in data for m in markers), f


def test_cli_drive_signs_the_suppliers_campaigns_and_status_names_the_signer(
        tmp_path, pkidir, fw):
    db = str(tmp_path / "dcc.db")
    w = World(db, pkidir, fw)
    w.create(waves=["100%"])
    w.close()
    run = CliRunner().invoke
    r = run(cli, ["campaign", "status", "c1", "--db", db])
    assert r.exit_code == 0 and "waiting: no signer for Supplier %s has run" \
        % SUP_A.hex().upper() in r.output, r.output
    # another certificate of Supplier A: not the campaign's
    other = other_cert_of(pkidir)
    from cryptography.hazmat.primitives import serialization
    (tmp_path / "o.key.pem").write_bytes(other.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "o.cert.pem").write_bytes(other.cert.public_bytes(serialization.Encoding.PEM))
    r = run(cli, ["campaign", "drive", "--db", db, "--pki", str(pkidir), "--once",
                  "--key", str(tmp_path / "o.key.pem"), "--cert", str(tmp_path / "o.cert.pem")])
    assert r.exit_code == 1 and "is not the one campaign c1 of Supplier" in r.output, r.output
    r = run(cli, ["campaign", "drive", "--db", db, "--pki", str(pkidir), "--once",
                  "--key", str(pkidir / "supplier-b.xml.key.pem"),
                  "--cert", str(pkidir / "supplier-a.xml.cert.pem")])
    assert r.exit_code == 1 and "is not the one certificate" in r.output, r.output
    # the DCC's key store without any private key: the Supplier's process holds no DCC key
    import shutil
    certs = tmp_path / "certs"
    shutil.copytree(pkidir, certs)
    for k in certs.glob("*.key.pem"):
        k.unlink()
    r = run(cli, ["campaign", "drive", "--db", db, "--pki", str(certs), "--once",
                  "--worker", "sup-a", "--key", str(pkidir / "supplier-a.xml.key.pem"),
                  "--cert", str(pkidir / "supplier-a.xml.cert.pem")])
    assert r.exit_code == 0 and "6 requests sent" in r.output, r.output
    with DccStore(db) as st:
        assert len(st.all("SELECT 1 FROM requests WHERE state = 'sent'")) == 6
    r = run(cli, ["campaign", "status", "c1", "--db", db])
    assert r.exit_code == 0 and "no signer for Supplier %s since" % SUP_A.hex().upper() \
        in r.output and "waiting:" not in r.output, r.output


# ---------------------------------------------------------------- creating: bad input

def test_bad_campaigns_are_refused_naming_the_problem(world):
    with pytest.raises(CampaignError, match="wave size"):
        world.create(waves=["0"])
    with pytest.raises(CampaignError, match="error threshold"):
        world.create(error_threshold="150%")
    with pytest.raises(CampaignError, match="no device of manufacturer"):
        world.create(from_version=9)
    with pytest.raises(CampaignError, match="not a well-formed OTA file"):
        world.create(image=b"not an image")
    world.create()
    with pytest.raises(CampaignError, match="exists already"):
        world.create()
    with pytest.raises(CampaignError, match="no campaign"):
        campaign.pause(world.store, "nope")
    # by model: only Supplier A's premises
    s = campaign.status(world.store, "c1")
    assert OTHER_SUPPLIERS not in [x["device"] for x in s["devices"]]


# ---------------------------------------------------------------- the CLI and the report

def test_cli_create_status_pause_resume_cancel(tmp_path, pkidir, fw):
    db = str(tmp_path / "dcc.db")
    w = World(db, pkidir, fw)
    w.close()
    img = tmp_path / "ppmid.ota"
    img.write_bytes(fw["ppmid"])
    run = CliRunner().invoke
    r = run(cli, ["campaign", "create", "spring", "--db", db,
                  "--key", str(pkidir / "supplier-a.xml.key.pem"),
                  "--cert", str(pkidir / "supplier-a.xml.cert.pem"), "--image", str(img),
                  "--model", "%04X/0084" % MFR, "--from-version", "00000001",
                  "--wave", "1", "--wave", "50%", "--rate", "30",
                  "--window-start", "02:00", "--window-duration", "4h",
                  "--tz", "Europe/London"])
    assert r.exit_code == 0, r.output
    assert "spring" in r.output and "6 devices" in r.output
    r = run(cli, ["campaign", "status", "spring", "--db", db])
    assert r.exit_code == 0, r.output
    assert "wave 1" in r.output and dev_eui(0) in r.output and "running" in r.output
    r = run(cli, ["campaign", "status", "spring", "--db", db, "--json"])
    data = json.loads(r.output)
    assert [x["size"] for x in data["waves_detail"]] == [1, 3, 2]
    assert "signer_key" not in data and "image" not in data
    for verb, state in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
        r = run(cli, ["campaign", verb, "spring", "--db", db])
        assert r.exit_code == 0 and state in r.output, r.output
    r = run(cli, ["campaign", "resume", "spring", "--db", db])
    assert r.exit_code == 1 and "cancelled" in r.output
    r = run(cli, ["campaign", "create", "x", "--db", db,
                  "--key", str(pkidir / "supplier-a.xml.key.pem"),
                  "--cert", str(pkidir / "supplier-a.xml.cert.pem"), "--image", str(img),
                  "--device", dev_eui(0), "--window-start", "25:00",
                  "--window-duration", "1h"])
    assert r.exit_code != 0 and "HH:MM" in r.output
    r = run(cli, ["campaign", "status", "--db", db])
    assert r.exit_code == 0 and "spring" in r.output


def test_report_shows_waves_and_outcomes(world):
    from hanota.hub import report as rep

    world.create(waves=["2", "100%"], error_threshold="50%")
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    d.step()
    world.hubs(default="rejected_by_device")
    d.step()
    data = rep.duis_data(world.store)
    assert [c["name"] for c in data["campaigns"]] == ["c1"]
    html = "\n".join(rep._duis_html(data))
    assert "Campaign c1" in html and "stopped" in html and "wave 2" in html.lower()
    assert "rejected_by_device" in html and "not_sent" in html
    text = "\n".join(rep.duis_lines(data))
    assert "campaign c1" in text


def test_a_sends_deadline_travels_with_it_and_an_expired_answer_is_retried(world):
    """The campaign's response deadline goes in the request's WAN message (`expires`, the
    DCC's clock), so a Comms Hub that gets it late does not act on it; the hub's answer
    `expired` (it came before the DCC's own sweep) is a failure that is retried."""
    world.create(devices=[dev_eui(0)], retries=1, backoff=10, response_timeout=600,
                 success_threshold="0%")
    d = CampaignDriver(world.dcc, signers=[world.signer], clock=world.clock)
    sent = world.clock.t
    assert d.step() == 1
    hub = world.store.device(dev_eui(0))["hub_eui"]
    (msg,) = world.dcc.wan_outbox(hub)
    assert msg["expires"] == pytest.approx(sent + 600, abs=1)
    world.dcc.wan_received(bytes.fromhex(hub), {
        "id": 1, "type": "outcome", "request": msg["request"], "device": dev_eui(0),
        "outcome": "expired", "detail": {"reason": "reached the Comms Hub late"}})
    req = world.store.request_by_text(msg["request"])
    assert (req["outcome"], req["code"]) == ("expired", "E21")
    d.step()
    (x,) = campaign.status(world.store, "c1")["devices"]
    assert (x["state"], x["last_outcome"]) == ("waiting", "expired")
    world.clock.t += 11
    assert d.step() == 1  # the retry: a new request, with its own deadline
    (again,) = [m for m in world.dcc.wan_outbox(hub) if m["request"] != msg["request"]]
    assert again["expires"] == pytest.approx(world.clock.t + 600, abs=1)
