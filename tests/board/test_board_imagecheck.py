"""hanfw.imagecheck on the board: each header rule a device applies before it erases anything,
against a configuration as hanota.deploy writes it for this board (its family, its bank)."""
import json
import random

import pytest

from hanfw import config, imagecheck, otafile
from hanota import images
from support.otabuild import new_key, raw_pub

EUI = bytes.fromhex("0807060504030201")
PAYLOAD_BYTES = random.Random(4).randbytes(3000)


@pytest.fixture(scope="module")
def key():
    return new_key()


def device_config(board, key):
    return {"eui64": EUI.hex(), "role": "ppmid", "manufacturer": images.DEFAULT_MANUFACTURER,
            "hw_version": 0x0100, "keys": [raw_pub(key).hex()], "install_code": "00" * 18,
            "family": board.spec.chip}


def payload_kind(board):
    return otafile.PAYLOAD_ESP_APP if board.spec.bank_kind == "firmware" else otafile.PAYLOAD_ROMFS


# name -> (build_image overrides, floor, bank size or None for the board's own)
CASES = {
    "fits": ({}, 0, None),
    "wrong-manufacturer": ({"manufacturer": 0x1111}, 0, None),
    "wrong-image-type": ({"role": "althan"}, 0, None),
    "hardware-version": ({"min_hw": 0x0200, "max_hw": 0x0300}, 0, None),
    "wrong-destination": ({"destination": bytes(8)}, 0, None),
    "security-version": ({"security_version": 1}, 2, None),
    "too-big": ({}, 0, len(PAYLOAD_BYTES) - 1),
    "wrong-payload-kind": ({"payload_kind": otafile.PAYLOAD_RAW}, 0, None),
    "wrong-board": ({"board_family": "other"}, 0, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_header_rule_on_the_board(board, on_board, key, case):
    kw, floor, bank_size = CASES[case]
    kw = dict(kw)
    kw.setdefault("role", "ppmid")
    kw.setdefault("payload_kind", payload_kind(board))
    if kw.get("board_family") == "other":  # a family that is not this board's
        kw["board_family"] = otafile.BOARD_FAMILIES["esp32s3" if board.spec.chip != "esp32s3" else "esp32"]
    data = images.build_image(PAYLOAD_BYTES, key=key, version=2, **kw)
    cfg = device_config(board, key)
    size = bank_size if bank_size is not None else board.spec.banks[0].size
    # what the same rules say under CPython: the board must agree
    s = otafile.parse_stream(data, integrity=False)
    want = imagecheck.reason(s.header, s.descriptor, s.elements[1][0], s.elements[1][1],
                             config.from_dict(cfg), floor, size, board.spec.bank_kind)
    assert want == (None if case == "fits" else case)
    board.need("hanfw.imagecheck", "hanfw.config", "bchk", "bchk_img")
    board.put_buffer("_f", data)
    got = on_board("import bchk_img\nbchk_img.reason(_f, %r, %d, %d, %r)\n_f = None"
                   % (json.dumps(cfg), floor, size, board.spec.bank_kind))
    assert got == want
