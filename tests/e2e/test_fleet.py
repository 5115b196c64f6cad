"""Twenty virtual boards upgraded through one hub; deploy through the CLI and through ampy."""
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hanota import deploy, flasher, fwbuild, images
from hanota.hub import HubDB
from hanota.hub import registry as reg
from hanota.hub import requests as rq
from hanota.keys import generate_keys, load_private_key
from support.hubfixtures import HubInThread, fast_options

BIN = Path(sys.executable).parent
V1, V2 = 0x00010000, 0x00020000
FAST = {"query_interval": 1, "health_timeout": 20, "block_timeout_ms": 800}
READ_BACK = ("import json, esp32\n"
             "label = esp32.Partition(esp32.Partition.RUNNING).info()[4]\n"
             "print(label, json.loads(open('/ota.json').read())['versions'][label])\n")

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    generate_keys(d)
    return d


def test_twenty_boards_through_one_hub(vboards, keys, tmp_path):
    kind = "vboard-esp32"
    p1 = fwbuild.build(kind, "1.0.0", tmp_path / "p1")
    p2 = fwbuild.build(kind, "2.0.0", tmp_path / "p2")
    db = HubDB.open(tmp_path / "hub.db")
    hub = HubInThread(db.path, udp=("127.0.0.1", 0),
                      options=fast_options(max_in_flight=3, request_timeout=2.0, retry={
                          "answer_timeout": 60, "stall_window": 60, "activation_timeout": 90,
                          "max_attempts": 6}))
    try:
        reg.set_suppliers(db, "MPAN-FLEET", ["Fleet Energy"])
        bs = [vboards(kind, name="b%02d" % i, hub=hub.hub.udp_address) for i in range(20)]

        def bring(b):
            flasher.flash_firmware(b.romloader.url, p1["firmware"], board=kind)
            b.console.wait_ready(30)
            return deploy.deploy(b.console.pty_path, kind, "ppmid", [keys / "public.bin"], version=V1,
                                 settings=FAST)
        with ThreadPoolExecutor(4) as ex:
            deployed = list(ex.map(bring, bs))
        for res in deployed:
            reg.add_device(db, res.eui64, "ppmid", res.install_code, "MPAN-FLEET")
        f = tmp_path / "v2.ota"
        f.write_bytes(images.build_image(p2["app"].read_bytes(), version=V2, role="ppmid",
                                         key=load_private_key(keys / "private.pem")))
        subs = [rq.update_firmware(db, res.eui64, f, "Fleet Energy") for res in deployed]
        deadline = time.monotonic() + 400
        while any(db.request(s.id)["outcome"] is None for s in subs):
            assert time.monotonic() < deadline, [dict(db.request(s.id)) for s in subs if
                                                 db.request(s.id)["outcome"] is None][:3]
            time.sleep(0.5)
        outcomes = [db.request(s.id)["outcome"] for s in subs]
        assert outcomes == ["activated"] * 20
        # nothing delivered twice: one transfer start per request
        for s in subs:
            assert len(db.all("SELECT 1 FROM events WHERE request_id = ? AND kind = 'in_flight'", (s.id,))) == 1
    finally:
        hub.stop()
        db.close()
    # the status and report commands agree with what each board says it runs
    status = json.loads(subprocess.run([str(BIN / "hanota"), "status", "--json", "--db", str(tmp_path / "hub.db")],
                                       capture_output=True, text=True, timeout=60).stdout)
    report = json.loads(subprocess.run([str(BIN / "hanota"), "report", "--json", "--db", str(tmp_path / "hub.db")],
                                       capture_output=True, text=True, timeout=60).stdout)
    by_eui = {d["eui"]: d for d in status["devices"]}
    assert status["outcomes"] == {"activated": 20}
    assert sorted(r["outcome"] for r in report["requests"]) == ["activated"] * 20
    for b, res in zip(bs, deployed):
        out = subprocess.run([str(BIN / "mpremote"), "connect", b.console.pty_path, "exec", READ_BACK],
                             capture_output=True, text=True, timeout=30).stdout.split()
        assert out[0] == "ota_1" and int(out[1]) == V2
        assert by_eui[res.eui64]["running_version"] == V2


def test_deploy_through_the_cli_and_through_ampy(vboards, keys, tmp_path):
    b = vboards("vboard-nrf52840")
    b.console.wait_ready(15)
    r = subprocess.run([str(BIN / "hanota"), "board", "deploy", "--board", "vboard-nrf52840", "--port",
                        b.console.pty_path, "--role", "hcalcs", "--key", str(keys / "public.bin"),
                        "--via", "ampy", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["role"] == "hcalcs" and res["bank"]["length"] > 0
    assert {Path(p).name for p in res["files"]} >= {"boot.py", "main.py", "hanota.json", "bootctl.mpy"}
    time.sleep(1)  # the board resets into its application (mpremote interrupts it with Ctrl-C)
    out = subprocess.run([str(BIN / "mpremote"), "connect", b.console.pty_path, "exec",
                          "import json; print(json.load(open('hanota.json'))['role'])"],
                         capture_output=True, text=True, timeout=30).stdout
    assert "hcalcs" in out
    r = subprocess.run([str(BIN / "hanota"), "board", "deploy", "--board", "vboard-nrf52840", "--port",
                        "/dev/ttyNOPE", "--role", "ppmid", "--key", str(keys / "public.bin")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot reach the board's REPL" in r.stderr
