"""`python -m bench --only X` replaces the sections it ran in the results file and keeps the
others as they were (their tables, headline bullets and findings), each section saying when
and by which command it was measured. No benchmark runs here: the sections are stand-ins
(as in test_bench_failures.py), merged into a copy of the committed bench/RESULTS.md."""
import shutil
from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench import common, report

ROOT = Path(__file__).resolve().parents[2]
BOARDS = {"vboard-esp32": {"in_process": {"median": 0.04, "min": 0.04, "max": 0.04, "n": 1},
                           "cli": {"median": 0.37, "min": 0.37, "max": 0.37, "n": 1}}}
HEAP_RUN = {"size": 65536, "heap": "64K", "config": "blocks64", "ok": 3, "of": 3,
            "seconds": {"median": 0.4, "min": 0.4, "max": 0.4, "n": 1}, "hangs": []}


def fake_machine():
    return {"cpu": "test", "cores": 2, "memory": "1 GiB", "os": "Linux", "python": "3",
            "micropython": "1.29", "mpremote": "1.29", "load": (0.0, 0.0, 0.0)}


@pytest.fixture
def fake(monkeypatch):
    """Stand-in sections: boards and heap give figures, anything else fails."""
    def section(name, ws, scale, log, tag):
        if name == "boards":
            return BOARDS
        if name == "heap":
            return [HEAP_RUN]
        raise RuntimeError("%s broke" % name)

    monkeypatch.setattr(bench_main, "_section", section)
    monkeypatch.setattr(common, "machine", fake_machine)


@pytest.fixture
def committed(tmp_path):
    out = tmp_path / "RESULTS.md"
    shutil.copy(ROOT / "bench" / "RESULTS.md", out)
    return out


def run(out: Path, *args: str) -> int:
    return bench_main.main(["--smoke", *args, "--out", str(out),
                            "--logs", str(out.parent / "logs")])


def test_only_replaces_its_section_and_keeps_the_others(fake, committed):
    before = report.parse(committed.read_text())
    assert run(committed, "--only", "boards") == 0
    text = committed.read_text()
    after = report.parse(text)
    # every other section, bullet and finding is the file's, as it was
    for name in ("link", "device", "hub", "encodings", "loss"):
        assert after.sections[name] == before.sections[name], name
        assert after.headline.get(name) == before.headline.get(name), name
        assert after.findings.get(name) == before.findings.get(name), name
    # the boards section is this run's, saying when and how it was measured
    boards = "\n".join(after.sections["boards"][0])
    assert "| vboard-esp32 | 0.04 | 0.37 |" in boards
    assert "| vboard-nrf52840 |" not in boards  # the earlier figures went with it
    assert "_Measured " in boards and "by `python -m bench --smoke --only boards`" in boards
    assert after.headline["boards"] != before.headline["boards"]
    assert "0.04 s (`hanota vboard start`: 0.37 s)" in after.headline["boards"][0]
    # one section each, in order; the findings numbered again from 1
    heads = [x for x in text.splitlines() if x.startswith("## ")]
    assert heads == [x for x in committed.read_text().splitlines() if x.startswith("## ")]
    assert [h[:5] for h in heads if h[3].isdigit()] == \
        ["## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 7.", "## 8."]
    numbers = [x.split(".")[0] for x in text.split("## Findings")[1].splitlines()
               if x[:1].isdigit()]
    assert numbers == [str(i) for i in range(1, len(numbers) + 1)] and len(numbers) == 7


def test_a_section_that_fails_without_figures_keeps_the_earlier_ones(fake, committed):
    before = report.parse(committed.read_text())
    assert run(committed, "--only", "boards,hub") == 1
    text = committed.read_text()
    hub = "\n".join(report.parse(text).sections["hub"][0])
    assert "**Failed** in the run `python -m bench --smoke --only boards,hub`" in hub
    assert "RuntimeError: hub broke; the figures below are from before." in hub
    assert "\n".join(before.sections["hub"][0]).split("-->", 1)[1] in hub  # all of them
    assert "- hub (run 1): RuntimeError: hub broke" in text  # the run's Failed list
    assert report.parse(text).headline["hub"] == before.headline["hub"]


def test_sections_gather_run_after_run(fake, tmp_path):
    out = tmp_path / "RESULTS.md"
    assert run(out, "--only", "boards") == 0
    first = report.parse(out.read_text())
    assert run(out, "--only", "heap") == 0
    text = out.read_text()
    doc = report.parse(text)
    assert doc.sections["boards"] == first.sections["boards"]
    assert "`python -m bench --smoke --only heap`" in "\n".join(doc.sections["heap"][0])
    assert "| 1 | blocks64 | 64 KiB | 3 of 3 | 0.4 | no |" in text
    assert "## 4. Hub scale\n<!-- bench-section: hub -->\n\nNot run." in text
    assert text.count("## 5. Board start-up") == 1


def test_replace_writes_only_this_runs_sections(fake, committed):
    assert run(committed, "--only", "boards", "--replace") == 0
    doc = report.parse(committed.read_text())
    assert "| vboard-esp32 | 0.04 | 0.37 |" in "\n".join(doc.sections["boards"][0])
    assert doc.sections["hub"][0][3:] == ["Not run.", ""]
    assert set(doc.headline) == {"boards"} and not doc.findings


@pytest.mark.parametrize("text,problem", [
    ("# hanota benchmarks: results\n\n## 1. Link efficiency\n\nfigures\n", "no section markers"),
    ("# Something else\n", "not a hanota benchmark results file"),
])
def test_a_file_it_cannot_merge_into_is_refused_before_anything_runs(fake, tmp_path, capsys,
                                                                     text, problem):
    out = tmp_path / "RESULTS.md"
    out.write_text(text)
    with pytest.raises(SystemExit) as e:
        run(out, "--only", "boards")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert problem in err and str(out) in err
    assert out.read_text() == text  # nothing lost
    assert run(out, "--only", "boards", "--replace") == 0  # unless told to rewrite it
    assert "| vboard-esp32 | 0.04 | 0.37 |" in out.read_text()


def test_a_section_failing_again_says_so_once(fake, committed):
    assert run(committed, "--only", "hub") == 1
    once = committed.read_text()
    assert run(committed, "--only", "hub") == 1
    again = committed.read_text()
    hub = report.parse(again).sections["hub"][0]
    assert sum(x.startswith("**Failed** in the run") for x in hub) == 1
    assert len(again.splitlines()) == len(once.splitlines())
