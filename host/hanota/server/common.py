"""What every part of the OTA server shares: constants, errors, and the guard on policy hooks."""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable

from hanfw import link as hlink
from hanfw import zcl

from ..errors import HanotaError

log = logging.getLogger("hanota.server")

ZIGBEE_EPOCH = 946684800  # 2000-01-01T00:00:00Z as a Unix time (ZCL UTCTime origin)
UPGRADE_NOW = (0, 0)
UPGRADE_WAIT = (0, zcl.UPGRADE_TIME_WAIT)
COUNTER_RESERVE = 1024  # hub counters persisted ahead of use (one save per this many frames)
ZCL_ROOM = hlink.MAX_FRAME - hlink.OVERHEAD  # largest ZCL frame in one link frame
BLOCK_HEAD = zcl.header_size() + zcl.BLOCK_RESPONSE_OVERHEAD  # an Image Block Response less data
BLOCK_ROOM = min(255, ZCL_ROOM - BLOCK_HEAD)
QUEUE_LIMIT = 64  # ZCL frames waiting per device before further ones are dropped
OPEN_FILES = 16
S2C = zcl.FC_CLUSTER | zcl.FC_SERVER_TO_CLIENT
S2C_RESPONSE = S2C | zcl.FC_DISABLE_DEFAULT_RESPONSE
GLOBAL_S2C = zcl.FC_GLOBAL | zcl.FC_SERVER_TO_CLIENT | zcl.FC_DISABLE_DEFAULT_RESPONSE


def zigbee_time(unix_time: float) -> int:
    """ZCL UTCTime: whole seconds since 2000-01-01 UTC."""
    return max(0, int(unix_time) - ZIGBEE_EPOCH)


class ServerError(HanotaError):
    """The OTA server cannot do what was asked (unknown device, no route, closed...)."""

    reason = "server"


class DeviceTimeout(ServerError):
    """A device did not answer a hub command within its timeout and retries."""

    reason = "timeout"


class DeviceStatusError(ServerError):
    """A device answered a hub command with a ZCL error status (`status`)."""

    reason = "device-status"

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class Guard:
    """Calls a policy hook so that a failing policy costs a logged error and a count in
    `stats` ("policy-error"), never the server or the other devices: `guard(hook, *args,
    default=...)` returns the hook's answer, or default if it raised."""

    def __init__(self, stats: Counter[str]):
        self.stats = stats

    def __call__(self, hook: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        try:
            return hook(*args)
        except Exception:
            log.exception("policy.%s failed", getattr(hook, "__name__", hook))
            self.stats["policy-error"] += 1
            return default
