"""`hanota hub serve` (a Comms Hub with its WAN to the DCC) SIGKILLed at random moments while
a Supplier's requests flow through the DCC: no request is lost, none is acted on twice.

The DCC runs in-process (`DccRunner`); the Comms Hub is a child process. The Supplier POSTs
signed SR 11.2 requests for devices the DCC knows but the Comms Hub has never had in its
device log, so each one ends at the Comms Hub at once (its own rule: not_authorized) and comes
back over the WAN as an outcome. The hub is killed K times at random moments and started again
after a random short pause. At the end every request has its one final DUIS response, the
DCC's outbox is empty, and the Comms Hub holds exactly one hub request per DCC message (none
applied twice, whatever the DCC redelivered after a lost acknowledgement).
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from hanota.dcc import duis, pki, xmlsig
from hanota.dcc.http import DccRunner
from hanota.dcc.store import DccStore
from hanota.dcc.wan import eui_hex
from hanota.hub import HubDB
from support.fakedevice import install_code
from support.hubfixtures import eui_str
from support.servekit import free_udp_port

pytestmark = pytest.mark.timeout(120)

REQUESTS = 24
KILLS = 3
MPAN = "1100000000077"


def _start(args: list[str], log) -> subprocess.Popen:
    start = log.tell()
    p = subprocess.Popen([sys.executable, "-c", "from hanota.cli import main; main()", *args],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    end = time.monotonic() + 20
    while True:
        with open(log.name) as f:
            f.seek(start)
            if "serving on udp" in f.read():
                return p
        assert p.poll() is None, "hub serve exited early"
        assert time.monotonic() < end, "hub serve did not start"
        time.sleep(0.05)


@pytest.mark.parametrize("seed", [1, 2])
def test_comms_hub_killed_loses_and_repeats_nothing(tmp_path, seed):
    rnd = random.Random(seed)
    pki.init(tmp_path / "pki")
    key, cert = pki.signing_pair(tmp_path / "pki", "supplier-a.xml")
    user = pki.describe(cert).entity_id
    hub_db = str(tmp_path / "hub.db")
    with HubDB.open(hub_db) as db:
        hub_eui = eui_hex(db.current_hub()["eui"])
    devices = [bytes.fromhex(eui_str(100 + i).replace(":", "")) for i in range(REQUESTS)]
    with DccStore(tmp_path / "dcc.db") as store:
        store.add_premises(MPAN, [user], hub_eui)
        for i, d in enumerate(devices):
            store.add_device(d, "PPMID", MPAN, install_code=install_code(100 + i))
    log = open(tmp_path / "hub.log", "w+")
    procs: list[subprocess.Popen] = []
    acks: list[str] = []
    with DccRunner(str(tmp_path / "dcc.db"), str(tmp_path / "pki"), wan_poll=0.05) as dcc:
        args = ["hub", "serve", "--dcc", dcc.url, "--db", hub_db, "--udp",
                "127.0.0.1:%d" % free_udp_port(), "--poll", "0.05"]

        def submit() -> None:
            for i, d in enumerate(devices):
                xml = xmlsig.sign(duis.build_request("11.2", user, d, 5000 + i), key, cert)
                req = urllib.request.Request(dcc.url + "/api/v1/serviceD", data=xml,
                                             headers={"Content-Type": "application/xml"})
                with urllib.request.urlopen(req, timeout=30) as r:
                    ack = duis.parse_response(r.read())
                assert ack["code"] == "I99", ack
                acks.append(ack["request_id"])
                time.sleep(rnd.uniform(0.0, 0.06))
        try:
            procs.append(_start(args, log))
            sender = threading.Thread(target=submit)
            sender.start()
            kills = []
            for _ in range(KILLS):
                time.sleep(rnd.uniform(0.05, 0.5))
                procs[-1].send_signal(signal.SIGKILL)
                procs[-1].wait(10)
                kills.append(len(acks))
                time.sleep(rnd.uniform(0.0, 0.3))
                procs.append(_start(args, log))
            sender.join(60)
            assert len(acks) == REQUESTS
            what = "seed %d, kills after %s requests" % (seed, kills)
            store = dcc.dcc.store

            def settled() -> bool:
                return not store.wan_outbox(hub_eui) and store.one(
                    "SELECT count(*) FROM requests WHERE outcome IS NULL")[0] == 0
            end = time.monotonic() + 60
            while not settled():
                assert time.monotonic() < end, "not settled (%s): %d pending, outbox %d" % (
                    what, store.one("SELECT count(*) FROM requests WHERE outcome IS NULL")[0],
                    len(store.wan_outbox(hub_eui)))
                time.sleep(0.1)
            finals = store.all("SELECT r.request_id, s.code FROM responses s JOIN requests r "
                               "ON r.id = s.request WHERE s.final = 1")
            assert sorted(f[0] for f in finals) == sorted(acks), what
            outcomes = {r[0] for r in store.all("SELECT outcome FROM requests")}
            assert outcomes == {"not_authorized"}, (what, outcomes)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(15)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(10)
            log.close()
    with HubDB.open(hub_db) as db:
        n = db.one("SELECT count(*) FROM requests")[0]
        mapped = db.all("SELECT dcc_request FROM ch_wan_requests")
        assert n == REQUESTS, "%d hub requests for %d DCC messages (%s)" % (n, REQUESTS, what)
        assert len({m[0] for m in mapped}) == REQUESTS == len(mapped)
        assert db.one("SELECT count(*) FROM ch_wan_in WHERE done IS NULL")[0] == 0
        sent = [json.loads(r[0]) for r in db.all("SELECT body FROM ch_wan_out")]
        assert len(sent) == REQUESTS  # one outcome each, queued once
