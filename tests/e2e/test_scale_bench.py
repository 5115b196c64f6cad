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


def test_scale_md_is_rebuilt_from_the_committed_run_files(tmp_path):
    """bench/SCALE.md is combined from the JSON of several `bench.scale` commands (kept in
    bench/scale-runs/): every run of every file becomes a row of its own size, in order, and
    the header names the files and says which were rebuilt after the fact."""
    from pathlib import Path

    from bench import scale

    files = sorted(Path(scale.HERE, "scale-runs").glob("*.json"))
    assert files, "bench/scale-runs/ holds the committed runs"
    out = tmp_path / "SCALE.md"
    assert scale.main(["--from-json", *map(str, files), "--out", str(out)]) == 0
    text = out.read_text()
    rows = [ln for ln in text.split("## Extrapolated")[0].splitlines()
            if ln.startswith("| ") and not ln.startswith("| run")]
    want = [(r["run"], r["premises"]) for f in files for r in json.loads(f.read_text())["runs"]]
    got = [(c[0], int(c[5])) for c in ([x.strip() for x in ln.strip("|").split("|")]
                                       for ln in rows)]
    assert got == want
    assert "Combined by `python -m bench.scale --from-json" in text
    combined = text.split("Combined by")[1].split("\n")[0]
    for f in files:
        assert f.name in combined
        why = json.loads(f.read_text()).get("reconstructed")
        if why:
            assert why in combined
