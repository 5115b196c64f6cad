"""`hanota demo`: the whole story on virtual boards, told through DUIS, exits 0 with every
outcome as expected, and leaves the DCC's and the Comms Hubs' records to show for it."""
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def test_demo_runs_the_story_and_cleans_up(tmp_path, request):
    if request.config.getoption("--board"):
        pytest.skip("the demo runs on virtual boards")
    hanota = str(Path(sys.executable).with_name("hanota"))
    work = tmp_path / "demo"
    r = subprocess.run([hanota, "demo", "--workdir", str(work)], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, HANOTA_HOME=str(tmp_path / "home")))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    out = r.stdout
    assert "demo passed" in out and "FAIL" not in out
    for needle in ("E4 not-authorised", "replayed", "EH3", "EH8 not-on-cpl", "EH8 bad-image",
                   "pending request stays", "rejected_by_device", "bad-signature",
                   "rolled_back", "hash_mismatch", "distributed", "EH9 alt-han-join",
                   "EH10 ota-unavailable", "deliveries in priority order"):
        assert needle in out, needle
    report = work / "report.html"
    page = report.read_text()
    assert "<html" in page.lower() and "DUIS requests (the DCC)" in page
    assert (work / "report-1100000000022.html").exists()

    # the DCC's records: every response it queued is signed with its key; Users are entity IDs
    from hanota.dcc import pki, xmlsig

    dcc_cert = pki.signing_pair(work / "pki", "dcc.xml")[1]
    with sqlite3.connect(work / "dcc.db") as c:
        xmls = [bytes(x) for (x,) in c.execute("SELECT xml FROM responses")]
        users = {u for (u,) in c.execute("SELECT user FROM requests")}
    assert len(xmls) > 10
    for x in xmls:
        xmlsig.verify(x, dcc_cert)
    entity_ids = {pki.describe(pki.signing_pair(work / "pki", n + ".xml")[1])
                  .entity_id.hex().upper() for n in ("supplier-a", "supplier-b")}
    assert users == entity_ids
    # a Comms Hub per premises; the Supplier of each hub request is an entity ID, never a name
    hubs = sorted(work.glob("hub-*.db"))
    assert len(hubs) == 2
    for h in hubs:
        with sqlite3.connect(h) as c:
            for (s,) in c.execute("SELECT supplier FROM requests"):
                assert re.fullmatch(r"[0-9A-F]{16}", s) and s in entity_ids, s

    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True,
                               text=True).stdout.split()
    assert leftovers == []
