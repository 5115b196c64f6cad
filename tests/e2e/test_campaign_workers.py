"""Several `hanota dcc serve --supplier-key` processes share a campaign (SQLite and
PostgreSQL): one is killed (SIGKILL) in the middle of the campaign, two others take its work
over, and every device ends with exactly one DUIS request and one WAN message, none sent
twice. No Comms Hub is connected: the messages wait in the DCC's WAN outbox, as for hubs
offline during a wave. And the Supplier's own `hanota campaign drive` processes beside a
`dcc serve` that holds no key: only they send, sharing the work."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest

from hanota import images
from hanota.dcc import campaign, pki
from hanota.dcc.store import DccStore
from support import otabuild
from support.dccworld import HANOTA, dcc_serve, kill_commands, start_command, stop_commands

pytestmark = pytest.mark.timeout(180)

N = 240
SUP_A = pki.ORGS["supplier-a"][1]


def wait_for(cond, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting for " + what
        time.sleep(0.02)


def setup(tmp_path, db_target, n: int = N):
    """A PKI, `n` PPMIDs of Supplier A on four hubs, the image on the CPL, and campaign "big"
    to all of them: (the PKI directory, the environment for child processes)."""
    pki_dir = tmp_path / "pki"
    pki.init(pki_dir)
    data = images.build_image(random.Random(3).randbytes(300), key=otabuild.new_key(),
                              version=2, role="ppmid")
    with DccStore(db_target) as store:
        for h in range(4):
            store.add_premises("MPAN-%d" % h, [SUP_A], "00DB1234567800C%d" % h)
        for i in range(n):
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
    return pki_dir, dict(os.environ, HANOTA_HOME=str(tmp_path / "home"))


def test_workers_share_a_campaign_and_take_over_a_killed_one(tmp_path, db_target):
    pki_dir, env = setup(tmp_path, db_target)
    procs = []
    watch = DccStore(db_target)
    try:
        def sends() -> int:
            return int(watch.one("SELECT count(*) FROM campaign_sends")[0])

        def serve(name: str):
            p, _ = dcc_serve(["--db", db_target, "--pki", str(pki_dir), "--listen",
                              "127.0.0.1:0", "--worker", name, "--supplier-key",
                              "%s:%s" % (pki_dir / "supplier-a.xml.key.pem",
                                         pki_dir / "supplier-a.xml.cert.pem")],
                             tmp_path / ("%s.log" % name), env)
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


def test_the_suppliers_drive_processes_sign_beside_a_keyless_dcc(tmp_path, db_target):
    """`dcc serve` without --supplier-key takes no part in sending: the campaign waits,
    `campaign status` saying no signer holds Supplier A's key; two `campaign drive`
    processes (the Supplier's, key in memory) then send every device once between them,
    status naming them while they run and the time they stopped after."""
    n = 120
    pki_dir, env = setup(tmp_path, db_target, n)
    key, cert = pki_dir / "supplier-a.xml.key.pem", pki_dir / "supplier-a.xml.cert.pem"
    # a key that is not its certificate's: dcc serve refuses to start, naming both
    bad = subprocess.run([*HANOTA, "dcc", "serve", "--db", db_target, "--pki", str(pki_dir),
                          "--listen", "127.0.0.1:0", "--supplier-key",
                          "%s:%s" % (pki_dir / "supplier-b.xml.key.pem", cert)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and "supplier-b.xml.key.pem is not the one certificate" \
        in bad.stderr, bad.stderr

    def status() -> tuple[str, dict]:
        r = subprocess.run([*HANOTA, "campaign", "status", "big", "--db", db_target],
                           capture_output=True, text=True, env=env, timeout=60)
        j = subprocess.run([*HANOTA, "campaign", "status", "big", "--db", db_target, "--json"],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0 and j.returncode == 0, r.stderr + j.stderr
        return r.stdout, json.loads(j.stdout)

    procs = []
    watch = DccStore(db_target)
    try:
        procs.append(dcc_serve(["--db", db_target, "--pki", str(pki_dir), "--listen",
                                "127.0.0.1:0", "--worker", "dcc"], tmp_path / "dcc.log",
                               env)[0])
        text, js = status()
        assert js["waiting_for_signer"] and "waiting: no signer for Supplier %s has run" \
            % SUP_A.hex().upper() in text, text
        for name in ("s1", "s2"):
            procs.append(start_command(
                ["campaign", "drive", "--db", db_target, "--pki", str(pki_dir), "--key",
                 str(key), "--cert", str(cert), "--worker", name, "--poll", "0.05"],
                tmp_path / ("%s.log" % name), "signing for Supplier", env))
        text, js = status()
        assert {x["worker"] for x in js["signer"]["live"]} <= {"s1", "s2"}
        assert js["signer"]["live"] and "signed by s" in text, text
        wait_for(lambda: watch.one("SELECT count(*) FROM campaign_devices WHERE state = "
                                   "'sent'")[0] == n, "every device sent")
        stop_commands(procs[1:])  # the signers stop (exit 0), the DCC runs on
        text, js = status()
        assert js["signer"]["live"] == [] and js["signer"]["last_seen"] is not None
        assert "no signer for Supplier %s since" % SUP_A.hex().upper() in text, text
        stop_commands(procs[:1])
        procs = []
    finally:
        kill_commands(procs)
    rows = watch.all("SELECT device FROM requests")
    assert len(rows) == n and len({r[0] for r in rows}) == n  # one request per device
    sent = watch.all("SELECT device, attempt, worker FROM campaign_sends")
    assert len(sent) == n and {r[2] for r in sent} <= {"s1", "s2"}  # never the keyless DCC
    watch.close()
