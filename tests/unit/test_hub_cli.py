"""The hub's click commands in a throwaway group: output, JSON and exit codes
(0 done or refused-and-recorded, 1 usage, 2 failure), mapped as `hanota.cli.main` does."""
from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from hanota.hub import HubDB
from hanota.hub.cli import COMMANDS
from support import otabuild
from support.fakedevice import install_code
from support.hubfixtures import build_image, eui_str

pytestmark = pytest.mark.timeout(30)


def group() -> click.Group:
    g = click.Group("hanota")
    for c in COMMANDS:
        g.add_command(c)
    return g


def invoke(*args: str) -> tuple[int, str]:
    """Run a command; (exit code as hanota.cli.main would give, output + error message)."""
    r = CliRunner().invoke(group(), list(args), standalone_mode=False)
    e = r.exception
    if e is None:
        return 0, r.output
    if isinstance(e, click.UsageError):
        return 1, r.output + e.format_message()
    if isinstance(e, click.ClickException):
        return e.exit_code, r.output + e.format_message()
    raise e


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "hub.db")


@pytest.fixture
def img(tmp_path):
    return str(build_image(tmp_path, otabuild.new_key(), "ppmid", 2, size=300))


def add(db, n, role="ppmid", premises="MPAN-1", *extra):
    code, out = invoke("registry", "add-device", "--device", eui_str(n), "--role", role,
                       "--install-code", install_code(n), "--premises", premises,
                       "--db", db, *extra)
    assert code == 0, out
    return out


def test_registry_commands(db):
    out = add(db, 1)
    assert "registered ppmid %s at MPAN-1 (suppliers: none yet" % eui_str(1) in out
    code, out = invoke("registry", "set-suppliers", "--premises", "MPAN-1", "--supplier", "A",
                       "--supplier", "B", "--db", db)
    assert (code, out.strip()) == (0, "premises MPAN-1: Responsible Suppliers A and B")
    add(db, 2, "hcalcs", "MPAN-1", "--no-ota", "--hw-version", "0x0200")
    code, out = invoke("registry", "list", "--json", "--db", db)
    data = json.loads(out)
    assert [(d["eui"], d["role"], d["ota_supported"], d["hw_version"])
            for d in data["devices"]] == [(eui_str(1), "ppmid", True, None),
                                          (eui_str(2), "hcalcs", False, 0x200)]
    assert data["premises"] == [{"mpxn": "MPAN-1", "suppliers": ["A", "B"], "devices": 2}]
    code, out = invoke("registry", "list", "--db", db)
    assert code == 0 and "MPAN-1" in out and "A and B" in out
    assert invoke("registry", "remove", "--device", eui_str(2), "--db", db)[0] == 0
    # usage errors exit 1 with the reason
    for args, why in ((("registry", "add-device", "--device", "nope", "--role", "ppmid",
                        "--install-code", "00", "--premises", "X"), "16 hex digits"),
                      (("registry", "add-device", "--device", eui_str(1), "--role", "ppmid",
                        "--install-code", install_code(1), "--premises", "X"), "already"),
                      (("registry", "add-device", "--device", eui_str(3), "--role", "ppmid",
                        "--install-code", "zz", "--premises", "X"), "not hex"),
                      (("registry", "remove", "--device", eui_str(9)), "not registered"),
                      (("registry", "set-suppliers", "--premises", "MPAN-1", "--supplier",
                        "A", "--supplier", "B", "--supplier", "C"), "two")):
        code, out = invoke(*args, "--db", db)
        assert code == 1 and why in out, (args, out)


def test_request_commands_print_the_outcome_and_exit_0_even_when_refused(db, img):
    add(db, 1)
    invoke("registry", "set-suppliers", "--premises", "MPAN-1", "--supplier", "A", "--db", db)
    code, out = invoke("request", "update-firmware", "--device", eui_str(1), "--image", img,
                       "--as-supplier", "A", "--db", db)
    assert (code, out.strip()) == (0, "request #1 (SR 11.4, update) for %s: queued"
                                   % eui_str(1))
    code, out = invoke("request", "update-firmware", "--device", eui_str(1), "--image", img,
                       "--as-supplier", "A", "--activate-at", "+60", "--db", db)
    assert code == 0 and "request #1: superseded by #2" in out
    code, out = invoke("request", "update-firmware", "--device", eui_str(1), "--image", img,
                       "--as-supplier", "Z", "--db", db)
    assert code == 0 and "request #3 (SR 11.4, update) for %s: not_authorized (Z is not a " \
        "Responsible Supplier" % eui_str(1) in out
    code, out = invoke("request", "read-version", "--device", eui_str(1), "--as-supplier", "A",
                       "--json", "--db", db)
    d = json.loads(out)
    assert (code, d["id"], d["sr"], d["state"]) == (0, 4, "11.2", "queued")
    code, out = invoke("request", "show", "2", "--json", "--db", db)
    d = json.loads(out)
    assert d["state"] == "queued" and d["activate_at"] is not None
    # no hub runs: waiting for an outcome fails (exit 2) and says why
    code, out = invoke("request", "show", "2", "--wait", "0.3", "--db", db)
    assert code == 2 and "is hanota serve running?" in out
    for args, why in (("--activate-at", "tomorrow"), ("--device", "xx")):
        base = {"--device": eui_str(1), "--activate-at": "now"}
        base[args] = why
        code, out = invoke("request", "update-firmware", "--image", img, "--as-supplier", "A",
                           "--db", db, *[x for kv in base.items() for x in kv])
        assert code == 1, out
    code, out = invoke("request", "activate", "--device", eui_str(1), "--image-hash", "00" * 32,
                       "--as-supplier", "A", "--db", db)
    assert code == 1 and "part of SR 11.4" in out
    code, out = invoke("request", "show", "99", "--db", db)
    assert code == 1 and "no request #99" in out


def test_status_report_and_hub_commands(db, img, tmp_path):
    code, out = invoke("status", "--db", db)
    assert code == 2 and "no hub database" in out  # status never creates a database
    add(db, 1, "althan")
    invoke("registry", "set-suppliers", "--premises", "MPAN-1", "--supplier", "A", "--db", db)
    with HubDB.open(db) as h:  # as if it had joined the first hub
        h.conn.execute("UPDATE devices SET joined_hub = ?", (h.current_hub()["eui"],))
    code, out = invoke("hub", "show", "--json", "--db", db)
    first = json.loads(out)["eui"]
    img2 = str(build_image(tmp_path, otabuild.new_key(), "althan", 2, size=300))
    invoke("request", "update-firmware", "--device", eui_str(1), "--image", img2,
           "--as-supplier", "A", "--db", db)
    code, out = invoke("hub", "swap-out", "--db", db)
    assert code == 0 and "hub %s replaced by" % first in out
    assert "request #1: ota_unavailable_after_tcso" in out
    code, out = invoke("status", "--json", "--db", db)
    s = json.loads(out)
    assert s["hub"]["generation"] == 2 and s["outcomes"] == {"ota_unavailable_after_tcso": 1}
    assert s["devices"][0]["tcso_affected"] is True
    code, out = invoke("status", "--db", db)
    assert code == 0 and "TCSO" in out and "ota_unavailable_after_tcso 1" in out
    code, out = invoke("report", "--db", db)
    assert code == 0 and "ota_unavailable_after_tcso" in out and "Trust Centre" in out
    page = tmp_path / "r.html"
    code, out = invoke("report", "--html", str(page), "--db", db)
    assert code == 0 and "wrote" in out and "<svg" in page.read_text()
    code, out = invoke("report", "--json", "--db", db)
    assert json.loads(out)["summary"] == {"ota_unavailable_after_tcso": 1}


def test_unreadable_database_exits_2(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 500)
    for args in (("status",), ("report",), ("registry", "list"),
                 ("request", "read-version", "--device", eui_str(1), "--as-supplier", "A")):
        code, out = invoke(*args, "--db", str(bad))
        assert code == 2 and "not a usable hub database" in out, args


def test_serve_usage_errors(db):
    for args, why in ((("--udp", "off"), "nothing to serve"),
                      (("--priority", "ihd=1"), "roles"),
                      (("--udp", "localhost"), "HOST:PORT")):
        code, out = invoke("serve", "--db", db, *args)
        assert code == 1 and why in out, out


def test_update_firmware_with_the_device_key_refuses_a_tampered_file(db, tmp_path):
    """`--pubkey`: the image's signature must verify with the key the device pins; a
    tampered file exits 2 naming why, and the pending request stays."""
    from hanota.keys import generate_keys, load_private_key

    keys = generate_keys(tmp_path / "keys")
    good = build_image(tmp_path, load_private_key(keys.private), "ppmid", 2, size=300)
    add(db, 1)
    invoke("registry", "set-suppliers", "--premises", "MPAN-1", "--supplier", "A", "--db", db)
    code, out = invoke("request", "update-firmware", "--device", eui_str(1), "--image",
                       str(good), "--as-supplier", "A", "--pubkey", str(keys.public_bin),
                       "--db", db)
    assert code == 0 and "queued" in out
    data = bytearray(good.read_bytes())
    data[30] ^= 1  # in the header string: only the signature tells
    bad = tmp_path / "bad.ota"
    bad.write_bytes(bytes(data))
    code, out = invoke("request", "update-firmware", "--device", eui_str(1), "--image",
                       str(bad), "--as-supplier", "A", "--pubkey", str(keys.public_bin),
                       "--db", db)
    assert code == 2 and "does not verify" in out
    code, out = invoke("request", "show", "1", "--json", "--db", db)
    assert json.loads(out)["state"] == "queued"
