"""hanfw.otafile on the board: signed images built on the host, pushed in chunks and streamed."""
import hashlib
import random

import pytest

from hanfw import otafile
from hanota import images
from support.otabuild import new_key, raw_pub

PAYLOAD = random.Random(11).randbytes(6000)


@pytest.fixture(scope="module")
def signed():
    key = new_key()
    data = images.build_image(PAYLOAD, key=key, version=0x00010002, role="ppmid", min_hw=1, max_hw=3,
                              security_version=2)
    return key, data


def stream(board, on_board, data, pubs, chunk=1024, step=64, raw=False):
    """Start a stream on the board, push `data` in chunks of `chunk`, fed in steps of `step`."""
    board.need("hanfw.otafile", "bchk", "bchk_ota")
    board.run("import bchk, bchk_ota\nbchk_ota.start(%r)" % raw)
    for off in range(0, len(data), chunk):
        board.put_buffer("_chunk", data[off:off + chunk], chunk=chunk)
        err = on_board("bchk.out(bchk_ota.feed(_chunk, %d))" % step)
        if err:
            return {"error": err}
    return on_board("bchk_ota.finish(%r)" % [p.hex() for p in pubs])


@pytest.mark.parametrize("chunk,step", [(1024, 64), (1000, 7), (2048, 256)])
def test_signed_image_streams_and_verifies(board, on_board, signed, chunk, step):
    key, data = signed
    got = stream(board, on_board, data, [raw_pub(key)], chunk, step)
    want = otafile.parse_stream(data)
    assert got.pop("free") > 0
    assert got == {"valid": True, "image_bytes": len(PAYLOAD), "manufacturer": want.header.manufacturer,
                   "image_type": images.ROLE_IMAGE_TYPES["ppmid"], "file_version": 0x00010002,
                   "total": len(data), "elements": [[t, n] for t, n, _ in want.elements],
                   "image_sha256": hashlib.sha256(PAYLOAD).hexdigest(),
                   "key_id": hashlib.sha256(raw_pub(key)).digest()[:8].hex(), "received": len(data)}


def test_second_pinned_key_is_found(board, on_board, signed):
    key, data = signed
    got = stream(board, on_board, data, [raw_pub(new_key()), raw_pub(key)])
    assert got["valid"] is True


def test_unknown_key_is_refused(board, on_board, signed):
    _, data = signed
    assert stream(board, on_board, data, [raw_pub(new_key())]) == {"error": "unknown-key"}


def test_flipped_image_byte_is_refused(board, on_board, signed):
    key, data = signed
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x10
    assert stream(board, on_board, bytes(bad), [raw_pub(key)]) == {"error": "bad-signature"}


def test_truncated_file_is_refused(board, on_board, signed):
    key, data = signed
    got = stream(board, on_board, data[:-10], [raw_pub(key)])
    assert got == {"error": "truncated"}, got


def test_wrong_magic_is_refused_at_once(board, on_board, signed):
    key, data = signed
    bad = bytearray(data)
    bad[0] ^= 1
    assert stream(board, on_board, bytes(bad), [raw_pub(key)]) == {"error": "bad-magic"}
