"""`hanota serve` as a real process, driven by the CLI commands, killed mid-transfer.

The hub process is SIGKILLed while devices are downloading, then started again on the same
database: every request must still end exactly once, activated, the interrupted devices
resume from their own offsets (no byte range fetched again beyond a block or two), no
image is delivered or activated twice, and the hub never reuses a frame counter.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hanota.hub import HubDB
from support import otabuild
from support.fakedevice import install_code
from support.hubfixtures import AgentDevice, build_image, eui_str
from support.servekit import RUNNER, Serve, cli, closing, free_udp_port, serve_log, serves  # noqa: F401

pytestmark = pytest.mark.timeout(90)


def test_serve_killed_mid_transfer_resumes_from_its_database(tmp_path, serve_log, serves):
    key = otabuild.new_key()
    db = str(tmp_path / "hub.db")
    port = free_udp_port()
    ns = [50, 51, 52, 53]
    cli("registry", "set-suppliers", "--premises", "MPAN-9", "--supplier", "SupplierA",
        "--supplier", "SupplierB", "--db", db)
    for n in ns:
        cli("registry", "add-device", "--device", eui_str(n), "--role", "ppmid",
            "--install-code", install_code(n), "--premises", "MPAN-9", "--db", db)
    img = str(build_image(tmp_path, key, "ppmid", 2, size=6000))
    # one request from a separate process, the others through the same CLI in-process;
    # either Responsible Supplier of the dual-Supplier premises may ask
    out = subprocess.run([sys.executable, "-c", RUNNER, "request", "update-firmware",
                          "--device", eui_str(ns[0]), "--image", img, "--as-supplier",
                          "SupplierB", "--db", db], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "queued" in out.stdout, out.stderr
    for n in ns[1:]:
        assert "queued" in cli("request", "update-firmware", "--device", eui_str(n),
                               "--image", img, "--as-supplier", "SupplierA", "--db", db)
    refused = json.loads(cli("request", "update-firmware", "--device", eui_str(ns[0]),
                             "--image", img, "--as-supplier", "SupplierC", "--json",
                             "--db", db))
    assert refused["outcome"] == "not_authorized"

    serve = Serve(db, port, serve_log)
    serves.append(serve)
    # devices poll (Query Next Image every 0.5 s) as HAN devices do: a restarted hub learns
    # a device's address only when it next hears from it
    devs = [AgentDevice(n, pace=0.01, poll=0.5) for n in ns]
    hubdb = HubDB.open(db)

    async def scenario():
        serve.start()
        for d in devs:
            await d.start(("127.0.0.1", port))
        # kill the hub while a transfer is part way
        while not any(1500 <= d.offset <= 4500 for d in devs):
            await asyncio.sleep(0.01)
        serve.proc.send_signal(signal.SIGKILL)
        serve.proc.wait(10)
        cut = {d.n: d.offset for d in devs}
        states = {r["eui"]: r["state"] for r in hubdb.all("SELECT * FROM requests")}
        await asyncio.sleep(0.3)
        serve.start()
        deadline = time.monotonic() + 40
        while hubdb.one("SELECT count(*) FROM requests WHERE outcome IS NULL")[0]:
            assert time.monotonic() < deadline, "requests still pending"
            await asyncio.sleep(0.1)
        return cut, states

    try:
        cut, states = asyncio.run(asyncio.wait_for(closing(devs, scenario()), 70))
        status = json.loads(cli("status", "--json", "--db", db))
        assert status["serve"]["running"] is True
    finally:
        if serve.proc.poll() is None:
            serve.proc.send_signal(signal.SIGTERM)
            assert serve.proc.wait(15) == 0
    interrupted = [d for d in devs if 0 < cut[d.n]]
    assert interrupted and any(states[eui_str(d.n)] == "downloading" for d in interrupted)
    size = hubdb.one("SELECT size FROM images")[0]
    for d in devs:
        # each device: one download, one activation, and it resumed from its own offset
        assert d.version == 2 and d.activated_versions == [2] and d.downloads == 1
        assert d.resume_offsets == [0]
        assert size <= d.bytes_received <= size + 3 * 64
        assert d.dropped["replay"] == 0  # the restarted hub never reused a counter
    rows = hubdb.all("SELECT * FROM requests WHERE outcome != 'not_authorized' ORDER BY id")
    assert [r["outcome"] for r in rows] == ["activated"] * 4
    for r in rows:
        kinds = [e[0] for e in hubdb.all("SELECT kind FROM events WHERE request_id = ?",
                                         (r["id"],))]
        assert kinds.count("upgrade_end") == 1 and kinds.count("outcome") == 1
    restarted = {e[0] for e in hubdb.all("SELECT request_id FROM events "
                                         "WHERE kind = 'hub_restarted'")}
    assert {r["id"] for r in rows if r["eui"] in {eui_str(d.n) for d in interrupted}} \
        <= restarted
    # status and report (read from the database only) agree with the devices
    by_eui = {x["eui"]: x for x in status["devices"]}
    report = json.loads(cli("report", "--json", "--db", db))
    for d in devs:
        assert by_eui[eui_str(d.n)]["running_version"] == d.version
    assert report["summary"] == {"activated": 4, "not_authorized": 1}
    assert "wrote" in cli("report", "--html", str(tmp_path / "r.html"), "--db", db)
    page = (tmp_path / "r.html").read_text()
    assert all(eui_str(n) in page for n in ns) and page.count("<svg") == 4
    final = json.loads(cli("status", "--json", "--db", db))
    assert final["serve"]["running"] is False
    log = open(serve_log.name).read()
    assert "in_flight" in log and "outcome outcome=activated" in log and "hub stopped" in log
    hubdb.close()
    assert os.path.exists(db + ".serve.lock")
