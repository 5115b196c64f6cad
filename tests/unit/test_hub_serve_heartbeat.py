"""`hanota hub show`'s "running": three heartbeats missed in a row, at the pace the hub says
it writes them (a simulated fleet's idle hubs write one a minute, an interactive hub every
second)."""
from __future__ import annotations

import json

from hanota.hub import HubDB
from hanota.hub.report import _serve_info


def serve_meta(db, at: float, **extra) -> None:
    db.set_meta("serve", json.dumps({"pid": 1, "hub": "X", "at": at, "stopped": False,
                                     **extra}))


def test_running_follows_the_heartbeat_pace(tmp_path):
    with HubDB.open(tmp_path / "hub.db") as db:
        serve_meta(db, 1000.0)  # written before "every" existed: the 1 s pace
        assert _serve_info(db, 1005.0)["running"] is True
        assert _serve_info(db, 1011.0)["running"] is False
        serve_meta(db, 1000.0, every=60.0)
        assert _serve_info(db, 1100.0)["running"] is True
        assert _serve_info(db, 1181.0)["running"] is False
        serve_meta(db, 1000.0, every=60.0, stopped=True)
        assert _serve_info(db, 1001.0)["running"] is False
