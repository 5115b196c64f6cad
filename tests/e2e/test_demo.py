"""`hanota demo`: the whole story on virtual boards exits 0 with every outcome as expected."""
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_demo_runs_the_story_and_cleans_up(tmp_path, request):
    if request.config.getoption("--board"):
        pytest.skip("the demo runs on virtual boards")
    hanota = str(Path(sys.executable).with_name("hanota"))
    r = subprocess.run([hanota, "demo", "--workdir", str(tmp_path / "demo")], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, HANOTA_HOME=str(tmp_path / "home")))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    out = r.stdout
    assert "demo passed" in out and "FAIL" not in out
    for needle in ("not_authorized", "rejected_by_device", "bad-signature", "rolled_back", "hash_mismatch",
                   "distributed", "ota_unavailable_after_tcso", "deliveries in priority order"):
        assert needle in out
    report = tmp_path / "demo" / "report.html"
    assert report.exists() and "<html" in report.read_text().lower()
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftovers == []
