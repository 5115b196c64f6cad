"""The encodings section's pure helpers: the link model's bytes and seconds, and the
acceptance checks it writes into RESULTS.md."""
from __future__ import annotations

import math

import pytest

from bench import encodings
from bench.link import BLOCK_OVERHEAD, BUNDLED_OVERHEAD, PAGE_SIZE, SERIAL_RATE, ZIGBEE_RATE
from hanfw import link as hlink


def test_zigbee_model_one_block_a_frame_and_a_round_trip_a_page():
    size = 2 * PAGE_SIZE + 10  # three pages; the last has one short block
    got = encodings.air(size, "zigbee")
    blocks = 2 * math.ceil(PAGE_SIZE / 50) + 1
    assert got["frames"] == blocks
    assert got["bytes"] == size + blocks * BLOCK_OVERHEAD
    assert got["seconds"] == pytest.approx(got["bytes"] / ZIGBEE_RATE + 3 * 2 * 0.010)


def test_uart_model_bundles_a_pages_blocks():
    got = encodings.air(PAGE_SIZE, "uart")
    blocks = math.ceil(PAGE_SIZE / 255)
    frames = math.ceil(blocks / encodings.per_bundle(255))
    assert got["frames"] == frames and frames < blocks
    assert got["bytes"] == PAGE_SIZE + blocks * BUNDLED_OVERHEAD + frames * hlink.OVERHEAD
    assert got["seconds"] == pytest.approx(got["bytes"] / SERIAL_RATE)


def test_smaller_files_take_less_time_on_both_links():
    for link in encodings.LINKS:
        assert encodings.air(1000, link)["seconds"] < encodings.air(100_000, link)["seconds"]


def _case(name, sizes, heap=None):
    files = {}
    for enc, size in sizes.items():
        files[enc] = {"size": size, "model": {"zigbee": encodings.air(size, "zigbee")}}
        if enc != "full":
            files[enc]["decode"] = {"data_heap": heap}
    return {"case": name, "files": files}


def test_acceptance_compares_zigbee_times_and_the_heap():
    enc = {"cases": [_case("a", {"full": 1_000_000, "zlib": 690_000, "delta": 300_000}, 9000),
                     _case("b", {"full": 100_000, "zlib": 70_000, "delta": 3_000}, 17 * 1024)]}
    got = {a["what"].split(" time")[0].split(" (largest")[0]: a for a in
           encodings.acceptance(enc)}
    assert not got["(a) delta"]["ok"] and got["(a) delta"]["value"] > 0.25  # 30 %: too big
    assert got["(a) compressed"]["ok"]
    assert got["(b) delta"]["ok"]
    heap = got["extra heap applying, 1 KiB window: the decoder's data"]
    assert heap["value"] == 17 * 1024 and not heap["ok"]
    # the Findings line says which check was missed
    assert "miss part" in encodings.finding(dict(enc, cases=[
        dict(c, files={e: dict(f, of_full=f["size"] / c["files"]["full"]["size"])
                       for e, f in c["files"].items()}) for c in enc["cases"]]))[0]


def test_acceptance_takes_the_real_zigbee_transfers_of_b_when_there():
    def real(enc, seconds):
        return {"link": "zigbee", "case": "b", "encoding": enc,
                "to_verified": {"median": seconds}}

    enc = {"cases": [], "real": [real("full", 10.0), real("delta", 4.0)]}
    (row,) = encodings.acceptance(enc)
    assert "real" in row["what"] and row["value"] == pytest.approx(0.4) and not row["ok"]
    enc["real"][1]["to_verified"]["median"] = 0.5
    assert encodings.acceptance(enc)[0]["ok"]
