"""`python -m bench.scale` at a tiny size: its accounting, counted from the DCC's database,
says every device of every campaign got exactly one final outcome, nothing lost and nothing
duplicated, on the embedded default (SQLite, websocket WAN) and on PostgreSQL + NATS with
two DCC workers, one of them SIGKILLed in the middle. No timing is asserted (figures go to
bench/SCALE.md)."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(600)


def test_scale_bench_accounting_at_a_tiny_size(tmp_path):
    from bench import scale

    out, js = tmp_path / "SCALE.md", tmp_path / "scale.json"
    rc = scale.main(["--premises", "4", "--runs", "sqlite-1,pg-nats-2-kill", "--out",
                     str(out), "--json", str(js), "--timeout", "240"])
    res = json.loads(js.read_text())
    runs = {r["run"]: r for r in res["runs"]}
    if "error" in runs["pg-nats-2-kill"] and "cannot start here" in \
            runs["pg-nats-2-kill"]["error"]:
        pytest.skip("PostgreSQL or NATS cannot start on this machine")
    for name, r in runs.items():
        assert "error" not in r, (name, r.get("error"))
        assert r["complete"], (name, r)
        # 4 premises x 3 devices: three campaigns (one per model), 12 devices
        assert r["campaign_devices"] == 12 and r["campaign_states"] == {"done": 3}, r
        assert r["lost_total"] == 0 and r["duplicated_total"] == 0, (r["lost"],
                                                                     r["duplicated"])
        assert sum(r["request_outcomes"].values()) == r["requests"] == r["sends"]
        assert "(none)" not in r["request_outcomes"]
        assert r["device_outcomes"] == {"activated": 8, "distributed": 4}
        assert r["sim"]["devices_with_two_or_more"] == 0
    assert runs["pg-nats-2-kill"]["fault_at"] is not None
    assert rc == 0
    text = out.read_text()
    assert "| sqlite-1 |" in text and "a DCC worker SIGKILLed" in text
