"""The hub's side of the Zigbee Time cluster (0x000A): devices have no RTC set at boot and
read the hub's Time (UTCTime, seconds since 2000-01-01 UTC) and TimeStatus at every new
session (device/hanfw/clock.py), so that future-dated activations happen at the hub's time.

Only Read Attributes is served; the hub's clock (the server's `clock`) is the master clock.
"""
from __future__ import annotations

from typing import Callable

from hanfw import zcl
from hanfw.zcl import ZclError

from .common import GLOBAL_S2C, zigbee_time
from .sessions import DeviceState, Sessions

# TimeStatus: the hub's clock is the network's master clock (bit 0, Master; ZCL 3.12.2.2.2)
TIME_STATUS = 0x01


def records(attr_ids, unix_now: float) -> list[tuple]:
    """Read Attributes Response records for the Time cluster at `unix_now`."""
    out: list[tuple] = []
    for a in attr_ids:
        if a == zcl.ATTR_TIME:
            out.append((a, zcl.SUCCESS, zcl.TYPE_UTC, zigbee_time(unix_now)))
        elif a == zcl.ATTR_TIME_STATUS:
            out.append((a, zcl.SUCCESS, zcl.TYPE_BITMAP8, TIME_STATUS))
        else:
            out.append((a, zcl.UNSUPPORTED_ATTRIBUTE, None, None))
    return out


def answer(sessions: Sessions, dev: DeviceState, buf: bytes, clock: Callable[[], float],
           stats) -> None:
    """Answer one ZCL frame a device sent on the Time cluster."""
    try:
        fc, mfr, tsn, cmd, off = zcl.parse_header(buf)
    except ZclError:
        stats["zcl-malformed"] += 1
        return
    if fc & zcl.FC_SERVER_TO_CLIENT:
        stats["zcl-direction"] += 1
        return

    def reply(command: int, payload: bytes) -> None:
        sessions.send_zcl(dev, GLOBAL_S2C, tsn, command, payload, mfr, cluster=zcl.CLUSTER_TIME)

    if (fc & zcl.FC_FRAME_TYPE_MASK) != zcl.FC_GLOBAL or cmd != zcl.GLOBAL_READ_ATTRIBUTES:
        stats["zcl-unsupported"] += 1
        if not fc & zcl.FC_DISABLE_DEFAULT_RESPONSE:
            status = zcl.UNSUP_GENERAL_COMMAND if (fc & zcl.FC_FRAME_TYPE_MASK) == zcl.FC_GLOBAL \
                else zcl.UNSUP_CLUSTER_COMMAND
            reply(zcl.GLOBAL_DEFAULT_RESPONSE, zcl.pack_default_response(cmd, status))
        return
    try:
        ids = zcl.parse_read_attributes(buf, off)
    except ZclError as e:
        stats["zcl-malformed"] += 1
        reply(zcl.GLOBAL_DEFAULT_RESPONSE, zcl.pack_default_response(cmd, e.status))
        return
    stats["time-reads"] += 1
    reply(zcl.GLOBAL_READ_ATTRIBUTES_RESPONSE,
          zcl.pack_read_attributes_response(records(ids, clock())))
