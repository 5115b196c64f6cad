"""`hanota fleet sim`: Comms Hubs with simulated HAN devices against one DCC.

The DCC runs in the test's process (support.dccworld's World: its HTTP server and WAN over
SQLite, a Supplier with a test PKI); the fleet runs as the command, in a child process.
Every device gets its firmware SR through DUIS (11.4 for PPMIDs and Alt HAN devices, 11.1
for HCALCS) and the DCC records exactly one outcome for each. With --vboards, a virtual
board (the real device code under MicroPython) is one of those devices."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from hanota.dcc import duis
from hanota.dcc.wan import eui_hex
from hanota.fleet import plan as fp
from support.dccworld import HANOTA, World

pytestmark = pytest.mark.timeout(180)

WANT = {"ppmid": "activated", "althan": "activated", "hcalcs": "distributed"}


async def start_sim(w: World, url: str, *args: str,
                    timeout: float = 60) -> asyncio.subprocess.Process:
    """`hanota fleet sim *args --dcc url`, once it says every hub is on the WAN (each line
    within `timeout` seconds)."""
    p = await asyncio.create_subprocess_exec(
        *HANOTA, "fleet", "sim", "--dcc", url, "--poll", "0.1", "--report", "0", "--json",
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    p.lines = []  # type: ignore[attr-defined]
    while True:
        line = await asyncio.wait_for(p.stdout.readline(), timeout)
        assert line, "fleet sim exited before its hubs connected: %s" % p.lines
        p.lines.append(line.decode())
        if b"fleet connected" in line or line.startswith(b"[proc") and \
                sum("fleet connected" in x for x in p.lines) == 2:
            return p


async def stop_sim(p) -> dict:
    p.terminate()
    out, _ = await asyncio.wait_for(p.communicate(), 60)
    assert p.returncode == 0, (p.lines, out)
    return json.loads(out.decode().strip().splitlines()[-1])


async def firmware_to_all(w: World, plan: fp.FleetPlan, lo: int, hi: int,
                          vboard_image: bytes | None = None) -> dict[str, str]:
    """The SR each device's role takes, POSTed to the DCC for every device of premises
    [lo, hi) (and with vboard_image, for the virtual board of each of the first
    plan.vboards); once every response is in, {device EUI: outcome}."""
    data = {r: w.image(r, 2) for r in set(plan.roles)}
    ids = {}
    va, vb = plan.vboard_range(lo, hi) if vboard_image else (lo, lo)
    for p in plan.range(lo, hi):
        boards = (plan.vboard_at(p.index),) if va <= p.index < vb else ()
        for s in p.devices + boards:
            image = vboard_image if s in boards else data[s.role]
            xml = w.request(fp.ROLE_SR[s.role], duis.DCC_EUI, firmware_image=image,
                            firmware_version="00000002", device_ids=[bytes.fromhex(s.eui)])
            status, ack = await w.post(xml)
            assert (status, ack["code"]) == (200, "I99"), (s, ack)
            ids[ack["request_id"]] = s
    got = {}
    for rid, s in ids.items():
        resp = await w.wait_response(rid, timeout=150)
        assert resp["code"] == "I0", resp
        got[s.eui] = resp["body"]["CommsHubOutcome"]["Outcome"]
    return got


def one_outcome_each(w: World, n: int) -> None:
    rows = w.store.all("SELECT request_id, outcome FROM requests")
    assert len(rows) == n and all(r[1] is not None for r in rows), rows


def test_sim_serves_firmware_through_duis_to_every_device(tmp_path):
    async def main():
        w = World(tmp_path)
        try:
            await w.start_dcc()
            plan = fp.FleetPlan(5, 3)
            fp.register(w.store, plan, 0, 5, [eui_hex(w.user)])
            p = await start_sim(w, w.url, "--premises", "5", "--devices", "3",
                                "--dir", str(tmp_path / "fleet"))
            try:
                got = await firmware_to_all(w, plan, 0, 5)
            finally:
                summary = await stop_sim(p)
            assert got == {s.eui: WANT[s.role] for q in plan.range(0, 5) for s in q.devices}
            one_outcome_each(w, 15)
            assert summary["hubs"] == summary["hubs_connected"] == 5
            assert summary["devices"] == summary["devices_joined"] == 15
            assert summary["outcomes"] == {"activated": 10, "distributed": 5}
            assert summary["devices_with_outcome"] == 15
            assert summary["devices_with_two_or_more"] == 0
            assert summary["device"]["verified"] == 15 and summary["device"]["alerts"] == 10
            assert summary["device"]["held"] == 5 and summary["errors"] == 0
        finally:
            await w.stop()
    asyncio.run(main())


def test_two_slices_in_two_processes_do_not_collide(tmp_path):
    """--slice 1/2 and 2/2 of one fleet, the second in two processes, on one DCC: no premises,
    hub or device twice, and every device of both gets its one outcome."""
    a, b = fp.FleetPlan(4, 2, fleet=7), fp.FleetPlan(4, 2, fleet=7)
    sa, sb = fp.slice_range(a, "1/2"), fp.slice_range(b, "2/2")
    assert sa == (0, 2) and sb == (2, 4)
    ids = [x for lo, hi in (sa, sb) for q in a.range(lo, hi)
           for x in (q.mpxn, q.hub_eui, *(s.eui for s in q.devices))]
    assert len(ids) == len(set(ids)) == 4 * 4

    async def main():
        w = World(tmp_path)
        try:
            await w.start_dcc()
            common = ["--premises", "4", "--devices", "2", "--fleet", "7",
                      "--supplier", eui_hex(w.user)]
            r = subprocess.run([*HANOTA, "fleet", "register", *common, "--db",
                                str(tmp_path / "dcc.db")], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            assert "4 premises and 8 devices added" in r.stdout
            p1 = await start_sim(w, w.url, *common, "--slice", "1/2", "--dir",
                                 str(tmp_path / "m1"))
            p2 = await start_sim(w, w.url, *common, "--slice", "2/2", "--procs", "2",
                                 "--dir", str(tmp_path / "m2"))
            try:
                got = await firmware_to_all(w, a, 0, 4)
            finally:
                s1, s2 = await stop_sim(p1), await stop_sim(p2)
            assert sorted(got.values()) == ["activated"] * 4 + ["distributed"] * 4
            one_outcome_each(w, 8)
            assert (s1["hubs_connected"], s2["hubs_connected"], s2["processes"]) == (2, 2, 2)
            assert s1["outcomes"] == s2["outcomes"] == {"activated": 2, "distributed": 2}
            assert s1["errors"] == s2["errors"] == 0
        finally:
            await w.stop()
    asyncio.run(main())


def test_sim_over_nats(tmp_path, nats_server):
    async def main():
        w = World(tmp_path)
        try:
            await w.start_dcc(wan_url=nats_server.url)
            await w.http.nats.wait_connected()
            plan = fp.FleetPlan(3, 3)
            fp.register(w.store, plan, 0, 3, [eui_hex(w.user)])
            p = await start_sim(w, nats_server.url, "--premises", "3", "--devices", "3",
                                "--dir", str(tmp_path / "fleet"))
            try:
                got = await firmware_to_all(w, plan, 0, 3)
            finally:
                summary = await stop_sim(p)
            assert got == {s.eui: WANT[s.role] for q in plan.range(0, 3) for s in q.devices}
            one_outcome_each(w, 9)
            assert summary["outcomes"] == {"activated": 6, "distributed": 3}
            assert summary["errors"] == 0
        finally:
            await w.stop()
    asyncio.run(main())


@pytest.mark.parametrize("url, code, says", [
    ("ftp://127.0.0.1:80", 1, "give the DCC's WAN as http://HOST:PORT"),
    ("http://127.0.0.1:notaport", 1, "the port is not a number"),
    ("nats://127.0.0.1", 1, "give the NATS server's port"),
    ("http://127.0.0.1:1", 2, "cannot reach the DCC at http://127.0.0.1:1"),
    ("nats://127.0.0.1:1", 2, "cannot reach the NATS server at nats://127.0.0.1:1"),
])
def test_bad_or_unreachable_dcc_is_a_clear_error(tmp_path, url, code, says):
    r = subprocess.run([*HANOTA, "fleet", "sim", "--premises", "2", "--dcc", url, "--dir",
                        str(tmp_path / "f"), "--for", "5"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert says in r.stderr, r.stderr
    assert not (tmp_path / "f").exists()  # nothing started


def test_more_premises_than_a_process_has_descriptors_for_is_refused(tmp_path):
    """With the open-file limit at 600, 200 premises (about 6 descriptors each) do not fit one
    process: refused before anything starts, saying how many --procs would do."""
    import resource

    def low():
        resource.setrlimit(resource.RLIMIT_NOFILE, (600, 600))
    args = [*HANOTA, "fleet", "sim", "--premises", "200", "--dcc", "http://127.0.0.1:1",
            "--dir", str(tmp_path / "f")]
    r = subprocess.run(args, capture_output=True, text=True, preexec_fn=low, timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "limit is 600" in r.stderr and "give --procs 3 or more" in r.stderr, r.stderr
    # in three processes it fits: it gets as far as finding the DCC unreachable
    r = subprocess.run(args + ["--procs", "3"], capture_output=True, text=True,
                       preexec_fn=low, timeout=60)
    assert r.returncode == 2 and "cannot reach the DCC" in r.stderr, r.stderr


def test_sim_register_writes_the_slice_to_the_dcc_database(tmp_path):
    """`fleet sim --register` puts this slice's premises and devices in the DCC's database
    (before it looks for the DCC; here there is none); without --supplier it is refused."""
    from hanota.dcc.store import DccStore

    db = str(tmp_path / "dcc.db")
    base = [*HANOTA, "fleet", "sim", "--premises", "4", "--devices", "2", "--slice", "2/2",
            "--dcc", "http://127.0.0.1:1", "--dir", str(tmp_path / "f"), "--register",
            "--db", db]
    r = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--register needs --supplier" in r.stderr, r.stderr
    r = subprocess.run(base + ["--supplier", "90B3D51F3001A001"], capture_output=True,
                       text=True, timeout=60)
    assert "2 premises and 4 devices added" in r.stdout, (r.stdout, r.stderr)
    assert r.returncode == 2 and "cannot reach the DCC" in r.stderr
    with DccStore(db) as store:
        assert [p["mpxn"] for p in store.list_premises()] == ["SIM0-00000002",
                                                              "SIM0-00000003"]
        assert {d["eui"] for d in store.list_devices()} == {
            s.eui for q in fp.FleetPlan(4, 2).range(2, 4) for s in q.devices}


def test_plan_and_slices_are_checked():
    for args, says in ((["--premises", "0"], "--premises"),
                       (["--premises", "3", "--slice", "4/3"], "i must be 1..n"),
                       (["--premises", "3", "--slice", "2"], "give i/n"),
                       (["--premises", "2", "--slice", "1/3"], "3 slices for 2 premises"),
                       (["--premises", "2", "--roles", "ppmid,meter"], "role 'meter'"),
                       (["--premises", "3", "--slice", "2/2", "--vboards", "3"],
                        "--vboards 3: this slice has only 2 premises")):
        r = subprocess.run([*HANOTA, "fleet", "plan", *args], capture_output=True, text=True)
        assert r.returncode != 0 and says in r.stderr + r.stdout, (args, r.stderr)
    r = subprocess.run([*HANOTA, "fleet", "plan", "--premises", "5", "--devices", "2",
                        "--slice", "2/2", "--json"], capture_output=True, text=True)
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["mpxn"] for x in rows] == ["SIM0-00000002", "SIM0-00000003", "SIM0-00000004"]
    assert [d["role"] for d in rows[0]["devices"]] == ["ppmid", "hcalcs"]


def board_processes(root: Path) -> list[int]:
    """Pids of the virtual boards' MicroPython processes whose flash is under root."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                env = (d / "environ").read_bytes()
            except OSError:
                continue
            if ("HANOTA_VB_FLASH=%s/" % root.resolve()).encode() in env:
                pids.append(int(d.name))
    return pids


@pytest.mark.parametrize("kind, role", [("vboard-esp32", "ppmid"),
                                        ("vboard-nrf52840", "althan")])
def test_sim_with_a_virtual_board_gets_its_firmware_through_duis(tmp_path, kind, role):
    """--vboards 1: premises 0 also runs a virtual board (a PPMID on vboard-esp32, flashed
    through its ROM loader, on UDP; an Alt HAN device on vboard-nrf52840, on its UART),
    deployed with the workspace's key; `--register` puts it in the DCC's registration data and its upgrade
    image (the workspace's, signed with that key) on the CPL. Every device, the board
    among them, gets its firmware by DUIS and one outcome; the board activates version 2
    (the summary and the DCC's registration data say so); stopping the fleet stops it."""
    fleet = tmp_path / "fleet"

    async def main():
        w = World(tmp_path)
        try:
            await w.start_dcc()
            plan = fp.FleetPlan(3, 1, roles=("ppmid",), vboards=1, vboard_role=role)
            p = await start_sim(w, w.url, "--premises", "3", "--devices", "1", "--roles",
                                "ppmid", "--vboards", "1", "--vboard-kind", kind,
                                "--vboard-role", role, "--dir", str(fleet), "--register",
                                "--supplier", eui_hex(w.user), "--db", str(tmp_path / "dcc.db"),
                                timeout=150)
            board = plan.vboard_at(0)
            try:
                said = "".join(p.lines)
                image = fleet / "vboards" / "images" / ("%s-%s-v2.ota" % (kind, role))
                assert "upgrade image %s (version 2" % image in said, said
                assert "1 virtual boards deployed and joined (vb-SIM0-00000000)" in said, said
                assert board_processes(fleet), "the board's MicroPython is not running"
                got = await firmware_to_all(w, plan, 0, 3, image.read_bytes())
            finally:
                summary = await stop_sim(p)
            assert got == {s.eui: "activated" for s in
                           (board, *(d for q in plan.range(0, 3) for d in q.devices))}, got
            one_outcome_each(w, 4)
            assert w.store.device(board.eui)["firmware_version"] == "00000002"
            assert summary["devices"] == summary["devices_joined"] == 3
            assert summary["vboards"] == summary["vboards_joined"] == 1
            assert summary["vboard_outcomes"] == {"activated": 1}
            assert summary["vboard_running"] == {"2": 1}
            assert summary["outcomes"] == {"activated": 4}
            assert summary["devices_with_outcome"] == 4
            assert summary["devices_with_two_or_more"] == 0 and summary["errors"] == 0
            assert board_processes(fleet) == []
        finally:
            await w.stop()
    asyncio.run(main())


@pytest.mark.parametrize("procs", ["1", "2"])
def test_a_virtual_board_that_cannot_start_stops_the_fleet(tmp_path, procs):
    """Premises 1's board cannot start (its folder is taken by a file): the command fails
    (exit 2) naming that board and why; premises 0's board, which could, is stopped too
    (with --procs 2 it is in the other process, which the parent stops)."""
    fleet = tmp_path / "fleet"
    (fleet / "f0-p00000001").mkdir(parents=True)
    (fleet / "f0-p00000001" / "vboard").write_text("not a board's folder")

    async def main():
        w = World(tmp_path)
        try:
            await w.start_dcc()
            r = await asyncio.create_subprocess_exec(
                *HANOTA, "fleet", "sim", "--dcc", w.url, "--premises", "2", "--devices", "1",
                "--vboards", "2", "--dir", str(fleet), "--report", "0", "--for", "120",
                "--procs", procs,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(r.communicate(), 150)
            return r.returncode, out.decode(), err.decode()
        finally:
            await w.stop()
    code, out, err = asyncio.run(main())
    assert code == 2, (out, err)
    assert "vb-SIM0-00000001 (vboard-esp32 ppmid F1EF00000000001F, premises SIM0-00000001) " \
           "could not be brought up" in err and "Not a directory" in err, err
    assert "fleet started" not in out, out
    assert board_processes(fleet) == []


def test_a_second_run_on_the_same_dir_starts_a_fresh_board_that_joins_again(tmp_path):
    """The hubs' databases are kept between runs; the board and the simulated devices are
    fresh each run (their frame counters start again): in the second run they still join
    (the hub forgot the first run's counters for them) and the board takes its firmware
    again, one outcome per request."""
    fleet = tmp_path / "fleet"

    async def main():
        w = World(tmp_path)
        try:
            await w.start_dcc()
            plan = fp.FleetPlan(1, 1, roles=("ppmid",), vboards=1)
            board = plan.vboard_at(0)
            for run in (1, 2):
                p = await start_sim(w, w.url, "--premises", "1", "--devices", "1", "--roles",
                                    "ppmid", "--vboards", "1", "--dir", str(fleet),
                                    "--register", "--supplier", eui_hex(w.user), "--db",
                                    str(tmp_path / "dcc.db"), timeout=150)
                try:
                    assert "1 virtual boards deployed and joined" in "".join(p.lines)
                    image = fleet / "vboards" / "images" / "vboard-esp32-ppmid-v2.ota"
                    xml = w.request("11.4", duis.DCC_EUI, firmware_image=image.read_bytes(),
                                    firmware_version="00000002",
                                    device_ids=[bytes.fromhex(board.eui)])
                    status, ack = await w.post(xml)
                    assert (status, ack["code"]) == (200, "I99"), ack
                    resp = await w.wait_response(ack["request_id"], timeout=90)
                    assert resp["body"]["CommsHubOutcome"]["Outcome"] == "activated", resp
                finally:
                    summary = await stop_sim(p)
                assert summary["vboard_running"] == {"2": 1}, (run, summary)
                # the simulated device, also fresh each run, joins again too
                assert summary["devices"] == summary["devices_joined"] == 1, (run, summary)
            one_outcome_each(w, 2)
        finally:
            await w.stop()
    asyncio.run(main())


def test_vboard_identities_registration_and_options(tmp_path):
    """A slice's virtual boards are its first --vboards premises' device slot 15: `fleet plan`
    shows them, `fleet register` writes them (with the premises' devices); a bad
    --vboard-kind or --vboard-keys is refused before anything starts."""
    from hanota.dcc.store import DccStore

    common = ["--premises", "4", "--devices", "2", "--slice", "2/2", "--vboards", "1"]
    r = subprocess.run([*HANOTA, "fleet", "plan", *common, "--json"], capture_output=True,
                       text=True)
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x.get("vboard", {}).get("eui") for x in rows] == ["F1EF00000000002F", None]
    assert rows[0]["vboard"]["install_code"] == fp.install_code("F1EF00000000002F")
    db = str(tmp_path / "dcc.db")
    r = subprocess.run([*HANOTA, "fleet", "register", *common, "--supplier",
                        "90B3D51F3001A001", "--db", db], capture_output=True, text=True)
    assert "2 premises and 5 devices added (1 virtual boards)" in r.stdout, (r.stdout, r.stderr)
    with DccStore(db) as store:
        d = store.device("F1EF00000000002F")
        assert (d["device_type"], d["mpxn"]) == ("PPMID", "SIM0-00000002")
    for args, says in ((["--vboard-kind", "esp32"], "--vboard-kind 'esp32': one of"),
                       (["--vboard-keys", str(tmp_path)], "no public.bin there")):
        r = subprocess.run([*HANOTA, "fleet", "sim", *common, "--dcc", "http://127.0.0.1:1",
                            "--dir", str(tmp_path / "f"), *args], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1 and says in r.stderr, (args, r.stderr)
        assert not (tmp_path / "f").exists()


def test_a_campaign_reaches_the_virtual_board_like_any_ppmid(tmp_path):
    """A Supplier's campaign to every PPMID of its premises on firmware 00000001 (model
    targeting, two waves) with the workspace's upgrade image: the virtual board is one of
    its targets, gets its own SR 11.4 and activates version 2, as the simulated PPMIDs do."""
    from hanota import images
    from hanota.dcc import campaign

    fleet = tmp_path / "fleet"

    async def main():
        w = World(tmp_path)
        try:
            await w.start_dcc()
            plan = fp.FleetPlan(2, 1, roles=("ppmid",), vboards=1)
            p = await start_sim(w, w.url, "--premises", "2", "--devices", "1", "--roles",
                                "ppmid", "--vboards", "1", "--dir", str(fleet), "--register",
                                "--supplier", eui_hex(w.user), "--db", str(tmp_path / "dcc.db"),
                                timeout=150)
            try:
                image = fleet / "vboards" / "images" / "vboard-esp32-ppmid-v2.ota"
                campaign.create(
                    w.store, name="fleet-vb",
                    key_pem=(w.pki_dir / "supplier-a.xml.key.pem").read_bytes(),
                    cert_pem=(w.pki_dir / "supplier-a.xml.cert.pem").read_bytes(),
                    image=image.read_bytes(), from_version="00000001",
                    model=(images.DEFAULT_MANUFACTURER, images.ROLE_IMAGE_TYPES["ppmid"]),
                    waves=["1", "100%"], success_threshold="100%")
                signer = campaign.Signer.from_files(
                    str(w.pki_dir / "supplier-a.xml.key.pem"),
                    str(w.pki_dir / "supplier-a.xml.cert.pem"))
                driver = campaign.CampaignThread(w.dcc, signers=[signer], worker="w1",
                                                 poll=0.05).start()
                try:
                    await w.until(lambda: campaign.status(w.store, "fleet-vb", devices=False)
                                  ["state"] == "done", "the campaign done", timeout=90)
                finally:
                    await asyncio.get_running_loop().run_in_executor(None, driver.stop)
            finally:
                summary = await stop_sim(p)
            s = campaign.status(w.store, "fleet-vb")
            got = {d["device"]: (d["outcome"], len(d["requests"])) for d in s["devices"]}
            assert got == {e: ("activated", 1) for e in (
                plan.vboard_at(0).eui, *(d.eui for q in plan.range(0, 2) for d in q.devices))}
            one_outcome_each(w, 3)
            assert summary["vboard_outcomes"] == {"activated": 1}
            assert summary["vboard_running"] == {"2": 1}
        finally:
            await w.stop()
    asyncio.run(main())
