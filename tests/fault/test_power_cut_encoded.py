"""Power cuts through a compressed and a delta update (issue 15), both bank kinds.

The upgrade scenario of test_power_cut_sweep.py with V2 sent zlib-compressed or as a delta
against V1: the device decodes each segment into the inactive bank, keeps a resume point at
segment ends (the next segment's offset and hash) and checks the target's SHA-256 before
staging. Every cut must end with V2 confirmed, the boot control consistent and the hub told
(cutkit's verdicts): 0 bricked.

Default (CI): each encoding on one bank kind (compressed on the ESP32 firmware bank, delta on
the nRF52840 ROMFS app bank, the pairs crossed so both decoders and both bank kinds are
covered), every boot-control write, three points spread over the download (where the
decoder and its resume records run) and one inside each other phase; torn writes at the
boot-control writes. HANOTA_FAULT_FULL=1 (`make fault`): both encodings on both bank kinds,
every op, and torn writes at every metadata write.
"""
from __future__ import annotations

import pytest

from fault import cutkit, results
from fault.test_power_cut_sweep import check, note, note_reference, run_points

FULL = results.FULL
pytestmark = pytest.mark.timeout(3600 if FULL else 1200)


def _points(ref: cutkit.Reference, torn: bool) -> list[int]:
    if torn:
        return ref.metadata_writes(ref.kind) if FULL else ref.bootctl_writes()
    if FULL:
        return list(range(1, ref.total + 1))
    by_phase: dict[str, list[int]] = {}
    for i in range(1, ref.total + 1):
        by_phase.setdefault(ref.phase_of(i), []).append(i)
    pts = set(ref.bootctl_writes())
    for ph, ops in by_phase.items():
        if ph == "download":
            pts.update(ops[j * len(ops) // 3] for j in range(3))
        elif ops:
            pts.add(ops[len(ops) // 2])
    return sorted(pts)


CASES = [(s, k) for s in cutkit.ENCODED_SCENARIOS for k in cutkit.KINDS] if FULL else \
    [("upgrade-zlib", "vboard-esp32"), ("upgrade-delta", "vboard-nrf52840")]


@pytest.mark.parametrize("scenario,kind", CASES)
def test_power_cut_through_an_encoded_update(kit, snapshot, reference, workdir, kind, scenario):
    ref = reference(kind, scenario)
    note_reference(ref)
    check(run_points(kit, snapshot(kind), ref, workdir, scenario, _points(ref, False), False,
                     "clean"))


@pytest.mark.parametrize("scenario,kind", CASES)
def test_torn_metadata_write_in_an_encoded_update(kit, snapshot, reference, workdir, kind,
                                                  scenario):
    ref = reference(kind, scenario)
    check(run_points(kit, snapshot(kind), ref, workdir, scenario, _points(ref, True), True,
                     "torn"))
