"""Several `hanota dcc serve` processes share a campaign (SQLite and PostgreSQL): one is killed
(SIGKILL) in the middle of the campaign, two others take its work over, and every device ends
with exactly one DUIS request and one WAN message, none sent twice. No Comms Hub is connected:
the messages wait in the DCC's WAN outbox, as for hubs offline during a wave."""
from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest

from hanota import images
from hanota.dcc import campaign, pki
from hanota.dcc.store import DccStore
from support import otabuild
from support.dccworld import dcc_serve, kill_commands, stop_commands

pytestmark = pytest.mark.timeout(180)

N = 240
SUP_A = pki.ORGS["supplier-a"][1]


def wait_for(cond, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting for " + what
        time.sleep(0.02)


def test_workers_share_a_campaign_and_take_over_a_killed_one(tmp_path, db_target):
    pki_dir = tmp_path / "pki"
    pki.init(pki_dir)
    data = images.build_image(random.Random(3).randbytes(300), key=otabuild.new_key(),
                              version=2, role="ppmid")
    with DccStore(db_target) as store:
        for h in range(4):
            store.add_premises("MPAN-%d" % h, [SUP_A], "00DB1234567800C%d" % h)
        for i in range(N):
            store.add_device("00DB1234%08X" % i, "PPMID", "MPAN-%d" % (i % 4),
                             manufacturer=images.DEFAULT_MANUFACTURER, model=0x0084,
                             firmware_version=1)
        s = images.otafile.parse_stream(data, block=4096)
        store.cpl_add(images.DEFAULT_MANUFACTURER, 0x0084, s.header.file_version,
                      s.image_sha256)
        campaign.create(store, name="big", image=data,
                        key_pem=(pki_dir / "supplier-a.xml.key.pem").read_bytes(),
                        cert_pem=(pki_dir / "supplier-a.xml.cert.pem").read_bytes(),
                        model=(images.DEFAULT_MANUFACTURER, 0x0084), from_version=1)
    env = dict(os.environ, HANOTA_HOME=str(tmp_path / "home"))
    procs = []
    watch = DccStore(db_target)
    try:
        def sends() -> int:
            return int(watch.one("SELECT count(*) FROM campaign_sends")[0])

        def serve(name: str):
            p, _ = dcc_serve(["--db", db_target, "--pki", str(pki_dir), "--listen",
                              "127.0.0.1:0", "--worker", name], tmp_path / ("%s.log" % name),
                             env)
            procs.append(p)
            return p

        a = serve("a")
        wait_for(lambda: sends() >= 10, "worker a's first sends")
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        procs.remove(a)
        assert sends() < N, "worker a sent everything before it was killed"
        serve("b")
        serve("c")
        wait_for(lambda: watch.one("SELECT count(*) FROM campaign_devices WHERE state = "
                                   "'sent'")[0] == N, "every device sent")
        stop_commands(procs)
        procs = []
    finally:
        kill_commands(procs)
    rows = watch.all("SELECT device, request_id, outcome FROM requests")
    assert len(rows) == N and len({r[0] for r in rows}) == N  # one request per device
    assert all(r[2] is None for r in rows)  # waiting for their Comms Hubs
    msgs = [json.loads(r[0]) for r in watch.all("SELECT body FROM wan_out")]
    fw = [m for m in msgs if m["type"] == "update_firmware"]
    assert len(fw) == N and len({m["device"] for m in fw}) == N
    sent = watch.all("SELECT device, attempt, worker FROM campaign_sends")
    assert len(sent) == N and {r[1] for r in sent} == {1}
    workers = {r[2] for r in sent}
    assert "a" in workers and workers & {"b", "c"}, workers
    st = campaign.status(watch, "big", devices=False)
    assert st["state"] == "running" and st["totals"]["sent"] == N
    watch.close()
