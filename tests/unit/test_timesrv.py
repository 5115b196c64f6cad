"""The hub's Time cluster (0x000A): devices read Time (UTCTime) and TimeStatus from it."""
from __future__ import annotations

from collections import Counter

from hanfw import zcl
from hanota.server import timesrv
from hanota.server.common import ZIGBEE_EPOCH

UNIX_NOW = ZIGBEE_EPOCH + 850_000_000.7  # 2026-12-09, with a fraction of a second


class Recorder:
    """Stands in for Sessions: keeps what the hub would send."""

    def __init__(self):
        self.sent: list[tuple] = []

    def send_zcl(self, dev, fc, tsn, cmd, payload, manufacturer=None, cluster=zcl.CLUSTER_OTA):
        self.sent.append((fc, tsn, cmd, payload, manufacturer, cluster))


def ask(frame: bytes):
    rec, stats = Recorder(), Counter()
    timesrv.answer(rec, object(), frame, lambda: UNIX_NOW, stats)
    return rec.sent, stats


def read(*ids: int, tsn: int = 9) -> bytes:
    return zcl.pack_header(0x10, tsn, zcl.GLOBAL_READ_ATTRIBUTES) + zcl.pack_read_attributes(ids)


def test_read_time_and_status_answers_utc_since_2000_from_the_hub_clock():
    sent, stats = ask(read(zcl.ATTR_TIME, zcl.ATTR_TIME_STATUS, 0x0007))
    assert len(sent) == 1
    fc, tsn, cmd, payload, mfr, cluster = sent[0]
    assert (tsn, cmd, mfr, cluster) == (9, zcl.GLOBAL_READ_ATTRIBUTES_RESPONSE, None,
                                        zcl.CLUSTER_TIME)
    assert fc & zcl.FC_SERVER_TO_CLIENT and fc & zcl.FC_FRAME_TYPE_MASK == zcl.FC_GLOBAL
    recs = zcl.parse_read_attributes_response(payload)
    assert recs[0] == (zcl.ATTR_TIME, zcl.SUCCESS, zcl.TYPE_UTC, 850_000_000)
    assert recs[1] == (zcl.ATTR_TIME_STATUS, zcl.SUCCESS, zcl.TYPE_BITMAP8, 0x01)  # Master
    assert recs[2] == (0x0007, zcl.UNSUPPORTED_ATTRIBUTE, None, None)
    assert stats["time-reads"] == 1


def test_other_commands_and_malformed_reads_get_a_default_response_naming_the_problem():
    sent, stats = ask(zcl.pack_header(0x00, 3, zcl.GLOBAL_READ_ATTRIBUTES) + b"\x00")
    assert zcl.parse_default_response(sent[0][3]) == (zcl.GLOBAL_READ_ATTRIBUTES,
                                                      zcl.MALFORMED_COMMAND)
    assert stats["zcl-malformed"] == 1
    sent, stats = ask(zcl.pack_header(zcl.FC_CLUSTER, 4, 0x00) + b"")
    assert sent[0][2] == zcl.GLOBAL_DEFAULT_RESPONSE
    assert zcl.parse_default_response(sent[0][3]) == (0x00, zcl.UNSUP_CLUSTER_COMMAND)
    # a server-to-client frame, or one that is not ZCL, is counted and not answered
    sent, stats = ask(zcl.pack_header(zcl.FC_SERVER_TO_CLIENT, 5, 0x01))
    assert sent == [] and stats["zcl-direction"] == 1
    sent, stats = ask(b"\x00")
    assert sent == [] and stats["zcl-malformed"] == 1
