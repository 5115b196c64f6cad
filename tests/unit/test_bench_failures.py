"""`python -m bench` keeps what finished when a section fails (issue 11, item 6): the results
file is rewritten as each section ends, a failed section is recorded with its error (a hung
64 KiB-heap board with the figures it had), and the run exits 1 at the end."""
import bench.__main__ as bench_main
from bench import common

BOARDS = {"vboard-esp32": {"in_process": {"median": 0.04, "min": 0.04, "max": 0.04, "n": 1},
                           "cli": {"median": 0.37, "min": 0.37, "max": 0.37, "n": 1}}}
HEAP_RUN = {"size": 65536, "heap": "64K", "config": "blocks64", "ok": 1, "of": 3,
            "seconds": {"median": 0.4, "min": 0.4, "max": 0.4, "n": 1},
            "hangs": ["no Upgrade End for version 00010006 within 300 s"]}


def fake_machine():
    return {"cpu": "test", "cores": 2, "memory": "1 GiB", "os": "Linux", "python": "3",
            "micropython": "1.29", "mpremote": "1.29", "load": (0.0, 0.0, 0.0)}


def test_a_failed_section_keeps_the_others_and_exits_1(tmp_path, monkeypatch):
    out = tmp_path / "RESULTS.md"
    seen_before_hub = []

    def section(name, ws, scale, log, tag):
        if name == "boards":
            return BOARDS
        if name == "heap":
            raise common.SectionFailed("a 64 KiB-heap board failed: " + HEAP_RUN["hangs"][0],
                                       [HEAP_RUN])
        seen_before_hub.append(out.read_text())  # hub: what was on disk before it ran
        raise RuntimeError("hub broke")

    monkeypatch.setattr(bench_main, "_section", section)
    monkeypatch.setattr(common, "machine", fake_machine)
    rc = bench_main.main(["--smoke", "--only", "boards,heap,hub", "--out", str(out),
                          "--logs", str(tmp_path / "logs")])
    assert rc == 1
    text = out.read_text()
    assert "| vboard-esp32 | 0.04 | 0.37 |" in seen_before_hub[0]  # written as boards ended
    assert "## Failed" in text
    assert "- hub (run 1): RuntimeError: hub broke" in text
    assert "- heap (run 1): a 64 KiB-heap board failed: no Upgrade End" in text
    hub = text.split("## 4. Hub scale\n")[1].split("\n## ")[0]
    assert "\n**Failed:** RuntimeError: hub broke\n" in hub and "_Measured " in hub
    assert "| vboard-esp32 | 0.04 | 0.37 |" in text  # the finished section stands
    assert "| 1 | blocks64 | 64 KiB | 1 of 3 | 0.4 | no Upgrade End" in text


def test_repeat_runs_the_heap_section_again_and_again(tmp_path, monkeypatch):
    out = tmp_path / "RESULTS.md"
    tags = []

    def section(name, ws, scale, log, tag):
        tags.append(tag)
        return [dict(HEAP_RUN, ok=3, hangs=[])]

    monkeypatch.setattr(bench_main, "_section", section)
    monkeypatch.setattr(common, "machine", fake_machine)
    assert bench_main.main(["--smoke", "--only", "heap", "--repeat", "3", "--out", str(out)]) == 0
    assert tags == ["-r1", "-r2", "-r3"]  # each run on boards of its own
    text = out.read_text()
    assert "3 run(s) in a row of the 64 KiB-heap boards" in text and "0 with a hang" in text
    assert "## Failed" not in text
