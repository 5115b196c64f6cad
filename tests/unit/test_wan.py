"""The WAN's Comms Hub end applied to a hub database without a network: every DCC message
is acted on once, and every one it cannot act on becomes an outcome that says why (nothing
stored is lost or changed by a bad message)."""
from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest

from hanota import images
from hanota.dcc.wan import ChStore, CommsHubWan, WanError, decode, encode, eui_hex
from hanota.hub import HubDB
from hanota.hub import registry as reg
from support import otabuild
from support.fakedevice import install_code
from support.hubfixtures import build_image, eui_str

USER = "90-B3-D5-1F-30-01-A0-01"
DCC = "90-B3-D5-1F-30-00-00-02"


@pytest.fixture
def wan(tmp_path):
    db = HubDB.open(tmp_path / "hub.db")
    hub = SimpleNamespace(db=db, wake=lambda: None)
    w = CommsHubWan(hub, "http://127.0.0.1:1", premises="MPAN-9")
    w.store = ChStore(db)
    yield w
    db.close()


def send(w: CommsHubWan, msg_id: int, mtype: str, n: int | None = None, **fields) -> None:
    msg = {"id": msg_id, "type": mtype, "request": "%s:%s:%d" % (USER, DCC, msg_id)}
    if n is not None:
        msg["device"] = eui_hex(eui_str(n))
    msg.update(fields)
    assert w.store.store_in(msg)
    w.step()


def out(w: CommsHubWan) -> list[dict]:
    return [json.loads(r[0]) for r in w.hub.db.all("SELECT body FROM ch_wan_out ORDER BY id")]


def last(w: CommsHubWan, msg_id: int | None = None) -> dict:
    """The last outbound message (about DCC message msg_id's request, if given)."""
    mine = [o for o in out(w) if msg_id is None or o["request"].endswith(":%d" % msg_id)]
    return mine[-1]


def test_frames_are_checked():
    for bad in ("not json", "[1, 2]", '{"ack": -1}', '{"id": "7"}', '{"id": true}'):
        with pytest.raises(WanError):
            decode(bad)
    assert decode(encode({"id": 3, "type": "join"})) == {"id": 3, "type": "join"}
    assert eui_hex("70:a1:5e:00:00:00:00:01") == "70A15E0000000001"
    with pytest.raises(WanError):
        eui_hex("70A15E00")
    with pytest.raises(WanError):
        CommsHubWan(SimpleNamespace(), "ws-is-not-http")


def test_prenotify_then_duplicate_is_applied_once(wan):
    send(wan, 1, "prenotify", 1, install_code=install_code(1), role="ppmid")
    dev = reg.device(wan.hub.db, eui_str(1))
    assert dev is not None and dev["mpxn"] == "MPAN-9" and dev["role"] == "ppmid"
    assert last(wan)["outcome"] == "prenotified"
    assert not wan.store.store_in({"id": 1, "type": "prenotify"})  # a redelivery
    wan.step()
    assert len(out(wan)) == 1


@pytest.mark.parametrize("kind,fields,why", [
    ("reboot", {}, "unknown message type 'reboot'"),
    ("prenotify", {"install_code": "zz", "role": "ppmid"}, "not hex"),
    ("prenotify", {"install_code": install_code(2), "role": "toaster"}, "unknown role"),
    ("update_firmware", {"image_b64": "***", "kind": "11.4"}, "malformed"),
    ("activate", {"hash": "12"}, "64 hex digits"),
])
def test_a_message_the_hub_cannot_act_on_is_a_refusal_naming_why(wan, kind, fields, why):
    send(wan, 5, kind, 2, **fields)
    o = last(wan)
    assert o["type"] == "outcome" and o["outcome"] == "refused", o
    assert why in o["detail"]["reason"], o
    assert o["request"].endswith(":5")
    assert wan.store.pending_in() == []  # done, not retried forever
    assert wan.hub.db.one("SELECT count(*) FROM requests")[0] == 0


def test_tampered_image_changes_nothing_pending(wan, tmp_path):
    key = otabuild.new_key()
    send(wan, 1, "prenotify", 3, install_code=install_code(3), role="ppmid")
    good = build_image(tmp_path, key, "ppmid", 2).read_bytes()
    send(wan, 2, "update_firmware", 3, kind="11.4", at=None,
         image_b64=base64.b64encode(good).decode())
    pending = wan.hub.db.one("SELECT id, outcome FROM requests")
    assert pending["outcome"] is None
    bad = bytearray(build_image(tmp_path, key, "ppmid", 3).read_bytes())
    bad[-100] ^= 0x01
    send(wan, 3, "update_firmware", 3, kind="11.4", at=None,
         image_b64=base64.b64encode(bytes(bad)).decode())
    assert last(wan)["outcome"] == "refused"
    assert wan.hub.db.one("SELECT count(*) FROM requests")[0] == 1
    assert wan.hub.db.request(pending["id"])["outcome"] is None  # the good one stays


def test_hub_outcomes_are_reported_once_with_the_dcc_request(wan):
    # a read for a device the CH does not know: the hub's own rule ends it, and the DCC hears
    send(wan, 4, "read_version", 7)
    o = last(wan)
    assert (o["outcome"], o["request"]) == ("not_authorized", "%s:%s:4" % (USER, DCC))
    wan.step()
    wan.collect()
    assert len(out(wan)) == 1


def test_requester_is_mirrored_as_responsible_supplier(wan):
    send(wan, 1, "prenotify", 4, install_code=install_code(4), role="ppmid")
    send(wan, 2, "read_version", 4)
    assert reg.responsible_suppliers(wan.hub.db, eui_str(4)) == ["90B3D51F3001A001"]
    row = wan.hub.db.one("SELECT supplier, outcome FROM requests")
    assert row["supplier"] == "90B3D51F3001A001" and row["outcome"] is None


def test_cancel_and_unjoin_rules(wan):
    send(wan, 1, "cancel_activation", 5, hash="00" * 32)
    assert last(wan)["outcome"] == "not_cancelled"
    send(wan, 2, "prenotify", 5, install_code=install_code(5), role="hcalcs")
    send(wan, 3, "activate", 5, hash="ab" * 32, at="2099-01-01T00:00:00Z")
    act = wan.hub.db.one("SELECT id FROM requests WHERE kind = 'activate'")[0]
    send(wan, 4, "unjoin", 5)
    assert last(wan)["outcome"] == "unjoin_failed"  # it has a pending request
    assert "pending" in last(wan)["detail"]["reason"]
    send(wan, 5, "cancel_activation", 5, hash="ab" * 32)
    assert last(wan, 5)["outcome"] == "cancelled"
    wan.collect()
    cancelled = [o for o in out(wan) if o["request"].endswith(":3")]
    assert [o["outcome"] for o in cancelled] == ["superseded"]
    assert wan.hub.db.request(act)["outcome"] == "superseded"
    send(wan, 6, "unjoin", 5)
    assert last(wan)["outcome"] == "unjoined"
    assert reg.device(wan.hub.db, eui_str(5)) is None


def test_join_refuses_an_alt_han_device(wan):
    send(wan, 1, "join", 6, install_code=install_code(6), role="althan")
    assert last(wan)["outcome"] == "join_failed"
    send(wan, 2, "join", 7, install_code=install_code(7), role="ppmid",
         manufacturer="%04X" % images.DEFAULT_MANUFACTURER)
    assert last(wan)["outcome"] == "joined"
    assert reg.device(wan.hub.db, eui_str(7))["manufacturer"] == images.DEFAULT_MANUFACTURER


def test_default_premises_survive_a_swap_out(wan):
    wan.premises = None
    first = eui_hex(wan.hub.db.current_hub()["eui"])
    send(wan, 1, "prenotify", 8, install_code=install_code(8), role="ppmid")
    reg.swap_out(wan.hub.db)
    send(wan, 2, "prenotify", 9, install_code=install_code(9), role="ppmid")
    assert reg.device(wan.hub.db, eui_str(8))["mpxn"] == "CH-" + first
    assert reg.device(wan.hub.db, eui_str(9))["mpxn"] == "CH-" + first


def test_hub_show_tells_the_wan_state(wan, tmp_path):
    from click.testing import CliRunner

    from hanota.dcc.wan import wan_state
    from hanota.hub.cli import hub_group

    send(wan, 3, "prenotify", 10, install_code=install_code(10), role="ppmid")
    assert wan.store.store_in({"id": 4, "type": "unjoin", "request": "x:y:4",
                               "device": eui_hex(eui_str(10))})  # stored, not applied yet
    assert wan_state(wan.hub.db) == {"last_dcc_message": 4, "not_applied": 1,
                                     "unacknowledged": 1, "reported": 1}
    r = CliRunner().invoke(hub_group, ["show", "--json", "--db", wan.hub.db.path])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["wan"]["not_applied"] == 1
    r = CliRunner().invoke(hub_group, ["show", "--db", wan.hub.db.path])
    assert "WAN: DCC messages up to #4 taken, 1 not applied yet" in r.output
    with HubDB.open(tmp_path / "plain.db") as db:
        assert wan_state(db) is None  # a hub that never had a WAN


def test_a_command_past_its_deadline_is_not_carried_out(wan, tmp_path):
    """A DCC message whose response deadline (`expires`) has passed when the hub comes to it
    (a backlog, or the hub offline that long) is answered `expired` and not acted on: the DCC
    has given the request no_response and retries it as a new one, so acting on the late one
    too would make the device act twice. One before its deadline is carried out."""
    key = otabuild.new_key()
    send(wan, 1, "prenotify", 3, install_code=install_code(3), role="ppmid")
    image = base64.b64encode(build_image(tmp_path, key, "ppmid", 2).read_bytes()).decode()
    now = wan.hub.db.now()
    send(wan, 2, "update_firmware", 3, kind="11.4", at=None, image_b64=image,
         expires=now - 5.0)
    o = last(wan, 2)
    assert (o["type"], o["outcome"]) == ("outcome", "expired"), o
    assert "after its response deadline" in o["detail"]["reason"]
    assert wan.hub.db.one("SELECT count(*) FROM requests")[0] == 0  # nothing for the device
    assert wan.store.pending_in() == []  # done, not tried again
    send(wan, 3, "update_firmware", 3, kind="11.4", at=None, image_b64=image,
         expires=now + 600.0)
    assert wan.hub.db.one("SELECT count(*) FROM requests")[0] == 1
    assert [x for x in out(wan) if x["request"].endswith(":3")] == []  # under way, no outcome
