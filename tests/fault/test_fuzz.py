"""Fuzzing the device's parsers: the streaming OTA file parser, the ZCL frame parsers, the
link frame decoder, the boot-control record decoder, the compressed/delta segment decoder and
the GBCS message decoder, command check and image reader (targets: fuzz_targets.py).

- property tests (hypothesis): random bytes, and the corpus' well-formed inputs mutated
  (bit flips, cuts, insertions), through every target;
- bounded memory: a stream that claims 4 GiB fed with megabytes, and a batch of random
  inputs per target, under tracemalloc;
- the coverage-guided fuzzer (atheris / libFuzzer) per target, in a subprocess with a time
  budget (short by default; HANOTA_FAULT_FULL=1 `make fuzz`: HANOTA_FUZZ_SECONDS per
  target, default 600, and the new inputs it finds merged into corpus/<target>/).

No hang: every run is bounded (hypothesis by examples, the fuzzer by time and libFuzzer's
per-input -timeout); no test asserts on timing.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_targets as ft
from fault import results

FULL = results.FULL
EXAMPLES = 20000 if FULL else 1000
FUZZ_SECONDS = int(os.environ.get("HANOTA_FUZZ_SECONDS", "600" if FULL else "5"))
MAX_LEN = {"otafile": 4096, "zcl": 300, "link": 700, "bootctl": 256, "patch": 2048, "gbcs": 600}

ft.load()
_counts = {t: 0 for t in ft.TARGETS}


def _run(target: str, data: bytes) -> None:
    _counts[target] += 1
    ft.FUNCS[target](data)


@st.composite
def mutated(draw, target: str):
    """A corpus input with a few bit flips, a cut, an insertion or a duplication."""
    seeds = ft.corpus_inputs(target)
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup", "set"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "dup":
            data[i:i] = data[i:i + draw(st.integers(1, 64))]
        else:
            data[i] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
    return bytes(data)


def _inputs(target: str):
    return st.one_of(st.binary(max_size=MAX_LEN[target]), mutated(target))


_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not FULL,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("target", ft.TARGETS)
def test_property_no_undocumented_exception(target):
    before = _counts[target]

    @_SETTINGS
    @given(_inputs(target))
    def prop(data):
        _run(target, data)
    prop()
    results.record("fuzz", (target, "hypothesis"), executions=_counts[target] - before,
                   crashes=0)


def test_corpus_inputs_pass_every_target():
    for t in ft.TARGETS:
        inputs = ft.corpus_inputs(t)
        assert inputs, "corpus/%s is empty: run fuzz_targets.write_seeds" % t
        for data in inputs:
            _run(t, data)


# ---------------------------------------------------------------- bounded memory

def _peak(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_streaming_parser_memory_is_bounded_by_its_buffers_not_the_stream():
    """4 GiB claimed, 4 MiB fed in 4 KiB blocks (GB raw image, no sink): the parser keeps
    a header, an element header and one small element value, nothing of the stream."""
    from hanfw import otafile
    h = otafile.Header(manufacturer=1, image_type=2, file_version=3, total_size=0xFFFFFFF0)
    block = bytes(range(256)) * 16

    def feed():
        s = otafile.OtaStream(allow_raw=True, integrity=False)
        s.feed(h.pack())
        for _ in range(1024):
            s.feed(block)
        assert s.format == "gb-raw" and s.image_length >= 4 * 1024 * 1024 - 64
    assert _peak(feed) < 64 * 1024


@pytest.mark.parametrize("target", ft.TARGETS)
def test_memory_is_bounded_over_many_inputs(target):
    rng = random.Random("memory/" + target)
    seeds = ft.corpus_inputs(target)
    inputs = []
    for i in range(300):
        if i % 2:
            inputs.append(rng.randbytes(rng.randrange(MAX_LEN[target])))
        else:
            d = bytearray(rng.choice(seeds))
            for _ in range(3):
                if d:
                    d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
            inputs.append(bytes(d))
    biggest = max(len(d) for d in inputs)

    def run_all():
        for d in inputs:
            _run(target, d)
    # a few times the largest input (the parser copies at most what it keeps), never growing
    assert _peak(run_all) < 64 * 1024 + 4 * biggest


# ---------------------------------------------------------------- coverage-guided (atheris)

def _atheris():
    try:
        import atheris  # noqa: F401
    except ImportError:
        pytest.skip("atheris is not installed (pip install -e '.[fuzz]')")


@pytest.mark.parametrize("target", ft.TARGETS)
@pytest.mark.timeout(FUZZ_SECONDS + 900)  # the budget, start-up and the corpus merge
def test_coverage_guided_fuzzer_finds_no_crash(target, tmp_path):
    _atheris()
    seed_dir = ft.write_seeds(target)
    out = tmp_path / "new"
    out.mkdir()
    art = tmp_path / "artifacts"
    art.mkdir()
    cmd = [sys.executable, str(ft.HERE / "fuzz_targets.py"), target,
           "-max_total_time=%d" % FUZZ_SECONDS, "-max_len=%d" % MAX_LEN[target],
           "-timeout=10", "-rss_limit_mb=1024", "-print_final_stats=1",
           "-artifact_prefix=%s/" % art, "-seed=%d" % (0 if FULL else 1),
           str(out), str(seed_dir)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=FUZZ_SECONDS + 120,
                       cwd=str(ft.HERE.parent.parent))
    log = p.stdout + p.stderr
    crashes = sorted(art.iterdir())
    m = re.search(r"Done (\d+) runs in (\d+) second", log)
    runs = int(m.group(1)) if m else 0
    results.record("fuzz", (target, "atheris"), executions=runs,
                   seconds=int(m.group(2)) if m else 0, crashes=len(crashes),
                   corpus=len(list(seed_dir.iterdir())) + len(list(out.iterdir())), agg="sum")
    if crashes:
        keep = ft.HERE / "corpus" / "crashes"
        keep.mkdir(exist_ok=True)
        for c in crashes:
            shutil.copy(c, keep / ("%s-%s" % (target, c.name)))
        pytest.fail("the fuzzer crashed %s on %d input(s) (copied to corpus/crashes/; add a "
                    "regression test):\n%s" % (target, len(crashes), log[-3000:]))
    assert p.returncode == 0, log[-3000:]
    assert runs > 0, log[-3000:]
    if FULL:
        _merge(target, seed_dir, out, tmp_path)


def _merge(target, seed_dir, new_dir, tmp_path):
    """Keep in the repository the smallest set of inputs covering what both sets cover."""
    merged = tmp_path / "merged"
    merged.mkdir()
    cmd = [sys.executable, str(ft.HERE / "fuzz_targets.py"), target, "-merge=1",
           "-max_len=%d" % MAX_LEN[target], str(merged), str(seed_dir), str(new_dir)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-2000:]
    keep = {p.name for p in seed_dir.iterdir() if p.name.startswith("seed-")}
    for f in seed_dir.iterdir():
        if f.name not in keep:
            f.unlink()
    for f in merged.iterdir():
        if not (seed_dir / f.name).exists():
            shutil.copy(f, seed_dir / f.name)
