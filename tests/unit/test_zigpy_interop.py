"""zigpy, an independent parser, reads our files and reports the same header fields."""
import struct

import pytest

zigpy_image = pytest.importorskip("zigpy.ota.image")

from hanota import images  # noqa: E402
from hanfw import otafile  # noqa: E402
from support.otabuild import header, new_key  # noqa: E402


@pytest.mark.parametrize("opts", [
    dict(),
    dict(min_hw=0x0100, max_hw=0x0203),
    dict(destination=bytes.fromhex("7766554433221100")),
    dict(min_hw=1, max_hw=2, destination=bytes(range(8))),
])
def test_zigpy_parses_our_files(opts):
    payload = bytes(range(256)) * 5
    data = images.build_image(payload, key=new_key(), version=0x01020304, role="ppmid",
                              manufacturer=0x1A2B, header_string="interop", **opts)
    img, rest = zigpy_image.parse_ota_image(data)
    assert rest == b""
    h = img.header
    ours = otafile.Header.parse(data)
    assert h.header_version == ours.header_version
    assert h.header_length == ours.header_length
    assert int(h.field_control) == ours.field_control
    assert h.manufacturer_id == 0x1A2B and h.image_type == 0x0084
    assert h.file_version == 0x01020304 and h.stack_version == 2
    assert bytes(h.header_string).rstrip(b"\0") == b"interop"
    assert h.image_size == len(data) == ours.total_size
    if "min_hw" in opts:
        assert h.minimum_hardware_version == opts["min_hw"]
        assert h.maximum_hardware_version == opts["max_hw"]
    if "destination" in opts:
        assert h.upgrade_file_destination.serialize() == opts["destination"]
    assert [(e.tag_id, len(e.data)) for e in img.subelements] == \
        [(0xF0A0, 40), (0, len(payload)), (0xF0A1, 72)]
    assert img.subelements[1].data == payload
    assert img.serialize() == data  # zigpy writes back the exact same bytes


def test_gb_raw_flavour_matches_zigpy_header_but_not_its_image_parser():
    body = bytes([0x5A, 0x17]) + bytes(233)
    extra = struct.pack("<HH", 0x1111, 0x1211)
    data = header(60 + len(body), fc=4, mfr=0x121D, itype=0x0084, fver=0xACDCACDC,
                  string=b"I am a GFI PPMID firmware image ", extra=extra) + body
    zh, _ = zigpy_image.OTAImageHeader.deserialize(data)
    s = otafile.parse_stream(data, allow_raw=True)
    assert s.format == "gb-raw"
    assert (zh.manufacturer_id, zh.image_type, zh.file_version) == \
        (s.header.manufacturer, s.header.image_type, s.header.file_version)
    assert (zh.minimum_hardware_version, zh.maximum_hardware_version) == (0x1111, 0x1211)
    with pytest.raises(Exception):
        zigpy_image.parse_ota_image(data)
