"""Power cuts the sweep found: each case cut at the op that broke the device before its fix.

The op is found in the clean run's trace, so the cases follow the code when it changes:
- the last op before the Upgrade End Request goes out (the image is staged and held, the
  resume point not yet cleared): the device came back holding the image and never asked the
  hub again, so it never activated (stuck on V1);
- the first op of the activation, and the op right after the activation's boot-control
  write: the switch and the state file that says "activated, on trial, version V" were not
  written in a safe order, so the new image booted on trial without knowing it (never
  confirmed, reported version 0 on ESP32) or the old one came back still holding the image.
"""
import pytest

from fault import cutkit


def _cases():
    for kind in cutkit.KINDS:
        for where in ("before-upgrade-end", "first-activation-op", "after-activation-switch"):
            yield pytest.param(kind, where, id="%s-%s" % (kind, where))


def _op(ref, where):
    end = ref.mark("upgrade-end-0")
    if where == "before-upgrade-end":
        return end
    if where == "first-activation-op":
        return end + 1
    switch = [op for op in ref.bootctl_writes() if op > end]
    return switch[0] + 1


@pytest.mark.parametrize("kind,where", list(_cases()))
def test_cut_around_activation_recovers(kit, snapshot, reference, workdir, kind, where):
    ref = reference(kind, "upgrade")
    op = _op(ref, where)
    out = cutkit.run_iteration(kit, snapshot(kind), "upgrade", workdir, [op], timeout=45)
    assert out.fired == 1, "the cut at op %d did not fire" % op
    assert out.ok, "cut before op %d (%s): %s %s" % (op, out.phase, out.verdict, out.why)
