"""tests/fault/RESULTS.md's writer (tests/fault/results.py) merges a run's rows into the file
by their key: the rows the run produced are replaced, every other row (another test file's,
an earlier full run's) is kept, and each row says which run wrote it and when. A file whose
data cannot be read is never rewritten."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from fault import results

SWEEP = ("vboard-esp32", "upgrade", "clean", "download")
ENCODED = ("vboard-nrf52840", "upgrade-delta", "clean", "download")


def cuts(tried: int) -> dict:
    return {"tried": tried, "recovered": tried, "bricked": 0}


def sample(tmp_path: Path) -> Path:
    """A results file as a full run and then a stride run of two files left it."""
    data: dict = {}
    results.merge(data, "full", {"power-cuts": {SWEEP: cuts(158), ENCODED: cuts(161)},
                                 "fuzz": {("bootctl", "atheris"): {"executions": 1714023}}},
                  "2026-12-04 17:28 UTC", True)
    results.merge(data, "ci", {"power-cuts": {SWEEP: cuts(3), ENCODED: cuts(4)}},
                  "2026-12-04 17:44 UTC", True)
    path = tmp_path / "RESULTS.md"
    path.write_text(results.render(data))
    return path


def rows(data: dict, mode: str, section: str) -> dict:
    return {tuple(k): (c, run) for k, c, run in data[mode][section]["rows"]}


def test_a_run_of_one_file_replaces_its_rows_and_keeps_the_others(tmp_path):
    path = sample(tmp_path)
    data = results.load(path)
    # a stride run of the sweep file alone: its row only, and a section of its own
    results.merge(data, "ci", {"power-cuts": {SWEEP: cuts(5)},
                               "tamper": {("vboard-esp32", "bit flip", "bad-signature"):
                                          {"tried": 2, "rejected": 2}}},
                  "2026-12-05 08:40 UTC", True)
    path.write_text(results.render(data))
    again = results.load(path)
    ci = rows(again, "ci", "power-cuts")
    assert ci[SWEEP][0]["tried"] == 5 and ci[SWEEP][1]["at"] == "2026-12-05 08:40 UTC"
    assert ci[ENCODED][0]["tried"] == 4 and ci[ENCODED][1]["at"] == "2026-12-04 17:44 UTC"
    assert ("vboard-esp32", "bit flip", "bad-signature") in rows(again, "ci", "tamper")
    # the full run's part is untouched
    full = rows(again, "full", "power-cuts")
    assert full[SWEEP][0]["tried"] == 158 and full[ENCODED][0]["tried"] == 161
    assert rows(again, "full", "fuzz")[("bootctl", "atheris")][0]["executions"] == 1714023


def test_each_row_says_which_run_wrote_it_and_when(tmp_path):
    path = sample(tmp_path)
    data = results.load(path)
    results.merge(data, "ci", {"power-cuts": {SWEEP: cuts(2)}}, "2026-12-05 08:41 UTC", False)
    text = results.render(data)
    line = [x for x in text.splitlines() if x.startswith("| vboard-esp32 | upgrade | clean")]
    assert line[0].endswith("| full, 2026-12-04 17:28 UTC |")  # the full part comes first
    assert line[1].endswith("| stride, 2026-12-05 08:41 UTC (run in progress) |")
    enc = [x for x in text.splitlines() if x.startswith("| vboard-nrf52840 | upgrade-delta")]
    assert enc[1].endswith("| stride, 2026-12-04 17:44 UTC |")
    # a finished run later drops the "in progress" mark of its own rows
    results.merge(data, "ci", {"power-cuts": {SWEEP: cuts(3)}}, "2026-12-05 08:50 UTC", True)
    assert "(run in progress)" not in results.render(data)


def test_a_file_written_before_rows_carried_their_run_is_read(tmp_path):
    old = {"ci": {"power-cuts": {"updated": "2026-12-04 17:44 UTC, run in progress",
                                 "rows": [[list(SWEEP), cuts(3)]]}},
           "full": {"fuzz": {"updated": "2026-12-04 17:28 UTC",
                             "rows": [[["bootctl", "atheris"], {"executions": 9}]]}}}
    path = tmp_path / "RESULTS.md"
    path.write_text("# old\n\n<!-- results-data " + json.dumps(old) + " -->\n")
    data = results.load(path)
    c, run = rows(data, "ci", "power-cuts")[SWEEP]
    assert c == cuts(3)
    assert run == {"mode": "ci", "at": "2026-12-04 17:44 UTC", "complete": False}
    assert rows(data, "full", "fuzz")[("bootctl", "atheris")][1]["complete"] is True
    results.merge(data, "ci", {"power-cuts": {ENCODED: cuts(4)}}, "2026-12-05 08:40 UTC", True)
    assert set(rows(data, "ci", "power-cuts")) == {SWEEP, ENCODED}


@pytest.mark.parametrize("text,problem", [
    ("# hand-edited, its data gone\n", "no data comment"),
    ("x\n<!-- results-data {not json -->\n", "not valid JSON"),
    ("x\n<!-- results-data {\"ci\": {\"fuzz\": {\"rows\": [7]}}} -->\n", "expected shape"),
])
def test_a_file_whose_data_cannot_be_read_is_named_and_left_alone(tmp_path, monkeypatch,
                                                                   capsys, text, problem):
    path = tmp_path / "RESULTS.md"
    path.write_text(text)
    with pytest.raises(results.ResultsError, match=problem) as e:
        results.load(path)
    assert str(path) in str(e.value)
    # the writer at the end of a run: says why and leaves the file as it was
    run = tmp_path / "run"
    run.mkdir()
    (run / "1.jsonl").write_text(json.dumps({"section": "power-cuts", "key": list(SWEEP),
                                             "counts": cuts(1), "agg": "sum"}) + "\n")
    monkeypatch.setattr(results, "run_dir", lambda: run)
    monkeypatch.setitem(results._state, "warned", False)
    monkeypatch.setenv("HANOTA_FAULT_RESULTS", str(path))
    config = SimpleNamespace(option=SimpleNamespace(keyword="", markexpr=""), args=[])
    results.write(config, complete=False)
    assert path.read_text() == text
    assert problem in capsys.readouterr().err


def test_the_writer_merges_a_run_into_the_file(tmp_path, monkeypatch):
    """write(): the records of the run's workers, merged into an existing file."""
    path = sample(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    for pid, n in ((11, 2), (12, 3)):  # two pytest workers
        (run / ("%d.jsonl" % pid)).write_text(json.dumps(
            {"section": "power-cuts", "key": list(ENCODED), "counts": cuts(n), "agg": "sum"})
            + "\n")
    monkeypatch.setattr(results, "run_dir", lambda: run)
    monkeypatch.setattr(results, "MODE", "ci")
    monkeypatch.setenv("HANOTA_FAULT_RESULTS", str(path))
    config = SimpleNamespace(option=SimpleNamespace(keyword="", markexpr=""),
                             args=["tests/fault/test_power_cut_encoded.py"])
    results.write(config, complete=True)
    data = results.load(path)
    ci = rows(data, "ci", "power-cuts")
    assert ci[ENCODED][0]["tried"] == 5 and ci[ENCODED][1]["complete"] is True
    assert ci[SWEEP][0]["tried"] == 3 and ci[SWEEP][1]["at"] == "2026-12-04 17:44 UTC"
    assert rows(data, "full", "power-cuts")[ENCODED][0]["tried"] == 161
    assert not list(tmp_path.glob(".RESULTS.md.*"))  # the temporary file was renamed
    # a run that selects tests by keyword writes nothing
    before = path.read_text()
    config.option.keyword = "delta"
    results.write(config, complete=True)
    assert path.read_text() == before
