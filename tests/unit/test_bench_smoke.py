"""The benchmark harness (bench/) runs end to end in its smoke mode and writes a results file.

Only that it works is checked: no figure and no timing is asserted."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_bench_smoke_writes_a_results_file(tmp_path):
    out = tmp_path / "RESULTS.md"
    r = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "device,link,hub", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = out.read_text()
    for heading in (
        "## Machine",
        "## 1. Link efficiency",
        "## 2. Against mpremote",
        "## 3. Device cost",
        "## 4. Hub scale",
        "## Findings",
    ):
        assert heading in text
    assert "## 5. Board start-up\n<!-- bench-section: boards -->\n\nNot run." in text  # --only
