"""`hanota demo` runs and reports every outcome as expected."""
import pytest

from hanota.cli import main


def test_demo_exits_0_with_every_outcome_ok(tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["demo", "--workdir", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert ei.value.code == 0
    assert "demo passed" in out
    assert "FAIL" not in out
    assert "one bit flipped in the payload" in out
