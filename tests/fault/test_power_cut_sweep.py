"""Exhaustive power-cut sweep of an OTA update, both bank kinds, every phase.

For each bank kind (firmware banks on vboard-esp32, app banks on vboard-nrf52840) and each
scenario (an upgrade that is confirmed; an upgrade whose image fails its health check and
is rolled back), a clean run counts the flash operations N, then each cut point i cuts
the power before op i and the board must end on a verified image with a consistent
boot-control state and the true outcome at the hub (see cutkit). Then torn writes at the
metadata writes, and seeded random runs of up to five cuts in one update.

Default (CI): a fixed stride over 1..N plus every boot-control write and one point inside
each phase; torn writes at the boot-control writes; one random multi-cut run per kind.
HANOTA_FAULT_FULL=1 (`make fault`): every i in 1..N, torn writes at every metadata write
(boot control and the state files' filesystem), ten random multi-cut runs per kind and
scenario. Both record their counts for tests/fault/RESULTS.md.
"""
from __future__ import annotations

import random

import pytest

from fault import cutkit
from fault import results

FULL = results.FULL
PARTS = 8 if FULL else 1  # each (kind, scenario) sweep is split so that workers share it
CI_STRIDE = 100
RANDOM_RUNS = 10 if FULL else 1
# a part runs many iterations (and a failing one waits out its own timeout): pytest's
# per-test limit is set to what the part may take, not the default
pytestmark = pytest.mark.timeout(3600 if FULL else 900)


def _ci_points(ref: cutkit.Reference) -> list[int]:
    """CI's cut points: the upgrade at a fixed stride, at each boot-control write and in the
    middle of each phase; the rollback scenario at its boot-control writes from the
    activation on and in the middle of its trial and rollback phases (its download is the
    upgrade's)."""
    by_phase: dict[str, list[int]] = {}
    for i in range(1, ref.total + 1):
        by_phase.setdefault(ref.phase_of(i), []).append(i)
    if ref.scenario == "upgrade":
        pts = set(cutkit.cut_points(ref.total, CI_STRIDE))
        pts.update(ref.bootctl_writes())
        phases = list(by_phase)
    else:
        start = ref.mark("upgrade-end-0")
        pts = {op for op in ref.bootctl_writes() if op > start}
        phases = ["trial", "rollback"]
    for ph in phases:
        ops = by_phase.get(ph, [])
        if ops:
            pts.add(ops[len(ops) // 2])
    return sorted(pts)


def points_for(ref: cutkit.Reference, torn: bool) -> list[int]:
    if torn:
        return ref.metadata_writes(ref.kind) if FULL else ref.bootctl_writes()
    return list(range(1, ref.total + 1)) if FULL else _ci_points(ref)


def run_points(kit, snap, ref, workdir, scenario, points, torn, label) -> list[cutkit.Outcome]:
    outcomes = []
    for i in points:
        out = cutkit.run_iteration(kit, snap, scenario, workdir, [i], torn=torn)
        outcomes.append(out)
        note(out, label)
    return outcomes


def note(out: cutkit.Outcome, label: str) -> None:
    phase = out.phase if out.fired else "(not reached)"
    resumed = out.phase == "download" and out.resumed_from is not None
    results.record("power-cuts", (out.kind, out.scenario, label, phase),
                   tried=1, fired=min(out.fired, 1) if label != "random" else out.fired,
                   recovered=int(out.ok), bricked=int(out.verdict == "bricked"),
                   inconsistent=int(out.verdict == "inconsistent"),
                   stuck=int(out.verdict == "stuck"),
                   resumed=int(resumed and out.resumed_from > 0),
                   restarted=int(resumed and out.resumed_from == 0),
                   seconds=round(out.seconds, 1))
    results.record("power-cut-runs", (out.kind, out.scenario), iterations=1,
                   seconds=round(out.seconds, 1))


def note_reference(ref: cutkit.Reference) -> None:
    results.record("power-cut-runs", (ref.kind, ref.scenario), agg="max",
                   **{"clean run ops": ref.total, "clean run seconds": round(ref.seconds, 1),
                      "metadata writes": len(ref.metadata_writes(ref.kind)),
                      "boot-control writes": len(ref.bootctl_writes())})


def check(outcomes: list[cutkit.Outcome]) -> None:
    bad = [o for o in outcomes if not o.ok]
    assert not bad, "%d of %d cut points failed:\n%s" % (len(bad), len(outcomes), "\n".join(
        "  cuts %s%s (%s): %s: %s" % (o.cuts, " torn" if o.torn else "", o.phase, o.verdict, o.why)
        for o in bad))


def _params():
    for kind in cutkit.KINDS:
        for scenario in cutkit.SCENARIOS:
            for part in range(PARTS):
                yield pytest.param(kind, scenario, part,
                                   id="%s-%s-part%dof%d" % (kind, scenario, part + 1, PARTS))


@pytest.mark.parametrize("kind,scenario,part", list(_params()))
def test_power_cut_before_each_op(kit, snapshot, reference, workdir, kind, scenario, part):
    ref = reference(kind, scenario)
    note_reference(ref)
    points = points_for(ref, torn=False)[part::PARTS]
    check(run_points(kit, snapshot(kind), ref, workdir, scenario, points, False, "clean"))


@pytest.mark.parametrize("kind,scenario,part", list(_params()))
def test_torn_metadata_write(kit, snapshot, reference, workdir, kind, scenario, part):
    if not FULL and scenario != "upgrade":
        pytest.skip("CI tears the boot-control writes of the upgrade only "
                    "(HANOTA_FAULT_FULL=1: all)")
    ref = reference(kind, scenario)
    points = points_for(ref, torn=True)[part::PARTS]
    check(run_points(kit, snapshot(kind), ref, workdir, scenario, points, True, "torn"))


def _random_params():
    for kind in cutkit.KINDS:
        for scenario in (cutkit.SCENARIOS if FULL else ("upgrade",)):
            for run in range(RANDOM_RUNS):
                yield pytest.param(kind, scenario, run, id="%s-%s-seed%d" % (kind, scenario, run))


@pytest.mark.parametrize("kind,scenario,run", list(_random_params()))
def test_random_cuts_in_one_update(kit, snapshot, reference, workdir, kind, scenario, run):
    ref = reference(kind, scenario)
    rng = random.Random("%s/%s/%d" % (kind, scenario, run))
    cuts = cutkit.random_cuts(rng, ref.total)
    out = cutkit.run_iteration(kit, snapshot(kind), scenario, workdir, cuts,
                               timeout=cutkit.ITERATION_TIMEOUT + 30 * len(cuts))
    note(out, "random")
    check([out])
